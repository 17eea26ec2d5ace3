//! `turbine serve`: the OpenAI-compatible HTTP API over the in-flight batching engine.

mod error;
mod handlers;
pub mod metrics;
mod protocol;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
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
    /// Accepted API keys; empty means no authentication.
    pub api_keys: Vec<String>,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
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
        Ok(AppState {
            engine: Engine::start(core),
            tok,
            model: name,
            eos: l.eos,
            max_len,
            created,
            api_keys: Vec::new(),
            metrics: Default::default(),
        })
    }
}

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// Constant-time comparison (the time does not depend on where the strings differ).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts every request by endpoint and status.
async fn count(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let endpoint = match path.as_str() {
        "/health"
        | "/metrics"
        | "/v1/models"
        | "/v1/completions"
        | "/v1/chat/completions"
        | "/tokenize"
        | "/detokenize" => path,
        _ => "other".to_string(),
    };
    s.metrics.request(&endpoint, resp.status().as_u16());
    resp
}

/// Rejects requests without a configured API key (`Authorization: Bearer KEY`) with 401.
async fn auth(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if s.api_keys.is_empty() || matches!(req.uri().path(), "/health" | "/metrics") {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Check every key, so the time does not tell which one matched.
    let ok = s.api_keys.iter().fold(false, |acc, k| same(k.as_bytes(), given.as_bytes()) | acc);
    if ok {
        next.run(req).await
    } else {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or invalid API key".into(),
            kind: "authentication_error",
            param: None,
        }
        .into_response()
    }
}

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(handlers::health))
        .route("/v1/models", get(handlers::models))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/chat/completions", post(handlers::chat))
        .route("/tokenize", post(handlers::tokenize))
        .route("/detokenize", post(handlers::detokenize))
        .route("/metrics", get(handlers::metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}
