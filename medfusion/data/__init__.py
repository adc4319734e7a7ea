"""Data layer: CSV/JSON/image-folder datasets of named modalities (images, text, tabular), the DataModules and the
embedded demo data."""

from medfusion.data.datamodule import MultimodalDataModule
from medfusion.data.dataset import Collate, MultimodalDataset
from medfusion.data.demo_module import (
    DemoDataModule,
    GlobalLocalDemoDataModule,
    SliceDemoDataModule,
    StudyDemoDataModule,
)
from medfusion.data.errors import ConfigError, DataError
from medfusion.data.shard_module import ShardDataModule
from medfusion.data.tabular import TabularFeatures, TabularPreprocessor, TabularSpec
from medfusion.data.test_sets import TestSet

__all__ = [
    "Collate",
    "ConfigError",
    "DataError",
    "DemoDataModule",
    "GlobalLocalDemoDataModule",
    "MultimodalDataModule",
    "MultimodalDataset",
    "ShardDataModule",
    "SliceDemoDataModule",
    "StudyDemoDataModule",
    "TabularFeatures",
    "TabularPreprocessor",
    "TabularSpec",
    "TestSet",
]
