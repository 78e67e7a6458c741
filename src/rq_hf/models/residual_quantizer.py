"""Residual quantizer of RQ-VAE (Lee et al., CVPR 2022): D greedy nearest-code steps per vector.

    r_0 = z,   k_d = argmin_k ||r_{d-1} - e_k||^2,   r_d = r_{d-1} - e_{k_d},   z_hat = sum_d e_{k_d}

The codebooks are buffers updated by an exponential moving average of the residuals assigned to each
code (never by gradient), with Laplace-smoothed cluster sizes, restarts of unused codes and optional
k-means initialisation. Gradients reach the input through the straight-through estimator.
"""

import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers.utils import BaseOutput
from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class ResidualQuantizerOutput(BaseOutput):
    """Output of [`ResidualQuantizer.forward`].

    Args:
        quantized (`torch.Tensor` of shape `(..., dim)`):
            Sum of the chosen code vectors over all depths, carrying the straight-through gradient to the
            input.
        codes (`torch.LongTensor` of shape `(..., code_depth)`): Chosen code per depth.
        commitment_loss (`torch.Tensor`, scalar):
            `commitment_weight * mean_d mse(z, sg(z_hat^(d)))`, `z_hat^(d)` the sum of the first d vectors.
        codebook_usage (`torch.Tensor` of shape `(code_depth,)`):
            Fraction of the codes used in this batch (on this process), per depth.
        perplexity (`torch.Tensor` of shape `(code_depth,)`):
            Perplexity of the code histogram of this batch (on this process), per depth.
    """

    quantized: torch.Tensor
    codes: torch.LongTensor
    commitment_loss: torch.Tensor
    codebook_usage: torch.Tensor
    perplexity: torch.Tensor


@dataclass
class SoftCodesOutput(BaseOutput):
    """Output of [`ResidualQuantizer.soft_codes`].

    Args:
        probs (`torch.Tensor` of shape `(..., code_depth, codebook_size)`):
            Per depth, `softmax(-||r - e_k||^2 / temperature)` over the codes.
        codes (`torch.LongTensor` of shape `(..., code_depth)`):
            The codes that formed the residuals (sampled from `probs` when stochastic, nearest otherwise).
    """

    probs: torch.Tensor
    codes: torch.LongTensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ResidualQuantizer(nn.Module):
    r"""Residual vector quantizer with EMA codebooks, as used by RQ-VAE.

    Args:
        codebook_size (`int`): Number of codes K per codebook.
        code_depth (`int`): Number of residual steps D (codes per vector).
        dim (`int`): Dimension of the quantized vectors (last dimension of the input).
        shared_codebook (`bool`, defaults to `True`): One codebook for all depths (else one per depth).
        ema_decay (`float`, defaults to 0.99): Decay of the moving averages of cluster sizes and sums.
        restart_unused_codes (`bool`, defaults to `True`): In training, replace codes whose EMA cluster size
            falls below `restart_threshold` by residuals of the current batch (the same on every process).
        commitment_weight (`float`, defaults to 0.25): Weight of the commitment loss.
        restart_threshold (`float`, defaults to 1.0): EMA cluster size below which a code counts as unused.
        kmeans_init (`bool`, defaults to `False`):
            Initialise each codebook by k-means on its residuals of the first training batch.
        kmeans_iters (`int`, defaults to 10): Lloyd iterations of the k-means initialisation.
        eps (`float`, defaults to 1e-5): Laplace smoothing of the cluster sizes.
        chunk_size (`int`, *optional*): Rows per block of the distance computation; by default chosen so
            that a `(rows, min(codebook_size, 4096))` fp32 block takes about 16 MB. Memory stays bounded.

    The distances `||r||^2 - 2 r.E^T + ||E||^2` are computed in fp32 (also under autocast) with one `addmm`
    per block. The row term `||r||^2` is constant along the codes, so it is left out: neither the argmin nor
    the softmax of [`soft_codes`] depends on it.
    """

    def __init__(
        self,
        codebook_size: int,
        code_depth: int,
        dim: int,
        shared_codebook: bool = True,
        ema_decay: float = 0.99,
        restart_unused_codes: bool = True,
        commitment_weight: float = 0.25,
        restart_threshold: float = 1.0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        eps: float = 1e-5,
        chunk_size: Optional[int] = None,
    ):
        super().__init__()
        for name, value in (("codebook_size", codebook_size), ("code_depth", code_depth), ("dim", dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {ema_decay!r}.")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive int or None, got {chunk_size!r}.")
        self.codebook_size = codebook_size
        self.code_depth = code_depth
        self.dim = dim
        self.shared_codebook = shared_codebook
        self.ema_decay = ema_decay
        self.restart_unused_codes = restart_unused_codes
        self.commitment_weight = commitment_weight
        self.restart_threshold = restart_threshold
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.eps = eps
        self.chunk_size = chunk_size

        num_books = 1 if shared_codebook else code_depth
        embed = torch.randn(num_books, codebook_size, dim)
        # `embed` is the codebook; `embed_ema` / `cluster_size_ema` are the moving averages of the sums /
        # counts of the vectors assigned to each code.
        self.register_buffer("embed", embed)
        self.register_buffer("embed_ema", embed.clone())
        self.register_buffer("cluster_size_ema", torch.zeros(num_books, codebook_size))
        self.register_buffer("initialized", torch.full((num_books,), not kmeans_init, dtype=torch.bool))

    def _apply(self, fn, recurse=True):
        """Move the codebook state with the module, but keep its float tensors in float32.

        `model.to(torch.bfloat16)` / `.half()` therefore leave the codebook exact (as `_keep_in_fp32_modules`
        does at load time); devices still change.
        """

        def keep_float32(tensor):
            out = fn(tensor)
            if tensor.is_floating_point() and out.dtype != tensor.dtype:
                return tensor.to(device=out.device)
            return out

        return super()._apply(keep_float32, recurse)

    # ------------------------------------------------------------------ helpers
    def _book(self, depth: int) -> int:
        return 0 if self.shared_codebook else depth

    def codebook(self, d: int) -> torch.Tensor:
        """Return depth `d`'s codebook `(codebook_size, dim)`; 0-based d; one tensor if shared."""
        if not 0 <= d < self.code_depth:
            raise ValueError(f"`d` must be in [0, {self.code_depth}), got {d}.")
        return self.embed[self._book(d)]

    # Codes per distance block: a (rows, 4096) block keeps the matrix product as fast as one whole
    # (N, dim) @ (dim, K) product on CPU, where (rows, K) blocks of few rows lose 10-15%.
    _codes_per_block = 4096

    def _rows_per_chunk(self, codes_per_block: int) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return max(1, (1 << 22) // codes_per_block)  # 4M fp32 values = 16 MB per distance block

    def _check_input(self, z: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"`z` must be a torch.Tensor, got {type(z).__name__}.")
        if not z.is_floating_point():
            raise TypeError(f"`z` must be a floating point tensor, got dtype {z.dtype}.")
        if z.ndim < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"`z` must have last dimension dim={self.dim}, got shape {tuple(z.shape)}.")

    def _nearest(self, r: torch.Tensor, codebook: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write argmin_k ||r_i - e_k||^2 for every row of `r` (N, dim) into `out` (N,), block by block.

        The distances are computed in (rows, codes) blocks, codes in blocks of `_codes_per_block`; the nearest
        code of a block then replaces the best so far where it is strictly nearer, so ties go to the first
        code, as `argmin`.
        """
        num_codes = codebook.shape[0]
        sq_norms = codebook.pow(2).sum(1)  # (K,), once per depth and call
        width = min(num_codes, self._codes_per_block)
        rows = min(self._rows_per_chunk(width), r.shape[0])
        storage = r.new_empty(rows * width)  # reused by every block: no allocation (page faults) per block
        best_value, value = r.new_empty(rows), r.new_empty(rows)
        index = torch.empty(rows, dtype=torch.long, device=r.device)
        row_index = torch.arange(rows, device=r.device)
        for start in range(0, r.shape[0], rows):
            stop = min(start + rows, r.shape[0])
            count = stop - start
            for first in range(0, num_codes, width):
                last = min(first + width, num_codes)
                block = storage[: count * (last - first)].view(count, last - first)
                torch.addmm(sq_norms[first:last], r[start:stop], codebook[first:last].t(), alpha=-2.0, out=block)
                if first == 0:
                    self._block_argmin(block, best_value[:count], out[start:stop], row_index)
                    continue
                self._block_argmin(block, value[:count], index[:count], row_index)
                nearer = value[:count] < best_value[:count]
                torch.where(nearer, value[:count], best_value[:count], out=best_value[:count])
                torch.where(nearer, index[:count] + first, out[start:stop], out=out[start:stop])
        return out

    @staticmethod
    def _block_argmin(block: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, row_index: torch.Tensor):
        """Minimum and first argmin of each row of `block` (rows, codes) into `values` and `indices`.

        Two levels: the minimum of each group of `group` consecutive codes (a fast vectorised pass), then the
        argmin inside the first winning group only; same result as `argmin`, about 3x faster than a
        `min(dim=1)` over the whole row on CPU.
        """
        rows, num_codes = block.shape
        group = next((g for g in (256, 128, 64) if num_codes % g == 0 and num_codes >= 4 * g), None)
        if group is None:
            torch.min(block, dim=1, out=(values, indices))
            return
        grouped = block.view(rows, num_codes // group, group)
        best_group = torch.amin(grouped, dim=2).argmin(dim=1)
        candidates = grouped[row_index[:rows], best_group]  # (rows, group)
        in_group = candidates.argmin(dim=1)
        torch.gather(candidates, 1, in_group[:, None], out=values[:, None])
        torch.add(in_group, best_group, alpha=group, out=indices)

    # ------------------------------------------------------------------ EMA / restart / k-means
    @torch.no_grad()
    def _ema_update(self, book: int, r: torch.Tensor, codes: torch.Tensor) -> None:
        """Move codebook `book` towards the mean of the residuals `r` (N, dim) assigned to each code.

        Rows of `r` that hold NaN/inf are left out (said once per quantizer); statistics that are still not
        finite (e.g. an overflow) skip the update. The codebook never takes a non-finite value.
        """
        num_codes = self.codebook_size
        finite = torch.isfinite(r).all(dim=1)
        # [sum of assigned vectors | count] per code, plus one row counting the non-finite inputs: one all-reduce
        stats = r.new_zeros(num_codes + 1, self.dim + 1)
        stats[:num_codes, : self.dim].index_add_(0, codes, torch.where(finite[:, None], r, 0.0))
        stats[:num_codes, self.dim].index_add_(0, codes, finite.to(r.dtype))
        stats[num_codes, 0] = (~finite).sum()
        stats[num_codes, 1] = (~finite).all()  # a process without any finite row cannot offer restart vectors
        if _distributed():
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        stats, num_bad, num_empty = stats[:num_codes], stats[num_codes, 0], stats[num_codes, 1]
        # one host sync; the same decisions on every process (the statistics are all-reduced)
        num_bad, num_empty, num_nonfinite_stats = torch.stack(
            [num_bad, num_empty, (~torch.isfinite(stats)).sum().to(r.dtype)]
        ).tolist()
        if num_bad or num_nonfinite_stats:
            self._warn_non_finite(int(num_bad))
            if num_nonfinite_stats:
                return
        decay = self.ema_decay
        cluster_size = self.cluster_size_ema[book]
        embed_ema = self.embed_ema[book]
        cluster_size.mul_(decay).add_(stats[:, self.dim], alpha=1 - decay)
        embed_ema.mul_(decay).add_(stats[:, : self.dim], alpha=1 - decay)

        if self.restart_unused_codes and not num_empty:
            unused = (cluster_size < self.restart_threshold).nonzero().squeeze(1)
            if unused.numel() > 0:  # same decision on every process: the statistics are all-reduced
                new_vectors = self._random_rows(r[finite] if num_bad else r, unused.numel())
                embed_ema.index_copy_(0, unused, new_vectors)
                cluster_size.index_fill_(0, unused, 1.0)

        total = cluster_size.sum()
        smoothed = (cluster_size + self.eps) / (total + num_codes * self.eps) * total  # Laplace smoothing
        torch.div(embed_ema, smoothed.unsqueeze(1), out=self.embed[book])

    def _warn_non_finite(self, num_rows: int) -> None:
        if not getattr(self, "_warned_non_finite", False):
            self._warned_non_finite = True
            logger.warning(
                "ResidualQuantizer: %d input vector(s) with non-finite values (NaN/inf) were left out of the EMA "
                "codebook update (said once); the codebook stays finite. Check the inputs and the learning rate.",
                num_rows,
            )

    def _random_rows(self, r: torch.Tensor, count: int) -> torch.Tensor:
        """Pick `count` random rows of `r` (noised when rows repeat): chosen on process 0, then broadcast."""
        n = r.shape[0]
        if count <= n:
            picked = r[torch.randperm(n, device=r.device)[:count]]
        else:
            picked = r[torch.randint(n, (count,), device=r.device)]
            picked = picked + torch.randn_like(picked) * (0.01 / self.dim**0.5)
        if _distributed():
            picked = picked.contiguous()
            dist.broadcast(picked, src=0)
        return picked

    @torch.no_grad()
    def _kmeans_init(self, book: int, r: torch.Tensor) -> None:
        """Initialise codebook `book` by k-means on `r` (N, dim), computed on process 0 and broadcast."""
        finite = torch.isfinite(r).all(dim=1)
        if not finite.all():
            self._warn_non_finite(int((~finite).sum()))
            r = r[finite]
        empty = r.new_tensor([float(r.shape[0] == 0)])
        if _distributed():
            dist.all_reduce(empty)
        if empty.item() > 0:  # no finite vector (on some process): initialise with a later batch
            return
        centroids = self._random_rows(r, self.codebook_size)  # broadcast: same start everywhere
        codes = torch.empty(r.shape[0], dtype=torch.long, device=r.device)
        counts = r.new_zeros(self.codebook_size)
        for _ in range(self.kmeans_iters):
            self._nearest(r, centroids, codes)
            sums = r.new_zeros(self.codebook_size, self.dim).index_add_(0, codes, r)
            counts = torch.bincount(codes, minlength=self.codebook_size).to(r.dtype)
            if _distributed():
                dist.all_reduce(sums)
                dist.all_reduce(counts)
            filled = counts > 0
            centroids[filled] = sums[filled] / counts[filled].unsqueeze(1)
        cluster_size = counts.clamp(min=max(self.restart_threshold, 1.0))
        self.embed[book].copy_(centroids)
        self.embed_ema[book].copy_(centroids * cluster_size.unsqueeze(1))
        self.cluster_size_ema[book].copy_(cluster_size)
        self.initialized[book] = True

    # ------------------------------------------------------------------ public API
    def forward(self, z: torch.Tensor, update_codebook: Optional[bool] = None) -> ResidualQuantizerOutput:
        """Quantize `z` (..., dim) with `code_depth` residual steps.

        Args:
            z (`torch.Tensor` of shape `(..., dim)`): Channels-last vectors to quantize.
            update_codebook (`bool`, *optional*): Update the EMA codebooks (and restart unused codes).
                Defaults to `self.training`; `False` quantizes without touching them.

        Returns:
            [`ResidualQuantizerOutput`].
        """
        self._check_input(z)
        update = self.training if update_codebook is None else update_codebook
        lead_shape = z.shape[:-1]
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_flat = z.reshape(-1, self.dim).float()
            n = z_flat.shape[0]
            residual = z_flat.detach().clone()
            quantized = torch.zeros_like(residual)
            codes = torch.empty(self.code_depth, n, dtype=torch.long, device=z.device)
            losses, usage, perplexity = [], [], []
            for d in range(self.code_depth):
                book = self._book(d)
                if update and not bool(self.initialized[book]):
                    self._kmeans_init(book, residual)
                codebook = self.embed[book].float()
                self._nearest(residual, codebook, codes[d])
                chosen = codebook.index_select(0, codes[d])  # gathered before the EMA update, as the paper
                if update:
                    self._ema_update(book, residual, codes[d])
                residual.sub_(chosen)
                quantized = quantized + chosen  # new tensor: the loss below keeps it for backward
                losses.append(F.mse_loss(z_flat, quantized))  # quantized holds no graph: sg(z_hat^(d))
                counts = torch.bincount(codes[d], minlength=self.codebook_size).float()
                usage.append((counts > 0).float().mean())
                probs = counts / max(n, 1)
                perplexity.append(torch.exp(-(probs * torch.log(probs + 1e-10)).sum()))

            commitment_loss = self.commitment_weight * torch.stack(losses).mean()
            out = z_flat + (quantized - z_flat).detach()  # straight-through estimator
        return ResidualQuantizerOutput(
            quantized=out.to(z.dtype).reshape(z.shape),
            codes=codes.t().reshape(*lead_shape, self.code_depth),
            commitment_loss=commitment_loss,
            codebook_usage=torch.stack(usage),
            perplexity=torch.stack(perplexity),
        )

    def _check_codes(self, codes: torch.Tensor, name: str = "codes") -> None:
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(codes).__name__}.")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise TypeError(f"`{name}` must be an integer tensor (torch.long), got dtype {codes.dtype}.")
        if codes.ndim < 1 or not 1 <= codes.shape[-1] <= self.code_depth:
            raise ValueError(
                f"`{name}` must have 1 to code_depth={self.code_depth} depths in its last dimension, "
                f"got shape {tuple(codes.shape)}."
            )
        if codes.numel() > 0:
            low, high = int(codes.min()), int(codes.max())
            if low < 0 or high >= self.codebook_size:
                raise ValueError(
                    f"`{name}` must lie in [0, codebook_size={self.codebook_size}), "
                    f"got values in [{low}, {high}]."
                )

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum over the d <= code_depth depths of `codes` (..., d) of the code vectors, as (..., dim) fp32.

        Fewer depths than `code_depth` give the coarser reconstructions `z_hat^(d)`.
        """
        self._check_codes(codes)
        return self._sum_code_vectors(codes.long())

    def _sum_code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """`embed_codes` without the checks, which read the values (traced graphs: see `rq_hf.export_onnx`)."""
        if self.shared_codebook:
            return F.embedding(codes, self.embed[0].float()).sum(-2)
        out = None
        for d in range(codes.shape[-1]):
            vectors = F.embedding(codes[..., d], self.embed[d].float())
            out = vectors if out is None else out + vectors
        return out

    @torch.no_grad()
    def soft_codes(
        self,
        z: torch.Tensor,
        temperature: float,
        stochastic: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> SoftCodesOutput:
        """Per depth, the code distribution `softmax(-||r - e_k||^2 / temperature)` of the residual `r`.

        When `stochastic`, the code of each depth is sampled from that distribution (with `generator`) and
        forms the next residual, else the nearest code does (the paper's soft labels and stochastic sampling
        for stage 2).
        The codebooks are never updated here.

        Args:
            z (`torch.Tensor` of shape `(..., dim)`): Vectors to quantize.
            temperature (`float`): Positive softmax temperature.
            stochastic (`bool`, defaults to `True`): Sample codes instead of taking the nearest one.
            generator (`torch.Generator`, *optional*): Randomness of the sampling.

        Returns:
            [`SoftCodesOutput`] with `probs` (..., code_depth, codebook_size) and `codes` (..., code_depth).
        """
        self._check_input(z)
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"`temperature` must be a positive number, got {temperature!r}.")
        lead_shape = z.shape[:-1]
        with torch.autocast(device_type=z.device.type, enabled=False):
            residual = z.reshape(-1, self.dim).float().clone()
            n = residual.shape[0]
            probs = residual.new_empty(n, self.code_depth, self.codebook_size)
            codes = torch.empty(n, self.code_depth, dtype=torch.long, device=z.device)
            for d in range(self.code_depth):
                codebook = self.embed[self._book(d)].float()
                logits = torch.addmm(codebook.pow(2).sum(1), residual, codebook.t(), alpha=-2.0)
                logits.div_(-temperature)
                probs[:, d] = torch.softmax(logits, dim=-1)
                if stochastic:
                    codes[:, d] = torch.multinomial(probs[:, d], 1, generator=generator).squeeze(1)
                else:
                    codes[:, d] = logits.argmax(dim=-1)
                residual.sub_(codebook.index_select(0, codes[:, d]))
        return SoftCodesOutput(
            probs=probs.reshape(*lead_shape, self.code_depth, self.codebook_size),
            codes=codes.reshape(*lead_shape, self.code_depth),
        )

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, code_depth={self.code_depth}, dim={self.dim}, "
            f"shared_codebook={self.shared_codebook}, ema_decay={self.ema_decay}"
        )
