"""Encoders return the Encoded contract, mask padding, and never download in a constructor."""

from __future__ import annotations

import pytest
import timm
import torch
from transformers import AutoModel, BertConfig, BertModel, BertTokenizerFast

from medfusion.data.tokenizer import build_tokenizer
from medfusion.encoders import Encoded, ImageEncoder, TextEncoder
from medfusion.encoders.text import spaced_layers


@pytest.mark.parametrize(
    ("name", "tokens", "level_dims"),
    [("test_resnet", 4, [48, 192, 96]), ("test_vit", 16, [64, 64, 64])],
    ids=["cnn", "vit"],
)
def test_image_encoder_shapes(name: str, tokens: int, level_dims: list[int]) -> None:
    encoder = ImageEncoder(name).eval()
    image = torch.randn(2, 3, 64, 64)
    out = encoder(image, tokens=True, levels=True)
    assert isinstance(out, Encoded)
    assert out.pooled.shape == (2, encoder.out_dim)
    assert out.tokens.shape == (2, tokens, encoder.token_dim)
    assert out.mask.dtype == torch.bool and out.mask.all()
    assert encoder.level_dims == level_dims
    assert [lv.shape for lv in out.levels] == [(2, d) for d in level_dims]
    plain = encoder(image)
    assert plain.tokens is None and plain.levels is None and plain.mask is None
    # the one-pass intermediates path gives the same pooled output as forward_features
    torch.testing.assert_close(plain.pooled, out.pooled)


def test_image_encoder_out_dim_is_the_pre_logits_width() -> None:
    """MambaOut's pre-logits output is a hidden layer wider than num_features: out_dim must follow it."""
    encoder = ImageEncoder("test_mambaout").eval()
    assert encoder.out_dim != encoder.model.num_features
    assert encoder(torch.randn(2, 3, 64, 64)).pooled.shape == (2, encoder.out_dim)


def test_resnet18_levels_are_layer2_to_4() -> None:
    encoder = ImageEncoder("resnet18")
    assert encoder.level_dims == [128, 256, 512]
    assert encoder.out_dim == encoder.token_dim == 512


def test_spaced_layers() -> None:
    assert spaced_layers(12, 3) == [4, 8, 12]
    assert spaced_layers(4, 3) == [1, 3, 4]
    with pytest.raises(ValueError, match="num_levels"):
        spaced_layers(2, 3)


def _ids_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 100, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    return ids, mask


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_tiny_text_encoder_shapes_and_padding(pooling: str) -> None:
    encoder = TextEncoder("tiny", vocab_size=100, pooling=pooling).eval()
    ids, mask = _ids_and_mask()
    out = encoder(ids, mask, tokens=True, levels=True)
    assert out.pooled.shape == (2, 128)
    assert out.tokens.shape == (2, 9, 128)
    assert out.mask.tolist()[1] == [True] * 5 + [False] * 4
    assert len(out.levels) == 3 and all(lv.shape == (2, 128) for lv in out.levels)
    # what sits in padded positions must not change the output
    noisy = ids.clone()
    noisy[1, 5:] = torch.randint(5, 100, (4,))
    torch.testing.assert_close(encoder(noisy, mask).pooled, out.pooled)


def test_tiny_text_encoder_needs_vocab() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        TextEncoder("tiny")


@pytest.fixture
def bert_dir(tmp_path):
    """A local BERT-architecture model (config + weights), as a user's downloaded model folder."""
    config = BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(tmp_path)
    return tmp_path


def test_bert_config_encoder_from_local_path(bert_dir) -> None:
    encoder = TextEncoder(str(bert_dir), vocab_size=120).eval()
    assert encoder.level_layers == [2, 4, 6]
    ids, mask = _ids_and_mask()
    out = encoder(ids, mask, levels=True)
    assert out.pooled.shape == (2, 32) and [lv.shape for lv in out.levels] == [(2, 32)] * 3
    # the pooler is dropped: every parameter is used, so DDP needs no find_unused_parameters
    assert not any("pooler" in name for name, _ in encoder.named_parameters())


def test_pretrained_weights_load_on_request_not_in_constructor(bert_dir, monkeypatch) -> None:
    calls = []
    original = AutoModel.from_pretrained

    def spy(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", spy)
    encoder = TextEncoder(str(bert_dir), pretrained=True)
    assert calls == []  # building the architecture downloads/loads no weights
    saved = BertModel.from_pretrained(bert_dir, add_pooling_layer=False).state_dict()
    key = "embeddings.word_embeddings.weight"
    assert not torch.equal(encoder.model.state_dict()[key], saved[key])
    encoder.load_pretrained()
    assert calls == [str(bert_dir)]
    for name, value in saved.items():
        torch.testing.assert_close(encoder.model.state_dict()[name], value)


def test_pretrained_tokenizer_larger_than_model_vocab_is_an_error(bert_dir) -> None:
    with pytest.raises(ValueError, match="embeds only 120"):
        TextEncoder(str(bert_dir), pretrained=True, vocab_size=500)


@pytest.fixture
def bert_with_tokenizer(tmp_path):
    """A local model folder as ``save_pretrained`` of a model and its tokenizer writes it (120 tokens)."""
    BertModel(
        BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters)]
    vocab += [f"word{i}" for i in range(120 - len(vocab))]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    return tmp_path


REPORTS = ["no acute findings", "small left effusion", "no effusion", "mild cardiomegaly, no effusion"] * 3


def test_pretrained_text_model_with_a_wordpiece_tokenizer_is_an_error(bert_with_tokenizer) -> None:
    # data.tokenizer left at "wordpiece": a new vocabulary, whose ids mean other words to the pretrained weights.
    wordpiece = build_tokenizer("wordpiece", REPORTS, vocab_size=100)
    assert len(wordpiece) < 120  # smaller than the model's vocabulary: the old size check let it through
    name = str(bert_with_tokenizer)
    with pytest.raises(ValueError, match="wordpiece") as info:
        TextEncoder(name, pretrained=True, vocab_size=len(wordpiece))
    assert f"data.tokenizer: {name}" in str(info.value) and "120" in str(info.value)
    # The fix the message names: the model's own tokenizer.
    own = build_tokenizer(name, REPORTS, vocab_size=100)
    encoder = TextEncoder(name, pretrained=True, vocab_size=len(own))
    encoder.load_pretrained()
    ids = torch.tensor(own(REPORTS[:2], padding=True)["input_ids"])
    assert encoder(ids, torch.ones_like(ids)).pooled.shape == (2, 32)
    # Trained from scratch (pretrained: false) any vocabulary is fine.
    assert TextEncoder(name, vocab_size=len(wordpiece)).vocab_size == 120


def test_pretrained_text_model_without_its_tokenizer_warns_about_another_vocabulary(bert_dir) -> None:
    # Only config and weights in the folder: nothing to compare with but the embedding size.
    with pytest.warns(UserWarning, match=f"data.tokenizer: {bert_dir}"):
        TextEncoder(str(bert_dir), pretrained=True, vocab_size=60)
    # ... and naming that folder as data.tokenizer would give a tokenizer of special tokens only (all [UNK]).
    with pytest.raises(ValueError, match="no tokenizer vocabulary"):
        build_tokenizer(str(bert_dir), REPORTS, vocab_size=100)


def test_image_checkpoint_path_loads_local_weights(tmp_path, monkeypatch) -> None:
    source = timm.create_model("test_resnet", num_classes=0)
    weights = tmp_path / "weights.pth"
    torch.save(source.state_dict(), weights)
    created = []
    original = timm.create_model

    def spy(*args, **kwargs):
        created.append(kwargs.get("pretrained"))
        return original(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    encoder = ImageEncoder("test_resnet", checkpoint_path=str(weights))
    assert created == [False]
    encoder.load_pretrained()
    for name, value in source.state_dict().items():
        torch.testing.assert_close(encoder.model.state_dict()[name], value)
