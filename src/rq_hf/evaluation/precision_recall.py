"""Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019) in any feature space.

Each set is a manifold estimate: the union of balls around its points, each ball's radius the distance
to the point's k-th nearest neighbour within its own set. Precision = fraction of fake points inside the
real manifold (are samples realistic?); recall = fraction of real points inside the fake manifold (is the
data covered?). Distances are Euclidean, computed in chunks with `torch.cdist` so memory stays
(chunk, N) rather than (N, N).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..models.checks import check_int


class PrecisionRecall(NamedTuple):
    """Fractions in [0, 1]."""

    precision: float
    recall: float


def _knn_radii(features: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Distance of every point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = []
    for chunk in features.split(chunk_size):
        distances = torch.cdist(chunk, features)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # the 1st smallest is the point itself
    return torch.cat(radii)


def _fraction_inside(
    points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk_size: int
) -> float:
    inside = 0
    for chunk in points.split(chunk_size):
        inside += int((torch.cdist(chunk, centres) <= radii[None, :]).any(dim=1).sum())
    return inside / points.shape[0]


@torch.no_grad()
def precision_recall(
    real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3, chunk_size: int = 1024
) -> PrecisionRecall:
    """k-NN manifold precision and recall of `fake_features` against `real_features`.

    Args:
        real_features (`torch.Tensor`): (N_real, F).
        fake_features (`torch.Tensor`): (N_fake, F).
        k (`int`, *optional*, defaults to `3`): neighbourhood size (the paper uses 3); each set needs more than `k`
            points.
        chunk_size (`int`, *optional*, defaults to `1024`): rows of the distance matrix computed at once.
    """
    check_int("k", k)
    for name, t in (("real_features", real_features), ("fake_features", fake_features)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            raise ValueError(f"`{name}` must be a 2-D tensor (N, F), got {getattr(t, 'shape', t)!r}")
        if t.shape[0] <= k:
            raise ValueError(f"`{name}` must hold more than k = {k} points, got {t.shape[0]}")
    if real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(
            f"`fake_features` must have the feature size of `real_features` ({real_features.shape[1]}), "
            f"got {fake_features.shape[1]}"
        )
    real = real_features.double()
    fake = fake_features.double()
    real_radii = _knn_radii(real, k, chunk_size)
    fake_radii = _knn_radii(fake, k, chunk_size)
    return PrecisionRecall(
        precision=_fraction_inside(fake, real, real_radii, chunk_size),
        recall=_fraction_inside(real, fake, fake_radii, chunk_size),
    )


__all__ = ["PrecisionRecall", "precision_recall"]
