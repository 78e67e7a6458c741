"""benchmarks/guidance_sweep.py on a tiny untrained 32x32 Fashion-MNIST-shaped pipeline (seconds)."""

import importlib.util
import json
import os

import PIL.Image
import pytest
import torch

from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling, RQTransformerPipeline, RQVAEModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(
    not os.path.isfile("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"),
    reason="needs the Debian package dataset-fashion-mnist (no network in tests)",
)


def load_script():
    path = os.path.join(ROOT, "benchmarks", "guidance_sweep.py")
    spec = importlib.util.spec_from_file_location("guidance_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_reports_accuracy_per_setting_and_writes_grids(tmp_path):
    torch.manual_seed(0)
    vae = RQVAEModel(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
                     up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8), layers_per_block=1,
                     latent_channels=8, norm_num_groups=4, sample_size=32, codebook_size=16, code_depth=2).eval()
    config = RQTransformerConfig(vocab_size=16, code_shape=[8, 8, 2], hidden_size=16, num_spatial_layers=1,
                                 num_depth_layers=1, num_attention_heads=2, num_classes=10, code_embedding_dim=8)
    pipe = RQTransformerPipeline(vqvae=vae, transformer=RQTransformerForCausalImageModeling(config).eval())
    pipe.save_pretrained(tmp_path / "pipe")

    report = load_script().main([
        "--model_path", str(tmp_path / "pipe"), "--num_samples", "10", "--num_test_images", "30",
        "--guidance_scales", "1,2", "--schedules", "constant,linear", "--samples_per_class_in_grid", "1",
        "--output_dir", str(tmp_path / "out"),
    ])
    names = [s["name"] for s in report["settings"]]
    assert names == ["g1_constant_kall_pall_t1", "g2_constant_kall_pall_t1", "g2_linear_kall_pall_t1"]
    assert report["accuracy_real"] > 0.7  # the shipped classifier on 30 real test images; chance is 0.1
    for setting in report["settings"]:
        assert 0 <= setting["accuracy"] <= 1 and len(setting["per_class"]) == 10
        with PIL.Image.open(tmp_path / "out" / f"grid_{setting['name']}.png") as grid:
            assert grid.size == (2 * 32, 2 * 32 * 10)
    assert json.loads((tmp_path / "out" / "guidance_sweep.json").read_text())["settings"] == report["settings"]
    assert "| 2 | linear |" in (tmp_path / "out" / "guidance_sweep.md").read_text()
