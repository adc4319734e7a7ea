"""Text encoder over any transformers model (hub name or local path), or a tiny offline BERT."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, PretrainedConfig, PreTrainedModel

from medfusion.encoders.encoded import Encoded
from medfusion.runs.ranks import rank_zero_warn

TINY = "tiny"


def tiny_bert_config(vocab_size: int, max_length: int = 512) -> BertConfig:
    """A 4-layer, 128-wide BERT: fast on a CPU and enough for the demo's reports."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=max_length,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )


def pretrained_vocab_size(name: str) -> int | None:
    """The size of the tokenizer a model was pretrained with (what ``data.tokenizer: <name>`` gives), or None
    when it cannot be loaded (no tokenizer files with the weights, offline without a cache)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, ImportError, KeyError, TypeError):
        return None
    # a folder with only config.json and weights gives a tokenizer of just the special tokens: no vocabulary
    return len(tokenizer) if len(tokenizer) > len(set(tokenizer.all_special_ids)) else None


def without_pooler(factory: Callable[..., PreTrainedModel], source: Any) -> PreTrainedModel:
    """Build without BERT's pooler where the family has one: it is unused and would leave
    parameters without gradient (an error under DDP)."""
    try:
        return factory(source, add_pooling_layer=False)
    except TypeError:
        return factory(source)


def spaced_layers(num_layers: int, num_levels: int) -> list[int]:
    """Evenly spaced hidden-state indices, deepest last: 12 layers, 3 levels -> [4, 8, 12]."""
    if not 1 <= num_levels <= num_layers:
        raise ValueError(f"num_levels must be in [1, {num_layers}], got {num_levels}")
    return [round(num_layers * (i + 1) / num_levels) for i in range(num_levels)]


class TextEncoder(nn.Module):
    """A transformers encoder returning :class:`Encoded`.

    Args:
        model_name: ``"tiny"`` (a small BERT built from config, for offline use with the
            datamodule's WordPiece tokenizer), a hub name (``emilyalsentzer/Bio_ClinicalBERT``)
            or a local directory with a ``config.json``.
        pretrained: load the named model's weights. Loaded by :meth:`load_pretrained` when a
            fit starts, so building the module (e.g. from a checkpoint) never downloads weights.
        pooling: ``"cls"`` (first token) or ``"mean"`` (mean over real tokens).
        num_levels: hidden states of evenly spaced layers in :attr:`Encoded.levels`.
        vocab_size: the tokenizer's vocabulary (linked from the datamodule); sizes the
            embeddings of models built from config.
        max_length: position embeddings of the tiny model.
    """

    def __init__(
        self,
        model_name: str = TINY,
        pretrained: bool = False,
        pooling: Literal["cls", "mean"] = "cls",
        num_levels: int = 3,
        vocab_size: int | None = None,
        max_length: int = 512,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.pretrained = pretrained
        self.pooling = pooling
        config = self._config(vocab_size, max_length)
        self.model = without_pooler(AutoModel.from_config, config)
        config = self.model.config
        self.out_dim: int = config.hidden_size
        self.vocab_size: int = config.vocab_size
        self.level_layers = spaced_layers(config.num_hidden_layers, num_levels)
        self.level_dims: list[int] = [config.hidden_size] * num_levels
        self.token_dim: int = config.hidden_size

    def _config(self, vocab_size: int | None, max_length: int) -> PretrainedConfig:
        if self.model_name == TINY:
            if vocab_size is None:
                raise ValueError("The tiny text encoder needs vocab_size (linked from the datamodule's tokenizer)")
            return tiny_bert_config(vocab_size, max_length)
        config = AutoConfig.from_pretrained(self.model_name)
        if vocab_size is not None and self.pretrained:
            self._check_vocabulary(vocab_size, config.vocab_size)
        elif vocab_size is not None and vocab_size > config.vocab_size:
            config.vocab_size = vocab_size
        return config

    def _check_vocabulary(self, vocab_size: int, embedded: int) -> None:
        """Refuse token ids the pretrained weights were not trained on: the datamodule's tokenizer (its size is
        all that is linked here) must be the model's own. The usual mistake is ``data.tokenizer: wordpiece``
        (the default, a vocabulary trained on the user's texts) with pretrained weights: it runs, but id 1000
        means another word to the model, so the text model reads noise."""
        name = self.model_name
        fix = (
            f"Fix: data.tokenizer: {name} (the same name as the text encoder's model_name), "
            "or pretrained: false to train the text model from scratch on this vocabulary."
        )
        if vocab_size > embedded:
            raise ValueError(f"The data's tokenizer has {vocab_size} tokens but {name} embeds only {embedded}. {fix}")
        own = pretrained_vocab_size(name)
        if own is not None and own != vocab_size:
            raise ValueError(
                f"The data's tokenizer has {vocab_size} tokens but {name} was pretrained with its own tokenizer of "
                f"{own}: the token ids would mean other words to the pretrained weights (the usual cause: "
                f"data.tokenizer left at wordpiece, the default, which trains a new vocabulary on your texts). {fix}"
            )
        if own is None and vocab_size != embedded:
            rank_zero_warn(
                f"The data's tokenizer has {vocab_size} tokens but {name} embeds {embedded}, and {name}'s own "
                f"tokenizer could not be loaded to compare: if data.tokenizer is wordpiece (the default), the "
                f"pretrained text model reads meaningless ids. {fix}"
            )

    def load_pretrained(self) -> None:
        """Load the named model's pretrained weights (hub or local directory)."""
        if self.pretrained:
            source = without_pooler(AutoModel.from_pretrained, self.model_name)
            self.model.load_state_dict(source.state_dict())

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, tokens: bool = False, levels: bool = False
    ) -> Encoded:
        """Encode token ids [B, L] with ``attention_mask`` [B, L] (1 = real token)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=levels)
        hidden = out.last_hidden_state
        mask = attention_mask.bool()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        encoded = Encoded(pooled=pooled)
        if tokens:
            encoded.tokens, encoded.mask = hidden, mask
        if levels:
            encoded.levels = [out.hidden_states[i][:, 0] for i in self.level_layers]
        return encoded
