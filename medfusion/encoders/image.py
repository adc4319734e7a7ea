"""Image encoder over any timm backbone, returning :class:`Encoded`."""

from __future__ import annotations

import timm
import torch
from torch import nn

from medfusion.encoders.encoded import Encoded


class ImageEncoder(nn.Module):
    """A timm backbone without its classifier.

    Args:
        model_name: any ``timm.list_models()`` name (``resnet18``, ``vit_small_patch16_224``,
            ``convnext_tiny``, ``test_resnet`` ...).
        pretrained: load timm's pretrained weights (hub download or cache). The weights are
            loaded by :meth:`load_pretrained`, which the LightningModule calls when a fit
            starts, so building the model (e.g. from a checkpoint) never downloads.
        checkpoint_path: a local weights file to load instead of the hub's.
        num_levels: how many of the deepest stages :attr:`Encoded.levels` holds
            (3 for ResNet gives layer2/3/4).
        drop_path_rate: stochastic depth, passed to timm.
        in_chans: input channels (a 2.5D stack fed as channels: one grey channel per slice). Pretrained RGB
            weights of the first convolution are summed over R, G, B and spread evenly over the ``in_chans``
            channels, so that K identical slices give what the RGB model gives on that grey image.
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        num_levels: int = 3,
        drop_path_rate: float = 0.0,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
        self.in_chans = in_chans
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
        self.model_name = model_name
        self.pretrained = pretrained
        self.checkpoint_path = checkpoint_path
        channels = [info["num_chs"] for info in self.model.feature_info]
        if not 1 <= num_levels <= len(channels):
            raise ValueError(f"num_levels must be in [1, {len(channels)}] for {model_name}, got {num_levels}")
        self.num_levels = num_levels
        # pre-logits width: some models (MambaOut, ConvNeXt-V2 heads) add a hidden layer after num_features
        self.out_dim: int = getattr(self.model, "head_hidden_size", None) or self.model.num_features
        self.level_dims: list[int] = channels[-num_levels:]
        self.token_dim: int = channels[-1]
        self.num_prefix_tokens: int = getattr(self.model, "num_prefix_tokens", 0)
        self.channels_last = False  # set by the model's channels_last option: images are converted on entry

    @property
    def wants_pretrained(self) -> bool:
        return self.pretrained or self.checkpoint_path is not None

    def load_pretrained(self) -> None:
        """Load the pretrained weights the user named (hub or ``checkpoint_path``)."""
        if not self.wants_pretrained:
            return
        overlay = {"file": self.checkpoint_path} if self.checkpoint_path else None
        source = timm.create_model(self.model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
        weights = source.state_dict()
        if self.in_chans != 3:
            key = f"{self.model.pretrained_cfg['first_conv']}.weight"
            rgb = weights[key]
            weights[key] = rgb.sum(dim=1, keepdim=True).repeat(1, self.in_chans, 1, 1) / self.in_chans
        self.model.load_state_dict(weights)

    def forward(self, image: torch.Tensor, *, tokens: bool = False, levels: bool = False) -> Encoded:
        """Encode ``image`` [B, 3, H, W]; ``tokens``/``levels`` ask for the extra outputs."""
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        if levels:
            features, stages = self.model.forward_intermediates(image, indices=self.num_levels)
            level_vectors = [stage.mean(dim=(2, 3)) for stage in stages]  # NCHW for CNNs and ViTs alike
        else:
            features, level_vectors = self.model.forward_features(image), None
        out = Encoded(pooled=self.model.forward_head(features, pre_logits=True), levels=level_vectors)
        if tokens:
            if features.ndim == 4:  # CNN map [B, C, H, W] -> patches [B, HW, C]
                patch_tokens = features.flatten(2).transpose(1, 2)
            else:  # ViT [B, prefix + N, D]: keep the patches
                patch_tokens = features[:, self.num_prefix_tokens :]
            out.tokens = patch_tokens
            out.mask = torch.ones(patch_tokens.shape[:2], dtype=torch.bool, device=patch_tokens.device)
        return out
