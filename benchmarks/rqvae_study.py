"""Shared machinery of the RQ-VAE studies (``depth_ablation.py``, ``equal_bits.py``): data, models, training,
metrics and a cache of finished runs.

One run = one RQ-VAE (or its continuous twin: the same encoder/decoder with the quantizer bypassed, the ceiling
that any quantizer can only approach) trained with MSE + commitment loss (beta 0.25; no perceptual or GAN
loss: the studies isolate the quantizer), AdamW with a 20-step warm-up and a cosine (or constant) learning
rate, fp32, one seed for the initial weights and the batches. Metrics on fixed test images: PSNR, SSIM
(window 11, sigma 1.5), per depth the codes used on the test set (dead = K - used), the perplexity, and the
relative residual norm ``sqrt(sum ||z - z_hat^(d)||^2 / sum ||z||^2)`` over all test latents z.

Data: Fashion-MNIST padded to 32x32 (1 channel; the first ``train_images`` training images, the first
``num_test_images`` test images) and random crops of natural photos split by photo (``photos.py``): dataset
names ``photos32`` / ``photos64`` for 32x32 / 64x64 crops. Every run appends its result to
``<output_dir>/runs.jsonl``; a later call with the same settings reuses it instead of training again, so an
interrupted study resumes where it stopped and the two studies share their common runs; ``--cached_only``
summarizes the finished runs without training (each row names the seeds it averages).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import photos as photo_lib  # noqa: E402

DATASETS = ("fashion_mnist", "photos32", "photos64")
CODE_GRID = 8  # the 8xD models' code map side
TEST_SEED = 1234  # the photo test crops are the same for every seed and model


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the studies: data, architecture, training, output."""
    parser.add_argument("--datasets", default="fashion_mnist", help=f"Comma-separated subset of {DATASETS}.")
    parser.add_argument("--seeds", type=ints, default=(0, 1, 2), help="Comma-separated seeds (weights, batches).")
    parser.add_argument("--steps", type=int, default=300, help="Training steps per model.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--lr_schedule", choices=("cosine", "constant"), default="cosine",
                        help="After a 20-step warm-up: cosine decay to 0, or constant.")
    parser.add_argument("--block_out_channels", type=ints, default=(16, 32, 64),
                        help="32x32 -> 8x8 models; one more level (first value repeated) per doubling of the size.")
    parser.add_argument("--flat_block_out_channels", type=ints, default=(16, 64),
                        help="32x32 -> 16x16x1 models (one level fewer), extended the same way.")
    parser.add_argument("--latent_channels", type=int, default=16, help="Width of the quantized vectors.")
    parser.add_argument("--restart_threshold", type=float, default=1.0, help="EMA count below which a code restarts.")
    parser.add_argument("--train_images", type=int, default=20000, help="Fashion-MNIST training images used.")
    parser.add_argument("--num_test_images", type=int, default=1000, help="Test images (photos: test crops).")
    parser.add_argument("--photo_set", choices=photo_lib.PHOTO_SETS, default="all",
                        help="'all' needs the Debian packages named in photos.py; 'wheels' only pip wheels.")
    parser.add_argument("--photo_short_side", type=int, default=256, help="Photos are resized to this short side.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine).")
    parser.add_argument("--quick", action="store_true", help="Tiny models, 2 steps, 16 test images (seconds).")
    parser.add_argument("--cached_only", action="store_true",
                        help="Train nothing: summarize the runs already in runs.jsonl (a model without runs is left "
                             "out; each row names its seeds).")


def check_common_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Apply ``--quick``, parse ``--datasets`` and reject bad values (``parser.error`` names the flag)."""
    if args.quick:
        args.steps, args.batch_size, args.train_images, args.num_test_images = 2, 8, 64, 16
        args.block_out_channels, args.flat_block_out_channels, args.latent_channels = (8, 8, 8), (8, 8), 8
        args.photo_set, args.photo_short_side = "wheels", 96
    args.datasets = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown or not args.datasets:
        parser.error(f"--datasets must be a comma-separated subset of {DATASETS}, got {args.datasets}")
    for name in ("steps", "batch_size", "train_images", "num_test_images", "latent_channels", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.seeds:
        parser.error("--seeds must name at least one seed, got none")
    if len(args.flat_block_out_channels) != len(args.block_out_channels) - 1:
        parser.error("--flat_block_out_channels must have one level fewer than --block_out_channels, got "
                     f"{args.flat_block_out_channels} and {args.block_out_channels}")
    if args.photo_short_side < 64:
        parser.error(f"--photo_short_side must be >= 64 (the largest crop), got {args.photo_short_side}")


# ------------------------------------------------------------------------------------------------------ data


def resolution_of(dataset: str) -> int:
    return 64 if dataset == "photos64" else 32


def load_data(dataset: str, args: argparse.Namespace) -> tuple[Callable[[Any, int], Any], Any]:
    """(sample_batch(generator, batch_size) -> (B, C, R, R) in [-1, 1], fixed test images (N, C, R, R))."""
    import torch

    if dataset == "fashion_mnist":
        from rq_hf.data import load_fashion_mnist
        from rq_hf.evaluation import load_image_tensors

        train = load_image_tensors(load_fashion_mnist("train"), 32, num_channels=1, pad_to_resolution=True,
                                   max_samples=args.train_images).images
        test = load_image_tensors(load_fashion_mnist("test"), 32, num_channels=1, pad_to_resolution=True,
                                  max_samples=args.num_test_images).images

        def sample_fmnist(generator: torch.Generator, batch_size: int) -> torch.Tensor:
            return train[torch.randint(0, train.shape[0], (batch_size,), generator=generator)]

        return sample_fmnist, test
    size = resolution_of(dataset)
    train_photos, test_photos = photo_lib.split(photo_lib.photo_catalogue(args.photo_set))
    train_images = photo_lib.load_photos(train_photos, args.photo_short_side)
    test_images = photo_lib.load_photos(test_photos, args.photo_short_side)
    test = photo_lib.random_crops(test_images, args.num_test_images, size, torch.Generator().manual_seed(TEST_SEED),
                                  flip=False)

    def sample_photos(generator: torch.Generator, batch_size: int) -> torch.Tensor:
        return photo_lib.random_crops(train_images, batch_size, size, generator, flip=True)

    return sample_photos, test


# ---------------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """One model of a study. ``flat``: one level fewer (16x16 codes); ``continuous``: quantizer bypassed."""

    codebook_size: int
    code_depth: int
    shared_codebook: bool = True
    flat: bool = False
    continuous: bool = False
    kmeans_init: bool = False
    restart_threshold: float | None = None  # None: --restart_threshold

    @property
    def bits_per_position(self) -> float:
        return self.code_depth * math.log2(self.codebook_size)

    def label(self) -> str:
        grid = 2 * CODE_GRID if self.flat else CODE_GRID
        if self.continuous:
            return f"continuous {grid}x{grid} (ceiling)"
        text = f"{grid}x{grid}x{self.code_depth} K={self.codebook_size}"
        if self.code_depth > 1:
            text += " shared" if self.shared_codebook else " per-depth"
        if self.kmeans_init:
            text += " k-means"
        if self.restart_threshold is not None:
            text += f" restart<{self.restart_threshold:g}"
        return text


#: The continuous twins (8x8 and 16x16 latents): the quantizer (built, never used) does not matter, so every
#: study shares one key.
CEILING = ModelSpec(2, 1, continuous=True)
FLAT_CEILING = ModelSpec(2, 1, flat=True, continuous=True)


def channels_for(resolution: int, flat: bool, args: argparse.Namespace) -> tuple[int, ...]:
    """The 32x32 channels, with the first value repeated once per doubling of ``resolution`` beyond 32."""
    base = args.flat_block_out_channels if flat else args.block_out_channels
    extra = int(round(math.log2(resolution // 32)))
    return (base[0],) * extra + tuple(base)


def build_vae(spec: ModelSpec, in_channels: int, resolution: int, args: argparse.Namespace):
    """An RQVAEModel with one ResNet layer per level, no attention in the mid blocks."""
    from rq_hf import RQVAEModel

    channels = channels_for(resolution, spec.flat, args)
    levels = len(channels)
    threshold = args.restart_threshold if spec.restart_threshold is None else spec.restart_threshold
    return RQVAEModel(
        in_channels=in_channels, out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=channels, layers_per_block=1, latent_channels=args.latent_channels,
        norm_num_groups=min(8, min(channels)), sample_size=resolution, mid_block_add_attention=False,
        codebook_size=spec.codebook_size, code_depth=spec.code_depth, shared_codebook=spec.shared_codebook,
        kmeans_init=spec.kmeans_init, restart_threshold=threshold,
    )


def reconstruct(vae: Any, x: Any, continuous: bool) -> tuple[Any, Any]:
    """(reconstruction, commitment loss) in training; the continuous twin decodes the latents unquantized."""
    if continuous:
        return vae.decode(vae.encode(x).latents, force_not_quantize=True).sample, x.new_zeros(())
    out = vae(x)
    return out.sample, out.commitment_loss


def train_vae(vae: Any, spec: ModelSpec, sample_batch: Callable[[Any, int], Any], seed: int,
              args: argparse.Namespace) -> dict[str, Any]:
    """MSE (+ commitment) with AdamW; returns the timing and the loss at the start and end."""
    import torch

    generator = torch.Generator().manual_seed(seed)  # the same batches for every model of this seed
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, weight_decay=0.0)
    warmup = min(20, args.steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if args.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    vae.train()
    losses, start = [], time.perf_counter()
    for _ in range(args.steps):
        x = sample_batch(generator, args.batch_size)
        recon, commitment = reconstruct(vae, x, spec.continuous)
        loss = torch.nn.functional.mse_loss(recon, x) + commitment
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


# ---------------------------------------------------------------------------------------------------- metrics


def evaluate(vae: Any, spec: ModelSpec, test: Any) -> dict[str, Any]:
    """PSNR, SSIM, used / dead codes, perplexity and relative residual norm per depth on ``test``."""
    import torch

    from rq_hf.evaluation import evaluate_reconstruction, psnr, ssim

    if spec.continuous:
        with torch.no_grad():
            recon = torch.cat([reconstruct(vae, b, True)[0] for b in test.split(256)]).clamp(-1, 1)
        return {"psnr": float(psnr(recon, test)), "ssim": float(ssim(recon, test)), "used_codes": None,
                "dead_codes": None, "perplexity": None, "residual_norm": None}
    report = evaluate_reconstruction(vae, test, batch_size=256)
    quantizer = vae.quantizer
    with torch.no_grad():
        encoded = [vae.encode(b) for b in test.split(256)]
        z = torch.cat([e.latents.permute(0, 2, 3, 1) for e in encoded]).float()
        codes = torch.cat([e.codes for e in encoded])
        total = z.pow(2).sum()
        residual_norm = [float(((z - quantizer.embed_codes(codes[..., :d])).pow(2).sum() / total).sqrt())
                         for d in range(1, spec.code_depth + 1)]
    used = [int(torch.unique(codes[..., d]).numel()) for d in range(spec.code_depth)]
    return {
        "psnr": report["psnr"], "ssim": report["ssim"], "used_codes": used,
        "dead_codes": [spec.codebook_size - u for u in used],
        "used_codes_any_depth": int(torch.unique(codes).numel()) if spec.shared_codebook else None,
        "perplexity": report["perplexity"], "residual_norm": residual_norm,
    }


# ------------------------------------------------------------------------------------------------ runs cache


def run_key(dataset: str, spec: ModelSpec, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Everything that determines a run's result."""
    resolution = resolution_of(dataset)
    key = {
        "dataset": dataset, "seed": seed, **asdict(spec),
        "restart_threshold": None if spec.continuous else (
            args.restart_threshold if spec.restart_threshold is None else spec.restart_threshold),
        "block_out_channels": list(channels_for(resolution, spec.flat, args)),
        "latent_channels": args.latent_channels, "steps": args.steps, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "lr_schedule": args.lr_schedule, "num_test_images": args.num_test_images,
    }
    if dataset == "fashion_mnist":
        key["train_images"] = args.train_images
    else:
        key.update(photo_set=args.photo_set, photo_short_side=args.photo_short_side)
    return key


def same_model(key: dict[str, Any]) -> dict[str, Any]:
    """``key`` with what does not change the model left out: at D = 1 a shared and a per-depth codebook are the
    same single codebook."""
    if key.get("code_depth") == 1:
        key = {**key, "shared_codebook": True}
    return key


class RunCache:
    """Finished runs in ``<output_dir>/runs.jsonl`` (one JSON object per line, appended after each run)."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, "runs.jsonl")
        self.runs: list[dict[str, Any]] = []
        if os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as f:
                self.runs = [json.loads(line) for line in f if line.strip()]

    def find(self, key: dict[str, Any]) -> dict[str, Any] | None:
        normal = same_model(json.loads(json.dumps(key)))
        return next((r for r in self.runs if same_model(r["key"]) == normal), None)

    def add(self, run: dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(run) + "\n")
        self.runs.append(json.loads(json.dumps(run)))


def run_models(specs: list[ModelSpec], args: argparse.Namespace, cache: RunCache) -> list[dict[str, Any]]:
    """Train and evaluate every (dataset, spec, seed) not yet in ``cache``; returns all their runs in order."""
    import torch

    torch.set_num_threads(args.threads)
    runs = []
    for dataset in args.datasets:
        data = None
        for seed in args.seeds:
            for spec in specs:
                key = run_key(dataset, spec, seed, args)
                found = cache.find(key)
                if found is None and args.cached_only:
                    continue
                if found is None:
                    if data is None:
                        data = load_data(dataset, args)
                    sample_batch, test = data
                    torch.manual_seed(seed)
                    vae = build_vae(spec, test.shape[1], resolution_of(dataset), args)
                    print(f"[{dataset} seed {seed}] {spec.label()}: {args.steps} steps ...", file=sys.stderr,
                          flush=True)
                    training = train_vae(vae, spec, sample_batch, seed, args)
                    metrics = evaluate(vae, spec, test)
                    h, w, d = vae.code_shape_for(test.shape[2], test.shape[3])
                    found = {"key": key, "label": spec.label(), "code_shape": [h, w, d],
                             "parameters": sum(p.numel() for p in vae.parameters()), **training, **metrics}
                    cache.add(found)
                    print(f"[{dataset} seed {seed}] {spec.label()}: PSNR {metrics['psnr']:.2f} dB, "
                          f"{training['seconds_per_step']:.2f} s/step", file=sys.stderr, flush=True)
                runs.append(found)
    return runs


# ------------------------------------------------------------------------------------------------ summaries


def run_study(specs: list[ModelSpec], args: argparse.Namespace, describe: Callable[[ModelSpec], dict[str, Any]],
              stem: str, table: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """Run ``specs`` (reusing finished runs), summarize per (dataset, spec) with ``describe(spec)`` fields, and
    write ``<stem>.json`` and ``<stem>.md`` (``table(results)``) into ``args.output_dir``."""
    os.makedirs(args.output_dir, exist_ok=True)
    runs = run_models(specs, args, RunCache(args.output_dir))
    rows = []
    for dataset in args.datasets:
        for spec in specs:
            group = [r for r in runs if r["key"]["dataset"] == dataset and r["label"] == spec.label()]
            if not group:  # --cached_only and no finished run of this model
                continue
            rows.append({"dataset": dataset, **describe(spec), **summarize(group)})
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    results = {"settings": settings, "rows": rows, "train_seconds": sum(r["train_seconds"] for r in runs),
               "losses": "MSE + commitment (beta 0.25); no perceptual or adversarial loss"}
    text = table(results)
    with open(os.path.join(args.output_dir, f"{stem}.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.output_dir, f"{stem}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    return results


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean / std over seeds of the runs of one (dataset, spec): PSNR, SSIM; per-depth lists averaged."""
    out: dict[str, Any] = {"seeds": [r["key"]["seed"] for r in runs], "label": runs[0]["label"],
                           "parameters": runs[0]["parameters"], "code_shape": runs[0]["code_shape"]}
    for name in ("psnr", "ssim", "seconds_per_step"):
        out[name], out[f"{name}_std"] = mean_std([r[name] for r in runs])
    for name in ("used_codes", "dead_codes", "perplexity", "residual_norm"):
        if runs[0].get(name) is None:
            out[name] = None
            continue
        out[name] = [sum(r[name][d] for r in runs) / len(runs) for d in range(len(runs[0][name]))]
    return out


def fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def fmt_list(values: list[float] | None, digits: int = 0) -> str:
    return "–" if values is None else ", ".join(f"{v:.{digits}f}" for v in values)


def fmt_seeds(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds))
