#!/usr/bin/env python3
"""PyTorch and transformers anchors for Turbine's GPU figures, timed in the same run.

    python3 bench/gpu/anchors.py --model DIR [--static] [--out FILE]

On the GPU machine (PyTorch, transformers; no network), for a `turbine synth-model` folder:
- the device-to-device copy bandwidth (bytes read + written over time, CUDA events, median);
- PyTorch's bf16 (and FP8 `_scaled_mm`) products of the model's prefill shapes at M = 2048
  (every projection of one block, times the layers): TFLOP/s = 2 x block parameters x tokens / time;
- transformers' forward over 2048 prompt tokens (the whole prefill, attention included);
- transformers `generate` at batch 1: a 16-token prompt, 64 greedy tokens, decode tokens/s (the
  time of 65 new tokens less the time of 1, over 64), best of 3;
- transformers `generate` on the mixed workload of `turbine bench --requests N` (the same
  prompt lengths and output lengths: the workload generator is re-implemented below) in static
  batches of 64, left padded, every request run to its batch's longest output (min_new_tokens),
  counting each request's own output tokens, as `turbine bench` counts them.

Prints a table, then every figure as one line of JSON (the line `cargo xtask gpu-report` reads).
"""

import argparse
import json
import math
import os
import sys
import time

import torch

MASK = (1 << 64) - 1


class Rng:
    """Turbine's xoshiro256** (crates/core/src/sampling.rs), seeded by splitmix64."""

    def __init__(self, seed):
        x = seed
        s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & MASK
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
            s.append(z ^ (z >> 31))
        self.s = s

    @staticmethod
    def rotl(v, k):
        return ((v << k) | (v >> (64 - k))) & MASK

    def next_u64(self):
        s = self.s
        r = (self.rotl((s[1] * 5) & MASK, 7) * 9) & MASK
        t = (s[1] << 17) & MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self.rotl(s[3], 45)
        return r


def mixed_workload(text, n, seed, max_len):
    """`turbine_batcher::bench::mixed_workload`: (prompt ids, output tokens) per request."""
    rng = Rng(seed)

    def between(lo, hi):
        return lo + rng.next_u64() % (hi - lo + 1)

    reqs = []
    for _ in range(n):
        length = min(between(16, 256), max(max_len - 8, 1))
        start = between(0, max(len(text) - 1, 0))
        prompt = [text[(start + i) % len(text)] for i in range(length)]
        u = between(0, 99)
        out = between(8, 32) if u < 70 else between(64, 192) if u < 95 else between(384, 512)
        out = max(min(out, max_len - len(prompt)), 1)
        reqs.append((prompt, out))
    return reqs


def events_time(fn, reps, warmup=3):
    """Median milliseconds of `fn` over `reps` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth():
    n = 2 << 30  # 2 GiB each way: far over the L2
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = events_time(lambda: dst.copy_(src), 20)
    del src, dst
    return 2 * n / (ms * 1e-3) / 1e9


def block_shapes(cfg):
    """(k, n) of every projection of one decoder block, as Turbine stacks them."""
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    return [(h, q + 2 * kv), (q, h), (h, 2 * f), (f, h)]


def prefill_products(cfg, tokens):
    """PyTorch's bf16 and FP8 products of one prefill's shapes (every layer's projections)."""
    layers = cfg["num_hidden_layers"]
    shapes = block_shapes(cfg)
    params = layers * sum(k * n for k, n in shapes)
    flops = 2 * params * tokens
    out = {"tokens": tokens, "block_params": params}
    # Several weight sets, so repeated products do not run from the L2.
    sets = 4
    xs = {k: [torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16) for _ in range(sets)] for k, _ in shapes}
    ws = [[torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / math.sqrt(k) for _ in range(sets)] for k, n in shapes]
    i = [0]

    def bf16():
        j = i[0] % sets
        i[0] += 1
        for (k, _), w in zip(shapes, ws):
            torch.matmul(xs[k][j], w[j].t())

    ms = events_time(bf16, 20) * layers
    out["bf16_ms"] = ms
    out["bf16_tflops"] = flops / (ms * 1e-3) / 1e12
    try:
        f8 = torch.float8_e4m3fn
        x8 = {k: [x.to(f8) for x in v] for k, v in xs.items()}
        w8 = [[w.to(f8) for w in v] for v in ws]
        one = torch.ones((), device="cuda", dtype=torch.float32)

        def fp8():
            j = i[0] % sets
            i[0] += 1
            for (k, _), w in zip(shapes, w8):
                torch._scaled_mm(x8[k][j], w[j].t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

        ms8 = events_time(fp8, 20) * layers
        out["fp8_ms"] = ms8
        out["fp8_tflops"] = flops / (ms8 * 1e-3) / 1e12
    except Exception as e:  # reported, not fatal: the bf16 figure is the target's anchor
        out["fp8_error"] = repr(e)
    return out


def attention_sdpa(cfg, prefill=2048, batch=64, ctx=1024):
    """PyTorch's scaled_dot_product_attention on the shapes gpu_bench times Turbine's paged
    attention at: a causal prefill of one sequence, and one decode row for each of `batch`
    sequences at context `ctx`; bf16 (what users run) and f32 (Turbine's cache)."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    qh, kvh = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // qh
    out = {"q_heads": qh, "kv_heads": kvh, "head_dim": hd, "prefill_tokens": prefill,
           "decode_batch": batch, "decode_context": ctx}
    for name, dt in (("bf16", torch.bfloat16), ("f32", torch.float32)):
        q, k, v = (torch.randn(1, h, prefill, hd, device="cuda", dtype=dt) for h in (qh, kvh, kvh))
        out[f"prefill_ms_{name}"] = events_time(lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True), 20)
        q = torch.randn(batch, qh, 1, hd, device="cuda", dtype=dt)
        k, v = (torch.randn(batch, kvh, ctx, hd, device="cuda", dtype=dt) for _ in range(2))
        out[f"decode_us_{name}"] = events_time(lambda: sdpa(q, k, v, enable_gqa=True), 20) * 1e3
        del q, k, v
    return out


def load_hf(folder):
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).cuda().eval()
    torch.cuda.synchronize()
    return model, time.time() - t0


@torch.inference_mode()
def hf_figures(folder, cfg, requests, batch, skip_batch):
    """transformers' prefill, batch-1 decode and (unless `skip_batch`) static-batch figures."""
    model, load_s = load_hf(folder)
    r = {"load_s": load_s, "attn": getattr(model.config, "_attn_implementation", None)}
    vocab = cfg["vocab_size"]
    g = torch.Generator(device="cpu").manual_seed(0)
    # Prefill: one forward over 2048 tokens (logits of the last position only, as an engine does).
    ids = torch.randint(0, vocab - 2, (1, 2048), generator=g).cuda()
    ms = events_time(lambda: model(ids, logits_to_keep=1), 5, warmup=2)
    params = cfg["num_hidden_layers"] * sum(k * n for k, n in block_shapes(cfg))
    r["prefill_2048_ms"] = ms
    r["prefill_2048_tflops"] = 2 * params * 2048 / (ms * 1e-3) / 1e12

    def gen(prompt, new, mask=None):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(
            prompt,
            attention_mask=mask,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )
        torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    # Batch-1 decode: 16-token prompt, 64 new tokens.
    p16 = torch.randint(0, vocab - 2, (1, 16), generator=g).cuda()
    gen(p16, 4)
    best = 0.0
    for _ in range(3):
        t1, _ = gen(p16, 1)
        t65, out = gen(p16, 65)
        assert out.shape[1] == 16 + 65, out.shape
        best = max(best, 64 / max(t65 - t1, 1e-9))
    r["decode_b1_tok_s"] = best
    if skip_batch:
        return r
    # Static batches of `batch`, left padded, as users run transformers.
    t_all, useful = 0.0, 0
    for s in range(0, len(requests), batch):
        chunk = requests[s : s + batch]
        width = max(len(p) for p, _ in chunk)
        new = max(o for _, o in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (p, _) in enumerate(chunk):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        dt, out = gen(ids.cuda(), new, mask.cuda())
        assert out.shape[1] == width + new, out.shape
        t_all += dt
        useful += sum(o for _, o in chunk)
    r["static_batch"] = batch
    r["static_requests"] = len(requests)
    r["static_prompt_tokens"] = sum(len(p) for p, _ in requests)
    r["static_output_tokens"] = useful
    r["static_wall_s"] = t_all
    r["static_output_tok_s"] = useful / t_all
    del model
    torch.cuda.empty_cache()
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a `turbine synth-model` folder")
    ap.add_argument("--static", action="store_true", help="also run the mixed workload in static batches")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-len", type=int, default=8192, help="the engine's longest sequence")
    ap.add_argument("--text", default="crates/server/data/bench-text.txt")
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": a.model}
    try:
        import transformers

        res["transformers"] = transformers.__version__
    except ImportError:
        res["transformers"] = None

    def stage(name, fn):
        t0 = time.time()
        print(f"anchors: {name} ...", flush=True)
        try:
            res[name] = fn()
        except Exception as e:  # the other stages still run; the report says what failed
            res[name] = {"error": repr(e)}
            print(f"anchors: {name} failed: {e!r}", flush=True)
        print(f"anchors: {name} done in {time.time() - t0:.1f} s", flush=True)

    stage("copy_gb_s", copy_bandwidth)
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    stage("products", lambda: prefill_products(cfg, 2048))
    stage("attention", lambda: attention_sdpa(cfg))
    reqs = []
    if a.static:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
        text = tok.encode(open(a.text).read(), add_special_tokens=False).ids
        reqs = mixed_workload(text, a.requests, a.seed, a.max_len)
        res["workload"] = {
            "requests": len(reqs),
            "prompt_tokens": sum(len(p) for p, _ in reqs),
            "output_tokens": sum(o for _, o in reqs),
        }
    stage("hf", lambda: hf_figures(a.model, cfg, reqs, a.batch, not a.static))

    def g(*path):
        d = res
        for p in path:
            d = d.get(p) if isinstance(d, dict) else None
        return d

    rows = [
        ("copy GB/s", g("copy_gb_s")),
        ("bf16 products TFLOP/s (M = 2048)", g("products", "bf16_tflops")),
        ("fp8 products TFLOP/s (M = 2048)", g("products", "fp8_tflops")),
        ("SDPA bf16 prefill 2048 ms", g("attention", "prefill_ms_bf16")),
        ("SDPA bf16 decode 64 x 1024 us", g("attention", "decode_us_bf16")),
        ("transformers prefill 2048 TFLOP/s", g("hf", "prefill_2048_tflops")),
        ("transformers decode batch 1 tok/s", g("hf", "decode_b1_tok_s")),
        ("transformers static-64 output tok/s", g("hf", "static_output_tok_s")),
    ]
    print("| anchor | value |\n|---|---:|")
    for name, v in rows:
        print(f"| {name} | {v:.1f} |" if isinstance(v, (int, float)) else f"| {name} | {v} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    # Last line: the whole result, for `xtask gpu-report`.
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
