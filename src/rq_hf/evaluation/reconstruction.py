"""Reconstruction metrics: PSNR, SSIM and codebook usage / perplexity per depth.

Images are float tensors (B, C, H, W); by the project's convention they live in [-1, 1], so the
default `data_range` is 2.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.checks import check_int
from ._optional import require

PSNR_MAX_DB = 100.0
"""PSNR of identical images (MSE 0) is reported as this cap instead of `inf`, so that means stay finite."""

SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5


def _check_image_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"`{name}` must have shape (B, C, H, W), got shape {tuple(t.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"`y` must have the shape of `x` {tuple(x.shape)}, got {tuple(y.shape)}")


def _check_data_range(data_range: float) -> None:
    if not data_range > 0:
        raise ValueError(f"`data_range` must be > 0 (max - min of the pixel range), got {data_range}")


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"`reduction` must be 'mean' or 'none', got {reduction!r}")


def psnr(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, reduction: str = "mean"
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, computed per image and then averaged.

    `PSNR = 10 * log10(data_range**2 / MSE)` with the MSE over all channels and pixels of one image.
    Identical images (MSE 0) give `PSNR_MAX_DB` (100 dB), not `inf`; every value is capped there.
    Written in plain torch (no optional dependency) because of that cap.

    Args:
        x, y (`torch.Tensor`): images (B, C, H, W) with the same shape.
        data_range (`float`, *optional*, defaults to `2.0`): max - min of the pixel range (2.0 for [-1, 1], 1.0 for [0,
            1], 255 for uint8 values).
        reduction (`str`, *optional*, defaults to `'mean'`): `"mean"` (a scalar, the mean of per-image PSNRs) or
            `"none"` (shape (B,)).
    """
    _check_image_pair(x, y)
    _check_data_range(data_range)
    mse = (x.double() - y.double()).square().flatten(1).mean(dim=1)
    values = 10.0 * torch.log10(data_range**2 / mse)  # inf where mse == 0
    values = values.clamp(max=PSNR_MAX_DB).float()
    return _reduce(values, reduction)


def ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, reduction: str = "mean"
) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004), per image and then averaged.

    Gaussian window of size 11 with sigma 1.5, K1 = 0.01, K2 = 0.03, as in the paper; channels are
    averaged. Uses `torchmetrics.functional.structural_similarity_index_measure` (the `eval` extra).

    Args:
        x, y (`torch.Tensor`): images (B, C, H, W) with the same shape; H and W must be at least 11.
        data_range (`float`, *optional*, defaults to `2.0`): max - min of the pixel range (2.0 for [-1, 1]).
        reduction (`str`, *optional*, defaults to `'mean'`): `"mean"` (scalar) or `"none"` (shape (B,)).
    """
    _check_image_pair(x, y)
    _check_data_range(data_range)
    if min(x.shape[-2:]) < SSIM_KERNEL_SIZE:
        raise ValueError(
            f"`x` must be at least {SSIM_KERNEL_SIZE}x{SSIM_KERNEL_SIZE} pixels for SSIM's window, "
            f"got {tuple(x.shape[-2:])}"
        )
    if reduction not in ("mean", "none"):
        raise ValueError(f"`reduction` must be 'mean' or 'none', got {reduction!r}")
    functional = require("torchmetrics.functional.image", "torchmetrics")
    values = functional.structural_similarity_index_measure(
        x.float(),
        y.float(),
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL_SIZE,
        data_range=float(data_range),
        reduction="none",
    )
    return _reduce(values, reduction)


@dataclass
class CodebookUsage:
    """Code statistics per depth.

    Attributes:
        usage: (D,) fraction of the `codebook_size` codes that occur at least once at each depth.
        perplexity: (D,) `exp(entropy)` of the code histogram at each depth (natural log): the
            effective number of codes in use; between 1 and `codebook_size`.
        counts: (D, K) long, the code histogram itself.
    """

    usage: torch.Tensor
    perplexity: torch.Tensor
    counts: torch.Tensor


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> CodebookUsage:
    """Usage fraction and perplexity per depth from a set of codes.

    Args:
        codes (`torch.Tensor`): long tensor (..., D), e.g. (B, h, w, D) from `RQVAEModel.encode`; all leading dimensions
            are pooled into one histogram per depth.
        codebook_size (`int`): K, the number of codes per codebook.
    """
    if not isinstance(codes, torch.Tensor) or codes.dtype not in (torch.int64, torch.int32, torch.int16):
        raise TypeError(
            f"`codes` must be an integer torch.Tensor (..., D), got {getattr(codes, 'dtype', codes)!r}"
        )
    if codes.ndim < 1 or codes.numel() == 0:
        raise ValueError(f"`codes` must be a non-empty tensor (..., D), got shape {tuple(codes.shape)}")
    check_int("codebook_size", codebook_size)
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= codebook_size:
        raise ValueError(
            f"`codes` must lie in [0, {codebook_size - 1}] (codebook_size), got values in [{low}, {high}]"
        )
    flat = codes.reshape(-1, codes.shape[-1]).long().cpu()
    depth = flat.shape[1]
    offsets = torch.arange(depth) * codebook_size
    counts = torch.bincount((flat + offsets).flatten(), minlength=depth * codebook_size)
    counts = counts.view(depth, codebook_size)
    usage = (counts > 0).double().mean(dim=1)
    probs = counts.double() / counts.sum(dim=1, keepdim=True)
    entropy = -(probs * torch.log(probs.clamp_min(1e-300))).sum(dim=1)
    return CodebookUsage(usage=usage.float(), perplexity=torch.exp(entropy).float(), counts=counts)


__all__ = ["PSNR_MAX_DB", "CodebookUsage", "codebook_usage", "psnr", "ssim"]
