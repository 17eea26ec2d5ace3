"""Smoke test of `turbine serve` with the official `openai` Python client (pip install openai).

    cargo run --release --bin turbine -- serve --port 18124 &
    python3 tests/clients/openai_smoke.py [BASE_URL]
"""
import sys

from openai import OpenAI
base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:18124/v1"
c = OpenAI(base_url=base, api_key="unused")
print([m.id for m in c.models.list().data])
r = c.completions.create(model="smollm2-135m-instruct", prompt="The capital of France is", max_tokens=8, temperature=0)
print("completion:", repr(r.choices[0].text), r.choices[0].finish_reason, r.usage)
r = c.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=20, temperature=0)
print("chat:", repr(r.choices[0].message.content), r.choices[0].finish_reason)
s = c.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hello."}], max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True})
parts = []
for ch in s:
    if ch.choices and ch.choices[0].delta.content:
        parts.append(ch.choices[0].delta.content)
    if ch.usage: print("usage:", ch.usage)
print("stream:", repr("".join(parts)))
r = c.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0, logprobs=True, top_logprobs=2)
print("logprobs:", [(t.token, round(t.logprob, 3), [a.token for a in t.top_logprobs]) for t in r.choices[0].logprobs.content])
try:
    c.completions.create(model="nope", prompt="x")
except Exception as e:
    print("error:", type(e).__name__, e.status_code)
