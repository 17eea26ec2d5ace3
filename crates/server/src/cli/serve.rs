//! `turbine serve`: the OpenAI-compatible HTTP server.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use turbine_server::http::{router, AppState};

use super::{EngineArgs, ModelArgs};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to bind (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    #[command(flatten)]
    engine: EngineArgs,
    /// Require this API key (`Authorization: Bearer KEY`); repeatable. Also read from
    /// `TURBINE_API_KEY`.
    #[arg(long)]
    api_key: Vec<String>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let mut state = AppState::load(a.model.model.as_deref(), &a.model.backend, a.engine.kv(), a.engine.config())?;
    state.api_keys = a.api_key.clone();
    if let Ok(k) = std::env::var("TURBINE_API_KEY") {
        if !k.is_empty() {
            state.api_keys.push(k);
        }
    }
    let state = Arc::new(state);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener =
            tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!("turbine: serving {} on http://{}", state.model, listener.local_addr()?);
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async {
                shutdown_signal().await;
                eprintln!("turbine: shutting down; letting running requests finish");
            })
            .await
            .context("server error")
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
