"""Big-model sampling on tiny models (same code paths): loading straight into a dtype, low_cpu_mem_usage,
enable_model_cpu_offload and a device_map for the transformer. Peak memory: benchmarks/bench_loading.py."""

import numpy as np
import pytest
import torch
from tiny_models import tiny_transformer, tiny_vae

from rq_hf import RQTransformerForCausalImageModeling, RQTransformerPipeline


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved fp32 pipeline and its images for a fixed seed."""
    path = tmp_path_factory.mktemp("big") / "pipe"
    pipe = RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer())
    pipe.save_pretrained(path)
    return path, pipe


def images(pipe, **kwargs):
    return pipe(class_labels=[0, 2], top_k=8, guidance_scale=2.0, generator=gen(3), output_type="np",
                **kwargs).images


def test_torch_dtype_loads_weights_straight_into_bf16(saved):
    path, pipe = saved
    loaded = RQTransformerPipeline.from_pretrained(path, torch_dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.transformer.parameters())
    assert loaded.vqvae.encoder.conv_in.weight.dtype == torch.bfloat16
    assert all(b.dtype == torch.float32 for b in loaded.vqvae.quantizer.buffers() if b.is_floating_point())
    # the same weights as casting the fp32 pipeline: the same images for the same seed
    cast = RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer()).to(torch.bfloat16)
    np.testing.assert_array_equal(images(loaded), images(cast))


def test_low_cpu_mem_usage_loads_the_same_pipeline(saved):
    path, pipe = saved
    # empty (meta) modules filled from the files, no random init first; diffusers refuses False for a model with
    # `_keep_in_fp32_modules` (the quantizer), and transformers always loads this way
    loaded = RQTransformerPipeline.from_pretrained(path, low_cpu_mem_usage=True)
    for name in ("vqvae", "transformer"):
        reference = getattr(pipe, name).state_dict()
        for key, value in getattr(loaded, name).state_dict().items():
            assert value.device.type == "cpu" and torch.equal(value, reference[key]), (name, key)
    np.testing.assert_array_equal(images(loaded), images(pipe))


def test_model_cpu_offload_moves_each_model_for_its_own_step(saved):
    path, pipe = saved
    expected = images(pipe)
    offloaded = RQTransformerPipeline.from_pretrained(path)
    # the same accelerate hooks as on a GPU; on this CPU-only machine the "accelerator" is the CPU itself
    offloaded.enable_model_cpu_offload(device="cpu")
    calls = []
    for name in ("transformer", "vqvae"):
        hook = getattr(offloaded, name)._hf_hook
        pre_forward = hook.pre_forward

        def spy(module, *args, name=name, pre_forward=pre_forward, **kwargs):
            calls.append(name)
            return pre_forward(module, *args, **kwargs)

        hook.pre_forward = spy
    np.testing.assert_array_equal(images(offloaded), expected)
    # generate_codes (not forward) brings the transformer in, then decode_codes the RQ-VAE, in that order
    assert calls == ["transformer", "vqvae"]
    assert offloaded._execution_device == torch.device("cpu", 0)


def test_device_map_offloads_transformer_blocks(saved, tmp_path):
    path, pipe = saved
    expected = images(pipe)
    model = RQTransformerForCausalImageModeling.from_pretrained(path / "transformer")
    device_map = {name: "cpu" for name, _ in model.named_children()}
    device_map.update({name: "cpu" for name, _ in model.named_parameters(recurse=False)})  # position tables
    device_map.update(spatial_transformer="disk", depth_transformer="disk")  # blocks live on disk until used
    offloaded = RQTransformerForCausalImageModeling.from_pretrained(
        path / "transformer", device_map=device_map, offload_folder=str(tmp_path / "offload")
    )
    assert offloaded.hf_device_map["spatial_transformer"] == "disk"
    assert offloaded.spatial_transformer.layers[0].mlp.fc_in.weight.device.type == "meta"  # not in memory
    loaded = RQTransformerPipeline.from_pretrained(path, transformer=offloaded)
    np.testing.assert_array_equal(images(loaded), expected)
