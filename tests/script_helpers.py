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
