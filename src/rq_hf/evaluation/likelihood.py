"""Negative log-likelihood of codes in bits per code (the RQ-Transformer's held-out metric)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def _check_logits_codes(logits: torch.Tensor, codes: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim < 2:
        raise ValueError(f"`logits` must be a tensor (..., K), got {getattr(logits, 'shape', logits)!r}")
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.long:
        raise TypeError(f"`codes` must be a torch.long tensor, got {getattr(codes, 'dtype', type(codes))!r}")
    if logits.shape[:-1] != codes.shape:
        raise ValueError(
            f"`logits` must have shape codes.shape + (K,) = {tuple(codes.shape)} + (K,), "
            f"got {tuple(logits.shape)}"
        )
    size = logits.shape[-1]
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= size):
        raise ValueError(
            f"`codes` must lie in [0, {size - 1}] (K = logits.shape[-1]), got values in "
            f"[{int(codes.min())}, {int(codes.max())}]"
        )


def _nll_sum_nats(logits: torch.Tensor, codes: torch.Tensor) -> float:
    flat = logits.reshape(-1, logits.shape[-1]).float()
    return float(F.cross_entropy(flat, codes.reshape(-1).to(flat.device), reduction="sum"))


def bits_per_code(logits: torch.Tensor, codes: torch.Tensor) -> float:
    """Mean negative log-likelihood of ``codes`` under ``logits``, in bits per code.

    Args:
        logits: (..., K) unnormalised scores, e.g. (B, h, w, D, K) from the RQ-Transformer.
        codes: long (...), the observed codes, e.g. (B, h, w, D).

    Uniform logits give ``log2(K)``; a perfect model gives 0.
    """
    _check_logits_codes(logits, codes)
    if codes.numel() == 0:
        raise ValueError("`codes` must hold at least one code, got an empty tensor")
    return _nll_sum_nats(logits, codes) / codes.numel() / math.log(2)


@torch.no_grad()
def evaluate_nll(
    model: nn.Module,
    codes_batches: Iterable[torch.Tensor],
    class_labels_batches: Iterable[torch.Tensor | None] | None = None,
    device: torch.device | str | None = None,
    text_ids_batches: Iterable[torch.Tensor] | None = None,
) -> float:
    """Bits per code of held-out codes under a code model, over all batches (weighted by code count).

    The model is duck-typed: ``model(codes=codes, class_labels=labels)`` (``text_ids=`` added for a
    text-conditional model) must return an object with
    ``.logits`` of shape codes.shape + (K,) = (B, h, w, D, K), predicting each code from the ones before
    it (as ``RQTransformerForCausalImageModeling`` does). The model runs in eval mode; its previous
    mode is restored afterwards.

    Args:
        model: the code model.
        codes_batches: iterable of long tensors (B, h, w, D).
        class_labels_batches: iterable of long tensors (B,) aligned with ``codes_batches``, or None for an
            unconditional model.
        device: where to run; default the device of the model's first parameter (or the CPU).
        text_ids_batches: iterable of long tensors (B, max_text_length) of caption token ids aligned with
            ``codes_batches``, for a text-conditional model; None otherwise.
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    total_nats, total_codes = 0.0, 0
    try:
        codes_list = list(codes_batches)
        labels_list = [None] * len(codes_list) if class_labels_batches is None else list(class_labels_batches)
        text_list = None if text_ids_batches is None else list(text_ids_batches)
        for name, batches in (("class_labels_batches", labels_list), ("text_ids_batches", text_list)):
            if batches is not None and len(batches) != len(codes_list):
                raise ValueError(
                    f"`{name}` must have one batch per codes batch ({len(codes_list)}), got {len(batches)}"
                )
        for index, (codes, labels) in enumerate(zip(codes_list, labels_list)):
            codes = codes.to(device)
            labels = labels.to(device) if labels is not None else None
            condition = {} if text_list is None else {"text_ids": text_list[index].to(device)}
            output = model(codes=codes, class_labels=labels, **condition)
            logits = getattr(output, "logits", None)
            if logits is None:
                raise TypeError(f"`model` must return an object with `.logits`, got {type(output).__name__}")
            _check_logits_codes(logits, codes)
            total_nats += _nll_sum_nats(logits, codes)
            total_codes += codes.numel()
    finally:
        model.train(was_training)
    if total_codes == 0:
        raise ValueError("`codes_batches` must hold at least one code, got none")
    return total_nats / total_codes / math.log(2)


__all__ = ["bits_per_code", "evaluate_nll"]
