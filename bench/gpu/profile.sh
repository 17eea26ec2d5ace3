#!/usr/bin/env bash
# Kernel times of one request on the GPU, step by step (Nsight Compute, clocks left alone):
#   bash bench/gpu/profile.sh TURBINE MODEL_DIR LOG_DIR
# A 1000-token prompt, then 2 decoded tokens: the prefill's kernels and the decode kernels at a
# context of 1000 (the products read the same weights at any context; attention grows with it).
# LOG_DIR gets profile-1b.csv (every launch); the step's output is bench/gpu/kernels.py's tables.
set -eu
turbine=${1:?usage: profile.sh TURBINE MODEL_DIR LOG_DIR}
model=${2:?}
logs=${3:?}
ncu=$(command -v ncu || ls -d /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
if [ -z "$ncu" ]; then echo "profile.sh: no ncu on this machine"; exit 2; fi
ids=$(seq 1000 1999 | paste -sd, -)
"$ncu" --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
  --log-file "$logs/profile-1b.csv" \
  "$turbine" generate -m "$model" --backend cuda --prompt-ids "$ids" --max-tokens 3 --temperature 0 --json
python3 "$(dirname "$0")/kernels.py" "$logs/profile-1b.csv"
