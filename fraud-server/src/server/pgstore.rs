//! The decision log on PostgreSQL (`[store] backend = "postgres"`): what several replicas of
//! the service share. Every replica writes its own hash chain into one table,
//! `fraud_records (replica, seq, hash, body, kind, transaction_id)`, each body the same JSON
//! as a line of the file log plus the `replica` that wrote it, so `fraud audit verify
//! --store` checks every chain as it checks a log directory, and then that no transaction
//! has two decisions.
//!
//! - Group commit: records are chained in memory under one lock and committed by one thread
//!   in batches (one transaction, one multi-row insert; under load the batches go
//!   [`GATHER`] apart, so that each carries more); a decision's answer waits for its
//!   batch's commit ([`Journal::durable`]), an event's append returns after it.
//! - Idempotency across replicas: a transaction id is claimed in `fraud_claims` before it is
//!   scored (a second replica answers 409 meanwhile). The committer claims every transaction
//!   waiting in the statement that commits the records waiting ([`COMMIT`]): one statement,
//!   one round trip, for both (a statement costs the server more than the rows it writes);
//!   the commit of its decision marks the claim done in the same transaction (a done claim
//!   is never taken over: a replica whose look for the decision came just before that
//!   commit finds the claim, not a free id), and done claims are dropped once no statement
//!   can be that late. A claim is taken over when its replica no longer holds its lock (the
//!   process died: a client's retry on another replica goes through at once), when it is
//!   older than [`CLAIM_LAPSE`], or by its own replica again (whose requests the engine
//!   keeps apart). Decisions are found by transaction id from any replica. A request
//!   awaits its claim without holding a thread ([`Journal::begin_async`]): only the scoring
//!   that follows, which waits on the entity state, takes one from the blocking pool.
//! - One process per replica id: the committer holds a session advisory lock on it.
//! - Models: an upload is published (`fraud_models`, `fraud_model_roles`) and every
//!   replica follows the assignment ([`super::engine::Engine::follow_models`]).
//! - An unreachable server: the committer retries the batch (skipping what a commit whose
//!   answer was lost did write); answers waiting for it fail after the timeout with 503, and
//!   the decision is still committed later (a client retry then gets it, replayed).

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls, Statement};

use super::keys::KeyRecord;
use super::users::{Attempts, ConsoleStore, Decide, LoggedIn, LoginRefusal, StoredSession};
use super::vault::{RemoteKeys, Vault};

use super::decisions::{
    append_record, hash, now_rfc3339, Begin, Beginning, Durable, Event, Head, Journal, Kind,
    LogError, Record, Removed, GENESIS,
};

/// How long a claim holds against another replica without its decision being committed.
pub const CLAIM_LAPSE: Duration = Duration::from_secs(30);

/// Records waiting for the committer at most: beyond, appends fail at once (the server has
/// been unreachable for a while) rather than holding memory without bound.
const MAX_PENDING: usize = 100_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fraud_records (
    replica text NOT NULL,
    seq bigint NOT NULL,
    hash text NOT NULL,
    body text NOT NULL,
    kind text NOT NULL,
    transaction_id text,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (replica, seq)
);
DO $$ BEGIN
    -- lz4 where the server has it: a record's body (2-3 KiB of JSON) is compressed several
    -- times faster than with the default pglz.
    ALTER TABLE fraud_records ALTER COLUMN body SET COMPRESSION lz4;
EXCEPTION WHEN OTHERS THEN NULL;
END $$;
-- What the other replicas' review queues read of a decision (outcome, score, time,
-- merchant category; no entity field), so that they never open its body.
ALTER TABLE fraud_records ADD COLUMN IF NOT EXISTS summary text;
CREATE INDEX IF NOT EXISTS fraud_records_decision ON fraud_records (transaction_id)
    WHERE kind = 'decision';
CREATE TABLE IF NOT EXISTS fraud_models (
    version text PRIMARY KEY,
    artifact bytea NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS fraud_model_roles (
    role text PRIMARY KEY,
    version text REFERENCES fraud_models (version),
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS fraud_replicas (
    replica text PRIMARY KEY,
    since timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS fraud_console_sessions (
    key text PRIMARY KEY,
    body text NOT NULL,
    flash text,
    created timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS fraud_console_logins (
    name text PRIMARY KEY,
    state text NOT NULL
);
CREATE TABLE IF NOT EXISTS fraud_vault_keys (
    key_ref text PRIMARY KEY,
    entity text NOT NULL,
    key text NOT NULL,
    made_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS fraud_vault_keys_entity ON fraud_vault_keys (entity);
CREATE TABLE IF NOT EXISTS fraud_api_keys (
    name text PRIMARY KEY,
    record text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS fraud_feature_sets (
    id text PRIMARY KEY,
    names text NOT NULL,
    kept_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNLOGGED TABLE IF NOT EXISTS fraud_claims (
    transaction_id text PRIMARY KEY,
    replica text NOT NULL,
    lock_key bigint NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE fraud_claims ADD COLUMN IF NOT EXISTS done boolean NOT NULL DEFAULT false;
ALTER TABLE fraud_vault_keys ADD COLUMN IF NOT EXISTS last_used timestamptz NOT NULL DEFAULT now();
ALTER TABLE fraud_vault_keys ADD COLUMN IF NOT EXISTS erased boolean NOT NULL DEFAULT false;
";

fn io(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Io {
        path: std::path::PathBuf::from(format!("postgres ({what})")),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Runs `f` on the connection in `slot`, made when there is none (or the server closed it:
/// then once more on a new one, as after a restart); a failure leaves the slot empty.
fn on_conn<T>(
    slot: &mut Option<Conn>,
    url: &str,
    timeout: Duration,
    f: &dyn Fn(&mut Conn) -> Result<T, postgres::Error>,
) -> Result<T, LogError> {
    let out = (|| {
        if let Some(c) = slot.as_mut().filter(|c| !c.client.is_closed()) {
            match f(c) {
                // A kept connection the server closed (a restart): once more on a new one.
                Err(e) if e.is_closed() || c.client.is_closed() => *slot = None,
                r => return r.map_err(|e| io("query", e)),
            }
        }
        let c = slot.insert(Conn::new(connect(url, timeout)?));
        f(c).map_err(|e| io("query", e))
    })();
    if out.is_err() {
        *slot = None;
    }
    out
}

/// Connects to `url` with `timeout` for the connection.
fn connect(url: &str, timeout: Duration) -> Result<Client, LogError> {
    let mut cfg: postgres::Config = url.parse().map_err(|e| io("url", e))?;
    cfg.connect_timeout(timeout);
    cfg.connect(NoTls).map_err(|e| io("connect", e))
}

/// The advisory-lock key of a replica id.
fn lock_key(replica: &str) -> i64 {
    let h = hash("fraud-replica", replica.as_bytes());
    i64::from_str_radix(&h[..15], 16).unwrap_or(0)
}

/// A record chained, waiting for its commit.
struct Row {
    seq: i64,
    hash: String,
    body: String,
    kind: &'static str,
    transaction_id: Option<String>,
    summary: Option<String>,
}

struct State {
    seq: u64,
    last_hash: String,
    pending: Vec<Row>,
    /// Entity keys made here and not committed yet: (key ref, entity hash, key text). They
    /// go with the next batch, in its transaction: before or with any record using them.
    keys: Vec<[String; 3]>,
    /// Decisions not committed yet, by transaction id: their bodies (found before commit).
    uncommitted: HashMap<String, String>,
    committed: u64,
    /// The committer's last error, while it retries.
    error: Option<String>,
    /// Transactions waiting for their claim: the committer's next statement claims them.
    claims: Vec<(String, ClaimAnswer)>,
    stop: bool,
}

impl State {
    /// Records or claims wait for the committer.
    fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.claims.is_empty()
    }
}

struct Shared {
    replica: String,
    url: String,
    timeout: Duration,
    sealer: Option<super::seal::Sealer>,
    state: Mutex<State>,
    /// The committer's wake-up.
    work: Condvar,
    /// Commits, for appends waiting on a thread.
    done: Condvar,
    durable: tokio::sync::watch::Sender<Durable>,
    /// Jobs for the reader threads.
    readers: Mutex<std::sync::mpsc::Sender<Job>>,
}

/// A query run on a reader thread, with that thread's connection (made when needed).
type Job = Box<dyn FnOnce(&mut Option<Conn>) + Send>;

/// A connection and the statements prepared on it (each parsed and planned once).
pub(crate) struct Conn {
    client: Client,
    stmts: HashMap<&'static str, Statement>,
}

impl Conn {
    fn new(client: Client) -> Self {
        Conn {
            client,
            stmts: HashMap::new(),
        }
    }

    /// `sql`, prepared on this connection the first time.
    fn stmt(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }
}

/// The decision of a transaction.
const DECIDED: &str =
    "SELECT body FROM fraud_records WHERE kind = 'decision' AND transaction_id = $1
     ORDER BY written_at, replica, seq LIMIT 1";

/// Most transactions claimed in one statement.
const MAX_CLAIMS: usize = 512;

/// How long the committer lets pass, under load (work came while its last statement ran),
/// before its next statement, so that one statement covers more records and claims. A
/// statement costs the server some 280 us of CPU whatever it carries, a record or claim
/// about 45 us more: at 1,500 decisions a second per replica, with about two decisions per
/// statement, the statements' own cost was most of PostgreSQL's. Waiting 1 ms took
/// PostgreSQL's CPU per decision from about 195 to 145 us, 2 ms to about 125 us, with a
/// shorter tail in both cases (the tail is the CPU's queue; benches/README, "Session 23").
/// Quiet, a statement goes at once.
const GATHER: Duration = Duration::from_millis(2);

/// What a claim found: the decision's record if the transaction was decided, else whether
/// this replica claimed it (`false`: another replica is scoring it).
type Claimed = (Option<String>, bool);

/// Where the committer answers a claim: a thread waiting for it, or a task awaiting it (a
/// request holds no thread while its transaction is claimed).
enum ClaimAnswer {
    Thread(std::sync::mpsc::SyncSender<Result<Claimed, String>>),
    Task(tokio::sync::oneshot::Sender<Result<Claimed, String>>),
}

impl ClaimAnswer {
    /// Answers (a waiter that gave up is no one's concern).
    fn send(self, answer: Result<Claimed, String>) {
        match self {
            ClaimAnswer::Thread(tx) => {
                let _ = tx.send(answer);
            }
            ClaimAnswer::Task(tx) => {
                let _ = tx.send(answer);
            }
        }
    }
}

/// Answers every claim of `claims` with the failure `why` (their requests fail), leaving
/// none.
fn refuse(claims: &mut Vec<(String, ClaimAnswer)>, why: &str) {
    for (_, answer) in claims.drain(..) {
        answer.send(Err(why.to_string()));
    }
}

/// A batch committed in one statement (one round trip, one implicit transaction): the
/// records the store does not hold yet (a commit whose answer was lost wrote some), the
/// claims of the transactions decided marked done, and the entity keys made meanwhile or
/// used again (their `last_used` noted, or kept again if retention removed them; an erased
/// key's row stays erased: a late use never brings it back).
///
/// The same statement claims the transactions waiting to be scored (`$12`, ids distinct):
/// for each, its decision's record, else a claim of it (the claim of a replica whose process
/// died, one older than the lapse, or this replica's own is taken over). Rows are claimed in
/// id order, so that two replicas claiming overlapping batches wait for each other in one
/// order. Either part may be empty: every part of the statement runs once, whatever the
/// rows its answer reads (one per transaction claimed, each with the count of records
/// written).
const COMMIT: &str = "
WITH have AS (
    SELECT coalesce(max(seq), 0) AS seq FROM fraud_records WHERE replica = $1
), ins AS (
    INSERT INTO fraud_records (replica, seq, hash, body, kind, transaction_id, summary)
    SELECT $1, r.* FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
            $11::text[])
        AS r(seq, hash, body, kind, transaction_id, summary), have
    WHERE r.seq > have.seq
    RETURNING 1
), unclaim AS (
    UPDATE fraud_claims SET done = true WHERE transaction_id = ANY($7)
), keys AS (
    INSERT INTO fraud_vault_keys (key_ref, entity, key)
    SELECT * FROM unnest($8::text[], $9::text[], $10::text[])
    ON CONFLICT (key_ref) DO UPDATE SET last_used = now() WHERE NOT fraud_vault_keys.erased
), ids AS (
    SELECT DISTINCT id FROM unnest($12::text[]) AS t(id)
), decided AS (
    -- One index lookup per id (a join may read the whole index in id order instead).
    SELECT ids.id AS transaction_id, d.body FROM ids CROSS JOIN LATERAL (
        SELECT body FROM fraud_records WHERE kind = 'decision' AND transaction_id = ids.id
        ORDER BY written_at, replica, seq LIMIT 1
    ) d
), claim AS (
    INSERT INTO fraud_claims (transaction_id, replica, lock_key)
    SELECT id, $1, $14 FROM ids
    WHERE NOT EXISTS (SELECT 1 FROM decided WHERE decided.transaction_id = ids.id)
    ORDER BY id
    ON CONFLICT (transaction_id) DO UPDATE
    SET replica = EXCLUDED.replica, lock_key = EXCLUDED.lock_key, since = now()
    WHERE NOT fraud_claims.done AND (
        fraud_claims.since < now() - make_interval(secs => $13)
        OR fraud_claims.replica = EXCLUDED.replica
        OR NOT EXISTS (
            SELECT 1 FROM pg_locks
            WHERE locktype = 'advisory' AND granted AND objsubid = 1
              AND classid::bigint = (fraud_claims.lock_key >> 32)
              AND objid::bigint = (fraud_claims.lock_key & 4294967295)))
    RETURNING transaction_id
)
SELECT ids.id, decided.body, claim.transaction_id IS NOT NULL, (SELECT count(*) FROM ins)
FROM ids LEFT JOIN decided ON decided.transaction_id = ids.id
LEFT JOIN claim ON claim.transaction_id = ids.id";

/// The committer connection's settings, set before it prepares [`COMMIT`]:
/// - one plan for every batch: planned per call (its arrays' lengths known), the statement
///   would cost more to plan than to run;
/// - no sequential scans: that one plan is made once, from the tables' statistics of the
///   moment. Made while `fraud_claims` was small (a young store, just analyzed), it read
///   every claim to mark a batch's claims done, and as claims piled up each statement took
///   tens of milliseconds: a replica fell to a third of its throughput (benches/README,
///   "Session 23"). Every part of the statement has an index to use.
const COMMITTER_SESSION: &str =
    "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off";

/// Creates the store's tables when missing, as a replica does when it opens the store.
#[doc(hidden)]
pub fn create_tables(client: &mut Client) -> Result<(), postgres::Error> {
    client.batch_execute(SCHEMA)
}

/// The plan a committer connection uses for [`COMMIT`] (its settings, one generic plan made
/// from the tables' statistics now), as `EXPLAIN` prints it: for tests.
#[doc(hidden)]
pub fn commit_plan(client: &mut Client) -> Result<String, postgres::Error> {
    client.batch_execute(COMMITTER_SESSION)?;
    client.batch_execute(&format!(
        "PREPARE fraud_commit_plan (text, bigint[], text[], text[], text[], text[], text[], \
         text[], text[], text[], text[], text[], double precision, bigint) AS {COMMIT}"
    ))?;
    let rows = client.query(
        "EXPLAIN EXECUTE fraud_commit_plan ('r', '{1}', '{h}', '{b}', '{decision}', '{t1}', \
         '{t0}', '{}', '{}', '{}', '{s}', '{t2}', 30, 1)",
        &[],
    )?;
    let mut plan = String::new();
    for row in rows {
        plan.push_str(row.try_get::<_, &str>(0)?);
        plan.push('\n');
    }
    client.batch_execute("DEALLOCATE fraud_commit_plan")?;
    Ok(plan)
}

/// The refs of every key of an entity (all replicas').
const KEY_REFS_OF_ENTITY: &str =
    "SELECT key_ref FROM fraud_vault_keys WHERE entity = $1 AND NOT erased";

/// A key by its ref: its entity and key text.
const KEY_BY_REF: &str =
    "SELECT entity, key FROM fraud_vault_keys WHERE key_ref = $1 AND NOT erased";

/// Reader threads: queries from request threads run here.
const READERS: usize = 4;

/// The decision log of one replica in a PostgreSQL database shared by all.
pub struct PgJournal {
    shared: std::sync::Arc<Shared>,
    /// The entity keys of the records' entity fields, kept in `fraud_vault_keys` (one key
    /// per entity for every replica: an erasure on any destroys it for all).
    vault: std::sync::Arc<Vault>,
    committer: Option<std::thread::JoinHandle<()>>,
    /// Seq of the last signed head written by this process (0: none yet).
    signed_through: std::sync::atomic::AtomicU64,
    /// How often a key's use is noted in the store (milliseconds).
    key_refresh_ms: std::sync::atomic::AtomicU64,
}

/// How often, at most, a key's use is noted in the store: every 10 minutes, or a quarter of
/// the retention period when shorter.
const KEY_REFRESH_MS: u64 = 600_000;

impl PgJournal {
    /// Connects, creates the tables if needed, takes the replica's lock, reads its chain's
    /// head and hands each of its records (opened) to `visit`, oldest first.
    pub fn open(
        url: &str,
        replica: &str,
        timeout: Duration,
        sealer: Option<super::seal::Sealer>,
        mut visit: impl FnMut(&Record),
    ) -> Result<Self, LogError> {
        let mut writer = connect(url, timeout)?;
        writer.batch_execute(SCHEMA).map_err(|e| io("schema", e))?;
        let locked: bool = writer
            .query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key(replica)])
            .and_then(|r| r.try_get(0))
            .map_err(|e| io("lock", e))?;
        if !locked {
            return Err(io(
                "lock",
                format!("replica id `{replica}` is in use by another running process; give each replica its own `[store] replica`"),
            ));
        }
        writer
            .execute(
                "INSERT INTO fraud_replicas (replica) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&replica],
            )
            .map_err(|e| io("register", e))?;
        let (mut seq, mut last_hash) = (0u64, GENESIS.to_string());
        let rows = writer
            .query(
                "SELECT seq, hash, body FROM fraud_records WHERE replica = $1 ORDER BY seq",
                &[&replica],
            )
            .map_err(|e| io("read", e))?;
        let mut opened = Vec::with_capacity(rows.len());
        for r in rows {
            let (s, h, body): (i64, String, String) = (r.get(0), r.get(1), r.get(2));
            let mut rec: Record = serde_json::from_str(&body).map_err(|e| {
                io(
                    "read",
                    format!("record {s} of replica {replica} is not JSON: {e}"),
                )
            })?;
            rec.unseal(sealer.as_ref()).map_err(|e| io("read", e))?;
            opened.push(rec);
            seq = u64::try_from(s).unwrap_or(0);
            last_hash = h;
        }
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = std::sync::Arc::new(Mutex::new(queue));
        for i in 0..READERS {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("pg-reader-{i}"))
                .spawn(move || {
                    let mut conn = None;
                    loop {
                        let job = match queue
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv()
                        {
                            Ok(j) => j,
                            // The store was dropped.
                            Err(_) => return,
                        };
                        job(&mut conn);
                    }
                })
                .map_err(|e| io("readers", e))?;
        }
        let (durable, _) = tokio::sync::watch::channel(Durable {
            through: seq,
            failed: None,
        });
        let shared = std::sync::Arc::new(Shared {
            replica: replica.to_string(),
            url: url.to_string(),
            timeout,
            sealer,
            state: Mutex::new(State {
                seq,
                last_hash,
                pending: Vec::new(),
                keys: Vec::new(),
                uncommitted: HashMap::new(),
                committed: seq,
                error: None,
                claims: Vec::new(),
                stop: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            durable,
            readers: Mutex::new(jobs),
        });

        let vault = std::sync::Arc::new(
            Vault::open_remote(
                std::sync::Arc::new(PgKeys {
                    shared: shared.clone(),
                }),
                "fraud_vault_keys",
                shared.sealer.clone(),
            )
            .map_err(|e| io("vault", e))?,
        );
        // The keys this chain's records name, read in bulk (not one query per key).
        let mut refs: Vec<String> = opened
            .iter()
            .flat_map(|r| Vault::refs_in(&r.data))
            .collect();
        refs.sort_unstable();
        refs.dedup();
        for chunk in refs.chunks(10_000) {
            let keys = writer
                .query(
                    "SELECT key_ref, entity, key FROM fraud_vault_keys WHERE key_ref = ANY($1) AND NOT erased",
                    &[&chunk],
                )
                .map_err(|e| io("vault", e))?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            vault.preload(keys);
        }
        for mut rec in opened {
            vault.reveal(&mut rec.data);
            visit(&rec);
        }
        let s = shared.clone();
        let committer = std::thread::Builder::new()
            .name("pg-committer".into())
            .spawn(move || s.run(Conn::new(writer)))
            .map_err(|e| io("committer", e))?;
        Ok(PgJournal {
            shared,
            vault,
            committer: Some(committer),
            signed_through: std::sync::atomic::AtomicU64::new(0),
            key_refresh_ms: std::sync::atomic::AtomicU64::new(KEY_REFRESH_MS),
        })
    }

    /// The retention period (milliseconds): keys' uses are noted at least four times
    /// within it.
    pub fn set_retention_ms(&self, retention_ms: u64) {
        self.key_refresh_ms.store(
            KEY_REFRESH_MS.min(retention_ms / 4).max(1),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Queues the notes of the keys `used` and `refs` name whose use is due.
    fn note_keys(&self, used: &super::vault::Used, refs: &[String]) {
        let every = self
            .key_refresh_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let due = self.vault.refresh_due(used, refs, every);
        if !due.is_empty() {
            self.shared.lock().keys.extend(due);
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Chains a record of `data` and queues it for the committer. Returns its seq.
    fn push(
        &self,
        kind: Kind,
        key: &str,
        data: &[u8],
        transaction_id: Option<String>,
    ) -> Result<u64, LogError> {
        self.push_with(kind, key, |_, _| Ok(data.to_vec()), transaction_id, None)
            .map(Option::unwrap_or_default)
    }

    /// Chains a record whose data `make` builds from its seq and the previous hash, under
    /// the chain's lock (`Err(None)`: nothing to write), and queues it.
    fn push_with(
        &self,
        kind: Kind,
        key: &str,
        make: impl FnOnce(u64, &str) -> Result<Vec<u8>, Option<LogError>>,
        transaction_id: Option<String>,
        summary: Option<String>,
    ) -> Result<Option<u64>, LogError> {
        let at = now_rfc3339();
        let mut g = self.lock();
        if g.pending.len() >= MAX_PENDING {
            return Err(io(
                "commit",
                format!(
                    "{} records wait for the database: {}",
                    g.pending.len(),
                    g.error.as_deref().unwrap_or("it is slow")
                ),
            ));
        }
        let seq = g.seq + 1;
        let data = match make(seq, &g.last_hash) {
            Ok(d) => d,
            Err(None) => return Ok(None),
            Err(Some(e)) => return Err(e),
        };
        let mut body = Vec::with_capacity(data.len() + 300);
        let h = append_record(
            &mut body,
            self.sealer.as_ref(),
            &Head {
                seq,
                prev: &g.last_hash,
                kind: kind.name(),
                at: &at,
                key,
                replica: Some(&self.replica),
            },
            kind.clear(),
            &data,
        )
        .map_err(|e| io("record", e))?;
        let body = String::from_utf8(body).map_err(|e| io("record", e))?;
        if let Some(id) = &transaction_id {
            if kind == Kind::Decision {
                g.uncommitted.insert(id.clone(), body.clone());
            }
        }
        g.pending.push(Row {
            seq: i64::try_from(seq).unwrap_or(i64::MAX),
            hash: h.clone(),
            body,
            kind: kind.name(),
            transaction_id,
            summary,
        });
        g.seq = seq;
        g.last_hash = h;
        drop(g);
        self.work.notify_one();
        Ok(Some(seq))
    }

    /// Waits on this thread until `seq` is committed (or the timeout).
    fn wait(&self, seq: u64) -> Result<(), LogError> {
        let deadline = Instant::now() + self.timeout;
        let mut g = self.lock();
        while g.committed < seq {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.late(&g));
            }
            g = self
                .done
                .wait_timeout(g, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    fn late(&self, g: &State) -> LogError {
        io(
            "commit",
            format!(
                "not committed within {} ms: {}",
                self.timeout.as_millis(),
                g.error.as_deref().unwrap_or("the database is slow")
            ),
        )
    }

    /// The committer: takes every queued record and every transaction waiting for its
    /// claim, commits and claims them in one statement ([`COMMIT`]), answers the claims,
    /// publishes the commit.
    fn run(&self, mut client: Conn) {
        let mut swept = Instant::now();
        // Whether work came while the last statement ran (the replica is under load).
        let mut busy = false;
        loop {
            if busy {
                std::thread::sleep(GATHER);
            }
            let (batch, keys, mut claims) = {
                let mut g = self
                    .work
                    .wait_while(self.lock(), |g| !g.has_work() && !g.stop)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if g.stop && g.pending.is_empty() {
                    refuse(&mut g.claims, "the store is closed");
                    return;
                }
                let n = g.claims.len().min(MAX_CLAIMS);
                let claims: Vec<(String, ClaimAnswer)> = g.claims.drain(..n).collect();
                (
                    std::mem::take(&mut g.pending),
                    std::mem::take(&mut g.keys),
                    claims,
                )
            };
            // One row per key in the statement (an upsert may touch a row once).
            let keys = {
                let mut seen = std::collections::HashSet::new();
                keys.into_iter()
                    .filter(|k| seen.insert(k[0].clone()))
                    .collect::<Vec<_>>()
            };
            let mut backoff = Duration::from_millis(20);
            let mut reconnected = false;
            loop {
                let mut ids: Vec<&str> = claims.iter().map(|(id, _)| id.as_str()).collect();
                ids.sort_unstable();
                ids.dedup();
                match self.commit(&mut client, &batch, &keys, &ids) {
                    Ok(found) => {
                        for (id, answer) in claims.drain(..) {
                            answer.send(found.get(&id).cloned().ok_or_else(|| {
                                "the claim statement skipped a transaction".to_string()
                            }));
                        }
                        break;
                    }
                    Err(e) => {
                        // A kept connection the server closed (a restart): once more at
                        // once, on a new one.
                        if !reconnected && (e.is_closed() || client.client.is_closed()) {
                            reconnected = true;
                            if let Ok(c) = self.reconnect() {
                                client = Conn::new(c);
                                continue;
                            }
                        }
                        // The claims are answered at once (their requests fail, as the
                        // store is unreachable), and so are those arriving while the batch
                        // waits to go again; but when the statement only met another
                        // replica's at the wrong moment, they go again with the batch.
                        let again = e.code().is_some_and(|c| {
                            *c == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                                || *c == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                        });
                        let stop = {
                            let mut g = self.lock();
                            if !batch.is_empty() {
                                g.error = Some(e.to_string());
                            }
                            if !again {
                                refuse(&mut claims, &e.to_string());
                                refuse(&mut g.claims, &e.to_string());
                            }
                            g.stop
                        };
                        if stop {
                            // Closed while the batch could not be committed: nothing of it is
                            // published as committed.
                            refuse(&mut claims, "the store is closed");
                            return;
                        }
                        if batch.is_empty() && claims.is_empty() {
                            // Only claims, answered: nothing to commit again.
                            break;
                        }
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        if client.client.is_closed()
                            || client.client.is_valid(self.timeout).is_err()
                        {
                            if let Ok(c) = self.reconnect() {
                                client = Conn::new(c);
                            }
                        }
                    }
                }
            }
            if batch.is_empty() {
                // Only claims: nothing to publish (a stop is seen at the top).
                busy = self.lock().has_work();
                continue;
            }
            let through = batch
                .last()
                .map_or(0, |r| u64::try_from(r.seq).unwrap_or(0));
            {
                let mut g = self.lock();
                busy = g.has_work();
                g.committed = g.committed.max(through);
                g.error = None;
                for r in &batch {
                    if let (Some(id), "decision") = (&r.transaction_id, r.kind) {
                        g.uncommitted.remove(id);
                    }
                }
            }
            self.done.notify_all();
            self.durable.send_replace(Durable {
                through,
                failed: None,
            });
            // Done claims, once no look for a decision can be as old as they are: every
            // second, on a reader connection, so that the deletion never holds up a commit
            // (every ten seconds on this thread it stalled the decisions waiting for their
            // commit by tens of milliseconds).
            if swept.elapsed() >= Duration::from_secs(1) {
                swept = Instant::now();
                let lapse = CLAIM_LAPSE.as_secs_f64();
                self.spawn_read("dropping done claims", move |c| {
                    c.client.execute(
                        "DELETE FROM fraud_claims WHERE done AND since < now() - make_interval(secs => $1)",
                        &[&lapse],
                    )?;
                    Ok(())
                });
            }
        }
    }

    /// A new writer connection, holding the replica's lock again.
    fn reconnect(&self) -> Result<Client, LogError> {
        let mut c = connect(&self.url, self.timeout)?;
        let locked: bool = c
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&lock_key(&self.replica)],
            )
            .and_then(|r| r.try_get(0))
            .map_err(|e| io("lock", e))?;
        if !locked {
            return Err(io("lock", "the replica's lock is held elsewhere"));
        }
        Ok(c)
    }

    /// The batch and the claims of `ids` (distinct), in one statement ([`COMMIT`]): what
    /// each claim found.
    fn commit(
        &self,
        conn: &mut Conn,
        batch: &[Row],
        keys: &[[String; 3]],
        ids: &[&str],
    ) -> Result<HashMap<String, Claimed>, postgres::Error> {
        if !conn.stmts.contains_key(COMMIT) {
            conn.client.batch_execute(COMMITTER_SESSION)?;
        }
        let commit = conn.stmt(COMMIT)?;
        let seqs: Vec<i64> = batch.iter().map(|r| r.seq).collect();
        let hashes: Vec<&str> = batch.iter().map(|r| r.hash.as_str()).collect();
        let bodies: Vec<&str> = batch.iter().map(|r| r.body.as_str()).collect();
        let kinds: Vec<&str> = batch.iter().map(|r| r.kind).collect();
        let tx_ids: Vec<Option<&str>> = batch.iter().map(|r| r.transaction_id.as_deref()).collect();
        let decided: Vec<&str> = batch
            .iter()
            .filter(|r| r.kind == "decision")
            .filter_map(|r| r.transaction_id.as_deref())
            .collect();
        let rows = conn.client.query(
            &commit,
            &[
                &self.replica,
                &seqs,
                &hashes,
                &bodies,
                &kinds,
                &tx_ids,
                &decided,
                &keys.iter().map(|k| k[0].as_str()).collect::<Vec<_>>(),
                &keys.iter().map(|k| k[1].as_str()).collect::<Vec<_>>(),
                &keys.iter().map(|k| k[2].as_str()).collect::<Vec<_>>(),
                &batch
                    .iter()
                    .map(|r| r.summary.as_deref())
                    .collect::<Vec<_>>(),
                &ids,
                &CLAIM_LAPSE.as_secs_f64(),
                &lock_key(&self.replica),
            ],
        )?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                Ok((
                    id,
                    (r.try_get::<_, Option<String>>(1)?, r.try_get::<_, bool>(2)?),
                ))
            })
            .collect()
    }

    /// Claims a transaction, else finds its decision, in the committer's next statement
    /// ([`COMMIT`]) with the others waiting; waits for the answer at most the timeout and a
    /// second.
    fn claim(&self, transaction_id: &str) -> Result<Claimed, LogError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.queue_claim(transaction_id, ClaimAnswer::Thread(tx))?;
        self.answer("claim", &rx)?.map_err(|e| io("claim", e))
    }

    /// [`claim`](Self::claim) awaited: the same wait and timeout, without holding a thread.
    async fn claim_async(&self, transaction_id: &str) -> Result<Claimed, LogError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue_claim(transaction_id, ClaimAnswer::Task(tx))?;
        match tokio::time::timeout(self.answer_within(), rx).await {
            Ok(Ok(answer)) => answer.map_err(|e| io("claim", e)),
            // The committer dropped the claim without answering (it stopped).
            Ok(Err(_)) => Err(io("claim", "the store is closed")),
            Err(_) => Err(self.no_answer("claim")),
        }
    }

    /// Queues a claim for the committer's next statement.
    fn queue_claim(&self, transaction_id: &str, answer: ClaimAnswer) -> Result<(), LogError> {
        {
            let mut g = self.lock();
            if g.stop {
                return Err(io("claim", "the store is closed"));
            }
            g.claims.push((transaction_id.to_string(), answer));
        }
        self.work.notify_one();
        Ok(())
    }

    /// The answer of a store thread, waited for at most the timeout and a second.
    fn answer<T>(&self, what: &str, rx: &std::sync::mpsc::Receiver<T>) -> Result<T, LogError> {
        rx.recv_timeout(self.answer_within())
            .map_err(|_| self.no_answer(what))
    }

    /// How long a store thread's answer is waited for: the timeout and a second.
    fn answer_within(&self) -> Duration {
        self.timeout + Duration::from_secs(1)
    }

    /// `what` failed: its store thread gave no answer in time.
    fn no_answer(&self, what: &str) -> LogError {
        io(
            what,
            format!("no answer within {} ms", self.timeout.as_millis()),
        )
    }

    /// Runs `f` on a reader connection, without waiting for it (a failure is reported as
    /// `what` failing).
    fn spawn_read(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Conn) -> Result<(), postgres::Error> + Send + 'static,
    ) {
        let url = self.url.clone();
        let timeout = self.timeout;
        let job: Job = Box::new(move |slot: &mut Option<Conn>| {
            let c = match slot.as_mut().filter(|c| !c.client.is_closed()) {
                Some(c) => c,
                None => match connect(&url, timeout) {
                    Ok(c) => slot.insert(Conn::new(c)),
                    Err(e) => {
                        eprintln!("warning: {what}: {e}");
                        return;
                    }
                },
            };
            if let Err(e) = f(c) {
                eprintln!("warning: {what}: {e}");
                *slot = None;
            }
        });
        let _ = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(job);
    }

    /// Runs `f` on a reader connection, on one of the store's own threads (the sync client
    /// runs its own runtime, which cannot start on an HTTP worker's); waits for the answer
    /// at most the timeout and a second.
    fn read<T: Send + 'static>(
        &self,
        f: impl Fn(&mut Conn) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, LogError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let url = self.url.clone();
        let timeout = self.timeout;
        let job: Job = Box::new(move |slot: &mut Option<Conn>| {
            let _ = tx.send(on_conn(slot, &url, timeout, &f));
        });
        self.readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(job)
            .map_err(|_| io("query", "the store's reader threads are gone"))?;
        self.answer("query", &rx)?
    }

    fn open_record(&self, body: &str) -> Result<Record, LogError> {
        let mut rec: Record = serde_json::from_str(body).map_err(|e| io("record", e))?;
        rec.unseal(self.sealer.as_ref())
            .map_err(|e| io("record", e))?;
        Ok(rec)
    }
}

impl Drop for PgJournal {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_all();
        if let Some(h) = self.committer.take() {
            let _ = h.join();
        }
    }
}

impl PgJournal {
    /// The vault of the entity keys (the engine's, for erasure).
    pub fn vault_handle(&self) -> std::sync::Arc<Vault> {
        self.vault.clone()
    }

    /// A record as stored, opened: unsealed, its entity fields revealed.
    fn open_record(&self, body: &str) -> Result<Record, LogError> {
        let mut rec = self.shared.open_record(body)?;
        self.vault.reveal(&mut rec.data);
        Ok(rec)
    }

    /// `transaction_id`'s decision when it was made here and is not committed yet.
    fn decided_here(&self, transaction_id: &str) -> Result<Option<Begin>, LogError> {
        let body = self.shared.lock().uncommitted.get(transaction_id).cloned();
        body.map(|b| Ok(Begin::Decided(Box::new(self.open_record(&b)?))))
            .transpose()
    }

    /// What a claim found, as [`Journal::begin`] tells it.
    fn begun(&self, (body, claimed): Claimed) -> Result<Begin, LogError> {
        Ok(match (body, claimed) {
            (Some(b), _) => Begin::Decided(Box::new(self.open_record(&b)?)),
            (None, true) => Begin::Claimed,
            (None, false) => Begin::Busy,
        })
    }
}

/// The entity keys in `fraud_vault_keys`, for the vault.
struct PgKeys {
    shared: std::sync::Arc<Shared>,
}

impl RemoteKeys for PgKeys {
    fn keep(&self, entity: &str, key_ref: &str, key: &str) -> Result<(), String> {
        // Committed with the next batch, in its transaction: never after a record using it.
        self.shared
            .lock()
            .keys
            .push([key_ref.to_string(), entity.to_string(), key.to_string()]);
        Ok(())
    }

    fn refs_of_entity(&self, entity: &str) -> Result<Vec<String>, String> {
        let entity = entity.to_string();
        self.shared
            .read(move |c| {
                let st = c.stmt(KEY_REFS_OF_ENTITY)?;
                Ok(c.client
                    .query(&st, &[&entity])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect())
            })
            .map_err(|e| e.to_string())
    }

    fn key_by_ref(&self, key_ref: &str) -> Result<Option<(String, String)>, String> {
        let key_ref = key_ref.to_string();
        self.shared
            .read(move |c| {
                let st = c.stmt(KEY_BY_REF)?;
                Ok(c.client
                    .query_opt(&st, &[&key_ref])?
                    .map(|r| (r.get(0), r.get(1))))
            })
            .map_err(|e| e.to_string())
    }

    fn destroy(&self, refs: &[String]) -> Result<usize, String> {
        let pending = {
            let mut g = self.shared.lock();
            let before = g.keys.len();
            g.keys.retain(|k| !refs.contains(&k[0]));
            before - g.keys.len()
        };
        let refs = refs.to_vec();
        self.shared
            .read(move |c| {
                c.client
                    // Kept as erased rows (no key, no entity): a batch in flight that uses
                    // one, here or on another replica, cannot bring it back.
                    .execute(
                        "INSERT INTO fraud_vault_keys (key_ref, entity, key, erased)
                         SELECT r, '', '', true FROM unnest($1::text[]) AS r
                         ON CONFLICT (key_ref) DO UPDATE SET erased = true, key = '', entity = ''
                         WHERE NOT fraud_vault_keys.erased",
                        &[&refs],
                    )
                    .map(|n| usize::try_from(n).unwrap_or(0) + pending)
            })
            .map_err(|e| e.to_string())
    }
}

impl ConsoleStore for PgJournal {
    fn session_start(
        &self,
        key: &str,
        session: &StoredSession,
        idle_s: u64,
        absolute_s: u64,
    ) -> Result<(), LogError> {
        let body = serde_json::to_string(session).map_err(|e| io("session", e))?;
        let key = key.to_string();
        let (idle, absolute) = (idle_s as f64, absolute_s as f64);
        self.shared.read(move |c| {
            let mut t = c.client.transaction()?;
            t.execute(
                "DELETE FROM fraud_console_sessions WHERE last_seen < now() - make_interval(secs => $1)
                 OR created < now() - make_interval(secs => $2)",
                &[&idle, &absolute],
            )?;
            t.execute(
                "INSERT INTO fraud_console_sessions (key, body) VALUES ($1, $2)",
                &[&key, &body],
            )?;
            t.commit()
        })
    }

    fn session(
        &self,
        key: &str,
        idle_s: u64,
        absolute_s: u64,
    ) -> Result<Option<StoredSession>, LogError> {
        let key = key.to_string();
        let (idle, absolute) = (idle_s as f64, absolute_s as f64);
        let row: Option<(String, Option<String>)> = self.shared.read(move |c| {
            let st = c.stmt(LIVE_SESSION)?;
            Ok(c.client
                .query_opt(&st, &[&key, &idle, &absolute])?
                .map(|r| (r.get(0), r.get(1))))
        })?;
        row.map(|(body, flash)| {
            let mut s: StoredSession = serde_json::from_str(&body).map_err(|e| io("session", e))?;
            s.flash = flash;
            Ok(s)
        })
        .transpose()
    }

    fn session_end(&self, key: &str) -> Result<(), LogError> {
        let key = key.to_string();
        self.shared.read(move |c| {
            c.client
                .execute("DELETE FROM fraud_console_sessions WHERE key = $1", &[&key])
                .map(|_| ())
        })
    }

    fn session_flash(&self, key: &str, message: &str) -> Result<(), LogError> {
        let (key, message) = (key.to_string(), message.to_string());
        self.shared.read(move |c| {
            c.client
                .execute(
                    "UPDATE fraud_console_sessions SET flash = $2 WHERE key = $1",
                    &[&key, &message],
                )
                .map(|_| ())
        })
    }

    fn login_state(
        &self,
        user: &str,
        decide: Decide,
    ) -> Result<Result<LoggedIn, LoginRefusal>, LogError> {
        let name = user.to_string();
        self.shared.read(move |c| {
            let mut t = c.client.transaction()?;
            t.execute(
                "INSERT INTO fraud_console_logins (name, state) VALUES ($1, '{}')
                 ON CONFLICT (name) DO NOTHING",
                &[&name],
            )?;
            let state: String = t
                .query_one(
                    "SELECT state FROM fraud_console_logins WHERE name = $1 FOR UPDATE",
                    &[&name],
                )?
                .get(0);
            let mut attempts: Attempts = serde_json::from_str(&state).unwrap_or_default();
            let outcome = decide(&mut attempts);
            let state = serde_json::to_string(&attempts).unwrap_or_else(|_| "{}".into());
            t.execute(
                "UPDATE fraud_console_logins SET state = $2 WHERE name = $1",
                &[&name, &state],
            )?;
            t.commit()?;
            Ok(outcome)
        })
    }
}

/// The live session of $1 (used within $2 seconds of the store's clock, younger than $3),
/// marked used now, its flash taken (the old value returned).
const LIVE_SESSION: &str = "UPDATE fraud_console_sessions s SET last_seen = now(), flash = NULL
     FROM (SELECT key, flash FROM fraud_console_sessions WHERE key = $1 FOR UPDATE) o
     WHERE s.key = o.key AND s.last_seen >= now() - make_interval(secs => $2)
     AND s.created >= now() - make_interval(secs => $3)
     RETURNING s.body, o.flash";

impl Journal for PgJournal {
    fn console_store(&self) -> Option<&dyn ConsoleStore> {
        Some(self)
    }

    fn api_keys(&self) -> Result<Option<Vec<KeyRecord>>, LogError> {
        let rows: Vec<String> = self.shared.read(|c| {
            let st = c.stmt("SELECT record FROM fraud_api_keys ORDER BY name")?;
            Ok(c.client.query(&st, &[])?.iter().map(|r| r.get(0)).collect())
        })?;
        rows.iter()
            .map(|r| serde_json::from_str(r).map_err(|e| io("api keys", e)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn append(&self, key: &str, event: &Event<'_>) -> Result<u64, LogError> {
        let kind = event.kind();
        let data = serde_json::to_vec(event).map_err(|e| io("record", e))?;
        let id = match event {
            Event::Label { transaction_id, .. }
            | Event::Access { transaction_id, .. }
            | Event::Case { transaction_id, .. } => Some(transaction_id.to_string()),
            _ => None,
        };
        // A label holds its transaction's entity fields, sealed under their keys.
        if let Event::Label { transaction, .. } = event {
            let refs = Vault::refs_in(&serde_json::json!({ "transaction": transaction }));
            self.note_keys(&super::vault::Used::default(), &refs);
        }
        let seq = self.shared.push(kind, key, &data, id)?;
        self.shared.wait(seq)?;
        Ok(seq)
    }

    fn append_decision(
        &self,
        key: &str,
        record: &super::record::DecisionRecord<'_, fraud_core::decision::Verdict>,
        used: super::vault::Used,
    ) -> Result<u64, LogError> {
        // Queued before the record: committed with it or before.
        self.note_keys(&used, &[]);
        let data = serde_json::to_vec(record).map_err(|e| io("record", e))?;
        let summary = record.summary().map_err(|e| io("record", e))?;
        self.shared
            .push_with(
                Kind::Decision,
                key,
                |_, _| Ok(data),
                Some(record.transaction_id.to_string()),
                Some(summary),
            )
            .map(Option::unwrap_or_default)
    }

    fn append_signed_head(
        &self,
        signer: &super::heads::HeadSigner,
    ) -> Result<Option<u64>, LogError> {
        // Signed under the chain's lock: nothing comes between the head and its record.
        let seq = self.shared.push_with(
            Kind::Head,
            "system",
            |seq, prev| {
                let last = self
                    .signed_through
                    .load(std::sync::atomic::Ordering::Acquire);
                super::decisions::signed_head(signer, seq, prev, last).ok_or(None)
            },
            None,
            None,
        )?;
        if let Some(seq) = seq {
            self.signed_through
                .store(seq, std::sync::atomic::Ordering::Release);
            self.shared.wait(seq)?;
        }
        Ok(seq)
    }

    fn decision(&self, transaction_id: &str) -> Result<Option<Record>, LogError> {
        let local = self.shared.lock().uncommitted.get(transaction_id).cloned();
        let body = match local {
            Some(b) => Some(b),
            None => {
                let id = transaction_id.to_string();
                self.shared.read(move |c| {
                    let st = c.stmt(DECIDED)?;
                    c.client
                        .query_opt(&st, &[&id])
                        .map(|r| r.map(|r| r.get::<_, String>(0)))
                })?
            }
        };
        body.map(|b| self.open_record(&b)).transpose()
    }

    fn records(&self) -> u64 {
        self.shared.lock().seq
    }

    fn remove_before(
        &self,
        before: time::OffsetDateTime,
        through: u64,
        key: &str,
    ) -> Result<Removed, LogError> {
        // This replica's own chain: the records written before the cut-off (and at most
        // `through`), from the first still kept.
        let replica = self.shared.replica.clone();
        let cutoff: std::time::SystemTime = before.into();
        let through = i64::try_from(through).unwrap_or(i64::MAX);
        let found: Option<(i64, i64, String, String)> = self.shared.read(move |c| {
            let st = c.stmt(
                "SELECT min(seq) OVER (), seq, hash, to_char(written_at AT TIME ZONE 'UTC',
                        'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                 FROM fraud_records WHERE replica = $1 AND seq <= $2 AND written_at < $3
                 ORDER BY seq DESC LIMIT 1",
            )?;
            Ok(c.client
                .query_opt(&st, &[&replica, &through, &cutoff])?
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
        })?;
        let Some((first, last, last_hash, last_at)) = found else {
            return Ok(Removed::default());
        };
        // Named first (and committed), so that the chain accounts for what goes.
        let segments = [serde_json::json!({"first": first, "last": last,
            "last_hash": last_hash, "last_at": last_at})];
        let rfc = time::format_description::well_known::Rfc3339;
        let older_than = before.format(&rfc).unwrap_or_default();
        self.append(
            key,
            &Event::Retention {
                older_than: &older_than,
                segments: &segments,
            },
        )?;
        let replica = self.shared.replica.clone();
        let deleted = self.shared.read(move |c| {
            c.client.execute(
                "DELETE FROM fraud_records WHERE replica = $1 AND seq <= $2",
                &[&replica, &last],
            )
        })?;
        Ok(Removed {
            segments: 0,
            records: deleted,
            through: u64::try_from(last).unwrap_or(0),
        })
    }

    fn vault(&self) -> Option<&super::vault::Vault> {
        Some(&self.vault)
    }

    fn drop_unused_keys(&self, before: time::OffsetDateTime) -> Result<Option<usize>, LogError> {
        // A key in use has its use noted at least every `key_refresh_ms` (with the batch
        // of the record using it): one not noted for twice that before the cut-off is used
        // by no record kept, nor by one being written.
        let margin = self
            .key_refresh_ms
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_mul(2);
        let cutoff: std::time::SystemTime = (before
            - time::Duration::milliseconds(i64::try_from(margin).unwrap_or(i64::MAX)))
        .into();
        let n = self.shared.read(move |c| {
            c.client.execute(
                "DELETE FROM fraud_vault_keys WHERE NOT erased AND last_used < $1",
                &[&cutoff],
            )
        })?;
        Ok(Some(usize::try_from(n).unwrap_or(usize::MAX)))
    }

    fn begin(&self, transaction_id: &str) -> Result<Begin, LogError> {
        if let Some(found) = self.decided_here(transaction_id)? {
            return Ok(found);
        }
        let claimed = self.shared.claim(transaction_id)?;
        self.begun(claimed)
    }

    fn claims_elsewhere(&self) -> bool {
        true
    }

    fn begin_async<'a>(&'a self, transaction_id: &'a str) -> Beginning<'a> {
        Box::pin(async move {
            if let Some(found) = self.decided_here(transaction_id)? {
                return Ok(found);
            }
            let claimed = self.shared.claim_async(transaction_id).await?;
            self.begun(claimed)
        })
    }

    fn release(&self, transaction_id: &str) {
        let replica = self.shared.replica.clone();
        let id = transaction_id.to_string();
        let _ = self.shared.read(move |c| {
            let st =
                c.stmt("DELETE FROM fraud_claims WHERE transaction_id = $1 AND replica = $2")?;
            c.client.execute(&st, &[&id, &replica])
        });
    }

    fn keep_feature_set(&self, names: &[String]) -> Result<String, LogError> {
        let id = super::feature_sets::set_id(names);
        let text = serde_json::to_string(names).map_err(|e| io("feature set", e))?;
        let key = id.clone();
        self.shared.read(move |c| {
            c.client
                .execute(
                    "INSERT INTO fraud_feature_sets (id, names) VALUES ($1, $2)
                     ON CONFLICT (id) DO NOTHING",
                    &[&key, &text],
                )
                .map(|_| ())
        })?;
        Ok(id)
    }

    fn feature_set(&self, id: &str) -> Result<Option<Vec<String>>, LogError> {
        let key = id.to_string();
        let text: Option<String> = self.shared.read(move |c| {
            c.client
                .query_opt(
                    "SELECT names FROM fraud_feature_sets WHERE id = $1",
                    &[&key],
                )
                .map(|r| r.map(|r| r.get(0)))
        })?;
        // A set whose names do not hash to its id is not the one the records name.
        Ok(text
            .and_then(|t| serde_json::from_str::<Vec<String>>(&t).ok())
            .filter(|names| super::feature_sets::set_id(names) == id))
    }

    fn publish_model(&self, role: &str, model: Option<(&str, &[u8])>) -> Result<(), LogError> {
        let role = role.to_string();
        let model = model.map(|(v, a)| (v.to_string(), a.to_vec()));
        self.shared.read(move |c| {
            let mut t = c.client.transaction()?;
            if let Some((version, artifact)) = &model {
                t.execute(
                    "INSERT INTO fraud_models (version, artifact) VALUES ($1, $2)
                     ON CONFLICT (version) DO NOTHING",
                    &[version, artifact],
                )?;
            }
            let version = model.as_ref().map(|m| m.0.as_str());
            t.execute(
                "INSERT INTO fraud_model_roles (role, version) VALUES ($1, $2)
                 ON CONFLICT (role) DO UPDATE SET version = EXCLUDED.version, changed_at = now()",
                &[&role, &version],
            )?;
            t.commit()
        })
    }

    fn assigned_models(&self) -> Result<Vec<(String, Option<String>)>, LogError> {
        self.shared.read(|c| {
            let st = c.stmt("SELECT role, version FROM fraud_model_roles ORDER BY role")?;
            Ok(c.client
                .query(&st, &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
    }

    fn model_artifact(&self, version: &str) -> Result<Option<Vec<u8>>, LogError> {
        let version = version.to_string();
        self.shared.read(move |c| {
            c.client
                .query_opt(
                    "SELECT artifact FROM fraud_models WHERE version = $1",
                    &[&version],
                )
                .map(|r| r.map(|r| r.get(0)))
        })
    }

    fn others(
        &self,
        after: &mut HashMap<String, u64>,
        kinds: &[&str],
        limit: usize,
    ) -> Result<Vec<Record>, LogError> {
        let me = self.shared.replica.clone();
        let from: Vec<(String, i64)> = {
            let known = after.clone();
            let replicas: Vec<String> = self.shared.read(move |c| {
                let st = c.stmt("SELECT replica FROM fraud_replicas WHERE replica <> $1")?;
                Ok(c.client
                    .query(&st, &[&me])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect())
            })?;
            replicas
                .into_iter()
                .map(|r| {
                    let seq = known.get(&r).copied().unwrap_or(0);
                    (r, i64::try_from(seq).unwrap_or(i64::MAX))
                })
                .collect()
        };
        let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
        let per = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        type Followed = (String, i64, String, Option<String>, Option<String>, String);
        let rows: Vec<Followed> = self.shared.read(move |c| {
            let st = c.stmt(
                // Every kind moves the position; only the bodies wanted are sent, and a
                // decision's summary rather than its body when it has one.
                "SELECT seq, kind,
                        CASE WHEN kind = ANY($3) AND (kind <> 'decision' OR summary IS NULL)
                             THEN body END,
                        CASE WHEN kind = ANY($3) THEN summary END,
                        to_char(written_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                 FROM fraud_records WHERE replica = $1 AND seq > $2 ORDER BY seq LIMIT $4",
            )?;
            let mut out = Vec::new();
            for (replica, seq) in &from {
                for r in c.client.query(&st, &[replica, seq, &kinds, &per])? {
                    out.push((
                        replica.clone(),
                        r.get(0),
                        r.get(1),
                        r.get(2),
                        r.get(3),
                        r.get(4),
                    ));
                }
            }
            Ok(out)
        })?;
        let mut records = Vec::with_capacity(rows.len());
        for (replica, seq, kind, body, summary, at) in rows {
            if let Some(body) = body {
                records.push(self.open_record(&body)?);
            } else if let Some(summary) = summary {
                records.push(Record {
                    seq: u64::try_from(seq).unwrap_or(0),
                    prev: String::new(),
                    kind,
                    at,
                    key: String::new(),
                    replica: Some(replica.clone()),
                    data: serde_json::from_str(&summary).map_err(|e| io("summary", e))?,
                    sealed: None,
                });
            }
            after.insert(replica, u64::try_from(seq).unwrap_or(0));
        }
        Ok(records)
    }

    fn settle_seq(&self, rec: &Record) -> u64 {
        if rec.replica.as_deref() == Some(self.shared.replica.as_str()) {
            rec.seq
        } else {
            0
        }
    }

    fn durable(
        &self,
        seq: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LogError>> + Send + '_>>
    {
        Box::pin(async move {
            let mut rx = self.shared.durable.subscribe();
            let waited =
                tokio::time::timeout(self.shared.timeout, rx.wait_for(|d| d.through >= seq)).await;
            match waited {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(io("commit", "the store was closed")),
                Err(_) => Err(self.shared.late(&self.shared.lock())),
            }
        })
    }
}

/// A page of one replica's chain as stored: its records as log lines (`<hash> <body>\n`, in
/// seq order), and the transaction id filed beside each record that has one, by seq (what
/// identifies an encrypted decision).
#[derive(Debug, Default)]
pub struct StoredChain {
    /// Its records as log lines.
    pub lines: Vec<u8>,
    /// Transaction ids by seq.
    pub ids: HashMap<u64, String>,
    /// The seq of the page's last record (0: the page is empty, the chain read whole).
    pub last: u64,
}

/// The chains of the store at `url`, read a page at a time (a store larger than memory is
/// verified all the same), with a connection of this process's own.
pub struct StoredChains {
    client: Client,
}

/// Records per page of [`StoredChains::page`].
pub const PAGE: i64 = 20_000;

impl StoredChains {
    /// Connects to the store.
    pub fn open(url: &str) -> Result<Self, LogError> {
        Ok(StoredChains {
            client: connect(url, Duration::from_secs(10))?,
        })
    }

    /// The replicas that hold records, by name.
    pub fn replicas(&mut self) -> Result<Vec<String>, LogError> {
        Ok(self
            .client
            .query(
                "SELECT DISTINCT replica FROM fraud_records ORDER BY replica",
                &[],
            )
            .map_err(|e| io("read", e))?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// The records of `replica` after seq `after`, [`PAGE`] at most.
    pub fn page(&mut self, replica: &str, after: u64) -> Result<StoredChain, LogError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                "SELECT seq, hash, body, transaction_id FROM fraud_records
                 WHERE replica = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&replica, &after, &PAGE],
            )
            .map_err(|e| io("read", e))?;
        let mut c = StoredChain::default();
        for r in &rows {
            let seq = u64::try_from(r.get::<_, i64>(0)).unwrap_or(0);
            c.lines.extend_from_slice(r.get::<_, &str>(1).as_bytes());
            c.lines.push(b' ');
            c.lines.extend_from_slice(r.get::<_, &str>(2).as_bytes());
            c.lines.push(b'\n');
            if let Some(id) = r.get::<_, Option<String>>(3) {
                c.ids.insert(seq, id);
            }
            c.last = seq;
        }
        Ok(c)
    }

    /// Verifies `replica`'s chain page by page, calling `visit` with each record and the
    /// transaction id filed beside it.
    pub fn verify(
        &mut self,
        replica: &str,
        mut visit: impl FnMut(&Record, Option<&str>),
    ) -> Result<super::decisions::Scan, LogError> {
        let place = std::path::PathBuf::from(format!("store replica {replica}"));
        let mut check = super::decisions::ChainCheck::new();
        let mut after = 0;
        loop {
            let page = self.page(replica, after)?;
            if page.last == 0 {
                return check.finish(&place);
            }
            check.feed(&page.lines, &place, |_, rec| {
                visit(rec, page.ids.get(&rec.seq).map(String::as_str))
            })?;
            after = page.last;
        }
    }
}

/// The API keys the store at `url` holds (`fraud keys list --store`).
pub fn stored_keys(url: &str) -> Result<Vec<KeyRecord>, LogError> {
    let mut client = connect(url, Duration::from_secs(10))?;
    client.batch_execute(SCHEMA).map_err(|e| io("schema", e))?;
    let rows = client
        .query("SELECT record FROM fraud_api_keys ORDER BY name", &[])
        .map_err(|e| io("read", e))?;
    rows.iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(|e| io("api keys", e)))
        .collect()
}

/// Adds a key to the store at `url` (`fraud keys create --store`): refused when one of that
/// name exists. Every replica on the store accepts it within a few seconds.
pub fn add_stored_key(url: &str, record: &KeyRecord) -> Result<(), LogError> {
    let mut client = connect(url, Duration::from_secs(10))?;
    client.batch_execute(SCHEMA).map_err(|e| io("schema", e))?;
    let body = serde_json::to_string(record).map_err(|e| io("api keys", e))?;
    let added = client
        .execute(
            "INSERT INTO fraud_api_keys (name, record) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&record.name, &body],
        )
        .map_err(|e| io("write", e))?;
    if added == 0 {
        return Err(io(
            "api keys",
            format!("a key named `{}` exists already", record.name),
        ));
    }
    Ok(())
}

/// Revokes the key named `name` in the store at `url` (`fraud keys revoke --store`).
pub fn revoke_stored_key(url: &str, name: &str) -> Result<(), LogError> {
    let mut client = connect(url, Duration::from_secs(10))?;
    client.batch_execute(SCHEMA).map_err(|e| io("schema", e))?;
    let mut t = client.transaction().map_err(|e| io("write", e))?;
    let row = t
        .query_opt(
            "SELECT record FROM fraud_api_keys WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .map_err(|e| io("read", e))?
        .ok_or_else(|| io("api keys", format!("no key named `{name}`")))?;
    let mut record: KeyRecord =
        serde_json::from_str(row.get::<_, &str>(0)).map_err(|e| io("api keys", e))?;
    record.revoked = true;
    let body = serde_json::to_string(&record).map_err(|e| io("api keys", e))?;
    t.execute(
        "UPDATE fraud_api_keys SET record = $2, changed_at = now() WHERE name = $1",
        &[&name, &body],
    )
    .map_err(|e| io("write", e))?;
    t.commit().map_err(|e| io("write", e))
}

/// Per record key (an API key's name, `console:<user>`, ...): records other than reads,
/// decision reads, and the time of the last, over every replica (`fraud keys list --store`).
pub fn key_usage(url: &str) -> Result<Vec<(String, u64, u64, String)>, LogError> {
    let mut client = connect(url, Duration::from_secs(10))?;
    let rows = client
        .query(
            "SELECT body::jsonb->>'key', count(*) FILTER (WHERE kind <> 'access'),
                    count(*) FILTER (WHERE kind = 'access'), max(body::jsonb->>'at')
             FROM fraud_records GROUP BY 1",
            &[],
        )
        .map_err(|e| io("read", e))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some((
                r.get::<_, Option<String>>(0)?,
                u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                r.get::<_, Option<String>>(3).unwrap_or_default(),
            ))
        })
        .collect())
}

/// The entity keys of the store at `url`, read with a connection of this process's own (a
/// command, not the service): for opening the records' entity fields. Read-only.
struct DirectKeys {
    client: Mutex<Client>,
}

impl DirectKeys {
    fn rows(&self, sql: &str, arg: &str) -> Result<Vec<postgres::Row>, String> {
        self.client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .query(sql, &[&arg])
            .map_err(|e| e.to_string())
    }
}

impl RemoteKeys for DirectKeys {
    fn keep(&self, _: &str, _: &str, _: &str) -> Result<(), String> {
        Err("the store's keys are opened read-only here".into())
    }

    fn refs_of_entity(&self, entity: &str) -> Result<Vec<String>, String> {
        Ok(self
            .rows(KEY_REFS_OF_ENTITY, entity)?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn key_by_ref(&self, key_ref: &str) -> Result<Option<(String, String)>, String> {
        Ok(self
            .rows(KEY_BY_REF, key_ref)?
            .first()
            .map(|r| (r.get(0), r.get(1))))
    }

    fn destroy(&self, _: &[String]) -> Result<usize, String> {
        Err("the store's keys are opened read-only here".into())
    }
}

/// A read-only vault over the entity keys of the store at `url` (`sealer`: the encryption
/// key they are sealed with), for commands that open its records (`fraud state rebuild`).
pub fn store_vault(url: &str, sealer: Option<super::seal::Sealer>) -> Result<Vault, LogError> {
    let client = connect(url, Duration::from_secs(10))?;
    Vault::open_remote(
        std::sync::Arc::new(DirectKeys {
            client: Mutex::new(client),
        }),
        "fraud_vault_keys",
        sealer,
    )
    .map_err(|e| io("vault", e))
}
