//! `turbine serve`: the OpenAI-compatible HTTP server ([`turbine_server::http::serve`]) until
//! SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use turbine_server::config::ServeConfig;

use super::{EngineArgs, SpecArgs};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML configuration file (see turbine.example.toml); flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the configuration that would run (API keys redacted) and exit.
    #[arg(long)]
    print_config: bool,
    /// A model folder, a .gguf file, or a known name (default: smollm2-135m-instruct).
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// The name clients send as "model" (default: the known name or the file name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Kernel backend (default cpu).
    #[arg(long)]
    backend: Option<String>,
    /// How the block projections are stored and multiplied (default auto: as the checkpoint
    /// stores them; f32, f16, bf16, fp8, fp8-weight, int8-weight).
    #[arg(long)]
    dtype: Option<String>,
    /// Projections that keep the checkpoint's precision (qkv, o, up, down, layer:N, ROLE@N);
    /// repeatable, added to the config file's; `none` for no exceptions [default: fp8 and
    /// fp8-weight keep the model's measured most sensitive blocks, else its last block].
    #[arg(long)]
    keep: Vec<String>,
    /// 8-bit formats: exact outlier input channels per projection (overrides `[model] outliers`;
    /// default: 16 for fp8, fp8-weight and int8-weight, else 0).
    #[arg(long)]
    outliers: Option<usize>,
    /// Load a checkpoint that holds tensors the architecture does not use (ignoring them).
    #[arg(long)]
    allow_unused_weights: bool,
    /// A precision policy file (TOML, as `generate --precision`); --dtype, --keep, --outliers
    /// and --kv-dtype override its keys.
    #[arg(long, value_name = "FILE")]
    precision: Option<String>,
    /// Address to bind (default 127.0.0.1, loopback only).
    #[arg(long)]
    host: Option<String>,
    /// Port (default 8000; 0 picks a free one).
    #[arg(long)]
    port: Option<u16>,
    /// Require this API key (`Authorization: Bearer KEY`); repeatable. `TURBINE_API_KEY` adds one.
    #[arg(long)]
    api_key: Vec<String>,
    /// Seconds running requests get to finish after SIGINT/SIGTERM (default 30).
    #[arg(long)]
    drain_timeout: Option<f64>,
    /// Seconds a client has to send a request header, also between keep-alive requests (default 30).
    #[arg(long)]
    header_timeout: Option<f64>,
    /// Seconds of grace for a request body beyond --body-min-rate (default 30; then 408).
    #[arg(long)]
    body_timeout: Option<f64>,
    /// Slowest request body accepted, bytes per second (default 1024).
    #[arg(long)]
    body_min_rate: Option<f64>,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// KV cache storage: f32, fp8 (FP8 E4M3) or int8 (about 3.8 times the tokens in the same bytes)
    /// [default: f32].
    #[arg(long)]
    kv_dtype: Option<String>,
    /// Most requests waiting to start before new ones get 429 (default 256).
    #[arg(long)]
    max_waiting: Option<usize>,
    /// Largest request body in bytes (default 4 MiB).
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Most choices per prompt, `n` (default 16).
    #[arg(long)]
    max_n: Option<usize>,
    /// Largest max_tokens a request may ask for (default 0: up to the context).
    #[arg(long)]
    limit_max_tokens: Option<usize>,
    /// Longest prompt in tokens (default 0: up to the context).
    #[arg(long)]
    limit_prompt_tokens: Option<usize>,
    /// Most open client connections (default 1024; the longest-idle one gives way to a new client).
    #[arg(long)]
    max_connections: Option<usize>,
}

impl ServeArgs {
    /// Defaults, then the file, then the flags, then `TURBINE_API_KEY`.
    fn resolve(&self) -> Result<ServeConfig> {
        let mut c = match &self.config {
            Some(p) => ServeConfig::read(p)?,
            None => ServeConfig::default(),
        };
        fn set<T: Clone>(dst: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *dst = v.clone();
            }
        }
        set(&mut c.model.path, &self.model);
        if self.served_model_name.is_some() {
            c.model.served_name = self.served_model_name.clone();
        }
        set(&mut c.model.backend, &self.backend);
        set(&mut c.model.dtype, &self.dtype);
        // `--keep none` replaces the config's exceptions; other names add to them.
        if self.keep.iter().any(|k| k == "none") {
            c.model.keep = self.keep.clone();
        } else {
            c.model.keep.extend(self.keep.iter().cloned());
        }
        if self.outliers.is_some() {
            c.model.outliers = self.outliers;
        }
        c.model.allow_unused_weights |= self.allow_unused_weights;
        if self.precision.is_some() {
            c.model.precision = self.precision.clone();
        }
        set(&mut c.server.host, &self.host);
        set(&mut c.server.port, &self.port);
        set(&mut c.server.drain_timeout_s, &self.drain_timeout);
        set(&mut c.server.header_timeout_s, &self.header_timeout);
        set(&mut c.server.body_timeout_s, &self.body_timeout);
        set(&mut c.server.body_min_rate, &self.body_min_rate);
        c.server.api_keys.extend(self.api_key.iter().cloned());
        if let Ok(k) = std::env::var("TURBINE_API_KEY") {
            if !k.is_empty() {
                c.server.api_keys.push(k);
            }
        }
        c.engine = self.engine.apply(c.engine);
        c.speculative = self.spec.apply(c.speculative);
        set(&mut c.engine.kv_dtype, &self.kv_dtype);
        set(&mut c.engine.max_waiting, &self.max_waiting);
        set(&mut c.limits.max_body_bytes, &self.max_body_bytes);
        set(&mut c.limits.max_n, &self.max_n);
        set(&mut c.limits.max_tokens, &self.limit_max_tokens);
        set(&mut c.limits.max_prompt_tokens, &self.limit_prompt_tokens);
        set(&mut c.limits.max_connections, &self.max_connections);
        c.validate()?;
        Ok(c)
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    let cfg = a.resolve()?;
    if a.print_config {
        print!("{}", cfg.to_toml_redacted());
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async {
        let addr = format!("{}:{}", cfg.server.host, cfg.server.port);
        let listener =
            tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        turbine_server::http::serve(cfg, listener, shutdown_signal()).await
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
