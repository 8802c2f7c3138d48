//! Erasure by crypto-shredding: every entity (card, customer, merchant, terminal, device, IP,
//! e-mail) named in a decision-log record gets its own random key, and the fields naming it
//! are encrypted with that key (AES-256-GCM) before the record is written. Erasing the entity
//! destroys its key: the records written before stay in the hash chain, byte for byte, but
//! nothing in them can name the entity again.
//!
//! Keys live in `<data dir>/vault/keys`: key lines `<key ref> <entity hash or -> <key>`
//! (the key base64, sealed with the encryption key when one is configured) and assignment
//! lines `= <key ref> <entity hash>`, the entity hash being SHA-256 of its kind and id (to
//! find the key of an id). Keys are made in batches, written and fsynced before any is used;
//! an entity seen for the first time takes one from the batch and its assignment is appended
//! without an fsync of its own: a lost assignment is found again at start from the log's
//! records (they name their key), so a durable record never lacks its key and a decision
//! costs no extra fsync. Destroying a key rewrites the file without it (atomically) and
//! fsyncs it. Keys that no record kept any longer uses are dropped by retention the same way.
//!
//! With the PostgreSQL store the keys live in the store instead (`fraud_vault_keys`, one per
//! entity for every replica, [`RemoteKeys`]): this process keeps a cache of them, an
//! erasure on any replica marks the key erased for all (its row kept without key or entity,
//! so that no late use brings it back), and the others evict their copy as they follow its
//! record. Each key's use is noted in the store with the batch of the record using it, at
//! most every few minutes ([`Vault::refresh_due`]); retention removes the keys not used
//! since its cut-off.
//!
//! In a record, a protected field holds `shred1:<key ref>:<base64 of nonce + ciphertext>`;
//! when the key is gone it reads back as `null`, and the record lists the field under
//! `erased_fields`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::Value;

use super::seal::Sealer;
use super::sharded::Sharded;

const PREFIX: &str = "shred1:";

/// Now, in unix milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Which fields of a record name which entity, and where that entity's id is read.
/// (kind, id pointer, protected pointers)
const FIELDS: &[(&str, &str, &[&str])] = &[
    (
        "card",
        "/transaction/card/token",
        &[
            "/transaction/card/token",
            "/transaction/card/mask",
            "/response/card_mask",
        ],
    ),
    // A card migrated to its token under a new tokenization key: both tokens are the card's.
    ("card", "/to", &["/from", "/to"]),
    (
        "customer",
        "/transaction/customer_id",
        &["/transaction/customer_id"],
    ),
    (
        "merchant",
        "/transaction/merchant_id",
        &["/transaction/merchant_id"],
    ),
    (
        "terminal",
        "/transaction/terminal_id",
        &["/transaction/terminal_id"],
    ),
    (
        "device",
        "/transaction/device_id",
        &["/transaction/device_id"],
    ),
    ("ip", "/transaction/ip", &["/transaction/ip"]),
    ("email", "/transaction/email", &["/transaction/email"]),
];

/// Why the vault cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Reading or writing the key file failed.
    #[error("entity key vault {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file is damaged or sealed with another key.
    #[error("entity key vault {path}: line {line}: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Encryption failed.
    #[error("entity key vault: {0}")]
    Crypto(String),
}

struct EntityKey {
    key_ref: String,
    raw: [u8; 32],
    cipher: Sealer,
    /// The last log record that uses it (0: none seen yet).
    last_seq: AtomicU64,
    /// With a shared store: when this process last asked the store to note the key's use
    /// (unix milliseconds; 0: never).
    refreshed_ms: AtomicU64,
}

struct Inner {
    file: File,
    by_entity: Sharded<Arc<EntityKey>>,
    by_ref: Sharded<Arc<EntityKey>>,
    /// Key ref -> the entity it is assigned to.
    entity_of: Sharded<String>,
    /// Keys made and durable, not yet assigned.
    free: Vec<Arc<EntityKey>>,
    /// A thread is making the next batch of keys.
    refilling: bool,
}

/// Keys made (and fsynced) at a time.
const BATCH: usize = 256;

/// Below this many free keys, the next batch is made.
const LOW: usize = 64;

impl Inner {
    /// No keys yet (the file is set once open).
    fn empty() -> std::io::Result<Inner> {
        Ok(Inner {
            file: File::open("/dev/null")?,
            by_entity: Sharded::default(),
            by_ref: Sharded::default(),
            entity_of: Sharded::default(),
            free: Vec::new(),
            refilling: false,
        })
    }

    fn assign(&mut self, key_ref: &str, entity: &str) -> Option<Arc<EntityKey>> {
        let k = self.by_ref.get(key_ref)?.clone();
        self.free.retain(|f| f.key_ref != key_ref);
        if let Some(old) = self
            .entity_of
            .insert(key_ref.to_string(), entity.to_string())
        {
            if self
                .by_entity
                .get(&old)
                .is_some_and(|x| x.key_ref == key_ref)
            {
                self.by_entity.remove(&old);
            }
        }
        self.by_entity.insert(entity.to_string(), k.clone());
        Some(k)
    }
}

/// One entity's fields in a record built from typed values, for [`Vault::protect_entities`].
pub struct EntityFields<'a> {
    /// `card`, `customer`, ... as in [`FIELDS`].
    pub kind: &'static str,
    /// Its id (the clear value its key is found by).
    pub id: String,
    /// Its fields: (path in the record, value sealed in place; `None` is left alone).
    pub fields: Vec<(&'static str, &'a mut Option<String>)>,
}

/// A key from its stored text: base64, or `s:` and the key sealed with `sealer`.
fn key_from_text(
    key_ref: &str,
    key: &str,
    sealer: Option<&Sealer>,
) -> Result<Arc<EntityKey>, String> {
    let raw = match (key.strip_prefix("s:"), sealer) {
        (Some(sealed), Some(s)) => s.open_text(sealed, key_ref.as_bytes())?,
        (Some(_), None) => return Err("the keys are sealed: the encryption key is needed".into()),
        (None, _) => b64()
            .decode(key)
            .map_err(|_| "the key is not base64".to_string())?,
    };
    let raw: [u8; 32] = raw
        .try_into()
        .map_err(|_| "the key is not 32 bytes".to_string())?;
    Ok(Arc::new(EntityKey {
        key_ref: key_ref.to_string(),
        cipher: Sealer::new(&raw)?,
        raw,
        last_seq: AtomicU64::new(0),
        refreshed_ms: AtomicU64::new(0),
    }))
}

/// `plain`, the value at `path` of a record, sealed under `key`: `shred1:<ref>:<base64>`.
fn sealed(key: &EntityKey, path: &str, plain: &str) -> Result<String, VaultError> {
    let bytes = key
        .cipher
        .seal(plain.as_bytes(), path.as_bytes())
        .map_err(VaultError::Crypto)?;
    // Written in place (not `format!`: this runs for every entity of every decision).
    let mut out =
        String::with_capacity(PREFIX.len() + key.key_ref.len() + 1 + bytes.len() * 4 / 3 + 4);
    out.push_str(PREFIX);
    out.push_str(&key.key_ref);
    out.push(':');
    b64().encode_string(bytes, &mut out);
    Ok(out)
}

/// The keys [`Vault::protect`] used for one record.
#[derive(Default)]
pub struct Used(Vec<Arc<EntityKey>>);

/// The per-entity keys.
pub struct Vault {
    shared: Arc<Shared>,
}

/// Entity keys kept in a store every replica shares (PostgreSQL): each replica makes its own
/// key for an entity it meets, kept in the store beside the others' (found by ref by any
/// replica), and an erasure destroys every key of the entity for all. Keys travel as key
/// text: the key in base64, or `s:` and the key sealed with the encryption key.
pub trait RemoteKeys: Send + Sync {
    /// Keeps a key this process made for entity hash `entity`: stored durably before, or
    /// with, any record that uses it.
    fn keep(&self, entity: &str, key_ref: &str, key: &str) -> Result<(), String>;
    /// The refs of every key the store holds for an entity hash (all replicas').
    fn refs_of_entity(&self, entity: &str) -> Result<Vec<String>, String>;
    /// A key by its ref (`None` once destroyed): `(entity hash, key text)`.
    fn key_by_ref(&self, key_ref: &str) -> Result<Option<(String, String)>, String>;
    /// Destroys keys for every replica; how many there were.
    fn destroy(&self, refs: &[String]) -> Result<usize, String>;
}

/// What a [`Vault`] shares with the thread that makes its next batch of keys.
pub struct Shared {
    path: PathBuf,
    sealer: Option<Sealer>,
    /// Keys kept in a shared store (the local maps are then a cache of it).
    remote: Option<Arc<dyn RemoteKeys>>,
    inner: Mutex<Inner>,
    /// Notified when a batch is made (or failed): requests that found no free key wait on it.
    refilled: std::sync::Condvar,
}

impl std::ops::Deref for Vault {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// How an entity is named where its id must not be: SHA-256 of its kind and id.
pub fn entity_hash(kind: &str, id: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"erase:");
    h.update(kind.as_bytes());
    h.update(b":");
    h.update(id.as_bytes());
    fraud_core::hex::encode(&h.finalize())
}

/// A protected field's key ref and sealed value (`shred1:<ref>:<base64>`).
fn envelope(v: &Value) -> Option<(&str, &str)> {
    v.as_str()?.strip_prefix(PREFIX)?.split_once(':')
}

/// The value at `path` (`/a/b/c`: object members, no escapes) in `v`. What
/// `Value::pointer` does for the vault's fixed paths, without its per-step unescaping and
/// allocation (it runs for every field of every record).
fn at<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('/')
        .skip(1)
        .try_fold(v, |v, k| v.as_object()?.get(k))
}

/// [`at`], for changing the value.
fn at_mut<'v>(v: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    path.split('/')
        .skip(1)
        .try_fold(v, |v, k| v.as_object_mut()?.get_mut(k))
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn line(&self, k: &EntityKey, entity: Option<&str>) -> Result<String, VaultError> {
        let key = self.key_text(k)?;
        Ok(format!("{} {} {key}\n", k.key_ref, entity.unwrap_or("-")))
    }

    /// A key as stored: base64, or sealed with the encryption key (`s:...`).
    fn key_text(&self, k: &EntityKey) -> Result<String, VaultError> {
        Ok(match &self.sealer {
            Some(s) => format!(
                "s:{}",
                s.seal_text(&k.raw, k.key_ref.as_bytes())
                    .map_err(VaultError::Crypto)?
            ),
            None => b64().encode(k.raw),
        })
    }

    /// A key from its stored text.
    fn key_from_text(&self, key_ref: &str, key: &str) -> Result<Arc<EntityKey>, String> {
        key_from_text(key_ref, key, self.sealer.as_ref())
    }

    /// A new random key (not stored anywhere yet).
    fn random_key() -> Result<Arc<EntityKey>, VaultError> {
        let mut chunk = [0u8; 44];
        getrandom::fill(&mut chunk)
            .map_err(|_| VaultError::Crypto("no randomness from the OS".into()))?;
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&chunk[..32]);
        Ok(Arc::new(EntityKey {
            key_ref: fraud_core::hex::encode(&chunk[32..]),
            cipher: Sealer::new(&raw).map_err(VaultError::Crypto)?,
            raw,
            last_seq: AtomicU64::new(0),
            refreshed_ms: AtomicU64::new(0),
        }))
    }

    /// Makes a batch of keys: made without the lock, written under it, fsynced without it,
    /// and only then handed out. Clears `refilling` and wakes the waiters however it ends.
    fn refill(&self) -> Result<(), VaultError> {
        let made = self.make_batch();
        let mut g = self.lock();
        g.refilling = false;
        self.refilled.notify_all();
        for k in made? {
            g.by_ref.insert(k.key_ref.clone(), k.clone());
            g.free.push(k);
        }
        Ok(())
    }

    /// A batch of keys, written to the keys file and fsynced.
    fn make_batch(&self) -> Result<Vec<Arc<EntityKey>>, VaultError> {
        let mut text = String::new();
        let mut made = Vec::with_capacity(BATCH);
        let mut random = vec![0u8; BATCH * 44];
        getrandom::fill(&mut random)
            .map_err(|_| VaultError::Crypto("no randomness from the OS".into()))?;
        for chunk in random.chunks_exact(44) {
            let mut raw = [0u8; 32];
            raw.copy_from_slice(&chunk[..32]);
            let key_ref = fraud_core::hex::encode(&chunk[32..]);
            let k = Arc::new(EntityKey {
                key_ref,
                cipher: Sealer::new(&raw).map_err(VaultError::Crypto)?,
                raw,
                last_seq: AtomicU64::new(0),
                refreshed_ms: AtomicU64::new(0),
            });
            text.push_str(&self.line(&k, None)?);
            made.push(k);
        }
        let io = |source| VaultError::Io {
            path: self.path.clone(),
            source,
        };
        let file = {
            let mut g = self.lock();
            g.file.write_all(text.as_bytes()).map_err(io)?;
            g.file.try_clone().map_err(io)?
        };
        file.sync_data().map_err(io)?;
        Ok(made)
    }
}

impl Vault {
    /// Opens (creating) `<data dir>/vault/keys`; `sealer` wraps the keys at rest.
    pub fn open(data_dir: &Path, sealer: Option<Sealer>) -> Result<Self, VaultError> {
        let dir = data_dir.join("vault");
        let path = dir.join("keys");
        let io = |source| VaultError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let mut inner = Inner::empty().map_err(io)?;
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        for (i, line) in text[..whole].lines().enumerate() {
            let damaged = |reason: String| VaultError::Damaged {
                path: path.clone(),
                line: i + 1,
                reason,
            };
            let mut parts = line.split(' ');
            let (Some(a), Some(b), Some(c), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(damaged(
                    "not `<ref> <entity> <key>` or `= <ref> <entity>`".into(),
                ));
            };
            if a == "=" {
                if inner.assign(b, c).is_none() {
                    return Err(damaged(format!("assignment of an unknown key {b}")));
                }
                continue;
            }
            let (key_ref, entity, key) = (a, b, c);
            let k = key_from_text(key_ref, key, sealer.as_ref()).map_err(damaged)?;
            inner.by_ref.insert(k.key_ref.clone(), k.clone());
            if entity == "-" {
                inner.free.push(k);
            } else {
                inner.assign(key_ref, entity);
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        if whole < text.len() {
            // A key line cut short by a crash: no record that was made durable uses it.
            file.set_len(whole as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.flush().map_err(io)?;
        inner.file = file;
        Ok(Vault {
            shared: Arc::new(Shared {
                path,
                sealer,
                remote: None,
                inner: Mutex::new(inner),
                refilled: std::sync::Condvar::new(),
            }),
        })
    }

    /// A vault whose keys live in `remote`, shared by every replica (`name` says where, in
    /// errors); `sealer` wraps the keys there.
    pub fn open_remote(
        remote: Arc<dyn RemoteKeys>,
        name: &str,
        sealer: Option<Sealer>,
    ) -> Result<Self, VaultError> {
        let io = |source| VaultError::Io {
            path: PathBuf::from(name),
            source,
        };
        Ok(Vault {
            shared: Arc::new(Shared {
                path: PathBuf::from(name),
                sealer,
                remote: Some(remote),
                inner: Mutex::new(Inner::empty().map_err(io)?),
                refilled: std::sync::Condvar::new(),
            }),
        })
    }

    /// A new key of this process for `entity`, kept in the shared store (with the next
    /// commit) and in the cache.
    fn remote_key_for(
        &self,
        remote: &dyn RemoteKeys,
        entity: &str,
    ) -> Result<Arc<EntityKey>, VaultError> {
        let k = Shared::random_key()?;
        let text = self.key_text(&k)?;
        k.refreshed_ms.store(now_ms(), Ordering::Relaxed);
        remote
            .keep(entity, &k.key_ref, &text)
            .map_err(|e| VaultError::Crypto(format!("{}: {e}", self.path.display())))?;
        let mut g = self.lock();
        // Another request made one meanwhile: that one is used (this one stays unused).
        if let Some(other) = g.by_entity.get(entity) {
            return Ok(other.clone());
        }
        g.by_ref.insert(k.key_ref.clone(), k.clone());
        g.assign(&k.key_ref, entity);
        Ok(k)
    }

    /// A key of the shared store by ref, kept in the cache (`None`: destroyed, or the store
    /// does not answer: the field reads as erased until it does).
    fn remote_key_by_ref(&self, key_ref: &str) -> Option<Arc<EntityKey>> {
        let remote = self.remote.as_ref()?;
        let (entity, key) = remote.key_by_ref(key_ref).ok()??;
        let k = self.key_from_text(key_ref, &key).ok()?;
        let mut g = self.lock();
        g.by_ref.insert(k.key_ref.clone(), k.clone());
        g.assign(&k.key_ref, &entity);
        Some(k)
    }

    /// The key refs a record's protected fields name (as written, before [`Vault::reveal`]).
    pub fn refs_in(data: &Value) -> Vec<String> {
        let mut refs = Vec::new();
        for (_, _, fields) in FIELDS {
            for f in *fields {
                if let Some((r, _)) = at(data, f).and_then(envelope) {
                    if !refs.iter().any(|x: &String| x == r) {
                        refs.push(r.to_string());
                    }
                }
            }
        }
        refs
    }

    /// Takes keys read from the shared store in bulk (key ref, entity hash, key text) into
    /// the cache, for opening records; they are not made this process's keys for new records.
    /// A key that cannot be opened is left out (its fields read as erased).
    pub fn preload(&self, keys: Vec<(String, String, String)>) {
        let opened: Vec<(Arc<EntityKey>, String)> = keys
            .into_iter()
            .filter_map(|(r, entity, text)| Some((self.key_from_text(&r, &text).ok()?, entity)))
            .collect();
        let mut g = self.lock();
        for (k, entity) in opened {
            g.entity_of.insert(k.key_ref.clone(), entity);
            g.by_ref.insert(k.key_ref.clone(), k);
        }
    }

    /// Forgets a key another replica destroyed (its erasure): nothing here opens it again.
    pub fn evict(&self, key_ref: &str) {
        let mut g = self.lock();
        if g.by_ref.remove(key_ref).is_some() {
            if let Some(entity) = g.entity_of.remove(key_ref) {
                if g.by_entity
                    .get(&entity)
                    .is_some_and(|k| k.key_ref == key_ref)
                {
                    g.by_entity.remove(&entity);
                }
            }
        }
    }

    /// The key of an entity: on first use, one of the durable batch, assigned to it.
    ///
    /// New keys are made (and fsynced) by a thread of their own, started by the request that
    /// takes the free list below [`LOW`]: no request waits for them while keys are left (a
    /// batch made by a request stalled every connection of its worker for milliseconds). A
    /// request that finds none left waits for the batch being made, or makes one itself
    /// when none is (and reports its error).
    fn key_for(&self, kind: &str, id: &str) -> Result<Arc<EntityKey>, VaultError> {
        let entity = entity_hash(kind, id);
        if let Some(remote) = &self.remote {
            if let Some(k) = self.lock().by_entity.get(&entity) {
                return Ok(k.clone());
            }
            return self.remote_key_for(remote.as_ref(), &entity);
        }
        let mut g = self.lock();
        loop {
            if let Some(k) = g.by_entity.get(&entity) {
                return Ok(k.clone());
            }
            if let Some(k) = g.free.pop() {
                let io = |source| VaultError::Io {
                    path: self.path.clone(),
                    source,
                };
                g.file
                    .write_all(format!("= {} {entity}\n", k.key_ref).as_bytes())
                    .map_err(io)?;
                g.assign(&k.key_ref, &entity);
                if g.free.len() < LOW && !g.refilling {
                    g.refilling = true;
                    drop(g);
                    self.refill_behind();
                }
                return Ok(k);
            }
            if g.refilling {
                g = self
                    .refilled
                    .wait(g)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            // None left and none coming (the last batch failed): make one, or say why not.
            g.refilling = true;
            drop(g);
            self.refill()?;
            g = self.lock();
        }
    }

    /// Makes the next batch on a thread of its own (here when no thread can be started).
    /// A failure leaves the free list as it was: the request that finds it empty makes the
    /// batch again and reports the error.
    fn refill_behind(&self) {
        let shared = self.shared.clone();
        let started = std::thread::Builder::new()
            .name("vault-keys".into())
            .spawn(move || {
                if let Err(e) = shared.refill() {
                    eprintln!("warning: making the vault's next batch of keys failed: {e}");
                }
            });
        if started.is_err() {
            let _ = self.refill();
        }
    }
    /// At start, for a record read from the log as written: the keys it names that are not
    /// assigned to any entity (the vault lost their assignment in a crash). Cheap when there
    /// are none, the usual case.
    pub fn unassigned(&self, written: &Value) -> Vec<(usize, String)> {
        let g = self.lock();
        FIELDS
            .iter()
            .enumerate()
            .filter_map(|(i, (_, id_at, _))| {
                let (key_ref, _) = envelope(at(written, id_at)?)?;
                (!g.entity_of.contains_key(key_ref) && g.by_ref.contains_key(key_ref))
                    .then(|| (i, key_ref.to_string()))
            })
            .collect()
    }

    /// Restores those assignments from the record decrypted (appended without an fsync).
    pub fn restore(&self, unassigned: Vec<(usize, String)>, revealed: &Value) {
        for (i, key_ref) in unassigned {
            let (kind, id_at, _) = FIELDS[i];
            let Some(id) = at(revealed, id_at).and_then(Value::as_str) else {
                continue;
            };
            let entity = entity_hash(kind, id);
            let mut g = self.lock();
            if g.entity_of.contains_key(&key_ref) || g.by_entity.contains_key(&entity) {
                continue;
            }
            let line = format!("= {key_ref} {entity}\n");
            if g.file.write_all(line.as_bytes()).is_ok() {
                g.assign(&key_ref, &entity);
            }
        }
    }

    /// Encrypts the entity fields of a record's data in place, each under its entity's key;
    /// returns the keys used (for [`Vault::touch_used`] once the record has its seq).
    pub fn protect(&self, data: &mut Value) -> Result<Used, VaultError> {
        let mut used = Vec::new();
        for (kind, id_at, fields) in FIELDS {
            let Some(id) = at(data, id_at).and_then(Value::as_str).map(str::to_string) else {
                continue;
            };
            let key = self.key_for(kind, &id)?;
            for f in *fields {
                if let Some(v) = at_mut(data, f) {
                    if let Some(s) = v.as_str() {
                        *v = Value::String(sealed(&key, f, s)?);
                    }
                }
            }
            used.push(key);
        }
        Ok(Used(used))
    }

    /// [`Vault::protect`] for a record built from typed values rather than a JSON value: each
    /// entity's fields are sealed in place under its key. The entities and paths must be
    /// those [`FIELDS`] names for such a record (the path is bound into each seal, and
    /// [`Vault::reveal`] finds the fields by it).
    pub fn protect_entities(&self, entities: Vec<EntityFields<'_>>) -> Result<Used, VaultError> {
        let mut used = Vec::with_capacity(entities.len());
        for e in entities {
            let key = self.key_for(e.kind, &e.id)?;
            for (path, v) in e.fields {
                if let Some(s) = v {
                    *s = sealed(&key, path, s)?;
                }
            }
            used.push(key);
        }
        Ok(Used(used))
    }

    /// Decrypts a record's protected fields in place; a field whose key was destroyed
    /// becomes `null` and is listed under `erased_fields`.
    pub fn reveal(&self, data: &mut Value) {
        let mut erased = Vec::new();
        for (_, _, fields) in FIELDS {
            for f in *fields {
                let Some(v) = at_mut(data, f) else {
                    continue;
                };
                let Some((key_ref, sealed)) = envelope(v) else {
                    continue;
                };
                let cached = self.lock().by_ref.get(key_ref).cloned();
                let key = cached.or_else(|| self.remote_key_by_ref(key_ref));
                let plain = key.and_then(|k| {
                    let bytes = b64().decode(sealed).ok()?;
                    let plain = k.cipher.open(&bytes, f.as_bytes()).ok()?;
                    String::from_utf8(plain).ok()
                });
                match plain {
                    Some(p) => *v = Value::String(p),
                    None => {
                        *v = Value::Null;
                        erased.push(Value::String(f.trim_start_matches('/').replace('/', ".")));
                    }
                }
            }
        }
        if !erased.is_empty() {
            if let Some(obj) = data.as_object_mut() {
                obj.insert("erased_fields".into(), Value::Array(erased));
            }
        }
    }

    /// Notes that record `seq` uses the keys of `data` (a record as written).
    pub fn touch(&self, data: &Value, seq: u64) {
        let g = self.lock();
        for (_, id_at, _) in FIELDS {
            let key_ref = at(data, id_at).and_then(envelope).map(|(r, _)| r);
            if let Some(k) = key_ref.and_then(|r| g.by_ref.get(r)) {
                k.last_seq.fetch_max(seq, Ordering::Relaxed);
            }
        }
    }

    /// With a shared store: the keys of `used`, and those `refs` name, whose use this
    /// process has not reported to the store for `every_ms` (now marked reported): key ref,
    /// entity hash and key text, for the store to note them used (or to keep them again,
    /// if retention removed them meanwhile; never one erased). Reported with the batch that
    /// holds the record using them, so a key is never taken by retention under a record
    /// being written.
    pub fn refresh_due(&self, used: &Used, refs: &[String], every_ms: u64) -> Vec<[String; 3]> {
        let now = now_ms();
        let g = self.lock();
        let mut out = Vec::new();
        let by_ref = refs.iter().filter_map(|r| g.by_ref.get(r));
        for k in used.0.iter().chain(by_ref) {
            let last = k.refreshed_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) < every_ms
                || k.refreshed_ms
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let (Some(entity), Ok(text)) = (g.entity_of.get(&k.key_ref), self.key_text(k)) else {
                continue;
            };
            out.push([k.key_ref.clone(), entity.clone(), text]);
        }
        out
    }

    /// Notes that record `seq` uses the keys `used` (held, so found without the lock).
    pub fn touch_used(&self, used: &Used, seq: u64) {
        for k in &used.0 {
            k.last_seq.fetch_max(seq, Ordering::Relaxed);
        }
    }

    /// The key ref of an entity, if it has a key (asked of the shared store, when there is
    /// one, when this process has not seen it).
    pub fn key_ref(&self, kind: &str, id: &str) -> Result<Option<String>, VaultError> {
        Ok(self.key_refs(kind, id)?.into_iter().next())
    }

    /// Every key ref of an entity: this process's, and with a shared store every replica's.
    pub fn key_refs(&self, kind: &str, id: &str) -> Result<Vec<String>, VaultError> {
        let entity = entity_hash(kind, id);
        let mut refs: Vec<String> = self
            .lock()
            .by_entity
            .get(&entity)
            .map(|k| k.key_ref.clone())
            .into_iter()
            .collect();
        if let Some(r) = &self.remote {
            for other in r
                .refs_of_entity(&entity)
                .map_err(|e| VaultError::Crypto(format!("{}: {e}", self.path.display())))?
            {
                if !refs.contains(&other) {
                    refs.push(other);
                }
            }
        }
        Ok(refs)
    }

    /// The entity hash a key ref belongs to, while the key exists.
    pub fn entity_of(&self, key_ref: &str) -> Option<String> {
        self.lock().entity_of.get(key_ref).cloned()
    }

    /// Destroys keys: the file is rewritten without them (atomically, fsynced). Returns how
    /// many were destroyed.
    pub fn destroy(&self, refs: &[String]) -> Result<usize, VaultError> {
        if let Some(remote) = &self.remote {
            let n = remote
                .destroy(refs)
                .map_err(|e| VaultError::Crypto(format!("{}: {e}", self.path.display())))?;
            for r in refs {
                self.evict(r);
            }
            return Ok(n);
        }
        let mut g = self.lock();
        let mut n = 0;
        for r in refs {
            if g.by_ref.remove(r).is_some() {
                if let Some(entity) = g.entity_of.remove(r) {
                    if g.by_entity.get(&entity).is_some_and(|k| &k.key_ref == r) {
                        g.by_entity.remove(&entity);
                    }
                }
                g.free.retain(|k| &k.key_ref != r);
                n += 1;
            }
        }
        if n > 0 {
            self.rewrite(&mut g)?;
        }
        Ok(n)
    }

    /// Retention: destroys the keys whose last use is record `through` or earlier (the
    /// records using them were removed). Returns how many.
    pub fn drop_unused(&self, through: u64) -> Result<usize, VaultError> {
        let old: Vec<String> = self
            .lock()
            .by_ref
            .values()
            .filter(|k| {
                let last = k.last_seq.load(Ordering::Relaxed);
                last > 0 && last <= through
            })
            .map(|k| k.key_ref.clone())
            .collect();
        self.destroy(&old)
    }

    fn rewrite(&self, g: &mut Inner) -> Result<(), VaultError> {
        let mut text = String::new();
        let mut keys: Vec<&Arc<EntityKey>> = g.by_ref.values().collect();
        keys.sort_by(|a, b| a.key_ref.cmp(&b.key_ref));
        for k in keys {
            let entity = g.entity_of.get(&k.key_ref).map(String::as_str);
            text.push_str(&self.line(k, entity)?);
        }
        let io = |source| VaultError::Io {
            path: self.path.clone(),
            source,
        };
        fraud_core::files::write_atomic(&self.path, text.as_bytes())
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        g.file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        Ok(())
    }

    /// Number of keys assigned to entities.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().entity_of.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Value {
        json!({
            "transaction_id": "t1",
            "transaction": {"card": {"token": "tok_a", "mask": "411111******1111"},
                "customer_id": "customer-one", "merchant_id": "merchant-one", "device_id": null},
            "response": {"card_mask": "411111******1111"},
        })
    }

    /// A shared store of keys in memory, standing in for PostgreSQL.
    #[derive(Default)]
    struct Keys(std::sync::Mutex<Vec<(String, String, String)>>);

    impl RemoteKeys for Keys {
        fn keep(&self, entity: &str, key_ref: &str, key: &str) -> Result<(), String> {
            let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            g.push((key_ref.into(), entity.into(), key.into()));
            Ok(())
        }
        fn refs_of_entity(&self, entity: &str) -> Result<Vec<String>, String> {
            let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            Ok(g.iter()
                .filter(|k| k.1 == entity)
                .map(|k| k.0.clone())
                .collect())
        }
        fn key_by_ref(&self, key_ref: &str) -> Result<Option<(String, String)>, String> {
            let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            Ok(g.iter()
                .find(|k| k.0 == key_ref)
                .map(|k| (k.1.clone(), k.2.clone())))
        }
        fn destroy(&self, refs: &[String]) -> Result<usize, String> {
            let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let before = g.len();
            g.retain(|k| !refs.contains(&k.0));
            Ok(before - g.len())
        }
    }

    #[test]
    fn replicas_sharing_keys_read_each_others_records_and_an_erasure_reaches_all() {
        let store = Arc::new(Keys::default());
        let sealer = Some(Sealer::new(&[9u8; 32]).unwrap_or_else(|e| panic!("{e}")));
        let open = || {
            Vault::open_remote(store.clone(), "test", sealer.clone())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (a, b) = (open(), open());
        let mut on_a = record();
        a.protect(&mut on_a).unwrap_or_else(|e| panic!("{e}"));
        let mut on_b = record();
        on_b["transaction_id"] = json!("t2");
        b.protect(&mut on_b).unwrap_or_else(|e| panic!("{e}"));
        // Each replica made its own key for the customer; both are in the store.
        assert_eq!(
            a.key_refs("customer", "customer-one")
                .unwrap_or_else(|e| panic!("{e}"))
                .len(),
            2
        );
        // A third process loads what a's record names in bulk, then reads it without the store.
        let c = open();
        let refs = Vault::refs_in(&on_a);
        assert_eq!(refs.len(), 3, "card, customer, merchant: {refs:?}");
        let keys = refs
            .iter()
            .filter_map(|r| {
                let (entity, text) = store.key_by_ref(r).ok()??;
                Some((r.clone(), entity, text))
            })
            .collect();
        c.preload(keys);
        let mut back = on_a.clone();
        c.reveal(&mut back);
        assert_eq!(back, record());
        let mut back = on_b.clone();
        a.reveal(&mut back);
        assert_eq!(back["transaction"]["customer_id"], "customer-one");
        // Erased on b: every key of the customer goes; a forgets its copy as it follows.
        let all = b
            .key_refs("customer", "customer-one")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.destroy(&all).ok(), Some(2));
        for r in &all {
            a.evict(r);
            c.evict(r);
        }
        for (v, rec) in [(&a, &on_a), (&a, &on_b), (&c, &on_a)] {
            let mut back = rec.clone();
            v.reveal(&mut back);
            assert_eq!(back["transaction"]["customer_id"], Value::Null);
            assert_eq!(back["transaction"]["merchant_id"], "merchant-one");
        }
    }

    #[test]
    fn protects_reveals_and_shreds() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let v = Vault::open(dir.path(), None).unwrap_or_else(|e| panic!("{e}"));
        let mut r = record();
        let used = v.protect(&mut r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(used.0.len(), 3);
        let text = r.to_string();
        // (Ciphertext is base64: only values it cannot contain by chance are looked for.)
        for clear in ["tok_a", "411111******", "customer-one", "merchant-one"] {
            assert!(!text.contains(clear), "{clear} in {text}");
        }
        assert_eq!(r["transaction_id"], "t1");
        let mut back = r.clone();
        v.reveal(&mut back);
        assert_eq!(back, record());
        // Another process sees the same keys.
        let again = Vault::open(dir.path(), None).unwrap_or_else(|e| panic!("{e}"));
        let mut back = r.clone();
        again.reveal(&mut back);
        assert_eq!(back, record());
        // Shredding the customer: only its field is gone, for good.
        let cref = v
            .key_ref("customer", "customer-one")
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(v.destroy(&[cref]).ok(), Some(1));
        let reopened = Vault::open(dir.path(), None).unwrap_or_else(|e| panic!("{e}"));
        let mut back = r.clone();
        reopened.reveal(&mut back);
        assert_eq!(back["transaction"]["customer_id"], Value::Null);
        assert_eq!(back["transaction"]["merchant_id"], "merchant-one");
        assert_eq!(back["erased_fields"], json!(["transaction.customer_id"]));
        assert!(reopened
            .key_ref("customer", "customer-one")
            .ok()
            .flatten()
            .is_none());
        // A new use of the same id gets a new key.
        let mut r2 = record();
        reopened.protect(&mut r2).unwrap_or_else(|e| panic!("{e}"));
        assert!(reopened
            .key_ref("customer", "customer-one")
            .ok()
            .flatten()
            .is_some());
    }

    #[test]
    fn sealed_keys_need_the_encryption_key() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = Sealer::new(&[3u8; 32]).unwrap_or_else(|e| panic!("{e}"));
        let v = Vault::open(dir.path(), Some(s.clone())).unwrap_or_else(|e| panic!("{e}"));
        let mut r = record();
        v.protect(&mut r).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(dir.path().join("vault/keys")).unwrap_or_default();
        assert!(
            text.lines()
                .filter(|l| !l.starts_with('='))
                .all(|l| l.contains(" s:")),
            "{text}"
        );
        assert!(Vault::open(dir.path(), None).is_err());
        assert!(Vault::open(dir.path(), Some(s)).is_ok());
    }

    #[test]
    fn retention_drops_keys_last_used_before() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let v = Vault::open(dir.path(), None).unwrap_or_else(|e| panic!("{e}"));
        let mut r = record();
        let used = v.protect(&mut r).unwrap_or_else(|e| panic!("{e}"));
        v.touch_used(&used, 5);
        let mut r2 = json!({"transaction": {"card": {"token": "tok_b"}}});
        let used2 = v.protect(&mut r2).unwrap_or_else(|e| panic!("{e}"));
        v.touch(&r2, 9);
        assert_eq!(used2.0.len(), 1);
        assert_eq!(v.drop_unused(5).ok(), Some(3));
        assert_eq!(v.len(), 1);
        let mut back = r2.clone();
        v.reveal(&mut back);
        assert_eq!(back["transaction"]["card"]["token"], "tok_b");
    }

    #[test]
    fn keys_come_durable_in_batches_and_lost_assignments_are_restored_from_records() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let v = Vault::open(dir.path(), None).unwrap_or_else(|e| panic!("{e}"));
        let mut r = record();
        v.protect(&mut r).unwrap_or_else(|e| panic!("{e}"));
        let cref = v.key_ref("customer", "customer-one").ok().flatten();
        assert!(cref.is_some());
        // A crash lost the assignments (appended without an fsync), not the keys.
        let path = dir.path().join("vault/keys");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(text.lines().filter(|l| !l.starts_with('=')).count(), BATCH);
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with('='))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, kept).unwrap_or_else(|e| panic!("{e}"));
        let again = Vault::open(dir.path(), None).unwrap_or_else(|e| panic!("{e}"));
        assert!(again
            .key_ref("customer", "customer-one")
            .ok()
            .flatten()
            .is_none());
        // The record still opens (its key is there), and reading it restores the assignment.
        let lost = again.unassigned(&r);
        assert_eq!(lost.len(), 3);
        let mut back = r.clone();
        again.reveal(&mut back);
        assert_eq!(back, record());
        again.restore(lost, &back);
        assert!(again.unassigned(&r).is_empty());
        assert_eq!(
            again.key_ref("customer", "customer-one").ok().flatten(),
            cref
        );
        // So a new record of the customer uses the same key, and erasure finds it.
        let mut r2 = record();
        again.protect(&mut r2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r2["transaction"]["customer_id"]
                .as_str()
                .map(|s| s.split(':').nth(1)),
            r["transaction"]["customer_id"]
                .as_str()
                .map(|s| s.split(':').nth(1))
        );
    }

    #[test]
    fn keys_made_behind_the_requests_reach_every_entity_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let v = Vault::open(dir.path(), None).unwrap_or_else(|e| panic!("{e}"));
        // Four threads, 1,200 new entities: batches are made behind them, and a thread that
        // finds the free list empty waits for the batch in the making.
        let refs: Vec<Vec<String>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let v = &v;
                    s.spawn(move || {
                        (0..300)
                            .map(|i| {
                                let k = v
                                    .key_for("customer", &format!("c{t}-{i}"))
                                    .unwrap_or_else(|e| panic!("{e}"));
                                k.key_ref.clone()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let all: std::collections::HashSet<&String> = refs.iter().flatten().collect();
        assert_eq!(all.len(), 1_200, "one key per entity, none shared");
        // Wait for a batch still in the making, then reopen: every assignment was kept.
        while v.lock().refilling {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let again = Vault::open(dir.path(), None).unwrap_or_else(|e| panic!("{e}"));
        for (t, keys) in refs.iter().enumerate() {
            for (i, key_ref) in keys.iter().enumerate() {
                let id = format!("c{t}-{i}");
                assert_eq!(
                    again.key_ref("customer", &id).ok().flatten().as_ref(),
                    Some(key_ref)
                );
            }
        }
    }
}
