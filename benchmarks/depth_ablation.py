"""The paper's depth ablation where quantization binds: RQ-VAEs with D = 1, 2, 4, 8 codes per position at an 8x8
code map, shared and per-depth codebooks, a 16x16x1 model at the bits of 8x8x4, and the continuous ceiling.

Lee et al. (CVPR 2022, Table 3 / Fig. 3) show that at 8x8 codes with K = 16384 the reconstruction improves with
the residual depth D (rFID 17.95, 10.77, 4.73, 2.69 for D = 1, 2, 4, 8 on ImageNet 256px) and that 8x8x4 codes
match a 16x16x1 map. A depth ablation means something only where the continuous autoencoder of the same
architecture (quantizer bypassed, the ceiling of every quantizer) is clearly above D = 1; at CPU scale the
autoencoder itself is far from converged, so the default codebook is small (K = 8, 3 bits per depth) to make
the quantizer, not the autoencoder, the bottleneck at D = 1 (at 300 steps on Fashion-MNIST, K = 64 leaves D = 1
only 0.9 dB below the ceiling, K = 8 2.1 dB; docs/results.md). Every model is trained with ``--seeds`` seeds;
tables give the mean and the standard deviation over seeds.

Data (``rqvae_study.py``, ``photos.py``): Fashion-MNIST padded to 32x32, and 32x32 / 64x64 crops of natural
photos from pip wheels and Debian packages, split by photo (``--photo_set all`` needs the Debian packages named
in ``photos.py``). The 64x64 models have one more level (factor 8 to 8x8 codes).

Writes into ``--output_dir`` (default docs/ablation/): ``runs.jsonl`` (every run; reused by later calls with the
same settings, so a stopped study resumes), ``depth_ablation_k<K>.json`` (the summary), ``depth_ablation_k<K>.md``
and ``depth_ablation_k<K>.png`` (PSNR against D with the ceiling line, per dataset; one set per codebook size,
so studies with different K sit side by side). Time: about ``steps x s/step`` per model, 10 models per dataset
and seed; at 300 steps of batch 32 with one thread, about 0.35-0.4 s/step for a 32x32 model on a quiet core
(measured up to 2.5 s on a loaded 2-core machine). ``--quick`` (tiny models, 2 steps) runs in seconds.

    python benchmarks/depth_ablation.py --datasets fashion_mnist,photos32,photos64
    python benchmarks/depth_ablation.py --seeds 0,1,2 --cached_only     # the tables of the runs that finished
    python benchmarks/depth_ablation.py --quick --photo_set wheels --datasets fashion_mnist,photos32 --output_dir /tmp/a
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rqvae_study as study  # noqa: E402
from rqvae_study import ModelSpec  # noqa: E402

MODES = ("shared", "per_depth")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    study.add_common_args(parser)
    parser.add_argument("--depths", type=study.ints, default=(1, 2, 4, 8), help="Comma-separated code depths D.")
    parser.add_argument("--codebook_size", type=int, default=8)
    parser.add_argument("--codebook_modes", default="shared,per_depth", help=f"Comma-separated subset of {MODES}.")
    parser.add_argument("--no_flat", action="store_true", help="Skip the 16x16x1 model.")
    parser.add_argument("--kmeans_depths", type=study.ints, default=(),
                        help="Also train these depths with k-means initialised codebooks (first codebook mode).")
    parser.add_argument("--output_dir", default=os.path.join("docs", "ablation"))
    args = parser.parse_args(argv)
    study.check_common_args(parser, args)
    if args.quick:
        args.codebook_size = min(args.codebook_size, 32)
    args.codebook_modes = tuple(m.strip() for m in args.codebook_modes.split(",") if m.strip())
    if not args.codebook_modes or any(m not in MODES for m in args.codebook_modes):
        parser.error(f"--codebook_modes must be a comma-separated subset of {MODES}, got {args.codebook_modes}")
    if args.codebook_size < 2:
        parser.error(f"--codebook_size must be >= 2, got {args.codebook_size}")
    if not args.depths or min(args.depths) < 1:
        parser.error(f"--depths must be positive ints, got {args.depths}")
    return args


def model_specs(args: argparse.Namespace) -> list[ModelSpec]:
    """The ceiling, D = 1, each deeper D per codebook mode, and 16x16x1 (same K) with its own ceiling."""
    k = args.codebook_size
    specs = [study.CEILING]
    for depth in args.depths:
        modes = args.codebook_modes if depth > 1 else args.codebook_modes[:1]
        specs += [ModelSpec(k, depth, shared_codebook=mode == "shared") for mode in modes]
    shared = args.codebook_modes[0] == "shared"
    specs += [ModelSpec(k, depth, shared_codebook=shared, kmeans_init=True) for depth in args.kmeans_depths]
    if not args.no_flat:
        specs += [ModelSpec(k, 1, flat=True), study.FLAT_CEILING]
    return specs


def describe(spec: ModelSpec) -> dict[str, Any]:
    return {"depth": spec.code_depth, "continuous": spec.continuous, "flat": spec.flat,
            "shared": spec.shared_codebook, "kmeans_init": spec.kmeans_init}


def markdown_table(results: dict[str, Any]) -> str:
    """One table per dataset: PSNR and SSIM (mean ± std over seeds), the gap to the ceiling, codes per depth."""
    s = results["settings"]
    lines = [f"K = {s['codebook_size']}, {s['steps']} steps at batch {s['batch_size']} (lr {s['learning_rate']:g}, "
             f"{s['lr_schedule']}), seeds {', '.join(map(str, s['seeds']))}; loss {results['losses']}; "
             f"training time {results['train_seconds'] / 60:.0f} min in all (machine shared)."]
    for dataset in s["datasets"]:
        rows = [r for r in results["rows"] if r["dataset"] == dataset]
        if not rows:
            continue
        ceilings = {r["flat"]: r["psnr"] for r in rows if r["continuous"]}  # each grid against its own ceiling
        lines += ["", f"### {dataset}", "",
                  "| model | bits per 8x8 position | seeds | PSNR (dB) | below its ceiling (dB) | SSIM "
                  "| used codes per depth (dead = K - used) | residual norm per depth | params |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            depth = 4 if r["flat"] else r["depth"]  # 16x16x1: 4 codes per 8x8 position
            bits = "∞" if r["continuous"] else f"{depth * math.log2(s['codebook_size']):.0f}"
            gap = "–" if r["continuous"] or r["flat"] not in ceilings else f"{ceilings[r['flat']] - r['psnr']:.2f}"
            lines.append(
                f"| {r['label']} | {bits} | {study.fmt_seeds(r['seeds'])} | "
                f"{r['psnr']:.2f} ± {r['psnr_std']:.2f} | {gap} | "
                f"{r['ssim']:.3f} ± {r['ssim_std']:.3f} | {study.fmt_list(r['used_codes'])} | "
                f"{study.fmt_list(r['residual_norm'], 2)} | {r['parameters'] / 1e6:.2f}M |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
    """PSNR against D per dataset: shared and per-depth lines with ± std bars, the ceiling band, 16x16x1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in results["settings"]["datasets"] if any(r["dataset"] == d for r in results["rows"])]
    if not datasets:  # --cached_only without any finished run
        return
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(6.0, 4.4 * len(datasets)), 4.0), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = [r for r in results["rows"] if r["dataset"] == dataset]
        depths = sorted({r["depth"] for r in rows if not r["continuous"] and not r["flat"]})
        for shared, color, name in ((True, "tab:blue", "shared codebook"), (False, "tab:orange", "per-depth")):
            line = sorted((r for r in rows if not r["continuous"] and not r["flat"] and not r["kmeans_init"]
                           and (r["shared"] == shared or r["depth"] == 1)), key=lambda r: r["depth"])
            if len(line) > 1:
                ax.errorbar([r["depth"] for r in line], [r["psnr"] for r in line],
                            yerr=[r["psnr_std"] for r in line], fmt="o-", color=color, capsize=3, label=name)
        for r in rows:
            if r["continuous"]:
                color = "tab:green" if r["flat"] else "black"
                ax.axhline(r["psnr"], color=color, linestyle="--", label=f"{r['label']}")
                ax.axhspan(r["psnr"] - r["psnr_std"], r["psnr"] + r["psnr_std"], color=color, alpha=0.1)
            elif r["kmeans_init"]:
                ax.errorbar([r["depth"]], [r["psnr"]], yerr=[r["psnr_std"]], fmt="x", color="tab:red", capsize=3,
                            label=f"D={r['depth']}, k-means init")
            elif r["flat"]:
                ax.errorbar([4], [r["psnr"]], yerr=[r["psnr_std"]], fmt="*", color="tab:green", markersize=11,
                            capsize=3, label="16x16x1 (bits of 8x8x4)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths)
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("code depth D (8x8 codes)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    s = results["settings"]
    counts = sorted({len(r["seeds"]) for r in results["rows"]})
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    fig.suptitle(f"RQ-VAE depth ablation: K = {s['codebook_size']}, {s['steps']} steps, "
                 f"mean ± std over {seeds} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    stem = f"depth_ablation_k{args.codebook_size}"
    results = study.run_study(model_specs(args), args, describe, stem, markdown_table)
    plot(results, os.path.join(args.output_dir, f"{stem}.png"))
    return results


if __name__ == "__main__":
    main()
