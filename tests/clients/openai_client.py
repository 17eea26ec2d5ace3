"""The official `openai` Python client against `turbine serve`, used the way a new user would.

    turbine serve --api-key sk-test &
    python3 tests/clients/openai_client.py http://127.0.0.1:8000/v1 sk-test

Checks completions, chat, streaming (with usage), n > 1, stop strings, logprobs, tool calls
(required and named, plain and streamed; arguments validated against the parameters with
jsonschema) and the error classes the client raises; prints what the model said. Exits non-zero on the first mismatch.
`crates/server/tests/openai_client.rs` runs it in the test suite against a tiny model.
"""
import json
import sys

import jsonschema
import openai
from openai import OpenAI

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/v1"
key = sys.argv[2] if len(sys.argv) > 2 else "unused"
client = OpenAI(base_url=base, api_key=key, max_retries=0)
print("openai", openai.__version__, "against", base)

models = client.models.list().data
assert len(models) == 1, models
model = models[0].id
print("model:", model)

# Completions, plain and streamed: the same text at temperature 0.
r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=12, temperature=0)
text = r.choices[0].text
print("completion:", repr(text), r.choices[0].finish_reason, r.usage)
assert r.object == "text_completion" and r.id and r.created > 0
assert 1 <= r.usage.completion_tokens <= 12
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
parts, usage = [], None
for chunk in client.completions.create(model=model, prompt="The capital of France is", max_tokens=12, temperature=0,
                                       stream=True, stream_options={"include_usage": True}):
    if chunk.choices:
        parts.append(chunk.choices[0].text)
    if chunk.usage:
        usage = chunk.usage
assert "".join(parts) == text, ("".join(parts), text)
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage

# Chat, plain and streamed.
msgs = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"}]
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0)
answer = r.choices[0].message.content
print("chat:", repr(answer), r.choices[0].finish_reason, r.usage)
assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
assert r.choices[0].finish_reason in ("stop", "length")
stream = client.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0, stream=True,
                                        stream_options={"include_usage": True})
parts, roles, usage, finish = [], [], None, None
for chunk in stream:
    if chunk.choices:
        d = chunk.choices[0].delta
        roles.append(d.role)
        parts.append(d.content or "")
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
print("chat stream:", repr("".join(parts)), finish, usage)
assert "".join(parts) == answer and roles[0] == "assistant" and finish == r.choices[0].finish_reason
assert usage.completion_tokens == r.usage.completion_tokens

# n > 1 with a seed, a stop string, log-probabilities in both APIs' shapes.
r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0.9, n=3, seed=1)
assert len(r.choices) == 3 and sorted(c.index for c in r.choices) == [0, 1, 2]
print("n=3:", [c.text for c in r.choices])
full = client.completions.create(model=model, prompt="Once upon a time", max_tokens=16, temperature=0).choices[0].text
mid = len(full) // 2
stop = full[mid:mid + 3]
if stop.strip():
    cut = client.completions.create(model=model, prompt="Once upon a time", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == full[:full.find(stop)], (stop, cut)
    print("stop", repr(stop), "->", repr(cut.choices[0].text))
r = client.completions.create(model=model, prompt="Hello", max_tokens=3, temperature=0, logprobs=2)
lp = r.choices[0].logprobs
assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                   temperature=0, logprobs=True, top_logprobs=2)
content = r.choices[0].logprobs.content
assert len(content) == r.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)
print("chat logprobs:", [(t.token, round(t.logprob, 3)) for t in content])


# Tool calls, required and of a named function, plain and streamed: they parse and their
# arguments validate against the function's parameters.
tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city"]}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
params = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
ask = [{"role": "user", "content": "Weather in Oslo?"}]


def check_call(name, arguments, want=None):
    assert name in params and (want is None or name == want), name
    jsonschema.validate(json.loads(arguments), params[name])


for choice, want in [("required", None), ({"type": "function", "function": {"name": "get_weather"}}, "get_weather")]:
    r = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice=choice, max_tokens=120,
                                       temperature=0.7, seed=5)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.tool_calls, c
    for call in c.message.tool_calls:
        assert call.type == "function" and call.id
        check_call(call.function.name, call.function.arguments, want)
    print("tool calls", choice if isinstance(choice, str) else "named", [(t.function.name, t.function.arguments)
                                                                          for t in c.message.tool_calls])
    calls, finish = {}, None
    for chunk in client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice=choice,
                                                max_tokens=120, temperature=0.7, seed=5, stream=True):
        if not chunk.choices:
            continue
        for tc in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            entry["name"] += tc.function.name or ""
            entry["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and calls, (finish, calls)
    for entry in calls.values():
        check_call(entry["name"], entry["arguments"], want)
    assert [e["name"] for e in calls.values()] == [t.function.name for t in c.message.tool_calls], calls
# A conversation that carries a call and its result goes on.
history = ask + [{"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_x", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
                 {"role": "tool", "tool_call_id": "call_x", "content": "sunny"}]
r = client.chat.completions.create(model=model, messages=history, tools=tools, max_tokens=8, temperature=0)
assert r.choices[0].finish_reason in ("stop", "length", "tool_calls"), r

# Errors arrive as the client's exception classes.
def raises(cls, f):
    try:
        f()
    except cls as e:
        print(f"{cls.__name__}: {e.status_code} {e.message[:100]}")
        return
    raise AssertionError(f"expected {cls.__name__}")


raises(openai.NotFoundError, lambda: client.completions.create(model="no-such-model", prompt="x"))
raises(openai.BadRequestError, lambda: client.completions.create(model=model, prompt="x", temperature=-1))
raises(openai.BadRequestError, lambda: client.completions.create(model=model, prompt="x", max_tokens=10**7))
raises(openai.BadRequestError, lambda: client.chat.completions.create(model=model, messages=[]))
raises(openai.BadRequestError, lambda: client.chat.completions.create(
    model=model, messages=ask, tools=tools, tool_choice={"type": "function", "function": {"name": "nope"}}))
if key != "unused":
    bad = OpenAI(base_url=base, api_key="wrong-key", max_retries=0)
    raises(openai.AuthenticationError, lambda: bad.models.list())
print("all checks passed")
