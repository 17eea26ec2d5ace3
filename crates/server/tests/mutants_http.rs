//! Mutation tests of the HTTP server (issue 19): thousands of mutants of valid requests (JSON
//! bodies edited value by value, bodies and request heads edited byte by byte, wrong lengths),
//! each sent on its own connection to the server in this process with the tiny model, 32 at a
//! time. Every mutant must get an answer or a closed connection within 15 s (the server's
//! header and body timeouts are 2 s and 1 s here), never a handler panic or a 500; error
//! answers from Turbine carry OpenAI's error shape; afterwards the server is healthy and no
//! request is left running. `TURBINE_MUTANTS=N` runs N instead of the default.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use turbine_server::config::ServeConfig;
use turbine_server::http::{serve_connections, service, AppState, Server, Slots};
use turbine_tests::mutate::{seeds, Mutator};

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// The valid requests the mutants start from: (method, path, body).
fn corpus(model: &str) -> Vec<(&'static str, &'static str, Value)> {
    let chat = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fox."}]);
    vec![
        (
            "POST",
            "/v1/completions",
            json!({"model": model, "prompt": "Hello there", "max_tokens": 4, "temperature": 0.7,
            "top_p": 0.9, "seed": 3, "logprobs": 2, "stop": ["x", "y"], "n": 2}),
        ),
        (
            "POST",
            "/v1/completions",
            json!({"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 3, "stream": true,
            "stream_options": {"include_usage": true}, "frequency_penalty": 0.5, "top_k": 5}),
        ),
        (
            "POST",
            "/v1/chat/completions",
            json!({"model": model, "messages": chat, "max_tokens": 3, "logprobs": true,
            "top_logprobs": 2, "temperature": 0}),
        ),
        (
            "POST",
            "/v1/chat/completions",
            json!({"messages": chat, "max_completion_tokens": 3, "stream": true,
            "presence_penalty": 0.1, "repetition_penalty": 1.1, "min_p": 0.05, "ignore_eos": true}),
        ),
        ("POST", "/tokenize", json!({"prompt": "abc def", "add_special_tokens": false})),
        ("POST", "/tokenize", json!({"messages": chat})),
        ("POST", "/detokenize", json!({"tokens": [1, 2, 3]})),
        ("GET", "/v1/models", Value::Null),
        ("GET", "/metrics", Value::Null),
    ]
}

fn raw(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// One mutant of a corpus request: the bytes to send.
fn mutant(seed: u64, corpus: &[(&str, &str, Value)]) -> Vec<u8> {
    let mut m = Mutator::new(seed);
    let (method, path, body) = &corpus[m.below(corpus.len())];
    let body_bytes = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    match m.below(8) {
        // A JSON edit of the body (most mutants: they reach the handlers).
        0..=3 => raw(method, path, m.json(body).to_string().as_bytes()),
        // Byte edits of the body, with its length right.
        4 => {
            let b = m.bytes(&body_bytes, 0..body_bytes.len());
            raw(method, path, &b)
        }
        // Byte edits of the whole request, aimed at the head.
        5 | 6 => {
            let r = raw(method, path, &body_bytes);
            let head = r.len() - body_bytes.len();
            m.bytes(&r, 0..head)
        }
        // A body longer or shorter than its Content-Length says.
        _ => {
            let mut r = raw(method, path, &body_bytes);
            if m.below(2) == 0 {
                r.truncate(r.len() - m.below(body_bytes.len() + 1));
            } else {
                r.extend_from_slice(b"{\"x\": 1}");
            }
            r
        }
    }
}

/// Where a response ends, if `buf` holds a whole one: after its `Content-Length`, after the last
/// chunk, or (neither given) at the close.
fn response_end(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if let Some(n) =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok())
    {
        return (buf.len() >= head_end + n).then_some(head_end + n);
    }
    if head.contains("transfer-encoding: chunked") {
        let body = &buf[head_end..];
        return body.windows(5).position(|w| w == b"0\r\n\r\n").map(|p| head_end + p + 5);
    }
    None
}

/// Sends `req` and reads the first answer: the status (0 if the server closed without one) and
/// its body. `None` if neither an answer nor a close came within 15 s.
fn send(addr: &str, req: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).expect("connect");
    let deadline = Instant::now() + Duration::from_secs(15);
    // The server may answer and close before reading everything (413, 400): that is fine.
    let _ = s.write_all(req);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        if let Some(e) = response_end(&out) {
            break e;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) | Err(_) if Instant::now() < deadline => break out.len(),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    };
    let text = String::from_utf8_lossy(&out[..end]).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mutants_get_answers_not_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        default_hook(info);
    }));
    let mut c = ServeConfig::default();
    c.model.path = format!("{}/../../tests/fixtures/tiny/llama-gqa", env!("CARGO_MANIFEST_DIR"));
    c.engine.max_num_tokens = 256;
    c.engine.kv_tokens = 4096;
    // Mutants that send less than they announce wait for these; short keeps the test short.
    c.server.body_timeout_s = 1.0;
    let state = Arc::new(tokio::task::spawn_blocking(move || AppState::load(&c)).await.unwrap().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = service(Server::ready(state.clone()));
    let (_keep, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        serve_connections(listener, app, Slots::new(256), Duration::from_secs(2), stop, Duration::from_secs(1)).await
    });
    let model = state.model.clone();
    // Mutants that wait out a timeout (a short body, a head never finished) take a second or
    // two each: 32 clients at a time.
    let seeds = Arc::new(std::sync::Mutex::new(seeds(3000).into_iter()));
    let corpus = Arc::new(corpus(&model));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (a, seeds, corpus) = (addr.clone(), seeds.clone(), corpus.clone());
            std::thread::spawn(move || {
                let mut tally = std::collections::BTreeMap::<u16, usize>::new();
                let mut problems = Vec::new();
                loop {
                    let Some(seed) = seeds.lock().unwrap().next() else { break };
                    let req = mutant(seed, &corpus);
                    let Some((status, body)) = send(&a, &req) else {
                        problems.push(format!("seed {seed}: no answer or close within 15 s"));
                        continue;
                    };
                    *tally.entry(status).or_default() += 1;
                    if status == 500 {
                        problems.push(format!("seed {seed}: 500 {body}"));
                    }
                    // Turbine's own error answers (JSON) carry OpenAI's shape; hyper answers a
                    // request it cannot parse with an empty 400 before any handler runs.
                    if status >= 400 && !body.is_empty() {
                        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                        if !v["error"]["message"].is_string() {
                            problems.push(format!("seed {seed}: {status} without an OpenAI error body: {body:.200}"));
                        }
                    }
                }
                (tally, problems)
            })
        })
        .collect();
    let (tally, problems) = tokio::task::spawn_blocking(move || {
        let mut all = (std::collections::BTreeMap::<u16, usize>::new(), Vec::new());
        for w in workers {
            let (t, p) = w.join().expect("a client thread panicked");
            for (k, v) in t {
                *all.0.entry(k).or_default() += v;
            }
            all.1.extend(p);
        }
        all
    })
    .await
    .unwrap();
    eprintln!("HTTP mutants by status (0: closed without an answer): {tally:?}");
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    assert_eq!(PANICS.load(Ordering::Relaxed), 0, "handlers panicked (see above)");
    // Still healthy, and nothing left running or holding KV blocks.
    let a = addr.clone();
    let health = tokio::task::spawn_blocking(move || send(&a, &raw("GET", "/health", b""))).await.unwrap();
    assert_eq!(health.map(|h| h.0), Some(200));
    let mut idle = false;
    for _ in 0..100 {
        let st = state.engine.stats().await.unwrap();
        if st.running == 0 && st.waiting == 0 && st.blocks_in_use == 0 {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(idle, "requests left running after the mutants: {:?}", state.engine.stats().await.unwrap());
}
