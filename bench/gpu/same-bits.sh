#!/usr/bin/env bash
# A kernel variant must give the default's bits: the same greedy ids and log-probabilities.
#   bash bench/gpu/same-bits.sh TURBINE MODEL_DIR DEFAULT_PTX_DIR VARIANT_PTX_DIR [PROMPT_TOKENS]
# Runs a prompt of PROMPT_TOKENS (default 300) ids and 16 greedy tokens (5 log-probabilities
# each) with each PTX folder and compares the JSON outputs, timings left out; exits 1 if they
# differ or a run fails.
set -u
turbine=${1:?usage: same-bits.sh TURBINE MODEL_DIR DEFAULT_PTX_DIR VARIANT_PTX_DIR [PROMPT_TOKENS]}
model=${2:?}
ptx_a=${3:?}
ptx_b=${4:?}
n=${5:-300}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ids=$(seq 100 $((99 + n)) | paste -sd, -)
for side in a b; do
  ptx=$ptx_a
  [ $side = b ] && ptx=$ptx_b
  if ! TURBINE_CUDA_PTX=$ptx "$turbine" generate -m "$model" --backend cuda --prompt-ids "$ids" --max-tokens 16 \
    --temperature 0 --logprobs 5 --json > "$tmp/$side.out" 2> "$tmp/$side.err"; then
    echo "same-bits: the run with $ptx failed:"
    tail -5 "$tmp/$side.err"
    exit 1
  fi
done
python3 - "$tmp/a.out" "$tmp/b.out" <<'PY'
import json, sys
a, b = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:3])
for d in (a, b):
    d.pop("timings", None)
same = a == b
print("same ids and log-probabilities" if same else "DIFFERENT:\n%s\n%s" % (a, b))
print("ids", a.get("ids"))
sys.exit(0 if same else 1)
PY
