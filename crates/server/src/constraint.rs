//! Structured outputs on llguidance: the [`ConstraintCompiler`] the engine uses to turn a
//! request's [`ConstraintSpec`] into token masks. llguidance (a Rust crate, MIT) does the hard
//! part, Earley parsing over the tokenizer's byte trie, so Turbine writes no grammar engine.
//!
//! The token trie comes from the model's tokenizer in `tokenizer.json` form (one built from a
//! GGUF vocabulary is serialised the same way); the model's end-of-sequence ids are the trie's
//! EOS tokens, so a mask allows them exactly when the output may end there.

use std::sync::Arc;

use anyhow::{Context, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use turbine_batcher::{Constraint, ConstraintCompiler, ConstraintSpec, TokenMask};
use turbine_models::tokenizer::TextTokenizer;

/// The token trie, as llguidance asks for it.
struct Env {
    trie: TokTrie,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.trie.greedy_tokenize(s)
    }
}

/// Compiles constraints for one tokenizer (build it once per model: it indexes the vocabulary).
pub struct LlgCompiler {
    factory: Arc<ParserFactory>,
}

impl LlgCompiler {
    /// The compiler for `tok`, whose outputs end with any of `eos`.
    pub fn new(tok: &TextTokenizer, eos: &[u32]) -> Result<Self> {
        let json: serde_json::Value =
            serde_json::from_str(&tok.to_json()?).context("the tokenizer's JSON form does not parse")?;
        let words =
            llguidance::token_bytes_from_tokenizer_json(&json).context("reading the tokenizer's token bytes")?;
        let eos = if eos.is_empty() { tok.eos_ids.clone() } else { eos.to_vec() };
        let info = TokRxInfo::new(words.len() as u32, eos.first().copied().unwrap_or(0));
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
        let env: TokEnv = Arc::new(Env { trie });
        let factory = ParserFactory::new_simple(&env).context("indexing the vocabulary for structured outputs")?;
        Ok(LlgCompiler { factory: Arc::new(factory) })
    }
}

/// Whitespace between JSON tokens: any kind, as pretty-printed JSON has it, but at most 24
/// characters a gap, so that a model cannot fill its output with blanks (a schema's own
/// `x-guidance` options win).
fn bounded_whitespace(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance").or_insert_with(|| serde_json::json!({"whitespace_pattern": r"[\x20\x0A\x0D\x09]{1,24}"}));
    }
    schema
}

/// The grammar a spec stands for; the error names what is wrong with it.
fn grammar(spec: &ConstraintSpec) -> Result<TopLevelGrammar, String> {
    Ok(match spec {
        ConstraintSpec::JsonSchema(text) => {
            let schema: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("the JSON schema is not JSON: {e}"))?;
            if !schema.is_object() && !schema.is_boolean() {
                return Err("the JSON schema must be an object".into());
            }
            TopLevelGrammar::from_json_schema(bounded_whitespace(schema))
        }
        ConstraintSpec::JsonObject => {
            TopLevelGrammar::from_json_schema(bounded_whitespace(serde_json::json!({"type": "object"})))
        }
        ConstraintSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
        ConstraintSpec::Choice(options) => {
            if options.is_empty() {
                return Err("the choice list is empty".into());
            }
            // A Lark rule of quoted literals (JSON string syntax is Lark's).
            let alternatives: Vec<String> =
                options.iter().map(|o| serde_json::to_string(o).expect("a string serialises")).collect();
            TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
        }
        ConstraintSpec::Grammar(g) => TopLevelGrammar::from_lark_or_grammar_list(g).map_err(|e| e.to_string())?,
    })
}

impl ConstraintCompiler for LlgCompiler {
    fn compile(&self, spec: &ConstraintSpec) -> Result<Box<dyn Constraint>, String> {
        let g = grammar(spec)?;
        let parser = self.factory.create_parser(g).map_err(|e| format!("invalid {}: {e}", spec.kind()))?;
        let m = Matcher::new(Ok(parser));
        match m.get_error() {
            Some(e) => Err(format!("invalid {}: {e}", spec.kind())),
            None => Ok(Box::new(LlgConstraint(m))),
        }
    }
}

/// One output's matcher.
struct LlgConstraint(Matcher);

impl Constraint for LlgConstraint {
    fn allowed(&mut self) -> Result<TokenMask, String> {
        let mask = self.0.compute_mask_or_eos().map_err(|e| e.to_string())?;
        Ok(mask.as_slice().to_vec())
    }

    fn consume(&mut self, token: u32) -> Result<(), String> {
        self.0.consume_token(token).map_err(|e| e.to_string())
    }

    fn finished(&mut self) -> bool {
        self.0.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> TextTokenizer {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny/llama-gqa");
        TextTokenizer::from_hf_dir(std::path::Path::new(dir)).unwrap()
    }

    /// Walks a constraint greedily: the lowest allowed non-EOS token each time, until it may end.
    fn walk(c: &mut dyn Constraint, eos: u32, tok: &TextTokenizer) -> String {
        let mut ids = Vec::new();
        for _ in 0..200 {
            let mask = c.allowed().unwrap();
            let allowed = |t: u32| mask.get(t as usize / 32).is_some_and(|m| m >> (t % 32) & 1 == 1);
            if allowed(eos) || c.finished() {
                break;
            }
            let t = (0..mask.len() as u32 * 32).find(|&t| allowed(t)).expect("some token allowed");
            c.consume(t).unwrap();
            ids.push(t);
        }
        tok.decode(&ids, true).unwrap()
    }

    #[test]
    fn specs_compile_to_masks_that_spell_their_language() {
        let tok = tiny();
        // The fixture's config names <|endoftext|>, id 0, as EOS.
        let eos = 0;
        let c = LlgCompiler::new(&tok, &[eos]).unwrap();
        let mut choice = c.compile(&ConstraintSpec::Choice(vec!["yes".into(), "no \"way\"".into()])).unwrap();
        let out = walk(choice.as_mut(), eos, &tok);
        assert!(out == "yes" || out == "no \"way\"", "{out:?}");
        let mut rx = c.compile(&ConstraintSpec::Regex("[0-9]{3}-x".into())).unwrap();
        let out = walk(rx.as_mut(), eos, &tok);
        assert!(out.len() == 5 && out[..3].bytes().all(|b| b.is_ascii_digit()) && out.ends_with("-x"), "{out:?}");
        let schema = r#"{"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": false}"#;
        let mut js = c.compile(&ConstraintSpec::JsonSchema(schema.into())).unwrap();
        let out = walk(js.as_mut(), eos, &tok);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
        // An integer (the walk takes the lowest tokens: "-0" is one).
        assert!(v["n"].as_f64().is_some_and(|x| x.fract() == 0.0), "{out}");
        for (bad, needle) in [
            (ConstraintSpec::JsonSchema("{".into()), "not JSON"),
            (ConstraintSpec::JsonSchema("[1]".into()), "must be an object"),
            (ConstraintSpec::Regex("(".into()), "invalid regex"),
            (ConstraintSpec::Grammar("start: undefined_rule".into()), "undefined_rule"),
            (ConstraintSpec::Choice(vec![]), "empty"),
        ] {
            let e = c.compile(&bad).err().unwrap_or_else(|| panic!("{bad:?} compiled"));
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }
}
