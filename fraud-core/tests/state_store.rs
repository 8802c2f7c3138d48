//! The state stores: label-aware features against their definition; the sharded memory store,
//! the durable store after a restart, idle eviction, and the Redis backend all give the same
//! features as offline replay; erasure removes an entity everywhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{history, Ev, RedisCluster, RedisServer};
use fraud_core::features::redis::RedisStore;
use fraud_core::features::Durability;
use fraud_core::features::{
    replay, Entity, Extractor, FeatureSpec, LabelEvent, MemoryStore, StateStore, StoreError,
};
use fraud_core::transaction::Transaction;
use proptest::prelude::*;

const LABEL_SPEC: &str = r#"
since_last = ["card", "terminal"]
first_seen = [{ entity = "card", field = "device_id" }, { entity = "customer", field = "merchant_country" }]
geo_velocity = ["card"]
retention = "3h"
[[windows]]
entity = "card"
windows = ["10m", "1h"]
aggregations = ["count", "sum", "mean", "max", "std", "amount_ratio"]
[[distinct]]
entity = "card"
field = "merchant_id"
windows = ["1h"]
[[label_rates]]
entity = "terminal"
windows = ["1h", "2h"]
delay = "20m"
"#;

fn spec() -> Extractor {
    Extractor::new(FeatureSpec::from_toml(LABEL_SPEC).unwrap()).unwrap()
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        (
            0i64..4 * 3600,
            0u32..50_000,
            0usize..3,
            0usize..4,
            0usize..3,
            prop::option::weighted(0.3, 0i64..3600),
        ),
        1..70,
    )
}

fn sorted(mut e: Vec<Ev>) -> Vec<Ev> {
    e.sort_by_key(|x| x.0);
    e
}

fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

/// The transaction without its label (online, labels arrive through feedback).
fn unlabelled(tx: &Transaction) -> Transaction {
    let mut t = tx.clone();
    t.is_fraud = None;
    t.fraud_reported_at_us = None;
    t
}

fn label_of(tx: &Transaction) -> Option<LabelEvent> {
    (tx.is_fraud == Some(true)).then(|| LabelEvent {
        id: tx_id(tx),
        ts: tx.timestamp_us,
        is_fraud: true,
        known_at: tx.fraud_reported_at_us.unwrap_or(tx.timestamp_us),
    })
}

fn tx_id(tx: &Transaction) -> u64 {
    // The same fingerprint the extractor gives (XXH3 of the id).
    let ex = Extractor::new(FeatureSpec::default()).unwrap();
    ex.observe(tx).point.id
}

/// The labelled transactions of `h` (index) in the order their labels became known.
fn by_known_time(h: &[Transaction]) -> Vec<(i64, usize)> {
    let mut labels: Vec<(i64, usize)> = h
        .iter()
        .enumerate()
        .filter_map(|(i, t)| label_of(t).map(|l| (l.known_at, i)))
        .collect();
    labels.sort();
    labels
}

/// Online: transactions in time order through `store`, each label applied through feedback at
/// the time it became known (before any transaction at or after that time).
fn online(store: &dyn StateStore, ex: &Extractor, h: &[Transaction]) -> Vec<Vec<f64>> {
    let labels = by_known_time(h);
    let mut next = 0;
    let mut out = Vec::new();
    for tx in h {
        while next < labels.len() && labels[next].0 <= tx.timestamp_us {
            let src = &h[labels[next].1];
            let l = label_of(src).unwrap();
            store.label(ex, &ex.observe(src), &l).unwrap();
            next += 1;
        }
        out.push(store.step(ex, &unlabelled(tx)).unwrap());
    }
    out
}

fn redis_store(server: &RedisServer, prefix: &str) -> RedisStore {
    let s = RedisStore::open(&server.url(), prefix, Duration::from_secs(2)).unwrap();
    s.clear().unwrap();
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn label_rates_match_their_definition(ev in events()) {
        let h = history(&ev);
        let ex = spec();
        let got = replay(&ex, &h);
        let names = ex.names();
        for (i, tx) in h.iter().enumerate() {
            let t = tx.timestamp_us;
            for (w, label) in [(3600i64, "1h"), (7200, "2h")] {
                let d = 1200 * 1_000_000i64;
                let (from, to) = (t - d - w * 1_000_000, t - d);
                let inside: Vec<&Transaction> = h.iter().filter(|o| o.terminal_id == tx.terminal_id
                    && o.timestamp_us >= from && o.timestamp_us < to).collect();
                // A label counts once known at `t`; the delay only places the window.
                let frauds = inside.iter().filter(|o| o.is_fraud == Some(true)
                    && o.fraud_reported_at_us.unwrap() <= t).count();
                let n = inside.len();
                let at = |what: &str| names.iter().position(|x| x == &format!("terminal_{what}_{label}_delay_20m")).unwrap();
                prop_assert_eq!(got[i][at("delayed_txn_count")], n as f64);
                prop_assert_eq!(got[i][at("fraud_count")], frauds as f64);
                let rate = if n == 0 { 0.0 } else { frauds as f64 / n as f64 };
                prop_assert_eq!(got[i][at("fraud_rate")], rate);
            }
        }
    }

    #[test]
    fn memory_store_with_feedback_equals_replay(ev in events()) {
        let h = history(&sorted(ev));
        for ex in [spec(), Extractor::new(FeatureSpec::default_spec()).unwrap()] {
            let offline = replay(&ex, &h);
            let store = MemoryStore::new();
            let on = online(&store, &ex, &h);
            for (i, (a, b)) in on.iter().zip(&offline).enumerate() {
                prop_assert!(same_bits(a, b), "row {}: online {:?} offline {:?}", i, a, b);
            }
        }
    }

    #[test]
    fn eviction_of_idle_entities_changes_no_feature(ev in events()) {
        let h = history(&sorted(ev));
        let ex = spec();
        let offline = replay(&ex, &h);
        let store = MemoryStore::new();
        for (i, tx) in h.iter().enumerate() {
            if i % 5 == 0 {
                store.evict_idle(&ex, tx.timestamp_us);
            }
            // Labels known at the transaction's own time are part of its record offline.
            let f = store.step(&ex, tx).unwrap();
            prop_assert!(same_bits(&f, &offline[i]), "row {}", i);
        }
    }
}

/// 40 random histories through one `redis-server`, owned by the test (a server in a
/// static would never be dropped, and so never stopped).
#[test]
fn redis_backend_equals_memory_backend() {
    let server = RedisServer::start();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(40));
    let result = runner.run(&events(), |ev| {
        let h = history(&sorted(ev));
        let ex = spec();
        let mem = MemoryStore::new();
        let red = redis_store(&server, "prop");
        let a = online(&mem, &ex, &h);
        let b = online(&red, &ex, &h);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            prop_assert!(same_bits(x, y), "row {}: memory {:?} redis {:?}", i, x, y);
        }
        // The states themselves agree too (values past the retention aside).
        for e in [Entity::Card, Entity::Customer, Entity::Terminal] {
            for (k, s) in mem.entities(e) {
                let r = red.get(e, &k).unwrap().expect("entity in redis");
                prop_assert_eq!(
                    r.normalized(ex.retention_us()),
                    s.normalized(ex.retention_us())
                );
            }
        }
        // Peeking changes nothing.
        let last = h.last().unwrap();
        let obs = ex.observe(last);
        let (mut p1, mut p2) = (ex.empty_row(), ex.empty_row());
        mem.peek(&ex, &obs, &mut p1).unwrap();
        red.peek(&ex, &obs, &mut p2).unwrap();
        prop_assert!(same_bits(&p1, &p2));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn redis_with_a_password_and_a_database_of_its_own() {
    // The store's connections log in and select the URL's database: its keys land there,
    // and a wrong password is a clear error, not a hang.
    let server = RedisServer::start();
    let port = server.port;
    server.query::<()>(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg("s3cret"),
    );
    let url = format!("redis://:s3cret@127.0.0.1:{port}/3");
    let ex = spec();
    let h = history(&sorted(vec![
        (10, 500, 0, 1, 0, None),
        (20, 700, 0, 3, 1, Some(30)),
        (25, 900, 1, 1, 0, None),
        (40, 1100, 0, 2, 0, None),
    ]));
    let red = RedisStore::open(&url, "auth", Duration::from_secs(2)).unwrap();
    let mem = MemoryStore::new();
    let (a, b) = (online(&mem, &ex, &h), online(&red, &ex, &h));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(same_bits(x, y), "row {i}: memory {x:?} redis {y:?}");
    }
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("auth:*").query(&mut c).unwrap();
    assert!(!keys.is_empty(), "no keys in database 3");
    let size: i64 = redis::cmd("SELECT")
        .arg(0)
        .query::<()>(&mut c)
        .and_then(|()| redis::cmd("DBSIZE").query(&mut c))
        .unwrap();
    assert_eq!(size, 0, "keys outside database 3");
    let wrong = format!("redis://:nope@127.0.0.1:{port}/3");
    let bad = RedisStore::open(&wrong, "auth", Duration::from_secs(2))
        .and_then(|s| s.peek(&ex, &ex.observe(&h[0]), &mut ex.empty_row()));
    let e = bad.expect_err("a wrong password is refused").to_string();
    assert!(e.contains("WRONGPASS") || e.contains("invalid"), "{e}");
}

#[test]
fn redis_records_a_transaction_once_whichever_replica_sends_it() {
    // Two replicas share one Redis. Every transaction goes to the first, and again (a client
    // retry, or the same id sent to both) to the second: the second gets the same features
    // bit for bit, and the state is that of each transaction counted once.
    let server = RedisServer::start();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(20));
    let result = runner.run(&events(), |ev| {
        let h: Vec<Transaction> = history(&sorted(ev)).iter().map(unlabelled).collect();
        let ex = spec();
        let mem = MemoryStore::new();
        let a = redis_store(&server, "dup");
        let b = RedisStore::open(&server.url(), "dup", Duration::from_secs(2)).unwrap();
        for (i, tx) in h.iter().enumerate() {
            let want = mem.step(&ex, tx).unwrap();
            let first = a.step(&ex, tx).unwrap();
            let again = b.step(&ex, tx).unwrap();
            prop_assert!(
                same_bits(&want, &first),
                "row {}: {:?} {:?}",
                i,
                want,
                first
            );
            prop_assert!(
                same_bits(&first, &again),
                "row {}: {:?} {:?}",
                i,
                first,
                again
            );
        }
        for e in [Entity::Card, Entity::Customer, Entity::Terminal] {
            for (k, s) in mem.entities(e) {
                let r = b.get(e, &k).unwrap().expect("entity in redis");
                prop_assert_eq!(
                    r.normalized(ex.retention_us()),
                    s.normalized(ex.retention_us())
                );
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A Redis Cluster of three primaries: every entity in its own slot, one script call per
/// entity. The features are the memory backend's bit for bit (labels included), a
/// transaction sent again through another store is counted once, and a card's state moves
/// to a new token across slots.
#[test]
fn redis_cluster_equals_memory_and_counts_each_transaction_once() {
    let cluster = RedisCluster::start();
    let nodes = cluster.urls();
    let open =
        |prefix: &str| RedisStore::open_cluster(&nodes, prefix, Duration::from_secs(2)).unwrap();
    assert!(RedisStore::open_cluster(&nodes, "a{b}", Duration::from_secs(2)).is_err());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(20));
    let result = runner.run(&events(), |ev| {
        let h = history(&sorted(ev));
        let ex = spec();
        let mem = MemoryStore::new();
        let red = open("cl");
        red.clear().unwrap();
        let a = online(&mem, &ex, &h);
        let b = online(&red, &ex, &h);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            prop_assert!(same_bits(x, y), "row {}: memory {:?} cluster {:?}", i, x, y);
        }
        for e in [Entity::Card, Entity::Customer, Entity::Terminal] {
            for (k, s) in mem.entities(e) {
                let r = red.get(e, &k).unwrap().expect("entity in the cluster");
                prop_assert_eq!(
                    r.normalized(ex.retention_us()),
                    s.normalized(ex.retention_us())
                );
            }
        }
        // Each transaction again, through another store on the cluster: same features,
        // counted once.
        let again = open("cl2");
        again.clear().unwrap();
        let first = open("cl2");
        let mem2 = MemoryStore::new();
        for (i, tx) in h.iter().map(unlabelled).enumerate() {
            let want = mem2.step(&ex, &tx).unwrap();
            let one = first.step(&ex, &tx).unwrap();
            let two = again.step(&ex, &tx).unwrap();
            prop_assert!(same_bits(&want, &one), "row {}", i);
            prop_assert!(same_bits(&one, &two), "row {}", i);
        }
        // A card's state moves to a new token (another slot), and is erased there.
        if let Some((k, s)) = mem.entities(Entity::Card).into_iter().next() {
            prop_assert!(red.rename(Entity::Card, &k, "moved-token").unwrap());
            prop_assert!(red.get(Entity::Card, &k).unwrap().is_none());
            let moved = red
                .get(Entity::Card, "moved-token")
                .unwrap()
                .expect("moved");
            prop_assert_eq!(
                moved.normalized(ex.retention_us()),
                s.normalized(ex.retention_us())
            );
            prop_assert!(!red.rename(Entity::Card, &k, "moved-token").unwrap());
            prop_assert!(red.erase(Entity::Card, "moved-token").unwrap());
            prop_assert!(red.get(Entity::Card, "moved-token").unwrap().is_none());
        }
        prop_assert!(red.clear().unwrap() > 0);
        for (k, _) in mem.entities(Entity::Terminal) {
            prop_assert!(red.get(Entity::Terminal, &k).unwrap().is_none());
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn redis_bounds_a_hot_entity_as_memory_does() {
    // One card, 6,000 transactions in an hour, each on a new device and merchant, every tenth
    // fraud (labels through feedback): past the raw-event cap (folds), the seen-value cap and
    // the fraud-label cap, both backends give the same bits and hold the same state.
    let server = RedisServer::start();
    let ex = spec();
    let mut h = common::card_testing(6_000, 3600);
    // Then 1,500 more at one second (ties at the seen-value cap).
    let late = h.last().unwrap().timestamp_us + 1_000_000;
    for mut tx in common::card_testing(1_500, 0) {
        tx.timestamp_us = late;
        tx.transaction_id = format!("late-{}", tx.transaction_id);
        tx.fraud_reported_at_us = tx.fraud_reported_at_us.map(|_| late + 60_000_000);
        h.push(tx);
    }
    let mem = MemoryStore::new();
    let red = redis_store(&server, "hot");
    let a = online(&mem, &ex, &h);
    let b = online(&red, &ex, &h);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(same_bits(x, y), "row {i}: memory {x:?} redis {y:?}");
    }
    for e in [Entity::Card, Entity::Terminal] {
        let states = mem.entities(e);
        assert!(!states.is_empty());
        for (k, s) in states {
            let r = red.get(e, &k).unwrap().expect("entity in redis");
            assert_eq!(
                r.normalized(ex.retention_us()),
                s.normalized(ex.retention_us())
            );
            assert!(r.heap_bytes() < 160 * 1024, "{} bytes", r.heap_bytes());
        }
    }
}

#[test]
fn redis_moves_a_few_bytes_per_transaction_of_a_hot_entity() {
    // Two replicas alternate on one hot card (a card-testing attack, every tenth transaction
    // fraud, its label through feedback on either replica): the features are the memory
    // backend's bit for bit, and what a round trip reads stays a few hundred bytes while the
    // card's state grows to tens of KiB (each replica keeps a copy and reads only the
    // operations it has not seen).
    let server = RedisServer::start();
    let ex = spec();
    let h = common::card_testing(4_000, 3600);
    let mem = MemoryStore::new();
    let a = redis_store(&server, "o1");
    let b = RedisStore::open(&server.url(), "o1", Duration::from_secs(2)).unwrap();
    let labels = by_known_time(&h);
    let mut next = 0;
    let mut read_at_half = 0;
    for (i, tx) in h.iter().enumerate() {
        while next < labels.len() && labels[next].0 <= tx.timestamp_us {
            let src = &h[labels[next].1];
            let l = label_of(src).unwrap();
            mem.label(&ex, &ex.observe(src), &l).unwrap();
            let via = if next % 2 == 0 { &a } else { &b };
            via.label(&ex, &ex.observe(src), &l).unwrap();
            next += 1;
        }
        if i == h.len() / 2 {
            read_at_half = a.bytes_read() + b.bytes_read();
        }
        let tx = unlabelled(tx);
        let want = mem.step(&ex, &tx).unwrap();
        let replica = if i % 2 == 0 { &a } else { &b };
        let got = replica.step(&ex, &tx).unwrap();
        assert!(
            same_bits(&want, &got),
            "row {i}: memory {want:?} redis {got:?}"
        );
        // Now and then the other replica peeks at it (reads, records nothing).
        if i % 97 == 0 {
            let other = if i % 2 == 0 { &b } else { &a };
            let (mut p1, mut p2) = (ex.empty_row(), ex.empty_row());
            mem.peek(&ex, &ex.observe(&tx), &mut p1).unwrap();
            other.peek(&ex, &ex.observe(&tx), &mut p2).unwrap();
            assert!(same_bits(&p1, &p2), "peek after row {i}");
        }
    }
    let half = (h.len() - h.len() / 2) as u64;
    let per_tx = (a.bytes_read() + b.bytes_read() - read_at_half) / half;
    let card = mem.entities(Entity::Card);
    let state = card[0].1.heap_bytes();
    eprintln!("hot card: {per_tx} bytes read a transaction, state {state} bytes");
    assert!(state > 16 * 1024, "the hot card's state is {state} bytes");
    assert!(
        per_tx < 1024,
        "{per_tx} bytes read a transaction of the hot card (its state: {state} bytes)"
    );
    for e in [Entity::Card, Entity::Terminal] {
        for (k, s) in mem.entities(e) {
            let r = b.get(e, &k).unwrap().expect("entity in redis");
            assert_eq!(
                r.normalized(ex.retention_us()),
                s.normalized(ex.retention_us())
            );
        }
    }
}

#[test]
fn redis_follows_a_sentinel_failover() {
    // A primary, its replica and a sentinel. Half a card-testing attack goes through the
    // primary; it dies; the sentinel promotes the replica and the store finds it by itself:
    // the rest of the attack gets the features the memory backend gives, every earlier
    // transaction counted (they had reached the replica).
    let primary = RedisServer::start();
    let port = primary.port.to_string();
    let replica = RedisServer::start_on(
        common::free_port(),
        &[
            "--replicaof",
            "127.0.0.1",
            &port,
            "--replica-priority",
            "10",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info: String = replica.query(redis::cmd("INFO").arg("replication"));
        if info.contains("master_link_status:up") {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never synced");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sentinel = common::redis_sentinel(primary.port, "fraudprimary", 500, 1);
    let store = RedisStore::open_sentinel(
        &[sentinel.url()],
        "fraudprimary",
        None,
        "sen",
        Duration::from_secs(2),
    )
    .unwrap();
    store.clear().unwrap();
    let ex = spec();
    let h: Vec<Transaction> = common::card_testing(200, 600)
        .iter()
        .map(unlabelled)
        .collect();
    let mem = MemoryStore::new();
    for (i, tx) in h[..100].iter().enumerate() {
        let (want, got) = (mem.step(&ex, tx).unwrap(), store.step(&ex, tx).unwrap());
        assert!(same_bits(&want, &got), "row {i}");
    }
    let acked: i64 = primary.query(redis::cmd("WAIT").arg(1).arg(10_000));
    assert_eq!(acked, 1, "the replica did not acknowledge the writes");
    drop(primary);
    let deadline = Instant::now() + Duration::from_secs(90);
    for (i, tx) in h[100..].iter().enumerate() {
        let want = mem.step(&ex, tx).unwrap();
        let got = loop {
            match store.step(&ex, tx) {
                Ok(f) => break f,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no failover: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        assert!(same_bits(&want, &got), "row {}", 100 + i);
    }
    let role: Vec<redis::Value> = replica.query(&redis::cmd("ROLE"));
    assert!(
        matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master"),
        "{role:?}"
    );
    assert!(RedisStore::open_sentinel(&[], "x", None, "p", Duration::from_secs(1)).is_err());
}

#[test]
fn durable_store_recovers_every_acknowledged_event() {
    let ev: Vec<Ev> = (0..400)
        .map(|i| {
            let i = i as i64;
            (
                i * 37,
                (i * 7919 % 50_000) as u32,
                (i % 3) as usize,
                (i % 4) as usize,
                (i % 3) as usize,
                (i % 11 == 0).then_some(600),
            )
        })
        .collect();
    let h = history(&ev);
    let ex = spec();
    let dir = tempfile::tempdir().unwrap();
    let mut got = Vec::new();
    // Three lives: a snapshot in the first, a crash (drop without snapshot) after each.
    let cuts = [0, 150, 290, h.len()];
    for life in 0..3 {
        let store = MemoryStore::open(dir.path(), &ex, Durability::Sync).unwrap();
        let part = &h[cuts[life]..cuts[life + 1]];
        for (j, tx) in part.iter().enumerate() {
            if life == 0 && j == 70 {
                store.snapshot().unwrap();
            }
            got.push(store.step(&ex, &unlabelled(tx)).unwrap());
        }
        drop(store);
    }
    // The same transactions through a store that never stopped.
    let plain = MemoryStore::new();
    let want_plain: Vec<Vec<f64>> = h
        .iter()
        .map(|tx| plain.step(&ex, &unlabelled(tx)).unwrap())
        .collect();
    for (i, (a, b)) in got.iter().zip(&want_plain).enumerate() {
        assert!(same_bits(a, b), "row {i} after restarts differs");
    }
    let recovered = MemoryStore::open(dir.path(), &ex, Durability::Sync).unwrap();
    for e in [Entity::Card, Entity::Customer, Entity::Terminal] {
        assert_eq!(recovered.entities(e), plain.entities(e), "{e:?} state");
    }
}

#[test]
fn labels_and_erasure_survive_a_restart() {
    let ev: Vec<Ev> = (0..60)
        .map(|i| (i * 60, 1000 + i as u32, 0, 0, 0, None))
        .collect();
    let h = history(&ev);
    let ex = spec();
    let dir = tempfile::tempdir().unwrap();
    {
        let store = MemoryStore::open(dir.path(), &ex, Durability::Write).unwrap();
        for tx in &h {
            store.step(&ex, tx).unwrap();
        }
        let l = LabelEvent {
            id: tx_id(&h[3]),
            ts: h[3].timestamp_us,
            is_fraud: true,
            known_at: h[10].timestamp_us,
        };
        store.label(&ex, &ex.observe(&h[3]), &l).unwrap();
    }
    let store = MemoryStore::open(dir.path(), &ex, Durability::Write).unwrap();
    let term = store.get(Entity::Terminal, "term0").unwrap().unwrap();
    let probe = h.last().unwrap();
    let mut row = ex.empty_row();
    store.peek(&ex, &ex.observe(probe), &mut row).unwrap();
    let fc = ex
        .names()
        .iter()
        .position(|n| n == "terminal_fraud_count_2h_delay_20m")
        .unwrap();
    assert_eq!(row[fc], 1.0, "the label came back after the restart");
    assert!(term.touched() > 0);

    // Erasure: gone from the state, and after the snapshot it triggers, from every file.
    let customer = "c0";
    assert!(store.erase(Entity::Customer, customer).unwrap());
    assert!(!store.erase(Entity::Customer, customer).unwrap());
    drop(store);
    let store = MemoryStore::open(dir.path(), &ex, Durability::Write).unwrap();
    assert!(store.get(Entity::Customer, customer).unwrap().is_none());
    assert!(store.get(Entity::Terminal, "term0").unwrap().is_some());
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let path = f.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let needle = b"\x02c0";
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the erased key is still in {}",
            path.display()
        );
    }
}

#[test]
fn a_torn_last_record_is_dropped_and_a_damaged_one_refused() {
    let ev: Vec<Ev> = (0..20).map(|i| (i * 60, 500, 1, 1, 1, None)).collect();
    let h = history(&ev);
    let ex = spec();
    let dir = tempfile::tempdir().unwrap();
    {
        let store = MemoryStore::open(dir.path(), &ex, Durability::Sync).unwrap();
        for tx in &h {
            store.step(&ex, tx).unwrap();
        }
    }
    let mut segs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("log-"))
        .collect();
    segs.sort();
    let full = segs[0].clone();
    let len = std::fs::metadata(&full).unwrap().len();
    // A crash in the middle of the last write: the record is cut short.
    let f = std::fs::OpenOptions::new().write(true).open(&full).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    // It is the last segment with records, but a newer empty one follows it: make the damaged
    // one the last by removing the empty one, as a crash right after the write would leave it.
    for s in &segs[1..] {
        std::fs::remove_file(s).unwrap();
    }
    let store = MemoryStore::open(dir.path(), &ex, Durability::Sync).unwrap();
    let card = store.entities(Entity::Card);
    assert_eq!(card.len(), 1);
    assert_eq!(
        card[0].1.touched(),
        h[18].timestamp_us,
        "the torn 20th record is gone"
    );
    drop(store);

    // A flipped byte inside an older segment is damage, not a torn tail: refused, named.
    let mut bytes = std::fs::read(&full).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&full, bytes).unwrap();
    let err = MemoryStore::open(dir.path(), &ex, Durability::Sync).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { .. }),
        "{err}: expected corruption"
    );
    assert!(err.to_string().contains("log-"), "{err}");
}

#[test]
fn a_state_built_with_another_spec_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ex = spec();
    drop(MemoryStore::open(dir.path(), &ex, Durability::Write).unwrap());
    let other = Extractor::new(FeatureSpec::default_spec()).unwrap();
    let err = MemoryStore::open(dir.path(), &other, Durability::Write).unwrap_err();
    assert!(matches!(err, StoreError::SpecChanged { .. }), "{err}");
}

#[test]
fn concurrent_steps_equal_replay() {
    // Four threads, each with its own card, customer, device and terminal.
    let ex = Extractor::new(FeatureSpec::default_spec()).unwrap();
    let tk = fraud_core::pii::Tokenizer::new(&[5u8; 32]).unwrap();
    let cards = [
        "4111111111111111",
        "5555555555554444",
        "378282246310005",
        "6011111111111117",
    ];
    let mut all = Vec::new();
    for (w, card) in cards.iter().enumerate() {
        let mut mine = Vec::new();
        for i in 0..300i64 {
            let json = format!(
                r#"{{"transaction_id":"w{w}-{i}","timestamp":"2024-03-01T00:00:00Z","amount":"{}.{:02}","currency":"EUR","card_number":"{card}","customer_id":"cust{w}","terminal_id":"term{w}","device_id":"dev{w}-{}","merchant_id":"m{}"}}"#,
                1 + (i * 31) % 400,
                i % 100,
                i % 3,
                i % 5
            );
            let mut tx = Transaction::from_json(json.as_bytes(), &tk).unwrap();
            tx.timestamp_us += i * 45_000_000;
            mine.push(tx);
        }
        all.push(mine);
    }
    let store = MemoryStore::new();
    let results: Vec<Vec<Vec<f64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = all
            .iter()
            .map(|mine| {
                let (store, ex) = (&store, &ex);
                s.spawn(move || mine.iter().map(|tx| store.step(ex, tx).unwrap()).collect())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (mine, got) in all.iter().zip(results) {
        let want = replay(&ex, mine);
        for (a, b) in got.iter().zip(&want) {
            assert!(same_bits(a, b));
        }
    }
    let st = store.stats();
    assert_eq!(st.entities[Entity::Card.index()], 4);
    assert!(st.heap_bytes > 0 && st.events > 0);
}

#[test]
fn redis_erasure_and_bounded_timeouts() {
    let server = RedisServer::start();
    let ex = spec();
    let store = RedisStore::open(&server.url(), "t", Duration::from_millis(300)).unwrap();
    let ev: Vec<Ev> = (0..10).map(|i| (i * 60, 700, 2, 2, 2, None)).collect();
    let h = history(&ev);
    for tx in &h {
        store.step(&ex, tx).unwrap();
    }
    // A label for a terminal before any transaction of it, then its transactions.
    let late: Vec<Ev> = (0..3)
        .map(|i| (900 + i * 60, 700, 1, 2, 9, Some(30)))
        .collect();
    let late = history(&late);
    let first = label_of(&late[0]).unwrap();
    store.label(&ex, &ex.observe(&late[0]), &first).unwrap();
    for tx in &late {
        store.step(&ex, &unlabelled(tx)).unwrap();
    }
    // And a hot card, whose events and seen values outgrow its hash (into sorted sets).
    for tx in common::card_testing(100, 600) {
        store.step(&ex, &unlabelled(&tx)).unwrap();
    }
    // Every key of every entity (hash, events, seen values) expires: none outlives its
    // entity's retention by more than half of it.
    let keys: Vec<String> = server.query(redis::cmd("KEYS").arg("t:*"));
    assert!(keys.iter().any(|k| k.contains(".e:")) && keys.iter().any(|k| k.contains(".s:")));
    let limit = ex.retention_us() / 1000 * 3 / 2;
    for k in &keys {
        let ttl: i64 = server.query(redis::cmd("PTTL").arg(k));
        assert!(ttl > 0 && ttl <= limit, "{k}: {ttl} ms");
    }
    assert!(store.get(Entity::Customer, "c0").unwrap().is_some());
    assert!(store.erase(Entity::Customer, "c0").unwrap());
    assert!(store.get(Entity::Customer, "c0").unwrap().is_none());
    assert!(!store.erase(Entity::Customer, "c0").unwrap());
    let left: Vec<String> = server.query(redis::cmd("KEYS").arg("t:customer*:c0"));
    assert!(left.is_empty(), "{left:?}");

    // A server that stops answering: every call gives up within its timeout.
    server.signal("STOP");
    let start = Instant::now();
    let err = store.step(&ex, &h[0]).unwrap_err();
    let waited = start.elapsed();
    server.signal("CONT");
    assert!(matches!(err, StoreError::Redis(_)), "{err}");
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
    // And it works again by itself once the server is back.
    // (Waits for the event, however loaded the machine: up to a minute.)
    let mut ok = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if store.step(&ex, &h[1]).is_ok() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok, "the store did not recover after redis came back");
    drop(server);
    let err =
        RedisStore::open("redis://127.0.0.1:1/", "x", Duration::from_millis(300)).unwrap_err();
    assert!(err.to_string().starts_with("redis:"), "{err}");
}

#[test]
fn replay_does_not_depend_on_the_number_of_threads() {
    let ev: Vec<Ev> = (0..3000)
        .map(|i| {
            let i = i as i64;
            (
                (i * 7919) % 14_400,
                (i * 104_729 % 50_000) as u32,
                (i % 3) as usize,
                (i % 4) as usize,
                (i % 3) as usize,
                (i % 13 == 0).then_some(300),
            )
        })
        .collect();
    let h = history(&ev);
    for ex in [spec(), Extractor::new(FeatureSpec::default_spec()).unwrap()] {
        let runs: Vec<Vec<f64>> = [1, 2, 5]
            .iter()
            .map(|&t| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap()
                    .install(|| fraud_core::features::replay_flat(&ex, &h))
            })
            .collect();
        assert!(same_bits(&runs[0], &runs[1]) && same_bits(&runs[0], &runs[2]));
    }
}
