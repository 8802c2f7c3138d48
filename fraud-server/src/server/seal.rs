//! Encryption at rest (AES-256-GCM, RustCrypto): the content of decision-log records and the
//! state snapshots are sealed with a key kept outside the data directory
//! (`encryption_key_file`). Each sealed value is a random 96-bit nonce followed by the
//! ciphertext and its tag; the hash chain covers the sealed bytes, so `fraud audit verify`
//! needs no key.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;

/// A sealing key.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer from exactly 32 key bytes.
    pub fn new(key: &[u8]) -> Result<Self, String> {
        if key.len() != 32 {
            return Err(format!(
                "the encryption key must be 32 bytes (found {})",
                key.len()
            ));
        }
        Aes256Gcm::new_from_slice(key)
            .map(|cipher| Sealer { cipher })
            .map_err(|e| e.to_string())
    }

    /// A sealer from a key file (exactly 32 bytes).
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let key =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Sealer::new(&key).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Seals `plain` (with `aad`, authenticated but not secret).
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        let nonce = nonce()?;
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                aes_gcm::aead::Payload { msg: plain, aad },
            )
            .map_err(|_| "encryption failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens what [`Sealer::seal`] produced (wrong key, `aad` or damage: an error).
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < 12 + 16 {
            return Err("sealed data cut short".into());
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(&sealed[..12]),
                aes_gcm::aead::Payload {
                    msg: &sealed[12..],
                    aad,
                },
            )
            .map_err(|_| {
                "cannot decrypt: wrong encryption key, or the data was altered".to_string()
            })
    }

    /// Seals to base64 text.
    pub fn seal_text(&self, plain: &[u8], aad: &[u8]) -> Result<String, String> {
        Ok(base64::engine::general_purpose::STANDARD.encode(self.seal(plain, aad)?))
    }

    /// Opens base64 text.
    pub fn open_text(&self, text: &str, aad: &[u8]) -> Result<Vec<u8>, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "sealed data is not base64".to_string())?;
        self.open(&bytes, aad)
    }
}

/// A fresh random 96-bit nonce. The bytes come from the operating system's generator, read
/// a few kilobytes at a time per thread rather than by one system call per nonce (a scored
/// transaction seals several fields).
fn nonce() -> Result<[u8; 12], String> {
    use std::cell::RefCell;
    const BUFFER: usize = 12 * 341;
    thread_local! {
        static POOL: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
    }
    POOL.with(|p| {
        let (bytes, used) = &mut *p.borrow_mut();
        if *used + 12 > bytes.len() {
            bytes.resize(BUFFER, 0);
            getrandom::fill(bytes).map_err(|_| "no randomness from the OS".to_string())?;
            *used = 0;
        }
        let mut n = [0u8; 12];
        n.copy_from_slice(&bytes[*used..*used + 12]);
        // Each nonce is used once: its bytes are wiped from the pool.
        bytes[*used..*used + 12].fill(0);
        *used += 12;
        Ok(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_refuses_the_wrong_key_or_altered_data() {
        let s = Sealer::new(&[7u8; 32]).unwrap_or_else(|e| panic!("{e}"));
        let sealed = s.seal_text(b"secret", b"ctx").unwrap_or_default();
        assert_eq!(s.open_text(&sealed, b"ctx").ok(), Some(b"secret".to_vec()));
        assert!(s.open_text(&sealed, b"other").is_err());
        let other = Sealer::new(&[8u8; 32]).unwrap_or_else(|e| panic!("{e}"));
        assert!(other.open_text(&sealed, b"ctx").is_err());
        assert!(Sealer::new(&[1u8; 16]).is_err());
        assert_ne!(
            s.seal(b"x", b"").unwrap_or_default(),
            s.seal(b"x", b"").unwrap_or_default()
        );
    }
}
