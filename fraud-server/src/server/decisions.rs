//! The decision log: append-only, hash-chained, durable before the answer.
//!
//! One line per record, `<sha256 hex> <json>\n`, where the JSON holds `seq`, `prev` (the hash
//! of the previous record), `kind` (`decision`, `label`, `model`, ...), `at`, `key` (the API
//! key's name that asked) and `data`; the hash covers the previous hash and the JSON bytes as
//! written. With `sync` durability a record is fsynced (grouped with the records written
//! meanwhile) before `append` returns, so every answered request survives a crash.
//!
//! On start the whole chain is verified. A torn last line (a crash mid-write) is cut off;
//! damage anywhere else stops the start with the line number.

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
    /// The record's content (null while sealed).
    pub data: serde_json::Value,
    /// The content encrypted (AES-256-GCM, base64) when the log is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

impl Record {
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

struct Inner {
    file: File,
    len: u64,
    seq: u64,
    last_hash: String,
    index: HashMap<String, u64>,
}

/// The open log.
pub struct DecisionLog {
    path: PathBuf,
    sealer: Option<super::seal::Sealer>,
    inner: Mutex<Inner>,
    sync_file: File,
    read_file: File,
    synced: Mutex<u64>,
    written: AtomicU64,
    sync: bool,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn hash(prev: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits a line into (hash, body).
fn split(line: &[u8]) -> Option<(&str, &[u8])> {
    if line.len() < 66 || line[64] != b' ' {
        return None;
    }
    Some((std::str::from_utf8(&line[..64]).ok()?, &line[65..]))
}

/// The transaction id a decision record is indexed by.
fn decision_id(kind: &str, data: &serde_json::Value) -> Option<String> {
    (kind == "decision")
        .then(|| data.get("transaction_id")?.as_str().map(str::to_string))
        .flatten()
}

/// What a scan of a log found.
#[derive(Debug, Clone)]
pub struct Scan {
    /// Whole records in chain.
    pub records: u64,
    /// Hash of the last whole record (the head to publish).
    pub head: String,
    /// Bytes of whole records.
    pub good_bytes: u64,
    /// Bytes after them: a record cut short (a crash mid-write, or truncation).
    pub torn_bytes: u64,
}

/// Checks the chain of a log's bytes, calling `visit(offset, record)` for each whole record.
/// The first record that was altered, removed, reordered or is not a record stops the scan
/// with an error naming it; a cut-short last record is reported in `torn_bytes`.
pub fn scan(
    bytes: &[u8],
    path: &Path,
    mut visit: impl FnMut(u64, &Record),
) -> Result<Scan, LogError> {
    let (mut seq, mut last_hash, mut good) = (0u64, GENESIS.to_string(), 0usize);
    let mut pos = 0usize;
    while pos < bytes.len() {
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &bytes[pos..pos + nl];
        let expected = seq + 1;
        let damaged = |reason: String| LogError::Damaged {
            path: path.to_path_buf(),
            line: expected,
            reason,
        };
        let (h, body) =
            split(line).ok_or_else(|| damaged(format!("record {expected} is not a log record")))?;
        let rec: Record = serde_json::from_slice(body)
            .map_err(|_| damaged(format!("record {expected} was altered (not valid JSON)")))?;
        if rec.seq > expected {
            return Err(damaged(format!(
                "records {expected} to {} were removed",
                rec.seq - 1
            )));
        }
        if rec.seq < expected {
            return Err(damaged(format!(
                "record {} appears again after record {seq}: reordered or duplicated",
                rec.seq
            )));
        }
        if rec.prev != last_hash {
            return Err(damaged(format!(
                "record {expected} does not follow record {seq} (its previous hash differs): altered or reordered"
            )));
        }
        if hash(&last_hash, body) != h {
            return Err(damaged(format!(
                "record {expected} was altered (its hash does not match its content)"
            )));
        }
        visit(pos as u64, &rec);
        seq = rec.seq;
        last_hash = h.to_string();
        pos += nl + 1;
        good = pos;
    }
    Ok(Scan {
        records: seq,
        head: last_hash,
        good_bytes: good as u64,
        torn_bytes: (bytes.len() - good) as u64,
    })
}

/// The log file of a directory: `DIR/decisions.log`, or `DIR/log/decisions.log` for a data
/// directory.
pub fn log_file(dir: &Path) -> PathBuf {
    let direct = dir.join("decisions.log");
    if direct.exists() || !dir.join("log").is_dir() {
        direct
    } else {
        dir.join("log").join("decisions.log")
    }
}

/// Reads and verifies a whole log without changing it.
pub fn verify_file(path: &Path, mut visit: impl FnMut(u64, &Record)) -> Result<Scan, LogError> {
    let bytes = std::fs::read(path).map_err(|source| LogError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    scan(&bytes, path, &mut visit)
}

impl DecisionLog {
    /// Opens (creating) `<dir>/decisions.log`, verifying the chain and handing every record
    /// (decrypted) to `visit` in order: the one read of the log at start-up also rebuilds
    /// what derives from it.
    pub fn open(
        dir: &Path,
        sync: bool,
        sealer: Option<super::seal::Sealer>,
        mut visit: impl FnMut(&Record),
    ) -> Result<Self, LogError> {
        let path = dir.join("decisions.log");
        let io = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut index = HashMap::new();
        let mut sealed_error = None;
        let scan = scan(&bytes, &path, |offset, rec| {
            let mut rec = rec.clone();
            if let Err(e) = rec.unseal(sealer.as_ref()) {
                sealed_error.get_or_insert(e);
                return;
            }
            if let Some(id) = decision_id(&rec.kind, &rec.data) {
                index.insert(id, offset);
            }
            visit(&rec);
        })?;
        if let Some(reason) = sealed_error {
            return Err(LogError::Damaged {
                path: path.clone(),
                line: 0,
                reason,
            });
        }
        let (seq, last_hash, good) = (scan.records, scan.head.clone(), scan.good_bytes as usize);
        if good < bytes.len() {
            file.set_len(good as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let sync_file = file.try_clone().map_err(io)?;
        let read_file = File::open(&path).map_err(io)?;
        Ok(DecisionLog {
            inner: Mutex::new(Inner {
                file,
                len: good as u64,
                seq,
                last_hash,
                index,
            }),
            sync_file,
            read_file,
            synced: Mutex::new(seq),
            written: AtomicU64::new(seq),
            sync,
            path,
            sealer,
        })
    }

    fn io(&self, source: std::io::Error) -> LogError {
        LogError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends a record and, with sync durability, makes it durable. Returns its seq.
    pub fn append(&self, kind: &str, key: &str, data: &serde_json::Value) -> Result<u64, LogError> {
        let at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let seq = {
            let mut g = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let seq = g.seq + 1;
            let sealed = match &self.sealer {
                Some(sl) => Some(
                    sl.seal_text(data.to_string().as_bytes(), &seq.to_le_bytes())
                        .map_err(|e| self.io(std::io::Error::other(e)))?,
                ),
                None => None,
            };
            let body = serde_json::to_vec(&Body {
                seq,
                prev: &g.last_hash,
                kind,
                at: &at,
                key,
                data: if sealed.is_some() {
                    &serde_json::Value::Null
                } else {
                    data
                },
                sealed: sealed.as_deref(),
            })
            .map_err(|e| self.io(std::io::Error::other(e)))?;
            let h = hash(&g.last_hash, &body);
            let mut line = Vec::with_capacity(body.len() + 66);
            line.extend_from_slice(h.as_bytes());
            line.push(b' ');
            line.extend_from_slice(&body);
            line.push(b'\n');
            if let Err(e) = g.file.write_all(&line) {
                // Cut a partial write so that the chain stays whole.
                let len = g.len;
                let _ = g.file.set_len(len);
                return Err(self.io(e));
            }
            if let Some(id) = decision_id(kind, data) {
                let offset = g.len;
                g.index.insert(id, offset);
            }
            g.len += line.len() as u64;
            g.seq = seq;
            g.last_hash = h;
            self.written.store(seq, Ordering::Release);
            seq
        };
        if self.sync {
            self.sync_to(seq)?;
        }
        Ok(seq)
    }

    /// Group commit: one fsync covers every record written before it started.
    fn sync_to(&self, seq: u64) -> Result<(), LogError> {
        let mut synced = self
            .synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *synced >= seq {
            return Ok(());
        }
        let upto = self.written.load(Ordering::Acquire);
        self.sync_file.sync_data().map_err(|e| self.io(e))?;
        *synced = upto;
        Ok(())
    }

    /// The recorded decision of a transaction.
    pub fn decision(&self, transaction_id: &str) -> Result<Option<Record>, LogError> {
        let offset = {
            let g = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match g.index.get(transaction_id) {
                Some(&o) => o,
                None => return Ok(None),
            }
        };
        let line = self.read_line(offset)?;
        let (_, body) = split(&line).ok_or_else(|| LogError::Damaged {
            path: self.path.clone(),
            line: 0,
            reason: format!("record at byte {offset} is not a log record"),
        })?;
        let mut rec: Record = serde_json::from_slice(body).map_err(|_| LogError::Damaged {
            path: self.path.clone(),
            line: 0,
            reason: format!("record at byte {offset} is not valid JSON"),
        })?;
        rec.unseal(self.sealer.as_ref())
            .map_err(|reason| LogError::Damaged {
                path: self.path.clone(),
                line: rec.seq,
                reason,
            })?;
        Ok(Some(rec))
    }

    fn read_line(&self, offset: u64) -> Result<Vec<u8>, LogError> {
        use std::os::unix::fs::FileExt;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        let mut at = offset;
        loop {
            let n = self
                .read_file
                .read_at(&mut buf, at)
                .map_err(|e| self.io(e))?;
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
        self.written.load(Ordering::Acquire)
    }
}
