"""Text-conditional RQ-Transformer: config of the three condition kinds, caption prefix, text loss, caption
dropout, sampling with prompts and guidance."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel
from transformers.utils import logging as hf_logging

from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling

hf_logging.disable_progress_bar()

VOCAB = 12
SHAPE = (2, 3, 3)  # h, w, D
TEXT_VOCAB = 20
TEXT_LENGTH = 5
PAD = 0


def text_model(seed: int = 0, sharp: bool = False, **overrides) -> RQTransformerForCausalImageModeling:
    kwargs = dict(
        vocab_size=VOCAB, code_shape=SHAPE, hidden_size=32, num_spatial_layers=2, num_depth_layers=2,
        num_attention_heads=4, code_embedding_dim=8, resid_dropout=0.0, text_vocab_size=TEXT_VOCAB,
        max_text_length=TEXT_LENGTH, text_pad_token_id=PAD,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = RQTransformerForCausalImageModeling(RQTransformerConfig(**kwargs)).eval()
    if sharp:  # sharper distributions than the 0.02 init, so that samples depend on the inputs
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() > 1:
                    parameter.mul_(20.0)
    return model


def random_codes(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, *SHAPE), generator=torch.Generator().manual_seed(seed))


def random_text(batch: int, seed: int = 2) -> torch.Tensor:
    ids = torch.randint(1, TEXT_VOCAB, (batch, TEXT_LENGTH), generator=torch.Generator().manual_seed(seed))
    ids[:, -1] = PAD  # a padded tail, as real captions have
    return ids


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def model():
    return text_model(sharp=True)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, kind, length",
    [
        (dict(), "none", 1),
        (dict(num_classes=4, class_dropout_prob=0.1), "class", 1),
        (dict(text_vocab_size=50, max_text_length=7, caption_dropout_prob=0.2, text_loss_weight=0.3,
              image_loss_weight=0.7, text_pad_token_id=3), "text", 7),
    ],
)
def test_config_round_trip_for_all_condition_kinds(tmp_path, kwargs, kind, length):
    config = RQTransformerConfig(vocab_size=VOCAB, code_shape=SHAPE, hidden_size=32, num_attention_heads=4, **kwargs)
    assert config.condition_type == kind and config.condition_length == length
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is RQTransformerConfig and loaded.condition_type == kind
    for name, value in kwargs.items():
        assert getattr(loaded, name) == value, name
    assert loaded.to_diff_dict() == config.to_diff_dict()


def test_class_and_unconditional_configs_saved_before_text_support_load_unchanged(tmp_path):
    old_keys = {  # a class-conditional config.json as saved before the text fields existed
        "model_type": "rq_transformer", "vocab_size": VOCAB, "code_shape": list(SHAPE), "hidden_size": 32,
        "num_spatial_layers": 2, "num_depth_layers": 1, "num_attention_heads": 4, "num_classes": 3,
        "class_dropout_prob": 0.1, "id2label": {"0": "a", "1": "b", "2": "c"}, "code_embedding_dim": 8,
    }
    (tmp_path / "config.json").write_text(json.dumps(old_keys))
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.condition_type == "class" and config.text_vocab_size is None and config.condition_length == 1
    model = RQTransformerForCausalImageModeling(config)
    assert model.condition_position_embedding.shape == (1, 1, 32) and not hasattr(model, "text_output_proj")
    old_keys.pop("num_classes"), old_keys.pop("id2label"), old_keys.pop("class_dropout_prob")
    (tmp_path / "config.json").write_text(json.dumps(old_keys))
    assert AutoConfig.from_pretrained(tmp_path).condition_type == "none"


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(num_classes=3), "num_classes"),
        (dict(text_vocab_size=None, caption_dropout_prob=0.1), "caption_dropout_prob"),
        (dict(caption_dropout_prob=1.0), "caption_dropout_prob"),
        (dict(text_pad_token_id=TEXT_VOCAB), "text_pad_token_id"),
        (dict(max_text_length=0), "max_text_length"),
        (dict(text_vocab_size=0), "text_vocab_size"),
        (dict(text_loss_weight=-0.1), "text_loss_weight"),
        (dict(image_loss_weight=0), "image_loss_weight"),
    ],
)
def test_config_rejects_invalid_text_fields(overrides, field):
    with pytest.raises(ValueError, match=field):
        text_model(**overrides)


# ---------------------------------------------------------------- forward


def test_shapes_and_official_layout():
    model = text_model()
    assert model.condition_embedding.weight.shape == (TEXT_VOCAB, 32)
    assert model.condition_position_embedding.shape == (1, TEXT_LENGTH, 32)
    assert model.text_output_proj.weight.shape == (TEXT_VOCAB, 32)
    out = model(random_codes(3), text_ids=random_text(3))
    assert out.logits.shape == (3, *SHAPE, VOCAB)
    assert out.text_logits.shape == (3, TEXT_LENGTH - 1, TEXT_VOCAB)
    loss, logits, text_logits = model(random_codes(3), text_ids=random_text(3), labels=random_codes(3),
                                      return_dict=False)
    assert loss.dim() == 0 and torch.equal(logits, out.logits) and torch.equal(text_logits, out.text_logits)


@pytest.mark.parametrize("token", [0, 2, TEXT_LENGTH - 1])
def test_caption_prefix_is_causal(model, token):
    text, codes = random_text(2), random_codes(2)
    other = text.clone()
    other[:, token] = (other[:, token] + 3) % TEXT_VOCAB
    a, b = model(codes, text_ids=text), model(codes, text_ids=other)
    # text logit i predicts token i + 1 from tokens <= i: only logits at i >= token may change
    torch.testing.assert_close(a.text_logits[:, :token], b.text_logits[:, :token], rtol=0, atol=0)
    if token < TEXT_LENGTH - 1:
        assert (a.text_logits[:, token] - b.text_logits[:, token]).abs().amax() > 1e-4
    # every image logit sees the whole caption
    changed = (a.logits - b.logits).abs().amax(dim=-1)
    assert (changed > 1e-6).all()


def test_text_loss_weights_and_values():
    model = text_model(text_loss_weight=0.25, image_loss_weight=0.5)
    text, codes = random_text(4), random_codes(4)
    out = model(codes, text_ids=text, labels=codes)
    image = F.cross_entropy(out.logits.reshape(-1, VOCAB), codes.reshape(-1))
    caption = F.cross_entropy(out.text_logits.reshape(-1, TEXT_VOCAB), text[:, 1:].reshape(-1))
    torch.testing.assert_close(out.image_loss, image)
    torch.testing.assert_close(out.text_loss, caption)
    torch.testing.assert_close(out.loss, 0.25 * caption + 0.5 * image)
    # without text loss weight, the text head gets no gradient; with it, it does
    model.train()
    for weight, expect_grad in ((0.0, False), (0.1, True)):
        model.zero_grad()
        model.config.text_loss_weight = weight
        model(codes, text_ids=text, labels=codes).loss.backward()
        grad = model.text_output_proj.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == expect_grad


def test_caption_dropout_replaces_captions_by_the_empty_caption_in_training_only():
    model = text_model(caption_dropout_prob=0.5)
    text = random_text(1).expand(400, -1)
    codes = random_codes(1).expand(400, -1, -1, -1)
    empty = torch.full_like(text, PAD)
    with torch.no_grad():
        conditional = model(codes[:1], text_ids=text[:1]).logits
        unconditional = model(codes[:1], text_ids=empty[:1]).logits
        assert torch.equal(model(codes, text_ids=text).logits, conditional.expand(400, *conditional.shape[1:]))
        model.train()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            logits = model(codes, text_ids=text).logits
    dropped = (logits - unconditional).flatten(1).abs().amax(dim=1) < 1e-5
    kept = (logits - conditional).flatten(1).abs().amax(dim=1) < 1e-5
    assert (dropped ^ kept).all()  # every row saw its caption or the empty one
    assert 0.4 < dropped.float().mean() < 0.6
    torch.testing.assert_close(model.null_condition(2), torch.full((2, TEXT_LENGTH), PAD))


def test_automodel_round_trip(tmp_path):
    model = text_model()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is RQTransformerForCausalImageModeling and loaded.config.condition_type == "text"
    text, codes = random_text(2), random_codes(2)
    torch.testing.assert_close(loaded(codes, text_ids=text).text_logits, model(codes, text_ids=text).text_logits)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "text_ids"),
        (dict(class_labels=torch.tensor([0, 1])), "class_labels"),
        (dict(text_ids=random_text(2).float()), "text_ids"),
        (dict(text_ids=random_text(2)[:, :3]), "max_text_length"),
        (dict(text_ids=random_text(2) + TEXT_VOCAB), "text_vocab_size"),
    ],
)
def test_forward_bad_text_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        text_model()(random_codes(2), **kwargs)


def test_class_model_rejects_text_ids():
    model = text_model(text_vocab_size=None, num_classes=3)
    with pytest.raises(ValueError, match="text_ids"):
        model(random_codes(2), class_labels=torch.tensor([0, 1]), text_ids=random_text(2))
    with pytest.raises(ValueError, match="negative_text_ids"):
        model.generate_codes(class_labels=[0], negative_text_ids=random_text(1), guidance_scale=2.0)


# ---------------------------------------------------------------- sampling


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_greedy_sampling_equals_argmax_of_the_forward_pass(model, guidance_scale):
    text = random_text(2)
    codes = model.generate_codes(text_ids=text, top_k=1, guidance_scale=guidance_scale)
    logits = model(codes, text_ids=text).logits
    if guidance_scale != 1.0:
        empty = model(codes, text_ids=torch.full_like(text, PAD)).logits
        logits = empty + guidance_scale * (logits - empty)
    assert torch.equal(codes, logits.argmax(dim=-1))


def test_negative_text_ids_are_the_unconditional_branch(model):
    text, negative = random_text(2), random_text(2, seed=7)
    codes = model.generate_codes(text_ids=text, negative_text_ids=negative, top_k=1, guidance_scale=2.0)
    conditional, unconditional = model(codes, text_ids=text).logits, model(codes, text_ids=negative).logits
    assert torch.equal(codes, (unconditional + 2.0 * (conditional - unconditional)).argmax(dim=-1))


@pytest.mark.parametrize("kwargs", [dict(), dict(guidance_scale=3.0, top_k=6, top_p=0.9, temperature=0.8)])
def test_cached_equals_uncached_codes(model, kwargs):
    text = random_text(3)
    cached = model.generate_codes(text_ids=text, generator=gen(4), **kwargs)
    uncached = model.generate_codes(text_ids=text, generator=gen(4), use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    completed = model.generate_codes(text_ids=text, generator=gen(4), prefix_codes=cached, num_prefix_positions=2,
                                     **kwargs)
    assert torch.equal(completed.reshape(3, -1, SHAPE[2])[:, :2], cached.reshape(3, -1, SHAPE[2])[:, :2])


def test_spatial_cache_takes_the_caption_once(model):
    calls = []
    handle = model.spatial_transformer.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[1]))
    try:
        model.generate_codes(text_ids=random_text(1), generator=gen(0))
    finally:
        handle.remove()
    assert calls == [TEXT_LENGTH] + [1] * (SHAPE[0] * SHAPE[1] - 1)


def test_captions_change_the_samples(model):
    a = model.generate_codes(text_ids=random_text(4, seed=1), generator=gen(0))
    b = model.generate_codes(text_ids=random_text(4, seed=2), generator=gen(0))
    assert not torch.equal(a, b)


def test_static_cache_decoding_takes_the_caption_prefix(model, monkeypatch):
    """`compile=True` with the steps left uncompiled: static caches of length L + T - 1, the same codes."""
    monkeypatch.setattr(RQTransformerForCausalImageModeling, "_compile_mode",
                        staticmethod(lambda compile, use_cache, device: None))
    text, negative = random_text(2), random_text(2, seed=9)
    kwargs = dict(text_ids=text, negative_text_ids=negative, guidance_scale=2.0, top_k=6)
    static = model.generate_codes(generator=gen(0), compile=True, **kwargs)
    assert torch.equal(static, model.generate_codes(generator=gen(0), **kwargs))
    state = model.__dict__.pop("_static_decoding_state")
    assert state.spatial_cache.layers[0].keys.shape[2] == TEXT_LENGTH + SHAPE[0] * SHAPE[1] - 1
