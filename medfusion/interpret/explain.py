"""Per-sample explanations of a batch (Grad-CAM, attention, gate, routing) and their figures."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from transformers import PreTrainedTokenizerBase

from medfusion.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from medfusion.interpret.gradcam import gradcam
from medfusion.interpret.maps import forward_maps
from medfusion.models.base import ClassifierModule

OVERLAY_ALPHA = 0.45


@dataclass
class Explanation:
    """Why the model predicted what it did for one sample.

    ``image`` is denormalised to [0, 1] (None for text-only batches); ``cam`` is Grad-CAM of the predicted class at
    the image resolution; ``attention`` holds one patch-grid map (see :func:`~medfusion.interpret.attention_maps`)
    per text token: padding is always dropped, special tokens ([CLS], [SEP] ...; not [UNK]) too when a tokenizer
    was given, and then ``tokens`` names the rows; ``gate`` is the image share of a gated fusion; ``routing`` the
    MoE head's combine weights.
    """

    id: str
    label: int | None
    probs: torch.Tensor
    image: torch.Tensor | None = None
    cam: torch.Tensor | None = None
    tokens: list[str] | None = None
    attention: torch.Tensor | None = None
    gate: float | None = None
    routing: torch.Tensor | None = None

    @property
    def predicted(self) -> int:
        """The predicted class index."""
        return int(self.probs.argmax())


def _token_positions(batch: dict[str, Any], tokenizer: PreTrainedTokenizerBase | None) -> list[torch.Tensor] | None:
    """Per sample, the positions of its real tokens: not padding, nor the tokenizer's special tokens but [UNK]
    (an unknown word is still a word of the text)."""
    if "input_ids" not in batch:
        return None
    ids = batch["input_ids"].cpu()
    keep = batch["attention_mask"].cpu().bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
    if tokenizer is not None:
        special = sorted(set(tokenizer.all_special_ids) - {tokenizer.unk_token_id})
        keep &= ~torch.isin(ids, torch.tensor(special, dtype=ids.dtype))
    return [row.nonzero().squeeze(1) for row in keep]


def explain_batch(
    model: ClassifierModule,
    batch: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> list[Explanation]:
    """Explain every sample of ``batch`` with what applies to ``model``: probabilities always; Grad-CAM when the
    batch has images (and the model an image encoder); attention, gate and routing when the model has them; tokens
    when a ``tokenizer`` is given. The model works in eval mode and gets its modes back afterwards."""
    forward = forward_maps(model, batch)
    cams = gradcam(model, batch) if "image" in batch and hasattr(model, "image_encoder") else None
    probs = forward.logits.float().softmax(dim=-1).cpu()
    images = None
    if "image" in batch:
        image = batch["image"].detach().float().cpu()
        shape = (1, -1, 1, 1)
        images = (image * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)).clamp(0, 1)
    positions = _token_positions(batch, tokenizer)
    labels = batch["label"].tolist() if "label" in batch else None
    explanations = []
    for i in range(len(probs)):
        kept = None if positions is None else positions[i]
        explanation = Explanation(
            id=str(batch["id"][i]) if "id" in batch else str(i),
            label=None if labels is None else int(labels[i]),
            probs=probs[i],
            image=None if images is None else images[i],
            cam=None if cams is None else cams[i],
            gate=None if forward.gate is None else float(forward.gate[i]),
            routing=None if forward.routing is None else forward.routing[i].cpu(),
        )
        if tokenizer is not None and kept is not None:
            explanation.tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][i].cpu()[kept].tolist())
        if forward.attention is not None and kept is not None:
            explanation.attention = forward.attention[i, kept.to(forward.attention.device)].cpu()
        explanations.append(explanation)
    return explanations


def _show_image(
    ax: Axes, image: torch.Tensor | None, heat: torch.Tensor | None = None, vmax: float | None = None
) -> None:
    """``image`` [3, H, W] with ``heat`` (any [h, w] map, resized to the image) over it in the jet colormap
    from 0 to ``vmax`` (default: the map's maximum)."""
    if image is not None:
        ax.imshow(image.permute(1, 2, 0).numpy())
    if heat is not None:
        if image is not None and heat.shape != image.shape[1:]:
            heat = F.interpolate(heat[None, None].float(), size=image.shape[1:], mode="bilinear")[0, 0]
        alpha = OVERLAY_ALPHA if image is not None else 1.0
        ax.imshow(heat.numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=vmax)
    ax.set_axis_off()


def _bar_probs(ax: Axes, explanation: Explanation, class_names: Sequence[str]) -> None:
    probs = explanation.probs.tolist()
    colors = ["tab:orange" if c == explanation.predicted else "tab:blue" for c in range(len(probs))]
    ax.barh(range(len(probs)), probs, color=colors)
    ax.set_yticks(
        range(len(probs)), [f"{name} *" if c == explanation.label else name for c, name in enumerate(class_names)]
    )
    ax.invert_yaxis()
    ax.set_xlim(0, 1)


def _bar_gate(ax: Axes, gate: float) -> None:
    ax.barh([0], [gate], height=0.4, color="tab:red", label="image")
    ax.barh([0], [1 - gate], height=0.4, left=[gate], color="tab:green", label="text")
    ax.set_xlim(0, 1)
    ax.set_ylim(-1, 1)
    ax.set_yticks([])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=2)


def _bar_routing(ax: Axes, routing: torch.Tensor) -> None:
    weights = routing.tolist()
    ax.bar(range(len(weights)), weights, color="tab:purple")
    ax.set_xticks(range(len(weights)), [f"E{k}" for k in range(len(weights))])
    ax.set_ylim(0, 1)


def explanation_figure(explanation: Explanation, class_names: Sequence[str], max_tokens: int = 8) -> Figure:
    """One figure for one sample: the image, its Grad-CAM overlay (titled with the true and predicted class), the
    class probabilities, the gate and the MoE routing when present, and a strip of attention overlays for the
    ``max_tokens`` text tokens with the most peaked attention (highest weight on one patch)."""
    e = explanation
    if len(class_names) != len(e.probs):
        raise ValueError(f"{len(class_names)} class names for {len(e.probs)} classes")
    true = "?" if e.label is None else class_names[e.label]
    summary = f"true: {true} | predicted: {class_names[e.predicted]} ({e.probs[e.predicted]:.2f})"
    panels: list[tuple[str, Callable[[Axes], None]]] = []
    if e.image is not None:
        panels.append((e.id, partial(_show_image, image=e.image)))
    if e.cam is not None:
        panels.append((f"Grad-CAM\n{summary}", partial(_show_image, image=e.image, heat=e.cam, vmax=1.0)))
    panels.append(("class probabilities (* = true)", partial(_bar_probs, explanation=e, class_names=class_names)))
    if e.gate is not None:
        panels.append((f"gate: image {e.gate:.2f} / text {1 - e.gate:.2f}", partial(_bar_gate, gate=e.gate)))
    if e.routing is not None:
        panels.append(("MoE routing weights", partial(_bar_routing, routing=e.routing)))
    if e.cam is None:  # then the first panel tells the prediction
        panels[0] = (f"{panels[0][0]}\n{summary}", panels[0][1])
    peaks: list[float] = [] if e.attention is None else e.attention.flatten(1).amax(dim=1).tolist()
    shown = sorted(range(len(peaks)), key=lambda t: -peaks[t])[:max_tokens]
    figure = Figure(figsize=(3.2 * max(len(panels), len(shown)), 3.6 * (2 if shown else 1)), layout="constrained")
    top, bottom = figure.subfigures(2, 1) if shown else (figure, None)
    for ax, (title, draw) in zip(top.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        draw(ax)
        ax.set_title(title)
    if bottom is not None:
        bottom.suptitle("cross-modal attention of the most focused text tokens")
        for ax, t in zip(bottom.subplots(1, len(shown), squeeze=False)[0], shown, strict=True):
            _show_image(ax, e.image, e.attention[t])
            ax.set_title(f"{e.tokens[t] if e.tokens is not None else f'token {t}'} (max {peaks[t]:.2f})")
    return figure


def _file_stem(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id).strip(".") or "_"


def save_explanations(explanations: Sequence[Explanation], class_names: Sequence[str], out_dir: Path) -> list[Path]:
    """Write one ``<out_dir>/<id>.png`` per explanation (ids made file-name safe; clashes get ``-1``, ``-2`` ...)
    and return the paths. The figures are plain ``Figure`` objects: pyplot never holds them, nothing to close."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for explanation in explanations:
        stem = _file_stem(explanation.id)
        path, n = out_dir / f"{stem}.png", 0
        while path in paths:
            n += 1
            path = out_dir / f"{stem}-{n}.png"
        explanation_figure(explanation, class_names).savefig(path, dpi=80)
        paths.append(path)
    return paths
