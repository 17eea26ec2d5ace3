//! The server's life: load behind an open port, serve, drain on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use super::listener::until;
use super::{serve_connections, service, AppState, Server, Slots};
use crate::config::ServeConfig;

/// Serves `cfg`'s model on `listener` until `shutdown` completes (or the model fails to load).
///
/// The listener answers at once: `/health` is 200 from the start and `/ready` turns 200 when the
/// model has loaded (the API answers 503 with `Retry-After` until then). After `shutdown`, new
/// generation requests get 503 and `/ready` 503 (connections are still accepted, so probes get
/// their answer); running requests have `server.drain_timeout_s` to finish, then they are
/// cancelled (each still gets its answer, cut short, with finish reason `cancelled`). Once no
/// request is in flight the server stops accepting, closes its connections and returns.
pub async fn serve(
    cfg: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    eprintln!("turbine: listening on http://{}; loading {}", listener.local_addr()?, cfg.model.path);
    let server = Server::new();
    let load = {
        let (server, cfg) = (server.clone(), cfg.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            let state = AppState::load(&cfg)?;
            eprintln!("turbine: ready, serving {:?}", state.model);
            server.set_ready(Arc::new(state));
            Ok(())
        })
    };
    let slots = Slots::new(cfg.limits.max_connections);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http = tokio::spawn(serve_connections(
        listener,
        service(server.clone()),
        slots.clone(),
        Duration::from_secs_f64(cfg.server.header_timeout_s),
        stop_rx,
        Duration::from_secs(5),
    ));
    let failed = async {
        match load.await {
            Ok(Ok(())) => std::future::pending().await,
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!("loading the model stopped: {e}"),
        }
    };
    let mut failure = None;
    tokio::select! {
        _ = shutdown => eprintln!("turbine: shutting down; letting running requests finish"),
        e = failed => failure = Some(e),
    }
    server.drain();
    let drain = Duration::from_secs_f64(cfg.server.drain_timeout_s);
    if tokio::time::timeout(drain, until(|| slots.in_flight() == 0)).await.is_err() {
        if let Some(s) = server.state() {
            eprintln!("turbine: drain timeout ({drain:?}) reached; cancelling the requests still running");
            s.engine.cancel_all();
        }
        // The cancelled requests' answers go out; then stop waiting for slow clients.
        if tokio::time::timeout(Duration::from_secs(5), until(|| slots.in_flight() == 0)).await.is_err() {
            eprintln!("turbine: some requests did not finish; closing their connections");
        }
    }
    let _ = stop_tx.send(true);
    http.await.context("the connection loop stopped")?;
    if let Some(e) = failure {
        return Err(e.context("the model could not be loaded"));
    }
    eprintln!("turbine: stopped");
    Ok(())
}
