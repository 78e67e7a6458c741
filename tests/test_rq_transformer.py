"""RQTransformerConfig and the RQ-Transformer forward pass: shapes, causality, losses, save/load, bf16."""

import pytest
import torch
from transformers import AutoConfig, AutoModel
from transformers.utils import logging as hf_logging

from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling

hf_logging.disable_progress_bar()

VOCAB = 12
SHAPE = (2, 3, 3)  # h, w, D


def tiny_config(**overrides) -> RQTransformerConfig:
    kwargs = dict(
        vocab_size=VOCAB, code_shape=SHAPE, hidden_size=32, num_spatial_layers=2, num_depth_layers=2,
        num_attention_heads=4, code_embedding_dim=8, resid_dropout=0.0, num_classes=5,
    )
    kwargs.update(overrides)
    return RQTransformerConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> RQTransformerForCausalImageModeling:
    torch.manual_seed(seed)
    return RQTransformerForCausalImageModeling(tiny_config(**overrides)).eval()


def random_codes(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, *SHAPE), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- config


def test_config_defaults_and_class_names():
    config = tiny_config(intermediate_size=None)
    assert config.intermediate_size == 4 * 32
    assert config.code_shape == list(SHAPE)
    assert config.id2label == {i: str(i) for i in range(5)}
    assert config.label2id["3"] == 3
    assert tiny_config(num_classes=None).id2label is None


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(hidden_size=30), "num_attention_heads"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(num_depth_layers=-1), "num_depth_layers"),
        (dict(code_shape=(2, 3)), "code_shape"),
        (dict(code_shape=(2, 0, 3)), "code_shape"),
        (dict(resid_dropout=1.5), "resid_dropout"),
        (dict(num_classes=None, class_dropout_prob=0.1), "class_dropout_prob"),
        (dict(num_classes=0), "num_classes"),
        (dict(intermediate_size=0), "intermediate_size"),
        (dict(id2label={0: "a"}), "id2label"),
    ],
)
def test_config_rejects_invalid_values(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


# ---------------------------------------------------------------- forward


def test_forward_shapes_and_loss_goes_down():
    model = tiny_model()
    codes = random_codes(3)
    out = model(codes, class_labels=torch.tensor([0, 1, 4]), labels=codes)
    assert out.logits.shape == (3, *SHAPE, VOCAB)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = model(codes, class_labels=[0, 1, 4], labels=codes).loss
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("position, depth", [(0, 0), (2, 1), (3, 2), (5, 0)])
def test_causality_over_positions_and_depths(position, depth):
    model = tiny_model()
    codes = random_codes(1)
    flat = codes.reshape(1, -1, SHAPE[2]).clone()
    changed = flat.clone()
    changed[0, position, depth] = (changed[0, position, depth] + 1) % VOCAB
    logits = model(flat.reshape(codes.shape), class_labels=[2]).logits.reshape(1, -1, SHAPE[2], VOCAB)
    logits2 = model(changed.reshape(codes.shape), class_labels=[2]).logits.reshape(1, -1, SHAPE[2], VOCAB)
    # Nothing at or before (position, depth) may change ...
    torch.testing.assert_close(logits2[:, :position], logits[:, :position], rtol=0, atol=0)
    same = slice(0, depth + 1)
    torch.testing.assert_close(logits2[:, position, same], logits[:, position, same], rtol=0, atol=0)
    # ... and the codes after it do see the change (later depths of this position, and every later position).
    if depth + 1 < SHAPE[2]:
        assert not torch.allclose(logits2[:, position, depth + 1:], logits[:, position, depth + 1:])
    if position + 1 < flat.shape[1]:
        for later in range(position + 1, flat.shape[1]):
            assert not torch.allclose(logits2[:, later], logits[:, later])


def test_class_label_changes_every_logit():
    model = tiny_model()
    codes = random_codes(1)
    a = model(codes, class_labels=[1]).logits
    b = model(codes, class_labels=[2]).logits
    assert not torch.isclose(a, b).all(dim=-1).any()


def test_soft_targets_equal_hard_cross_entropy_for_one_hot():
    model = tiny_model()
    codes = random_codes(2)
    hard = model(codes, class_labels=[0, 1], labels=codes).loss
    one_hot = torch.nn.functional.one_hot(codes, VOCAB).float()
    soft = model(codes, class_labels=[0, 1], labels=one_hot).loss
    torch.testing.assert_close(soft, hard)
    # A genuinely soft target gives the expected value too.
    probs = torch.softmax(torch.randn(2, *SHAPE, VOCAB), dim=-1)
    out = model(codes, class_labels=[0, 1], labels=probs)
    expected = -(probs * torch.log_softmax(out.logits, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(out.loss, expected)


def test_unconditional_model_and_class_dropout():
    model = tiny_model(num_classes=None)
    assert model.condition_embedding.num_embeddings == 1
    assert model(random_codes(2)).logits.shape == (2, *SHAPE, VOCAB)

    model = tiny_model(class_dropout_prob=0.999)
    codes = random_codes(2)
    null = model(codes, class_labels=[5, 5]).logits  # index num_classes is the null class
    model.train()
    dropped = model(codes, class_labels=[0, 3]).logits
    torch.testing.assert_close(dropped, null)
    model.eval()
    assert not torch.allclose(model(codes, class_labels=[0, 3]).logits, null)


def test_automodel_from_pretrained_round_trip(tmp_path):
    model = tiny_model()
    codes = random_codes(2)
    expected = model(codes, class_labels=[0, 3]).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, RQTransformerConfig) and config.id2label[4] == "4"
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, RQTransformerForCausalImageModeling)
    assert torch.equal(loaded(codes, class_labels=[0, 3]).logits, expected)
    # The saved folder carries the code for `trust_remote_code=True` loading.
    assert (tmp_path / "modeling_rq_transformer.py").exists()
    assert (tmp_path / "configuration_rq_transformer.py").exists()


def test_gradient_checkpointing_same_loss_and_gradients():
    codes = random_codes(2)
    results = []
    for checkpointing in (False, True):
        model = tiny_model()
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.spatial_transformer.gradient_checkpointing
        loss = model(codes, class_labels=[0, 1], labels=codes).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0])
    for g1, g0 in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(g1, g0)


def test_bf16_autocast_and_bf16_weights():
    model = tiny_model()
    codes = random_codes(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(codes, class_labels=[0, 1], labels=codes)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    reference = model(codes, class_labels=[0, 1]).logits
    assert (out.logits.float() - reference).abs().max() < 0.1
    model.to(torch.bfloat16)
    assert torch.isfinite(model(codes, class_labels=[0, 1], labels=codes).loss)


def test_init_code_embeddings_duck_types():
    model = tiny_model()
    table = torch.randn(VOCAB, 8)

    class Quantizer:
        shared_codebook = True

        def codebook(self, depth):
            return table

    class Vae:
        quantizer = Quantizer()

    for source in (table, Quantizer(), Vae()):
        model.code_embeddings.weight.data.zero_()
        model.init_code_embeddings(source)
        assert torch.equal(model.code_embeddings.weight, table)
        assert not model.code_embeddings.weight.requires_grad
    model.init_code_embeddings(table, freeze=False)
    assert model.code_embeddings.weight.requires_grad
    with pytest.raises(ValueError, match="vae_or_quantizer"):
        model.init_code_embeddings(torch.randn(VOCAB + 1, 8))
    with pytest.raises(TypeError, match="vae_or_quantizer"):
        model.init_code_embeddings(object())


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(codes=torch.full((1, *SHAPE), VOCAB)), "codes"),
        (dict(codes=torch.full((1, *SHAPE), -1)), "codes"),
        (dict(codes=torch.zeros(1, 3, 2, 3, dtype=torch.long)), "codes"),
        (dict(codes=torch.zeros(1, *SHAPE)), "codes"),  # float codes
        (dict(class_labels=[6]), "class_labels"),
        (dict(class_labels=[-1]), "class_labels"),
        (dict(class_labels=None), "class_labels"),
        (dict(class_labels=[0, 1]), "class_labels"),
        (dict(labels=torch.full((1, *SHAPE), VOCAB)), "labels"),
        (dict(labels=torch.zeros(1, *SHAPE, VOCAB + 1)), "labels"),
    ],
)
def test_forward_bad_input_raises(kwargs, argument):
    model = tiny_model()
    call = dict(codes=torch.zeros(1, *SHAPE, dtype=torch.long), class_labels=[0])
    call.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        model(**call)


def test_unconditional_model_rejects_class_labels():
    with pytest.raises(ValueError, match="class_labels"):
        tiny_model(num_classes=None)(torch.zeros(1, *SHAPE, dtype=torch.long), class_labels=[0])


def test_sizes_left_unset_are_filled_from_the_rqvae(tmp_path):
    from tiny_models import tiny_vae

    vae = tiny_vae(codebook_size=32, code_depth=2, sample_size=8)  # 8x8 images -> 4x4x2 codes, width 8
    layers = dict(hidden_size=16, num_spatial_layers=1, num_depth_layers=1, num_attention_heads=2, num_classes=3)
    RQTransformerConfig(**layers).save_pretrained(tmp_path)  # as a user writes it: no sizes
    config = RQTransformerConfig.from_pretrained(tmp_path)
    assert (config.vocab_size, config.code_shape, config.code_embedding_dim) == (None, None, None)

    config.fill_from_vqvae(vae)
    assert (config.vocab_size, config.code_shape, config.code_embedding_dim) == (32, [4, 4, 2], 8)
    model = RQTransformerForCausalImageModeling(config)
    model.init_code_embeddings(vae)  # the table has the codebook's shape
    torch.testing.assert_close(model.code_embeddings.weight, vae.quantizer.codebook(0))
    config.fill_from_vqvae(vae, code_shape=[4, 4, 2])  # set and equal: nothing to do

    with pytest.raises(ValueError, match=r"`code_embedding_dim` must be unset.*code_embedding_dim=256.*=8"):
        RQTransformerConfig(**layers, code_embedding_dim=256).fill_from_vqvae(vae)
    with pytest.raises(ValueError, match=r"`code_shape`.*\[2, 2, 2\].*\[4, 4, 2\]"):
        RQTransformerConfig(**layers, code_shape=[2, 2, 2]).fill_from_vqvae(vae)
    # built without an RQ-VAE, the model takes the paper's sizes
    unset = RQTransformerForCausalImageModeling(RQTransformerConfig(**layers))
    assert (unset.config.vocab_size, unset.config.code_shape, unset.config.code_embedding_dim) == (
        16384, [8, 8, 4], 256
    )
