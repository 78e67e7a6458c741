"""Peak memory of loading (and, on a GPU, sampling with) a large RQ-Transformer pipeline, by loading route.

Saves one fp32 pipeline (a tiny RQ-VAE and a transformer of `--hidden` width and `--layers` spatial + depth
layers, random weights), then loads it in a fresh process per route and reports, above the process's memory
before loading and against the size of the fp32 weights, the peak of its anonymous resident memory (what has
to fit in RAM; sampled every 2 ms from /proc/self/status), of its resident file pages (the memory-mapped
safetensors file: page cache, given back under pressure) over loading and sampling `--batch-size` images (every
weight is read), the anonymous memory held right after loading, and the peak resident set (`ru_maxrss`, all
pages, also short-lived ones the sampling misses):

* `naive`: build the model (random init), `load_state_dict` from the file, then `.to(bfloat16)`: what a
  hand-written loader costs;
* `from_pretrained`: `RQTransformerPipeline.from_pretrained(folder)` (empty modules filled from the file,
  `low_cpu_mem_usage=True`);
* `torch_dtype=bf16`: the same, loaded straight into bf16 (the quantizer stays fp32);
* `device_map (blocks on disk)`: the transformer from `from_pretrained(..., device_map=..., offload_folder=...)`
  with its two stacks on disk (accelerate's hooks load a stack while it runs).

On a GPU (`--device cuda`) three more routes report the peak GPU memory of the sampling: the whole pipeline on
the GPU, `enable_model_cpu_offload()`, and a `device_map="auto"` transformer limited to
`--gpu-budget-gib` of GPU memory.

    python benchmarks/bench_loading.py                    # ~300M parameters (1.2 GB fp32), CPU: a minute
    python benchmarks/bench_loading.py --quick            # tiny
    python benchmarks/bench_loading.py --device cuda --hidden 1536 --layers 42 6    # the 1.4B shape
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List

LOADER = r"""
import json, os, resource, sys, threading, time
import torch
from rq_hf import RQTransformerForCausalImageModeling, RQTransformerPipeline, RQVAEModel

route, folder, device, batch_size, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]

def memory():  # resident anonymous memory (what must fit in RAM), resident file pages (mapped weights)
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("RssAnon:", "RssFile:")):
                fields[line.split(":")[0]] = int(line.split()[1]) * 1024
    return fields["RssAnon"], fields["RssFile"]

peak = [0, 0]
running = True

def sample():
    while running:
        anon, mapped = memory()
        peak[0], peak[1] = max(peak[0], anon), max(peak[1], mapped)
        time.sleep(0.002)

before = memory()
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
transformer_folder = os.path.join(folder, "transformer")
if route == "naive":
    import safetensors.torch
    config = RQTransformerForCausalImageModeling.config_class.from_pretrained(transformer_folder)
    model = RQTransformerForCausalImageModeling(config)
    model.load_state_dict(safetensors.torch.load_file(os.path.join(transformer_folder, "model.safetensors")))
    model = model.to(torch.bfloat16)
    pipe = RQTransformerPipeline(vqvae=RQVAEModel.from_pretrained(os.path.join(folder, "vqvae")), transformer=model)
elif route == "from_pretrained":
    pipe = RQTransformerPipeline.from_pretrained(folder)
elif route == "torch_dtype=bf16":
    pipe = RQTransformerPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
elif route == "device_map (blocks on disk)":
    config = RQTransformerForCausalImageModeling.config_class.from_pretrained(transformer_folder)
    with torch.device("meta"):  # the module names, nothing allocated
        names = RQTransformerForCausalImageModeling(config)
    device_map = {name: "cpu" for name, _ in names.named_children()}
    device_map.update({name: "cpu" for name, _ in names.named_parameters(recurse=False)})
    device_map.update(spatial_transformer="disk", depth_transformer="disk")
    model = RQTransformerForCausalImageModeling.from_pretrained(
        transformer_folder, device_map=device_map, offload_folder=os.path.join(folder, "offload"))
    pipe = RQTransformerPipeline.from_pretrained(folder, transformer=model)
elif route == "gpu: whole pipeline":
    pipe = RQTransformerPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16).to(device)
elif route == "gpu: enable_model_cpu_offload":
    pipe = RQTransformerPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
    pipe.enable_model_cpu_offload(device=device)
elif route == "gpu: device_map=auto":
    model = RQTransformerForCausalImageModeling.from_pretrained(
        transformer_folder, dtype=torch.bfloat16, device_map="auto",
        max_memory={0: f"{budget}GiB", "cpu": "200GiB"})
    pipe = RQTransformerPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16, transformer=model)
    pipe.vqvae.to(device)
else:
    raise ValueError(f"unknown route {route!r}")
held = memory()[0] - before[0]
# then sample: every weight is read at least once (a memory-mapped one becomes resident only when read)
if route.startswith("gpu"):
    torch.cuda.reset_peak_memory_stats()
labels = [i % pipe.transformer.config.num_classes for i in range(batch_size)]
pipe.set_progress_bar_config(disable=True)
pipe(class_labels=labels, top_k=64, generator=torch.Generator().manual_seed(0), output_type="np")
running = False
sampler.join()
result = {"peak_anon_bytes": peak[0] - before[0], "peak_file_bytes": peak[1] - before[1],
          "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - sum(before),
          "held_anon_bytes_after_loading": held}
if route.startswith("gpu"):
    torch.cuda.synchronize()
    result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
print("RESULT " + json.dumps(result))
"""

CPU_ROUTES = ["naive", "from_pretrained", "torch_dtype=bf16", "device_map (blocks on disk)"]
GPU_ROUTES = ["gpu: whole pipeline", "gpu: enable_model_cpu_offload", "gpu: device_map=auto"]


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, nargs=2, default=[20, 4], metavar=("SPATIAL", "DEPTH"))
    parser.add_argument("--quick", action="store_true", help="a tiny transformer (hidden 64, 2 + 1 layers)")
    parser.add_argument("--device", default="cpu", help="cuda: also the GPU routes")
    parser.add_argument("--batch-size", type=int, default=1, help="images sampled after loading")
    parser.add_argument("--gpu-budget-gib", type=float, default=1.0, help="GPU memory of the device_map route")
    parser.add_argument("--markdown-out", "--markdown_out", default=None, help="also write the table here")
    parser.add_argument("--json-out", "--json_out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def save_pipeline(folder: str, hidden: int, layers: List[int]) -> int:
    """Save an fp32 pipeline; returns the bytes of the transformer's fp32 weights."""
    import torch

    from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling, RQTransformerPipeline, RQVAEModel

    torch.manual_seed(0)
    vae = RQVAEModel(in_channels=3, out_channels=3, sample_size=32, block_out_channels=(16, 32, 64, 64),
                     down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                     layers_per_block=1, latent_channels=64, norm_num_groups=8, codebook_size=16384, code_depth=4)
    config = RQTransformerConfig(vocab_size=16384, code_shape=[4, 4, 4], hidden_size=hidden,
                                 num_spatial_layers=layers[0], num_depth_layers=layers[1],
                                 num_attention_heads=max(1, hidden // 64), num_classes=10, code_embedding_dim=64)
    model = RQTransformerForCausalImageModeling(config)
    RQTransformerPipeline(vqvae=vae, transformer=model).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters()) * 4


def main(argv: List[str] | None = None) -> None:
    args = parse_args(argv)
    if args.quick:
        args.hidden, args.layers = 64, [2, 1]
    routes = CPU_ROUTES + (GPU_ROUTES if args.device.startswith("cuda") else [])
    results: Dict[str, Dict] = {}
    with tempfile.TemporaryDirectory() as workdir:
        folder = os.path.join(workdir, "pipe")
        weight_bytes = save_pipeline(folder, args.hidden, args.layers)
        for route in routes:
            command = [sys.executable, "-c", LOADER, route, folder, args.device, str(args.batch_size),
                       str(args.gpu_budget_gib)]
            completed = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
            lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
            if completed.returncode != 0 or not lines:
                raise RuntimeError(f"route {route!r} failed:\n{completed.stderr[-3000:]}")
            results[route] = json.loads(lines[-1][len("RESULT "):])
            print(f"  {route}: {results[route]}", flush=True)
    mib = 2**20
    header = (f"Loading a saved fp32 pipeline whose transformer has {weight_bytes / 4 / 1e6:.0f}M parameters "
              f"({weight_bytes / mib:,.0f} MiB in fp32), one fresh process per route; memory above the process "
              f"before loading, over loading and sampling {args.batch_size} image(s)"
              + ("; the GPU routes in bf16." if args.device.startswith("cuda") else "."))
    lines = ["| route | peak anonymous RAM (MiB) | / fp32 weights | held after loading (MiB) "
             "| peak mapped file (MiB) | peak RSS, ru_maxrss (MiB) | peak GPU (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for route, result in results.items():
        gpu = f"{result['peak_gpu_bytes'] / mib:,.0f}" if "peak_gpu_bytes" in result else "-"
        lines.append(f"| {route} | {result['peak_anon_bytes'] / mib:,.0f} | "
                     f"{result['peak_anon_bytes'] / weight_bytes:.2f} | "
                     f"{result['held_anon_bytes_after_loading'] / mib:,.0f} | "
                     f"{result['peak_file_bytes'] / mib:,.0f} | {result['peak_rss_bytes'] / mib:,.0f} | {gpu} |")
    print("\n".join([header, ""] + lines))
    if args.markdown_out:
        with open(args.markdown_out, "w") as handle:
            handle.write("\n".join([header, ""] + lines) + "\n")
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump({"benchmark": "loading", "header": header, "settings": vars(args), "weight_bytes": weight_bytes,
                       "routes": results}, handle, indent=2)


if __name__ == "__main__":
    main()
