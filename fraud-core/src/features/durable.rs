//! Durability of the in-memory state: an append-only event log and snapshots in a directory.
//!
//! - `log-NNNNNNNNNN.bin`: a header (magic, version, fingerprint of the feature spec), then
//!   frames `[length u32 LE][CRC-32 u32 LE][postcard record]`; a record is a transaction's
//!   minimised observation, a label, or an erasure.
//! - `snapshot-NNNNNNNNNN.bin`: a header, the SHA-256 and length of the body, then the whole
//!   state (postcard). Snapshot `N` holds everything logged in segments before `N`.
//!
//! A record is written (and, with [`Durability::Sync`], on disk) before the call that made it
//! returns, so recovery (latest snapshot, then every later segment in order) restores the
//! state of every acknowledged event. A frame cut short by a crash at the end of the last
//! segment was never acknowledged: recovery drops it. A damaged frame anywhere else, or a
//! damaged snapshot, stops recovery with an error naming the file, rather than losing state.
//! Snapshots are written to a temporary file and renamed, so a crash while writing one leaves
//! the previous snapshot and the log it needs in place.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::shard::{Shard, StoreError};
use super::{Entity, EntityState, Extractor, LabelEvent, Observation};

const LOG_MAGIC: &[u8; 8] = b"FRAUDLOG";
const SNAP_MAGIC: &[u8; 8] = b"FRAUDSNP";
/// Version of the log's record format.
const LOG_VERSION: u32 = 1;
/// Version of the snapshot's state format (2: entity states carry folded time buckets).
const SNAP_VERSION: u32 = 2;

fn version(magic: &[u8; 8]) -> u32 {
    if magic == SNAP_MAGIC {
        SNAP_VERSION
    } else {
        LOG_VERSION
    }
}
const HEADER: usize = 8 + 4 + 32;
/// Largest record accepted when reading a log back.
const MAX_FRAME: u32 = 1 << 20;

/// When an appended record counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// On disk (fsync) before the call returns; concurrent calls share one fsync (group
    /// commit). Survives a power cut.
    #[default]
    Sync,
    /// Written to the operating system before the call returns, not forced to disk: survives
    /// the process being killed, not a power cut.
    Write,
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LogRecord<'a> {
    /// A transaction was recorded.
    Step(Observation<'a>),
    /// A label was applied to the entities of a transaction.
    Label(Observation<'a>, LabelEvent),
    /// An entity was erased.
    Erase(Entity, Cow<'a, str>),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn corrupt(path: &Path, why: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.display().to_string(),
        why: why.into(),
    }
}

/// Fingerprint of a spec: the state is only valid for the spec that built it.
fn spec_fingerprint(ex: &Extractor) -> [u8; 32] {
    let json = serde_json::to_vec(ex.spec()).unwrap_or_default();
    Sha256::digest(&json).into()
}

fn header(magic: &[u8; 8], fp: &[u8; 32]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER);
    h.extend_from_slice(magic);
    h.extend_from_slice(&version(magic).to_le_bytes());
    h.extend_from_slice(fp);
    h
}

fn check_header(
    path: &Path,
    bytes: &[u8],
    magic: &[u8; 8],
    fp: &[u8; 32],
    dir: &Path,
) -> Result<(), StoreError> {
    if bytes.len() < HEADER || &bytes[..8] != magic {
        return Err(corrupt(path, "not a state file of this program"));
    }
    // Snapshots of version 1 (before time buckets) are still read.
    let old_snapshot = magic == SNAP_MAGIC && bytes[8..12] == 1u32.to_le_bytes();
    if bytes[8..12] != version(magic).to_le_bytes() && !old_snapshot {
        return Err(corrupt(path, "written by an unknown version"));
    }
    if &bytes[12..HEADER] != fp {
        return Err(StoreError::SpecChanged {
            path: dir.display().to_string(),
        });
    }
    Ok(())
}

fn seq_of(name: &str, prefix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(".bin")?
        .parse()
        .ok()
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("log-{seq:010}.bin"))
}

fn snapshot_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("snapshot-{seq:010}.bin"))
}

/// Flushes a directory's entries (a rename or a new file in it) to disk.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    crate::files::sync_dir(dir).map_err(io(dir))
}

#[derive(Debug)]
struct Writer {
    file: File,
    seq: u64,
}

/// The open event log of a durable store.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    fingerprint: [u8; 32],
    durability: Durability,
    writer: Mutex<Writer>,
    /// A handle on the current segment for fsync, and how far it has been synced.
    syncer: Mutex<(File, u64)>,
    /// Bytes appended since the log was opened.
    written: AtomicU64,
}

/// The snapshot body: every entity of every kind.
#[derive(Serialize, Deserialize)]
struct SnapshotBody<'a> {
    entities: Vec<(Entity, Cow<'a, str>, Cow<'a, EntityState>)>,
}

/// A version-1 snapshot body (entity states without time buckets).
#[derive(Deserialize)]
struct SnapshotBodyV1<'a> {
    #[serde(borrow)]
    entities: Vec<(Entity, Cow<'a, str>, super::state::EntityStateV1)>,
}

/// Gives every entity of a snapshot body (of the version its header names) to `restore`.
fn restore_body(
    header: &[u8],
    body: &[u8],
    path: &Path,
    restore: &mut dyn FnMut(Entity, String, EntityState),
) -> Result<(), StoreError> {
    if header[8..12] == 1u32.to_le_bytes() {
        let snap: SnapshotBodyV1<'_> =
            postcard::from_bytes(body).map_err(|e| corrupt(path, e.to_string()))?;
        for (e, k, s) in snap.entities {
            restore(e, k.into_owned(), s.into());
        }
        return Ok(());
    }
    let snap: SnapshotBody<'_> =
        postcard::from_bytes(body).map_err(|e| corrupt(path, e.to_string()))?;
    for (e, k, s) in snap.entities {
        restore(e, k.into_owned(), s.into_owned());
    }
    Ok(())
}

impl Log {
    /// Opens the log in `dir`, giving the content of the latest snapshot to `restore` and
    /// every later record, in order, to `replay`; then starts a new segment.
    pub(crate) fn open(
        dir: &Path,
        ex: &Extractor,
        durability: Durability,
        restore: &mut dyn FnMut(Entity, String, EntityState),
        replay: &mut dyn FnMut(LogRecord<'_>),
    ) -> Result<Log, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let fp = spec_fingerprint(ex);
        let (mut segments, mut snapshots) = (Vec::new(), Vec::new());
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(s) = seq_of(&name, "log-") {
                segments.push(s);
            } else if let Some(s) = seq_of(&name, "snapshot-") {
                snapshots.push(s);
            } else if name.ends_with(".tmp") {
                // A snapshot a crash interrupted.
                let p = dir.join(&name);
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
        segments.sort_unstable();
        snapshots.sort_unstable();
        let base = snapshots.last().copied().unwrap_or(0);
        if let Some(&s) = snapshots.last() {
            let p = snapshot_path(dir, s);
            let bytes = std::fs::read(&p).map_err(io(&p))?;
            check_header(&p, &bytes, SNAP_MAGIC, &fp, dir)?;
            let rest = &bytes[HEADER..];
            if rest.len() < 40 {
                return Err(corrupt(&p, "cut short"));
            }
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap_or([0; 8])) as usize;
            let body = &rest[40..];
            if body.len() != len || Sha256::digest(body)[..] != rest[8..40] {
                return Err(corrupt(&p, "checksum mismatch"));
            }
            restore_body(&bytes, body, &p, restore)?;
        }
        let live: Vec<u64> = segments.iter().copied().filter(|&s| s >= base).collect();
        for (i, &seq) in live.iter().enumerate() {
            let last = i + 1 == live.len();
            read_segment(dir, seq, &fp, last, replay)?;
        }
        for &s in segments.iter().filter(|&&s| s < base) {
            let p = segment_path(dir, s);
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
        let seq = segments.last().copied().unwrap_or(0).max(base) + 1;
        let file = new_segment(dir, seq, &fp)?;
        let sync = file.try_clone().map_err(io(dir))?;
        Ok(Log {
            dir: dir.to_path_buf(),
            fingerprint: fp,
            durability,
            writer: Mutex::new(Writer { file, seq }),
            syncer: Mutex::new((sync, 0)),
            written: AtomicU64::new(0),
        })
    }

    /// Appends a record; returns the log position to [`sync`](Self::sync) to.
    pub(crate) fn append(&self, rec: &LogRecord<'_>) -> Result<u64, StoreError> {
        let body = postcard::to_allocvec(rec).map_err(|e| corrupt(&self.dir, e.to_string()))?;
        let mut frame = Vec::with_capacity(8 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        let mut w = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let path = segment_path(&self.dir, w.seq);
        w.file.write_all(&frame).map_err(io(&path))?;
        Ok(self.written.fetch_add(frame.len() as u64, Ordering::SeqCst) + frame.len() as u64)
    }

    /// Makes everything appended up to `upto` durable per the policy. One fsync covers every
    /// record appended before it, so concurrent callers mostly find their work done.
    pub(crate) fn sync(&self, upto: u64) -> Result<(), StoreError> {
        if self.durability == Durability::Write {
            return Ok(());
        }
        let mut s = self
            .syncer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.1 >= upto {
            return Ok(());
        }
        let target = self.written.load(Ordering::SeqCst);
        s.0.sync_data().map_err(io(&self.dir))?;
        s.1 = target;
        Ok(())
    }

    /// Starts a new segment (after making the current one durable); returns its number,
    /// which is the number of a snapshot taken at this point.
    pub(crate) fn rotate(&self) -> Result<u64, StoreError> {
        let mut w = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut s = self
            .syncer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.file.sync_data().map_err(io(&self.dir))?;
        let seq = w.seq + 1;
        let file = new_segment(&self.dir, seq, &self.fingerprint)?;
        s.0 = file.try_clone().map_err(io(&self.dir))?;
        s.1 = self.written.load(Ordering::SeqCst);
        w.file = file;
        w.seq = seq;
        Ok(seq)
    }

    /// Writes snapshot `seq` (the state as of the start of segment `seq`), then deletes the
    /// older snapshots and segments it replaces.
    pub(crate) fn write_snapshot(&self, seq: u64, shards: &[Shard]) -> Result<(), StoreError> {
        let body = postcard::to_allocvec(&snapshot_body(shards))
            .map_err(|e| corrupt(&self.dir, e.to_string()))?;
        let path = snapshot_path(&self.dir, seq);
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        let mut head = header(SNAP_MAGIC, &self.fingerprint);
        head.extend_from_slice(&(body.len() as u64).to_le_bytes());
        head.extend_from_slice(&Sha256::digest(&body));
        f.write_all(&head).map_err(io(&tmp))?;
        f.write_all(&body).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)?;
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let old = seq_of(&name, "log-")
                .or_else(|| seq_of(&name, "snapshot-"))
                .is_some_and(|s| s < seq);
            if old {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
        Ok(())
    }
}

fn new_segment(dir: &Path, seq: u64, fp: &[u8; 32]) -> Result<File, StoreError> {
    let path = segment_path(dir, seq);
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io(&path))?;
    f.write_all(&header(LOG_MAGIC, fp)).map_err(io(&path))?;
    f.sync_all().map_err(io(&path))?;
    sync_dir(dir)?;
    Ok(f)
}

fn read_segment(
    dir: &Path,
    seq: u64,
    fp: &[u8; 32],
    last: bool,
    replay: &mut dyn FnMut(LogRecord<'_>),
) -> Result<(), StoreError> {
    let path = segment_path(dir, seq);
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(&path))?;
    if bytes.len() < HEADER && last {
        // Created, then the crash came before its header was complete: nothing in it.
        std::fs::remove_file(&path).map_err(io(&path))?;
        return Ok(());
    }
    check_header(&path, &bytes, LOG_MAGIC, fp, dir)?;
    let mut at = HEADER;
    while at < bytes.len() {
        let frame = bytes.get(at..at + 8).and_then(|h| {
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            let body = bytes.get(at + 8..at + 8 + len as usize)?;
            (len <= MAX_FRAME && crc32fast::hash(body) == crc).then_some(body)
        });
        let rec = frame.and_then(|b| postcard::from_bytes::<LogRecord<'_>>(b).ok());
        match (rec, frame) {
            (Some(rec), Some(b)) => {
                replay(rec);
                at += 8 + b.len();
            }
            _ if last => {
                // The tail a crash cut short: never acknowledged. Cut it off so appends and
                // the next recovery start from a clean end.
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                f.set_len(at as u64).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
                return Ok(());
            }
            _ => {
                return Err(corrupt(
                    &path,
                    format!("damaged record at byte {at} (not at the end of the log)"),
                ))
            }
        }
    }
    Ok(())
}

/// Every entity of the shards, borrowed, as snapshots store them.
fn snapshot_body(shards: &[Shard]) -> SnapshotBody<'_> {
    let mut entities = Vec::new();
    for sh in shards {
        for e in Entity::ALL {
            for (k, s) in sh.maps[e.index()].iter() {
                entities.push((e, Cow::Borrowed(k), Cow::Borrowed(s)));
            }
        }
    }
    SnapshotBody { entities }
}

/// The bytes of a standalone state: every entity of `shards` and a caller's `tag` (e.g. the
/// position in another log the state corresponds to), with the spec's fingerprint and a
/// checksum.
pub(crate) fn state_bytes(
    ex: &Extractor,
    tag: u64,
    shards: &[Shard],
) -> Result<Vec<u8>, StoreError> {
    let body = postcard::to_allocvec(&snapshot_body(shards))
        .map_err(|e| corrupt(Path::new("state"), e.to_string()))?;
    let mut out = header(SNAP_MAGIC, &spec_fingerprint(ex));
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&body));
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Writes `bytes` to `path` atomically (see [`crate::files::write_atomic`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    crate::files::write_atomic(path, bytes).map_err(io(path))
}

/// Reads state bytes made by [`state_bytes`]: its tag, and every entity given to `restore`.
/// `path` names the source in errors. Refuses another spec's state, or damaged bytes.
pub(crate) fn read_state_bytes(
    bytes: &[u8],
    path: &Path,
    ex: &Extractor,
    restore: &mut dyn FnMut(Entity, String, EntityState),
) -> Result<u64, StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    check_header(path, bytes, SNAP_MAGIC, &spec_fingerprint(ex), dir)?;
    let rest = &bytes[HEADER..];
    if rest.len() < 48 {
        return Err(corrupt(path, "cut short"));
    }
    let len = u64::from_le_bytes(rest[..8].try_into().unwrap_or([0; 8])) as usize;
    let tag = u64::from_le_bytes(rest[40..48].try_into().unwrap_or([0; 8]));
    let body = &rest[48..];
    if body.len() != len || Sha256::digest(body)[..] != rest[8..40] {
        return Err(corrupt(path, "checksum mismatch"));
    }
    restore_body(bytes, body, path, restore)?;
    Ok(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::state::{Event, FraudMark};

    /// The layout of a version-1 entity state, as that version wrote it.
    #[derive(Serialize)]
    struct V1 {
        events: std::collections::VecDeque<Event>,
        located: [Option<(i64, f64, f64)>; 2],
        seen: Vec<((u8, u64), (i64, i64))>,
        frauds: Vec<FraudMark>,
        touched: i64,
    }

    #[test]
    fn a_version_1_snapshot_is_still_read() {
        let ex = Extractor::new(crate::features::FeatureSpec::default_spec())
            .unwrap_or_else(|e| panic!("{e}"));
        let v1 = V1 {
            events: [(10, 2.5), (20, 7.0)]
                .map(|(ts, amount)| Event {
                    ts,
                    amount,
                    values: [0; crate::features::MAX_DISTINCT_FIELDS],
                })
                .into(),
            located: [Some((20, 50.8, 4.3)), None],
            seen: vec![((4, 99), (20, 10))],
            frauds: vec![FraudMark {
                ts: 10,
                id: 7,
                known_at: 15,
            }],
            touched: 20,
        };
        // A map serializes as its length and pairs, as a sequence of pairs does.
        let body = postcard::to_allocvec(&(vec![(Entity::Card, "tok", &v1)],))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = header(SNAP_MAGIC, &spec_fingerprint(&ex));
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&Sha256::digest(&body));
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.extend_from_slice(&body);
        let mut got = Vec::new();
        let tag = read_state_bytes(&bytes, Path::new("state.bin"), &ex, &mut |e, k, s| {
            got.push((e, k, s));
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tag, 5);
        assert_eq!(got.len(), 1);
        let (e, k, s) = &got[0];
        assert_eq!((*e, k.as_str()), (Entity::Card, "tok"));
        assert_eq!(s.events.len(), 2);
        assert_eq!(s.located, v1.located);
        assert_eq!(s.seen.get(&(4, 99)), Some(&(20, 10)));
        assert_eq!(s.frauds, v1.frauds);
        assert_eq!(s.touched, 20);
        // An unknown version is refused, naming it.
        bytes[8..12].copy_from_slice(&9u32.to_le_bytes());
        let err = read_state_bytes(&bytes, Path::new("state.bin"), &ex, &mut |_, _, _| {})
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown version"), "{err}");
    }
}
