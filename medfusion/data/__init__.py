"""Data layer: CSV/JSON/image-folder datasets of named modalities (images, text, tabular), the DataModules and the
embedded demo data.

The names below are imported on first use, so that a module of this package that needs no Lightning
(``medfusion.data.tabular``, ``transforms``, ``token_ids``: what a deployed model's preprocessing reads) loads
without the DataModules.
"""

from __future__ import annotations

from medfusion.runs.lazy import lazy_exports

_EXPORTS = {
    "Collate": "medfusion.data.dataset",
    "ConfigError": "medfusion.data.errors",
    "DataError": "medfusion.data.errors",
    "DemoDataModule": "medfusion.data.demo_module",
    "GlobalLocalDemoDataModule": "medfusion.data.demo_module",
    "GradedDemoDataModule": "medfusion.data.demo_module",
    "MultimodalDataModule": "medfusion.data.datamodule",
    "MultimodalDataset": "medfusion.data.dataset",
    "ShardDataModule": "medfusion.data.shard_module",
    "SliceDemoDataModule": "medfusion.data.demo_module",
    "StudyDemoDataModule": "medfusion.data.demo_module",
    "TabularFeatures": "medfusion.data.tabular",
    "TabularPreprocessor": "medfusion.data.tabular",
    "TabularSpec": "medfusion.data.tabular",
    "TestSet": "medfusion.data.test_sets",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
