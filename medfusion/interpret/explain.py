"""Per-sample explanations of a batch (Grad-CAM per image, attention, modality weights, routing, the dual-expert
gate) and their figures."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from transformers import PreTrainedTokenizerBase

from medfusion.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from medfusion.encoders.slices import SliceStackEncoder
from medfusion.encoders.study import StudyEncoder
from medfusion.heads.dual_expert import DualExpertHead
from medfusion.interpret.gradcam import gradcam
from medfusion.interpret.maps import ForwardMaps, forward_maps, patch_map
from medfusion.models.base import ClassifierModule

OVERLAY_ALPHA = 0.45
# per crop modality of the data: its source modality and each sample's box (fractions of the source shown; None: none)
CropBoxes = dict[str, tuple[str, list[list[float] | None]]]


@dataclass
class Explanation:
    """Why the model predicted what it did for one sample.

    ``images`` holds each image modality's image, denormalised to [0, 1], and ``cams`` its Grad-CAM of the
    predicted class at the image resolution (both by modality name, the absent ones left out). ``attention`` holds,
    per ``"text-><image>"`` map of the fusion, one patch-grid map per text token (see
    :func:`~medfusion.interpret.patch_attention`): padding is always dropped, special tokens ([CLS], [SEP] ...;
    not [UNK]) too when a tokenizer was given, and then ``tokens`` names the rows. ``feature_attention`` holds, per
    ``"<query>-><tabular>"`` map, the mean attention of the query's real tokens on each tabular feature, named by
    ``features``. ``gate`` is each fusion input's weight (gated, hierarchical fusions); ``routing`` the MoE head's
    combine weights; ``experts`` the dual-expert gate, each expert's weight by name. A 2.5D slice stack shows its
    centre slice, no Grad-CAM, and in ``slices`` the weight the model put on each slice (sequence mode); a study
    (named in ``studies``) its first image and in ``slices`` the weight on each of its images. ``boxes`` holds per
    image modality where the crops cut from it lie, ``{crop: [x0, y0, x1, y1]}`` in fractions of the image shown:
    the data's boxes or masks (``data.crops``) and the model's saliency crop (``model.saliency_crop``).
    """

    id: str
    label: int | None
    probs: torch.Tensor
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    cams: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: list[str] | None = None
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    features: list[str] | None = None
    feature_attention: dict[str, torch.Tensor] = field(default_factory=dict)
    gate: dict[str, float] | None = None
    routing: torch.Tensor | None = None
    experts: dict[str, float] | None = None
    slices: dict[str, list[float]] = field(default_factory=dict)
    studies: list[str] = field(default_factory=list)
    boxes: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def predicted(self) -> int:
        """The predicted class index."""
        return int(self.probs.argmax())


def _modality(model: ClassifierModule, kind: str) -> str | None:
    """The name of the model's modality of ``kind`` (text, tabular), or None."""
    return next((name for name, spec in model.modality_specs.items() if spec["kind"] == kind), None)


def _token_positions(
    batch: dict[str, Any], text: str | None, tokenizer: PreTrainedTokenizerBase | None
) -> list[torch.Tensor] | None:
    """Per sample, the positions of its real tokens: not padding, nor the tokenizer's special tokens but [UNK]
    (an unknown word is still a word of the text)."""
    if text is None or text not in batch:
        return None
    ids = batch[text]["input_ids"].cpu()
    keep = batch[text]["attention_mask"].cpu().bool()
    if tokenizer is not None:
        special = sorted(set(tokenizer.all_special_ids) - {tokenizer.unk_token_id})
        keep &= ~torch.isin(ids, torch.tensor(special, dtype=ids.dtype))
    return [row.nonzero().squeeze(1) for row in keep]


def _feature_attention(forward: ForwardMaps, tabular: str | None) -> dict[str, torch.Tensor]:
    """Per ``"<query>-><tabular>"`` map, each sample's mean over the query's real tokens: ``[B, F]``."""
    if tabular is None:
        return {}
    out = {}
    for key, weights in forward.attention.items():
        query, _, context = key.partition("->")
        if context == tabular and query in forward.masks:
            real = forward.masks[query].to(weights.dtype).unsqueeze(-1)  # [B, Nq, 1]
            out[key] = ((weights * real).sum(1) / real.sum(1).clamp_min(1)).cpu()
    return out


def explain_batch(
    model: ClassifierModule,
    batch: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_boxes: CropBoxes | None = None,
) -> list[Explanation]:
    """Explain every sample of ``batch`` with what applies to ``model``: probabilities always; Grad-CAM of every
    image modality in the batch; attention, modality weights and routing when the model has them; tokens when a
    ``tokenizer`` is given; the crop boxes of ``crop_boxes`` (the data's) and of the model's saliency crop. A
    sample's absent modalities (``present`` False) get no image, map nor bar. The model works in eval mode and gets
    its modes back afterwards."""
    forward = forward_maps(model, batch)
    boxes = dict(crop_boxes or {})
    saliency = getattr(model, "saliency", None)
    if saliency is not None and saliency.last_boxes is not None:
        boxes[saliency.options.name] = (saliency.options.source, saliency.last_boxes.cpu().tolist())
    probs = forward.logits.float().softmax(dim=-1).cpu()
    flags = {name: flag.cpu().bool().tolist() for name, flag in (batch.get("present") or {}).items()}

    def has(name: str, i: int) -> bool:
        return flags[name][i] if name in flags else True

    names = [name for name in model.image_modalities if name in batch]
    stacks = {n: model.encoders[n] for n in names if isinstance(model.encoders[n], SliceStackEncoder | StudyEncoder)}
    cams = {name: gradcam(model, batch, modality=name) for name in names if name not in stacks}
    shape = (1, -1, 1, 1)
    mean_t, std_t = torch.tensor(mean).view(shape), torch.tensor(std).view(shape)
    images = {name: (_shown(batch[name]).detach().float().cpu() * std_t + mean_t).clamp(0, 1) for name in names}
    slice_weights = {n: _weights(e, batch[n]) for n, e in stacks.items() if _weights(e, batch[n]) is not None}
    text, tabular = _modality(model, "text"), _modality(model, "tabular")
    positions = _token_positions(batch, text, tokenizer)
    flat = [name for name in names if name not in stacks]  # a stack's tokens are its slices, not a patch grid
    strips = {name: patch_map(model, forward.attention, name, text) for name in flat} if text else {}
    on_features = _feature_attention(forward, tabular)
    columns = model.modality_specs[tabular].get("features") if tabular else None
    labels = batch["label"].tolist() if "label" in batch else None
    experts = model.head.names if isinstance(model.head, DualExpertHead) else None
    explanations = []
    for i in range(len(probs)):
        shown = [name for name in names if has(name, i)]
        explanation = Explanation(
            id=str(batch["id"][i]) if "id" in batch else str(i),
            label=None if labels is None else int(labels[i]),
            probs=probs[i],
            images={name: images[name][i] for name in shown},
            cams={name: cams[name][i] for name in shown if name in cams},
            slices={name: slice_weights[name][i] for name in shown if name in slice_weights},
            studies=[name for name in shown if isinstance(stacks.get(name), StudyEncoder)],
            boxes=_boxes_of(boxes, i, shown),
            gate=None if forward.weights is None else {name: float(w[i]) for name, w in forward.weights.items()},
            routing=None if forward.routing is None or experts else forward.routing[i].cpu(),
        )
        if experts and forward.routing is not None:
            explanation.experts = dict(zip(experts, forward.routing[i].tolist(), strict=True))
        if positions is not None and has(text, i):
            kept = positions[i]
            if tokenizer is not None:
                explanation.tokens = tokenizer.convert_ids_to_tokens(batch[text]["input_ids"][i].cpu()[kept].tolist())
            explanation.attention = {
                f"{text}->{name}": strips[name][i, kept.to(strips[name].device)].cpu()
                for name in shown
                if strips.get(name) is not None
            }
        if tabular is not None and has(tabular, i):
            explanation.feature_attention = {
                key: weights[i] for key, weights in on_features.items() if has(key.partition("->")[0], i)
            }
        if explanation.feature_attention:
            count = next(iter(explanation.feature_attention.values())).numel()
            explanation.features = list(columns) if columns else [f"feature {j}" for j in range(count)]
        explanations.append(explanation)
    return explanations


def _boxes_of(boxes: CropBoxes, i: int, shown: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """Sample ``i``'s crop boxes by source modality, for the sources it has."""
    out: dict[str, dict[str, list[float]]] = {}
    for crop, (source, per_sample) in boxes.items():
        if source in shown and per_sample[i] is not None:
            out.setdefault(source, {})[crop] = list(per_sample[i])
    return out


def _show_image(
    ax: Axes,
    image: torch.Tensor | None,
    heat: torch.Tensor | None = None,
    vmax: float | None = None,
    boxes: dict[str, list[float]] | None = None,
) -> None:
    """``image`` [3, H, W] with ``heat`` (any [h, w] map, resized to the image) over it in the jet colormap
    from 0 to ``vmax`` (default: the map's maximum), and the ``boxes`` (fractions) drawn and named on it."""
    if image is not None:
        ax.imshow(image.permute(1, 2, 0).numpy())
        height, width = image.shape[1:]
        for k, (name, (x0, y0, x1, y1)) in enumerate((boxes or {}).items()):
            color = colormaps["tab10"]((k + 3) % 10)
            corner = (x0 * width - 0.5, y0 * height - 0.5)
            ax.add_patch(Rectangle(corner, (x1 - x0) * width, (y1 - y0) * height, fill=False, lw=2, ec=color))
            ax.text(*corner, name, color=color, va="bottom", fontsize="small")
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


def _bar_gate(ax: Axes, gate: dict[str, float]) -> None:
    """One stacked bar, a segment per fusion input (its weight), left to right in fusion order."""
    left, colors = 0.0, colormaps["tab10"]
    for m, (name, weight) in enumerate(gate.items()):
        ax.barh([0], [weight], height=0.4, left=[left], color=colors(m % 10), label=f"{name} {weight:.2f}")
        left += weight
    ax.set_xlim(0, 1)
    ax.set_ylim(-1, 1)
    ax.set_yticks([])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=min(len(gate), 3), fontsize="small")


def _bar_routing(ax: Axes, routing: torch.Tensor) -> None:
    weights = routing.tolist()
    ax.bar(range(len(weights)), weights, color="tab:purple")
    ax.set_xticks(range(len(weights)), [f"E{k}" for k in range(len(weights))])
    ax.set_ylim(0, 1)


def _shown(images: Any) -> torch.Tensor:
    """The image a figure shows: itself, a slice stack's centre slice, a study's first image."""
    if isinstance(images, dict):
        return images["images"][:, 0]
    return images[:, images.shape[1] // 2] if images.ndim == 5 else images


def _weights(encoder: Any, images: Any) -> list[list[float]] | None:
    """Per sample the weights the encoder put on each slice or on each real image of a study (None: no weights)."""
    weights = getattr(encoder, "slice_weights", None)
    if weights is None:
        weights = getattr(encoder, "image_weights", None)
    if weights is None:
        return None
    if isinstance(images, dict):
        return [row[mask].tolist() for row, mask in zip(weights.cpu(), images["mask"].cpu(), strict=True)]
    return weights.cpu().tolist()


def _bar_slices(ax: Axes, weights: Sequence[float], centred: bool) -> None:
    """Bars per slice (offsets from the centre slice, drawn red) or per image of a study (1..M)."""
    centre = len(weights) // 2 if centred else -1
    ax.bar(range(len(weights)), weights, color=["tab:red" if k == centre else "tab:blue" for k in range(len(weights))])
    labels = [("0" if k == centre else f"{k - centre:+d}") if centred else str(k + 1) for k in range(len(weights))]
    ax.set_xticks(range(len(weights)), labels)
    ax.set_ylim(0, 1)


def _bar_features(ax: Axes, features: Sequence[str], attention: dict[str, torch.Tensor]) -> None:
    """Grouped horizontal bars: per tabular feature, the attention each query modality puts on it."""
    height = 0.8 / len(attention)
    for q, (key, weights) in enumerate(attention.items()):
        rows = [j - 0.4 + height * (q + 0.5) for j in range(len(features))]
        ax.barh(rows, weights.tolist(), height=height, color=colormaps["tab10"](q % 10), label=key)
    ax.set_yticks(range(len(features)), features)
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.legend(fontsize="small")


def explanation_figure(explanation: Explanation, class_names: Sequence[str], max_tokens: int = 8) -> Figure:
    """One figure for one sample, titled with its id and its true and predicted class: each image with its
    Grad-CAM overlay, the class probabilities, the modality weights, the MoE routing and the attention on the
    tabular features when present, and per text-to-image attention map a strip of overlays for the
    ``max_tokens`` text tokens with the most peaked attention (highest weight on one patch)."""
    e = explanation
    if len(class_names) != len(e.probs):
        raise ValueError(f"{len(class_names)} class names for {len(e.probs)} classes")
    true = "?" if e.label is None or e.label < 0 else class_names[e.label]
    panels: list[tuple[str, Callable[[Axes], None]]] = []
    for name, image in e.images.items():
        panels.append((name, partial(_show_image, image=image, boxes=e.boxes.get(name))))
        if name in e.cams:
            panels.append((f"Grad-CAM: {name}", partial(_show_image, image=image, heat=e.cams[name], vmax=1.0)))
    panels.append(("class probabilities (* = true)", partial(_bar_probs, explanation=e, class_names=class_names)))
    if e.gate is not None:
        panels.append(("modality weights", partial(_bar_gate, gate=e.gate)))
    if e.routing is not None:
        panels.append(("MoE routing weights", partial(_bar_routing, routing=e.routing)))
    if e.experts is not None:
        panels.append(("dual-expert gate", partial(_bar_gate, gate=e.experts)))
    for name, weights in e.slices.items():
        study = name in e.studies
        title = f"{'image' if study else 'slice'} weights: {name}"
        panels.append((title, partial(_bar_slices, weights=weights, centred=not study)))
    if e.feature_attention and e.features is not None:
        bars = partial(_bar_features, features=e.features, attention=e.feature_attention)
        panels.append(("attention on the tabular features", bars))
    strips = []
    for key, maps in e.attention.items():
        peaks = maps.flatten(1).amax(dim=1).tolist()
        strips.append((key, peaks, sorted(range(len(peaks)), key=lambda t: -peaks[t])[:max_tokens]))
    strips = [strip for strip in strips if strip[2]]
    width = max([len(panels), *(len(shown) for _, _, shown in strips)])
    figure = Figure(figsize=(3.2 * width, 3.6 * (1 + len(strips))), layout="constrained")
    figure.suptitle(f"{e.id} | true: {true} | predicted: {class_names[e.predicted]} ({e.probs[e.predicted]:.2f})")
    rows = figure.subfigures(1 + len(strips), 1, squeeze=False)[:, 0] if strips else [figure]
    for ax, (title, draw) in zip(rows[0].subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        draw(ax)
        ax.set_title(title)
    for row, (key, peaks, shown) in zip(rows[1:], strips, strict=True):
        image = e.images.get(key.partition("->")[2])
        row.suptitle(f"{key} attention of the most focused text tokens")
        for ax, t in zip(row.subplots(1, len(shown), squeeze=False)[0], shown, strict=True):
            _show_image(ax, image, e.attention[key][t])
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
