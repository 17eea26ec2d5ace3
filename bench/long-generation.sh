#!/usr/bin/env bash
# A long generation keeps its speed (issue 20): on a random-weight tiny model with a 16k context,
# 8,000 tokens served through the HTTP API (plain and streamed) against the same 8,000 through
# `turbine generate`, and generate's 8,000 against its own 200.
#
#   bash bench/long-generation.sh [REPS]      (TURBINE=path/to/turbine to pick the binary)
#
# Prints one table; each figure is the median of REPS runs (default 3). Decode tok/s excludes the
# prompt; wall tok/s is tokens over the whole request (what a client sees).
set -euo pipefail
REPS=${1:-3}
T=${TURBINE:-./target/release/turbine}
[ -x "$T" ] || cargo build --release -p turbine-server
DIR=$(mktemp -d)
trap 'kill ${PID:-0} 2>/dev/null || true; rm -rf "$DIR"' EXIT
M=$DIR/tiny16k
"$T" synth-model --preset tiny --max-positions 16384 --out "$M" >/dev/null 2>&1

generate() { # tokens → "decode_tok_s wall_tok_s"
    "$T" generate --model "$M" --prompt "Hello there" --max-tokens "$1" --ignore-eos --temperature 0 \
        --ctx-size 16384 --json | python3 -c '
import json, sys
d = json.load(sys.stdin); t = d["timings"]; n = len(d["ids"])
print(t["decode_tok_s"], n * 1000 / (t["prefill_ms"] + t["decode_ms"]))'
}

PORT=$((20000 + RANDOM % 20000))
"$T" serve --model "$M" --port $PORT --kv-tokens 16384 >"$DIR/serve.log" 2>&1 &
PID=$!
for _ in $(seq 600); do curl -sf localhost:$PORT/ready >/dev/null && break; sleep 0.1; done

served() { # stream(true|false) → wall tok/s
    python3 - "$PORT" "$1" <<'EOF'
import json, sys, time, urllib.request
port, stream = sys.argv[1], sys.argv[2] == "true"
body = {"prompt": "Hello there", "max_tokens": 8000, "ignore_eos": True, "temperature": 0, "stream": stream}
if stream:
    body["stream_options"] = {"include_usage": True}
req = urllib.request.Request(f"http://localhost:{port}/v1/completions", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
t0 = time.perf_counter()
with urllib.request.urlopen(req) as r:
    raw = r.read().decode()
dt = time.perf_counter() - t0
if stream:
    chunks = [json.loads(l[6:]) for l in raw.splitlines() if l.startswith("data: {")]
    n = next(c["usage"]["completion_tokens"] for c in chunks if c.get("usage"))
else:
    n = json.loads(raw)["usage"]["completion_tokens"]
assert n == 8000, n
print(n / dt)
EOF
}

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
g200=() g8k=() g8kw=() s8k=() s8ks=()
for r in $(seq "$REPS"); do
    echo "round $r/$REPS" >&2
    read -r d _ < <(generate 200); g200+=("$d")
    read -r d w < <(generate 8000); g8k+=("$d"); g8kw+=("$w")
    s8k+=("$(served false)"); s8ks+=("$(served true)")
done
G200=$(printf '%s\n' "${g200[@]}" | median)
G8K=$(printf '%s\n' "${g8k[@]}" | median)
G8KW=$(printf '%s\n' "${g8kw[@]}" | median)
S8K=$(printf '%s\n' "${s8k[@]}" | median)
S8KS=$(printf '%s\n' "${s8ks[@]}" | median)
python3 - "$G200" "$G8K" "$G8KW" "$S8K" "$S8KS" <<'EOF'
import sys
g200, g8k, g8kw, s8k, s8ks = map(float, sys.argv[1:])
print("| run | tok/s | ratio | target |")
print("|---|---:|---:|---:|")
print(f"| generate 200, decode | {g200:.0f} | | |")
print(f"| generate 8000, decode | {g8k:.0f} | {g8k / g200:.2f} of generate 200 | ≥ 0.45 |")
print(f"| generate 8000, wall | {g8kw:.0f} | | |")
print(f"| served 8000, wall | {s8k:.0f} | {s8k / g8kw:.2f} of generate wall ({s8k / g8k:.2f} of decode) | ≥ 0.85 |")
print(f"| served 8000 streamed, wall | {s8ks:.0f} | {s8ks / g8kw:.2f} of generate wall ({s8ks / g8k:.2f} of decode) | ≥ 0.85 |")
EOF
