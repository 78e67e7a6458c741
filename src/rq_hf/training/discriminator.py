"""PatchGAN discriminator of pix2pix / taming-transformers (`NLayerDiscriminator`) as a diffusers model."""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..models.checks import check_int

__all__ = ["PatchGANDiscriminator"]

_NORM_TYPES = ("group", "batch", "none")


class PatchGANDiscriminator(ModelMixin, ConfigMixin):
    """Fully convolutional PatchGAN discriminator: one raw logit per overlapping image patch.

    Layout (same module indices as taming's `NLayerDiscriminator.main`, so its weights load by
    state-dict keys when `norm_type="batch"`): a 4x4 stride-2 conv + LeakyReLU(0.2); `n_layers - 1`
    blocks of 4x4 stride-2 conv + norm + LeakyReLU with channels doubling up to `8 * base_channels`;
    one 4x4 stride-1 conv + norm + LeakyReLU; a 4x4 stride-1 conv to one channel. Conv weights are
    initialised from N(0, 0.02) and norm weights from N(1, 0.02) with zero bias, as in taming.

    Normalisation (`norm_type`):

    - `"group"` (default): GroupNorm. It has no running statistics and does not depend on the batch,
      so it behaves the same in train and eval mode, on any per-process batch size, and under DDP
      without `SyncBatchNorm`. This is our choice for multi-process training.
    - `"batch"`: BatchNorm, as in taming. Under DDP each process normalises with its own batch
      statistics; convert with `torch.nn.SyncBatchNorm.convert_sync_batchnorm` before
      `accelerator.prepare` for exact multi-process behaviour. Real and fake batches passed in separate
      calls get separate statistics (as in taming).
    - `"none"`: no normalisation (convs get a bias instead).

    Args:
        in_channels (`int`, *optional*, defaults to `3`): channels of the images (3 for RGB, 1 for grayscale).
        base_channels (`int`, *optional*, defaults to `64`): channels of the first conv (`ndf`, 64 in taming).
        n_layers (`int`, *optional*, defaults to `3`): number of stride-2 convs (3 in taming); the receptive field grows
            with it.
        norm_type (`str`, *optional*, defaults to `'group'`): `"group"`, `"batch"` or `"none"` (see above).
        norm_num_groups (`int`, *optional*, defaults to `32`): groups of GroupNorm, reduced to `gcd(norm_num_groups,
            channels)` per layer.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        n_layers: int = 3,
        norm_type: str = "group",
        norm_num_groups: int = 32,
    ):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("base_channels", base_channels),
                            ("n_layers", n_layers), ("norm_num_groups", norm_num_groups)):
            check_int(name, value)
        if norm_type not in _NORM_TYPES:
            raise ValueError(
                f"`norm_type` must be one of {_NORM_TYPES}, got {norm_type!r}"
            )

        use_bias = norm_type == "none"
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev_mult, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            channels = base_channels * mult
            layers += [
                nn.Conv2d(
                    base_channels * prev_mult, channels, 4, stride=stride, padding=1, bias=use_bias
                ),
                self._norm(norm_type, channels, norm_num_groups),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(base_channels * mult, 1, kernel_size=4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(self._init_weights)

    @staticmethod
    def _norm(norm_type: str, channels: int, norm_num_groups: int) -> nn.Module:
        if norm_type == "batch":
            return nn.BatchNorm2d(channels)
        if norm_type == "group":
            return nn.GroupNorm(math.gcd(norm_num_groups, channels), channels)
        return nn.Identity()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        """Return raw patch logits of shape (B, 1, h, w) for images `sample` (B, in_channels, H, W).

        Each spatial stride-2 layer halves the size, the two final 4x4 stride-1 convs remove one pixel
        each: 32x32 -> 2x2 and 64x64 -> 6x6 with `n_layers=3`. Inputs must be at least
        `3 * 2 ** n_layers` pixels on each side (24 for `n_layers=3`).
        """
        expected = self.config.in_channels
        if sample.ndim != 4 or sample.shape[1] != expected:
            raise ValueError(
                f"`sample` must have shape (B, {expected}, H, W), "
                f"got {tuple(sample.shape)}"
            )
        min_size = 3 * 2**self.config.n_layers
        if min(sample.shape[-2:]) < min_size:
            raise ValueError(
                f"`sample` must be at least {min_size}x{min_size} for "
                f"n_layers={self.config.n_layers}, got {tuple(sample.shape[-2:])}"
            )
        return self.main(sample)
