//! The load generator behind `turbine bench-serve`: sends a workload to any OpenAI-compatible
//! server (ours or another engine's) with Poisson arrivals, streams every answer, and measures
//! time to first token, time per output token, inter-token latency and end-to-end latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use turbine_batcher::bench::Percentiles;
use turbine_core::sampling::Rng;

type Http = Client<HttpConnector, Full<Bytes>>;

/// One request of the workload, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadRequest {
    /// The prompt.
    pub prompt: String,
    /// Tokens to generate.
    pub max_tokens: usize,
}

/// How to send the workload.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Base URL, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    /// The `model` field (the server's name for its model).
    pub model: String,
    /// Requests per second, Poisson arrivals; `None` sends everything at once.
    pub rate: Option<f64>,
    /// Seed of the arrival times.
    pub seed: u64,
    /// `Authorization: Bearer` key.
    pub api_key: Option<String>,
    /// Ask the server to ignore EOS (so outputs have the workload's lengths).
    pub ignore_eos: bool,
    /// Give up on one request after this long.
    pub timeout: Duration,
}

/// What one request saw.
#[derive(Debug, Clone, Default)]
struct Outcome {
    error: Option<String>,
    prompt_tokens: usize,
    output_tokens: usize,
    ttft_s: f64,
    e2e_s: f64,
    /// Gaps between consecutive chunks that carried text.
    itl_s: Vec<f64>,
}

/// A distribution in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Dist {
    /// Mean.
    pub mean: f64,
    /// p50 / p90 / p99.
    pub p: Percentiles,
}

impl Dist {
    fn of(v: Vec<f64>) -> Dist {
        let mean = if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        Dist { mean, p: Percentiles::of(v) }
    }

    /// As JSON: `{"mean", "p50", "p90", "p99"}`.
    pub fn json(&self) -> Value {
        json!({"mean": self.mean, "p50": self.p.p50, "p90": self.p.p90, "p99": self.p.p99})
    }
}

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Requests sent.
    pub requests: usize,
    /// Requests that completed.
    pub completed: usize,
    /// Requests that failed, and the first few messages.
    pub errors: usize,
    /// Up to five distinct error messages.
    pub error_samples: Vec<String>,
    /// From the first send to the last answer.
    pub wall_s: f64,
    /// Prompt tokens (as the server counted them).
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub output_tokens: usize,
    /// Completed requests per second.
    pub request_rate: f64,
    /// Generated tokens per second.
    pub output_tok_s: f64,
    /// Time to first token (ms).
    pub ttft_ms: Dist,
    /// Time per output token after the first (ms), per request.
    pub tpot_ms: Dist,
    /// Inter-token latency (ms): every gap between streamed chunks.
    pub itl_ms: Dist,
    /// End-to-end latency (ms).
    pub e2e_ms: Dist,
}

impl LoadReport {
    /// As JSON.
    pub fn json(&self) -> Value {
        json!({
            "requests": self.requests, "completed": self.completed, "errors": self.errors,
            "error_samples": self.error_samples, "wall_s": self.wall_s,
            "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
            "request_rate": self.request_rate, "output_tok_s": self.output_tok_s,
            "ttft_ms": self.ttft_ms.json(), "tpot_ms": self.tpot_ms.json(),
            "itl_ms": self.itl_ms.json(), "e2e_ms": self.e2e_ms.json(),
        })
    }
}

/// Checks a base URL (`http://host:port`, no trailing path needed).
pub fn base_url(url: &str) -> Result<String> {
    let u = url.trim_end_matches('/');
    if u.starts_with("https://") {
        bail!("{url}: https is not supported by the load generator; use an http:// address");
    }
    if !u.starts_with("http://") {
        bail!("{url}: the URL must start with http://");
    }
    let base = u.strip_suffix("/v1").unwrap_or(u).to_string();
    base.parse::<Uri>().with_context(|| format!("{url} is not a valid URL"))?;
    Ok(base)
}

fn client() -> Http {
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build_http()
}

fn request(method: Method, url: &str, key: Option<&str>, body: Option<String>) -> Result<Request<Full<Bytes>>> {
    let mut b = Request::builder().method(method).uri(url);
    if let Some(k) = key {
        b = b.header("Authorization", format!("Bearer {k}"));
    }
    if body.is_some() {
        b = b.header("Content-Type", "application/json");
    }
    Ok(b.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
}

/// The first model the server lists at `/v1/models`, with its `max_model_len` when the server
/// says (vLLM and Turbine do).
pub async fn first_model(url: &str, key: Option<&str>) -> Result<(String, Option<usize>)> {
    let c = client();
    let resp = c
        .request(request(Method::GET, &format!("{url}/v1/models"), key, None)?)
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.context("reading /v1/models")?.to_bytes();
    if !status.is_success() {
        bail!("{url}/v1/models answered {status}: {}", String::from_utf8_lossy(&body));
    }
    let v: Value = serde_json::from_slice(&body).context("/v1/models did not answer JSON")?;
    let id = v["data"][0]["id"].as_str().map(str::to_string).context("/v1/models lists no model")?;
    Ok((id, v["data"][0]["max_model_len"].as_u64().map(|n| n as usize)))
}

/// Seconds after the start at which each request is sent: exponential gaps at `rate` per
/// second (a Poisson process), or all at 0.
pub fn arrivals(n: usize, rate: Option<f64>, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let mut t = 0.0;
    (0..n)
        .map(|i| {
            if let Some(r) = rate {
                if i > 0 {
                    t += -(1.0 - rng.next_f64()).ln() / r;
                }
            }
            t
        })
        .collect()
}

/// Sends the workload; `progress` sees (finished, total, errors) now and then.
pub async fn run(
    opts: &LoadOptions,
    reqs: &[LoadRequest],
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<LoadReport> {
    if let Some(r) = opts.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be a positive number of requests per second (or inf)");
        }
    }
    let c = client();
    let url = format!("{}/v1/completions", opts.url);
    let at = arrivals(reqs.len(), opts.rate, opts.seed);
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(reqs.len());
    for (r, &when) in reqs.iter().zip(&at) {
        let body = json!({
            "model": opts.model, "prompt": r.prompt, "max_tokens": r.max_tokens, "temperature": 0.0,
            "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": opts.ignore_eos,
        })
        .to_string();
        let req = request(Method::POST, &url, opts.api_key.as_deref(), Some(body))?;
        let (c, done, failed, timeout) = (c.clone(), done.clone(), failed.clone(), opts.timeout);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(when)).into()).await;
            let sent = Instant::now();
            let out = match tokio::time::timeout(timeout, one(&c, req, sent)).await {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => Outcome { error: Some(format!("{e:#}")), ..Default::default() },
                Err(_) => Outcome { error: Some(format!("no answer within {timeout:?}")), ..Default::default() },
            };
            if out.error.is_some() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            done.fetch_add(1, Ordering::Relaxed);
            out
        }));
    }
    let total = tasks.len();
    let mut all = futures_join(tasks, &done, &failed, total, progress).await;
    let wall_s = t0.elapsed().as_secs_f64();
    progress(total, total, failed.load(Ordering::Relaxed));
    Ok(summarise(&mut all, wall_s))
}

async fn futures_join(
    tasks: Vec<tokio::task::JoinHandle<Outcome>>,
    done: &AtomicUsize,
    failed: &AtomicUsize,
    total: usize,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(tasks.len());
    for mut t in tasks {
        loop {
            tokio::select! {
                r = &mut t => {
                    out.push(r.unwrap_or_else(|e| Outcome { error: Some(format!("task failed: {e}")), ..Default::default() }));
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    progress(done.load(Ordering::Relaxed), total, failed.load(Ordering::Relaxed));
                }
            }
        }
    }
    out
}

/// One streamed completion.
async fn one(c: &Http, req: Request<Full<Bytes>>, sent: Instant) -> Result<Outcome> {
    let resp = c.request(req).await.context("connection failed")?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let text = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&text).chars().take(300).collect::<String>());
    }
    let mut o = Outcome::default();
    let (mut pending, mut last, mut chunks, mut finished) = (String::new(), None::<Instant>, 0usize, false);
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the stream broke")?;
        let Some(data) = frame.data_ref() else { continue };
        pending.push_str(&String::from_utf8_lossy(data));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let Some(payload) = line.trim_end().strip_prefix("data:").map(str::trim) else { continue };
            if payload == "[DONE]" {
                finished = true;
                continue;
            }
            let v: Value = serde_json::from_str(payload).with_context(|| format!("not JSON: {payload}"))?;
            if let Some(e) = v.get("error") {
                bail!("error event: {}", e["message"].as_str().unwrap_or("?"));
            }
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                o.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
                o.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
            }
            let text = v["choices"][0]["text"].as_str().or_else(|| v["choices"][0]["delta"]["content"].as_str());
            if text.is_some_and(|t| !t.is_empty()) {
                let now = Instant::now();
                match last {
                    None => o.ttft_s = (now - sent).as_secs_f64(),
                    Some(prev) => o.itl_s.push((now - prev).as_secs_f64()),
                }
                last = Some(now);
                chunks += 1;
            }
        }
    }
    if !finished {
        bail!("the stream ended without [DONE]");
    }
    o.e2e_s = sent.elapsed().as_secs_f64();
    if o.output_tokens == 0 {
        o.output_tokens = chunks;
    }
    if last.is_none() {
        o.ttft_s = o.e2e_s;
    }
    Ok(o)
}

fn summarise(all: &mut [Outcome], wall_s: f64) -> LoadReport {
    let ok: Vec<&Outcome> = all.iter().filter(|o| o.error.is_none()).collect();
    let mut samples: Vec<String> = Vec::new();
    for e in all.iter().filter_map(|o| o.error.clone()) {
        if samples.len() < 5 && !samples.contains(&e) {
            samples.push(e);
        }
    }
    let ms = |f: &dyn Fn(&Outcome) -> Option<f64>| Dist::of(ok.iter().filter_map(|o| f(o)).map(|s| s * 1e3).collect());
    let output_tokens: usize = ok.iter().map(|o| o.output_tokens).sum();
    LoadReport {
        requests: all.len(),
        completed: ok.len(),
        errors: all.len() - ok.len(),
        error_samples: samples,
        wall_s,
        prompt_tokens: ok.iter().map(|o| o.prompt_tokens).sum(),
        output_tokens,
        request_rate: ok.len() as f64 / wall_s.max(1e-9),
        output_tok_s: output_tokens as f64 / wall_s.max(1e-9),
        ttft_ms: ms(&|o| Some(o.ttft_s)),
        tpot_ms: ms(&|o| (o.output_tokens > 1).then(|| (o.e2e_s - o.ttft_s) / (o.output_tokens - 1) as f64)),
        itl_ms: Dist::of(ok.iter().flat_map(|o| o.itl_s.iter().map(|s| s * 1e3)).collect()),
        e2e_ms: ms(&|o| Some(o.e2e_s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_arrivals_have_the_asked_rate() {
        let at = arrivals(4000, Some(8.0), 3);
        assert_eq!(at[0], 0.0);
        assert!(at.windows(2).all(|w| w[1] >= w[0]));
        let rate = (at.len() - 1) as f64 / at[at.len() - 1];
        assert!((rate - 8.0).abs() < 0.4, "{rate}");
        assert!(arrivals(5, None, 0).iter().all(|&t| t == 0.0));
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(base_url("http://127.0.0.1:8000/v1/").unwrap(), "http://127.0.0.1:8000");
        assert!(base_url("https://example.invalid").unwrap_err().to_string().contains("https"));
        assert!(base_url("localhost:8000").is_err());
    }

    #[test]
    fn summary_counts_errors_and_tokens() {
        let ok = Outcome { output_tokens: 5, ttft_s: 0.1, e2e_s: 0.5, itl_s: vec![0.1; 4], ..Default::default() };
        let bad = Outcome { error: Some("HTTP 500".into()), ..Default::default() };
        let r = summarise(&mut [ok.clone(), ok, bad], 2.0);
        assert_eq!((r.requests, r.completed, r.errors, r.output_tokens), (3, 2, 1, 10));
        assert!((r.tpot_ms.mean - 100.0).abs() < 1e-9 && (r.output_tok_s - 5.0).abs() < 1e-9);
        assert_eq!(r.error_samples, vec!["HTTP 500".to_string()]);
    }
}
