//! HTTP load generator for `fraud serve`: keep-alive HTTP/1.1 connections sending
//! `POST /v1/score` at a fixed total rate (open loop: latency is measured from the time each
//! request was due, so a slow server cannot hide its queueing), latencies in hdrhistograms.
//!
//! ```text
//! loadgen --url http://127.0.0.1:8080 --key-file fraud-data/dev-api-key \
//!     [--rate 5000] [--seconds 10] [--connections 32] [--cards 10000]
//!     [--find-max --p99-ms 2 --start-rate 1000 --step 1000] [--warmup 3] [--timeline FILE]
//! ```
//!
//! Prints, per run: requests sent, answered, errors (non-200 or I/O), achieved rate, the
//! end-to-end p50 / p99 / p99.9 / max, and the server's own time per transaction
//! (`elapsed_us` of the answers) at p50 / p99 / p99.9. `--find-max` raises the rate step by
//! step and reports the highest rate held with end-to-end p99 under `--p99-ms` and no errors.
//! `--warmup S` first sends S seconds of requests that are not counted (a fresh service
//! meets every card, customer and terminal once: their keys and state are made then).
//! `--timeline FILE` writes every answer's due time, end-to-end and server time as CSV.
//!
//! One thread drives every connection (an event loop over non-blocking sockets, woken by a
//! microsecond timer), and every request is built before the clock starts: the generator
//! shares the machine with the server, and takes as little of it as it can.

use std::io::{Read, Write};
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
    warmup: f64,
    p99_ms: f64,
    start_rate: f64,
    step: f64,
    /// Where to write one line per answer (`--timeline`).
    timeline: Option<String>,
    /// The server's process id (`--server-pid`): its CPU time per answer is reported.
    server_pid: Option<u32>,
}

fn usage(msg: &str) -> ! {
    eprintln!("loadgen: {msg}\nusage: loadgen --url http://HOST:PORT --key-file FILE [--rate R] [--seconds S] [--connections C] [--cards N] [--find-max [--p99-ms 2] [--start-rate R] [--step R]] [--warmup S] [--timeline FILE] [--server-pid PID]");
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
        warmup: 0.0,
        step: 1_000.0,
        timeline: None,
        server_pid: None,
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
            "--warmup" => o.warmup = num(i),
            "--timeline" => o.timeline = Some(val(i).to_string()),
            "--server-pid" => o.server_pid = Some(num(i) as u32),
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
    /// Per answer: when it was due (us from the start), end-to-end and server us (0: none).
    timeline: Vec<(u64, u64, u64)>,
}

fn body(seq: u64, cards: u64, run: u64) -> String {
    // A deterministic stream: card, amount and merchant from the sequence number. The run's
    // number is spelled in letters: a long run of digits in an id (the run's and the
    // sequence number's, across the dash) reads as a card number one time in ten, and the
    // service refuses such ids (422).
    let run: String = run
        .to_string()
        .bytes()
        .map(|d| char::from(b'a' + (d - b'0')))
        .collect();
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

/// One keep-alive connection of the event loop.
struct Conn {
    stream: mio::net::TcpStream,
    /// Index of this connection's next request in `schedule` order (every `connections`-th).
    next: usize,
    /// The request in flight: (its index, when it was due), and how much of it is written.
    inflight: Option<(usize, Instant)>,
    written: usize,
    /// Bytes of the answer read so far.
    buf: Vec<u8>,
}

fn connect(addr: std::net::SocketAddr) -> std::io::Result<mio::net::TcpStream> {
    // A blocking connect (refused at once when nothing listens), then non-blocking use.
    let s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(mio::net::TcpStream::from_std(s))
}

/// Parses one complete answer at the front of `buf`: (bytes it takes, status, `elapsed_us`).
/// `None` while incomplete.
fn parse_answer(buf: &[u8]) -> Result<Option<(usize, u16, Option<u64>)>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let mut len = 0usize;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().map_err(|_| "bad content-length")?;
            }
        }
    }
    let total = head_end + 4 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[head_end + 4..total];
    let key = b"\"elapsed_us\":";
    let elapsed = body
        .windows(key.len())
        .position(|w| w == key)
        .and_then(|i| {
            let digits: Vec<u8> = body[i + key.len()..]
                .iter()
                .copied()
                .take_while(u8::is_ascii_digit)
                .collect();
            std::str::from_utf8(&digits).ok()?.parse().ok()
        });
    Ok(Some((total, status, elapsed)))
}

/// The wake-up timer of the event loop: a timerfd, for microsecond precision (epoll's own
/// timeout counts in milliseconds).
struct Timer {
    fd: std::os::fd::OwnedFd,
    armed: Option<Instant>,
}

impl Timer {
    fn new() -> std::io::Result<Timer> {
        use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        Ok(Timer { fd, armed: None })
    }

    /// Fires at `at` (at least one microsecond from now).
    fn arm(&mut self, at: Instant) -> std::io::Result<()> {
        use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
        if self.armed == Some(at) {
            return Ok(());
        }
        let d = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_micros(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: i64::from(d.subsec_nanos()),
            },
        };
        timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &spec)?;
        self.armed = Some(at);
        Ok(())
    }

    fn drain(&mut self) {
        let mut n = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut n);
        self.armed = None;
    }
}

/// Runs `rate` requests a second for `seconds` on `o.connections` connections, all driven
/// by one thread (so the client takes as little as it can of the machine it shares with the
/// server). Request `n` is due at `n / rate` seconds and goes on connection
/// `n % connections`; a connection sends its next request when it is due and the previous
/// one is answered, and its latency counts from when it was due.
fn run(o: &Opts, rate: f64, seconds: f64, run_id: u64) -> std::io::Result<Run> {
    use std::net::ToSocketAddrs;
    let addr = o
        .host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the host has no address"))?;
    let total = (rate * seconds) as usize;
    // Every request built before the clock starts.
    let requests: Vec<Vec<u8>> = (0..total as u64)
        .map(|n| {
            let b = body(n, o.cards, run_id);
            format!(
                "POST /v1/score HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                o.host,
                o.key,
                b.len()
            )
            .into_bytes()
        })
        .collect();
    let mut poll = mio::Poll::new()?;
    let mut events = mio::Events::with_capacity(1024);
    let mut conns = Vec::with_capacity(o.connections);
    for c in 0..o.connections {
        let mut stream = connect(addr)?;
        poll.registry().register(
            &mut stream,
            mio::Token(c),
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )?;
        conns.push(Conn {
            stream,
            next: c,
            inflight: None,
            written: 0,
            buf: Vec::with_capacity(4096),
        });
    }
    let mut timer = Timer::new()?;
    let timer_token = mio::Token(usize::MAX);
    poll.registry().register(
        &mut mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&timer.fd)),
        timer_token,
        mio::Interest::READABLE,
    )?;
    let mut out = Run {
        sent: 0,
        ok: 0,
        errors: 0,
        e2e: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(std::io::Error::other)?,
        server: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(std::io::Error::other)?,
        seconds: 0.0,
        timeline: Vec::new(),
    };
    let started = Instant::now() + Duration::from_millis(100);
    let due_of = |n: usize| started + Duration::from_secs_f64(n as f64 / rate);
    let mut done = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    while done < total {
        // Send what is due on idle connections; find the next time something falls due.
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        for (i, c) in conns.iter_mut().enumerate() {
            if c.inflight.is_none() && c.next < total {
                let due = due_of(c.next);
                if due <= now {
                    c.inflight = Some((c.next, due));
                    c.written = 0;
                    c.next += o.connections;
                    out.sent += 1;
                } else {
                    wake = Some(wake.map_or(due, |w: Instant| w.min(due)));
                }
            }
            if let Some((n, _)) = c.inflight {
                let req = &requests[n];
                while c.written < req.len() {
                    match c.stream.write(&req[c.written..]) {
                        Ok(k) => c.written += k,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            fail(c, i, &mut out, &mut done, addr, &poll)?;
                            break;
                        }
                    }
                }
            }
        }
        if let Some(w) = wake {
            timer.arm(w)?;
        }
        poll.poll(&mut events, Some(Duration::from_secs(10)))?;
        if events.is_empty() {
            return Err(std::io::Error::other("no answer for 10 seconds"));
        }
        for ev in events.iter() {
            if ev.token() == timer_token {
                timer.drain();
                continue;
            }
            let i = ev.token().0;
            let c = &mut conns[i];
            if !ev.is_readable() && !ev.is_read_closed() {
                continue;
            }
            // Read all there is; an answer that arrived just before the server closed the
            // connection still counts.
            let mut closed = false;
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(k) => {
                        c.buf.extend_from_slice(&chunk[..k]);
                        // A short read took all there was: no second read to hear so.
                        if k < chunk.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            match parse_answer(&c.buf) {
                Ok(None) => {
                    if closed {
                        fail(c, i, &mut out, &mut done, addr, &poll)?;
                    }
                }
                Ok(Some((used, status, elapsed))) => {
                    c.buf.drain(..used);
                    if let Some((_, due)) = c.inflight.take() {
                        let lat = Instant::now().saturating_duration_since(due).as_micros() as u64;
                        let _ = out.e2e.record(lat.max(1));
                        done += 1;
                        if o.timeline.is_some() {
                            let at = due.saturating_duration_since(started).as_micros() as u64;
                            out.timeline.push((at, lat, elapsed.unwrap_or(0)));
                        }
                        if status == 200 {
                            out.ok += 1;
                            if let Some(us) = elapsed {
                                let _ = out.server.record(us.max(1));
                            }
                        } else {
                            out.errors += 1;
                        }
                    }
                    if closed {
                        fail(c, i, &mut out, &mut done, addr, &poll)?;
                    }
                }
                Err(_) => fail(c, i, &mut out, &mut done, addr, &poll)?,
            }
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// A connection failed: its request in flight counts as an error, and it reconnects.
fn fail(
    c: &mut Conn,
    token: usize,
    out: &mut Run,
    done: &mut usize,
    addr: std::net::SocketAddr,
    poll: &mio::Poll,
) -> std::io::Result<()> {
    if let Some((_, due)) = c.inflight.take() {
        let lat = Instant::now().saturating_duration_since(due).as_micros() as u64;
        let _ = out.e2e.record(lat.max(1));
        out.errors += 1;
        *done += 1;
    }
    let _ = poll.registry().deregister(&mut c.stream);
    c.buf.clear();
    c.stream = connect(addr)?;
    poll.registry().register(
        &mut c.stream,
        mio::Token(token),
        mio::Interest::READABLE | mio::Interest::WRITABLE,
    )
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

/// With `--timeline FILE`, writes the run's answers there (the last run's, with
/// `--find-max`): `due_us,e2e_us,server_us` per line, in the order they came, to see when
/// the slow ones were.
fn write_timeline(o: &Opts, r: &Run) {
    let Some(path) = &o.timeline else {
        return;
    };
    let mut text = String::from("due_us,e2e_us,server_us\n");
    for (at, e2e, server) in &r.timeline {
        text.push_str(&format!("{at},{e2e},{server}\n"));
    }
    if let Err(e) = std::fs::write(path, text) {
        fatal(&std::io::Error::other(format!("{path}: {e}")));
    }
}

/// CPU time so far of every thread of process `pid`, in nanoseconds (Linux: the first
/// field of `/proc/PID/task/TID/schedstat`, exact, not sampled). Threads that ended are not
/// counted: the service's threads live as long as it does.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        fatal(&std::io::Error::other(format!(
            "--server-pid {pid}: no such process (or not Linux)"
        )));
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn fatal(e: &std::io::Error) -> ! {
    eprintln!("loadgen: {e}");
    std::process::exit(1)
}

fn main() {
    let o = parse();
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if o.warmup > 0.0 {
        // Not reported: the server meets its entities for the first time here (their keys
        // are made, their state allocated), as a fresh service does once.
        let rate = if o.find_max { o.start_rate } else { o.rate };
        let r = run(&o, rate, o.warmup, run_id * 1000 + 999).unwrap_or_else(|e| fatal(&e));
        print!("warm-up ({:.0} s, not counted): ", o.warmup);
        report(rate, &r);
    }
    if !o.find_max {
        let before = o.server_pid.map(cpu_ns);
        let r = run(&o, o.rate, o.seconds, run_id).unwrap_or_else(|e| fatal(&e));
        report(o.rate, &r);
        if let (Some(pid), Some(before)) = (o.server_pid, before) {
            let used = cpu_ns(pid).saturating_sub(before);
            println!(
                "server CPU per answer: {:.1} us ({} answers; all threads of pid {pid}, /proc schedstat)",
                used as f64 / 1000.0 / (r.ok + r.errors).max(1) as f64,
                r.ok + r.errors
            );
        }
        write_timeline(&o, &r);
        return;
    }
    let mut best = None;
    let mut rate = o.start_rate;
    for k in 0..100u64 {
        let r = run(&o, rate, o.seconds, run_id * 1000 + k).unwrap_or_else(|e| fatal(&e));
        report(rate, &r);
        write_timeline(&o, &r);
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
