"""Deterministic synthetic skin-lesion dataset: lesion image(s), a short clinical report and clinical variables.

The layout matches what real users bring (HAM10000-style)::

    OUT_DIR/metadata.csv        one row per case (image_id without extension), columns below
    OUT_DIR/reports.json        {image_id: report text}
    OUT_DIR/images/<id>.png     views=1: one RGB image_size x image_size image per case
    OUT_DIR/images/<id>_dermoscopic.png, <id>_clinical.png   views=2 instead: two views per case
    OUT_DIR/README.md
    OUT_DIR/.complete           generation args as JSON, written last

``metadata.csv`` columns (views=1 header ``image_id,label,patient_id,age,sex,site,ldh_u_l``; views=2 appends
``dermoscopic_image,clinical_image``, file names relative to ``images/``):

- ``patient_id``: 1-3 cases per patient (one lesion); a patient's cases share label, age, sex and site.
- ``age`` (integer years, ~5% empty), ``sex`` (male/female, ~3% empty), ``site`` (body site, ~5% empty):
  no class information; also written in the report (whether or not the cell is empty).
- ``ldh_u_l``: a lab value (serum LDH, U/L, one decimal) per case, carrying the tabular cue; empty exactly where
  the case has no tabular cue (25% of cases), never otherwise.

Cue structure (``cues.py``): each class is a triple (image pattern a, text pattern b, tabular pattern c) from three
values each, the six pairs a != b of Z3 with c = a + b mod 3 (``CLASS_PATTERNS``). Each pattern is shared by two
classes, and any two of a case's patterns identify its class. Per case (stratified per class), with probability 1/4
all three cues are present, and with probability 1/4 each exactly the image / the text / the tabular cue is missing:
a featureless lesion (same colour, size and shape distribution for every class), a report with no symptom phrase,
an empty ``ldh_u_l`` cell. Present cues are unambiguous (the LDH ranges have gaps: low 120-170, mid 190-240, high
260-310). Bayes-optimal accuracy of perfect readers (balanced classes; ``optimal_accuracy`` computes any subset):

- one modality (image, text or tabular): 3/4 * 1/2 + 1/4 * 1/6 = 5/12 = 0.417
- two modalities (any pair): 1/2 * 1 + 1/2 * 1/2 = 3/4 = 0.750
- image + text + tabular: 1.000 (at least two cues are always present)

With ``views=2``, a present image cue shows in both views, only the dermoscopic or only the clinical view (a third
each; the other view is featureless), so each view alone shows it in 2/3 of those cases. Both views together are the
image modality above; one view alone: 1/3 = 0.333, one view + text (or tabular): 23/36 = 0.639, one view + text +
tabular: 11/12 = 0.917 (vs 1.000 with both views).

``demo_cues`` returns the ground truth (per case, the pattern each source shows) for oracle baselines and tests.
"""

from __future__ import annotations

from medfusion.data.demo.cues import (
    CLASS_PATTERNS,
    DEMO_CLASSES,
    IMAGE_PATTERNS,
    LONG_TAIL_PROPORTIONS,
    MODALITIES,
    P_ONE_UNINFORMATIVE,
    TABULAR_PATTERNS,
    TEXT_PATTERNS,
    VIEWS,
    optimal_accuracy,
)
from medfusion.data.demo.generate import (
    MIN_CLASS_COUNT,
    MIN_IMAGE_SIZE,
    default_cache_dir,
    demo_cues,
    ensure_demo_data,
    image_columns,
    make_demo_data,
)
from medfusion.data.demo.tabular import CATEGORICAL_COLUMNS, LAB_COLUMN, NUMERIC_COLUMNS, TABULAR_COLUMNS

__all__ = [
    "CATEGORICAL_COLUMNS",
    "CLASS_PATTERNS",
    "DEMO_CLASSES",
    "IMAGE_PATTERNS",
    "LAB_COLUMN",
    "LONG_TAIL_PROPORTIONS",
    "MIN_CLASS_COUNT",
    "MIN_IMAGE_SIZE",
    "MODALITIES",
    "NUMERIC_COLUMNS",
    "P_ONE_UNINFORMATIVE",
    "TABULAR_COLUMNS",
    "TABULAR_PATTERNS",
    "TEXT_PATTERNS",
    "VIEWS",
    "default_cache_dir",
    "demo_cues",
    "ensure_demo_data",
    "image_columns",
    "make_demo_data",
    "optimal_accuracy",
]
