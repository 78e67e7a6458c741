"""Whole-model evaluations built from the metrics: an RQ-VAE's reconstructions, a pipeline's samples, and a
transformer's likelihood of held-out codes. Each returns a plain JSON-serialisable ``dict``.

Used by ``examples/evaluate.py`` and ``benchmarks/depth_ablation.py``::

    images, labels = load_image_tensors(dataset, resolution=32, num_channels=1, pad_to_resolution=True)
    report = evaluate_reconstruction(vae, images, feature_extractor=InceptionFeatureExtractor(), fid_num_images=500)
    report = evaluate_generation(pipe, images, labels, num_images=500, feature_extractor=..., classifier=...)
    report = evaluate_code_nll(pipe.vqvae, pipe.transformer, images, labels)

Images are float (N, C, H, W) in [-1, 1] throughout (the project's convention). FID/KID at a small N are
biased upwards, so every FID comes with a real-vs-real figure at the same N: two disjoint real sets of N
images each (the reference set must then hold 2N images).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from .classifier import predict
from .inception_fid import (
    FeatureExtractor,
    extract_features,
    fid_report,
    frechet_distance,
    kernel_distance,
    real_and_fake_features,
)
from .likelihood import evaluate_nll
from .precision_recall import precision_recall
from .reconstruction import SSIM_KERNEL_SIZE, SSIM_SIGMA, codebook_usage, psnr, ssim


class ImageSet(NamedTuple):
    """Images (N, C, H, W) float in [-1, 1] and their labels (N,) long, or None for an unlabelled set."""

    images: torch.Tensor
    labels: torch.Tensor | None


def load_image_tensors(
    dataset: Any,
    resolution: int,
    num_channels: int | None = 3,
    pad_to_resolution: bool = False,
    max_samples: int | None = None,
    image_column: str = "image",
    label_column: str | None = None,
    batch_size: int = 256,
) -> ImageSet:
    """Turn a ``datasets.Dataset`` of images into one tensor (center crops, no flips: deterministic).

    Args:
        dataset: a ``datasets.Dataset`` with an ``Image`` column (e.g. from ``load_image_dataset``).
        resolution: side of the square images.
        num_channels: 1 (grayscale), 3 (RGB) or None (keep grayscale), as ``ImageTransform``.
        pad_to_resolution: pad smaller images instead of upscaling them (Fashion-MNIST 28 -> 32).
        max_samples: keep the first ``max_samples`` rows (None: all).
        label_column: a column of integer class labels to return beside the images.
    """
    from torch.utils.data import DataLoader

    from ..data import ImageTransform, collate_images, with_image_transform

    if max_samples is not None:
        if not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"`max_samples` must be a positive int or None, got {max_samples!r}")
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    transform = ImageTransform(
        resolution, center_crop=True, num_channels=num_channels, pad_to_resolution=pad_to_resolution
    )
    dataset = with_image_transform(dataset, transform, image_column=image_column, label_column=label_column,
                                   on_decode_error="raise")
    images, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_images):
        images.append(batch["pixel_values"])
        if label_column is not None:
            labels.append(batch["class_labels"])
    return ImageSet(torch.cat(images), torch.cat(labels) if label_column is not None else None)


def _batches(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"`images` must be a tensor (N, C, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        return images.split(batch_size)
    return images


def _check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int{' or None' if allow_none else ''}, got {value!r}")


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _fid_pair(real: torch.Tensor, fake: torch.Tensor, n: int) -> dict[str, float | None]:
    """FID of fake[:n] against real[:n] and, when real holds 2n rows, of real[n:2n] against real[:n]."""
    baseline = frechet_distance(real[:n], real[n : 2 * n]) if real.shape[0] >= 2 * n else None
    return {"fid": frechet_distance(real[:n], fake[:n]), "real_vs_real_fid": baseline}


@torch.no_grad()
def evaluate_reconstruction(
    vae: nn.Module,
    images: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int = 64,
    feature_extractor: FeatureExtractor | None = None,
    fid_num_images: int | None = None,
    real_features: torch.Tensor | None = None,
    compute_ssim: bool = True,
) -> dict[str, Any]:
    """Reconstruction metrics of an ``RQVAEModel`` over a set of images.

    - ``psnr`` (dB, per image then averaged, capped at 100), ``ssim`` (Gaussian window 11, sigma 1.5);
    - ``codebook_usage`` / ``perplexity``: one value per depth over all codes of the set (usage: fraction
      of the K codes that occur; perplexity: exp of the code entropy, between 1 and K);
    - with a ``feature_extractor`` (e.g. ``InceptionFeatureExtractor``): ``rfid``, the FID between the
      reconstructions of the first N images and those N originals, and ``rfid_real_vs_real``, the FID
      between originals N..2N and the first N (None when fewer than 2N images are given), N =
      ``fid_num_images`` (default: all images, then without a baseline).

    Args:
        vae: the model (``encode``, ``decode_codes``, ``config.codebook_size``); run in eval mode, its mode
            is restored afterwards.
        images: a tensor (N, C, H, W) in [-1, 1] or an iterable of such batches.
        real_features: features of the originals, precomputed with the same extractor (at least N rows, in
            the order of ``images``), to share one pass over the real set between several models.
        compute_ssim: SSIM needs torchmetrics (the ``eval`` extra); False skips it (reported as None).
    """
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("fid_num_images", fid_num_images, allow_none=True)
    device = _model_device(vae)
    dtype = next(vae.parameters()).dtype
    keep = None if fid_num_images is None else 2 * fid_num_images
    was_training = vae.training
    vae.eval()
    psnrs, ssims, codes_all, originals, reconstructions = [], [], [], [], []
    kept = 0
    try:
        for batch in _batches(images, batch_size):
            x = batch.to(device=device, dtype=dtype)
            codes = vae.encode(x).codes
            recon = vae.decode_codes(codes).sample.float().clamp(-1, 1)
            x = x.float()
            psnrs.append(psnr(recon, x, reduction="none").cpu())
            if compute_ssim:
                ssims.append(ssim(recon, x, reduction="none").cpu())
            codes_all.append(codes.cpu())
            if feature_extractor is not None and (keep is None or kept < keep):
                originals.append(x.cpu())
                reconstructions.append(recon.cpu())
                kept += x.shape[0]
    finally:
        vae.train(was_training)
    if not psnrs:
        raise ValueError("`images` must hold at least one image, got none")
    codes = torch.cat(codes_all)
    usage = codebook_usage(codes, int(vae.config.codebook_size))
    report: dict[str, Any] = {
        "num_images": int(codes.shape[0]),
        "code_shape": list(codes.shape[1:]),
        "codebook_size": int(vae.config.codebook_size),
        "psnr": float(torch.cat(psnrs).mean()),
        "ssim": float(torch.cat(ssims).mean()) if compute_ssim else None,
        "ssim_window": {"kernel_size": SSIM_KERNEL_SIZE, "sigma": SSIM_SIGMA},
        "codebook_usage": [float(u) for u in usage.usage],
        "perplexity": [float(p) for p in usage.perplexity],
        "codebook_usage_mean": float(usage.usage.mean()),
        "rfid": None,
        "rfid_real_vs_real": None,
        "fid_num_images": None,
    }
    if feature_extractor is not None:
        real_images = torch.cat(originals)
        n = real_images.shape[0] if fid_num_images is None else min(fid_num_images, real_images.shape[0])
        if n < 2:
            raise ValueError(f"rFID needs at least 2 images, got {n}")
        recon_features = extract_features(torch.cat(reconstructions)[:n], feature_extractor)
        if real_features is None:
            real_features = extract_features(real_images[: 2 * n], feature_extractor)
        elif real_features.shape[0] < n:
            raise ValueError(
                f"`real_features` must hold at least {n} rows (fid_num_images), got {real_features.shape[0]}"
            )
        pair = _fid_pair(real_features, recon_features, n)
        report.update(rfid=pair["fid"], rfid_real_vs_real=pair["real_vs_real_fid"], fid_num_images=n)
    return report


@torch.no_grad()
def generate_images(
    pipe: Any,
    num_images: int,
    batch_size: int = 32,
    generator: torch.Generator | None = None,
    **sampling_kwargs: Any,
) -> ImageSet:
    """Sample ``num_images`` images (N, C, H, W) in [-1, 1] from an ``RQTransformerPipeline``.

    A class-conditional model gets the classes 0, 1, ..., K-1, 0, 1, ... in turn (a balanced set), returned
    as the labels; an unconditional one gets labels None. ``sampling_kwargs`` go to the pipeline
    (``top_k``, ``top_p``, ``temperature``, ``guidance_scale``).
    """
    _check_positive_int("num_images", num_images)
    _check_positive_int("batch_size", batch_size)
    num_classes = pipe.transformer.config.num_classes
    labels = None if num_classes is None else torch.arange(num_images) % num_classes
    images = []
    for start in range(0, num_images, batch_size):
        count = min(batch_size, num_images - start)
        if labels is None:
            kwargs = {"num_images": count}
        else:
            kwargs = {"class_labels": labels[start : start + count]}
        out = pipe(**kwargs, generator=generator, output_type="pt", **sampling_kwargs).images
        images.append(out.float().cpu() * 2 - 1)
    return ImageSet(torch.cat(images), labels)


@torch.no_grad()
def evaluate_generation(
    pipe: Any,
    reference_images: torch.Tensor,
    reference_labels: torch.Tensor | None = None,
    num_images: int = 100,
    batch_size: int = 32,
    feature_extractor: FeatureExtractor | None = None,
    classifier: nn.Module | None = None,
    generator: torch.Generator | None = None,
    kid_subsets: int = 100,
    samples: ImageSet | None = None,
    **sampling_kwargs: Any,
) -> dict[str, Any]:
    """Sample-quality metrics of an ``RQTransformerPipeline`` against a reference set.

    N = ``num_images`` samples (see :func:`generate_images`) are compared with a random real subset A of N
    reference images; a disjoint real subset B of N images gives the real-vs-real figures at the same N, so
    ``reference_images`` must hold at least 2N images.

    - with ``feature_extractor`` (Inception): ``fid``, ``kid`` (mean, std), ``real_vs_real_fid``,
      ``real_vs_real_kid``;
    - with ``classifier`` (a ``SmallImageClassifier`` trained on the labelled data): ``classifier_fid`` and
      ``classifier_real_vs_real_fid`` in its feature space, ``precision`` / ``recall`` (k = 3) and their
      real-vs-real values, and, for a class-conditional model, ``class_accuracy`` (fraction of samples the
      classifier assigns to the class they were drawn for) beside ``classifier_real_accuracy`` (its
      accuracy on the reference images, when ``reference_labels`` are given).

    Args:
        generator: draws the real subsets and the samples; same seed, same report.
        samples: already generated samples (e.g. to reuse them); by default they are drawn here.
        sampling_kwargs: ``top_k``, ``top_p``, ``temperature``, ``guidance_scale`` for the pipeline.
    """
    _check_positive_int("num_images", num_images)
    if not isinstance(reference_images, torch.Tensor) or reference_images.ndim != 4:
        raise ValueError(
            "`reference_images` must be a tensor (N, C, H, W), "
            f"got {getattr(reference_images, 'shape', reference_images)!r}"
        )
    if reference_images.shape[0] < 2 * num_images:
        raise ValueError(
            f"`reference_images` must hold at least 2 * num_images = {2 * num_images} images (two disjoint real "
            f"sets for the real-vs-real baseline), got {reference_images.shape[0]}"
        )
    if samples is None:
        samples = generate_images(pipe, num_images, batch_size, generator=generator, **sampling_kwargs)
    if samples.images.shape[1:] != reference_images.shape[1:]:
        raise ValueError(
            f"`reference_images` must have the samples' shape (C, H, W) = {tuple(samples.images.shape[1:])}, "
            f"got {tuple(reference_images.shape[1:])}"
        )
    fake = samples.images[:num_images]
    order = torch.randperm(reference_images.shape[0], generator=generator)[: 2 * num_images]
    real = reference_images[order]
    report: dict[str, Any] = {"num_images": num_images, "sampling": {k: v for k, v in sampling_kwargs.items()}}
    if feature_extractor is not None:  # as `fid_with_real_baseline`, plus KID on the same features
        real_a, real_b, fake_features = real_and_fake_features(real, fake, feature_extractor, batch_size)
        fid = fid_report(real_a, real_b, fake_features)
        report.update(
            fid=fid.fid,
            real_vs_real_fid=fid.real_vs_real_fid,
            kid=list(kernel_distance(real_a, fake_features, subsets=kid_subsets, generator=generator)),
            real_vs_real_kid=list(kernel_distance(real_a, real_b, subsets=kid_subsets, generator=generator)),
        )
    if classifier is not None:
        real_a, real_b, fake_features = real_and_fake_features(real, fake, classifier.features, batch_size)
        fid = fid_report(real_a, real_b, fake_features)
        pr = precision_recall(real_a, fake_features)
        pr_real = precision_recall(real_a, real_b)
        report.update(
            classifier_fid=fid.fid,
            classifier_real_vs_real_fid=fid.real_vs_real_fid,
            precision=pr.precision,
            recall=pr.recall,
            real_vs_real_precision=pr_real.precision,
            real_vs_real_recall=pr_real.recall,
        )
        if samples.labels is not None:
            predicted = predict(classifier, fake)
            report["class_accuracy"] = float((predicted == samples.labels[:num_images]).double().mean())
        if reference_labels is not None:
            predicted = predict(classifier, reference_images[order[:num_images]])
            report["classifier_real_accuracy"] = float(
                (predicted == reference_labels[order[:num_images]]).double().mean()
            )
    return report


@torch.no_grad()
def evaluate_code_nll(
    vae: nn.Module,
    transformer: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Bits per code of the RQ-Transformer on the codes of held-out ``images`` (encoded by ``vae``).

    Returns ``bits_per_code``, ``uniform_bits_per_code`` (log2 K, what a model that learnt nothing gets),
    ``num_codes`` and ``num_images``. A class-conditional transformer needs ``labels`` (N,).
    """
    _check_positive_int("batch_size", batch_size)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"`images` must be a non-empty tensor (N, C, H, W), got {getattr(images, 'shape', images)!r}")
    conditional = transformer.config.num_classes is not None
    if conditional and labels is None:
        raise ValueError(
            f"`labels` are required: the transformer is class-conditional ({transformer.config.num_classes} classes)"
        )
    if labels is not None and labels.shape[0] != images.shape[0]:
        raise ValueError(f"`labels` must hold one label per image ({images.shape[0]}), got {labels.shape[0]}")
    device = _model_device(vae)
    dtype = next(vae.parameters()).dtype
    was_training = vae.training
    vae.eval()
    try:
        codes = [vae.encode(b.to(device=device, dtype=dtype)).codes.cpu() for b in images.split(batch_size)]
    finally:
        vae.train(was_training)
    label_batches = labels.long().split(batch_size) if conditional else None
    bits = evaluate_nll(transformer, codes, label_batches)
    vocab = int(transformer.config.vocab_size)
    return {
        "bits_per_code": bits,
        "uniform_bits_per_code": math.log2(vocab),
        "num_codes": int(sum(c.numel() for c in codes)),
        "num_images": int(images.shape[0]),
    }


__all__ = [
    "ImageSet",
    "evaluate_code_nll",
    "evaluate_generation",
    "evaluate_reconstruction",
    "generate_images",
    "load_image_tensors",
]
