//! The OpenAI-compatible server, in process on a random loopback port with a tiny model.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use turbine_batcher::EngineConfig;
use turbine_server::http::{router, AppState};
use turbine_server::setup::KvSize;

fn fixture(case: &str) -> String {
    format!("{}/../../tests/fixtures/tiny/{case}", env!("CARGO_MANIFEST_DIR"))
}

async fn start(model: &str) -> (String, Arc<AppState>) {
    start_with(model, &[]).await
}

async fn start_with(model: &str, keys: &[&str]) -> (String, Arc<AppState>) {
    let m = model.to_string();
    let state = tokio::task::spawn_blocking(move || {
        AppState::load(Some(&m), "cpu", KvSize::tokens(4096), EngineConfig { max_num_tokens: 256, max_batch_size: 16 })
    })
    .await
    .unwrap()
    .unwrap();
    let mut state = state;
    state.api_keys = keys.iter().map(|k| k.to_string()).collect();
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

/// Sends one HTTP/1.1 request; returns the status and the body.
async fn call(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    call_auth(addr, method, path, body, None).await
}

async fn call_auth(addr: &str, method: &str, path: &str, body: &str, key: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text[9..12].parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(body) } else { body.to_string() })
}

/// Removes HTTP chunked framing (size lines) if present.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { return body.to_string() };
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n.min(tail.len())]);
        rest = tail.get(n + 2..).unwrap_or("");
    }
    out
}

fn events(sse: &str) -> Vec<String> {
    sse.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_streamed_and_not() {
    let (addr, _state) = start(&fixture("llama-gqa")).await;
    let (st, models) = call(&addr, "GET", "/v1/models", "").await;
    assert_eq!(st, 200);
    assert_eq!(serde_json::from_str::<Value>(&models).unwrap()["data"][0]["id"], "llama-gqa");

    let req = json!({"prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0, "logprobs": 2});
    let (st, body) = call(&addr, "POST", "/v1/completions", &req.to_string()).await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(v["choices"][0]["logprobs"]["token_logprobs"].as_array().unwrap().len(), 8);
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();

    // Same request streamed, with a token-array prompt equal to the text's encoding.
    let ids = _state.tok.encode("The quick brown fox", true).unwrap();
    let req = json!({"prompt": ids, "max_tokens": 8, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let (st, body) = call(&addr, "POST", "/v1/completions", &req.to_string()).await;
    assert_eq!(st, 200);
    let ev = events(&body);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(streamed, text);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 8);
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_and_errors() {
    let (addr, _state) = start(&fixture("llama-gqa")).await;
    let base = json!({"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0});
    let (_, body) = call(&addr, "POST", "/v1/completions", &base.to_string()).await;
    let full = serde_json::from_str::<Value>(&body).unwrap()["choices"][0]["text"].as_str().unwrap().to_string();
    let cut = full.char_indices().nth(3).map(|c| c.0).unwrap();
    let stop: String = full[cut..].chars().take(2).collect();
    let mut req = base.clone();
    req["stop"] = json!(stop);
    let (_, body) = call(&addr, "POST", "/v1/completions", &req.to_string()).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["text"], full[..full.find(&stop).unwrap()]);

    for (body, status, needle) in [
        ("{not json".to_string(), 400, "invalid request body"),
        (json!({"prompt": "x", "temperature": -1}).to_string(), 400, "temperature"),
        (json!({"prompt": "x", "top_p": 2}).to_string(), 400, "top_p"),
        (json!({"prompt": "x", "max_tokens": 0}).to_string(), 400, "max_tokens"),
        (json!({"prompt": "x", "model": "other"}).to_string(), 404, "does not exist"),
        (json!({"prompt": [1, 2], "max_tokens": 1000}).to_string(), 400, "256"),
        (json!({"prompt": [9999]}).to_string(), 400, "vocabulary"),
        (json!({"prompt": ""}).to_string(), 400, "empty"),
        (json!({"max_tokens": 3}).to_string(), 400, "prompt"),
    ] {
        let (st, b) = call(&addr, "POST", "/v1/completions", &body).await;
        assert_eq!(st, status, "{body} -> {b}");
        let e: Value = serde_json::from_str(&b).unwrap_or_else(|_| panic!("not JSON: {b}"));
        let named = e["error"]["message"].as_str().unwrap().contains(needle) || e["error"]["param"] == needle;
        assert!(named, "{b} does not name {needle}");
    }
    let (st, b) = call(
        &addr,
        "POST",
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}]}).to_string(),
    )
    .await;
    assert_eq!(st, 400, "the tiny model has no chat template: {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_and_disconnects() {
    let (addr, state) = start(&fixture("llama-gqa")).await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let req = json!({"prompt": [1 + i, 2, 3], "max_tokens": 5 + i % 7, "temperature": 0.8, "seed": i, "stream": true});
            let (st, body) = call(&addr, "POST", "/v1/completions", &req.to_string()).await;
            assert_eq!(st, 200);
            assert_eq!(events(&body).last().map(String::as_str), Some("[DONE]"));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A client that goes away mid-stream: its request is cancelled and its blocks freed.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let body = json!({"prompt": [5, 6, 7], "max_tokens": 200, "ignore_eos": true, "stream": true}).to_string();
    let req = format!("POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(n > 0);
    assert!(state.engine.stats().await.unwrap().blocks_in_use > 0);
    drop(s);
    let mut freed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let st = state.engine.stats().await.unwrap();
        if st.blocks_in_use == 0 && st.running == 0 {
            freed = true;
            break;
        }
    }
    assert!(freed, "a disconnected stream keeps its blocks");
    let (st, m) = call(&addr, "GET", "/metrics", "").await;
    assert_eq!(st, 200);
    for needle in [
        "turbine_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 33",
        "turbine_kv_blocks_in_use 0",
        "turbine_requests_running 0",
        "turbine_time_to_first_token_seconds_count 32",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_keys_and_limits() {
    let (addr, state) = start_with(&fixture("llama-gqa"), &["sesame"]).await;
    // Health needs no key; everything else does.
    assert_eq!(call(&addr, "GET", "/health", "").await.0, 200);
    let (st, b) = call(&addr, "GET", "/v1/models", "").await;
    assert_eq!(st, 401, "{b}");
    assert!(b.contains("authentication_error"));
    assert_eq!(call_auth(&addr, "GET", "/v1/models", "", Some("wrong")).await.0, 401);
    let key = Some("sesame");
    let (st, b) =
        call_auth(&addr, "POST", "/tokenize", &json!({"prompt": "The quick brown fox"}).to_string(), key).await;
    assert_eq!(st, 200, "{b}");
    let ids = serde_json::from_str::<Value>(&b).unwrap()["tokens"].clone();
    assert_eq!(ids, json!(state.tok.encode("The quick brown fox", true).unwrap()));
    let (st, b) = call_auth(&addr, "POST", "/detokenize", &json!({"tokens": ids}).to_string(), key).await;
    assert_eq!(st, 200);
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["prompt"], "The quick brown fox");
    let (st, b) = call_auth(&addr, "POST", "/detokenize", &json!({"tokens": [100000]}).to_string(), key).await;
    assert_eq!(st, 400, "{b}");
    // A body over the limit is refused with 413 in OpenAI's shape.
    let huge = json!({"prompt": "x".repeat(turbine_server::http::MAX_BODY_BYTES + 10)}).to_string();
    let (st, b) = call_auth(&addr, "POST", "/v1/completions", &huge, key).await;
    assert_eq!(st, 413, "{}", &b[..b.len().min(200)]);
    assert!(b.contains("\"error\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_choices_and_prompts() {
    let (addr, _state) = start(&fixture("llama-gqa")).await;
    let req = json!({"prompt": ["The quick", [1, 2, 3]], "n": 3, "max_tokens": 6, "temperature": 1.0, "seed": 7});
    let (st, b) = call(&addr, "POST", "/v1/completions", &req.to_string()).await;
    assert_eq!(st, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 6);
    assert!(choices.iter().enumerate().all(|(i, c)| c["index"] == i));
    assert_eq!(v["usage"]["completion_tokens"], 36);
    // Streamed: every index ends with a finish reason, then [DONE].
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let (_, b) = call(&addr, "POST", "/v1/completions", &sreq.to_string()).await;
    let ev = events(&b);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let finished = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .count();
    assert_eq!(finished, 6);
    let (st, b) = call(&addr, "POST", "/v1/completions", &json!({"prompt": "x", "n": 99}).to_string()).await;
    assert_eq!(st, 400, "{b}");
}
