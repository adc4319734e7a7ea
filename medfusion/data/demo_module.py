"""The DataModule of the embedded synthetic demo data."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from medfusion.data.datamodule import MultimodalDataModule
from medfusion.data.demo import default_cache_dir, ensure_demo_data, image_columns
from medfusion.data.demo.generate import ensure_generated
from medfusion.data.demo.global_local import global_local_args, make_global_local_data
from medfusion.data.demo.graded import GRADES, graded_args, make_graded_data
from medfusion.data.demo.studies import make_study_data, study_args
from medfusion.data.demo.volumes import make_volume_data, volume_args
from medfusion.data.options import check_demo_options


class DemoDataModule(MultimodalDataModule):
    """The embedded synthetic skin-lesion dataset, generated on first use into a cache directory.

    Args:
        root: where the dataset lives; default ``$MEDFUSION_CACHE/demo/...`` (``~/.cache/medfusion``).
        num_samples: number of images/reports.
        demo_image_size: side of the generated images.
        long_tail: HAM10000-like class proportions instead of balanced classes.
        demo_seed: seed of the generator.
        views: 1 (``images/<id>.png``) or 2: a dermoscopic and a clinical image per case, the image modalities
            ``dermoscopic`` and ``clinical`` (unless ``image_columns`` is given).
        **kwargs: any :class:`MultimodalDataModule` option (modalities, batch_size, ...). The CSV's clinical
            columns are ``age`` and ``ldh_u_l`` (numeric) and ``sex`` and ``site`` (categorical): pass them as
            ``numeric_columns`` and ``categorical_columns`` for the tabular modality.
    """

    def __init__(
        self,
        root: str | None = None,
        num_samples: int = 2000,
        demo_image_size: int = 64,
        long_tail: bool = False,
        demo_seed: int = 0,
        views: int = 1,
        image_size: int = 64,
        **kwargs: Any,
    ) -> None:
        check_demo_options(num_samples, demo_image_size, long_tail, views)
        name = f"n{num_samples}_s{demo_image_size}_seed{demo_seed}" + ("_longtail" if long_tail else "")
        name += f"_views{views}" if views != 1 else ""
        out = Path(root) if root else default_cache_dir() / name
        ensure_demo_data(
            out, num_samples=num_samples, image_size=demo_image_size, seed=demo_seed, long_tail=long_tail, views=views
        )
        if views == 2 and kwargs.get("image_columns") is None:
            kwargs["image_columns"] = {column.removesuffix("_image"): column for column in image_columns(views)}
        super().__init__(
            csv_path=str(out / "metadata.csv"),
            image_dir=str(out / "images"),
            text_json=str(out / "reports.json"),
            id_column="image_id",
            label_column="label",
            group_column="patient_id",
            image_size=image_size,
            **kwargs,
        )


def _generated(root: str | None, name: str, make: Callable[[Path], Any], args: dict[str, Any]) -> Path:
    """A generated demo's folder (``metadata.csv`` with ``image_id`` and ``label``, ``images/``): ``root`` or the
    demo cache folder ``name``, generated first when it is not there. (The subclasses pass its options to
    ``super().__init__`` by keyword: LightningCLI reads those calls to know which options they set.)"""
    return ensure_generated(Path(root) if root else default_cache_dir() / name, make, args)


class GlobalLocalDemoDataModule(MultimodalDataModule):
    """The generated global-local demo (:mod:`medfusion.data.demo.global_local`): per case the whole image
    (``image``, the context) and the lesion cut from it by its box columns (``local``, see ``data.crops``); the class
    needs both. Generated on first use into a cache directory.

    Args:
        root: where the dataset lives; default ``$MEDFUSION_CACHE/demo/global_local_...``.
        num_samples: number of cases (balanced over the four classes).
        demo_image_size: side of the generated images (the lesion's texture is one pixel wide at 256).
        demo_seed: seed of the generator.
        image_size: side of the model input for both modalities (64: the whole image loses the texture).
        margin: the lesion crop's margin (a fraction of its box on each side).
        **kwargs: any :class:`MultimodalDataModule` option (``modalities: [image]`` for the global view alone,
            ``[local]`` for the crop alone).
    """

    def __init__(
        self,
        root: str | None = None,
        num_samples: int = 1200,
        demo_image_size: int = 256,
        demo_seed: int = 0,
        image_size: int = 64,
        margin: float = 0.0,
        **kwargs: Any,
    ) -> None:
        out = _generated(
            root,
            f"global_local_n{num_samples}_s{demo_image_size}_seed{demo_seed}",
            partial(make_global_local_data, num_samples=num_samples, image_size=demo_image_size, seed=demo_seed),
            global_local_args(num_samples, demo_image_size, demo_seed),
        )
        box = ["x0", "y0", "x1", "y1"]
        if kwargs.get("crops") is None:  # the CLI passes every option, unset ones as None
            kwargs["crops"] = {"local": {"source": "image", "box_columns": box, "margin": margin}}
        super().__init__(
            csv_path=str(out / "metadata.csv"),
            image_dir=str(out / "images"),
            id_column="image_id",
            label_column="label",
            image_size=image_size,
            **kwargs,
        )


class SliceDemoDataModule(MultimodalDataModule):
    """The generated 2.5D demo (:mod:`medfusion.data.demo.volumes`): per case the slice a row names and, by
    default, its ``neighbours`` on each side as one stack (``data.slices``); the class shows in the neighbours.
    Generated on first use into a cache directory.

    Args:
        root: where the dataset lives; default ``$MEDFUSION_CACHE/demo/volumes_...``.
        num_samples: number of cases (balanced over the four classes).
        demo_image_size: side of the generated slices.
        demo_seed: seed of the generator.
        neighbours: slices read on each side of the named one (``slices: {}`` reads the named slice alone).
        image_size: side of the model input.
        **kwargs: any :class:`MultimodalDataModule` option.
    """

    def __init__(
        self,
        root: str | None = None,
        num_samples: int = 800,
        demo_image_size: int = 64,
        demo_seed: int = 0,
        neighbours: int = 2,
        image_size: int = 64,
        **kwargs: Any,
    ) -> None:
        out = _generated(
            root,
            f"volumes_n{num_samples}_s{demo_image_size}_seed{demo_seed}",
            partial(make_volume_data, num_samples=num_samples, image_size=demo_image_size, seed=demo_seed),
            volume_args(num_samples, demo_image_size, demo_seed),
        )
        if kwargs.get("slices") is None:  # the CLI passes every option, unset ones as None
            kwargs["slices"] = {"image": {"neighbours": neighbours}}
        super().__init__(
            csv_path=str(out / "metadata.csv"),
            image_dir=str(out / "images"),
            id_column="image_id",
            label_column="label",
            image_column="image_path",
            image_size=image_size,
            **kwargs,
        )


class StudyDemoDataModule(MultimodalDataModule):
    """The generated study-level demo (:mod:`medfusion.data.demo.studies`): studies of 1-4 images, one of which
    shows the class, read one sample per study (``study_column: study_id``). Generated on first use.

    Args:
        root: where the dataset lives; default ``$MEDFUSION_CACHE/demo/studies_...``.
        num_studies: number of studies (balanced over the four classes).
        demo_image_size: side of the generated images.
        demo_seed: seed of the generator.
        image_size: side of the model input.
        **kwargs: any :class:`MultimodalDataModule` option (``study_max_images: 1`` reads each study's first
            image alone).
    """

    def __init__(
        self,
        root: str | None = None,
        num_studies: int = 600,
        demo_image_size: int = 64,
        demo_seed: int = 0,
        image_size: int = 64,
        **kwargs: Any,
    ) -> None:
        out = _generated(
            root,
            f"studies_n{num_studies}_s{demo_image_size}_seed{demo_seed}",
            partial(make_study_data, num_studies=num_studies, image_size=demo_image_size, seed=demo_seed),
            study_args(num_studies, demo_image_size, demo_seed),
        )
        if kwargs.get("study_column") is None:  # the CLI passes every option, unset ones as None
            kwargs["study_column"] = "study_id"
        super().__init__(
            csv_path=str(out / "metadata.csv"),
            image_dir=str(out / "images"),
            id_column="image_id",
            label_column="label",
            image_size=image_size,
            **kwargs,
        )


class GradedDemoDataModule(MultimodalDataModule):
    """The generated graded demo (:mod:`medfusion.data.demo.graded`): a fundus-like image and an exam note per case,
    graded ``none`` < ``mild`` < ``moderate`` < ``severe`` < ``proliferative`` (``class_names`` in this order unless
    given). Generated on first use into a cache directory.

    Args:
        root: where the dataset lives; default ``$MEDFUSION_CACHE/demo/graded_...``.
        num_samples: number of cases.
        demo_image_size: side of the generated images.
        demo_seed: seed of the generator.
        image_size: side of the model input.
        **kwargs: any :class:`MultimodalDataModule` option (``modalities: [image]`` for the image alone).
    """

    def __init__(
        self,
        root: str | None = None,
        num_samples: int = 1500,
        demo_image_size: int = 64,
        demo_seed: int = 0,
        image_size: int = 64,
        **kwargs: Any,
    ) -> None:
        out = _generated(
            root,
            f"graded_n{num_samples}_s{demo_image_size}_seed{demo_seed}",
            partial(make_graded_data, num_samples=num_samples, image_size=demo_image_size, seed=demo_seed),
            graded_args(num_samples, demo_image_size, demo_seed),
        )
        if kwargs.get("class_names") is None:  # the CLI passes every option, unset ones as None
            kwargs["class_names"] = list(GRADES)
        super().__init__(
            csv_path=str(out / "metadata.csv"),
            image_dir=str(out / "images"),
            text_json=str(out / "reports.json"),
            id_column="image_id",
            label_column="label",
            group_column="patient_id",
            image_size=image_size,
            **kwargs,
        )
