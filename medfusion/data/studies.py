"""Study-level samples: the rows of one study (a patient's visit with 1..M images) as one sample, one label, one
prediction.

With ``data.study_column: study_id`` the rows that share a study id become one sample whose id is the study's:
each image modality holds the study's images, in row order (at most ``study_max_images``), the text and the
tabular variables are its first row's, and the study's rows must agree on label, split and group (patient). The
model encodes each image and pools them per study (``model.study_pooling``: mean, max or gated attention); splits,
metrics and predictions are per study, so a study never spans two splits and counts once.
"""

from __future__ import annotations

from collections.abc import Sequence

from medfusion.data.errors import ConfigError, raise_for_rows
from medfusion.data.table import Records


def check_study_options(study_column: str | None, max_images: int | None, crops: Sequence[str], slices: Sequence[str]):
    """A :class:`ConfigError` for study options that cannot work together."""
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ConfigError(f"data.study_max_images must be a whole number >= 1 or null, got {max_images!r}")
    if study_column is None and max_images is not None:
        raise ConfigError("data.study_max_images needs data.study_column (which rows form a study).")
    if study_column is not None and (crops or slices):
        raise ConfigError(
            "data.study_column reads each study's images as a set; it does not combine with data.crops or "
            "data.slices yet. Fix: drop one of them."
        )


def group_studies(records: Records, studies: Sequence[str], max_images: int | None = None) -> Records:
    """``records`` (one per row) as one record per study (in order of first appearance): its id the study id,
    its images in ``stacks``, everything else its first row's. A :class:`DataError` names the rows of studies
    whose rows disagree on label, split or group."""
    members: dict[str, list[int]] = {}
    for position, study in enumerate(studies):
        members.setdefault(study, []).append(position)
    for what, values in (("labels", records.labels), ("splits", records.splits), ("groups", records.groups)):
        if values is None:
            continue
        mixed = [p for rows in members.values() if len({values[r] for r in rows}) > 1 for p in rows]
        raise_for_rows(
            f"Studies whose rows have different {what}",
            records.csv_path,
            [records.rows[p] for p in mixed],
            [f"study {studies[p]!r}: {values[p]!r}" for p in mixed],
            f"give every row of a study the same {what[:-1]} (a study is one sample), or fix data.study_column.",
        )
    first = [rows[0] for rows in members.values()]
    grouped = records.subset(first)
    grouped.ids = list(members)
    for name, paths in records.images.items():
        sets = []
        for rows in members.values():
            files = [paths[r] for r in rows if paths[r] is not None][:max_images]
            sets.append(files or None)
        grouped.stacks[name] = sets
        grouped.images[name] = [None if files is None else files[0] for files in sets]
    return grouped
