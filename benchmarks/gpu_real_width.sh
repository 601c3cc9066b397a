#!/usr/bin/env bash
# The real-width extraction benchmark on a lent GPU machine (see benchmarks/README.md): install the carried
# wheels (diffusers is not on that image; probekit from `pip wheel --no-deps -w .whl .`), run, keep results.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
df -h /root /tmp | tail -2
work=/root/probekit-bench   # on the machine's disk, not a RAM-backed /tmp
python3 benchmarks/bench_extraction.py real-width --device cuda --n "${N:-96}" --batch-size 8 --repeats "${REPEATS:-2}" \
  --workdir "$work" 2>&1 | tee "$OUT/real_width.log"
cp benchmarks/results/extraction_real_width*.json "$OUT/" 2>/dev/null
