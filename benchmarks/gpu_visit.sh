#!/usr/bin/env bash
# One visit to the lent GPU machine: install the carried wheels (.whl, fetched by
# ../shared/gpu/wheels.sh), then run each named job (a command line in quotes), logging
# to results/<n>.log. Everything under results/ is packed into $OUT/results.tgz at the
# end (the device returns at most 8 files), and a one-line status per job is printed last.
#   usage: bash benchmarks/gpu_visit.sh "python benchmarks/sparse_parity.py --out results/parity" ...
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
mkdir -p results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee results/gpu.txt
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)" | tee -a results/gpu.txt
status=()
i=0
for job in "$@"; do
  i=$((i + 1))
  echo "=== [$i] $job"
  start=$(date +%s)
  bash -c "$job" > "results/job$i.log" 2>&1
  rc=$?
  tail -n 40 "results/job$i.log"
  status+=("[$i] rc=$rc $(( $(date +%s) - start ))s  $job")
done
tar czf "${OUT:-/tmp}/results.tgz" results
echo "=== summary"
printf '%s\n' "${status[@]}"
