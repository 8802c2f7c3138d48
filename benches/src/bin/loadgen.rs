//! HTTP load generator for `fraud serve`: keep-alive HTTP/1.1 connections sending
//! `POST /v1/score` at a fixed total rate (open loop: latency is measured from the time each
//! request was due, so a slow server cannot hide its queueing), latencies in hdrhistograms.
//!
//! ```text
//! loadgen --url http://127.0.0.1:8080 --key-file fraud-data/dev-api-key \
//!     [--rate 5000] [--seconds 10] [--connections 32] [--cards 10000]
//!     [--find-max --p99-ms 2 --start-rate 1000 --step 1000]
//! ```
//!
//! Prints, per run: requests sent, answered, errors (non-200 or I/O), achieved rate, the
//! end-to-end p50 / p99 / p99.9 / max, and the server's own time per transaction
//! (`elapsed_us` of the answers) at p50 / p99 / p99.9. `--find-max` raises the rate step by
//! step and reports the highest rate held with end-to-end p99 under `--p99-ms` and no errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

struct Opts {
    host: String,
    key: String,
    rate: f64,
    seconds: f64,
    connections: usize,
    cards: u64,
    find_max: bool,
    p99_ms: f64,
    start_rate: f64,
    step: f64,
}

fn usage(msg: &str) -> ! {
    eprintln!("loadgen: {msg}\nusage: loadgen --url http://HOST:PORT --key-file FILE [--rate R] [--seconds S] [--connections C] [--cards N] [--find-max [--p99-ms 2] [--start-rate R] [--step R]]");
    std::process::exit(2)
}

fn parse() -> Opts {
    let mut o = Opts {
        host: "127.0.0.1:8080".into(),
        key: String::new(),
        rate: 5_000.0,
        seconds: 10.0,
        connections: 32,
        cards: 10_000,
        find_max: false,
        p99_ms: 2.0,
        start_rate: 2_000.0,
        step: 1_000.0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let val = |i: usize| -> &str {
        args.get(i + 1)
            .map(String::as_str)
            .unwrap_or_else(|| usage("missing value"))
    };
    let num = |i: usize| -> f64 { val(i).parse().unwrap_or_else(|_| usage("not a number")) };
    while i < args.len() {
        match args[i].as_str() {
            "--url" => {
                o.host = val(i)
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string()
            }
            "--key-file" => {
                o.key = std::fs::read_to_string(val(i))
                    .unwrap_or_else(|e| usage(&format!("key file: {e}")))
                    .trim()
                    .to_string()
            }
            "--key" => o.key = val(i).to_string(),
            "--rate" => o.rate = num(i),
            "--seconds" => o.seconds = num(i),
            "--connections" => o.connections = num(i) as usize,
            "--cards" => o.cards = num(i) as u64,
            "--p99-ms" => o.p99_ms = num(i),
            "--start-rate" => o.start_rate = num(i),
            "--step" => o.step = num(i),
            "--find-max" => {
                o.find_max = true;
                i += 1;
                continue;
            }
            other => usage(&format!("unknown option {other}")),
        }
        i += 2;
    }
    if o.key.is_empty() {
        usage("--key-file or --key is required");
    }
    if o.connections == 0 || o.rate <= 0.0 || o.seconds <= 0.0 {
        usage("connections, rate and seconds must be positive");
    }
    o
}

/// Results of one run.
struct Run {
    sent: u64,
    ok: u64,
    errors: u64,
    e2e: Histogram<u64>,
    server: Histogram<u64>,
    seconds: f64,
}

fn body(seq: u64, cards: u64, run: u64) -> String {
    // A deterministic stream: card, amount and merchant from the sequence number.
    let card = (seq.wrapping_mul(2_654_435_761)) % cards.max(1);
    let cents = 100 + (seq.wrapping_mul(48_271) % 20_000);
    let secs = 1_714_557_600 + seq / 50;
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "2024-05-01T10:00:00Z".into());
    format!(
        "{{\"transaction_id\":\"lg{run}-{seq}\",\"timestamp\":\"{t}\",\"amount\":\"{}.{:02}\",\"currency\":\"EUR\",\"card_token\":\"tok_{card:032x}\",\"customer_id\":\"C{card}\",\"merchant_id\":\"M{}\",\"mcc\":\"5411\",\"terminal_id\":\"T{}\",\"channel\":\"card_present\",\"card_country\":\"BE\",\"merchant_country\":\"BE\",\"latitude\":50.8,\"longitude\":4.35}}",
        cents / 100,
        cents % 100,
        seq % 997,
        seq % 1999
    )
}

fn connect(host: &str) -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
    let s = TcpStream::connect(host)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let r = BufReader::new(s.try_clone()?);
    Ok((s, r))
}

/// Sends one request on a keep-alive connection; returns (status, elapsed_us of the answer).
fn request(
    w: &mut TcpStream,
    r: &mut BufReader<TcpStream>,
    host: &str,
    key: &str,
    body: &str,
) -> std::io::Result<(u16, Option<u64>)> {
    let req = format!(
        "POST /v1/score HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    w.write_all(req.as_bytes())?;
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let elapsed = text
        .find("\"elapsed_us\":")
        .and_then(|i| text[i + 13..].split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok());
    Ok((status, elapsed))
}

fn run(o: &Opts, rate: f64, run_id: u64) -> Run {
    let seq = Arc::new(AtomicU64::new(0));
    let per_conn = rate / o.connections as f64;
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let total = (rate * o.seconds) as u64;
    let started = Instant::now() + Duration::from_millis(100);
    let handles: Vec<_> = (0..o.connections)
        .map(|c| {
            let seq = seq.clone();
            let host = o.host.clone();
            let key = o.key.clone();
            let cards = o.cards;
            let offset = interval.mul_f64(c as f64 / o.connections as f64);
            std::thread::spawn(move || {
                let mut e2e = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                    .unwrap_or_else(|_| unreachable!());
                let mut server = e2e.clone();
                let (mut sent, mut ok, mut errors) = (0u64, 0u64, 0u64);
                let mut conn = connect(&host).ok();
                let mut due = started + offset;
                loop {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let b = body(n, cards, run_id);
                    sent += 1;
                    let result = match conn.as_mut() {
                        Some((w, r)) => request(w, r, &host, &key, &b),
                        None => Err(std::io::Error::other("not connected")),
                    };
                    match result {
                        Ok((200, el)) => {
                            ok += 1;
                            if let Some(us) = el {
                                let _ = server.record(us.max(1));
                            }
                        }
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            conn = connect(&host).ok();
                        }
                    }
                    let lat = Instant::now().saturating_duration_since(due).as_micros() as u64;
                    let _ = e2e.record(lat.max(1));
                    due += interval;
                }
                (sent, ok, errors, e2e, server)
            })
        })
        .collect();
    let mut out = Run {
        sent: 0,
        ok: 0,
        errors: 0,
        e2e: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!()),
        server: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!()),
        seconds: 0.0,
    };
    for h in handles {
        if let Ok((s, k, e, a, b)) = h.join() {
            out.sent += s;
            out.ok += k;
            out.errors += e;
            let _ = out.e2e.add(&a);
            let _ = out.server.add(&b);
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    out
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn report(rate: f64, r: &Run) {
    println!(
        "rate {:>7.0}/s: sent {} ok {} errors {} achieved {:.0}/s | end-to-end ms p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} | server us p50 {} p99 {} p99.9 {}",
        rate,
        r.sent,
        r.ok,
        r.errors,
        r.ok as f64 / r.seconds,
        ms(r.e2e.value_at_quantile(0.5)),
        ms(r.e2e.value_at_quantile(0.99)),
        ms(r.e2e.value_at_quantile(0.999)),
        ms(r.e2e.max()),
        r.server.value_at_quantile(0.5),
        r.server.value_at_quantile(0.99),
        r.server.value_at_quantile(0.999),
    );
}

fn main() {
    let o = parse();
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if !o.find_max {
        let r = run(&o, o.rate, run_id);
        report(o.rate, &r);
        return;
    }
    let mut best = None;
    let mut rate = o.start_rate;
    for k in 0..100u64 {
        let r = run(&o, rate, run_id * 1000 + k);
        report(rate, &r);
        let held = r.errors == 0 && ms(r.e2e.value_at_quantile(0.99)) < o.p99_ms && r.ok == r.sent;
        if !held {
            break;
        }
        best = Some(rate);
        rate += o.step;
    }
    match best {
        Some(b) => println!(
            "highest rate held with p99 under {} ms and no errors: {b:.0}/s",
            o.p99_ms
        ),
        None => println!("no rate held with p99 under {} ms and no errors", o.p99_ms),
    }
}
