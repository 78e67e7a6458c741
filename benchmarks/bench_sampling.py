"""Sampling speed of the RQ-Transformer against a flat autoregressive model, and where the time goes.

Models (random weights; speed does not depend on the values):

* RQ: class-conditional, shaped like the paper's: K 16384, codes 8x8x4, hidden 512, 12 spatial + 2 depth
  layers, 8 heads (`--size bench`, the default), or an official size built from its config (`--size 1.4B`...).
* flat: the paper's VQ baseline of the same width and per-token depth: 16x16 single codes, 13 + 1 layers
  (spatial + depth - 1, then 1). It is the same model class with `code_shape=(16, 16, 1)`: with D = 1 the
  depth transformer sees one token per position (its input is h_t + a constant depth embedding), so its
  single layer acts as one more position-wise block on top of a causal GPT; the sampling loop then makes one
  spatial and one depth step per code.

Each row is the best of `--repeats` timed runs of `generate_codes` (batch 8, top_k 1024) in this process.
`--compile` adds rows with `generate_codes(compile=True)` (static key/value caches and `torch.compile`d steps,
CUDA graphs on a GPU), timed after one untimed compiling call. A second table splits one eager fp32 run of
each model into its components (forward hooks): the spatial transformer, the depth transformer, the output
head (LayerNorm + Linear to K logits), the input embeddings, and the rest (top-k, softmax, the multinomial
draw, Python).

    python benchmarks/bench_sampling.py            # paper shapes (CPU: minutes)
    python benchmarks/bench_sampling.py --quick    # small shapes, seconds
    python benchmarks/bench_sampling.py --compile --no-uncached --no-bf16          # the compile gain
    # GPU, the paper's Figure 4 setting (1.4B, 8x8x4, batch 100; the paper: 0.039 s/image on an A100):
    python benchmarks/bench_sampling.py --device cuda --size 1.4B --dtype bfloat16 --batch-size 100 \\
        --no-uncached --no-bf16 --compile --repeats 2
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from typing import Dict, List

import torch

from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling
from rq_hf.conversion.official_configs import OFFICIAL_IMAGENET_STAGE2, official_rq_transformer_config

OFFICIAL = {name.split("_")[1]: name for name in OFFICIAL_IMAGENET_STAGE2}  # "1.4B" -> "imagenet_1.4B"
COMPONENTS = ("spatial transformer", "depth transformer", "output head", "input embeddings")


def build(code_shape, vocab_size, hidden, spatial_layers, depth_layers, heads, device, dtype=torch.float32):
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
    with torch.device(device):  # initialised where it runs: no CPU copy of a large model
        model = RQTransformerForCausalImageModeling(config)
    return model.to(dtype).eval()


def shapes(args) -> tuple:
    """(vocab, hidden, heads, (spatial, depth) layers of RQ, of flat)."""
    if args.quick:
        return 1024, 128, 4, (4, 1), (4, 1)
    if args.size == "bench":
        return 16384, 512, 8, (12, 2), (13, 1)
    config = official_rq_transformer_config(OFFICIAL[args.size])
    layers = (config.num_spatial_layers, config.num_depth_layers)
    return (config.vocab_size, config.hidden_size, config.num_attention_heads, layers,
            (sum(layers) - 1, 1))


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def generate(model, args, seed: int, **kwargs):
    labels = torch.arange(args.batch_size) % 1000
    return model.generate_codes(class_labels=labels, top_k=args.top_k,
                                generator=torch.Generator(args.device).manual_seed(seed), **kwargs)


def best_time(model, args, use_cache=True, bf16=False, compile=False) -> float:
    device_type = torch.device(args.device).type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else nullcontext()
    times = []
    for repeat in range(args.repeats):
        sync(args.device)
        start = time.perf_counter()
        with autocast:
            generate(model, args, repeat, use_cache=use_cache, compile=compile)
        sync(args.device)
        times.append(time.perf_counter() - start)
    return min(times)


def component_seconds(model, args) -> Dict[str, float]:
    """Seconds of one eager generate_codes call spent in each component (forward hooks), and the rest."""
    parts = {
        "spatial transformer": [model.spatial_transformer],
        "depth transformer": [model.depth_transformer],
        "output head": [model.output_norm, model.output_proj],
        "input embeddings": [model.code_embeddings, model.spatial_input_proj, model.depth_input_proj,
                             model.condition_embedding],
    }
    seconds = dict.fromkeys(parts, 0.0)
    started: Dict[int, float] = {}
    handles = []
    for name, modules in parts.items():
        for module in modules:
            def enter(module, args_, name=name):
                sync(args.device)
                started[id(module)] = time.perf_counter()

            def leave(module, args_, output, name=name):
                sync(args.device)
                seconds[name] += time.perf_counter() - started[id(module)]

            handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        sync(args.device)
        start = time.perf_counter()
        generate(model, args, 0)
        sync(args.device)
        total = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    seconds["rest (top-k, softmax, draw, Python)"] = total - sum(seconds.values())
    seconds["total"] = total
    return seconds


def steps(model) -> Dict[str, int]:
    """Calls per image of each weight-reading part: layer passes of both stacks and head passes."""
    h, w, depth = model.config.code_shape
    return {"spatial layer passes": h * w * model.config.num_spatial_layers,
            "depth layer passes": h * w * depth * model.config.num_depth_layers,
            "head passes": h * w * depth}


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes (K 1024, hidden 128, 4+1 layers)")
    parser.add_argument("--size", default="bench", choices=["bench"] + list(OFFICIAL),
                        help="bench: the paper-shaped 57M model; else an official size (its config)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="weights of the base rows (the bf16 rows stay as they are)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-uncached", action="store_true", help="skip the (slow) RQ row without the cache")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast and bf16 weight rows")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-component table")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="add rows with generate_codes(compile=True): static caches + torch.compile (CUDA graphs on a GPU)",
    )
    parser.add_argument(
        "--threads", type=int, default=1,
        help="CPU threads (1: batch-8 steps are too small to gain from more; shared CPUs make them spin)",
    )
    parser.add_argument("--markdown-out", "--markdown_out", default=None, help="also write the table here")
    parser.add_argument("--json-out", "--json_out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.top_k = min(args.top_k, 128)
    vocab, hidden, heads, rq_layers, flat_layers = shapes(args)
    dtype = getattr(torch, args.dtype)
    rq = build((8, 8, 4), vocab, hidden, *rq_layers, heads, args.device, dtype)
    flat = build((16, 16, 1), vocab, hidden, *flat_layers, heads, args.device, dtype)
    base = "" if args.dtype == "float32" else f", {args.dtype}"

    rows = [(f"RQ 8x8x4, cache{base}", rq, dict())]
    if not args.no_uncached:
        rows.append((f"RQ 8x8x4, no cache{base}", rq, dict(use_cache=False)))
    rows.append((f"flat 16x16x1, cache{base}", flat, dict()))
    if not args.no_bf16:
        rows += [
            ("RQ 8x8x4, cache, bf16 autocast", rq, dict(bf16=True)),
            ("flat 16x16x1, cache, bf16 autocast", flat, dict(bf16=True)),
        ]
        rq16 = build((8, 8, 4), vocab, hidden, *rq_layers, heads, args.device, torch.bfloat16)
        flat16 = build((16, 16, 1), vocab, hidden, *flat_layers, heads, args.device, torch.bfloat16)
        rows += [("RQ 8x8x4, cache, bf16 weights", rq16, dict()),
                 ("flat 16x16x1, cache, bf16 weights", flat16, dict())]
    compile_seconds: Dict[str, float] = {}
    if args.compile:
        rows += [(f"RQ 8x8x4, cache{base}, compiled", rq, dict(compile=True)),
                 (f"flat 16x16x1, cache{base}, compiled", flat, dict(compile=True))]

    header = (
        f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"batch {args.batch_size}, top_k {args.top_k}, best of {args.repeats}, K {vocab}, hidden {hidden}"
    )
    print(header)
    results = {}
    for name, model, kwargs in rows:
        if kwargs.get("compile"):  # the first call compiles: timed on its own, not in the row
            sync(args.device)
            start = time.perf_counter()
            generate(model, args, 0, compile=True)
            sync(args.device)
            compile_seconds[name] = time.perf_counter() - start
            print(f"  {name}: first call (compiles) {compile_seconds[name]:.1f} s", flush=True)
        results[name] = best_time(model, args, **kwargs)
        print(f"  {name}: {results[name]:.3f} s", flush=True)

    lines = [
        f"| {'model':38} | {'params':>7} | {'s / batch':>9} | {'images/s':>8} | {'speed-up vs flat':>16} |",
        f"|{'-' * 40}|{'-' * 9}|{'-' * 11}|{'-' * 10}|{'-' * 18}|",
    ]
    table = []
    for name, model, kwargs in rows:
        seconds = results[name]
        # Compare with the flat model in the same setting (the cached flat model for the uncached row).
        flat_name = name.replace("RQ 8x8x4", "flat 16x16x1").replace("no cache", "cache")
        speedup = results[flat_name] / seconds if name.startswith("RQ") and flat_name in results else None
        ratio = f"{speedup:.2f}x" if speedup is not None else ""
        params = sum(p.numel() for p in model.parameters()) / 1e6
        lines.append(
            f"| {name:38} | {params:6.1f}M | {seconds:9.3f} | "
            f"{args.batch_size / seconds:8.2f} | {ratio:>16} |"
        )
        table.append(dict(model=name, parameters_millions=params, seconds_per_batch=seconds,
                          images_per_second=args.batch_size / seconds, speedup_vs_flat=speedup,
                          first_call_seconds=compile_seconds.get(name)))
    if compile_seconds:
        lines += ["", "First (compiling) call: " + ", ".join(
            f"{name} {seconds:.0f} s" for name, seconds in compile_seconds.items()) + "."]

    breakdown = {}
    if not args.no_breakdown:
        breakdown = {"RQ 8x8x4": component_seconds(rq, args), "flat 16x16x1": component_seconds(flat, args)}
        passes = {"RQ 8x8x4": steps(rq), "flat 16x16x1": steps(flat)}
        parts = list(COMPONENTS) + ["rest (top-k, softmax, draw, Python)", "total"]
        lines += ["", "Where the time goes (one eager call each, forward hooks; seconds and share of the call):", "",
                  "| component | " + " | ".join(breakdown) + " | flat / RQ |",
                  "|---|" + "---:|" * (len(breakdown) + 1)]
        for part in parts:
            cells = [f"{b[part]:.3f} ({b[part] / b['total']:.0%})" for b in breakdown.values()]
            rq_part, flat_part = breakdown["RQ 8x8x4"][part], breakdown["flat 16x16x1"][part]
            lines.append(f"| {part} | " + " | ".join(cells) + f" | {flat_part / max(rq_part, 1e-9):.2f}x |")
        for key in steps(rq):
            lines.append(f"| {key} per image | " + " | ".join(str(p[key]) for p in passes.values())
                         + f" | {passes['flat 16x16x1'][key] / passes['RQ 8x8x4'][key]:.2f}x |")
    print()
    print("\n".join(lines))
    if args.markdown_out:
        with open(args.markdown_out, "w") as handle:
            handle.write("\n".join([header, ""] + lines) + "\n")
    if args.json_out:
        settings = {key: value for key, value in vars(args).items() if key not in ("markdown_out", "json_out")}
        settings.update(torch=torch.__version__, threads=torch.get_num_threads(), vocab_size=vocab, hidden=hidden)
        with open(args.json_out, "w") as handle:
            json.dump({"benchmark": "sampling", "header": header, "settings": settings, "rows": table,
                       "breakdown_seconds": breakdown}, handle, indent=2)


if __name__ == "__main__":
    main()
