"""RQTransformerForCausalImageModeling.generate_codes: cache, determinism, guidance, completion, bad input."""

import pytest
import torch

from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling
from rq_hf.models.modeling_rq_transformer import guidance_scales

VOCAB = 12
SHAPE = (2, 3, 3)  # h, w, D


def tiny_model(seed: int = 0, **overrides) -> RQTransformerForCausalImageModeling:
    kwargs = dict(
        vocab_size=VOCAB, code_shape=SHAPE, hidden_size=32, num_spatial_layers=2, num_depth_layers=2,
        num_attention_heads=4, code_embedding_dim=8, num_classes=5,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = RQTransformerForCausalImageModeling(RQTransformerConfig(**kwargs)).eval()
    with torch.no_grad():  # sharper distributions than the 0.02 init, so that samples depend on the inputs
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.mul_(20.0)
    return model


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_shapes_dtype_and_range(model):
    codes = model.generate_codes(class_labels=[0, 3, 4], generator=gen(0))
    assert codes.shape == (3, *SHAPE) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < VOCAB


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_cached_greedy_equals_argmax_of_full_forward(model, guidance_scale):
    labels = torch.tensor([1, 2])
    codes = model.generate_codes(class_labels=labels, top_k=1, guidance_scale=guidance_scale)
    logits = model(codes, class_labels=labels).logits
    if guidance_scale != 1.0:
        null = model(codes, class_labels=torch.full_like(labels, 5)).logits
        logits = null + guidance_scale * (logits - null)
    assert torch.equal(codes, logits.argmax(dim=-1))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_guidance_schedule_ramps_the_scale_over_positions(model, schedule):
    labels = torch.tensor([1, 2])
    codes = model.generate_codes(class_labels=labels, top_k=1, guidance_scale=4.0, guidance_schedule=schedule)
    h, w, _ = SHAPE
    scales = torch.tensor(guidance_scales(4.0, schedule, h * w)).view(1, h, w, 1, 1)
    logits = model(codes, class_labels=labels).logits
    null = model(codes, class_labels=torch.full_like(labels, 5)).logits
    assert torch.equal(codes, (null + scales * (logits - null)).argmax(dim=-1))
    constant = model.generate_codes(class_labels=labels, top_k=1, guidance_scale=4.0)
    assert not torch.equal(codes, constant)  # the ramp is used


def test_guidance_scales_values():
    assert guidance_scales(2.0, "constant", 4) == [2.0] * 4
    assert guidance_scales(3.0, "linear", 5) == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0])
    cosine = guidance_scales(3.0, "cosine", 5)
    assert cosine == pytest.approx([1.0, 1 + 2 * (1 - 2**-0.5) / 2, 2.0, 1 + 2 * (1 + 2**-0.5) / 2, 3.0])
    assert guidance_scales(3.0, "linear", 1) == [3.0]


def test_same_seed_same_codes_other_seed_other_codes(model):
    a = model.generate_codes(class_labels=[0, 1, 2, 3], generator=gen(0))
    b = model.generate_codes(class_labels=[0, 1, 2, 3], generator=gen(0))
    c = model.generate_codes(class_labels=[0, 1, 2, 3], generator=gen(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(guidance_scale=2.5, temperature=0.8, top_k=[5, 3, 8], top_p=0.9),
        dict(top_p=[0.5, 1.0, 0.8]),
    ],
)
def test_use_cache_false_gives_the_same_codes(model, kwargs):
    cached = model.generate_codes(class_labels=[0, 4, 2], generator=gen(3), **kwargs)
    uncached = model.generate_codes(class_labels=[0, 4, 2], generator=gen(3), use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_cache_is_actually_used(model):
    calls = []
    hook = lambda module, args, out: calls.append(args[0].shape[1])  # noqa: E731
    handle = model.spatial_transformer.register_forward_hook(hook)
    try:
        model.generate_codes(class_labels=[0], generator=gen(0))
        assert calls == [1] * (SHAPE[0] * SHAPE[1])
        calls.clear()
        model.generate_codes(class_labels=[0], generator=gen(0), use_cache=False)
        assert calls == list(range(1, SHAPE[0] * SHAPE[1] + 1))
    finally:
        handle.remove()


def test_guidance_scale_one_equals_no_guidance_and_guidance_changes_codes(model):
    labels = [0, 1, 2, 3]
    plain = model.generate_codes(class_labels=labels, generator=gen(5))
    one = model.generate_codes(class_labels=labels, generator=gen(5), guidance_scale=1.0)
    four = model.generate_codes(class_labels=labels, generator=gen(5), guidance_scale=4.0)
    assert torch.equal(plain, one)
    assert not torch.equal(plain, four)


def test_per_sample_generators(model):
    both = model.generate_codes(class_labels=[1, 2], generator=[gen(10), gen(11)], guidance_scale=2.0)
    first = model.generate_codes(class_labels=[1], generator=[gen(10)], guidance_scale=2.0)
    second = model.generate_codes(class_labels=[2], generator=[gen(11)], guidance_scale=2.0)
    assert torch.equal(both, torch.cat([first, second]))


def test_prefix_completion_keeps_prefix(model):
    prefix = torch.randint(0, VOCAB, (2, *SHAPE), generator=gen(7))
    n = 4
    calls = []
    codes = model.generate_codes(
        class_labels=[0, 1], prefix_codes=prefix, num_prefix_positions=n, generator=gen(8),
        callback=lambda position, total, current: calls.append((position, total, current.shape)),
    )
    flat, flat_prefix = codes.reshape(2, -1, SHAPE[2]), prefix.reshape(2, -1, SHAPE[2])
    assert torch.equal(flat[:, :n], flat_prefix[:, :n])
    assert not torch.equal(flat[:, n:], flat_prefix[:, n:])
    assert calls == [(p, 6, (2, *SHAPE)) for p in range(n, 6)]
    # Completing with the cache and without it agrees, and a full prefix returns the prefix.
    uncached = model.generate_codes(
        class_labels=[0, 1], prefix_codes=prefix, num_prefix_positions=n, generator=gen(8), use_cache=False
    )
    assert torch.equal(codes, uncached)
    full = model.generate_codes(class_labels=[0, 1], prefix_codes=prefix, num_prefix_positions=6)
    assert torch.equal(full, prefix)


def test_greedy_completion_matches_argmax(model):
    prefix = torch.randint(0, VOCAB, (1, *SHAPE), generator=gen(9))
    codes = model.generate_codes(class_labels=[3], prefix_codes=prefix, num_prefix_positions=2, top_k=1)
    logits = model(codes, class_labels=[3]).logits.reshape(1, -1, SHAPE[2], VOCAB)
    assert torch.equal(codes.reshape(1, -1, SHAPE[2])[:, 2:], logits.argmax(-1)[:, 2:])


def test_unconditional_sampling_and_bf16_autocast():
    model = tiny_model(num_classes=None)
    codes = model.generate_codes(batch_size=2, generator=gen(0), top_k=4)
    assert codes.shape == (2, *SHAPE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cached = model.generate_codes(batch_size=2, generator=gen(0), top_k=1)
        uncached = model.generate_codes(batch_size=2, generator=gen(0), top_k=1, use_cache=False)
    assert cached.shape == (2, *SHAPE) and uncached.shape == cached.shape


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(class_labels=[5]), "class_labels"),
        (dict(class_labels=[-1]), "class_labels"),
        (dict(class_labels=None, batch_size=1), "class_labels"),
        (dict(class_labels=[0, 1], batch_size=3), "class_labels"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=[1, 2]), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=[0.5, 0.5, 0.0]), "top_p"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(guidance_scale=2.0, guidance_schedule="exponential"), "guidance_schedule"),
        (dict(num_prefix_positions=-1), "num_prefix_positions"),
        (dict(num_prefix_positions=7, prefix_codes=torch.zeros(1, *SHAPE, dtype=torch.long)),
         "num_prefix_positions"),
        (dict(num_prefix_positions=2), "prefix_codes"),
        (dict(num_prefix_positions=1, prefix_codes=torch.full((1, *SHAPE), VOCAB)), "prefix_codes"),
        (dict(num_prefix_positions=1, prefix_codes=torch.zeros(1, 3, 2, 3, dtype=torch.long)),
         "prefix_codes"),
        (dict(num_prefix_positions=1, prefix_codes=torch.zeros(2, *SHAPE, dtype=torch.long)), "prefix_codes"),
        (dict(generator=[gen(0), gen(1)]), "generator"),
        (dict(generator=0), "generator"),
        (dict(batch_size=0, class_labels=0), "batch_size"),
    ],
)
def test_bad_input_raises(model, kwargs, argument):
    call = dict(class_labels=[0])
    call.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        model.generate_codes(**call)


def test_unconditional_bad_input():
    model = tiny_model(num_classes=None)
    with pytest.raises(ValueError, match="guidance_scale"):
        model.generate_codes(batch_size=1, guidance_scale=2.0)
    with pytest.raises(ValueError, match="class_labels"):
        model.generate_codes(class_labels=[0])
    with pytest.raises(ValueError, match="batch_size"):
        model.generate_codes()
