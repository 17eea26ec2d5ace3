//! Speculative decoding as `[speculative]` / `--speculative` ask for it: the engine's settings
//! and the proposer (prompt lookup, or a draft model loaded beside the model).

use anyhow::{bail, Result};
use turbine_models::precision::Policy;
use turbine_models::tokenizer::TextTokenizer;

use crate::config::SpeculativeSection;
use crate::setup::{load_runner_with, session, KvSize, Session};

/// The speculative decoding `sec` asks for, for a model on `backend` with tokenizer `tok`:
/// the engine's settings and the proposer, or `None` when off. A draft model is loaded on the
/// same backend with a KV cache of `kv`, and must share the tokenizer (same vocabulary, same ids
/// for a probe text), else this fails naming both.
pub fn speculation(
    sec: &SpeculativeSection,
    backend: &str,
    kv: KvSize,
    tok: &TextTokenizer,
) -> Result<Option<(turbine_batcher::SpecConfig, Box<dyn turbine_batcher::Proposer>)>> {
    sec.validate()?;
    let Some(cfg) = sec.config() else { return Ok(None) };
    let proposer: Box<dyn turbine_batcher::Proposer> = match sec.method.as_str() {
        "ngram" => Box::new(turbine_batcher::NgramProposer { min_n: sec.ngram_min, max_n: sec.ngram_max }),
        _ => {
            let name = sec.draft_model.as_deref().unwrap_or_default();
            let d = load_runner_with(Some(name), backend, kv, &Policy::default())
                .map_err(|e| anyhow::anyhow!("the draft model {name}: {e:#}"))?;
            let probe = "Speculative decoding: 12 drafts, 3 accepted (25%) — naïve café {\"x\": [1, 2]}\n\tdef f():";
            let (a, b) = (tok.encode(probe, false)?, d.tok.encode(probe, false)?);
            if d.tok.vocab_size() != tok.vocab_size() || a != b {
                bail!(
                    "the draft model {name} has another tokenizer ({} tokens, probe text → {} ids) than the model ({} \
                     tokens, {} ids); a draft model must share the model's tokenizer",
                    d.tok.vocab_size(),
                    b.len(),
                    tok.vocab_size(),
                    a.len()
                );
            }
            eprintln!("turbine: draft model {} loaded in {:.0} ms", d.path.display(), d.load_ms);
            Box::new(turbine_batcher::DraftModel::new(d.runner))
        }
    };
    Ok(Some((cfg, proposer)))
}

/// A [`Session`] of the model that speculates as `spec` says.
pub fn load(
    model: Option<&str>,
    backend: &str,
    kv: KvSize,
    policy: &Policy,
    spec: &SpeculativeSection,
) -> Result<Session> {
    let l = load_runner_with(model, backend, kv, policy)?;
    let speculation = speculation(spec, backend, kv, &l.tok)?;
    Ok(session(l, speculation))
}
