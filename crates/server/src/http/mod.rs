//! `turbine serve`: the OpenAI-compatible HTTP API over the in-flight batching engine.

mod error;
mod handlers;
mod protocol;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use turbine_batcher::Engine;
use turbine_models::tokenizer::TextTokenizer;

pub use error::ApiError;

/// What every handler shares.
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// The model's tokenizer (and chat template).
    pub tok: Arc<TextTokenizer>,
    /// The name clients use for the model.
    pub model: String,
    /// End-of-sequence ids.
    pub eos: Vec<u32>,
    /// Longest prompt + output.
    pub max_len: usize,
    /// Creation time of the model entry (seconds since the epoch).
    pub created: u64,
}

impl AppState {
    /// Loads the model and starts the engine (with a detokenizer, so stop strings and text
    /// deltas work).
    pub fn load(
        model: Option<&str>,
        backend: &str,
        kv: crate::setup::KvSize,
        cfg: turbine_batcher::EngineConfig,
    ) -> anyhow::Result<Self> {
        let l = crate::setup::load_runner(model, backend, kv)?;
        let tok = Arc::new(l.tok);
        let cache = l.runner.cache();
        let max_len = l.runner.spec().max_positions.min(cache.num_blocks * cache.block_size);
        let name = match model {
            Some(m) if turbine_models::catalog::known(m).is_some() => m.to_string(),
            None => turbine_models::catalog::DEFAULT_MODEL.to_string(),
            Some(_) => l.path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned()),
        };
        let detok = tok.clone();
        let core = turbine_batcher::EngineCore::new(l.runner, cfg)
            .with_detokenizer(Box::new(move |ids| detok.decode(ids, true).unwrap_or_default()));
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(AppState { engine: Engine::start(core), tok, model: name, eos: l.eos, max_len, created })
    }
}

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(handlers::health))
        .route("/v1/models", get(handlers::models))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/chat/completions", post(handlers::chat))
        .with_state(state)
}
