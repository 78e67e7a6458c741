"""Throughput of `ResidualQuantizer` beside vector-quantize-pytorch's `ResidualVQ` and the matmul ceiling.

Prints a markdown table of vectors/s (median of `--repeats` timed runs after `--warmup` runs):

- `ResidualQuantizer` in eval mode (no grad) and in training mode (EMA update, restarts, forward + backward);
- `vector_quantize_pytorch.ResidualVQ` with the same settings (shared codebook, EMA decay, dead-code
  threshold, commitment weight; no rotation trick, no k-means, no dropout) in the same modes;
- the ceiling: `depth` bare `(N x dim) @ (dim x K)` matrix products, the distance products alone.

The eval codes are then checked against an exact search (float64 distances, argmin) of the same input.

    python benchmarks/bench_quantizer.py                  # K=16384, dim 256, D=4, 4096 vectors
    python benchmarks/bench_quantizer.py --num-vectors 1024 --codebook-size 1024 --repeats 3
"""

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List

import torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--codebook-size", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--num-vectors", type=int, default=4096, help="64 images of 8x8 by default")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per distance block")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run vector-quantize-pytorch")
    parser.add_argument("--skip-check", action="store_true", help="do not compare the codes with a float64 search")
    parser.add_argument("--markdown-out", "--markdown_out", default=None, help="also write the table here")
    parser.add_argument("--json-out", "--json_out", default=None, help="write the results as JSON here")
    return parser.parse_args()


def median_seconds(fn: Callable[[], None], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of `fn` over `repeats` runs after `warmup` untimed runs."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def exact_codes(quantizer, z: torch.Tensor) -> torch.Tensor:
    """Residual codes by an exact nearest-code search in float64 (argmin of the full distance matrix)."""
    residual, codes = z.double(), []
    for d in range(quantizer.code_depth):
        book = quantizer.codebook(d).double()
        distances = residual.pow(2).sum(1, keepdim=True) - 2 * residual @ book.t() + book.pow(2).sum(1)
        codes.append(distances.argmin(1))
        residual = residual - book[codes[-1]]
    return torch.stack(codes, 1)


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from rq_hf import ResidualQuantizer

    device = torch.device(args.device)
    n, dim, k, depth = args.num_vectors, args.dim, args.codebook_size, args.depth
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(n, dim, generator=generator).to(device)
    torch.manual_seed(0)

    ours = ResidualQuantizer(k, depth, dim, ema_decay=0.99, chunk_size=args.chunk_size).to(device)
    seconds: Dict[str, float] = {}

    # ceiling: the distance products alone, into a preallocated output
    codebook = torch.randn(k, dim, generator=generator).to(device)
    products = torch.empty(n, k, device=device)

    def ceiling():
        for _ in range(depth):
            torch.mm(z, codebook.t(), out=products)

    seconds["ceiling"] = median_seconds(ceiling, args.repeats, args.warmup, device)

    def ours_eval():
        with torch.no_grad():
            ours.eval()(z)

    z_grad = z.clone().requires_grad_(True)

    def ours_train():
        out = ours.train()(z_grad)
        (out.quantized.sum() + out.commitment_loss).backward()

    seconds["ours eval"] = median_seconds(ours_eval, args.repeats, args.warmup, device)
    seconds["ours train"] = median_seconds(ours_train, args.repeats, args.warmup, device)

    if not args.skip_baseline:
        from vector_quantize_pytorch import ResidualVQ

        theirs = ResidualVQ(
            dim=dim,
            num_quantizers=depth,
            codebook_size=k,
            shared_codebook=True,
            decay=0.99,
            commitment_weight=0.25,
            threshold_ema_dead_code=1,
            kmeans_init=False,
            rotation_trick=False,
        ).to(device)
        z3 = z[None]  # (batch, sequence, dim)
        z3_grad = z3.clone().requires_grad_(True)

        def theirs_eval():
            with torch.no_grad():
                theirs.eval()(z3)

        def theirs_train():
            quantized, _, losses = theirs.train()(z3_grad)
            (quantized.sum() + losses.sum()).backward()

        seconds["ResidualVQ eval"] = median_seconds(theirs_eval, args.repeats, args.warmup, device)
        seconds["ResidualVQ train"] = median_seconds(theirs_train, args.repeats, args.warmup, device)

    mismatches = None
    if not args.skip_check:
        with torch.no_grad():
            mismatches = int((ours.eval()(z).codes != exact_codes(ours, z)).sum())

    rate = {name: n / s for name, s in seconds.items()}
    header = (
        f"ResidualQuantizer benchmark: {n} vectors, dim {dim}, codebook_size {k}, depth {depth}, "
        f"device {device}, threads {torch.get_num_threads()}, "
        f"median of {args.repeats} runs after {args.warmup} warm-up"
    )
    lines = [
        header,
        "",
        "| mode | ResidualQuantizer (vec/s) | ResidualVQ (vec/s) | ours / ResidualVQ | ours / ceiling |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode in ("eval", "train"):
        ours_rate = rate[f"ours {mode}"]
        theirs_rate = rate.get(f"ResidualVQ {mode}")
        theirs_text = f"{theirs_rate:,.0f}" if theirs_rate else "-"
        ratio_text = f"{ours_rate / theirs_rate:.2f}x" if theirs_rate else "-"
        of_ceiling = ours_rate / rate["ceiling"]
        lines.append(f"| {mode} | {ours_rate:,.0f} | {theirs_text} | {ratio_text} | {of_ceiling:.0%} |")
    lines.append(f"| ceiling ({depth} bare {n}x{dim} @ {dim}x{k} products) | {rate['ceiling']:,.0f} | | | 100% |")
    if mismatches is not None:
        verdict = "identical" if mismatches == 0 else f"{mismatches} of {n * depth} differ"
        lines += ["", f"Eval codes against an exact search (float64 distances, argmin): {verdict}."]
    print("\n".join(lines))
    if args.markdown_out:
        with open(args.markdown_out, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    if args.json_out:
        settings = {key: value for key, value in vars(args).items() if key not in ("markdown_out", "json_out")}
        settings.update(threads=torch.get_num_threads(), device=str(device))
        result = {"benchmark": "quantizer", "header": header, "settings": settings, "vectors_per_second": rate,
                  "codes_differing_from_exact_search": mismatches}
        with open(args.json_out, "w") as handle:
            json.dump(result, handle, indent=2)

if __name__ == "__main__":
    main()
