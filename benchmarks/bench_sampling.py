"""Sampling speed of the RQ-Transformer against a flat autoregressive model (issue 3 benchmark).

Models (random weights; speed does not depend on the values):

* RQ: class-conditional, shaped like the paper's: K 16384, codes 8x8x4, hidden 512, 12 spatial + 2 depth
  layers, 8 heads.
* flat: the paper's VQ baseline of the same width and per-token depth: 16x16 single codes, 13 + 1 layers.
  It is the same model class with `code_shape=(16, 16, 1)`: with D = 1 the depth transformer sees one token
  per position (its input is h_t + a constant depth embedding), so its single layer acts as a 14th,
  position-wise block on top of a 13-layer causal GPT; the sampling loop then makes one spatial and one
  depth step per code.

Each row is the best of `--repeats` timed runs of `generate_codes` (batch 8, top_k 1024) in this process.

    python benchmarks/bench_sampling.py            # paper shapes (CPU: minutes)
    python benchmarks/bench_sampling.py --quick    # small shapes, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch

from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling


def build(code_shape, vocab_size, hidden, spatial_layers, depth_layers, heads, device):
    config = RQTransformerConfig(
        vocab_size=vocab_size,
        code_shape=list(code_shape),
        hidden_size=hidden,
        num_spatial_layers=spatial_layers,
        num_depth_layers=depth_layers,
        num_attention_heads=heads,
        num_classes=1000,
        code_embedding_dim=256,
    )
    torch.manual_seed(0)
    return RQTransformerForCausalImageModeling(config).to(device).eval()


def best_time(model, args, use_cache=True, bf16=False) -> float:
    device_type = torch.device(args.device).type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else nullcontext()
    labels = torch.arange(args.batch_size) % 1000
    times = []
    for repeat in range(args.repeats):
        generator = torch.Generator(args.device).manual_seed(repeat)
        if device_type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            model.generate_codes(
                class_labels=labels, top_k=args.top_k, generator=generator, use_cache=use_cache
            )
        if device_type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes (K 1024, hidden 128, 4+1 layers)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-uncached", action="store_true", help="skip the (slow) RQ row without the cache")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast rows")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="add rows with torch.compile'd transformer blocks (slow to compile on CPU)",
    )
    parser.add_argument(
        "--threads", type=int, default=1,
        help="CPU threads (1: batch-8 steps are too small to gain from more; shared CPUs make them spin)",
    )
    parser.add_argument("--markdown-out", "--markdown_out", default=None, help="also write the table here")
    parser.add_argument("--json-out", "--json_out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.quick:
        vocab, hidden, heads, rq_layers, flat_layers = 1024, 128, 4, (4, 1), (4, 1)
        args.top_k = min(args.top_k, 128)
    else:
        vocab, hidden, heads, rq_layers, flat_layers = 16384, 512, 8, (12, 2), (13, 1)
    rq = build((8, 8, 4), vocab, hidden, *rq_layers, heads, args.device)
    flat = build((16, 16, 1), vocab, hidden, *flat_layers, heads, args.device)

    rows = [("RQ 8x8x4, cache", rq, dict())]
    if not args.no_uncached:
        rows.append(("RQ 8x8x4, no cache", rq, dict(use_cache=False)))
    rows.append(("flat 16x16x1, cache", flat, dict()))
    if not args.no_bf16:
        rows += [
            ("RQ 8x8x4, cache, bf16 autocast", rq, dict(bf16=True)),
            ("flat 16x16x1, cache, bf16 autocast", flat, dict(bf16=True)),
        ]
    if not args.no_bf16:
        rq16 = build((8, 8, 4), vocab, hidden, *rq_layers, heads, args.device).to(torch.bfloat16)
        flat16 = build((16, 16, 1), vocab, hidden, *flat_layers, heads, args.device).to(torch.bfloat16)
        rows += [("RQ 8x8x4, cache, bf16 weights", rq16, dict()),
                 ("flat 16x16x1, cache, bf16 weights", flat16, dict())]
    if args.compile:
        for model in (rq, flat):
            for stack in (model.spatial_transformer, model.depth_transformer):
                for layer in stack.layers:
                    layer.compile(dynamic=True)
        rows += [
            ("RQ 8x8x4, cache, compiled blocks", rq, dict()),
            ("flat 16x16x1, cache, compiled blocks", flat, dict()),
        ]

    header = (
        f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"batch {args.batch_size}, top_k {args.top_k}, best of {args.repeats}, K {vocab}, hidden {hidden}"
    )
    print(header)
    results = {}
    for name, model, kwargs in rows:
        results[name] = best_time(model, args, **kwargs)
        print(f"  {name}: {results[name]:.3f} s", flush=True)

    lines = [
        f"| {'model':38} | {'params':>7} | {'s / batch':>9} | {'images/s':>8} | {'speed-up vs flat':>16} |",
        f"|{'-' * 40}|{'-' * 9}|{'-' * 11}|{'-' * 10}|{'-' * 18}|",
    ]
    table = []
    for name, model, kwargs in rows:
        seconds = results[name]
        # Compare with the flat model in the same setting (the cached fp32 flat model for the uncached row).
        flat_name = "flat 16x16x1, cache" + ("" if "no cache" in name else name.split(", cache")[-1])
        speedup = results[flat_name] / seconds if name.startswith("RQ") and flat_name in results else None
        ratio = f"{speedup:.2f}x" if speedup is not None else ""
        params = sum(p.numel() for p in model.parameters()) / 1e6
        lines.append(
            f"| {name:38} | {params:6.1f}M | {seconds:9.3f} | "
            f"{args.batch_size / seconds:8.2f} | {ratio:>16} |"
        )
        table.append(dict(model=name, parameters_millions=params, seconds_per_batch=seconds,
                          images_per_second=args.batch_size / seconds, speedup_vs_flat=speedup))
    print()
    print("\n".join(lines))
    if args.markdown_out:
        with open(args.markdown_out, "w") as handle:
            handle.write("\n".join([header, ""] + lines) + "\n")
    if args.json_out:
        settings = {key: value for key, value in vars(args).items() if key not in ("markdown_out", "json_out")}
        settings.update(torch=torch.__version__, threads=torch.get_num_threads(), vocab_size=vocab, hidden=hidden)
        with open(args.json_out, "w") as handle:
            json.dump({"benchmark": "sampling", "header": header, "settings": settings, "rows": table}, handle,
                      indent=2)


if __name__ == "__main__":
    main()
