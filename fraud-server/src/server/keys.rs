//! API keys: each has a name, roles and optionally an expiry; only the SHA-256 of the key is
//! stored, and a presented key is compared in constant time. Roles, separate (a key may hold
//! several; none implies another): `score` (score and batch), `analyst` (read masked
//! decisions, send labels, metrics), `admin` (models, erasure).
//!
//! Keys file (JSON): `{"keys": [{"name", "roles", "sha256", "created", "expires",
//! "revoked"}]}`. In development mode (no keys file configured) the service creates one key
//! with every role, writes it to `<data_dir>/dev-api-key` (mode 0600) and its hash to
//! `<data_dir>/keys.json`.

use std::path::{Path, PathBuf};

use fraud_core::hex::encode as hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Score transactions.
    Score,
    /// Read masked decisions, send labels.
    Analyst,
    /// Load models and everything else.
    Admin,
}

impl Role {
    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Score => "score",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }
}

/// One stored key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Who or what uses it.
    pub name: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// SHA-256 of the key, hex.
    pub sha256: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339; never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Revoked keys are refused.
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeyRecord>,
}

/// Why keys could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a keys file.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No randomness from the operating system.
    #[error("cannot get random bytes from the operating system")]
    Random,
}

/// A key that authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's name.
    pub name: String,
    /// Its roles.
    pub roles: Vec<Role>,
}

impl Caller {
    /// Whether the caller has `role`. Roles are separate (least privilege): `admin` does
    /// not imply `score` or `analyst`; a key that needs several holds several.
    pub fn may(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

struct Entry {
    hash: [u8; 32],
    expires_unix: Option<i64>,
    record: KeyRecord,
}

/// The loaded keys.
pub struct Keys {
    entries: Vec<Entry>,
}

/// How often the running service looks at its keys file: a key created, revoked or given an
/// expiry takes effect within this time (expiry itself is checked on every request).
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What identifies a version of a file on disk (a rewrite changes one of them): how the
/// keys and users files are re-read when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

/// The stamp of `path` now (None when it cannot be read).
pub(crate) fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

/// The keys of a running service, re-read from their file when it changes (`fraud keys
/// create` / `revoke` write it atomically): no restart is needed for a key change. With a
/// store shared by replicas, the keys it holds (`fraud keys create --store`) are accepted
/// too, followed as they change.
pub struct LiveKeys {
    keys: arc_swap::ArcSwap<Keys>,
    path: PathBuf,
    seen: std::sync::Mutex<Option<Stamp>>,
    stored: arc_swap::ArcSwap<Keys>,
    stored_seen: std::sync::Mutex<Option<String>>,
}

impl LiveKeys {
    /// The keys of `path`, loaded now.
    pub fn open(path: &Path) -> Result<LiveKeys, KeyError> {
        let seen = stamp(path);
        let keys = Keys::load(path)?;
        Ok(LiveKeys {
            keys: arc_swap::ArcSwap::from_pointee(keys),
            path: path.to_path_buf(),
            seen: std::sync::Mutex::new(seen),
            stored: arc_swap::ArcSwap::from_pointee(Keys {
                entries: Vec::new(),
            }),
            stored_seen: std::sync::Mutex::new(None),
        })
    }

    /// Takes the keys the shared store holds now; `Ok(true)` when they changed. Invalid
    /// records leave the keys in use unchanged.
    pub fn set_stored(&self, records: Vec<KeyRecord>) -> Result<bool, KeyError> {
        let seen = serde_json::to_string(&records).unwrap_or_default();
        let mut last = self
            .stored_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.as_deref() == Some(seen.as_str()) {
            return Ok(false);
        }
        let keys = Keys::from_records(records, Path::new("fraud_api_keys"))?;
        self.stored.store(std::sync::Arc::new(keys));
        *last = Some(seen);
        Ok(true)
    }

    /// Re-reads the file if it changed since last read; `Ok(true)` when new keys are in use.
    /// A file that cannot be read or parsed leaves the keys in use unchanged (and is tried
    /// again at the next change).
    pub fn reload(&self) -> Result<bool, KeyError> {
        let now = stamp(&self.path);
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *seen == now {
            return Ok(false);
        }
        *seen = now;
        let keys = Keys::load(&self.path)?;
        self.keys.store(std::sync::Arc::new(keys));
        Ok(true)
    }

    /// Checks the file every [`RELOAD_EVERY`] on a thread of its own, for the life of the
    /// process.
    pub fn watch(self: std::sync::Arc<Self>) {
        std::thread::spawn(move || loop {
            std::thread::sleep(RELOAD_EVERY);
            match self.reload() {
                Ok(true) => println!(
                    "API keys: {} reloaded ({} keys)",
                    self.path.display(),
                    self.len()
                ),
                Ok(false) => {}
                Err(e) => {
                    eprintln!("warning: API keys not reloaded, the previous ones stay in use: {e}")
                }
            }
        });
    }

    /// The caller a bearer key belongs to, if valid now.
    pub fn authenticate(&self, presented: &str) -> Option<Caller> {
        // Both sets are always searched (in constant time each), whichever holds the key.
        let from_file = self.keys.load().authenticate(presented);
        let from_store = self.stored.load().authenticate(presented);
        from_file.or(from_store)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.load().len() + self.stored.load().len()
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new random secret: `fsk_` and 64 hex digits (256 bits from the operating system).
pub fn new_secret() -> Result<String, KeyError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|_| KeyError::Random)?;
    Ok(format!("fsk_{}", hex(&b)))
}

/// Writes `bytes` to `path` readable by the owner only (0600 on Unix).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()
}

/// Reads a JSON file (`what` names it in errors); an absent file is `T::default()`.
pub fn read_json<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
    what: &str,
) -> Result<T, KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str::<T>(&text).map_err(|e| KeyError::Invalid {
            path: path.to_path_buf(),
            reason: format!("not a {what}: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(KeyError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `value` as JSON to `path`, readable by the owner only, creating its directory;
/// atomically (a temporary file renamed over it), since running services re-read these files
/// when they change.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), KeyError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| KeyError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let tmp = path.with_extension("json.tmp");
    write_private(&tmp, &json)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// The records of a keys file (an absent file has none).
pub fn read_records(path: &Path) -> Result<Vec<KeyRecord>, KeyError> {
    read_json::<KeysFile>(path, "keys file").map(|f| f.keys)
}

fn write_records(path: &Path, keys: Vec<KeyRecord>) -> Result<(), KeyError> {
    write_json(path, &KeysFile { keys })
}

/// A new key named `name` with `roles`: its record (the hash only) and its secret.
pub fn new_record(
    name: &str,
    roles: Vec<Role>,
    expires: Option<String>,
) -> Result<(KeyRecord, String), KeyError> {
    let secret = new_secret()?;
    Ok((
        KeyRecord {
            name: name.to_string(),
            roles,
            sha256: hex(&Sha256::digest(secret.as_bytes())),
            created: now_rfc3339(),
            expires,
            revoked: false,
        },
        secret,
    ))
}

/// Adds a key named `name` with `roles` to the keys file; returns the secret (shown once).
pub fn add_key(
    path: &Path,
    name: &str,
    roles: Vec<Role>,
    expires: Option<String>,
) -> Result<String, KeyError> {
    let mut keys = read_records(path)?;
    if name.trim().is_empty() || keys.iter().any(|k| k.name == name) {
        return Err(KeyError::Invalid {
            path: path.to_path_buf(),
            reason: format!("a key named `{name}` exists already (or the name is empty)"),
        });
    }
    let (record, secret) = new_record(name, roles, expires)?;
    keys.push(record);
    write_records(path, keys)?;
    Ok(secret)
}

/// Marks the key named `name` revoked.
pub fn revoke_key(path: &Path, name: &str) -> Result<(), KeyError> {
    let mut keys = read_records(path)?;
    let Some(k) = keys.iter_mut().find(|k| k.name == name) else {
        return Err(KeyError::Invalid {
            path: path.to_path_buf(),
            reason: format!("no key named `{name}`"),
        });
    };
    k.revoked = true;
    write_records(path, keys)
}

impl Keys {
    /// Loads a keys file.
    pub fn load(path: &Path) -> Result<Keys, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file: KeysFile = serde_json::from_str(&text).map_err(|e| KeyError::Invalid {
            path: path.to_path_buf(),
            reason: format!("not a keys file: {e}"),
        })?;
        Keys::from_records(file.keys, path)
    }

    /// Checks and takes `records` (from `origin`, named in errors).
    pub fn from_records(records: Vec<KeyRecord>, origin: &Path) -> Result<Keys, KeyError> {
        let mut entries = Vec::with_capacity(records.len());
        for (i, record) in records.into_iter().enumerate() {
            let invalid = |reason: String| KeyError::Invalid {
                path: origin.to_path_buf(),
                reason: format!("keys[{i}] ({}): {reason}", record.name),
            };
            let hash = unhex(&record.sha256)
                .ok_or_else(|| invalid("sha256 must be 64 hex digits".into()))?;
            let expires_unix = match &record.expires {
                None => None,
                Some(t) => Some(
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| invalid(format!("expires `{t}` is not an RFC 3339 time")))?
                        .unix_timestamp(),
                ),
            };
            if record.roles.is_empty() {
                return Err(invalid("has no role".into()));
            }
            entries.push(Entry {
                hash,
                expires_unix,
                record,
            });
        }
        Ok(Keys { entries })
    }

    /// The development key: reuses `<dir>/dev-api-key` when `<dir>/keys.json` knows it,
    /// otherwise creates a key with every role. Returns the keys file's path and the key
    /// file's path.
    pub fn development(dir: &Path) -> Result<(PathBuf, PathBuf), KeyError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::Io {
                path: path.clone(),
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let keys_path = dir.join("keys.json");
        let key_path = dir.join("dev-api-key");
        let mut file: KeysFile = match std::fs::read_to_string(&keys_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| KeyError::Invalid {
                path: keys_path.clone(),
                reason: format!("not a keys file: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeysFile::default(),
            Err(e) => return Err(io(&keys_path)(e)),
        };
        let known = std::fs::read_to_string(&key_path).ok().and_then(|k| {
            let h = hex(&Sha256::digest(k.trim().as_bytes()));
            file.keys
                .iter()
                .any(|r| r.sha256 == h && !r.revoked)
                .then_some(())
        });
        if known.is_none() {
            let secret = new_secret()?;
            file.keys.push(KeyRecord {
                name: "development".into(),
                roles: vec![Role::Score, Role::Analyst, Role::Admin],
                sha256: hex(&Sha256::digest(secret.as_bytes())),
                created: now_rfc3339(),
                expires: None,
                revoked: false,
            });
            let json = serde_json::to_vec_pretty(&file).map_err(|e| KeyError::Invalid {
                path: keys_path.clone(),
                reason: e.to_string(),
            })?;
            write_private(&keys_path, &json).map_err(io(&keys_path))?;
            write_private(&key_path, format!("{secret}\n").as_bytes()).map_err(io(&key_path))?;
        }
        // Loaded (and checked) by the caller, [`LiveKeys::open`].
        Ok((keys_path, key_path))
    }

    /// The caller a bearer key belongs to, if valid now.
    pub fn authenticate(&self, presented: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut found: Option<&Entry> = None;
        // Every entry is compared, in constant time, whatever matches.
        for e in &self.entries {
            if bool::from(e.hash.ct_eq(&digest)) {
                found = Some(e);
            }
        }
        let e = found?;
        if e.record.revoked || e.expires_unix.is_some_and(|t| t <= now) {
            return None;
        }
        Some(Caller {
            name: e.record.name.clone(),
            roles: e.record.roles.clone(),
        })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}
