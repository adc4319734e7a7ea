"""Short clinical reports: demographics and site (no class information), the text cue (symptoms of one of
``TEXT_PATTERNS``, or none) and class-independent distractor sentences."""

from __future__ import annotations

from typing import Any

import numpy as np

SEXES = ("male", "female")
SITES = (
    "back", "upper back", "chest", "abdomen", "shoulder", "upper arm", "forearm", "thigh",
    "lower leg", "face", "cheek", "scalp", "neck", "hand", "foot", "ear",
)  # fmt: skip
_INTROS = ("{age}-year-old {sex}.", "{Sex}, {age} years.", "{age} y/o {sex} patient.", "{Sex} aged {age}.")
_SITE_SENTENCES = ("Lesion on the {site}.", "Located on the {site}.", "Site: {site}.", "Single lesion, {site}.")
_SYMPTOM_PREFIXES = (
    "Patient reports",
    "Patient mentions",
    "Patient describes",
    "History notes",
    "Referral letter mentions",
)
SYMPTOM_PHRASES: dict[str, tuple[str, ...]] = {
    "changing": (
        "recent change in size", "recent change in colour", "the mole getting darker",
        "the spot growing over the last few months", "a new mole that appeared this year",
        "a change in shape since last summer", "the lesion becoming more raised", "an evolving pigmented spot",
        "rapid growth recently", "the edges spreading outwards",
    ),
    "waxy_elderly": (
        "a waxy surface", "a stuck-on appearance", "slow growth over many years", "a greasy feel",
        "a lesion present for a decade", "a wart-like texture", "several similar spots on the trunk",
        "a shiny surface", "a crust that comes off and returns", "it catching on clothing",
    ),
    "scaly_sun": (
        "a rough scaly patch", "years of outdoor work", "chronic sun exposure", "a sandpaper-like feel",
        "a firm nodule that dimples when pinched", "flaking that recurs after picking",
        "frequent sunburns as a child", "a hard bump after an insect bite", "a dry patch that will not heal",
        "redness on sun-exposed skin",
    ),
}  # fmt: skip
# A report without a text cue says one of these, or nothing, about symptoms.
_NO_SYMPTOMS = (
    "No specific symptoms reported.",
    "Patient has no complaints about the lesion.",
    "Found at a routine skin check.",
    "Noticed by a relative; no symptoms.",
)
_DISTRACTORS = (
    "Referred by GP.", "No allergies.", "No family history of skin cancer.", "Non-smoker.",
    "On no regular medication.", "Follow-up in 3 months.", "Photographed for records.", "Mild itching at times.",
    "No bleeding.", "Otherwise well.", "Type 2 diabetes, well controlled.", "Attends with daughter.",
)  # fmt: skip


def demographics(rng: np.random.Generator) -> dict[str, Any]:
    """A patient's age, sex and lesion site, drawn independently of the class."""
    return {
        "age": int(rng.integers(18, 90)),
        "sex": SEXES[rng.integers(len(SEXES))],
        "site": SITES[rng.integers(len(SITES))],
    }


def make_report(rng: np.random.Generator, text_pattern: str | None, info: dict[str, Any]) -> str:
    """A 2-5 sentence report: demographics, site, 1-2 symptoms of ``text_pattern`` (with ``None``: a neutral sentence
    or nothing), 0-2 class-independent distractors, in random order after the demographics."""
    sex = info["sex"]
    intro = _INTROS[rng.integers(len(_INTROS))].format(age=info["age"], sex=sex, Sex=sex.capitalize())
    site = _SITE_SENTENCES[rng.integers(len(_SITE_SENTENCES))].format(site=info["site"])
    if text_pattern is None:
        choice = int(rng.integers(len(_NO_SYMPTOMS) + 1))
        symptoms = [_NO_SYMPTOMS[choice]] if choice < len(_NO_SYMPTOMS) else []
    else:
        pool = SYMPTOM_PHRASES[text_pattern]
        phrases = [pool[i] for i in rng.choice(len(pool), size=int(rng.integers(1, 3)), replace=False)]
        symptoms = [f"{_SYMPTOM_PREFIXES[rng.integers(len(_SYMPTOM_PREFIXES))]} {' and '.join(phrases)}."]
    distractors = [_DISTRACTORS[i] for i in rng.choice(len(_DISTRACTORS), size=int(rng.integers(0, 3)), replace=False)]
    body = [site, *symptoms, *distractors]
    return " ".join([intro, *(body[i] for i in rng.permutation(len(body)))])
