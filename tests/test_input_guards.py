"""Guards against hostile or mistaken input: non-finite values never reach the codebook, images must be in
[-1, 1], sampling runs in eval mode, and bad arguments get a message naming them."""

import logging

import numpy as np
import PIL.Image
import pytest
import torch
from tiny_models import tiny_transformer, tiny_vae

from rq_hf import RQTransformerPipeline


def images(n=4, seed=0):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_nan_in_a_training_batch_never_reaches_the_codebook(caplog):
    vae = tiny_vae().train()
    clean = images(4)
    poisoned = clean.clone()
    poisoned[0, 0, 0, 0] = float("nan")
    before = vae.quantizer.embed.clone()
    with caplog.at_level(logging.WARNING, logger="rq_hf"):
        vae(poisoned)
        vae(poisoned)
    quantizer = vae.quantizer
    for name in ("embed", "embed_ema", "cluster_size_ema"):
        assert torch.isfinite(getattr(quantizer, name)).all(), name
    assert not torch.equal(quantizer.embed, before)  # the finite rows of the batch still updated it
    warnings = [r for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1, caplog.text  # said once
    codes = vae.eval().encode(clean).codes
    assert codes.unique().numel() > 1


def test_non_finite_or_out_of_range_images_are_refused():
    vae = tiny_vae()
    bad = images(2)
    bad[1, 2, 3, 4] = float("inf")
    with pytest.raises(ValueError, match="`x` must be finite"):
        vae.encode(bad)
    with pytest.raises(ValueError, match=r"`x` must hold values in \[-1, 1\].*255"):
        vae.encode(torch.rand(2, 3, 8, 8) * 255)
    with pytest.raises(ValueError, match=r"`sample` must hold values in \[-1, 1\]"):
        vae.train()(torch.rand(2, 3, 8, 8) * 255)
    vae.eval().encode(images(2) * 1.05)  # a small overshoot (resampling) is fine


def test_pipeline_refuses_a_float_completion_image_in_0_255():
    pipe = RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer())
    array = np.random.default_rng(0).random((1, 8, 8, 3)).astype(np.float32)
    pipe(class_labels=[0], image=array, num_prefix_positions=4, output_type="latent")  # [0, 1]: fine
    with pytest.raises(ValueError, match=r"`image`.*\[0, 1\].*255"):
        pipe(class_labels=[0], image=array * 255, num_prefix_positions=4, output_type="latent")
    image = PIL.Image.fromarray((array[0] * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="`num_prefix_positions`.*`image`"):
        pipe(class_labels=[0], image=image, num_prefix_positions=0, output_type="latent")


def test_sampling_runs_in_eval_mode_and_restores_the_mode():
    model = tiny_transformer()
    model.config.resid_dropout = 0.5
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    expected = model.eval().generate_codes(class_labels=[0, 1], generator=torch.Generator().manual_seed(3))
    model.train()
    assert torch.equal(model.generate_codes(class_labels=[0, 1], generator=torch.Generator().manual_seed(3)),
                       expected)
    assert model.training
    pipe = RQTransformerPipeline(vqvae=tiny_vae(), transformer=model)
    got = pipe(class_labels=[0, 1], generator=torch.Generator().manual_seed(3), output_type="latent").images
    assert torch.equal(got, expected) and model.training


def test_empty_batches_are_refused_by_name():
    vae, model = tiny_vae(), tiny_transformer()
    with pytest.raises(ValueError, match="`x` must hold at least one image"):
        vae.encode(torch.zeros(0, 3, 8, 8))
    with pytest.raises(ValueError, match="`sample` must hold at least one image"):
        vae(torch.zeros(0, 3, 8, 8))
    with pytest.raises(ValueError, match="`codes` must hold at least one"):
        vae.decode_codes(torch.zeros(0, 4, 4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="`codes` must hold at least one"):
        model(codes=torch.zeros(0, 4, 4, 2, dtype=torch.long), class_labels=torch.zeros(0, dtype=torch.long))


def test_sampling_arguments():
    model = tiny_transformer()

    def sample(**kwargs):
        return model.generate_codes(class_labels=[0], generator=torch.Generator().manual_seed(0), **kwargs)

    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="`guidance_scale` must be a finite number"):
            sample(guidance_scale=value)
    # numpy scalars are numbers too
    assert torch.equal(sample(top_k=np.int64(5), temperature=np.float32(0.5), top_p=np.float64(0.9)),
                       sample(top_k=5, temperature=0.5, top_p=0.9))
    with pytest.raises(ValueError, match="`class_labels`.*class ids.*'Trouser'.*RQTransformerPipeline"):
        model.generate_codes(class_labels=["Trouser"])
