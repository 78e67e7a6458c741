"""The shared argument checks (`rq_hf.models.checks`) and where they run: a bad value is refused at the boundary,
with a message naming the argument, before any work is done."""

import numpy as np
import pytest
import torch
from tiny_models import tiny_transformer, tiny_vae

from rq_hf import RQTransformerPipeline
from rq_hf.models.checks import (
    check_choice,
    check_generator,
    check_int,
    check_number,
    check_per_depth,
    check_probability,
    check_sampling_args,
)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: check_int("n", 0), r"`n` must be a positive integer, got 0\."),
        (lambda: check_int("n", True), r"`n` must be a positive integer, got True\."),
        (lambda: check_int("n", 2.0), r"`n` must be a positive integer, got 2\.0\."),
        (lambda: check_int("n", -1, 0), r"`n` must be an integer >= 0, got -1\."),
        (lambda: check_int("n", 7, 0, 6), r"`n` must be an integer in \[0, 6\], got 7\."),
        (lambda: check_int("n", "3", allow_none=True), r"`n` must be a positive integer or None, got '3'\."),
        (lambda: check_number("t", 0.0, 0, low_open=True), r"`t` must be a finite number > 0, got 0\.0\."),
        (lambda: check_number("t", float("nan"), 0), r"`t` must be a finite number >= 0, got nan\."),
        (lambda: check_number("t", float("inf")), r"`t` must be a finite number, got inf\."),
        (lambda: check_probability("p", 1.0), r"`p` must be a probability in \[0, 1\), got 1\.0\."),
        (lambda: check_choice("mode", "x", ("a", "b")), r"`mode` must be one of \('a', 'b'\), got 'x'\."),
        (lambda: check_per_depth("top_k", [1, 2], 3, check_int), r"`top_k` must be one value or a list of 3"),
        (lambda: check_per_depth("top_k", [1, 0, 2], 3, check_int), r"`top_k` must be a positive integer, got 0"),
        (lambda: check_generator([torch.Generator()], 2), r"`generator` list must have one generator per sample"),
        (lambda: check_generator(0), r"`generator` must be a torch.Generator"),
    ],
)
def test_checks_name_the_argument_what_it_must_be_and_what_it_got(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_checks_return_plain_python_values():
    assert check_int("n", np.int64(3)) == 3 and type(check_int("n", np.int64(3))) is int
    assert check_int("n", None, allow_none=True) is None
    assert type(check_number("t", np.float32(0.5), 0, 1)) is float
    assert check_per_depth("top_p", None, 2, check_number) == [None, None]
    assert check_per_depth("top_p", (0.5, None), 2, check_number) == [0.5, None]
    generators = (torch.Generator(), torch.Generator())
    assert check_generator(generators, 2) == list(generators)
    top_ks, top_ps, temperature, guidance = check_sampling_args(5, [0.9, 1], 2, 3, depth=2)
    assert (top_ks, top_ps, temperature, guidance) == ([5, 5], [0.9, 1.0], 2.0, 3.0)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(top_k=[1, 2, 3]), "top_k"),
        (dict(top_p=1.5), "top_p"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(generator=[torch.Generator()] * 2), "generator"),
        (dict(num_prefix_positions=17), "num_prefix_positions"),
    ],
)
def test_pipeline_refuses_bad_arguments_before_encoding_the_image(kwargs, argument, monkeypatch):
    pipe = RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer())
    image = np.zeros((1, 8, 8, 3), dtype=np.float32)

    def no_encoding(*args, **kw):
        raise AssertionError("the image was encoded before the arguments were checked")

    monkeypatch.setattr(pipe.vqvae, "encode", no_encoding)
    kwargs = {"num_prefix_positions": 4, **kwargs}
    with pytest.raises(ValueError, match=f"`{argument}`"):
        pipe(class_labels=[0], image=image, output_type="latent", **kwargs)
