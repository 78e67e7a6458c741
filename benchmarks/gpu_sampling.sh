#!/usr/bin/env bash
# GPU sampling and loading benchmarks in one short run (issue 14): the paper's Figure 4 setting (1.4B, 8x8x4,
# batch 100; the paper reports 0.039 s/image on an A100) against the flat 16x16 model of the same width,
# eager and compiled (static caches + torch.compile with CUDA graphs), where the time goes, and the peak GPU
# memory of sampling with the whole pipeline on the GPU, with enable_model_cpu_offload() and with a
# device_map="auto" transformer. About 10 minutes on one H200 (most of it compiling the two 1.4B models).
#
#   bash benchmarks/gpu_sampling.sh OUTPUT_DIR        # on a GPU machine where `pip install -e .` was run
#
# On a machine without network whose Python lacks diffusers (this project's device machine), make the wheel
# first, in the repository root, and let the run carry `.whl`:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1
#   (then, on the device)  bash benchmarks/gpu_sampling.sh "$OUT"
set -euo pipefail
out=${1:-gpu-benchmarks}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, diffusers; print(torch.__version__, transformers.__version__, diffusers.__version__)" \
  | tee -a "$out/gpu.txt"

# 1.4B, batch 100, bf16 weights: eager and compiled rows, then the per-component table (eager)
timeout 420 python3 benchmarks/bench_sampling.py --device cuda --size 1.4B --dtype bfloat16 --batch-size 100 \
  --no-uncached --no-bf16 --compile --repeats 2 \
  --markdown-out "$out/sampling_1.4B.md" --json-out "$out/sampling_1.4B.json" 2>&1 | tee "$out/sampling_1.4B.log"

# peak GPU memory by route (a ~300M transformer; 4 images)
timeout 150 python3 benchmarks/bench_loading.py --device cuda \
  --markdown-out "$out/loading.md" --json-out "$out/loading.json" 2>&1 | tee "$out/loading.log"
