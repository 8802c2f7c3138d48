//! Helpers shared by the integration tests: random histories and a real `redis-server`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fraud_core::pii::Tokenizer;
use fraud_core::transaction::{Decimal, RawTransaction, Transaction};

pub const CARDS: [&str; 3] = ["4111111111111111", "5555555555554444", "378282246310005"];

/// One generated event: (seconds from the start, cents, card, device or none (3), terminal,
/// fraud reported this many seconds after (none: not fraud)).
pub type Ev = (i64, u32, usize, usize, usize, Option<i64>);

/// Transactions from generated events.
pub fn history(events: &[Ev]) -> Vec<Transaction> {
    let tk = Tokenizer::new(&[9u8; 32]).unwrap();
    let rfc = |s: i64| {
        time::OffsetDateTime::from_unix_timestamp(1_700_000_000 + s)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    events
        .iter()
        .enumerate()
        .map(|(i, &(ts, cents, card, device, terminal, fraud))| {
            let raw = RawTransaction {
                transaction_id: Some(format!("t{i}")),
                timestamp: Some(rfc(ts)),
                amount: Some(Decimal::Text(format!(
                    "{}.{:02}",
                    cents / 100 + 1,
                    cents % 100
                ))),
                currency: Some("EUR".into()),
                card_number: Some(CARDS[card].to_string().into()),
                customer_id: Some(format!("c{}", card % 2)),
                device_id: (device < 3).then(|| format!("d{device}")),
                terminal_id: Some(format!("term{terminal}")),
                merchant_id: (cents % 5 != 0).then(|| format!("m{}", cents % 4)),
                merchant_country: Some(["FR", "DE", "US"][(cents % 3) as usize].into()),
                latitude: (cents % 3 != 0).then(|| 40.0 + (cents % 97) as f64 / 10.0),
                longitude: (cents % 3 != 0).then(|| -3.0 + (cents % 89) as f64 / 10.0),
                is_fraud: Some(u8::from(fraud.is_some())),
                fraud_reported_at: fraud.map(|d| rfc(ts + d)),
                ..Default::default()
            };
            Transaction::from_raw(raw, &tk).unwrap()
        })
        .collect()
}

/// A card-testing attack: `n` transactions of one card, spread over `span` seconds, each on
/// its own device and merchant, every tenth one fraud (reported a minute later), on one
/// terminal.
pub fn card_testing(n: usize, span: i64) -> Vec<Transaction> {
    let tk = Tokenizer::new(&[9u8; 32]).unwrap();
    (0..n)
        .map(|i| {
            let s = i as i64 * span / n as i64;
            let rfc = |s: i64| {
                time::OffsetDateTime::from_unix_timestamp(1_700_000_000 + s)
                    .unwrap()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap()
            };
            let raw = RawTransaction {
                transaction_id: Some(format!("a{i}")),
                timestamp: Some(rfc(s)),
                amount: Some(Decimal::Text(format!("{}.{:02}", 1 + i % 37, i % 100))),
                currency: Some("EUR".into()),
                card_number: Some(CARDS[0].to_string().into()),
                customer_id: Some("c".into()),
                device_id: Some(format!("d{i}")),
                merchant_id: Some(format!("m{i}")),
                terminal_id: Some("t".into()),
                is_fraud: Some(u8::from(i % 10 == 0)),
                fraud_reported_at: (i % 10 == 0).then(|| rfc(s + 60)),
                ..Default::default()
            };
            Transaction::from_raw(raw, &tk).unwrap()
        })
        .collect()
}

/// A `redis-server` of its own on a free local port, stopped when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn redis_binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

impl RedisServer {
    /// Starts the server and waits until it answers. Fails loudly when `redis-server` is
    /// missing: the test command installs it (Debian package `redis-server`).
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port, &[])
    }

    /// Runs `cmd` (a `redis-server` on `port`, its files in `dir`), quietly.
    fn spawn(mut cmd: Command, port: u16, dir: tempfile::TempDir) -> RedisServer {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: install the Debian package redis-server (the test command does)");
        RedisServer {
            child,
            port,
            _dir: dir,
        }
    }

    /// A server on `port` with `extra` arguments, once it answers.
    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(redis_binary());
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .arg("--dir")
            .arg(dir.path());
        let server = RedisServer::spawn(cmd, port, dir);
        let start = Instant::now();
        loop {
            if let Ok(c) = redis::Client::open(server.url()) {
                if let Ok(mut conn) = c.get_connection_with_timeout(Duration::from_millis(200)) {
                    if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                        return server;
                    }
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis-server did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A command to this server alone.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut c = redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap();
        cmd.query(&mut c).unwrap()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`STOP`, `CONT`) to the server.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Sentinel of its own on a free port, watching the primary on `primary_port` as
/// `name` (quorum 1, down after `down_ms`), once it answers and knows `replicas` replicas
/// of it (it can fail over only to a replica it knows).
pub fn redis_sentinel(primary_port: u16, name: &str, down_ms: u64, replicas: usize) -> RedisServer {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor {name} 127.0.0.1 {primary_port} 1\n\
             sentinel down-after-milliseconds {name} {down_ms}\n\
             sentinel failover-timeout {name} 10000\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(redis_binary());
    cmd.arg(&conf).arg("--sentinel");
    let server = RedisServer::spawn(cmd, port, dir);
    let start = Instant::now();
    loop {
        let known = redis::Client::open(server.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| {
                redis::cmd("SENTINEL")
                    .arg("replicas")
                    .arg(name)
                    .query::<Vec<redis::Value>>(&mut c)
            });
        if matches!(&known, Ok(r) if r.len() >= replicas) {
            return server;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the sentinel did not come up knowing {replicas} replicas: {known:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free local port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Redis Cluster of three primaries of its own (each its own `redis-server`, the slots
/// split in three, introduced to each other), once every node says the cluster is ok.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// A free port whose cluster bus port (+10,000) is free too.
fn cluster_port() -> u16 {
    loop {
        let p = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Some(bus) = p.checked_add(10_000) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", bus)).is_ok() {
            return p;
        }
    }
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_on(
                    cluster_port(),
                    &["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"],
                )
            })
            .collect();
        for (n, (a, b)) in nodes.iter().zip([(0, 5460), (5461, 10922), (10923, 16383)]) {
            let _: String = n.query(redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(a).arg(b));
        }
        for n in &nodes[1..] {
            let _: String = nodes[0].query(
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(n.port),
            );
        }
        let start = Instant::now();
        loop {
            let ready = nodes.iter().all(|n| {
                let info: String = n.query(redis::cmd("CLUSTER").arg("INFO"));
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            });
            if ready {
                return RedisCluster { nodes };
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the Redis Cluster did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
