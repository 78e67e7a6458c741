"""Adversarial loss terms of VQGAN (Esser et al., 2021), as used by the RQ-VAE recipe.

All functions take the discriminator's **raw logits** (no sigmoid): the hinge loss is defined on
unbounded scores. (diffusers' `examples/vqgan/train_vqgan.py` applies it to sigmoid outputs, which
bounds the scores to (0, 1) so the hinge never saturates; do not copy that.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["adaptive_weight", "adopt_weight", "generator_adversarial_loss", "hinge_d_loss"]


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator: `0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))`.

    Args:
        logits_real (`torch.Tensor`): raw discriminator logits on real images, any shape.
        logits_fake (`torch.Tensor`): raw discriminator logits on reconstructions (detached from the generator), any
            shape.

    Returns:
        A scalar tensor; zero once real logits are >= 1 and fake logits are <= -1.
    """
    if not torch.is_tensor(logits_real) or not torch.is_tensor(logits_fake):
        raise TypeError(
            "`logits_real` and `logits_fake` must be tensors, got "
            f"{type(logits_real).__name__} and {type(logits_fake).__name__}"
        )
    loss_real = F.relu(1.0 - logits_real).mean()
    loss_fake = F.relu(1.0 + logits_fake).mean()
    return 0.5 * (loss_real + loss_fake)


def generator_adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator's adversarial loss for the hinge GAN: `-mean(logits_fake)`.

    Args:
        logits_fake (`torch.Tensor`): raw discriminator logits on reconstructions (not detached), any shape.
    """
    if not torch.is_tensor(logits_fake):
        raise TypeError(
            f"`logits_fake` must be a tensor, got {type(logits_fake).__name__}"
        )
    return -logits_fake.mean()


def adaptive_weight(
    nll_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VQGAN's adaptive weight of the adversarial term: `||∇_L nll|| / (||∇_L g|| + eps)`, clamped.

    `L` is the weight of the decoder's last layer (e.g. `vae.decoder.conv_out.weight`). Both gradients
    are taken with `torch.autograd.grad(..., retain_graph=True)`, so the graph stays usable for the
    `backward()` of the total loss that follows. The result is detached; multiply it by the
    discriminator weight (0.75 in RQ-VAE) and by [`adopt_weight`] yourself, as VQGAN does.

    Under DDP pass the parameter of the *unwrapped* module (`accelerator.unwrap_model(vae)`): the
    gradients computed here are local to the process and are not all-reduced, as in taming-transformers.

    Args:
        nll_loss (`torch.Tensor`): scalar reconstruction (+ perceptual) loss, attached to the graph through
            `last_layer`.
        g_loss (`torch.Tensor`): scalar generator adversarial loss, attached to the graph through `last_layer`.
        last_layer (`torch.Tensor`): the parameter the gradient norms are measured on.
        max_weight (`float`, *optional*, defaults to `10000.0`): upper clamp of the weight (VQGAN: 1e4).
        eps (`float`, *optional*, defaults to `0.0001`): added to the denominator.

    Returns:
        A detached scalar tensor in `[0, max_weight]`.
    """
    for name, value in (("nll_loss", nll_loss), ("g_loss", g_loss)):
        if not torch.is_tensor(value) or value.numel() != 1:
            raise ValueError(f"`{name}` must be a scalar tensor, got {_describe(value)}")
        if not value.requires_grad:
            raise ValueError(
                f"`{name}` must require grad (be attached to the graph through "
                "`last_layer`), got a tensor with requires_grad=False"
            )
    if not isinstance(last_layer, torch.Tensor) or not last_layer.requires_grad:
        raise ValueError(
            "`last_layer` must be a parameter that requires grad (e.g. "
            f"vae.decoder.conv_out.weight), got {_describe(last_layer)}"
        )
    if max_weight <= 0:
        raise ValueError(f"`max_weight` must be > 0, got {max_weight}")
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grads.float().norm() / (g_grads.float().norm() + eps)
    return torch.clamp(weight, 0.0, max_weight).detach()


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """Return `value` before `threshold` steps and `weight` from then on (VQGAN's `disc_start`).

    Args:
        weight (`float`): the weight in force from step `threshold` on.
        global_step (`int`): the current optimisation step.
        threshold (`int`, *optional*, defaults to `0`): first step at which `weight` applies.
        value (`float`, *optional*, defaults to `0.0`): the weight before `threshold` (0 switches the term off).
    """
    if threshold < 0:
        raise ValueError(f"`threshold` must be >= 0, got {threshold}")
    return value if global_step < threshold else weight


def _describe(value: object) -> str:
    if torch.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)} (requires_grad={value.requires_grad})"
    return f"a {type(value).__name__}"
