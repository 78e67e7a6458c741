"""Training step time of both stages through accelerate against a bare PyTorch loop of the same model.

The cost of the framework (issue 6, goal: at most 10% overhead). For each stage and precision, two copies of
the same model (same weights, same batch) are trained side by side:

* **accelerate**: as ``examples/train_rqvae.py`` / ``examples/train_rq_transformer.py`` do it: an
  ``Accelerator(mixed_precision=...)`` prepares the model and AdamW, the step runs inside
  ``accelerator.accumulate(model)``, the forward goes through the prepared model (accelerate's autocast and
  fp32 output conversion), then ``accelerator.backward``, ``accelerator.clip_grad_norm_``, ``optimizer.step()``
  and ``optimizer.zero_grad(set_to_none=True)``;
* **bare**: plain PyTorch: ``model(...)`` (under ``torch.autocast(..., dtype=torch.bfloat16)`` for bf16),
  ``loss.backward()``, ``torch.nn.utils.clip_grad_norm_``, ``opt.step()``, ``opt.zero_grad(set_to_none=True)``.

Steps (random data: speed does not depend on the values):

* RQ-VAE: forward, MSE reconstruction loss (in fp32) + the model's commitment loss, backward, AdamW step
  (the EMA codebook update runs inside the forward);
* RQ-Transformer: forward with ``labels`` (cross-entropy over every code), backward, AdamW step; the code
  embeddings are frozen, as in the training script's default.

Sizes: the CPU-scale models of ``/work/shared/HF_NOTES.md`` (RQ-VAE: 32x32 1-channel images, channels
16/32/64, codes 8x8x4, K 256, batch 64; RQ-Transformer: hidden 128, 4 spatial + 1 depth layers, codes 8x8x4,
K 256, 10 classes, batch 64); ``--quick``: tiny models, seconds.

Timing: the two loops alternate step by step (``--repeats`` timed steps each after ``--warmup`` untimed ones;
the order flips every repeat), and the table shows the median. Peak memory: weights + buffers + optimizer
state + batch (counted from the tensors) plus the highest allocation above that during one extra, untimed
step: read from the allocator events of ``torch.profiler`` (``profile_memory=True``) on CPU, and from
``torch.cuda.max_memory_allocated`` on GPU. It counts tensors, not the process RSS.

    python benchmarks/bench_training_step.py               # CPU-scale sizes (3-6 minutes on 2 cores)
    python benchmarks/bench_training_step.py --quick       # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from contextlib import nullcontext
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

#: RQ-VAE of HF_NOTES ("Training at CPU scale"), as examples/train_rqvae.py builds it for Fashion-MNIST.
RQVAE_CONFIG = dict(
    in_channels=1,
    out_channels=1,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[16, 32, 64],
    layers_per_block=1,
    latent_channels=32,
    norm_num_groups=8,
    sample_size=32,
    vq_embed_dim=32,
    codebook_size=256,
    code_depth=4,
    restart_threshold=1.0,
)
QUICK_RQVAE_CONFIG = dict(
    RQVAE_CONFIG,
    down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2,
    block_out_channels=[8, 16],
    latent_channels=8,
    norm_num_groups=4,
    sample_size=8,
    vq_embed_dim=8,
    codebook_size=32,
    code_depth=2,
    mid_block_add_attention=False,
)
#: RQ-Transformer of HF_NOTES, as examples/train_rq_transformer.py builds it (SMALL_CONFIG) over that RQ-VAE.
TRANSFORMER_CONFIG = dict(
    vocab_size=256,
    code_shape=[8, 8, 4],
    hidden_size=128,
    num_spatial_layers=4,
    num_depth_layers=1,
    num_attention_heads=4,
    resid_dropout=0.1,
    num_classes=10,
    class_dropout_prob=0.1,
    code_embedding_dim=32,
)
QUICK_TRANSFORMER_CONFIG = dict(
    TRANSFORMER_CONFIG, vocab_size=32, code_shape=[4, 4, 2], hidden_size=32, num_spatial_layers=1,
    num_attention_heads=2, code_embedding_dim=8,
)
LOOPS = ("bare", "accelerate")


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models and few repeats (checks, not numbers)")
    parser.add_argument("--stages", nargs="+", choices=("rqvae", "transformer"), default=["rqvae", "transformer"])
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 (--quick: 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per loop (default 20, --quick: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per loop (default 3, --quick: 1)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping as the scripts (0: off)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--markdown-out", "--markdown_out", default=None, help="also write the table here")
    parser.add_argument("--json-out", "--json_out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    defaults = dict(batch_size=(4, 64), repeats=(2, 20), warmup=(1, 3))
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
        minimum = 0 if name == "warmup" else 1
        if getattr(args, name) < minimum:
            raise ValueError(f"`--{name.replace('_', '-')}` must be at least {minimum}, got {getattr(args, name)}")
    return args


# ---------------------------------------------------------------------------------------------- models, data


def build_stage(stage: str, quick: bool, batch_size: int, device: torch.device):
    """The model, a fixed batch, `forward(model, batch) -> outputs` and `loss(outputs, batch) -> scalar`."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if stage == "rqvae":
        from rq_hf import RQVAEModel

        config = QUICK_RQVAE_CONFIG if quick else RQVAE_CONFIG
        model = RQVAEModel(**config)
        size = config["sample_size"]
        images = torch.rand(batch_size, config["in_channels"], size, size, generator=generator) * 2 - 1
        batch = (images.to(device),)

        def forward(model, batch):
            # A tuple, as the training script asks for (accelerate's output conversion prefers it).
            return model(batch[0], return_dict=False)

        def loss(outputs, batch):
            reconstructions, _, commitment_loss, _, _ = outputs
            return F.mse_loss(reconstructions.float(), batch[0].float()) + commitment_loss

    else:
        from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling

        config = QUICK_TRANSFORMER_CONFIG if quick else TRANSFORMER_CONFIG
        model = RQTransformerForCausalImageModeling(RQTransformerConfig(**config))
        model.code_embeddings.weight.requires_grad_(False)  # frozen RQ-VAE codebook (the script's default)
        codes = torch.randint(config["vocab_size"], (batch_size, *config["code_shape"]), generator=generator)
        labels = torch.randint(config["num_classes"], (batch_size,), generator=generator)
        batch = (codes.to(device), labels.to(device))

        def forward(model, batch):
            codes, class_labels = batch
            return model(codes=codes, class_labels=class_labels, labels=codes, return_dict=False)

        def loss(outputs, batch):
            return outputs[0]

    return model.to(device).train(), batch, forward, loss


def make_optimizer(model: torch.nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (one group: the cost does not depend on the grouping)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)


def make_bare_step(model, batch, forward, loss_fn, precision: str, device: torch.device, args):
    """One plain-PyTorch training step (returns the detached loss), and its optimizer."""
    optimizer = make_optimizer(model, args.learning_rate)
    trainable = [p for p in model.parameters() if p.requires_grad]
    bf16 = precision == "bf16"

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
            outputs = forward(model, batch)  # autocast around the forward only, as accelerate does
        loss = loss_fn(outputs, batch)
        loss.backward()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, optimizer


def make_accelerate_step(model, batch, forward, loss_fn, precision: str, device: torch.device, args):
    """One training step as the training scripts run it through accelerate, and its (prepared) optimizer."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # another mixed_precision in the same process (as accelerate's tests do)
    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=device.type == "cpu")
    optimizer = make_optimizer(model, args.learning_rate)
    model, optimizer = accelerator.prepare(model, optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step() -> torch.Tensor:
        with accelerator.accumulate(model):
            loss = loss_fn(forward(model, batch), batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, optimizer


# ---------------------------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Tuple[torch.Tensor, ...]) -> int:
    """Bytes of the tensors that live across steps: weights, buffers, optimizer state, the batch."""
    tensors = list(model.parameters()) + list(model.buffers()) + list(batch)
    for state in optimizer.state.values():
        tensors += [value for value in state.values() if isinstance(value, torch.Tensor)]
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def step_peak_bytes(step: Callable[[], torch.Tensor], device: torch.device) -> int:
    """The highest allocation above the memory live before one call of `step` (tensors only)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [
        event for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    current = peak = 0
    for event in sorted(events, key=lambda event: event.start_ns()):
        current += event.nbytes()  # negative for a free
        peak = max(peak, current)
    return peak


def run_row(stage: str, precision: str, args, device: torch.device) -> Dict[str, Dict[str, float]]:
    """Both loops of one (stage, precision): median step time, images/s, peak memory, first loss."""
    model, batch, forward, loss_fn = build_stage(stage, args.quick, args.batch_size, device)
    models = {"bare": model, "accelerate": copy.deepcopy(model)}
    makers = {"bare": make_bare_step, "accelerate": make_accelerate_step}
    steps, optimizers, first_loss = {}, {}, {}
    for loop in LOOPS:
        steps[loop], optimizers[loop] = makers[loop](models[loop], batch, forward, loss_fn, precision, device, args)
        torch.manual_seed(1)  # the same dropout / code-restart draws in both loops
        first_loss[loop] = float(steps[loop]())
    for loop in LOOPS:
        for _ in range(args.warmup):
            steps[loop]()
    times: Dict[str, List[float]] = {loop: [] for loop in LOOPS}
    for repeat in range(args.repeats):
        for loop in LOOPS if repeat % 2 == 0 else LOOPS[::-1]:
            sync(device)
            start = time.perf_counter()
            steps[loop]()
            sync(device)
            times[loop].append(time.perf_counter() - start)
    results = {}
    for loop in LOOPS:
        seconds = statistics.median(times[loop])
        results[loop] = {
            "seconds_per_step": seconds,
            "images_per_second": args.batch_size / seconds,
            "first_loss": first_loss[loop],
            "parameters": sum(p.numel() for p in models[loop].parameters()),
            "step_seconds": times[loop],  # every timed step, in order
        }
        if not args.no_memory:
            peak = step_peak_bytes(steps[loop], device)
            results[loop]["peak_mib"] = (state_bytes(models[loop], optimizers[loop], batch) + peak) / 2**20
    return results


# ---------------------------------------------------------------------------------------------- report


def markdown_table(rows: List[Dict]) -> List[str]:
    """Markdown lines of the results: one row per (stage, precision)."""
    lines = [
        "| stage | precision | params | bare (ms/step) | accelerate (ms/step) | overhead | accelerate (images/s) "
        "| bare peak (MiB) | accelerate peak (MiB) | first loss bare / accelerate |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        bare, accel = row["bare"], row["accelerate"]
        peaks = [f"{r['peak_mib']:.1f}" if "peak_mib" in r else "-" for r in (bare, accel)]
        lines.append(
            f"| {row['stage']} | {row['precision']} | {bare['parameters'] / 1e6:.2f}M "
            f"| {bare['seconds_per_step'] * 1e3:.1f} | {accel['seconds_per_step'] * 1e3:.1f} "
            f"| {row['overhead']:+.1%} | {accel['images_per_second']:.1f} | {peaks[0]} | {peaks[1]} "
            f"| {bare['first_loss']:.4f} / {accel['first_loss']:.4f} |"
        )
    return lines


def main(argv: List[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    memory = "not measured" if args.no_memory else (
        "weights + buffers + optimizer state + batch, plus the highest allocation during one step ("
        + ("torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler allocator events")
        + ")"
    )
    header = (
        f"Training step, accelerate against bare PyTorch: {'quick (tiny) models' if args.quick else 'CPU-scale models'}"
        f", batch {args.batch_size}, device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"median of {args.repeats} interleaved steps after {args.warmup} warm-up, "
        f"gradient clipping {args.max_grad_norm or 'off'}. Overhead = accelerate / bare - 1 (goal: at most 10%). "
        f"Peak memory: {memory}."
    )
    print(header, flush=True)
    rows = []
    for stage in args.stages:
        for precision in args.precisions:
            results = run_row(stage, precision, args, device)
            overhead = results["accelerate"]["seconds_per_step"] / results["bare"]["seconds_per_step"] - 1
            rows.append({"stage": stage, "precision": precision, "overhead": overhead, **results})
            print(
                f"  {stage} {precision}: bare {results['bare']['seconds_per_step'] * 1e3:.1f} ms, accelerate "
                f"{results['accelerate']['seconds_per_step'] * 1e3:.1f} ms ({overhead:+.1%})",
                flush=True,
            )
    lines = [header, ""] + markdown_table(rows)
    print()
    print("\n".join(lines[2:]))
    if args.markdown_out:
        with open(args.markdown_out, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    if args.json_out:
        settings = {k: v for k, v in vars(args).items() if k not in ("markdown_out", "json_out")}
        settings.update(torch=torch.__version__, threads=torch.get_num_threads())
        with open(args.json_out, "w") as handle:
            json.dump({"benchmark": "training_step", "header": header, "settings": settings, "rows": rows}, handle,
                      indent=2)


if __name__ == "__main__":
    main()
