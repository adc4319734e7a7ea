"""Data layer: CSV/JSON/image-folder datasets, the DataModules and the embedded demo data."""

from medfusion.data.datamodule import DemoDataModule, MultimodalDataModule, TestSet
from medfusion.data.dataset import Collate, MultimodalDataset
from medfusion.data.errors import ConfigError, DataError
from medfusion.data.tabular import TabularFeatures, TabularPreprocessor, TabularSpec

__all__ = [
    "Collate",
    "ConfigError",
    "DataError",
    "DemoDataModule",
    "MultimodalDataModule",
    "MultimodalDataset",
    "TabularFeatures",
    "TabularPreprocessor",
    "TabularSpec",
    "TestSet",
]
