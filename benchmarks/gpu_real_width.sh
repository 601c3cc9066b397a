#!/usr/bin/env bash
# The real-width extraction benchmark on a CUDA machine; its log and results go to OUT_DIR.
#   bash benchmarks/gpu_real_width.sh [OUT_DIR]              (N=192 images, REPEATS=2 by default)
# probekit and diffusers must be importable. On a machine without a package index, build the wheels elsewhere
# (`pip wheel --no-deps -w wheels . diffusers`) and pass their folder: WHEELS=wheels bash benchmarks/gpu_real_width.sh
set -uo pipefail
out=${1:-benchmarks/results}
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/probekit-site "$WHEELS"/*.whl \
    && export PYTHONPATH=/tmp/probekit-site || exit 1
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
work=${WORKDIR:-$HOME/probekit-bench}   # on the machine's disk: a RAM-backed /tmp would flatter the writes
df -h "$(dirname "$work")" | tail -1
mkdir -p "$out"
python3 benchmarks/bench_extraction.py real-width --device cuda --n "${N:-192}" --batch-size 8 \
  --repeats "${REPEATS:-2}" --workdir "$work" 2>&1 | tee "$out/real_width.log"
if [ "$out" != benchmarks/results ]; then cp benchmarks/results/extraction_real_width*.json "$out/"; fi
