"""Cold start: seconds of `python -c "import rq_hf"` and of each example script's `--help`, each in a fresh
interpreter (no warm import before measuring), and which heavy libraries each one imported.

`import rq_hf` is lazy (torch, transformers and diffusers load on first use of a model name), and the scripts
build their parsers before importing them, so `--help` answers without loading the stack.

    python benchmarks/bench_cold_start.py                 # 5 runs of each, median and spread
    python benchmarks/bench_cold_start.py --repeats 1     # one of each
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "diffusers", "datasets", "accelerate")
# Runs a script's `--help` (or `import rq_hf`) and then names the heavy libraries that got imported.
_PROBE = r"""
import runpy, sys
target = sys.argv[1]
try:
    if target == "import rq_hf":
        import rq_hf
    else:
        sys.argv = [target, "--help"]
        runpy.run_path(target, run_name="__main__")
except SystemExit as exit:
    if exit.code not in (0, None):
        raise
print("HEAVY " + ",".join(name for name in {heavy!r} if name in sys.modules))
"""


def example_scripts() -> List[str]:
    """Every script in `examples/` (each has a `--help`)."""
    return sorted(str(path.relative_to(REPO)) for path in (REPO / "examples").glob("*.py"))


def cold_start(target: str, timeout: float = 600) -> Dict[str, object]:
    """Run `target` (`"import rq_hf"` or a script path) in a fresh interpreter; its seconds and heavy imports."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-c", _PROBE.format(heavy=HEAVY), target]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"`{target}` failed:\n{completed.stderr[-2000:]}")
    heavy = completed.stdout.rsplit("HEAVY ", 1)[1].strip()
    return {"seconds": seconds, "heavy_imports": heavy.split(",") if heavy else []}


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="fresh interpreters per target")
    parser.add_argument("--markdown-out", "--markdown_out", default=None, help="write the table as Markdown here")
    parser.add_argument("--json-out", "--json_out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"`--repeats` must be at least 1, got {args.repeats}")
    return args


def main(argv: List[str] | None = None) -> None:
    args = parse_args(argv)
    rows = []
    for target in ["import rq_hf"] + [f"{script}" for script in example_scripts()]:
        runs = [cold_start(target) for _ in range(args.repeats)]
        seconds = [run["seconds"] for run in runs]
        rows.append({"target": target, "median_s": statistics.median(seconds), "min_s": min(seconds),
                     "max_s": max(seconds), "heavy_imports": runs[0]["heavy_imports"]})
    header = f"Cold start, fresh interpreter each run, median of {args.repeats} (min-max)"
    lines = [header, "", "| command | seconds | heavy libraries imported |", "|---|---:|---|"]
    for row in rows:
        command = "python -c \"import rq_hf\"" if row["target"] == "import rq_hf" else f"python {row['target']} --help"
        spread = f"{row['median_s']:.2f} ({row['min_s']:.2f}-{row['max_s']:.2f})"
        lines.append(f"| `{command}` | {spread} | {', '.join(row['heavy_imports']) or 'none'} |")
    print("\n".join(lines))
    if args.markdown_out:
        Path(args.markdown_out).write_text("\n".join(lines) + "\n")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"benchmark": "cold_start", "header": header, "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
