"""Residual depth instead of a huge codebook, at equal bits: one 8x8 code map, the same bits per position spent
as one code from a large codebook (VQ, D = 1) or as D codes from small codebooks applied to residuals (RQ).

The method's argument (Lee et al., CVPR 2022, Sec. 3.1): a codebook large enough for a fine approximation
collapses (many of its codes are never used), while D codebooks of K codes reach K^D combinations with D * K
vectors. At 12 bits per position the default compares VQ with K = 4096, RQ with K = 64, D = 2 and RQ with K = 8,
D = 4; at 6 bits VQ with K = 64 against RQ with K = 8, D = 2 and K = 4, D = 3 (``--configs``). Same encoder,
decoder, steps, batches and seeds (``rqvae_study.py``); the continuous ceiling beside them. Per model: PSNR and
SSIM (mean ± std over ``--seeds``), and per depth the codes used on the test set and the dead ones (K - used).

A config is ``K:D`` or ``K:D:threshold`` (a restart threshold other than ``--restart_threshold``: the EMA count
below which a code is restarted; with 2048 vectors per batch and K = 4096 a code is used 0.5 times per step on
average, so the default threshold of 1 restarts healthy codes). Runs are shared with ``depth_ablation.py``
through ``<output_dir>/runs.jsonl``. Writes ``equal_bits.json`` and ``equal_bits.md``.

    python benchmarks/equal_bits.py                      # Fashion-MNIST, 3 seeds, into docs/ablation/
    python benchmarks/equal_bits.py --quick --output_dir /tmp/equal_bits
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rqvae_study as study  # noqa: E402
from rqvae_study import ModelSpec  # noqa: E402

DEFAULT_CONFIGS = "4096:1,4096:1:0.05,64:2,8:4,64:1,8:2,4:3"


def parse_config(text: str) -> tuple[int, int, float | None]:
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"a config must be K:D or K:D:threshold, got {text!r}")
    k, d = int(parts[0]), int(parts[1])
    if k < 2 or d < 1:
        raise ValueError(f"a config needs K >= 2 and D >= 1, got {text!r}")
    return k, d, float(parts[2]) if len(parts) == 3 else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    study.add_common_args(parser)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="Comma-separated K:D[:restart_threshold].")
    parser.add_argument("--codebook_mode", choices=("shared", "per_depth"), default="per_depth",
                        help="Codebooks of the RQ models (D > 1).")
    parser.add_argument("--output_dir", default=os.path.join("docs", "ablation"))
    args = parser.parse_args(argv)
    study.check_common_args(parser, args)
    if args.quick and args.configs == DEFAULT_CONFIGS:
        args.configs = "256:1,16:2,4:4"
    try:
        args.configs = tuple(parse_config(c.strip()) for c in args.configs.split(",") if c.strip())
    except ValueError as error:
        parser.error(f"--configs: {error}")
    if not args.configs:
        parser.error("--configs must name at least one K:D, got none")
    return args


def model_specs(args: argparse.Namespace) -> list[ModelSpec]:
    """The ceiling, then one model per config."""
    shared = args.codebook_mode == "shared"
    return [study.CEILING] + [ModelSpec(k, d, shared_codebook=shared or d == 1, restart_threshold=t)
                              for k, d, t in args.configs]


def describe(spec: ModelSpec) -> dict[str, Any]:
    return {"codebook_size": None if spec.continuous else spec.codebook_size, "depth": spec.code_depth,
            "continuous": spec.continuous, "bits_per_position": None if spec.continuous else spec.bits_per_position}


def markdown_table(results: dict[str, Any]) -> str:
    """One table per dataset, the models grouped by bits per position (largest budget first)."""
    s = results["settings"]
    lines = [f"8x8 codes; {s['steps']} steps at batch {s['batch_size']} (lr {s['learning_rate']:g}, "
             f"{s['lr_schedule']}), "
             f"seeds {', '.join(map(str, s['seeds']))}, {s['codebook_mode'].replace('_', '-')} codebooks for D > 1, "
             f"restart threshold {s['restart_threshold']:g} unless named; training time "
             f"{results['train_seconds'] / 60:.0f} min in all (machine shared)."]
    for dataset in s["datasets"]:
        rows = [r for r in results["rows"] if r["dataset"] == dataset]
        lines += ["", f"### {dataset}", "",
                  "| bits/position | model | seeds | PSNR (dB) | SSIM | used codes per depth | dead codes per depth | "
                  "residual norm per depth |", "|---|---|---|---|---|---|---|---|"]
        ordered = sorted(rows, key=lambda r: (-(r["bits_per_position"] or 1e9), r["depth"]))
        for r in ordered:
            bits = "∞" if r["continuous"] else f"{r['bits_per_position']:.0f}"
            lines.append(
                f"| {bits} | {r['label']} | {study.fmt_seeds(r['seeds'])} | {r['psnr']:.2f} ± {r['psnr_std']:.2f} | "
                f"{r['ssim']:.3f} ± "
                f"{r['ssim_std']:.3f} | {study.fmt_list(r['used_codes'])} | {study.fmt_list(r['dead_codes'])} | "
                f"{study.fmt_list(r['residual_norm'], 2)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return study.run_study(model_specs(args), args, describe, "equal_bits", markdown_table)


if __name__ == "__main__":
    main()
