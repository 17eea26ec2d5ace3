"""Makes tiny random-weight checkpoints and their transformers references for Turbine's golden
tests: `cargo xtask gen-fixtures --python PY` runs it (PY needs torch, transformers, tokenizers).

Each case is a folder with config.json, model.safetensors, tokenizer.json and golden.json in the
format of the shared fixtures: greedy ids with top-1/top-2 margins and the first step's logits for
a few prompts, and per-token NLL / perplexity over one window of text.
"""

import argparse
import json
import math
import os
import shutil

import torch
import transformers
from tokenizers import Tokenizer

# Prompts long enough to exceed the small sliding windows some variants use.
PROMPTS = [
    "The quick brown fox",
    "Once upon a time, in a land far away, there lived a curious old clockmaker",
]
PPL_TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
    "of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of "
    "Light, it was the season of Darkness."
)
NEW_TOKENS = 12

# transformers 5.x's eager Falcon path adds the ALiBi biases twice (once to the scores, once
# through the causal mask); its SDPA path adds them once, as Falcon was trained.
ATTN_IMPL = {"falcon-alibi": "sdpa"}


def base(hidden=64, layers=2, vocab=512, positions=256):
    return dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False), hidden, layers, positions


def variants():
    """name -> (config class name, kwargs, note)."""
    v = {}
    v["bloom-6heads"] = ("BloomConfig", dict(hidden_size=96, n_head=6, n_layer=2, vocab_size=512,
                         bos_token_id=0, eos_token_id=0), "Bloom, ALiBi with 6 heads (not a power of two)")
    v["falcon-7b-style"] = ("FalconConfig", dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                            vocab_size=512, multi_query=True, parallel_attn=True, new_decoder_architecture=False,
                            bias=False, alibi=False, max_position_embeddings=256, bos_token_id=0, eos_token_id=0),
                            "Falcon 7B style: multi-query, parallel attention, one LayerNorm")
    v["falcon-alibi"] = ("FalconConfig", dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=512, multi_query=False, parallel_attn=False, new_decoder_architecture=False,
                         bias=True, alibi=True, max_position_embeddings=256, bos_token_id=0, eos_token_id=0),
                         "Falcon with ALiBi, sequential blocks, biases, full multi-head QKV")
    v["gptneox-sequential"] = ("GPTNeoXConfig", dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                               intermediate_size=160, vocab_size=512, rotary_pct=0.5, use_parallel_residual=False,
                               max_position_embeddings=256, bos_token_id=0, eos_token_id=0),
                               "GPT-NeoX with sequential residual, rotary on half the head")
    v["gemma3-short-window"] = ("Gemma3TextConfig", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=4,
                                layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                             "full_attention"], query_pre_attn_scalar=24, vocab_size=512,
                                max_position_embeddings=256, bos_token_id=0, eos_token_id=0, pad_token_id=0),
                                "Gemma 3, window 4 (shorter than the prompts), head_dim 32, GQA 2")
    v["llama-mha-headdim"] = ("LlamaConfig", dict(hidden_size=48, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=3, num_key_value_heads=3, head_dim=24, vocab_size=512,
                              max_position_embeddings=256, rope_theta=500000.0,
                              rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                high_freq_factor=4.0, original_max_position_embeddings=64),
                              bos_token_id=0, eos_token_id=0),
                              "Llama MHA, head_dim 24 != hidden/heads, Llama-3 rope scaling")
    v["qwen2-windowed"] = ("Qwen2Config", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, vocab_size=512, max_position_embeddings=256,
                           use_sliding_window=True, sliding_window=6, max_window_layers=1,
                           bos_token_id=0, eos_token_id=0), "Qwen2 MQA, sliding window 6 on layer 1 only")
    v["phi3-partial-window"] = ("Phi3Config", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                                max_position_embeddings=256, sliding_window=7, partial_rotary_factor=0.5,
                                bos_token_id=0, eos_token_id=0, pad_token_id=0),
                                "Phi-3 GQA, sliding window 7, rotary on half the head")
    v["gpt2-relu-untied"] = ("GPT2Config", dict(n_embd=64, n_head=4, n_layer=2, n_positions=128, vocab_size=512,
                             activation_function="relu", bos_token_id=0, eos_token_id=0),
                             "GPT-2 with ReLU and 128 positions")
    v["qwen2-yarn"] = ("Qwen2Config", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=512, max_position_embeddings=256,
                       rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64),
                       bos_token_id=0, eos_token_id=0), "Qwen2 with YaRN rope scaling (factor 4 over 64 positions)")
    v["llama-dynamic"] = ("LlamaConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, vocab_size=512, max_position_embeddings=256,
                          rope_scaling=dict(rope_type="dynamic", factor=2.0), bos_token_id=0, eos_token_id=0),
                          "Llama with dynamic NTK rope scaling, within the trained context")
    v["mistral-linear"] = ("MistralConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, vocab_size=512, max_position_embeddings=256,
                           sliding_window=None, rope_scaling=dict(rope_type="linear", factor=4.0),
                           bos_token_id=0, eos_token_id=0), "Mistral with linear rope scaling (factor 4)")
    return v


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.25)
            elif "norm" in name or "ln" in name or name.endswith("layernorm.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (0.0 if "gemma" in type(model).__name__.lower() else 1.0))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double()


def make(out, tok_path, name, cls, kwargs, note, seed):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    cfg = getattr(transformers, cls)(**kwargs)
    torch.manual_seed(seed)
    attn = ATTN_IMPL.get(name, "eager")
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=torch.float32)
    randomize(model, seed)
    model.eval()
    model.save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    shutil.copy(tok_path, os.path.join(d, "tokenizer.json"))
    tok = Tokenizer.from_file(tok_path)
    cases = []
    for text in PROMPTS:
        ids = tok.encode(text).ids
        seq, margins, last = list(ids), [], None
        for step in range(NEW_TOKENS):
            row = logits(model, seq)[-1]
            if step == 0:
                last = [float(x) for x in row.float()]
            top = torch.topk(row, 2)
            margins.append(round(float(top.values[0] - top.values[1]), 6))
            seq.append(int(top.indices[0]))
        cases.append(dict(prompt_text=text, prompt_ids=ids, greedy_ids=seq[len(ids):],
                          step_top2_margins=margins, last_logits=last))
    ids = tok.encode(PPL_TEXT).ids
    lp = torch.log_softmax(logits(model, ids), dim=-1)
    nll = [float(-lp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    mean = sum(nll) / len(nll)
    golden = dict(generator=f"turbine xtask gen-fixtures; transformers {transformers.__version__}, torch "
                  f"{torch.__version__}, float32 CPU, {attn} attention", note=note, seed=seed, cases=cases,
                  perplexity=dict(ids=ids, token_nll=nll, mean_nll=mean, ppl=math.exp(mean)))
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(golden, f)
    print(f"{name}: {note}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    for i, (name, (cls, kw, note)) in enumerate(sorted(variants().items())):
        if a.only and name not in a.only:
            continue
        make(a.out, a.tokenizer, name, cls, kw, note, 1000 + i)


if __name__ == "__main__":
    main()
