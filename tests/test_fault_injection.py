"""SIGKILL during checkpoint writing and during save_pretrained, at random file-system writes (a few seeded
points per scenario; `python benchmarks/fault_injection.py` tries every write): nothing is lost or mixed."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from script_helpers import TINY_RQVAE, save_blob_dataset

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_harness():
    spec = importlib.util.spec_from_file_location("_fault_injection", BENCHMARKS / "fault_injection.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("scenario, points, seed", [
    ("checkpoint", 3, 0),
    ("train_save_pretrained", 2, 1),
    ("pipeline_save_pretrained", 4, 2),
])
def test_sigkill_at_random_writes_loses_nothing(tmp_path, scenario, points, seed):
    harness = load_harness()
    dataset = save_blob_dataset(tmp_path / "images", n=16)
    (tmp_path / "model.json").write_text(json.dumps(TINY_RQVAE))
    [report] = harness.run(points=points, seed=seed, dataset=dataset, model_config=str(tmp_path / "model.json"),
                           scenarios=(scenario,), workdir=str(tmp_path))
    print(harness.table([report]))
    assert report.writes > points and report.points == points
    assert all(o.killed for o in report.outcomes), report.outcomes
    assert report.lost == 0, [o for o in report.outcomes if o.lost]
