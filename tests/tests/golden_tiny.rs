//! Golden tests of the Llama family against transformers references (tiny random-weight
//! checkpoints, `fixtures/tiny/*`): greedy ids, first-step log-probabilities, perplexity.

use turbine_core::DType;
use turbine_tests::*;

const NEAR_TIE: f64 = 1e-3;

fn golden(case: &str) {
    let dir = fixtures().join("tiny").join(case);
    check(&dir, &dir, case);
}

/// The same checks on a GGUF file converted from the fixture as llama.cpp converts it.
fn golden_gguf(case: &str, arch: &str) {
    golden_gguf_of(&fixtures().join("tiny").join(case), arch);
}

fn golden_gguf_of(dir: &std::path::Path, arch: &str) {
    let case = dir.file_name().unwrap().to_string_lossy().into_owned();
    let case = case.as_str();
    let out = std::env::temp_dir().join(format!("turbine-golden-{}-{case}.gguf", std::process::id()));
    turbine_tests::gguf::convert(dir, arch, &out).unwrap();
    check(dir, &out, case);
    let _ = std::fs::remove_file(&out);
}

fn check(dir: &std::path::Path, model: &std::path::Path, case: &str) {
    let g = read_json(&dir.join("golden.json")).unwrap();
    let mut m = load(model, 256).unwrap();
    for c in g["cases"].as_array().unwrap() {
        let prompt = ids(&c["prompt_ids"]);
        if let Some(text) = c["prompt_text"].as_str() {
            assert_eq!(m.tok.encode(text, true).unwrap(), prompt, "{case}: tokenizer");
        }
        let want = ids(&c["greedy_ids"]);
        let got = greedy(&mut m, &prompt, want.len()).unwrap();
        check_greedy(&got, &want, &floats(&c["step_top2_margins"]), NEAR_TIE).unwrap_or_else(|e| panic!("{case}: {e}"));

        // First step: log-softmax of the prompt's last logits within 1e-3.
        let logits = first_step_logits(&mut m, &prompt).unwrap();
        let want_lp = log_softmax(&floats(&c["last_logits"]));
        let got_lp = log_softmax(&logits);
        let worst = got_lp.iter().zip(&want_lp).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-3, "{case}: first-step logprob error {worst:e}");
    }
    let p = &g["perplexity"];
    let ids = ids(&p["ids"]);
    let s = turbine_batcher::score(&mut m.engine, &ids, ids.len()).unwrap();
    let want = p["mean_nll"].as_f64().unwrap();
    assert!((s.mean_nll - want).abs() <= 1e-4 * want.abs(), "{case}: mean nll {} vs {want}", s.mean_nll);
    let want_ppl = p["ppl"].as_f64().unwrap();
    assert!((s.ppl - want_ppl).abs() <= 1e-4 * want_ppl, "{case}: ppl {} vs {want_ppl}", s.ppl);
    for (i, (a, b)) in s.token_nll.iter().zip(floats(&p["token_nll"])).enumerate() {
        assert!((a - b).abs() <= 1e-3, "{case}: token {i} nll {a} vs {b}");
    }
}

#[test]
fn llama_gqa() {
    golden("llama-gqa");
}

#[test]
fn mistral_sliding_window() {
    golden("mistral-window");
}

#[test]
fn qwen2_qkv_bias_tied() {
    golden("qwen2-bias");
}

#[test]
fn qwen3_qk_norm() {
    golden("qwen3-qknorm");
}

#[test]
fn phi3_fused_projections() {
    golden("phi3-fused");
}

#[test]
fn gpt2_learned_positions() {
    golden("gpt2");
}

#[test]
fn gptneox_partial_rotary_parallel_residual() {
    golden("gptneox-partial-rope");
}

#[test]
fn bloom_alibi() {
    golden("bloom-alibi");
}

#[test]
fn falcon_new_decoder_architecture() {
    golden("falcon-new");
}

#[test]
fn gemma3_local_global() {
    golden("gemma3-local-global");
}

#[test]
fn llama_gqa_from_gguf() {
    golden_gguf("llama-gqa", "llama");
}

#[test]
fn qwen2_from_gguf() {
    golden_gguf("qwen2-bias", "qwen2");
}

#[test]
fn sharded_safetensors_load_identically() {
    let src = fixtures().join("tiny").join("qwen2-bias");
    let dst = std::env::temp_dir().join(format!("turbine-sharded-{}", std::process::id()));
    reshard(&src, &dst, safetensors::Dtype::F32, 3).unwrap();
    std::fs::copy(src.join("golden.json"), dst.join("golden.json")).unwrap();
    check(&dst, &dst, "qwen2-bias (3 shards)");
    let _ = std::fs::remove_dir_all(&dst);
}

/// Half-precision checkpoints load (widened to f32 on the CPU) and stay close to the f32
/// reference: first-step log-probabilities within 0.05 (weight rounding, not kernel error).
#[test]
fn half_precision_checkpoints_load() {
    let src = fixtures().join("tiny").join("llama-gqa");
    let g = read_json(&src.join("golden.json")).unwrap();
    let c = &g["cases"][0];
    for dtype in [safetensors::Dtype::F16, safetensors::Dtype::BF16] {
        let dst = std::env::temp_dir().join(format!("turbine-{dtype:?}-{}", std::process::id()));
        reshard(&src, &dst, dtype, 2).unwrap();
        let mut m = load(&dst, 256).unwrap();
        let prompt = ids(&c["prompt_ids"]);
        let got = log_softmax(&first_step_logits(&mut m, &prompt).unwrap());
        let want = log_softmax(&floats(&c["last_logits"]));
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let tol = if dtype == safetensors::Dtype::F16 { 0.01 } else { 0.05 };
        assert!(worst <= tol, "{dtype:?}: first-step logprob error {worst}");
        let _ = std::fs::remove_dir_all(&dst);
    }
}

/// 16-bit embedding tables stay as the checkpoint stores them (the lookup and a tied LM head
/// read 2 bytes a value) and give exactly the logits of the same table widened to f32: tied
/// heads (Qwen2, GPT-2 with its position table, Gemma 3 with its embedding scale) and an untied
/// one (Llama). On CUDA's tensor cores a tied head's 16-bit product rounds its input to 16 bits,
/// so there the logits are held to that rounding instead (1e-2 of the largest for f16, 4e-2
/// for bf16, as `cuda_vs_cpu`).
#[test]
fn half_precision_tables_match_widened_ones() {
    let rounds_inputs = turbine_tests::backend_rounds_16bit_inputs();
    for name in ["qwen2-bias", "gpt2", "gemma3-local-global", "llama-gqa"] {
        let src = fixtures().join("tiny").join(name);
        let g = read_json(&src.join("golden.json")).unwrap();
        let prompt = ids(&g["cases"][0]["prompt_ids"]);
        for dtype in [safetensors::Dtype::F16, safetensors::Dtype::BF16] {
            let dst = std::env::temp_dir().join(format!("turbine-tables-{name}-{dtype:?}-{}", std::process::id()));
            reshard(&src, &dst, dtype, 1).unwrap();
            let cpu = turbine_kernels_ref::Cpu::new();
            let m = turbine_models::load_with(&cpu, &dst, &turbine_models::precision::Policy::default()).unwrap();
            let d = m.model.decoder().unwrap();
            let stored = if dtype == safetensors::Dtype::F16 { DType::F16 } else { DType::BF16 };
            assert_eq!(d.embed.dtype(), stored, "{name} {dtype:?}");
            assert!(d.pos_embed.as_ref().is_none_or(|p| p.dtype() == stored), "{name} {dtype:?}");
            let got = first_step_logits(&mut load(&dst, 256).unwrap(), &prompt).unwrap();
            let want = first_step_logits(&mut load_widened_tables(&dst, 256).unwrap(), &prompt).unwrap();
            if rounds_inputs {
                let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
                let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max) / scale;
                let tol = if dtype == safetensors::Dtype::F16 { 1e-2 } else { 4e-2 };
                assert!(err <= tol, "{name} {dtype:?}: relative logit error {err:.2e} > {tol:.0e}");
            } else {
                assert_eq!(got, want, "{name} {dtype:?}");
            }
            let _ = std::fs::remove_dir_all(&dst);
        }
    }
}

/// Our own variants (`cargo xtask gen-fixtures`): configurations the public fixtures do not cover.
fn variant(name: &str) {
    let dir = fixtures().join("variants").join(name);
    check(&dir, &dir, name);
}

#[test]
fn variant_bloom_six_heads() {
    variant("bloom-6heads");
}

#[test]
fn variant_falcon_7b_style() {
    variant("falcon-7b-style");
}

#[test]
fn variant_falcon_alibi() {
    variant("falcon-alibi");
}

#[test]
fn variant_gemma3_window_shorter_than_prompt() {
    variant("gemma3-short-window");
}

#[test]
fn variant_gpt2_relu() {
    variant("gpt2-relu-untied");
}

#[test]
fn variant_gptneox_sequential_residual() {
    variant("gptneox-sequential");
}

#[test]
fn variant_llama_mha_head_dim_llama3_rope() {
    variant("llama-mha-headdim");
}

#[test]
fn variant_phi3_partial_rotary_window() {
    variant("phi3-partial-window");
}

#[test]
fn variant_qwen2_window_on_some_layers() {
    variant("qwen2-windowed");
}

#[test]
fn variant_qwen2_yarn_rope() {
    variant("qwen2-yarn");
}

#[test]
fn variant_llama_dynamic_rope() {
    variant("llama-dynamic");
}

#[test]
fn variant_mistral_linear_rope() {
    variant("mistral-linear");
}

/// GGUF files made from the tiny fixtures by llama.cpp's own converter
/// (`xtask/gen/llama_cpp_gguf.py`), checked against the same transformers references.
fn llama_cpp_gguf(case: &str) {
    let dir = fixtures().join("tiny").join(case);
    check(&dir, &fixtures().join("gguf").join(format!("{case}.gguf")), case);
}

#[test]
fn gguf_gpt2_from_llama_cpp() {
    llama_cpp_gguf("gpt2");
}

#[test]
fn gguf_bloom_from_llama_cpp() {
    llama_cpp_gguf("bloom-alibi");
}

#[test]
fn gguf_falcon_from_llama_cpp() {
    llama_cpp_gguf("falcon-new");
}

#[test]
fn gguf_gptneox_from_llama_cpp() {
    llama_cpp_gguf("gptneox-partial-rope");
}

/// Llama 3.x rope scaling in a GGUF file lives in the `rope_freqs` tensor (issue 19 found it
/// unread): the converted file must match transformers as the folder does.
#[test]
fn llama3_rope_scaling_from_gguf_rope_freqs() {
    golden_gguf_of(&fixtures().join("variants").join("llama-mha-headdim"), "llama");
}

/// Issue 19: a checkpoint with more layers than its config says (here: the config cut to one
/// of two layers) is refused, naming the unread tensors, as a folder and as GGUF; allowing
/// unused weights loads it.
#[test]
fn extra_layers_are_refused_not_cut() {
    let src = fixtures().join("tiny").join("llama-gqa");
    let dir = std::env::temp_dir().join(format!("turbine-extra-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg = read_json(&src.join("config.json")).unwrap();
    cfg["num_hidden_layers"] = 1.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let gguf = dir.join("cut.gguf");
    turbine_tests::gguf::convert(&dir, "llama", &gguf).unwrap();
    let allow = turbine_models::precision::Policy { allow_unused_weights: true, ..Default::default() };
    for (path, unread) in [(&dir, "model.layers.1.input_layernorm.weight"), (&gguf, "blk.1.attn_k.weight")] {
        let e = load(path, 64).err().expect("a checkpoint with unused layers loads").to_string();
        assert!(e.contains("architecture does not use") && e.contains(unread), "{e}");
        assert!(e.contains("--allow-unused-weights"), "{e}");
        let mut m = load_with(path, 64, &allow).unwrap();
        assert_eq!(greedy(&mut m, &[1, 2, 3], 3).unwrap().len(), 3);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
