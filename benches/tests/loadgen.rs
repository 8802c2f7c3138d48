//! The load generator against a stand-in server (a few threads answering keep-alive HTTP
//! with a fixed `elapsed_us`, some answers errors on demand): what it sends, what it counts
//! and what it prints.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// What the stand-in server saw.
#[derive(Default)]
struct Seen {
    requests: u64,
    bad: Vec<String>,
    ids: Vec<String>,
}

/// Starts the stand-in on a free port: every `fail_every`-th request (0: none) gets a 503.
fn serve(fail_every: u64) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let seen = shared.clone();
            std::thread::spawn(move || answer(stream, &seen, fail_every));
        }
    });
    (addr, seen)
}

/// Answers the requests of one connection until it closes.
fn answer(mut s: TcpStream, seen: &Mutex<Seen>, fail_every: u64) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One whole request at the front of `buf`?
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                buf.drain(..end + 4 + len);
                let n = {
                    let mut g = seen.lock().unwrap();
                    g.requests += 1;
                    if !head.starts_with("POST /v1/score HTTP/1.1")
                        || !head.contains("Authorization: Bearer test-key")
                        || !head.contains("Content-Type: application/json")
                    {
                        g.bad.push(head.clone());
                    }
                    match body
                        .split("\"transaction_id\":\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                    {
                        Some(id) => g.ids.push(id.to_string()),
                        None => g.bad.push(body.clone()),
                    }
                    g.requests
                };
                let (status, body) = if fail_every > 0 && n % fail_every == 0 {
                    (
                        "503 Service Unavailable",
                        "{\"title\":\"overloaded\"}".to_string(),
                    )
                } else {
                    (
                        "200 OK",
                        "{\"decision\":\"approve\",\"elapsed_us\":42}".to_string(),
                    )
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(reply.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

fn loadgen(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// One second at `rate` on `connections` against the stand-in at `addr`, with `extra`.
fn one_second(addr: &str, rate: u32, connections: u32, extra: &[&str]) -> (i32, String, String) {
    let (url, rate, connections) = (
        format!("http://{addr}"),
        rate.to_string(),
        connections.to_string(),
    );
    let mut args = vec!["--url", &url, "--key", "test-key", "--seconds", "1"];
    args.extend(["--rate", &rate, "--connections", &connections]);
    args.extend(extra);
    loadgen(&args)
}

#[test]
fn sends_the_rate_asked_and_reads_the_server_time() {
    let (addr, seen) = serve(0);
    let dir = tempfile::tempdir().unwrap();
    let timeline = dir.path().join("timeline.csv");
    let (code, out, err) = one_second(&addr, 400, 4, &["--timeline", timeline.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("sent 400 ok 400 errors 0"), "{out}");
    assert!(out.contains("server us p50 42 p99 42 p99.9 42"), "{out}");
    let g = seen.lock().unwrap();
    assert_eq!(g.requests, 400);
    assert!(g.bad.is_empty(), "{:?}", g.bad.first());
    let mut ids = g.ids.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 400, "every request has its own transaction id");
    // One line per answer: when it was due (us), end-to-end and server time.
    let text = std::fs::read_to_string(&timeline).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "due_us,e2e_us,server_us");
    assert_eq!(lines.len(), 401);
    let last_due: u64 = lines[400].split(',').next().unwrap().parse().unwrap();
    // Open loop at 400/s: the requests are due over the whole second.
    assert!((990_000..1_000_000).contains(&last_due), "{last_due}");
    assert!(lines[1..].iter().all(|l| l.ends_with(",42")));
}

#[test]
fn counts_answers_that_are_not_200_as_errors() {
    let (addr, _) = serve(5);
    let (code, out, err) = one_second(&addr, 200, 2, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("sent 200 ok 160 errors 40"), "{out}");
}

#[test]
fn refuses_bad_options_and_a_server_that_is_not_there() {
    let (code, _, err) = loadgen(&["--url", "http://127.0.0.1:9", "--rate", "10"]);
    assert_eq!(code, 2);
    assert!(err.contains("--key-file or --key is required"), "{err}");
    let (code, _, err) = loadgen(&["--key", "k", "--rate", "fast"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a number"), "{err}");
    // Nothing listens there: a clear error, not a hang.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (code, _, err) = loadgen(&["--url", &url, "--key", "k", "--seconds", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("loadgen: "), "{err}");
}
