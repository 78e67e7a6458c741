"""The paper's depth ablation at CPU scale: RQ-VAEs with D = 1, 2, 4, 8 codes per position, and one code per
position at twice the latent resolution.

Lee et al. (CVPR 2022, Table 3 / Fig. 3) show that at an 8x8 code map with K = 16384 the reconstruction FID
falls with the residual depth D (rFID 17.95, 10.77, 4.73, 2.69 for D = 1, 2, 4, 8 on ImageNet 256px), and that
8x8x4 codes match a 16x16x1 VQ map. Here, on real images that ship with the environment:

(a) Fashion-MNIST, padded to 32x32 (1 channel): train on the first ``--train_images`` training images, test on
    the first ``--num_test_images`` test images;
(b) natural-photo crops: the RGB photos of scikit-image (astronaut, coffee, rocket; chelsea) and scikit-learn
    (china; flower), downscaled by ``--photo_scale`` and cut into random 32x32 crops (random flips in
    training). Split by photo: training crops come from astronaut, coffee, rocket and china; test crops only
    from the unseen chelsea and flower photos.

Models (same codebook size K, same steps, batches and seed; the batches are drawn from the same generator
state for every model): ``block_out_channels`` 16/32/64 (down factor 4: 32x32 -> 8x8xD codes) for each D,
and an 8x8 -> 16x16 comparison model with one fewer down-sampling level (channels 16/64, down factor 2:
16x16x1 codes, about the same number of parameters; the table lists them). Training is a compact loop over
``RQVAEModel.forward``: MSE + the quantizer's commitment loss (beta 0.25), EMA codebooks with dead-code
restarts, AdamW, fp32 by default (bf16 autocast measured slower on this project's CPU;
``--mixed_precision``). No perceptual or GAN loss: the ablation isolates the quantizer, so
rFIDs are those of plain MSE autoencoders (blurrier than the paper's) and are not comparable in absolute value;
the trend against D is the point.

Metrics on the test images (``rq_hf.evaluation.evaluate_reconstruction``): PSNR, SSIM (window 11, sigma 1.5),
codebook usage/perplexity per depth, rFID with the TF-Inception network at ``--fid_num_images`` test images
and the real-vs-real FID at the same N beside it (``--no_inception`` skips it). Writes ``results.json``,
``table.md`` and ``depth_ablation.png`` into ``--output_dir`` (default docs/ablation/), and prints the table.

Time (defaults: 2 datasets x 5 models x 300 steps at batch 64, 0.68M-parameter models, fp32,
rFID on 100 images). Measured here with other jobs on the same 2 cores (so upper bounds): 0.33 s per step for
8x8x8 and 0.62 s for 16x16x1 (its 64-channel level runs at 16x16: about 1.8x the FLOPs of the 8x8 models);
HF_NOTES.md reports 0.2 s at batch 64 for a 0.7M RQ-VAE on a quiet machine. Training: 2 x (4 x 300 x
0.2-0.3 s + 300 x 0.4-0.6 s) = 10-16 min. The TF-Inception network is the other cost: 2 x (200 real + 5 x 100
reconstructions) = 1400 images at about 12 images/s (measured: 8 images in 0.65 s) = 2 min, plus about 4 s
per model for the two 2048-d Frechet distances. Estimate: about 15 minutes in all (12 on a quiet machine);
each +100 on --fid_num_images adds about 2 min. Under heavy contention single steps took up to 4.5 s and
Inception ran 10x slower: run it in a quiet window. ``results.json`` records the measured seconds per step,
per model and in total. ``--quick`` (tiny models, 2 steps, 16 test images) runs in seconds and serves the test.

    python benchmarks/depth_ablation.py                       # ~15 min, writes docs/ablation/
    python benchmarks/depth_ablation.py --quick --no_inception --output_dir /tmp/ablation
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

PAPER_RFID = {1: 17.95, 2: 10.77, 4: 4.73, 8: 2.69}  # 8x8 codes, K = 16384, ImageNet 256px (Table 3)
PHOTO_TRAIN = ("astronaut", "coffee", "rocket", "china")
PHOTO_TEST = ("chelsea", "flower")
DATASETS = ("fashion_mnist", "photos")
RESOLUTION = 32


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=_ints, default=(1, 2, 4, 8), help="Comma-separated code depths D.")
    parser.add_argument("--datasets", default="fashion_mnist,photos", help=f"Comma-separated subset of {DATASETS}.")
    parser.add_argument("--steps", type=int, default=300, help="Training steps per model.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--codebook_size", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--block_out_channels", type=_ints, default=(16, 32, 64), help="8x8xD models (factor 4).")
    parser.add_argument("--flat_block_out_channels", type=_ints, default=(16, 64), help="16x16x1 model (factor 2).")
    parser.add_argument("--latent_channels", type=int, default=32)
    parser.add_argument("--train_images", type=int, default=20000, help="Fashion-MNIST training images used.")
    parser.add_argument("--num_test_images", type=int, default=1000, help="Test images (photos: test crops).")
    parser.add_argument("--photo_scale", type=float, default=0.5, help="Downscale factor of the photos.")
    parser.add_argument("--fid_num_images", type=int, default=100, help="N of rFID (real-vs-real uses 2N).")
    parser.add_argument("--no_inception", action="store_true", help="Skip rFID.")
    parser.add_argument("--mixed_precision", choices=("bf16", "no"), default="no")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=os.path.join("docs", "ablation"))
    parser.add_argument("--quick", action="store_true", help="Tiny models, 2 steps, 16 test images (seconds).")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.train_images, args.num_test_images = 2, 8, 64, 16
        args.block_out_channels, args.flat_block_out_channels, args.latent_channels = (8, 8, 8), (8, 8), 8
        args.codebook_size, args.fid_num_images = min(args.codebook_size, 32), 8
    args.datasets = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown or not args.datasets:
        parser.error(f"--datasets must be a comma-separated subset of {DATASETS}, got {args.datasets}")
    for name in ("steps", "batch_size", "codebook_size", "train_images", "num_test_images", "fid_num_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.depths or min(args.depths) < 1:
        parser.error(f"--depths must be positive ints, got {args.depths}")
    if len(args.flat_block_out_channels) != len(args.block_out_channels) - 1:
        parser.error("--flat_block_out_channels must have one level fewer than --block_out_channels, got "
                     f"{args.flat_block_out_channels} and {args.block_out_channels}")
    return args


# ------------------------------------------------------------------------------------------------------ data


def fashion_mnist_data(args: argparse.Namespace):
    """(sample_batch(generator) -> (B, 1, 32, 32), test images) from the local Fashion-MNIST files."""
    import torch

    from rq_hf.data import load_fashion_mnist
    from rq_hf.evaluation import load_image_tensors

    train = load_image_tensors(load_fashion_mnist("train"), RESOLUTION, num_channels=1, pad_to_resolution=True,
                               max_samples=args.train_images).images
    test = load_image_tensors(load_fashion_mnist("test"), RESOLUTION, num_channels=1, pad_to_resolution=True,
                              max_samples=args.num_test_images).images

    def sample_batch(generator: torch.Generator) -> torch.Tensor:
        return train[torch.randint(0, train.shape[0], (args.batch_size,), generator=generator)]

    return sample_batch, test


def load_photos(names: tuple[str, ...], scale: float) -> list[Any]:
    """The named photos as uint8 tensors (3, H, W), downscaled by ``scale`` (PIL, Lanczos)."""
    import numpy as np
    import PIL.Image
    import skimage.data
    import torch
    from sklearn.datasets import load_sample_images

    sklearn_images = dict(zip(("china", "flower"), load_sample_images().images))
    photos = []
    for name in names:
        array = sklearn_images[name] if name in sklearn_images else getattr(skimage.data, name)()
        image = PIL.Image.fromarray(np.asarray(array)[..., :3])
        size = (max(RESOLUTION, round(image.width * scale)), max(RESOLUTION, round(image.height * scale)))
        image = image.resize(size, PIL.Image.Resampling.LANCZOS)
        photos.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous())
    return photos


def random_crops(photos: list[Any], count: int, generator: Any, flip: bool) -> Any:
    """``count`` random 32x32 crops (float, [-1, 1]) of randomly chosen photos."""
    import torch

    crops = []
    for index in torch.randint(0, len(photos), (count,), generator=generator).tolist():
        photo = photos[index]
        top = int(torch.randint(0, photo.shape[1] - RESOLUTION + 1, (1,), generator=generator))
        left = int(torch.randint(0, photo.shape[2] - RESOLUTION + 1, (1,), generator=generator))
        crop = photo[:, top : top + RESOLUTION, left : left + RESOLUTION]
        if flip and bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(-1)
        crops.append(crop)
    return torch.stack(crops).float().div_(127.5).sub_(1.0)


def photo_data(args: argparse.Namespace):
    """(sample_batch(generator), test crops): training crops from PHOTO_TRAIN, test crops from PHOTO_TEST."""
    import torch

    train_photos = load_photos(PHOTO_TRAIN, args.photo_scale)
    test_photos = load_photos(PHOTO_TEST, args.photo_scale)
    test = random_crops(test_photos, args.num_test_images, torch.Generator().manual_seed(args.seed + 1), flip=False)

    def sample_batch(generator: torch.Generator) -> torch.Tensor:
        return random_crops(train_photos, args.batch_size, generator, flip=True)

    return sample_batch, test


# ---------------------------------------------------------------------------------------------------- models


def build_vae(channels: tuple[int, ...], in_channels: int, code_depth: int, args: argparse.Namespace):
    """An RQVAEModel with one ResNet layer per level, 8 norm groups, no attention in the mid blocks."""
    from rq_hf import RQVAEModel

    levels = len(channels)
    return RQVAEModel(
        in_channels=in_channels, out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=channels, layers_per_block=1, latent_channels=args.latent_channels,
        norm_num_groups=min(8, min(channels)), sample_size=RESOLUTION, mid_block_add_attention=False,
        codebook_size=args.codebook_size, code_depth=code_depth,
    )


def train_vae(vae: Any, sample_batch: Callable[[Any], Any], args: argparse.Namespace) -> dict[str, Any]:
    """MSE + commitment loss with AdamW (20-step linear warm-up); returns timing and the loss curve ends."""
    import torch

    generator = torch.Generator().manual_seed(args.seed)  # the same batches for every model
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 20))
    vae.train()
    losses, start = [], time.perf_counter()
    for _ in range(args.steps):
        x = sample_batch(generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16"):
            out = vae(x)
            loss = torch.nn.functional.mse_loss(out.sample.float(), x) + out.commitment_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    vae.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return {"train_seconds": seconds, "seconds_per_step": seconds / args.steps, "first_loss": losses[0],
            "final_loss": sum(tail) / len(tail)}


# ------------------------------------------------------------------------------------------------------ run


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from rq_hf.evaluation import InceptionFeatureExtractor, evaluate_reconstruction, extract_features

    inception = None if args.no_inception else InceptionFeatureExtractor()
    rows = []
    started = time.perf_counter()
    for dataset in args.datasets:
        sample_batch, test = (fashion_mnist_data if dataset == "fashion_mnist" else photo_data)(args)
        in_channels = test.shape[1]
        n_fid = min(args.fid_num_images, test.shape[0])
        real_features = None
        if inception is not None:  # one pass over the real test images serves every model
            real_features = extract_features(test[: 2 * n_fid], inception)
        variants = [(f"8x8x{d}", args.block_out_channels, d) for d in args.depths]
        variants.append(("16x16x1", args.flat_block_out_channels, 1))
        for name, channels, depth in variants:
            torch.manual_seed(args.seed)
            vae = build_vae(channels, in_channels, depth, args)
            print(f"[{dataset}] {name}: training {args.steps} steps ...", file=sys.stderr, flush=True)
            training = train_vae(vae, sample_batch, args)
            report = evaluate_reconstruction(vae, test, batch_size=256, feature_extractor=inception,
                                             fid_num_images=n_fid, real_features=real_features)
            h, w, _ = vae.code_shape_for(RESOLUTION, RESOLUTION)
            rows.append({
                "dataset": dataset, "model": name, "code_shape": [h, w, depth], "depth": depth,
                "flat": name == "16x16x1", "parameters": sum(p.numel() for p in vae.parameters()),
                "block_out_channels": list(channels), **training, **report,
                "paper_rfid": PAPER_RFID.get(depth) if name != "16x16x1" else None,
            })
            print(f"[{dataset}] {name}: PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.3f}, "
                  f"{training['seconds_per_step']:.2f} s/step", file=sys.stderr, flush=True)
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    return {"settings": settings, "rows": rows, "total_seconds": time.perf_counter() - started,
            "losses": "MSE + commitment (beta 0.25); no perceptual or adversarial loss",
            "paper_rfid_8x8_k16384": PAPER_RFID, "torch_threads": torch.get_num_threads()}


def _f(value: Any, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(results: dict[str, Any]) -> str:
    """One table per dataset: PSNR, SSIM, rFID (with real vs real), codebook usage, paper rFID beside."""
    s = results["settings"]
    lines = [
        f"RQ-VAE depth ablation: K = {s['codebook_size']}, {s['steps']} steps at batch {s['batch_size']}, "
        f"seed {s['seed']}, {s['mixed_precision']} autocast; loss {results['losses']}. "
        f"SSIM: Gaussian window 11, sigma 1.5. Paper rFID: ImageNet 256px, 8x8 codes, K = 16384 (context only: "
        f"another scale, data and loss). Total {results['total_seconds'] / 60:.1f} min.",
    ]
    for dataset in s["datasets"]:
        rows = [r for r in results["rows"] if r["dataset"] == dataset]
        if not rows:
            continue
        n = rows[0]["num_images"]
        n_fid = rows[0]["fid_num_images"]
        lines += [
            "", f"### {dataset} ({n} test images{'' if n_fid is None else f'; rFID on {n_fid}'})", "",
            "| codes | params | PSNR (dB) | SSIM | rFID | rFID real vs real | usage (mean over depths) | "
            "perplexity per depth | s/step | paper rFID |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['model']} | {r['parameters'] / 1e6:.2f}M | {_f(r['psnr'])} | {_f(r['ssim'], 3)} | "
                f"{_f(r['rfid'])} | {_f(r['rfid_real_vs_real'])} | {_f(r['codebook_usage_mean'], 3)} | "
                f"{', '.join(f'{p:.0f}' for p in r['perplexity'])} | {_f(r['seconds_per_step'])} | "
                f"{_f(r['paper_rfid'])} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
    """PSNR, SSIM, rFID (or codebook usage without rFID) against D; the 16x16x1 model as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    has_fid = any(r["rfid"] is not None for r in rows)
    metrics = [("psnr", "PSNR (dB)"), ("ssim", "SSIM"),
               ("rfid", "rFID (Inception)") if has_fid else ("codebook_usage_mean", "codebook usage")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    colors = dict(zip(results["settings"]["datasets"], ("tab:blue", "tab:orange")))
    for ax, (key, label) in zip(axes, metrics):
        for dataset, color in colors.items():
            deep = sorted((r for r in rows if r["dataset"] == dataset and not r["flat"]), key=lambda r: r["depth"])
            flat = [r for r in rows if r["dataset"] == dataset and r["flat"]]
            ax.plot([r["depth"] for r in deep], [r[key] for r in deep], "o-", color=color, label=f"{dataset} 8x8xD")
            if flat:
                ax.axhline(flat[0][key], color=color, linestyle="--", label=f"{dataset} 16x16x1")
        if key == "rfid":
            depths = sorted(PAPER_RFID)
            ax.plot(depths, [PAPER_RFID[d] for d in depths], "s:", color="gray", label="paper (256px, K=16384)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["depth"] for r in rows if not r["flat"]}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("code depth D")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"RQ-VAE depth ablation (K = {results['settings']['codebook_size']}, "
                 f"{results['settings']['steps']} steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    results = run(args)
    os.makedirs(args.output_dir, exist_ok=True)
    table = markdown_table(results)
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.output_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write(table)
    plot(results, os.path.join(args.output_dir, "depth_ablation.png"))
    print(table)
    return results


if __name__ == "__main__":
    main()
