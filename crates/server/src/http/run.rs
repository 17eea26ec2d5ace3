//! The server's life: load behind an open port, serve, drain on shutdown.

use std::future::{Future, IntoFuture};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use super::{service, AppState, LimitedListener, Server};
use crate::config::ServeConfig;

/// Serves `cfg`'s model on `listener` until `shutdown` completes (or the model fails to load).
///
/// The listener answers at once: `/health` is 200 from the start and `/ready` turns 200 when the
/// model has loaded (the API answers 503 with `Retry-After` until then). After `shutdown`, no new
/// connection is accepted and new generation requests get 503; running requests have
/// `server.drain_timeout_s` to finish, then they are cancelled (each still gets its answer, cut
/// short, with finish reason `cancelled`). Returns once every connection has closed.
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
    let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = {
        let (server, failure) = (server.clone(), failure.clone());
        async move {
            let failed = async {
                match load.await {
                    Ok(Ok(())) => std::future::pending().await,
                    Ok(Err(e)) => e,
                    Err(e) => anyhow::anyhow!("loading the model stopped: {e}"),
                }
            };
            tokio::select! {
                _ = shutdown => eprintln!("turbine: shutting down; letting running requests finish"),
                e = failed => *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e),
            }
            server.drain();
            let _ = drain_tx.send(());
        }
    };
    let http = axum::serve(LimitedListener::new(listener, cfg.limits.max_connections), service(server.clone()))
        .with_graceful_shutdown(stop)
        .into_future();
    tokio::pin!(http);
    let drain = Duration::from_secs_f64(cfg.server.drain_timeout_s);
    let deadline = async {
        if drain_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        r = &mut http => r.context("server error")?,
        _ = deadline => {
            if let Some(s) = server.state() {
                eprintln!("turbine: drain timeout ({drain:?}) reached; cancelling the requests still running");
                s.engine.cancel_all();
            }
            // The cancelled requests' answers go out; then stop waiting for slow clients.
            if tokio::time::timeout(Duration::from_secs(5), &mut http).await.is_err() {
                eprintln!("turbine: some connections did not close; exiting anyway");
            }
        }
    }
    if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e.context("the model could not be loaded"));
    }
    eprintln!("turbine: stopped");
    Ok(())
}
