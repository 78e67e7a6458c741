"""Training memory per GPU of the official ImageNet RQ-Transformers under DDP, FSDP and ZeRO-3 (bf16).

Builds each official size (480M, 821M, 1.4B, 3.8B; configs of kakaobrain/rq-vae-transformer through the
converter, `rq_hf.conversion.official_configs`) on the meta device, runs one training forward there at the
official per-GPU batch with soft targets (as the official training) and the code embeddings frozen, and
turns it into bytes per GPU with `rq_hf.training.memory` (formulas in its docstring). Nothing is allocated:
the whole table takes seconds on a CPU and does not depend on the machine.

    python benchmarks/bench_memory.py                      # 8 GPUs, the official batches
    python benchmarks/bench_memory.py --num-gpus 64 --batch-size 16
    python benchmarks/bench_memory.py --quick              # a tiny model (the plumbing)
    python benchmarks/bench_memory.py --num-gpus 1 --lora-rank 8   # LoRA fine-tuning on one GPU (rq_hf.lora)

With `--lora-rank`, the model gets peft LoRA adapters of that rank on the attention and MLP projections
(`rq_hf.lora.add_lora_adapter`, as `train_rq_transformer.py --use_lora`): only the adapters get gradients and
optimizer state; the frozen base stays in fp32 with bf16 autocast copies, as the script trains it.
"""

from __future__ import annotations

import argparse
import json
from typing import Dict, List

import torch

from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling
from rq_hf.conversion.official_configs import (
    OFFICIAL_IMAGENET_STAGE2,
    official_batch_size,
    official_rq_transformer_config,
)
from rq_hf.training.memory import STRATEGIES, memory_per_device, profile_training_memory

LABELS = {"imagenet_480M": "480M", "imagenet_821M": "821M", "imagenet_1.4B": "1.4B",
          "imagenet_3.8B_rqvae_50e": "3.8B"}
STRATEGY_NAMES = {"ddp": "DDP", "fsdp": "FSDP", "zero3": "ZeRO-3"}


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-gpus", "--num_gpus", type=int, default=8, help="processes sharing the model")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=None,
                        help="per-GPU batch (default: the official one of each size, 32 or 8)")
    parser.add_argument("--hard-labels", action="store_true", help="code targets instead of soft targets")
    parser.add_argument("--quick", action="store_true", help="one tiny model instead of the official sizes")
    parser.add_argument("--lora-rank", "--lora_rank", type=int, default=None,
                        help="train LoRA adapters of this rank only (rq_hf.lora; needs peft)")
    parser.add_argument("--markdown-out", "--markdown_out", default=None, help="also write the table here")
    parser.add_argument("--json-out", "--json_out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def models(quick: bool) -> Dict[str, tuple]:
    """Name -> (config, official per-GPU batch)."""
    if quick:
        config = RQTransformerConfig(vocab_size=64, code_shape=[4, 4, 2], hidden_size=32, num_spatial_layers=2,
                                     num_depth_layers=1, num_attention_heads=4, num_classes=10,
                                     code_embedding_dim=16)
        return {"tiny": (config, 4)}
    return {LABELS[name]: (official_rq_transformer_config(name), official_batch_size(name))
            for name in OFFICIAL_IMAGENET_STAGE2}


def millions(count: int) -> str:
    return f"{count / 1e6:,.0f}M" if count >= 1e7 else f"{count / 1e6:.2f}M"


def profile(config: RQTransformerConfig, batch_size: int, hard_labels: bool, lora_rank: int | None = None):
    with torch.device("meta"):
        model = RQTransformerForCausalImageModeling(config)
        codes = torch.zeros(batch_size, *config.code_shape, dtype=torch.long)
        labels = codes if hard_labels else torch.zeros(*codes.shape, config.vocab_size)
        class_labels = None if config.num_classes is None else torch.zeros(batch_size, dtype=torch.long)
    model.code_embeddings.weight.requires_grad_(False)  # the frozen RQ-VAE codebook, as in the official code
    if lora_rank is not None:
        from rq_hf.lora import add_lora_adapter

        with torch.device("meta"):
            model = add_lora_adapter(model, lora_rank, 2 * lora_rank)  # freezes everything but the adapters
    return profile_training_memory(model, dict(codes=codes, class_labels=class_labels, labels=labels))


def main(argv: List[str] | None = None) -> None:
    args = parse_args(argv)
    unit, scale = ("MiB", 2**20) if args.quick else ("GiB", 2**30)
    rows, lines = [], [
        "| model | params | batch / GPU | strategy | params / GPU | weights | gradients | optimizer state "
        "| activations | total | total, activation checkpointing |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (config, official_batch) in models(args.quick).items():
        batch_size = args.batch_size or official_batch
        result = profile(config, batch_size, args.hard_labels, args.lora_rank)
        for strategy in STRATEGIES if args.num_gpus > 1 else ("ddp",):  # one GPU: no sharding
            memory = memory_per_device(result, strategy, args.num_gpus)
            rows.append(dict(model=name, batch_size=batch_size, num_parameters=result.num_parameters,
                             num_trainable_parameters=result.num_trainable_parameters, **memory.to_dict()))
            sizes = [getattr(memory, key) / scale for key in ("weights", "gradients", "optimizer_state",
                                                            "activations", "total", "total_checkpointed")]
            lines.append(
                f"| {name} | {millions(result.num_parameters)} | {batch_size} | {STRATEGY_NAMES[strategy]} "
                f"| {millions(memory.parameters_per_device)} | " +  " | ".join(f"{value:.2f}" for value in sizes)
                + " |"
            )
    header = (
        f"Training memory per GPU in {unit}, {args.num_gpus} GPU{'s' if args.num_gpus > 1 else ''}, "
        "bf16 compute with fp32 master weights, AdamW, "
        f"{'code' if args.hard_labels else 'soft'} targets, code embeddings frozen"
        f"{f', LoRA rank {args.lora_rank} (only the adapters train)' if args.lora_rank else ''}; computed on the meta "
        f"device from the modules (torch {torch.__version__})."
    )
    print("\n".join([header, ""] + lines))
    if args.markdown_out:
        with open(args.markdown_out, "w") as handle:
            handle.write("\n".join([header, ""] + lines) + "\n")
    if args.json_out:
        settings = {key: value for key, value in vars(args).items() if key not in ("markdown_out", "json_out")}
        with open(args.json_out, "w") as handle:
            json.dump({"benchmark": "memory", "header": header, "settings": settings, "rows": rows}, handle,
                      indent=2)


if __name__ == "__main__":
    main()
