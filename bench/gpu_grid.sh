#!/usr/bin/env bash
# The debias grid (bench/debias.py, every registered method) on a lent CUDA machine, resumable
# across calls: each call runs until LIMIT seconds, the settings finished so far are kept in
# docs/benchmarks.partial.json (carry it into the next call, which resumes from it), and the
# last call writes docs/benchmarks.json and the `debias` section of docs/BENCHMARKS.md.
#
# Usage (device tool): bash bench/gpu_grid.sh, with carry ["docs/benchmarks.partial.json"] from
#   the second call on. Env: RATIOS, SEEDS (comma-separated; default the full grid), JOBS
#   (settings at once, default 4), LIMIT (seconds, default 500), DEVICE (default cuda; cpu for
#   a dry run of this script), PYTHON (default .venv/bin/python, else python3).
# Results: copied to $OUT when it is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1
ARGS=(--device "${DEVICE:-cuda}" --jobs "${JOBS:-4}" --threads 2 --no-efficiency)
[ -n "${RATIOS:-}" ] && ARGS+=(--ratios "$RATIOS")
[ -n "${SEEDS:-}" ] && ARGS+=(--seeds "$SEEDS")
[ -f docs/benchmarks.partial.json ] && ARGS+=(--resume)
nvidia-smi > "${OUT:-/tmp}/nvidia-smi.txt" 2>&1 || true
status=0
timeout "${LIMIT:-500}" "$PY" bench/debias.py "${ARGS[@]}" || status=$?
if [ "$status" = 124 ]; then
  echo "gpu_grid: stopped after ${LIMIT:-500} s; carry docs/benchmarks.partial.json to resume"
elif [ "$status" != 0 ]; then
  echo "gpu_grid: bench/debias.py failed with status $status"
fi
if [ -n "${OUT:-}" ]; then
  cp docs/benchmarks.partial.json docs/benchmarks.json docs/BENCHMARKS.md "$OUT"/ 2>/dev/null \
    || true
fi
exit "$status"
