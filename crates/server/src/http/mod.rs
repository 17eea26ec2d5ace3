//! `turbine serve`: the OpenAI-compatible HTTP API over the in-flight batching engine.
//!
//! Two layers of routes: [`service`] answers `/health` and `/ready` from the first moment (while
//! the model loads and while the server drains) and hands everything else to [`router`], the API
//! proper, once the model is [`Server::set_ready`].

mod error;
mod handlers;
mod listener;
pub mod metrics;
mod protocol;
mod run;
mod tools;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower::ServiceExt;
use turbine_batcher::Engine;
use turbine_models::tokenizer::TextTokenizer;

use crate::config::{Limits, ServeConfig};
pub use error::ApiError;
pub use listener::{serve_connections, Slots};
pub use run::serve;

/// What every handler shares.
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// The model's tokenizer (and chat template).
    pub tok: Arc<TextTokenizer>,
    /// Each token's own text, for log-probabilities (decoded once per id).
    pub token_texts: TokenTexts,
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
    /// What one request may ask for.
    pub limits: Limits,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
    /// How slowly a request body may arrive.
    pub body_pace: BodyPace,
}

/// Each token's own text (special tokens included), decoded the first time it is asked for and
/// kept: log-probabilities name every token and its alternatives by their text, and after a
/// token's first use that is a lookup.
pub struct TokenTexts {
    tok: Arc<TextTokenizer>,
    texts: Vec<std::sync::OnceLock<String>>,
}

impl TokenTexts {
    /// An empty table over the tokenizer's vocabulary.
    pub fn new(tok: Arc<TextTokenizer>) -> Self {
        let texts = (0..tok.vocab_size()).map(|_| std::sync::OnceLock::new()).collect();
        TokenTexts { tok, texts }
    }

    /// The text of token `id` (empty for an id the tokenizer cannot decode).
    pub fn get(&self, id: u32) -> std::borrow::Cow<'_, str> {
        let decode = || self.tok.decode(&[id], false).unwrap_or_default();
        match self.texts.get(id as usize) {
            Some(cell) => std::borrow::Cow::Borrowed(cell.get_or_init(decode).as_str()),
            None => std::borrow::Cow::Owned(decode()),
        }
    }
}

/// How slowly a request body may arrive: after `grace`, at `min_rate` bytes per second on average.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    /// Time allowed beyond what `min_rate` allows for the bytes received.
    pub grace: std::time::Duration,
    /// Bytes per second.
    pub min_rate: f64,
}

impl AppState {
    /// Loads the model and starts the engine (with a detokenizer, so stop strings and text
    /// deltas work), as `cfg` says.
    pub fn load(cfg: &ServeConfig) -> anyhow::Result<Self> {
        cfg.validate()?;
        let model = Some(cfg.model.path.as_str());
        let policy = cfg.policy()?;
        let l = crate::setup::load_runner_with(model, &cfg.model.backend, cfg.engine.kv(), &policy)?;
        let speculation =
            crate::speculation::speculation(&cfg.speculative, &cfg.model.backend, cfg.engine.kv(), &l.tok)?;
        let tok = Arc::new(l.tok);
        let max_len = l.runner.context_len();
        let name = match &cfg.model.served_name {
            Some(n) => n.clone(),
            None if turbine_models::catalog::known(&cfg.model.path).is_some() => cfg.model.path.clone(),
            None => l.path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned()),
        };
        let detok = tok.clone();
        let mut core = turbine_batcher::EngineCore::new(l.runner, cfg.engine.config())
            .with_detokenizer(Box::new(move |ids| detok.decode(ids, true).unwrap_or_default()));
        if let Some((spec, proposer)) = speculation {
            core = core.with_speculation(spec, proposer);
        }
        let core = core.with_constraints(Box::new(crate::constraint::LlgCompiler::new(&tok, &l.eos)?));
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(AppState {
            engine: Engine::start(core),
            token_texts: TokenTexts::new(tok.clone()),
            tok,
            model: name,
            eos: l.eos,
            max_len,
            created,
            api_keys: cfg.server.api_keys.clone(),
            limits: cfg.limits.clone(),
            metrics: Default::default(),
            body_pace: BodyPace {
                grace: std::time::Duration::from_secs_f64(cfg.server.body_timeout_s),
                min_rate: cfg.server.body_min_rate,
            },
        })
    }
}

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The model is loading: `/ready` is 503, the API answers 503 with `Retry-After`.
    Loading,
    /// Serving.
    Ready,
    /// Shutting down: running requests finish; new generation requests get 503.
    Draining,
}

impl Phase {
    /// `loading`, `ready` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Loading => "loading",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        }
    }
}

/// The server around the API: its phase and, once loaded, the model's state and routes.
#[derive(Default)]
pub struct Server {
    phase: AtomicU8,
    app: OnceLock<(Arc<AppState>, Router)>,
}

impl Server {
    /// A server whose model is still loading.
    pub fn new() -> Arc<Self> {
        Arc::new(Server::default())
    }

    /// A server that is ready with `state` (for tests and embedding).
    pub fn ready(state: Arc<AppState>) -> Arc<Self> {
        let s = Self::new();
        s.set_ready(state);
        s
    }

    /// The model has loaded: serve it (unless the server is already draining).
    pub fn set_ready(&self, state: Arc<AppState>) {
        let routes = router(state.clone());
        if self.app.set((state, routes)).is_ok() {
            let _ = self.phase.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// Stop taking new generation requests; `/ready` turns 503.
    pub fn drain(&self) {
        self.phase.store(2, Ordering::SeqCst);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Loading,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// The model's state, once loaded.
    pub fn state(&self) -> Option<&Arc<AppState>> {
        self.app.get().map(|(s, _)| s)
    }
}

/// The whole HTTP service: `/health` (liveness, always 200), `/ready` (200 only while serving),
/// and the API of [`router`] once the model has loaded.
pub fn service(server: Arc<Server>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .fallback(forward)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(server)
}

async fn health(State(s): State<Arc<Server>>) -> Response {
    Json(json!({"status": "ok", "phase": s.phase().as_str()})).into_response()
}

async fn ready(State(s): State<Arc<Server>>) -> Response {
    let phase = s.phase();
    let body = Json(json!({"ready": phase == Phase::Ready, "phase": phase.as_str()}));
    if phase == Phase::Ready {
        body.into_response()
    } else {
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        r.headers_mut().insert(header::RETRY_AFTER, 5.into());
        r
    }
}

/// Hands a request to the API routes, or says why it cannot be served now.
async fn forward(State(s): State<Arc<Server>>, req: Request) -> Response {
    let Some((_, routes)) = s.app.get() else {
        return ApiError::unavailable("the model is still loading; try again shortly", 5).into_response();
    };
    if s.phase() == Phase::Draining && req.method() == Method::POST && req.uri().path().starts_with("/v1/") {
        return ApiError::unavailable("the server is shutting down", 5).into_response();
    }
    match routes.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Constant-time comparison (the time does not depend on where the strings differ).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts every request by endpoint and status.
async fn count(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let endpoint = match path.as_str() {
        "/metrics" | "/v1/models" | "/v1/completions" | "/v1/chat/completions" | "/tokenize" | "/detokenize" => path,
        _ => "other".to_string(),
    };
    s.metrics.request(&endpoint, resp.status().as_u16());
    resp
}

/// Rejects requests without a configured API key (`Authorization: Bearer KEY`) with 401.
async fn auth(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if s.api_keys.is_empty() || req.uri().path() == "/metrics" {
        return next.run(req).await;
    }
    // The scheme is case-insensitive (RFC 9110 §11.1); the key is not.
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, key)| key.trim_start());
    // Check every key, so the time does not tell which one matched.
    let ok = s.api_keys.iter().fold(false, |acc, k| same(k.as_bytes(), given.as_bytes()) | acc);
    if ok {
        next.run(req).await
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", "missing or invalid API key").into_response()
    }
}

/// Reads the whole request body before the handlers see it. A declared `Content-Length` over
/// `limits.max_body_bytes` is answered 413 at once, a body that grows over it 413 as soon as it
/// does; a body slower than [`BodyPace`] allows (its grace plus its bytes at the minimum rate)
/// 408. Both close the connection.
async fn read_body(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    use http_body_util::BodyExt;
    let limit = s.limits.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::too_large(limit).into_response();
    }
    let (parts, mut body) = req.into_parts();
    let start = tokio::time::Instant::now();
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    loop {
        let allowed = s.body_pace.grace + std::time::Duration::from_secs_f64(bytes.len() as f64 / s.body_pace.min_rate);
        let frame = match tokio::time::timeout_at(start + allowed, body.frame()).await {
            Err(_) => {
                return ApiError::body_timeout(format!(
                    "the request body arrived too slowly ({} bytes in {:.0} s; server.body_timeout_s and \
                     server.body_min_rate)",
                    bytes.len(),
                    start.elapsed().as_secs_f64()
                ))
                .into_response()
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return ApiError::bad_request(format!("cannot read the request body: {e}")).into_response()
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                return ApiError::too_large(limit).into_response();
            }
            bytes.extend_from_slice(&data);
        }
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// The API routes over a loaded model (without `/health` and `/ready`, which [`service`] adds).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models", get(handlers::models))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/chat/completions", post(handlers::chat))
        .route("/tokenize", post(handlers::tokenize))
        .route("/detokenize", post(handlers::detokenize))
        .route("/metrics", get(handlers::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // read_body enforces limits.max_body_bytes before any extractor reads the body.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("no endpoint {} {}", req.method(), req.uri().path()),
    )
}
