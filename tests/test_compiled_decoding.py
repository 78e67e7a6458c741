"""Static key/value caches and the torch.compile path of generate_codes / the pipeline: same codes as eager."""

import copy
import pickle

import numpy as np
import pytest
import torch
from tiny_models import tiny_transformer, tiny_vae

from rq_hf import RQTransformerForCausalImageModeling, RQTransformerPipeline


def gen(seed):
    return torch.Generator().manual_seed(seed)


def sample(model, **kwargs):
    options = dict(class_labels=torch.tensor([0, 1, 2]), top_k=8, top_p=0.9, guidance_scale=2.0, generator=gen(0))
    options.update(kwargs)
    return model.generate_codes(**options)


@pytest.fixture
def static_eager(monkeypatch):
    """`compile=True` takes the static-cache path with the steps left uncompiled (no compiler needed)."""
    monkeypatch.setattr(RQTransformerForCausalImageModeling, "_compile_mode",
                        staticmethod(lambda compile, use_cache, device: None))


def test_static_cache_gives_the_same_codes(static_eager):
    model = tiny_transformer()
    assert torch.equal(sample(model, compile=True), sample(model))
    state = model.__dict__["_static_decoding_state"]
    assert state.spatial_cache.layers[0].keys.shape[2] == model.config.num_positions  # full-length buffers
    prefix = torch.randint(0, 32, (3, 4, 4, 2), generator=gen(1))
    kwargs = dict(prefix_codes=prefix, num_prefix_positions=5)  # the prefix fills the static cache at once
    assert torch.equal(sample(model, compile=True, **kwargs), sample(model, **kwargs))
    assert model.__dict__["_static_decoding_state"] is state  # same rows, dtype, device: the caches are reused
    unconditional = tiny_transformer(num_classes=None)
    plain = dict(class_labels=None, guidance_scale=1.0, batch_size=2)
    assert torch.equal(sample(unconditional, compile=True, **plain), sample(unconditional, **plain))


def test_model_with_decoding_state_copies_and_pickles_without_it(static_eager):
    model = tiny_transformer()
    codes = sample(model, compile=True)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.__dict__.get("_static_decoding_state") is None
        assert torch.equal(sample(clone, compile=True), codes)


def test_bad_compile_arguments():
    model = tiny_transformer()
    with pytest.raises(ValueError, match="`compile` must be a bool or one of the torch.compile modes"):
        sample(model, compile="fastest")
    for compile in (True, "default"):
        with pytest.raises(ValueError, match="`use_cache` must be True"):
            sample(model, compile=compile, use_cache=False)


def _compile_unavailable() -> str | None:
    """Why torch.compile cannot run here (None when it can): compile a two-op function once."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch._dynamo does not support this Python/platform"
    try:
        torch.compile(lambda x: torch.nn.functional.gelu(x) + 1, fullgraph=True)(torch.ones(4))
    except Exception as error:  # e.g. no C++ compiler for inductor's CPU kernels
        return f"torch.compile cannot run here: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return None


@pytest.mark.slow
def test_compiled_decoding_gives_the_same_codes_as_eager():
    reason = _compile_unavailable()
    if reason:
        pytest.skip(reason)
    model = tiny_transformer()
    eager = sample(model)
    assert torch.equal(sample(model, compile=True), eager)  # compiles (tens of seconds on 2 cores)
    state = model.__dict__["_static_decoding_state"]
    assert state.key[-1] == "default"  # CPU: no CUDA graphs
    assert torch.equal(sample(model, compile=True, generator=gen(5)), sample(model, generator=gen(5)))
    # the pipeline's switch reaches the same compiled steps (same rows: no new compilation)
    pipe = RQTransformerPipeline(vqvae=tiny_vae(), transformer=model)
    kwargs = dict(class_labels=[0, 1, 2], top_k=8, top_p=0.9, guidance_scale=2.0, output_type="np")
    np.testing.assert_array_equal(pipe(generator=gen(2), compile=True, **kwargs).images,
                                  pipe(generator=gen(2), **kwargs).images)
    assert model.__dict__["_static_decoding_state"] is state
