//! Console users: people who log in to the review console with a password (stored as an
//! Argon2id hash) and a time-based one-time code (RFC 6238: HMAC-SHA-1, 6 digits, 30 s
//! steps, one step of clock drift either way), required for every user.
//!
//! Users file (JSON, mode 0600, `<data dir>/users.json` unless `users_file` says otherwise):
//! `{"users": [{"name", "role", "password", "totp_secret", "created", "disabled"}]}`; the
//! TOTP secret is base32, sealed with the encryption key when the file was written with one.
//! The service re-reads the file when it changes, so users created or disabled while it runs
//! take effect at their next login.
//!
//! Logins are refused after `max_failures` wrong attempts in a row for `lockout_s`; a code is
//! accepted once (a code of a step already used is refused as replayed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

use super::keys::Role;
use super::seal::Sealer;

/// Why users could not be read, written or created.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// Reading, parsing or writing the users file failed.
    #[error(transparent)]
    File(#[from] super::keys::KeyError),
    /// A request that cannot be carried out (a taken name, a short password, ...).
    #[error("{0}")]
    Refused(String),
}

/// One stored user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    /// Login name.
    pub name: String,
    /// `analyst` or `admin`.
    pub role: Role,
    /// Argon2id PHC string.
    pub password: String,
    /// TOTP secret, base32 (or `s:` and the sealed secret).
    pub totp_secret: String,
    /// RFC 3339.
    pub created: String,
    /// Disabled users cannot log in.
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: Vec<UserRecord>,
}

/// The records of a users file (an absent file has none).
pub fn read_records(path: &Path) -> Result<Vec<UserRecord>, UserError> {
    Ok(super::keys::read_json::<UsersFile>(path, "users file")?.users)
}

fn write_records(path: &Path, users: Vec<UserRecord>) -> Result<(), UserError> {
    Ok(super::keys::write_json(path, &UsersFile { users })?)
}

/// RFC 4648 base32, no padding.
pub fn base32(bytes: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(bytes)
}

/// Decodes base32 (case-insensitive, spaces and padding ignored).
pub fn unbase32(s: &str) -> Option<Vec<u8>> {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    data_encoding::BASE32_NOPAD.decode(clean.as_bytes()).ok()
}

/// The RFC 6238 code (HMAC-SHA-1, 6 digits) of `secret` at time step `step`.
pub fn totp(secret: &[u8], step: u64) -> String {
    hotp(secret, step, 6)
}

fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = (h[19] & 0x0f) as usize;
    let bin = (u32::from(h[off] & 0x7f) << 24)
        | (u32::from(h[off + 1]) << 16)
        | (u32::from(h[off + 2]) << 8)
        | u32::from(h[off + 3]);
    format!(
        "{:0width$}",
        bin % 10u32.pow(digits),
        width = digits as usize
    )
}

/// The current 30-second time step.
pub fn current_step() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 30)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Hashes a password with Argon2id (a random salt).
pub fn hash_password(password: &str) -> Result<String, UserError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)
        .map_err(|_| UserError::Refused("no randomness from the OS".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| UserError::Refused(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Refused(format!("cannot hash the password: {e}")))
}

/// What `create_user` made: the secret and its enrolment URI, shown once.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// Base32 TOTP secret.
    pub secret: String,
    /// `otpauth://totp/...` for an authenticator app (the QR code's content).
    pub uri: String,
}

/// Minimum password length.
pub const MIN_PASSWORD: usize = 12;

/// Adds a console user; returns the TOTP enrolment (shown once).
pub fn create_user(
    path: &Path,
    name: &str,
    role: Role,
    password: &str,
    sealer: Option<&Sealer>,
) -> Result<Enrolment, UserError> {
    if role == Role::Score {
        return Err(UserError::Refused(
            "--role: console users are analyst or admin".into(),
        ));
    }
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if !valid_name {
        return Err(UserError::Refused(
            "--name: 1 to 64 letters, digits, '.', '_', '-' or '@'".into(),
        ));
    }
    if password.chars().count() < MIN_PASSWORD {
        return Err(UserError::Refused(format!(
            "the password must have at least {MIN_PASSWORD} characters"
        )));
    }
    let mut users = read_records(path)?;
    if users.iter().any(|u| u.name == name) {
        return Err(UserError::Refused(format!(
            "a user named `{name}` exists already"
        )));
    }
    let mut raw = [0u8; 20];
    getrandom::fill(&mut raw)
        .map_err(|_| UserError::Refused("no randomness from the OS".into()))?;
    let secret = base32(&raw);
    let stored = match sealer {
        Some(s) => format!(
            "s:{}",
            s.seal_text(secret.as_bytes(), name.as_bytes())
                .map_err(UserError::Refused)?
        ),
        None => secret.clone(),
    };
    users.push(UserRecord {
        name: name.to_string(),
        role,
        password: hash_password(password)?,
        totp_secret: stored,
        created: now_rfc3339(),
        disabled: false,
    });
    write_records(path, users)?;
    let uri = format!(
        "otpauth://totp/fraud-console:{name}?secret={secret}&issuer=fraud-console&algorithm=SHA1&digits=6&period=30"
    );
    Ok(Enrolment { secret, uri })
}

/// Disables (or enables again) a user.
pub fn set_disabled(path: &Path, name: &str, disabled: bool) -> Result<(), UserError> {
    let mut users = read_records(path)?;
    let Some(u) = users.iter_mut().find(|u| u.name == name) else {
        return Err(UserError::Refused(format!("no user named `{name}`")));
    };
    u.disabled = disabled;
    write_records(path, users)
}

/// Login thresholds.
#[derive(Debug, Clone, Copy)]
pub struct LoginPolicy {
    /// Wrong attempts in a row before a lock-out.
    pub max_failures: u32,
    /// How long a lock-out lasts.
    pub lockout: Duration,
}

/// Why a login was refused (shown to the person in general words, recorded precisely).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginRefusal {
    /// Unknown user, wrong password or wrong code.
    Wrong,
    /// The code of a time step that was already used.
    Replayed,
    /// Too many failures: locked until then.
    Locked(u64),
    /// The user is disabled.
    Disabled,
    /// The store that keeps lock-outs and used codes for all replicas did not answer.
    Unavailable,
}

/// A user's login state: wrong attempts in a row, lock-out, the last code step used.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Attempts {
    failures: u32,
    /// Unix seconds.
    locked_until: Option<u64>,
    last_step: Option<u64>,
}

/// What a login attempt does to the user's login state, and its outcome.
pub type Decide =
    std::sync::Arc<dyn Fn(&mut Attempts) -> Result<LoggedIn, LoginRefusal> + Send + Sync>;

/// A console session as a store shared by replicas keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// The user.
    pub user: String,
    /// The user's role.
    pub role: Role,
    /// The session's CSRF token.
    pub csrf: String,
    /// A message for the next page (taken when read).
    #[serde(skip)]
    pub flash: Option<String>,
}

/// Console state kept in a store every replica uses, so that the console behaves as one
/// whichever replica a request reaches: sessions (by the SHA-256 of their token; the store's
/// clock times them out), and each user's lock-out and last code used.
pub trait ConsoleStore: Send + Sync {
    /// Starts a session (and drops those timed out).
    fn session_start(
        &self,
        key: &str,
        session: &StoredSession,
        idle_s: u64,
        absolute_s: u64,
    ) -> Result<(), super::decisions::LogError>;
    /// The session of `key` when it is live (used within `idle_s`, younger than
    /// `absolute_s`): marked used now, its flash message taken.
    fn session(
        &self,
        key: &str,
        idle_s: u64,
        absolute_s: u64,
    ) -> Result<Option<StoredSession>, super::decisions::LogError>;
    /// Ends a session.
    fn session_end(&self, key: &str) -> Result<(), super::decisions::LogError>;
    /// Leaves a message for the session's next page.
    fn session_flash(&self, key: &str, message: &str) -> Result<(), super::decisions::LogError>;
    /// Runs `decide` on `user`'s login state, one attempt at a time across all replicas, and
    /// keeps the state it leaves.
    fn login_state(
        &self,
        user: &str,
        decide: Decide,
    ) -> Result<Result<LoggedIn, LoginRefusal>, super::decisions::LogError>;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Loaded {
    modified: Option<super::keys::Stamp>,
    users: Vec<UserRecord>,
}

/// The users, as the service sees them.
pub struct Users {
    path: PathBuf,
    /// Lock-outs and the last code step used, per user (kept across restarts).
    state_path: PathBuf,
    sealer: Option<Sealer>,
    policy: LoginPolicy,
    loaded: Mutex<Loaded>,
    attempts: Mutex<HashMap<String, Attempts>>,
}

/// A user who logged in.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
}

impl Users {
    /// Reads the users file (absent: no users).
    pub fn open(
        path: &Path,
        sealer: Option<Sealer>,
        policy: LoginPolicy,
    ) -> Result<Self, UserError> {
        let users = read_records(path)?;
        let modified = super::keys::stamp(path);
        let state_path = path.with_extension("state.json");
        let attempts = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                eprintln!(
                    "warning: {}: not read ({e}); lock-outs and used codes start afresh",
                    state_path.display()
                );
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        Ok(Users {
            path: path.to_path_buf(),
            state_path,
            sealer,
            policy,
            loaded: Mutex::new(Loaded { modified, users }),
            attempts: Mutex::new(attempts),
        })
    }

    /// The users now (re-read when the file changed).
    fn current(&self) -> Vec<UserRecord> {
        let mut g = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let modified = super::keys::stamp(&self.path);
        if modified != g.modified {
            match read_records(&self.path) {
                Ok(users) => {
                    g.users = users;
                    g.modified = modified;
                }
                Err(e) => eprintln!("warning: users file not re-read: {e}"),
            }
        }
        g.users.clone()
    }

    /// Whether a user of that name exists.
    pub fn exists(&self, name: &str) -> bool {
        self.current().iter().any(|u| u.name == name)
    }

    /// Whether `name` is still an enabled user (sessions end when a user is disabled).
    pub fn active(&self, name: &str) -> bool {
        self.current().iter().any(|u| u.name == name && !u.disabled)
    }

    /// Checks a login: password and one-time code, with lock-out and replay refusal. Only
    /// existing users are tracked (a name that is no user could be anything); their state is
    /// kept in `<users file>.state.json`, so a restart forgets neither a lock-out nor a used
    /// code.
    pub fn login(&self, name: &str, password: &str, code: &str) -> Result<LoggedIn, LoginRefusal> {
        self.login_with(name, password, code, None)
    }

    /// [`Users::login`], with the lock-outs and used codes kept in `shared` when given (a
    /// store every replica uses: one round of guesses and one use of a code for the whole
    /// service) rather than in this process's state file.
    pub fn login_with(
        &self,
        name: &str,
        password: &str,
        code: &str,
        shared: Option<&dyn ConsoleStore>,
    ) -> Result<LoggedIn, LoginRefusal> {
        let now = unix_now();
        let users = self.current();
        let user = users.iter().find(|u| u.name == name);
        // The password is checked even for an unknown name, so that timing tells nothing.
        let dummy = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2dD4zaWzT1S3BmmH5sOIi+0jl9DfUnUVrPClbEmNSgw";
        let phc = user.map_or(dummy, |u| u.password.as_str());
        let password_ok = PasswordHash::new(phc).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        let Some(user) = user else {
            return Err(LoginRefusal::Wrong);
        };
        let step = current_step();
        let matched_step = password_ok
            .then(|| self.secret(user))
            .flatten()
            .and_then(|secret| {
                let code = code.trim();
                [step.saturating_sub(1), step, step + 1]
                    .into_iter()
                    .find(|&s| {
                        let want = totp(&secret, s);
                        !want.is_empty()
                            && subtle::ConstantTimeEq::ct_eq(want.as_bytes(), code.as_bytes())
                                .into()
                    })
            });
        let (policy, who, role, disabled) =
            (self.policy, user.name.clone(), user.role, user.disabled);
        // What the attempt does to the user's login state (the same wherever it is kept).
        let decide = move |entry: &mut Attempts| -> Result<LoggedIn, LoginRefusal> {
            if let Some(until) = entry.locked_until {
                if until > now {
                    return Err(LoginRefusal::Locked(until - now));
                }
                entry.locked_until = None;
                entry.failures = 0;
            }
            let mut outcome = match matched_step {
                Some(s) if entry.last_step.is_some_and(|last| s <= last) => {
                    Err(LoginRefusal::Replayed)
                }
                Some(_) if disabled => Err(LoginRefusal::Disabled),
                Some(s) => {
                    entry.last_step = Some(s);
                    Ok(LoggedIn {
                        name: who.clone(),
                        role,
                    })
                }
                None => Err(LoginRefusal::Wrong),
            };
            match &outcome {
                Ok(_) => entry.failures = 0,
                Err(_) => {
                    entry.failures += 1;
                    if entry.failures >= policy.max_failures {
                        let secs = policy.lockout.as_secs().max(1);
                        entry.locked_until = Some(now + secs);
                        outcome = Err(LoginRefusal::Locked(secs));
                    }
                }
            }
            outcome
        };
        if let Some(store) = shared {
            return store
                .login_state(name, std::sync::Arc::new(decide))
                .unwrap_or_else(|e| {
                    eprintln!("warning: console login: the shared store: {e}");
                    Err(LoginRefusal::Unavailable)
                });
        }
        let mut a = self
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let outcome = decide(a.entry(name.to_string()).or_default());
        let state = serde_json::to_vec(&*a).unwrap_or_default();
        drop(a);
        if let Err(e) = fraud_core::files::write_atomic(&self.state_path, &state) {
            eprintln!(
                "warning: {}: not written ({e}); lock-outs and used codes would not survive a restart",
                self.state_path.display()
            );
        }
        outcome
    }

    fn secret(&self, u: &UserRecord) -> Option<Vec<u8>> {
        match u.totp_secret.strip_prefix("s:") {
            Some(sealed) => {
                let plain = self
                    .sealer
                    .as_ref()?
                    .open_text(sealed, u.name.as_bytes())
                    .ok()?;
                unbase32(std::str::from_utf8(&plain).ok()?)
            }
            None => unbase32(&u.totp_secret),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_test_vectors() {
        // RFC 6238 appendix B, SHA-1, 8 digits: the secret is "12345678901234567890".
        let secret = b"12345678901234567890";
        for (t, want) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(hotp(secret, t / 30, 8), want, "t = {t}");
        }
        assert_eq!(totp(secret, 59 / 30), "287082");
    }

    #[test]
    fn base32_round_trips() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(unbase32("MZXW6YTBOI").as_deref(), Some(&b"foobar"[..]));
        assert_eq!(
            unbase32("mzxw 6ytb oi======").as_deref(),
            Some(&b"foobar"[..])
        );
        assert!(unbase32("not base32!").is_none());
    }

    fn open_users(path: &Path) -> Users {
        let policy = LoginPolicy {
            max_failures: 3,
            lockout: Duration::from_secs(60),
        };
        Users::open(path, None, policy).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn logins_need_both_factors_lock_out_and_refuse_replays() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("users.json");
        let e = create_user(&path, "alice", Role::Analyst, "correct horse battery", None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(e.uri.contains(&e.secret));
        assert!(create_user(&path, "alice", Role::Analyst, "another long one", None).is_err());
        assert!(create_user(&path, "bob", Role::Analyst, "short", None).is_err());
        assert!(create_user(&path, "carol", Role::Score, "long enough pass", None).is_err());
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(!text.contains("correct horse"), "{text}");
        let users = open_users(&path);
        let secret = unbase32(&e.secret).unwrap_or_default();
        let code = totp(&secret, current_step());
        assert_eq!(
            users.login("alice", "wrong password", &code).err(),
            Some(LoginRefusal::Wrong)
        );
        assert_eq!(
            users
                .login("alice", "correct horse battery", "000000")
                .err(),
            if code == "000000" {
                None
            } else {
                Some(LoginRefusal::Wrong)
            }
        );
        let ok = users
            .login("alice", "correct horse battery", &code)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(ok.role, Role::Analyst);
        assert_eq!(
            users.login("alice", "correct horse battery", &code).err(),
            Some(LoginRefusal::Replayed)
        );
        // Three failures in a row: locked, even with the right answers.
        for _ in 0..3 {
            let _ = users.login("alice", "nope nope nope", "123456");
        }
        let next = totp(&secret, current_step() + 1);
        assert!(matches!(
            users.login("alice", "correct horse battery", &next),
            Err(LoginRefusal::Locked(_))
        ));
        // A restart forgets neither the lock-out nor the codes used.
        let restarted = open_users(&path);
        assert!(matches!(
            restarted.login("alice", "correct horse battery", &next),
            Err(LoginRefusal::Locked(_))
        ));
        // Names that are no user are not tracked.
        let _ = restarted.login("4111111111111111", "whatever whatever", "123456");
        let state =
            std::fs::read_to_string(dir.path().join("users.state.json")).unwrap_or_default();
        assert!(!state.contains("4111111111111111"), "{state}");
        // Disabled users cannot log in.
        set_disabled(&path, "alice", true).unwrap_or_else(|e| panic!("{e}"));
        assert!(!users.active("alice"));
    }
}
