"""`import rq_hf` and every example's `--help` from a cold interpreter, and the Auto classes after a lazy import."""

import os
import subprocess
import sys

import pytest
from test_benchmarks import load_script
from tiny_models import tiny_transformer

cold = load_script("bench_cold_start")


@pytest.mark.parametrize("target", ["import rq_hf"] + cold.example_scripts())
def test_cold_start_loads_no_heavy_library(target):
    result = cold.cold_start(target, timeout=300)
    assert result["heavy_imports"] == [], f"`{target}` imported {result['heavy_imports']}"
    # Generous: ~0.3 s on a quiet 2-core machine (docs/benchmarks.md); importing torch alone takes 2-5 s there.
    assert result["seconds"] < 20, f"`{target}` took {result['seconds']:.1f} s from a cold interpreter"


# Each line is run in a fresh interpreter; AutoConfig / AutoModel must know "rq_transformer" however the
# imports are ordered: transformers before or after rq_hf, diffusers (which imports transformers' Auto modules
# half-way through its own import) in between, the modeling file imported or not.
ORDERS = {
    "rq_hf first": "import rq_hf; from transformers import AutoConfig, AutoModel",
    "transformers first": "from transformers import AutoConfig, AutoModel; import rq_hf",
    "diffusers in between": "import rq_hf, diffusers; from transformers import AutoConfig, AutoModel",
    "model class first": "from rq_hf import RQTransformerForCausalImageModeling; "
    "from transformers import AutoConfig, AutoModel",
}


@pytest.mark.parametrize("imports", ORDERS.values(), ids=ORDERS.keys())
def test_auto_classes_resolve_after_lazy_import(imports, tmp_path):
    tiny_transformer().save_pretrained(tmp_path)
    script = f"""
{imports}
config = AutoConfig.from_pretrained({str(tmp_path)!r})
model = AutoModel.from_pretrained({str(tmp_path)!r})
print(type(config).__module__, type(model).__module__ + "." + type(model).__name__)
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [
        "rq_hf.models.configuration_rq_transformer",
        "rq_hf.models.modeling_rq_transformer.RQTransformerForCausalImageModeling",
    ]
