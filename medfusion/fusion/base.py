"""The fusion contract and its registry.

A fusion is a plain ``nn.Module`` over named tensors, so that other projects can use it without Lightning
(TorchMultimodal's convention: a dict of modalities in, one vector per sample out)::

    fusion = GatedFusion(dims={"image": 512, "text": 768, "tabular": 64}, out_dim=256)
    fused = fusion({"image": v, "text": t, "tabular": x})  # [B, 256]

The two-input shorthand stays: ``GatedFusion(image_dim=512, text_dim=768, out_dim=256)`` and
``fusion(v, t)``, the inputs being named ``image`` and ``text``.

``input_kind`` says what each input is: ``"pooled"`` -> ``[B, D]``; ``"tokens"`` -> ``[B, N, D]`` with
``masks={name: bool [B, N]}`` (True = real token; the shorthand takes ``image_mask=`` / ``text_mask=``);
``"levels"`` -> a list of ``[B, D_l]`` tensors per input (its dims a list). Pooled and level fusions take
``masks={name: bool [B]}``: False marks an input absent for that sample, which then has no influence on the
output. Inputs are fused in the order of ``dims``; an input of another name, or a missing one, is an error
naming both lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from medfusion.fusion.checks import Inputs, Masks, check_inputs
from medfusion.registry import Registry

InputKind = Literal["pooled", "tokens", "levels"]


def named_dims(dims: Mapping[str, Any] | None, image_dim: Any = None, text_dim: Any = None) -> dict[str, Any]:
    """``dims`` as a dict, or ``{"image": image_dim, "text": text_dim}`` for the two-input shorthand; at least two
    inputs, each named once."""
    if dims is not None and (image_dim is not None or text_dim is not None):
        raise ValueError("give the input sizes once: either dims={name: dim, ...} or image_dim and text_dim")
    if dims is None:
        if image_dim is None or text_dim is None:
            raise ValueError("a fusion needs dims={name: dim, ...} for two or more inputs (or image_dim and text_dim)")
        dims = {"image": image_dim, "text": text_dim}
    if not isinstance(dims, Mapping):
        raise TypeError(f"dims must map input names to sizes, e.g. {{'image': 512, 'text': 768}}; got {dims!r}")
    dims = {str(name): list(dim) if isinstance(dim, Sequence) else dim for name, dim in dims.items()}
    containers = (nn.ModuleDict(), nn.ParameterDict())  # names key these in the fusions
    for name in dims:
        if not name or "." in name or any(hasattr(container, name) for container in containers):
            raise ValueError(
                f"input name {name!r} cannot name a module (empty, contains '.', or an attribute of "
                "nn.ModuleDict/nn.ParameterDict); rename the input, e.g. with '_' instead of '.'"
            )
    if len(dims) < 2:
        raise ValueError(f"a fusion needs two or more inputs, got dims={dims}")
    return dims


def fill_absent(x: torch.Tensor, present: torch.Tensor | None, value: float = 0.0) -> torch.Tensor:
    """``x`` ``[B, ...]`` with the rows of absent samples (``present`` False) set to ``value``; ``x`` itself when
    ``present`` is None. ``masked_fill``, not a product, so that NaN in an absent row cannot leak."""
    if present is None:
        return x
    return x.masked_fill(~present.view(-1, *([1] * (x.ndim - 1))), value)


class Fusion(nn.Module):
    """Base class of all fusions: ``dims`` (name -> size, in fusion order), ``out_dim``, ``input_kind``.

    Subclasses implement :meth:`fuse` over validated named inputs. The interpretation hooks that logging and
    ``medfusion explain`` read are declared here: :meth:`modality_weights` and, while ``store_attention`` is
    True, :meth:`attention_maps`.
    """

    input_kind: ClassVar[InputKind] = "pooled"

    def __init__(
        self,
        dims: Mapping[str, Any] | None = None,
        out_dim: int | None = None,
        *,
        image_dim: Any = None,
        text_dim: Any = None,
    ) -> None:
        super().__init__()
        self.dims = named_dims(dims, image_dim, text_dim)
        if not isinstance(out_dim, int) or out_dim < 1:
            raise ValueError(f"out_dim must be a positive int, got {out_dim!r}")
        self.out_dim = out_dim
        self.store_attention = False

    @property
    def names(self) -> list[str]:
        """The input names, in fusion order."""
        return list(self.dims)

    def forward(
        self,
        inputs: Mapping[str, Any] | torch.Tensor | Sequence[torch.Tensor],
        *others: Any,
        masks: Mapping[str, torch.Tensor | None] | None = None,
        **named_masks: torch.Tensor | None,
    ) -> torch.Tensor:
        """Fuse ``{name: input}`` (or the shorthand ``fusion(image, text, image_mask=..., text_mask=...)``) into
        ``[B, out_dim]``."""
        named, all_masks = self.named_inputs(inputs, others, masks, named_masks)
        self.check(named, all_masks)
        return self.fuse(named, all_masks)

    def fuse(self, inputs: Inputs, masks: Masks) -> torch.Tensor:
        """Fuse validated inputs (every name of ``dims``; ``masks`` has every name, None = all real/present)."""
        raise NotImplementedError

    def named_inputs(
        self,
        inputs: Mapping[str, Any] | Any,
        others: Sequence[Any],
        masks: Mapping[str, torch.Tensor | None] | None,
        named_masks: Mapping[str, torch.Tensor | None],
    ) -> tuple[Inputs, Masks]:
        """The inputs and masks by name, from the dict form or the positional shorthand (``image``, ``text``)."""
        if isinstance(inputs, Mapping):
            if others:
                raise TypeError("pass the inputs either as one dict {name: tensor} or positionally, not both")
            named = dict(inputs)
        else:
            positional = [inputs, *others]
            if len(positional) != len(self.dims):
                raise TypeError(
                    f"{type(self).__name__} fuses {self.names}: got {len(positional)} positional inputs; pass a dict"
                )
            named = dict(zip(self.names, positional, strict=True))
        given = dict(masks or {})
        for key, mask in named_masks.items():
            if not key.endswith("_mask"):
                raise TypeError(f"unexpected keyword argument {key!r}; masks are passed as masks={{name: mask}}")
            given[key.removesuffix("_mask")] = mask
        if set(named) != set(self.dims) or not set(given) <= set(self.dims):
            raise ValueError(
                f"{type(self).__name__} was built for inputs {self.names} but got inputs {sorted(named)}"
                + (f" and masks {sorted(given)}" if given else "")
            )
        return {name: named[name] for name in self.names}, {name: given.get(name) for name in self.names}

    def check(self, inputs: Inputs, masks: Masks) -> None:
        """Validate shapes, batch sizes and masks against ``dims`` and ``input_kind``, naming the input."""
        check_inputs(self.input_kind, inputs, masks, self.dims)

    # ------------------------------------------------------------------ interpretation hooks
    def modality_weights(self) -> torch.Tensor | None:
        """How much each input weighed per sample in the last forward, ``[B, len(names)]`` (rows sum to 1,
        columns in ``names`` order), for fusions that weigh their inputs (gated, hierarchical); else None."""
        return None

    def attention_maps(self) -> dict[str, torch.Tensor]:
        """The last forward's attention maps while ``store_attention`` is True, keyed ``"<query>-><context>"``
        (``[B, heads, N_query, N_context]``); empty for fusions without attention."""
        return {}

    def extra_losses(self) -> dict[str, torch.Tensor]:
        """Auxiliary training losses of the last forward (none by default)."""
        return {}


FUSIONS: Registry[Fusion] = Registry("fusion")


def build_fusion(name: str, *, out_dim: int, dims: Mapping[str, Any] | None = None, **hparams: Any) -> Fusion:
    """Build a registered fusion by name: ``build_fusion("gated", dims={"image": 512, "text": 768}, out_dim=256)``
    (or ``image_dim=..., text_dim=...``)."""
    return FUSIONS.build(name, dims=dims, out_dim=out_dim, **hparams)
