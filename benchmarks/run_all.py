"""Run every benchmark and write ``docs/benchmarks.md`` (tables, command, date, machine) with PNG plots.

Each benchmark runs as its own subprocess, one after the other (never two timings at once), with this
checkout's ``src/`` first on ``PYTHONPATH``:

* ``bench_quantizer.py``: ResidualQuantizer vs vector-quantize-pytorch ``ResidualVQ`` vs the matmul ceiling;
* ``bench_sampling.py``: RQ-Transformer vs a flat autoregressive model, images/s of ``generate_codes``;
* ``bench_training_step.py``: training step of both stages through accelerate vs a bare PyTorch loop;
* ``bench_memory.py``: training memory per GPU of the official sizes under DDP, FSDP and ZeRO-3 (meta device);
* ``bench_loading.py``: peak memory of loading a large pipeline by route (dtype, low_cpu_mem_usage, device_map);
* ``bench_cold_start.py``: seconds of ``import rq_hf`` and of each example's ``--help`` from a cold interpreter.

Outputs in ``--output-dir`` (default ``docs/``): ``benchmarks.md``, ``benchmarks.json`` (every result and
the machine), and ``bench_quantizer.png``, ``bench_sampling.png``, ``bench_training_step.png``,
``bench_memory.png``.

    python benchmarks/run_all.py                      # full sizes, quiet machine: 10-20 min on 2 CPU cores
    python benchmarks/run_all.py --quick --output-dir /tmp/bench   # tiny sizes: checks the plumbing
    python benchmarks/run_all.py --only training_step --training-step-args "--repeats 40"

Without vector-quantize-pytorch the quantizer runs without its baseline; without matplotlib no plots are
drawn (``pip install -e ".[bench]"`` installs both); the document says so.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass
class Benchmark:
    """One benchmark script: its title, what it measures, and its flags in full and in `--quick` mode."""

    name: str
    script: str
    title: str
    description: str
    full_args: List[str] = field(default_factory=list)
    quick_args: List[str] = field(default_factory=list)


BENCHMARKS = [
    Benchmark(
        name="quantizer",
        script="bench_quantizer.py",
        title="Residual quantizer throughput (issue 2)",
        description=(
            "Vectors/s of `ResidualQuantizer` in eval mode (code search) and training mode (EMA update, "
            "restarts, forward + backward), beside vector-quantize-pytorch's `ResidualVQ` with the same settings "
            "and the ceiling: the bare distance products alone. Goal: at least 3x `ResidualVQ` and 90% of the "
            "ceiling in eval mode."
        ),
        quick_args=["--num-vectors", "256", "--codebook-size", "64", "--dim", "16", "--repeats", "2"],
    ),
    Benchmark(
        name="sampling",
        script="bench_sampling.py",
        title="Sampling speed: RQ-Transformer against a flat AR model (issue 3)",
        description=(
            "Images/s of `generate_codes` for a paper-shaped class-conditional RQ-Transformer (8x8x4 codes) "
            "against a flat autoregressive model of the same width over 16x16 single codes (the paper's VQ "
            "baseline), best of the repeats, eager and compiled (`compile=True`: static caches and "
            "`torch.compile`), then where the time of one eager call goes, per component. Goal: RQ at least 2.5x "
            "faster."
        ),
        full_args=["--compile"],
        quick_args=["--quick", "--repeats", "1", "--batch-size", "2", "--no-uncached"],
    ),
    Benchmark(
        name="training_step",
        script="bench_training_step.py",
        title="Training step: accelerate against bare PyTorch (issue 6)",
        description=(
            "Median time of one training step of each stage at CPU scale through our stack (accelerate's "
            "`Accelerator`, as the training scripts use it) and through a bare PyTorch loop of the same model, "
            "interleaved; the overhead of the framework (goal: at most 10%) and the peak memory."
        ),
        quick_args=["--quick"],
    ),
    Benchmark(
        name="memory",
        script="bench_memory.py",
        title="Training memory per GPU of the official sizes (issue 14)",
        description=(
            "Parameters, weights, gradients, optimizer state and activations per GPU of the official ImageNet "
            "RQ-Transformers under DDP, FSDP and DeepSpeed ZeRO-3 with bf16, computed from the real modules on "
            "the meta device at the official per-GPU batch (no allocation; the formulas are in "
            "`rq_hf.training.memory`). Not counted: backward workspace, CUDA context, fragmentation."
        ),
        quick_args=["--quick"],
    ),
    Benchmark(
        name="memory_lora",
        script="bench_memory.py",
        title="Training memory of a LoRA fine-tune on one GPU (issue 15)",
        description=(
            "The same accounting for `train_rq_transformer.py --use_lora`: rank-8 LoRA adapters (peft, `rq_hf.lora`) "
            "on the attention and MLP projections are the only trainable parameters; the frozen base stays fp32 "
            "under bf16 autocast. One process has no DDP reducer: the gradients column overcounts by 4 bytes per "
            "trainable parameter. Fine-tuning all weights of the 1.4B model on one GPU needs 30.51 GiB (28.96 with "
            "activation checkpointing) by the same accounting (`python benchmarks/bench_memory.py --num-gpus 1`)."
        ),
        full_args=["--num-gpus", "1", "--lora-rank", "8"],
        quick_args=["--quick", "--num-gpus", "1", "--lora-rank", "2"],
    ),
    Benchmark(
        name="loading",
        script="bench_loading.py",
        title="Loading a large pipeline: peak memory by route (issue 14)",
        description=(
            "Peak resident memory of loading a saved fp32 pipeline with a ~300M-parameter transformer in a fresh "
            "process, by route: a hand-written loader (init, `load_state_dict`, cast), `from_pretrained` (empty "
            "modules filled from the file), `torch_dtype=torch.bfloat16`, and a `device_map` keeping the "
            "transformer's stacks on disk. On a GPU, the peak GPU memory of sampling with the whole pipeline on "
            "the GPU, with `enable_model_cpu_offload()` and with a `device_map=\"auto\"` transformer."
        ),
        quick_args=["--quick"],
    ),
    Benchmark(
        name="cold_start",
        script="bench_cold_start.py",
        title="Cold start: `import rq_hf` and each script's `--help` (issue 13)",
        description=(
            "Seconds from a fresh interpreter to the end of `import rq_hf` and of each example script's `--help`, "
            "and which of torch, transformers, diffusers, datasets and accelerate got imported (none: the package "
            "root is lazy and the scripts parse their flags first). Goal: `examples/train_rqvae.py --help` under 1 s."
        ),
        quick_args=["--repeats", "1"],
    ),
]
BENCHMARK_NAMES = [benchmark.name for benchmark in BENCHMARKS]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes for every benchmark (seconds)")
    parser.add_argument("--output-dir", "--output_dir", default=str(REPO / "docs"), help="where the files go")
    parser.add_argument("--only", nargs="+", choices=BENCHMARK_NAMES, default=BENCHMARK_NAMES)
    for name in BENCHMARK_NAMES:
        flag = name.replace("_", "-")
        parser.add_argument(
            f"--{flag}-args", f"--{name}_args", dest=f"{name}_args", default="",
            help=f"extra flags for bench_{name}.py (one string, appended after the defaults)",
        )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed to each benchmark")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> List[str]:
    """The CPU features that decide the bf16 rows (AVX-512 BF16, AMX)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                    return [flag for flag in wanted if flag in flags]
    except OSError:
        pass
    return []


def _memory_gib() -> Optional[float]:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_machine() -> Dict[str, object]:
    """CPU, cores, memory, GPU, load and the versions that matter, as a flat dict."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine: Dict[str, object] = {
        "cpu": _cpu_model(),
        "cpu features": ", ".join(_cpu_flags()) or "-",
        "logical cores (usable)": f"{os.cpu_count()} ({usable})",
        "memory": f"{_memory_gib():.1f} GiB" if _memory_gib() else "unknown",
        "gpu": "none",
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": f"{torch.__version__} (default threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        machine["gpu"] = f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB (x{torch.cuda.device_count()})"
    for package in ("accelerate", "transformers", "diffusers", "vector-quantize-pytorch"):
        machine[package] = _version(package)
    if hasattr(os, "getloadavg"):
        machine["load average at start (1, 5, 15 min)"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return machine


# ---------------------------------------------------------------------------------------------- running


def run_benchmark(benchmark: Benchmark, args: argparse.Namespace, workdir: Path) -> Dict[str, object]:
    """Run one benchmark script in a subprocess; returns its command, seconds, markdown and JSON (or error)."""
    markdown_path, json_path = workdir / f"{benchmark.name}.md", workdir / f"{benchmark.name}.json"
    flags = list(benchmark.quick_args if args.quick else benchmark.full_args)
    if benchmark.name == "quantizer" and importlib.util.find_spec("vector_quantize_pytorch") is None:
        flags.append("--skip-baseline")
    flags += shlex.split(getattr(args, f"{benchmark.name}_args"))
    shown = ["python", f"benchmarks/{benchmark.script}"] + flags
    command = [sys.executable, str(HERE / benchmark.script)] + flags
    command += ["--markdown-out", str(markdown_path), "--json-out", str(json_path)]
    env = dict(os.environ)
    if (REPO / "src" / "rq_hf").is_dir():  # measure this checkout, not whatever rq_hf is installed
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    print(f"[run_all] {shlex.join(shown)}", flush=True)
    start = time.perf_counter()
    try:
        completed = subprocess.run(
            command, env=env, cwd=REPO, capture_output=True, text=True, timeout=args.timeout
        )
        returncode, stdout, stderr = completed.returncode, completed.stdout, completed.stderr
    except subprocess.TimeoutExpired as error:
        returncode, stdout, stderr = -1, error.stdout or "", f"timed out after {args.timeout} s"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    seconds = time.perf_counter() - start
    print(stdout, end="", flush=True)
    result: Dict[str, object] = {"command": shlex.join(shown), "seconds": seconds, "returncode": returncode}
    if returncode != 0 or not markdown_path.exists() or not json_path.exists():
        tail = "\n".join(line for line in stderr.splitlines() if not line.startswith("USDT:"))[-3000:]
        result["error"] = f"exit status {returncode}\n{tail}"
        print(f"[run_all] {benchmark.name} FAILED: {result['error']}", file=sys.stderr, flush=True)
        return result
    result["markdown"] = markdown_path.read_text()
    result["json"] = json.loads(json_path.read_text())
    print(f"[run_all] {benchmark.name}: {seconds:.0f} s", flush=True)
    return result


# ---------------------------------------------------------------------------------------------- plots


def plot_quantizer(data: Dict, path: Path, plt) -> None:
    rates = data["vectors_per_second"]
    labels = [label for label in ("ours eval", "ResidualVQ eval", "ours train", "ResidualVQ train", "ceiling")
              if label in rates]
    names = {"ours eval": "ResidualQuantizer\neval", "ours train": "ResidualQuantizer\ntrain",
             "ResidualVQ eval": "ResidualVQ\neval", "ResidualVQ train": "ResidualVQ\ntrain",
             "ceiling": "ceiling\n(bare matmuls)"}
    colors = {"ours": "tab:blue", "ResidualVQ": "tab:orange", "ceiling": "tab:gray"}
    figure, axes = plt.subplots(figsize=(7, 4))
    values = [rates[label] for label in labels]
    bars = axes.bar([names[label] for label in labels], values,
                    color=[colors[label.split()[0]] for label in labels])
    axes.bar_label(bars, labels=[f"{value:,.0f}" for value in values], fontsize=8)
    axes.set_yscale("log")
    axes.set_ylabel("vectors / s (log scale)")
    settings = data["settings"]
    axes.set_title(f"Residual quantization: K {settings['codebook_size']}, dim {settings['dim']}, "
                   f"depth {settings['depth']}, {settings['num_vectors']} vectors", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_sampling(data: Dict, path: Path, plt) -> None:
    rows = data["rows"]
    figure, axes = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    names = [row["model"] for row in rows][::-1]
    values = [row["images_per_second"] for row in rows][::-1]
    colors = ["tab:blue" if name.startswith("RQ") else "tab:orange" for name in names]
    bars = axes.barh(names, values, color=colors)
    axes.bar_label(bars, labels=[f"{value:.2f}" for value in values], fontsize=8, padding=2)
    axes.set_xlabel("images / s (generate_codes)")
    settings = data["settings"]
    axes.set_title(f"Sampling: batch {settings['batch_size']}, K {settings['vocab_size']}, "
                   f"hidden {settings['hidden']}, top_k {settings['top_k']}", fontsize=10)
    axes.margins(x=0.15)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_training_step(data: Dict, path: Path, plt) -> None:
    rows = data["rows"]
    figure, axes = plt.subplots(figsize=(7, 4))
    width = 0.38
    positions = list(range(len(rows)))
    for offset, loop, color in ((-width / 2, "bare", "tab:gray"), (width / 2, "accelerate", "tab:blue")):
        values = [row[loop]["seconds_per_step"] * 1e3 for row in rows]
        bars = axes.bar([p + offset for p in positions], values, width, label=loop, color=color)
        if loop == "accelerate":
            axes.bar_label(bars, labels=[f"{row['overhead']:+.0%}" for row in rows], fontsize=8)
    axes.set_xticks(positions, [f"{row['stage']}\n{row['precision']}" for row in rows])
    axes.set_ylabel("ms / training step (median)")
    axes.set_title(f"Training step, batch {data['settings']['batch_size']}: accelerate vs bare PyTorch "
                   "(label: overhead)", fontsize=10)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_memory(data: Dict, path: Path, plt) -> None:
    rows = data["rows"]
    parts = (("weights", "tab:blue"), ("gradients", "tab:orange"), ("optimizer_state", "tab:green"),
             ("activations", "tab:gray"))
    unit, scale = ("MiB", 2**20) if data["settings"].get("quick") else ("GiB", 2**30)
    names = {"ddp": "DDP", "fsdp": "FSDP", "zero3": "ZeRO-3"}
    labels = [f"{row['model']}\n{names[row['strategy']]}" for row in rows]
    figure, axes = plt.subplots(figsize=(max(7, 0.6 * len(rows)), 4))
    bottom = [0.0] * len(rows)
    for key, color in parts:
        values = [row[key] / scale for row in rows]
        axes.bar(labels, values, bottom=bottom, color=color, label=key.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values)]
    axes.set_ylabel(f"{unit} per GPU")
    axes.tick_params(axis="x", labelsize=7)
    axes.set_title(f"Training memory per GPU, {data['settings']['num_gpus']} GPUs, bf16", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


PLOTS = {"quantizer": plot_quantizer, "sampling": plot_sampling, "training_step": plot_training_step,
         "memory": plot_memory}


def draw_plots(results: Dict[str, Dict], output_dir: Path) -> Dict[str, str]:
    """PNG per successful benchmark; returns {name: file name}, empty without matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    for name, result in results.items():
        if "json" in result and name in PLOTS:
            filename = f"bench_{name}.png"
            PLOTS[name](result["json"], output_dir / filename, plt)
            files[name] = filename
    return files


# ---------------------------------------------------------------------------------------------- document


def write_markdown(path: Path, command: str, started: str, total_seconds: float, machine: Dict[str, object],
                   results: Dict[str, Dict], plots: Dict[str, str], quick: bool) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {started} (UTC) in {total_seconds / 60:.1f} min.",
        "",
    ]
    if quick:
        lines += ["**`--quick` run: tiny sizes that check the scripts work; the numbers mean nothing.**", ""]
    lines += [
        "Each benchmark ran alone, one after the other, in its own process. Timings on a shared machine move "
        "with its load (see the load average below).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in machine.items()]
    if not plots:
        lines += ["", "No plots: matplotlib is not installed (`pip install -e \".[bench]\"`)."]
    for benchmark in BENCHMARKS:
        if benchmark.name not in results:
            continue
        result = results[benchmark.name]
        lines += ["", f"## {benchmark.title}", "", benchmark.description, "",
                  f"Command: `{result['command']}` ({result['seconds']:.0f} s).", ""]
        if "error" in result:
            lines += ["**Failed:**", "", "```", str(result["error"]).strip(), "```"]
            continue
        lines += [str(result["markdown"]).strip()]
        if benchmark.name in plots:
            lines += ["", f"![{benchmark.title}]({plots[benchmark.name]})"]
    path.write_text("\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/run_all.py"] + (sys.argv[1:] if argv is None else list(argv)))
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    machine = describe_machine()
    start = time.perf_counter()
    results: Dict[str, Dict] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for benchmark in BENCHMARKS:
            if benchmark.name in args.only:
                results[benchmark.name] = run_benchmark(benchmark, args, Path(workdir))
    total_seconds = time.perf_counter() - start
    if hasattr(os, "getloadavg"):
        machine["load average at end (1, 5, 15 min)"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    plots = draw_plots(results, output_dir)
    write_markdown(output_dir / "benchmarks.md", command, started, total_seconds, machine, results, plots,
                   args.quick)
    summary = {"command": command, "started_utc": started, "seconds": total_seconds, "quick": args.quick,
               "machine": machine, "results": results}
    (output_dir / "benchmarks.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[run_all] wrote {output_dir / 'benchmarks.md'} in {total_seconds:.0f} s", flush=True)
    return 1 if any("error" in result for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
