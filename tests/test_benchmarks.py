"""benchmarks/run_all.py end to end at --quick sizes, and its pieces that need no benchmark run."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name: str):
    """Import a benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_run_all_quick_writes_tables_plots_and_json(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    # the LoRA memory section needs peft (the `lora` extra); without it that section is left out, not failed
    has_peft = importlib.util.find_spec("peft") is not None
    names = ["quantizer", "sampling", "training_step", "memory", "loading", "cold_start"] + (
        ["memory_lora"] if has_peft else []
    )
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_all.py"), "--quick", "--output-dir", str(tmp_path), "--only", *names],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]

    markdown = (tmp_path / "benchmarks.md").read_text()
    assert "python benchmarks/run_all.py --quick" in markdown
    assert "## Machine" in markdown and "| torch |" in markdown and "| cpu |" in markdown
    for title in ("Residual quantizer throughput", "Sampling speed", "Training step: accelerate",
                  "Training memory per GPU", "Loading a large pipeline"):
        assert f"## {title}" in markdown
    assert "Failed" not in markdown
    # the three tables, each with a header separator and its rows
    assert "| eval |" in markdown and "| train |" in markdown and "| ceiling (" in markdown
    assert "Eval codes against an exact search (float64 distances, argmin): identical." in markdown
    assert "| RQ 8x8x4, cache " in markdown and "| flat 16x16x1, cache " in markdown
    for stage in ("rqvae", "transformer"):
        for precision in ("fp32", "bf16"):
            assert f"| {stage} | {precision} |" in markdown
    for strategy in ("DDP", "FSDP", "ZeRO-3"):
        assert f"| tiny | 0.04M | 4 | {strategy} |" in markdown
    assert "| output head |" in markdown and "| spatial layer passes per image | 256 | 1024 | 4.00x |" in markdown
    if has_peft:
        assert "## Training memory of a LoRA fine-tune on one GPU" in markdown and "LoRA rank 2" in markdown
    for route in ("naive", "from_pretrained", "torch_dtype=bf16", "device_map (blocks on disk)"):
        assert f"| {route} |" in markdown
    assert markdown.count("|---") >= 7  # machine + five benchmark tables + the sampling breakdown

    summary = json.loads((tmp_path / "benchmarks.json").read_text())
    assert set(summary["results"]) == set(names)
    assert "| `python examples/train_rqvae.py --help` |" in markdown
    rows = summary["results"]["training_step"]["json"]["rows"]
    for row in rows:
        # same weights, batch and random draws: both loops compute the same first loss (fp32 and bf16 autocast)
        assert row["bare"]["first_loss"] == pytest.approx(row["accelerate"]["first_loss"], rel=1e-4)
        assert row["bare"]["seconds_per_step"] > 0 and row["accelerate"]["peak_mib"] > 0

    if importlib.util.find_spec("matplotlib") is None:
        assert "No plots" in markdown
    else:
        for name in ("quantizer", "sampling", "training_step", "memory"):
            png = tmp_path / f"bench_{name}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"](bench_{name}.png)" in markdown


def test_markdown_reports_failures_and_missing_plots(tmp_path):
    run_all = load_script("run_all")
    results = {
        "quantizer": {"command": "python benchmarks/bench_quantizer.py", "seconds": 1.0, "returncode": 1,
                      "error": "exit status 1\nValueError: boom"},
        "training_step": {"command": "python benchmarks/bench_training_step.py", "seconds": 2.0,
                          "returncode": 0, "markdown": "| a |\n|---|\n| 1 |\n", "json": {}},
    }
    path = tmp_path / "benchmarks.md"
    run_all.write_markdown(path, "python benchmarks/run_all.py", "2024-01-01 00:00", 3.0, {"cpu": "test cpu"},
                           results, plots={}, quick=False)
    markdown = path.read_text()
    assert "| cpu | test cpu |" in markdown
    assert "**Failed:**" in markdown and "ValueError: boom" in markdown
    assert "| 1 |" in markdown and "No plots" in markdown
    assert "Sampling speed" not in markdown  # not run, not listed


def test_training_step_rejects_bad_counts():
    bench = load_script("bench_training_step")
    with pytest.raises(ValueError, match="--repeats.*0"):
        bench.parse_args(["--repeats", "0"])
    args = bench.parse_args(["--quick"])
    assert (args.batch_size, args.repeats, args.warmup) == (4, 2, 1)
