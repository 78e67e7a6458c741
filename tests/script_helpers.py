"""Helpers shared by the tests of the training scripts."""

import json
import os


def flags_to_argv(flags: dict) -> list[str]:
    """``{"--flag": "value", "--switch": True, "--dropped": None}`` -> an argv list, in insertion order."""
    argv = []
    for key, value in flags.items():
        if value is None:
            continue
        argv += [key] if value is True else [key, value]
    return argv


def read_metrics(output_dir) -> list[dict]:
    """The per-step records a training script writes to ``output_dir/logs/metrics.jsonl``."""
    with open(os.path.join(output_dir, "logs", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_pipeline_loads_without_rq_hf(path, call: str, expected, tmp_path) -> None:
    """Load the saved pipeline folder ``path`` in a fresh Python where importing ``rq_hf`` fails, with
    ``DiffusionPipeline.from_pretrained(path, trust_remote_code=True)``; ``pipe(<call>).images`` (numpy) must
    equal ``expected``. ``call`` is the source of the call's arguments, e.g. ``'prompt="a", output_type="np"'``."""
    import subprocess
    import sys

    import numpy as np

    np.save(tmp_path / "expected.npy", expected)
    script = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "rq_hf" or name.startswith("rq_hf."):
            raise ImportError("rq_hf is blocked in this test")
sys.meta_path.insert(0, Block())
import numpy as np, torch
torch.set_num_threads(1)  # as in the tests (conftest.py): same float sums
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(path)!r}, trust_remote_code=True)
images = pipe({call}).images
np.testing.assert_array_equal(images, np.load({str(tmp_path / "expected.npy")!r}))
assert "rq_hf" not in sys.modules
print("LOADED", type(pipe).__module__)
"""
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED" in result.stdout


#: A tiny RQ-VAE for 16x16 grayscale images (8x8x2 codes, 32 codes): seconds per training run.
TINY_RQVAE = {
    "in_channels": 1,
    "out_channels": 1,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "latent_channels": 8,
    "norm_num_groups": 4,
    "sample_size": 16,
    "vq_embed_dim": 8,
    "mid_block_add_attention": False,
    "codebook_size": 32,
    "code_depth": 2,
}


def save_blob_dataset(path, n: int = 16, size: int = 16, seed: int = 0) -> str:
    """A `save_to_disk` dataset of `n` grayscale blobs (`image`) with two classes (`label`); returns the path."""
    import datasets
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for i in range(n):
        cx, cy = (0.3 if i % 2 == 0 else 0.7), rng.uniform(0.3, 0.7)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.15**2))
        images.append(PIL.Image.fromarray((255 * blob).astype(np.uint8), mode="L"))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["left", "right"])})
    datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)]}, features=features) \
        .save_to_disk(str(path))
    return str(path)


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (examples/ is not a package)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
