//! Hostile and careless clients against a real `turbine serve` on 127.0.0.1 (the tiny model):
//! silent and slow connections cannot lock others out, huge declared bodies are refused at once,
//! and every error status has an OpenAI-shaped body. Bounded in connections and time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

fn tiny(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny").join(case)
}

/// A server killed when the test ends (passing or not).
struct Serve {
    child: Child,
    addr: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `turbine serve` of the tiny model on a free loopback port with `args`, once ready.
fn serve(args: &[&str]) -> Serve {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let m = tiny("llama-gqa");
    let child = Command::new(env!("CARGO_BIN_EXE_turbine"))
        .args(["serve", "--model", m.to_str().unwrap(), "--port", &port.to_string()])
        .args(args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let s = Serve { child, addr: format!("127.0.0.1:{port}") };
    let t0 = Instant::now();
    while request(&s.addr, "GET /ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the server never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

/// Sends `raw` on a fresh connection and reads the answer to the end (5 s at most): the status
/// (0 if none) and the whole response.
fn request(addr: &str, raw: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if s.write_all(raw.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    (out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0), out)
}

/// The JSON body of a response (after the blank line; chunked bodies are not used here).
fn body(resp: &str) -> Value {
    let b = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(b).unwrap_or_else(|e| panic!("not JSON ({e}): {resp}"))
}

/// The answer is an OpenAI-shaped error with `status`.
fn openai_error(resp: &str, status: u16) {
    let v = body(resp);
    assert_eq!(v["error"]["code"], status, "{resp}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{resp}");
    assert!(v["error"]["type"].is_string(), "{resp}");
}

/// Whether the server closed `s` within `within` (a read returns 0 or fails).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    }
}

#[test]
fn silent_connections_cannot_lock_out_other_clients() {
    let s = serve(&["--max-connections", "8"]);
    // Three times the connection limit, connected and silent.
    let silent: Vec<TcpStream> = (0..24).map(|_| TcpStream::connect(&s.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let (st, resp) = request(&s.addr, "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(st, 200, "{resp}");
    let (st, resp) = request(&s.addr, "GET /v1/models HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(st, 200, "{resp}");
    assert!(t0.elapsed() < Duration::from_secs(3), "served only after {:?}", t0.elapsed());
    drop(silent);
}

#[test]
fn partial_headers_and_idle_keep_alive_are_closed_after_the_header_timeout() {
    let s = serve(&["--header-timeout", "1"]);
    // Nothing at all.
    let mut a = TcpStream::connect(&s.addr).unwrap();
    // Half a header.
    let mut b = TcpStream::connect(&s.addr).unwrap();
    b.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ").unwrap();
    // A keep-alive connection after one answer.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    assert!(c.read(&mut buf).unwrap() > 0);
    let t0 = Instant::now();
    for (name, conn) in [("silent", &mut a), ("partial header", &mut b), ("idle keep-alive", &mut c)] {
        assert!(closed_within(conn, Duration::from_secs(4)), "{name}: still open after {:?}", t0.elapsed());
    }
    assert!(t0.elapsed() < Duration::from_secs(4));
}

/// Slowloris: connections that trickle a header hold no slot against new clients, and the one
/// whose slot is given away is closed within a moment, not at the (default, 30 s) header timeout,
/// so they cannot pile up either.
#[test]
fn evicted_half_header_connections_are_closed_at_once() {
    let s = serve(&["--max-connections", "4"]);
    let mut slow: Vec<TcpStream> = (0..4)
        .map(|i| {
            let mut c = TcpStream::connect(&s.addr).unwrap();
            c.write_all(format!("GET /health HTTP/1.1\r\nHost: t\r\nX-Slow-{i}: ").as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let (st, resp) = request(&s.addr, "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(st, 200, "{resp}");
    // The first, idle the longest, gave its slot to that client.
    assert!(closed_within(&mut slow[0], Duration::from_secs(3)), "evicted, still open after {:?}", t0.elapsed());
}

#[test]
fn a_trickled_body_gets_408_and_a_huge_declared_body_413_at_once() {
    let s = serve(&["--body-timeout", "1", "--body-min-rate", "1000", "--max-body-bytes", "65536"]);
    // 10 GB declared, 1 byte sent: refused without waiting for the rest.
    let t0 = Instant::now();
    let (st, resp) = request(
        &s.addr,
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{",
    );
    assert_eq!(st, 413, "{resp}");
    openai_error(&resp, 413);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // A body trickled a byte every 300 ms: cut off after the grace (1 s plus 1 ms a byte).
    let mut t = TcpStream::connect(&s.addr).unwrap();
    t.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
    )
    .unwrap();
    let t0 = Instant::now();
    let writer = {
        let mut w = t.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..20 {
                if w.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = t.read_to_end(&mut out);
    let resp = String::from_utf8_lossy(&out).into_owned();
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    openai_error(&resp, 408);
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    writer.join().unwrap();
}

#[test]
fn error_statuses_have_openai_bodies_and_the_auth_scheme_is_case_insensitive() {
    let s = serve(&["--api-key", "sk-test"]);
    let (st, resp) = request(
        &s.addr,
        "DELETE /v1/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(st, 405, "{resp}");
    openai_error(&resp, 405);
    let (st, resp) =
        request(&s.addr, "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(st, 405, "{resp}");
    openai_error(&resp, 405);
    let (st, resp) = request(
        &s.addr,
        "GET /nowhere HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(st, 404, "{resp}");
    openai_error(&resp, 404);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let raw = format!(
            "GET /v1/models HTTP/1.1\r\nHost: t\r\nAuthorization: {scheme} sk-test\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(request(&s.addr, &raw).0, 200, "{scheme}");
    }
    let (st, resp) = request(
        &s.addr,
        "GET /v1/models HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-TEST\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(st, 401, "the key itself is case-sensitive: {resp}");
    openai_error(&resp, 401);
}

#[test]
fn ready_answers_503_while_draining() {
    let mut s = serve(&[]);
    // A request whose body is still arriving keeps the server draining.
    let mut a = TcpStream::connect(&s.addr).unwrap();
    let req = r#"{"prompt": [1, 2, 3], "max_tokens": 4}"#;
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        req.len()
    );
    a.write_all(head.as_bytes()).unwrap();
    a.write_all(&req.as_bytes()[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(200));
    let (st, resp) = request(&s.addr, "GET /ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(st, 503, "{resp}");
    assert_eq!(body(&resp)["phase"], "draining", "{resp}");
    assert_eq!(request(&s.addr, "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").0, 200);
    // The request in flight still gets its answer; then the server exits.
    a.write_all(&req.as_bytes()[5..]).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut rest = String::new();
    a.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    let exit = s.child.wait().unwrap();
    assert!(exit.success(), "exit status {exit}");
}
