//! The decision log: append-only, hash-chained, durable before the answer, kept in segments
//! that retention can remove. The service uses it through the [`Journal`] trait (append an
//! [`Event`] or a decision, find a decision, sign heads, retention); [`DecisionLog`], the
//! files described here, is its first implementation.
//!
//! One line per record, `<sha256 hex> <json>\n`, where the JSON holds `seq`, `prev` (the hash
//! of the previous record), `kind` (`decision`, `label`, `model`, ...), `at`, `key` (the API
//! key's name that asked) and `data`; the hash covers the previous hash and the JSON bytes as
//! written. With `sync` durability a record is fsynced before it is acknowledged, so every
//! answered request survives a crash: an event before `append` returns, a decision before its
//! answer is sent (the answer awaits [`Journal::durable`]). Group commit: one fsync covers every
//! record written before it started; a committer thread makes the decisions' fsyncs, so at
//! 10,000 decisions a second each fsync covers a few of them and no request holds a thread
//! while it waits.
//!
//! Records go to `decisions.log`; when it reaches the segment size, or a new UTC day begins,
//! it is closed as `decisions-<first seq, 20 digits>.log` and a new one begins. The chain runs
//! on across segments. Retention removes whole closed segments, oldest first, after writing a
//! `retention` record (in clear, even in an encrypted log) that names each one removed by its
//! first and last seq and last hash: a log that starts after record 1 verifies only when such
//! a record accounts for every missing record, so removing records any other way is seen.
//!
//! On start the whole chain is verified. A torn last line of the open segment (a crash
//! mid-write) is cut off; damage anywhere else stops the start with the record named.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why the log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Reading or writing failed.
    #[error("decision log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record is damaged or out of chain.
    #[error("decision log {path}: line {line}: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// What is wrong.
        reason: String,
    },
}

/// A record's members before `data`.
pub(crate) struct Head<'a> {
    pub seq: u64,
    pub prev: &'a str,
    pub kind: &'a str,
    pub at: &'a str,
    pub key: &'a str,
    /// The replica that wrote it (records in a shared store; none in a replica's own files).
    pub replica: Option<&'a str>,
}

/// Appends to `out` a record's body as serde would serialize it whole, from `data` serialized
/// already: the large part of a record is written before the log's lock is taken, only the
/// rest (seq, prev) under it.
pub(crate) fn write_body(
    out: &mut Vec<u8>,
    head: &Head<'_>,
    data: &[u8],
    sealed: Option<&str>,
) -> Result<(), serde_json::Error> {
    out.extend_from_slice(b"{\"seq\":");
    serde_json::to_writer(&mut *out, &head.seq)?;
    for (name, v) in [
        (&b",\"prev\":"[..], head.prev),
        (b",\"kind\":", head.kind),
        (b",\"at\":", head.at),
        (b",\"key\":", head.key),
    ] {
        out.extend_from_slice(name);
        serde_json::to_writer(&mut *out, v)?;
    }
    if let Some(r) = head.replica {
        out.extend_from_slice(b",\"replica\":");
        serde_json::to_writer(&mut *out, r)?;
    }
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    if let Some(sealed) = sealed {
        out.extend_from_slice(b",\"sealed\":");
        serde_json::to_writer(&mut *out, sealed)?;
    }
    out.push(b'}');
    Ok(())
}

/// Appends to `out` the body of the record `head` names, with `data` sealed by `sealer`
/// (unless its kind is kept in clear), and returns the record's hash after `head.prev`: how
/// the file log and the shared store make a record alike.
pub(crate) fn append_record(
    out: &mut Vec<u8>,
    sealer: Option<&super::seal::Sealer>,
    head: &Head<'_>,
    clear: bool,
    data: &[u8],
) -> Result<String, String> {
    let sealed = match sealer {
        Some(sl) if !clear => Some(sl.seal_text(data, &head.seq.to_le_bytes())?),
        _ => None,
    };
    let start = out.len();
    write_body(
        out,
        head,
        if sealed.is_some() { b"null" } else { data },
        sealed.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    Ok(hash(head.prev, &out[start..]))
}

/// The body of a record, as [`write_body`] writes it (the reference it is tested against).
#[cfg(test)]
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    prev: &'a str,
    kind: &'a str,
    at: &'a str,
    key: &'a str,
    data: &'a serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    sealed: Option<&'a str>,
}

/// Numbers written as one JSON list, NaN as `null`: a decision's feature values, in the
/// order of its feature set's names ([`super::feature_sets`]).
#[derive(Debug, Clone, Copy)]
pub struct Values<'a>(pub &'a [f64]);

impl Serialize for Values<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|v| (!v.is_nan()).then_some(*v)))
    }
}

/// The kinds of record the log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A scored transaction: the answer, the minimised transaction, its features.
    Decision,
    /// A fraud / not-fraud label of a decided transaction.
    Label,
    /// A decision record read (by the API or the console).
    Access,
    /// A key or console user caught reading far above its usual rate.
    Alert,
    /// An entity erased (GDPR).
    Erase,
    /// A card's state moved to its token under a new tokenization key.
    Migrate,
    /// A model installed (active or shadow) or the shadow removed.
    Model,
    /// A review-console case action.
    Case,
    /// A console login, refused or not.
    Login,
    /// A console logout.
    Logout,
    /// Closed segments removed by retention (in clear).
    Retention,
    /// A torn last record cut off at start (in clear).
    Recovery,
    /// A signed head (in clear).
    Head,
    /// A policy drafted, published or discarded.
    Policy,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 14] = [
        Kind::Decision,
        Kind::Label,
        Kind::Access,
        Kind::Alert,
        Kind::Erase,
        Kind::Migrate,
        Kind::Model,
        Kind::Case,
        Kind::Login,
        Kind::Logout,
        Kind::Retention,
        Kind::Recovery,
        Kind::Head,
        Kind::Policy,
    ];

    /// Its name in the log (a record's `kind`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::Label => "label",
            Kind::Access => "access",
            Kind::Alert => "alert",
            Kind::Erase => "erase",
            Kind::Migrate => "migrate",
            Kind::Model => "model",
            Kind::Case => "case",
            Kind::Login => "login",
            Kind::Logout => "logout",
            Kind::Retention => "retention",
            Kind::Recovery => "recovery",
            Kind::Head => super::heads::KIND,
            Kind::Policy => "policy",
        }
    }

    /// The kind named `name`, if any.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Written in clear even in an encrypted log (what must be read to verify it).
    pub(crate) fn clear(self) -> bool {
        matches!(self, Kind::Retention | Kind::Recovery | Kind::Head)
    }
}

/// One event to append, with its content typed (decisions and signed heads have their own
/// ways in: [`DecisionLog::append_protected`], [`DecisionLog::append_signed_head`]).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Event<'a> {
    /// A label applied.
    Label {
        /// The labelled transaction.
        transaction_id: &'a str,
        /// Fraud or not.
        is_fraud: bool,
        /// When the outcome became known (microseconds).
        known_at_us: i64,
        /// The transaction as its decision recorded it (replayed into state at start).
        transaction: &'a serde_json::Value,
    },
    /// A decision record read.
    Access {
        /// The transaction whose record was read.
        transaction_id: &'a str,
        /// `console` when read there.
        #[serde(skip_serializing_if = "Option::is_none")]
        via: Option<&'static str>,
    },
    /// Reads far above the usual rate.
    Alert {
        /// What was seen.
        reason: &'static str,
        /// Reads in the window.
        reads: u64,
        /// The limit then.
        limit: u64,
    },
    /// An entity erased.
    Erase {
        /// Its kind.
        entity: &'a str,
        /// The random ref its key is filed under (never the id).
        key_ref: Option<&'a str>,
        /// With a store shared by replicas: every ref of its keys, all replicas' (each
        /// forgets those it holds as it follows this record).
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        key_refs: &'a [String],
        /// Whether state was held.
        held: bool,
    },
    /// A card's state moved to its new token.
    Migrate {
        /// Always `card`.
        entity: &'static str,
        /// The token under the earlier key.
        from: &'a str,
        /// The token under the current key.
        to: &'a str,
    },
    /// A model installed or removed.
    Model {
        /// `active` or `shadow`.
        role: &'static str,
        /// Its version (none: the shadow removed).
        model_version: Option<&'a str>,
        /// Where it came from.
        origin: Option<&'a str>,
        /// The kept upload, relative to the data directory.
        file: Option<&'a str>,
    },
    /// A console case action.
    Case {
        /// The case's transaction.
        transaction_id: &'a str,
        /// `fraud`, `legit` or `escalate`.
        action: &'a str,
    },
    /// A console login.
    Login {
        /// `ok` or `refused`.
        outcome: &'static str,
        /// Why it was refused.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    /// A console logout.
    Logout {},
    /// Segments removed by retention.
    Retention {
        /// The cut-off time (RFC 3339).
        older_than: &'a str,
        /// Each removed segment: first and last seq, last hash and time.
        segments: &'a [serde_json::Value],
    },
    /// A torn record cut off at start.
    Recovery(&'a serde_json::Value),
    /// A policy drafted, published or discarded.
    Policy(&'a super::policies::PolicyRecord),
}

impl Event<'_> {
    /// The kind of record it makes.
    pub fn kind(&self) -> Kind {
        match self {
            Event::Label { .. } => Kind::Label,
            Event::Access { .. } => Kind::Access,
            Event::Alert { .. } => Kind::Alert,
            Event::Erase { .. } => Kind::Erase,
            Event::Migrate { .. } => Kind::Migrate,
            Event::Model { .. } => Kind::Model,
            Event::Case { .. } => Kind::Case,
            Event::Login { .. } => Kind::Login,
            Event::Logout {} => Kind::Logout,
            Event::Retention { .. } => Kind::Retention,
            Event::Recovery(_) => Kind::Recovery,
            Event::Policy(_) => Kind::Policy,
        }
    }
}

/// What [`Journal::begin`] found.
#[derive(Debug)]
pub enum Begin {
    /// Decided already: the record.
    Decided(Box<Record>),
    /// Another replica is scoring it now.
    Busy,
    /// Not decided, and now claimed by this process.
    Claimed,
}

/// What [`Journal::begin_async`] gives: the claim of a transaction, awaited.
pub type Beginning<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Begin, LogError>> + Send + 'a>>;

/// What the service asks of a decision log, whatever keeps it: append events (durable when
/// the call returns) and decisions (durable once [`durable`](Journal::durable) says so: many
/// decisions share one commit), find a decision by transaction id, sign heads, remove old
/// records under retention. [`DecisionLog`] (hash-chained files) is the first
/// implementation; a database is the next (the engine holds a `dyn Journal`).
pub trait Journal: Send + Sync {
    /// Appends `event`, asked for by `key`. Returns its seq.
    fn append(&self, key: &str, event: &Event<'_>) -> Result<u64, LogError>;

    /// Appends a decision whose entity fields are sealed already (`used`: the keys that
    /// sealed them), found later by its transaction id. Returns its seq; the decision is
    /// durable once [`durable`](Journal::durable) of it returns, and must not be answered
    /// before.
    fn append_decision(
        &self,
        key: &str,
        record: &super::record::DecisionRecord<'_, fraud_core::decision::Verdict>,
        used: super::vault::Used,
    ) -> Result<u64, LogError>;

    /// Appends a signed head when records came since the last one. Returns its seq.
    fn append_signed_head(
        &self,
        signer: &super::heads::HeadSigner,
    ) -> Result<Option<u64>, LogError>;

    /// The decision recorded for `transaction_id`, opened.
    fn decision(&self, transaction_id: &str) -> Result<Option<Record>, LogError>;

    /// Keeps the feature set `names` (durably) for the decision records that will name it
    /// ([`super::feature_sets`]). Returns its id.
    fn keep_feature_set(&self, names: &[String]) -> Result<String, LogError>;

    /// The names of feature set `id`, if kept.
    fn feature_set(&self, id: &str) -> Result<Option<Vec<String>>, LogError>;

    /// Records written so far (the last seq).
    fn records(&self) -> u64;

    /// Removes the records older than `before`, none after seq `through`, recording the
    /// removal for `key`.
    fn remove_before(
        &self,
        before: time::OffsetDateTime,
        through: u64,
        key: &str,
    ) -> Result<Removed, LogError>;

    /// The vault that seals the records' entity fields, when there is one.
    fn vault(&self) -> Option<&super::vault::Vault>;

    /// Retention of a store shared by replicas: removes the entity keys no record written
    /// since `before` used (how many), never an erased one's mark; `None` when the vault
    /// itself drops the keys of removed records (a replica's own files).
    fn drop_unused_keys(&self, _before: time::OffsetDateTime) -> Result<Option<usize>, LogError> {
        Ok(None)
    }

    /// Before `transaction_id` is scored: its decision if it has one, or [`Begin::Busy`]
    /// when another replica is scoring it now (a store shared by replicas), or
    /// [`Begin::Claimed`]: this process claimed it, until its decision is appended or
    /// [`release`](Journal::release) gives it up. One process's own requests are kept apart
    /// by the engine; a claim left by a replica that died lapses.
    fn begin(&self, transaction_id: &str) -> Result<Begin, LogError> {
        Ok(match self.decision(transaction_id)? {
            Some(rec) => Begin::Decided(Box::new(rec)),
            None => Begin::Claimed,
        })
    }

    /// Whether [`begin`](Journal::begin) waits on another process (a store shared by
    /// replicas claims a transaction in the database): the service then awaits
    /// [`begin_async`](Journal::begin_async) instead, holding no thread meanwhile.
    fn claims_elsewhere(&self) -> bool {
        false
    }

    /// [`begin`](Journal::begin) as a future, which holds no thread while it waits when
    /// [`claims_elsewhere`](Journal::claims_elsewhere) (otherwise it is `begin`, done at once).
    fn begin_async<'a>(&'a self, transaction_id: &'a str) -> Beginning<'a> {
        Box::pin(std::future::ready(self.begin(transaction_id)))
    }

    /// Gives up the claim of a transaction that was not decided.
    fn release(&self, _transaction_id: &str) {}

    /// Publishes `role`'s model (`active` or `shadow`) to every replica sharing this store:
    /// its version and artifact, or `None` (the shadow removed). Nothing to do for a
    /// replica's own files.
    fn publish_model(&self, _role: &str, _model: Option<(&str, &[u8])>) -> Result<(), LogError> {
        Ok(())
    }

    /// The models a shared store assigns, by role (`None`: the role was emptied); empty
    /// for a replica's own files.
    fn assigned_models(&self) -> Result<Vec<(String, Option<String>)>, LogError> {
        Ok(Vec::new())
    }

    /// A model artifact kept in a shared store, by version.
    fn model_artifact(&self, _version: &str) -> Result<Option<Vec<u8>>, LogError> {
        Ok(None)
    }

    /// The API keys a store shared by replicas holds (`None`: this store holds none; the
    /// keys file is the only source).
    fn api_keys(&self) -> Result<Option<Vec<super::keys::KeyRecord>>, LogError> {
        Ok(None)
    }

    /// Where the console keeps sessions, lock-outs and used codes when several replicas
    /// share this store (`None`: in this process).
    fn console_store(&self) -> Option<&dyn super::users::ConsoleStore> {
        None
    }

    /// The records of the other replicas sharing this store, of the `kinds` given, after the
    /// seq `after` holds for their replica (0 when absent), each replica's in order, at most
    /// about `limit` (opened; a decision may come as its summary only: its transaction id,
    /// outcome, score, transaction time and merchant category): `after` is moved past them.
    /// Empty when no other process writes to this store.
    fn others(
        &self,
        _after: &mut HashMap<String, u64>,
        _kinds: &[&str],
        _limit: usize,
    ) -> Result<Vec<Record>, LogError> {
        Ok(Vec::new())
    }

    /// The seq to wait for (with [`durable`](Journal::durable)) before answering with
    /// `rec`, a record read back: its own, or 0 when it is durable already (written by
    /// another replica to a shared store).
    fn settle_seq(&self, rec: &Record) -> u64 {
        rec.seq
    }

    /// Resolves once record `seq` is durable, without holding a thread meanwhile.
    fn durable(
        &self,
        seq: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LogError>> + Send + '_>>;
}

impl Journal for DecisionLog {
    fn append(&self, key: &str, event: &Event<'_>) -> Result<u64, LogError> {
        DecisionLog::append(self, key, event)
    }

    fn append_decision(
        &self,
        key: &str,
        record: &super::record::DecisionRecord<'_, fraud_core::decision::Verdict>,
        used: super::vault::Used,
    ) -> Result<u64, LogError> {
        let id = Some(record.transaction_id.to_string());
        let data = serde_json::to_vec(record).map_err(|e| self.io(std::io::Error::other(e)))?;
        // Durable later, by the committer: the answer waits for `durable(seq)`.
        let seq = self
            .write_with(Kind::Decision, key, |_, _| Ok(data), id, used, true)?
            .unwrap_or_default();
        if self.sync {
            self.commits.kick();
        }
        Ok(seq)
    }

    fn append_signed_head(
        &self,
        signer: &super::heads::HeadSigner,
    ) -> Result<Option<u64>, LogError> {
        DecisionLog::append_signed_head(self, signer)
    }

    fn decision(&self, transaction_id: &str) -> Result<Option<Record>, LogError> {
        DecisionLog::decision(self, transaction_id)
    }

    fn keep_feature_set(&self, names: &[String]) -> Result<String, LogError> {
        self.feature_sets.keep(names)
    }

    fn feature_set(&self, id: &str) -> Result<Option<Vec<String>>, LogError> {
        self.feature_sets.names(id)
    }

    fn records(&self) -> u64 {
        DecisionLog::records(self)
    }

    fn remove_before(
        &self,
        before: time::OffsetDateTime,
        through: u64,
        key: &str,
    ) -> Result<Removed, LogError> {
        DecisionLog::remove_before(self, before, through, key)
    }

    fn vault(&self) -> Option<&super::vault::Vault> {
        DecisionLog::vault(self)
    }

    fn durable(
        &self,
        seq: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LogError>> + Send + '_>>
    {
        Box::pin(DecisionLog::durable(self, seq))
    }
}

/// A record read back.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Record {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// Hash of the previous record (64 zeros for the first).
    pub prev: String,
    /// `decision`, `label`, `model`, ...
    pub kind: String,
    /// RFC 3339.
    pub at: String,
    /// Name of the API key that asked.
    pub key: String,
    /// The replica that wrote it, in a store shared by replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// The record's content (null while sealed).
    pub data: serde_json::Value,
    /// The content encrypted (AES-256-GCM, base64) when the log is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

impl Record {
    /// Whether it is a record of `kind`.
    pub fn is(&self, kind: Kind) -> bool {
        self.kind == kind.name()
    }

    /// Decrypts a sealed record's content into `data` (a no-op for a clear record).
    pub fn unseal(&mut self, sealer: Option<&super::seal::Sealer>) -> Result<(), String> {
        let Some(text) = self.sealed.take() else {
            return Ok(());
        };
        let Some(s) = sealer else {
            return Err(format!(
                "record {} is encrypted: the encryption key is needed",
                self.seq
            ));
        };
        let plain = s.open_text(&text, &self.seq.to_le_bytes())?;
        self.data = serde_json::from_slice(&plain)
            .map_err(|e| format!("record {}: decrypted content is not JSON: {e}", self.seq))?;
        Ok(())
    }
}

/// A closed segment.
#[derive(Debug, Clone)]
struct Closed {
    first: u64,
    last: u64,
    last_hash: String,
    last_at: String,
    path: PathBuf,
}

struct Inner {
    file: File,
    len: u64,
    seq: u64,
    last_hash: String,
    last_at: String,
    /// Seq of the first record of the open segment (`seq + 1` while it is empty).
    active_first: u64,
    /// UTC day (`YYYY-MM-DD`) of the open segment's first record.
    active_day: String,
    closed: Vec<Closed>,
}

/// The open log.
pub struct DecisionLog {
    dir: PathBuf,
    /// The names of the feature sets its decision records name.
    feature_sets: super::feature_sets::FileSets,
    path: PathBuf,
    sealer: Option<super::seal::Sealer>,
    inner: Mutex<Inner>,
    /// Transaction id -> (first seq of its segment, byte offset). Locks of its own, one per
    /// table: a request looking up its transaction id does not wait for another's record to
    /// be written, nor (but for one chance in 256) for another's lookup.
    index: super::sharded::Locked<(u64, u64)>,
    /// Read handles by the first seq of their segment.
    readers: Mutex<HashMap<u64, std::sync::Arc<File>>>,
    /// What is written and what is durable (shared with the committer thread).
    commits: std::sync::Arc<Commits>,
    /// The committer thread (sync durability).
    committer: Option<std::thread::JoinHandle<()>>,
    sync: bool,
    segment_bytes: u64,
    vault: Option<std::sync::Arc<super::vault::Vault>>,
    /// Seq of the last signed head written by this process (0: none yet).
    signed_through: AtomicU64,
}

/// How far the log is durable: every record through `through` is on disk; `failed` once an
/// fsync failed (for good: after a failed fsync the kernel may have dropped the pages, so no
/// later fsync proves them written, and nothing more is acknowledged).
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// The last durable record.
    pub through: u64,
    /// Why the log cannot be made durable any more.
    pub failed: Option<std::sync::Arc<str>>,
}

/// How long the committer waits, under load, for more records to join an fsync. At 10,000
/// decisions a second, 400 us (against 150) took the server's CPU per answer from about 116
/// to 112 us (fewer fsyncs, each covering more records) with no longer tail: under load the
/// tail is the CPU's queue, not this wait (benches/README, "Durable by default").
const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_micros(400);

/// Group commit. Writers append records and go on; one fsync then covers every record
/// written before it started, made by the committer thread (for decisions, whose answers
/// wait for it without holding a thread) or by a writer that waits itself. Both share
/// `synced`, so no record is fsynced twice over.
struct Commits {
    dir: PathBuf,
    path: PathBuf,
    /// The open segment, for fsync (replaced when a segment is closed).
    sync_file: arc_swap::ArcSwap<File>,
    synced: Mutex<u64>,
    written: AtomicU64,
    /// A segment was closed and a new one opened since the directory was last fsynced.
    dir_unsynced: std::sync::atomic::AtomicBool,
    /// Published after every fsync.
    durable: tokio::sync::watch::Sender<Durable>,
    /// Stop flag of the committer, and its wake-up.
    stop: Mutex<bool>,
    wake: std::sync::Condvar,
    /// The committer is asleep (or about to be): a writer must wake it.
    asleep: std::sync::atomic::AtomicBool,
}

impl Commits {
    fn io(&self, source: std::io::Error) -> LogError {
        LogError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn failed(&self) -> Option<LogError> {
        self.durable
            .borrow()
            .failed
            .as_ref()
            .map(|why| self.io(std::io::Error::other(why.to_string())))
    }

    /// One fsync covering every record written before it started, unless one already
    /// covered `seq`.
    fn sync_to(&self, seq: u64) -> Result<(), LogError> {
        let mut synced = self
            .synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = self.failed() {
            return Err(e);
        }
        if *synced >= seq {
            return Ok(());
        }
        let upto = self.written.load(Ordering::SeqCst);
        let done = (|| {
            if self.dir_unsynced.swap(false, Ordering::AcqRel) {
                if let Err(e) = sync_dir(&self.dir) {
                    self.dir_unsynced.store(true, Ordering::Release);
                    return Err(e);
                }
            }
            // A segment closed meanwhile was fsynced as it closed.
            self.sync_file.load().sync_data()
        })();
        match done {
            Ok(()) => {
                *synced = upto;
                self.durable.send_if_modified(|d| {
                    let newer = upto > d.through;
                    d.through = d.through.max(upto);
                    newer
                });
                Ok(())
            }
            Err(e) => {
                let why: std::sync::Arc<str> = format!("fsync failed: {e}").into();
                self.durable.send_modify(|d| d.failed = Some(why));
                Err(self.io(e))
            }
        }
    }

    /// A record was written that the committer is to make durable.
    fn kick(&self) {
        if self.asleep.load(Ordering::SeqCst) {
            let _g = self
                .stop
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.wake.notify_one();
        }
    }

    /// The committer: sleeps until records are written past what is durable, fsyncs them
    /// (records written meanwhile join the next fsync), publishes, until told to stop. Under
    /// load (records came while the last fsync ran) it first lets [`COMMIT_DELAY`] pass, so
    /// that one fsync covers more records: each fsync costs the server some 15 us of CPU,
    /// which at 10,000 decisions a second and one or two records per fsync would be most of
    /// the cost of durability. Quiet, it fsyncs at once (no added latency).
    fn run(&self) {
        let mut busy = false;
        loop {
            {
                let mut stop = self
                    .stop
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                loop {
                    if *stop {
                        return;
                    }
                    self.asleep.store(true, Ordering::SeqCst);
                    let pending =
                        self.written.load(Ordering::SeqCst) > self.durable.borrow().through;
                    if pending {
                        self.asleep.store(false, Ordering::SeqCst);
                        break;
                    }
                    stop = self
                        .wake
                        .wait(stop)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    self.asleep.store(false, Ordering::SeqCst);
                }
            }
            if busy {
                std::thread::sleep(COMMIT_DELAY);
            }
            let upto = self.written.load(Ordering::SeqCst);
            if self.sync_to(upto).is_err() {
                // Published as failed: every waiter is told, nothing more is acknowledged.
                return;
            }
            busy = self.written.load(Ordering::SeqCst) > upto;
        }
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        *self
            .commits
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.commits.wake.notify_one();
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

/// The open segment's file name.
pub const ACTIVE: &str = "decisions.log";

fn segment_name(first: u64) -> String {
    format!("decisions-{first:020}.log")
}

pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub(crate) fn hash(prev: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(body);
    fraud_core::hex::encode(&h.finalize())
}

/// Splits a line into (hash, body).
fn split(line: &[u8]) -> Option<(&str, &[u8])> {
    if line.len() < 66 || line[64] != b' ' {
        return None;
    }
    Some((std::str::from_utf8(&line[..64]).ok()?, &line[65..]))
}

/// Where each decision is (segment, offset), by transaction id, as read at start-up (then a
/// lock per table: written by every scored request).
type Index = super::sharded::Sharded<(u64, u64)>;

/// The transaction id a decision record is indexed by.
fn decision_id(kind: &str, data: &serde_json::Value) -> Option<String> {
    (kind == Kind::Decision.name())
        .then(|| data.get("transaction_id")?.as_str().map(str::to_string))
        .flatten()
}

/// What a scan of a log found.
#[derive(Debug, Clone)]
pub struct Scan {
    /// Seq of the last whole record.
    pub records: u64,
    /// Seq of the first record kept (1 unless retention removed older segments).
    pub first: u64,
    /// Hash of the last whole record (the head to publish).
    pub head: String,
    /// Bytes after them: a record cut short (a crash mid-write, or truncation).
    pub torn_bytes: u64,
    /// Segment files read, oldest first.
    pub files: Vec<PathBuf>,
}

/// Where a visited record is.
#[derive(Debug, Clone, Copy)]
pub struct Pos<'a> {
    /// First seq of the record's segment.
    pub segment: u64,
    /// Byte offset of its line in the segment.
    pub offset: u64,
    /// Its hash.
    pub hash: &'a str,
}

/// The chain as read so far, across segments.
struct Chain {
    seq: u64,
    last_hash: String,
    /// The first record read: its seq and previous hash.
    first: Option<(u64, String)>,
    /// Segments that `retention` records say were removed: (first, last, last hash).
    removed: Vec<(u64, u64, String)>,
}

impl Chain {
    fn new() -> Self {
        Chain {
            seq: 0,
            last_hash: GENESIS.to_string(),
            first: None,
            removed: Vec::new(),
        }
    }

    /// Reads the records of one segment's bytes; returns (bytes of whole records, first seq
    /// in it).
    fn read(
        &mut self,
        bytes: &[u8],
        path: &Path,
        visit: &mut dyn FnMut(Pos<'_>, &Record),
    ) -> Result<(usize, Option<u64>), LogError> {
        let (mut pos, mut good, mut first_here) = (0usize, 0usize, None);
        while pos < bytes.len() {
            let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
                break;
            };
            let line = &bytes[pos..pos + nl];
            let expected = self.seq + 1;
            let damaged = |reason: String| LogError::Damaged {
                path: path.to_path_buf(),
                line: expected,
                reason,
            };
            let (h, body) = split(line)
                .ok_or_else(|| damaged(format!("record {expected} is not a log record")))?;
            let rec: Record = serde_json::from_slice(body)
                .map_err(|_| damaged(format!("record {expected} was altered (not valid JSON)")))?;
            if self.first.is_none() {
                // The oldest record kept: record 1, or one after segments retention removed
                // (accounted for at the end).
                self.first = Some((rec.seq, rec.prev.clone()));
                if rec.seq > 1 {
                    self.seq = rec.seq - 1;
                    self.last_hash = rec.prev.clone();
                }
            }
            let expected = self.seq + 1;
            if rec.seq > expected {
                return Err(damaged(format!(
                    "records {expected} to {} were removed",
                    rec.seq - 1
                )));
            }
            if rec.seq < expected {
                return Err(damaged(format!(
                    "record {} appears again after record {}: reordered or duplicated",
                    rec.seq, self.seq
                )));
            }
            if rec.prev != self.last_hash {
                return Err(damaged(format!(
                    "record {expected} does not follow record {} (its previous hash differs): altered or reordered",
                    self.seq
                )));
            }
            if hash(&self.last_hash, body) != h {
                return Err(damaged(format!(
                    "record {expected} was altered (its hash does not match its content)"
                )));
            }
            if rec.is(Kind::Retention) {
                for s in rec.data["segments"].as_array().into_iter().flatten() {
                    if let (Some(f), Some(l), Some(lh)) = (
                        s["first"].as_u64(),
                        s["last"].as_u64(),
                        s["last_hash"].as_str(),
                    ) {
                        self.removed.push((f, l, lh.to_string()));
                    }
                }
            }
            first_here.get_or_insert(rec.seq);
            visit(
                Pos {
                    segment: first_here.unwrap_or(rec.seq),
                    offset: pos as u64,
                    hash: h,
                },
                &rec,
            );
            self.seq = rec.seq;
            self.last_hash = h.to_string();
            pos += nl + 1;
            good = pos;
        }
        Ok((good, first_here))
    }

    /// A log that starts after record 1 must have a `retention` record for what is missing.
    fn check_start(&self, path: &Path) -> Result<(), LogError> {
        match &self.first {
            Some((1, prev)) if prev != GENESIS => Err(LogError::Damaged {
                path: path.to_path_buf(),
                line: 1,
                reason: "record 1 does not start the chain (its previous hash is not zero)".into(),
            }),
            Some((s, prev)) if *s > 1 => {
                let accounted = self
                    .removed
                    .iter()
                    .any(|(_, last, last_hash)| *last == s - 1 && last_hash == prev);
                if accounted {
                    Ok(())
                } else {
                    Err(LogError::Damaged {
                        path: path.to_path_buf(),
                        line: *s,
                        reason: format!(
                            "records 1 to {} were removed and no retention record accounts for them",
                            s - 1
                        ),
                    })
                }
            }
            _ => Ok(()),
        }
    }
}

/// The log directory of `dir`: `dir` itself when it holds log segments, else `dir/log` (a
/// data directory).
pub fn log_dir(dir: &Path) -> PathBuf {
    let holds = |d: &Path| {
        d.join(ACTIVE).exists()
            || segment_files(d).is_ok_and(|files| files.iter().any(|(f, _)| f.is_some()))
    };
    if !holds(dir) && dir.join("log").is_dir() {
        dir.join("log")
    } else {
        dir.to_path_buf()
    }
}

/// The segment files of a log directory, oldest first: closed ones with their first seq,
/// then the open one (`None`).
pub fn segment_files(dir: &Path) -> std::io::Result<Vec<(Option<u64>, PathBuf)>> {
    let mut closed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix("decisions-")
            .and_then(|s| s.strip_suffix(".log"))
        {
            if let Ok(first) = n.parse::<u64>() {
                closed.push((Some(first), entry.path()));
            }
        }
    }
    closed.sort();
    let active = dir.join(ACTIVE);
    if active.exists() {
        closed.push((None, active));
    }
    Ok(closed)
}

/// The data of a signed head to be record `seq` after `prev`: the record count and head hash
/// before it, signed; `None` when no record came since the last signed head (`last`).
pub(crate) fn signed_head(
    signer: &super::heads::HeadSigner,
    seq: u64,
    prev: &str,
    last: u64,
) -> Option<Vec<u8>> {
    let records = seq - 1;
    if records == last && last > 0 {
        return None;
    }
    let data = serde_json::json!({
        "records": records,
        "head": prev,
        "public_key": signer.public_hex(),
        "signature": signer.sign(records, prev),
    });
    serde_json::to_vec(&data).ok()
}

/// A chain of log lines verified a piece at a time: a chain larger than memory (a store's)
/// is read a page of whole records at a time.
pub struct ChainCheck {
    chain: Chain,
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainCheck {
    /// Nothing read yet.
    pub fn new() -> Self {
        ChainCheck {
            chain: Chain::new(),
        }
    }

    /// The next records, as whole log lines, calling `visit` for each.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        name: &Path,
        mut visit: impl FnMut(Pos<'_>, &Record),
    ) -> Result<(), LogError> {
        let (good, _) = self.chain.read(bytes, name, &mut visit)?;
        if good < bytes.len() {
            return Err(LogError::Damaged {
                path: name.to_path_buf(),
                line: self.chain.seq + 1,
                reason: format!("record {} is not a whole log record", self.chain.seq + 1),
            });
        }
        Ok(())
    }

    /// The chain read whole: checks its start and says what it holds.
    pub fn finish(self, name: &Path) -> Result<Scan, LogError> {
        let chain = self.chain;
        chain.check_start(name)?;
        Ok(Scan {
            records: chain.seq,
            first: chain.first.as_ref().map_or(1, |f| f.0),
            head: chain.last_hash,
            torn_bytes: 0,
            files: Vec::new(),
        })
    }
}

/// Reads and verifies a whole log directory (every segment, one at a time) without changing
/// it, calling `visit` for each record. A cut-short record at the end of the open segment is
/// reported in `torn_bytes`; anywhere else it is damage.
pub fn verify_dir(dir: &Path, mut visit: impl FnMut(Pos<'_>, &Record)) -> Result<Scan, LogError> {
    let dir = log_dir(dir);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LogError::Io { path, source }
    };
    let files = segment_files(&dir).map_err(io(&dir))?;
    if files.is_empty() {
        return Err(LogError::Io {
            path: dir.join(ACTIVE),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no decision log here"),
        });
    }
    let mut chain = Chain::new();
    let mut torn = 0u64;
    for (named, path) in &files {
        let bytes = std::fs::read(path).map_err(io(path))?;
        let (g, first) = chain.read(&bytes, path, &mut visit)?;
        check_segment(path, *named, first, g, bytes.len())?;
        torn = (bytes.len() - g) as u64;
    }
    let last = files.last().map(|f| f.1.clone()).unwrap_or_default();
    chain.check_start(&last)?;
    Ok(Scan {
        records: chain.seq,
        first: chain.first.as_ref().map_or(1, |f| f.0),
        head: chain.last_hash,
        torn_bytes: torn,
        files: files.into_iter().map(|f| f.1).collect(),
    })
}

/// A closed segment must be whole, non-empty and start at the seq in its name.
fn check_segment(
    path: &Path,
    named: Option<u64>,
    first: Option<u64>,
    good: usize,
    len: usize,
) -> Result<(), LogError> {
    let Some(named) = named else {
        return Ok(());
    };
    let damaged = |reason: String| LogError::Damaged {
        path: path.to_path_buf(),
        line: named,
        reason,
    };
    if first != Some(named) {
        return Err(damaged(format!(
            "segment named for record {named} starts with {}: renamed or replaced",
            first.map_or("no record".to_string(), |f| format!("record {f}"))
        )));
    }
    if good < len {
        return Err(damaged(format!(
            "closed segment ends in a record cut short ({} bytes)",
            len - good
        )));
    }
    Ok(())
}

fn utc_day(at: &str) -> &str {
    at.get(..10).unwrap_or(at)
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// What retention removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Segments removed (a log of files).
    pub segments: usize,
    /// Records removed from a store of rows (PostgreSQL).
    pub records: u64,
    /// The last record removed (0: none).
    pub through: u64,
}

impl DecisionLog {
    /// Opens (creating) the log in `dir`, verifying the chain and handing every record
    /// (decrypted) to `visit` in order: the one read of the log at start-up also rebuilds
    /// what derives from it. Segments close at `segment_bytes` (or a new UTC day).
    pub fn open(
        dir: &Path,
        sync: bool,
        sealer: Option<super::seal::Sealer>,
        segment_bytes: u64,
        vault: Option<std::sync::Arc<super::vault::Vault>>,
        mut visit: impl FnMut(&Record),
    ) -> Result<Self, LogError> {
        let path = dir.join(ACTIVE);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| LogError::Io { path: p, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io(&path))?;
        let files = segment_files(dir).map_err(io(dir))?;
        let mut index = Index::default();
        let mut sealed_error = None;
        let mut chain = Chain::new();
        let mut closed = Vec::new();
        let mut readers = HashMap::new();
        let (mut good, mut active_len, mut last_at, mut active_day) =
            (0usize, 0usize, String::new(), String::new());
        let mut active_found = None;
        for (named, p) in &files {
            let bytes = if named.is_none() {
                let mut b = Vec::new();
                file.read_to_end(&mut b).map_err(io(p))?;
                b
            } else {
                std::fs::read(p).map_err(io(p))?
            };
            let (mut file_last_at, mut file_first_at) = (String::new(), None::<String>);
            let (g, first) = chain.read(&bytes, p, &mut |pos, rec| {
                file_last_at.clone_from(&rec.at);
                file_first_at.get_or_insert_with(|| rec.at.clone());
                let mut rec = rec.clone();
                if let Err(e) = rec.unseal(sealer.as_ref()) {
                    sealed_error.get_or_insert(e);
                    return;
                }
                if let Some(v) = &vault {
                    v.touch(&rec.data, rec.seq);
                    let lost = v.unassigned(&rec.data);
                    v.reveal(&mut rec.data);
                    if !lost.is_empty() {
                        v.restore(lost, &rec.data);
                    }
                }
                if let Some(id) = decision_id(&rec.kind, &rec.data) {
                    index.insert(id, (pos.segment, pos.offset));
                }
                visit(&rec);
            })?;
            check_segment(p, *named, first, g, bytes.len())?;
            if !file_last_at.is_empty() {
                last_at = file_last_at;
            }
            match named {
                Some(f) => {
                    closed.push(Closed {
                        first: *f,
                        last: chain.seq,
                        last_hash: chain.last_hash.clone(),
                        last_at: last_at.clone(),
                        path: p.clone(),
                    });
                    readers.insert(*f, std::sync::Arc::new(File::open(p).map_err(io(p))?));
                }
                None => {
                    good = g;
                    active_len = bytes.len();
                    active_day = file_first_at
                        .as_deref()
                        .map(|a| utc_day(a).to_string())
                        .unwrap_or_default();
                    active_found = first;
                }
            }
        }
        if let Some(reason) = sealed_error {
            return Err(LogError::Damaged {
                path: path.clone(),
                line: 0,
                reason,
            });
        }
        chain.check_start(&path)?;
        let mut torn = None;
        if good < active_len {
            // Kept aside (private) for forensics, then cut off; the recovery is recorded in
            // the chain below.
            let mut dropped = vec![0u8; active_len - good];
            {
                use std::io::{Seek, SeekFrom};
                file.seek(SeekFrom::Start(good as u64)).map_err(io(&path))?;
                file.read_exact(&mut dropped).map_err(io(&path))?;
            }
            let aside = dir.join(format!("torn-{:020}.bin", chain.seq + 1));
            fraud_core::files::write_atomic(&aside, &dropped)
                .map_err(|e| io(&aside)(std::io::Error::other(e.to_string())))?;
            file.set_len(good as u64).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
            torn = Some(serde_json::json!({
                "reason": "the last record of the open segment was cut short (a crash or a full disk mid-write); its bytes were removed from the log at start",
                "after_seq": chain.seq,
                "dropped_bytes": dropped.len(),
                "dropped_sha256": fraud_core::hex::encode(&Sha256::digest(&dropped)),
                "kept_as": aside.file_name().map(|n| n.to_string_lossy().to_string()),
            }));
        }
        let active_first = active_found.unwrap_or(chain.seq + 1);
        readers.insert(
            active_first,
            std::sync::Arc::new(File::open(&path).map_err(io(&path))?),
        );
        let sync_file = file.try_clone().map_err(io(&path))?;
        let log = DecisionLog {
            feature_sets: super::feature_sets::FileSets::new(dir),
            inner: Mutex::new(Inner {
                file,
                len: good as u64,
                seq: chain.seq,
                last_hash: chain.last_hash,
                last_at,
                active_first,
                active_day,
                closed,
            }),
            index: index.into(),
            readers: Mutex::new(readers),
            commits: std::sync::Arc::new(Commits {
                dir: dir.to_path_buf(),
                path: path.clone(),
                sync_file: arc_swap::ArcSwap::from_pointee(sync_file),
                synced: Mutex::new(chain.seq),
                written: AtomicU64::new(chain.seq),
                dir_unsynced: std::sync::atomic::AtomicBool::new(false),
                durable: tokio::sync::watch::Sender::new(Durable {
                    through: chain.seq,
                    failed: None,
                }),
                stop: Mutex::new(false),
                wake: std::sync::Condvar::new(),
                asleep: std::sync::atomic::AtomicBool::new(false),
            }),
            committer: None,
            sync,
            dir: dir.to_path_buf(),
            path,
            sealer,
            segment_bytes: segment_bytes.max(1),
            vault,
            signed_through: AtomicU64::new(0),
        };
        let mut log = log;
        if sync {
            let commits = log.commits.clone();
            log.committer = Some(
                std::thread::Builder::new()
                    .name("decision-log-commit".into())
                    .spawn(move || commits.run())
                    .map_err(|e| log.io(e))?,
            );
        }
        if let Some(what) = torn {
            let seq = log.append("system", &Event::Recovery(&what))?;
            eprintln!(
                "warning: decision log {}: a record cut short after record {} ({} bytes) was removed; recorded as record {seq}",
                log.path.display(),
                what["after_seq"],
                what["dropped_bytes"]
            );
        }
        Ok(log)
    }

    fn io(&self, source: std::io::Error) -> LogError {
        LogError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Closes the open segment (fsynced, renamed for its first seq) and opens a new one.
    fn rotate(&self, g: &mut Inner) -> Result<(), LogError> {
        // With `sync` durability every record is fsynced already (this is cheap); with
        // `write`, records are left to the OS as they always are, and a closed segment's
        // fsync (tens of megabytes) would stall every request behind it.
        if self.sync {
            g.file.sync_all().map_err(|e| self.io(e))?;
        }
        let closed_path = self.dir.join(segment_name(g.active_first));
        std::fs::rename(&self.path, &closed_path).map_err(|e| self.io(e))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        // The new names are made durable (the directory fsynced) before a record of the new
        // segment is: by the next group commit (`sync_to`), outside this lock. With `write`
        // durability records are left to the OS, and so are the names.
        self.commits.dir_unsynced.store(true, Ordering::Release);
        let reader = File::open(&self.path).map_err(|e| self.io(e))?;
        self.commits.sync_file.store(std::sync::Arc::new(
            file.try_clone().map_err(|e| self.io(e))?,
        ));
        self.readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(g.seq + 1, std::sync::Arc::new(reader));
        g.closed.push(Closed {
            first: g.active_first,
            last: g.seq,
            last_hash: g.last_hash.clone(),
            last_at: g.last_at.clone(),
            path: closed_path,
        });
        g.file = file;
        g.len = 0;
        g.active_first = g.seq + 1;
        g.active_day.clear();
        Ok(())
    }

    /// Appends `event`, asked for by `key`, and with sync durability makes it durable.
    /// Returns its seq.
    pub fn append(&self, key: &str, event: &Event<'_>) -> Result<u64, LogError> {
        let kind = event.kind();
        let mut data =
            serde_json::to_value(event).map_err(|e| self.io(std::io::Error::other(e)))?;
        // Entity fields encrypted under their entities' keys (erasure destroys a key).
        let used = match &self.vault {
            Some(v) if !kind.clear() => v
                .protect(&mut data)
                .map_err(|e| self.io(std::io::Error::other(e.to_string())))?,
            _ => Default::default(),
        };
        let bytes = serde_json::to_vec(&data).map_err(|e| self.io(std::io::Error::other(e)))?;
        self.write(kind, key, bytes, None, used)
    }

    /// The vault that protects this log's records (the caller of
    /// [`Journal::append_decision`] seals with it).
    pub fn vault(&self) -> Option<&super::vault::Vault> {
        self.vault.as_deref()
    }

    /// Writes a record of `data` (serialized, protected: the large part of a record is made
    /// before the lock is taken) and, with sync durability, makes it durable.
    fn write(
        &self,
        kind: Kind,
        key: &str,
        data: Vec<u8>,
        id: Option<String>,
        used: super::vault::Used,
    ) -> Result<u64, LogError> {
        self.write_with(kind, key, |_, _| Ok(data), id, used, false)
            .map(|w| w.unwrap_or_default())
    }

    /// Appends a signed head: the record count and head hash before it, signed with
    /// `signer` (read and written under the log's lock, so nothing comes between). Nothing
    /// is written when no record came since the last signed head; returns its seq otherwise.
    pub fn append_signed_head(
        &self,
        signer: &super::heads::HeadSigner,
    ) -> Result<Option<u64>, LogError> {
        self.write_with(
            Kind::Head,
            "system",
            |seq, prev| {
                signed_head(
                    signer,
                    seq,
                    prev,
                    self.signed_through.load(Ordering::Acquire),
                )
                .ok_or(None)
            },
            None,
            Default::default(),
            false,
        )
        .inspect(|w| {
            if let Some(seq) = w {
                self.signed_through.store(*seq, Ordering::Release);
            }
        })
    }

    /// Writes a record whose data `make` builds from its seq and the previous hash, under
    /// the log's lock (`Err(None)` from `make`: nothing to write).
    fn write_with(
        &self,
        kind: Kind,
        key: &str,
        make: impl FnOnce(u64, &str) -> Result<Vec<u8>, Option<LogError>>,
        id: Option<String>,
        used: super::vault::Used,
        defer: bool,
    ) -> Result<Option<u64>, LogError> {
        let at = now_rfc3339();
        let (seq, place) = {
            let mut g = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if g.len > 0 && (g.len >= self.segment_bytes || g.active_day != utc_day(&at)) {
                self.rotate(&mut g)?;
            }
            let seq = g.seq + 1;
            let data = match make(seq, &g.last_hash) {
                Ok(d) => d,
                Err(None) => return Ok(None),
                Err(Some(e)) => return Err(e),
            };
            // The line: hash, space, body, newline; the hash filled in once the body is.
            let mut line = Vec::with_capacity(data.len() + 300);
            line.extend_from_slice(&[b' '; 65]);
            let h = append_record(
                &mut line,
                self.sealer.as_ref(),
                &Head {
                    seq,
                    prev: &g.last_hash,
                    kind: kind.name(),
                    at: &at,
                    key,
                    replica: None,
                },
                kind.clear(),
                &data,
            )
            .map_err(|e| self.io(std::io::Error::other(e)))?;
            line[..64].copy_from_slice(h.as_bytes());
            line.push(b'\n');
            if let Err(e) = g.file.write_all(&line) {
                // Cut a partial write so that the chain stays whole.
                let len = g.len;
                let _ = g.file.set_len(len);
                return Err(self.io(e));
            }
            let place = (g.active_first, g.len);
            if g.len == 0 {
                g.active_day = utc_day(&at).to_string();
            }
            g.len += line.len() as u64;
            g.seq = seq;
            g.last_hash = h;
            g.last_at = at;
            self.commits.written.store(seq, Ordering::SeqCst);
            if let Some(v) = &self.vault {
                v.touch_used(&used, seq);
            }
            (seq, place)
        };
        // Indexed once written, outside the log's lock: until then the decision is not
        // answered, and no other request scores the same id meanwhile (the engine's busy set).
        if let Some(id) = id {
            self.index.insert(id, place);
        }
        if self.sync && !defer {
            self.sync_to(seq)?;
        }
        Ok(Some(seq))
    }

    /// Group commit: one fsync covers every record written before it started.
    fn sync_to(&self, seq: u64) -> Result<(), LogError> {
        self.commits.sync_to(seq)
    }

    /// Waits, without a thread, until record `seq` is durable (at once with `write`
    /// durability).
    pub async fn durable(&self, seq: u64) -> Result<(), LogError> {
        if !self.sync {
            return Ok(());
        }
        let mut rx = self.commits.durable.subscribe();
        let d = rx
            .wait_for(|d| d.through >= seq || d.failed.is_some())
            .await
            .map(|d| d.clone())
            .unwrap_or_default();
        if d.through >= seq {
            return Ok(());
        }
        Err(self
            .commits
            .failed()
            .unwrap_or_else(|| self.io(std::io::Error::other("the log was closed"))))
    }

    /// Retention: removes the closed segments whose every record was written before
    /// `before` and is at most record `through` (what a state snapshot already holds). A
    /// `retention` record naming them is written (and made durable) first; then the files are
    /// deleted, oldest first. Decisions in them can no longer be read back.
    pub fn remove_before(
        &self,
        before: time::OffsetDateTime,
        through: u64,
        key: &str,
    ) -> Result<Removed, LogError> {
        let rfc = time::format_description::well_known::Rfc3339;
        let expired: Vec<Closed> = {
            let g = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            g.closed
                .iter()
                .take_while(|c| {
                    c.last <= through
                        && time::OffsetDateTime::parse(&c.last_at, &rfc).is_ok_and(|t| t < before)
                })
                .cloned()
                .collect()
        };
        let Some(last) = expired.last() else {
            return Ok(Removed::default());
        };
        let segments: Vec<serde_json::Value> = expired
            .iter()
            .map(|c| {
                serde_json::json!({"first": c.first, "last": c.last, "last_hash": c.last_hash,
                    "last_at": c.last_at})
            })
            .collect();
        let before_text = before.format(&rfc).unwrap_or_default();
        self.append(
            key,
            &Event::Retention {
                older_than: &before_text,
                segments: &segments,
            },
        )?;
        if !self.sync {
            self.sync_to(self.records())?;
        }
        for c in &expired {
            match std::fs::remove_file(&c.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(e)),
            }
            self.readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&c.first);
        }
        sync_dir(&self.dir).map_err(|e| self.io(e))?;
        let removed: std::collections::HashSet<u64> = expired.iter().map(|c| c.first).collect();
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.closed.retain(|c| !removed.contains(&c.first));
        self.index.retain(|_, (seg, _)| !removed.contains(seg));
        Ok(Removed {
            segments: expired.len(),
            records: 0,
            through: last.last,
        })
    }

    /// The recorded decision of a transaction.
    pub fn decision(&self, transaction_id: &str) -> Result<Option<Record>, LogError> {
        let Some((segment, offset)) = self.index.get(transaction_id) else {
            return Ok(None);
        };
        let line = self.read_line(segment, offset)?;
        let (_, body) = split(&line).ok_or_else(|| LogError::Damaged {
            path: self.path.clone(),
            line: 0,
            reason: format!("record at byte {offset} of segment {segment} is not a log record"),
        })?;
        let mut rec: Record = serde_json::from_slice(body).map_err(|_| LogError::Damaged {
            path: self.path.clone(),
            line: 0,
            reason: format!("record at byte {offset} of segment {segment} is not valid JSON"),
        })?;
        rec.unseal(self.sealer.as_ref())
            .map_err(|reason| LogError::Damaged {
                path: self.path.clone(),
                line: rec.seq,
                reason,
            })?;
        if let Some(v) = &self.vault {
            v.reveal(&mut rec.data);
        }
        Ok(Some(rec))
    }

    fn read_line(&self, segment: u64, offset: u64) -> Result<Vec<u8>, LogError> {
        use std::os::unix::fs::FileExt;
        let file = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&segment)
            .cloned()
            .ok_or_else(|| LogError::Damaged {
                path: self.path.clone(),
                line: 0,
                reason: format!("segment {segment} is not open"),
            })?;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        let mut at = offset;
        loop {
            let n = file.read_at(&mut buf, at).map_err(|e| self.io(e))?;
            if n == 0 {
                return Ok(out);
            }
            if let Some(nl) = buf[..n].iter().position(|&b| b == b'\n') {
                out.extend_from_slice(&buf[..nl]);
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
            at += n as u64;
        }
    }

    /// Records written so far (the seq of the last one).
    pub fn records(&self) -> u64 {
        self.commits.written.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_is_answered_only_once_an_fsync_covers_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = DecisionLog::open(dir.path(), true, None, 1 << 20, None, |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        std::thread::scope(|sc| {
            for t in 0..4 {
                let log = &log;
                sc.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap_or_else(|e| panic!("{e}"));
                    for i in 0..50 {
                        let data =
                            serde_json::to_vec(&serde_json::json!({"i": i})).unwrap_or_default();
                        let seq = log
                            .write_with(
                                Kind::Decision,
                                "k",
                                |_, _| Ok(data),
                                Some(format!("t{t}-{i}")),
                                Default::default(),
                                true,
                            )
                            .unwrap_or_else(|e| panic!("{e}"))
                            .unwrap_or_default();
                        log.commits.kick();
                        rt.block_on(log.durable(seq))
                            .unwrap_or_else(|e| panic!("{e}"));
                        let synced = *log.commits.synced.lock().unwrap_or_else(|e| e.into_inner());
                        assert!(synced >= seq, "record {seq} answered with {synced} fsynced");
                    }
                });
            }
        });
        assert_eq!(log.records(), 200);
        // Events other than decisions are durable when append returns.
        let seq = log
            .append("k", &Event::Logout {})
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(*log.commits.synced.lock().unwrap_or_else(|e| e.into_inner()) >= seq);
    }

    #[test]
    fn numbers_read_back_are_the_numbers_written() {
        // A score the parser's fast path once read back one unit in the last place off (a
        // replayed answer then differed from the first).
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = DecisionLog::open(dir.path(), false, None, 1 << 20, None, |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        let scores = [
            0.0010598396598592707,
            0.1 + 0.2,
            1e-300,
            2.2250738585072014e-308,
        ];
        let data = serde_json::json!({"transaction_id": "t", "response": {"scores": scores}});
        log.write(
            Kind::Decision,
            "k",
            serde_json::to_vec(&data).unwrap_or_default(),
            Some("t".to_string()),
            Default::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let back = log
            .decision("t")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no record"));
        let read: Vec<u64> = back.data["response"]["scores"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_f64())
                    .map(f64::to_bits)
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(read, scores.map(f64::to_bits));
    }

    #[test]
    fn every_kind_is_named_once_and_read_back() {
        let mut names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(k));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Kind::ALL.len());
        assert_eq!(Kind::parse("nothing"), None);
    }

    #[test]
    fn a_chain_fed_in_pieces_verifies_as_a_whole_and_a_cut_or_changed_piece_does_not() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = DecisionLog::open(dir.path(), false, None, 1 << 20, None, |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        for i in 0..10 {
            let id = format!("t{i}");
            log.append(
                "k",
                &Event::Access {
                    transaction_id: &id,
                    via: None,
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        drop(log);
        let whole = verify_dir(dir.path(), |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
        let bytes = std::fs::read(dir.path().join(ACTIVE)).unwrap_or_else(|e| panic!("{e}"));
        let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
        let name = Path::new("pieces");
        let mut check = ChainCheck::new();
        let mut seen = 0;
        for piece in lines.chunks(3) {
            check
                .feed(&piece.concat(), name, |_, _| seen += 1)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let scan = check.finish(name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((scan.records, seen), (whole.records, whole.records));
        assert_eq!(scan.head, whole.head);
        // A piece cut in the middle of a record, or a record missing between pieces: refused.
        let mut check = ChainCheck::new();
        assert!(check
            .feed(&bytes[..bytes.len() - 5], name, |_, _| {})
            .is_err());
        let mut check = ChainCheck::new();
        check
            .feed(&lines[..2].concat(), name, |_, _| {})
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(check.feed(&lines[3..].concat(), name, |_, _| {}).is_err());
    }

    #[test]
    fn events_are_written_as_their_kind_with_their_fields() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = DecisionLog::open(dir.path(), false, None, 1 << 20, None, |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        let tx = serde_json::json!({"card": {"token": "tok"}});
        let events = [
            Event::Label {
                transaction_id: "t1",
                is_fraud: true,
                known_at_us: 7,
                transaction: &tx,
            },
            Event::Access {
                transaction_id: "t1",
                via: None,
            },
            Event::Login {
                outcome: "ok",
                reason: None,
            },
            Event::Logout {},
        ];
        for e in &events {
            log.append("k", e).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut seen = Vec::new();
        verify_dir(dir.path(), |_, rec| {
            seen.push((rec.kind.clone(), rec.data.clone()))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            seen,
            vec![
                (
                    "label".to_string(),
                    serde_json::json!({"transaction_id": "t1", "is_fraud": true, "known_at_us": 7, "transaction": tx})
                ),
                (
                    "access".to_string(),
                    serde_json::json!({"transaction_id": "t1"})
                ),
                ("login".to_string(), serde_json::json!({"outcome": "ok"})),
                ("logout".to_string(), serde_json::json!({})),
            ]
        );
    }

    #[test]
    fn bodies_are_written_as_serde_writes_them() {
        let data = serde_json::json!({"a": [1, 2.5, null], "b": "x\"y\u{1}é"});
        let bytes = serde_json::to_vec(&data).unwrap_or_default();
        for sealed in [None, Some("c2VhbGVk\"\\")] {
            let (seq, prev, kind, at, key) = (u64::MAX, "00ff", "dec\"ision", "2026-01-01", "k\n");
            let mut out = b"prefix".to_vec();
            write_body(
                &mut out,
                &Head {
                    seq,
                    prev,
                    kind,
                    at,
                    key,
                    replica: None,
                },
                &bytes,
                sealed,
            )
            .unwrap_or_default();
            let reference = serde_json::to_vec(&Body {
                seq,
                prev,
                kind,
                at,
                key,
                data: &data,
                sealed,
            })
            .unwrap_or_default();
            assert_eq!(
                String::from_utf8_lossy(&out[6..]),
                String::from_utf8_lossy(&reference)
            );
            assert_eq!(&out[..6], b"prefix");
        }
    }
}
