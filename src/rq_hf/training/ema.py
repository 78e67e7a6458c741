"""Exponential moving average of a model's weights *and buffers* (for the RQ-VAE codebook and transformers
models, where diffusers' `EMAModel` falls short: it ignores buffers and fails on transformers models)."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["make_ema_model"]


def make_ema_model(model: nn.Module, decay: float = 0.999) -> AveragedModel:
    """Return a frozen `AveragedModel` copy of `model` updated by `ema.update_parameters(model)`.

    Floating-point parameters and buffers follow `ema = decay * ema + (1 - decay) * model`
    (`torch._foreach_lerp_`, as `get_ema_multi_avg_fn`); integer and bool buffers (step counters,
    BatchNorm's `num_batches_tracked`) are copied instead of being averaged and truncated, which is what
    `get_ema_multi_avg_fn` would do to them. The first update copies the model. The averaged model is
    `ema.module` (save it with `ema.module.save_pretrained`); its parameters do not require grad.

    Pass the unwrapped model (`accelerator.unwrap_model(model)`) both here and to `update_parameters`.

    Args:
        model (`nn.Module`): the model being trained.
        decay (`float`, *optional*, defaults to `0.999`): EMA decay in [0, 1) (e.g. 0.999 or 0.9999).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ValueError(f"`decay` must be a float in [0, 1), got {decay!r}")

    @torch.no_grad()
    def ema_update(ema_tensors: list[torch.Tensor], model_tensors: list[torch.Tensor], _num_averaged) -> None:
        # AveragedModel calls this once per (device, dtype) group, so the list is uniform.
        if torch.is_floating_point(ema_tensors[0]) or torch.is_complex(ema_tensors[0]):
            torch._foreach_lerp_(ema_tensors, model_tensors, 1.0 - decay)
        else:
            torch._foreach_copy_(ema_tensors, model_tensors)

    ema = AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)
    ema.requires_grad_(False)
    return ema
