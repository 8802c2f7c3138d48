//! Signed heads of the decision log (Ed25519).
//!
//! The log's chain is plain SHA-256: whoever can write the files could rewrite every record
//! after a change and recompute the hashes, and only a head published outside would show it.
//! With a signing key (`audit_signing_key_file`, kept outside the data directory), the
//! service writes a `signed_head` record into the chain at start and every
//! `audit_sign_interval_s` while records arrive: the signature covers the record count and
//! the head hash before it, so no record up to a signed head can be changed, inserted or
//! removed without the key. `fraud audit verify --public-key` checks every signed head
//! against the chain; `fraud audit head --signing-key` prints a signed head to publish.
//!
//! Key file: 32 bytes (the Ed25519 seed), raw or as 64 hex digits. `fraud audit keygen`
//! makes one (mode 0600) and prints its public key.

use std::path::Path;

use ed25519_dalek::{Signer, Verifier};
use zeroize::Zeroize;

/// Why a signing or public key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HeadKeyError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a key.
    #[error("{0}")]
    Invalid(String),
}

/// The record kind of a signed head.
pub const KIND: &str = "signed_head";

/// The bytes a head's signature covers.
pub fn message(records: u64, head: &str) -> Vec<u8> {
    format!("fraud decision log head v1\n{records}\n{head}").into_bytes()
}

/// 32 bytes, raw or as 64 hex digits (whitespace around ignored).
fn key_bytes(bytes: &[u8]) -> Option<[u8; 32]> {
    if bytes.len() == 32 {
        return bytes.try_into().ok();
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The service's signing key.
pub struct HeadSigner {
    key: ed25519_dalek::SigningKey,
}

impl HeadSigner {
    /// Reads a signing key file.
    pub fn from_file(path: &Path) -> Result<Self, HeadKeyError> {
        let mut bytes = std::fs::read(path).map_err(|source| HeadKeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let seed = key_bytes(&bytes);
        bytes.zeroize();
        let Some(mut seed) = seed else {
            return Err(HeadKeyError::Invalid(format!(
                "{}: not an Ed25519 signing key (32 bytes, raw or 64 hex digits)",
                path.display()
            )));
        };
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        seed.zeroize();
        Ok(HeadSigner { key })
    }

    /// A new random key: (signer, the seed to store).
    pub fn generate() -> Result<(Self, [u8; 32]), HeadKeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|_| HeadKeyError::Invalid("no randomness from the operating system".into()))?;
        Ok((
            HeadSigner {
                key: ed25519_dalek::SigningKey::from_bytes(&seed),
            },
            seed,
        ))
    }

    /// The public key, 64 hex digits: what auditors verify with.
    pub fn public_hex(&self) -> String {
        fraud_core::hex::encode(self.key.verifying_key().as_bytes())
    }

    /// The signature (128 hex digits) of the head after `records` records.
    pub fn sign(&self, records: u64, head: &str) -> String {
        fraud_core::hex::encode(&self.key.sign(&message(records, head)).to_bytes())
    }
}

/// A public key to verify signed heads with.
pub struct HeadVerifier {
    key: ed25519_dalek::VerifyingKey,
}

impl HeadVerifier {
    /// From 64 hex digits, or a file holding them.
    pub fn parse(text_or_file: &str) -> Result<Self, HeadKeyError> {
        let bytes = match key_bytes(text_or_file.as_bytes()) {
            Some(b) => b,
            None => {
                let content = std::fs::read(text_or_file).map_err(|source| HeadKeyError::Io {
                    path: text_or_file.to_string(),
                    source,
                })?;
                key_bytes(&content).ok_or_else(|| {
                    HeadKeyError::Invalid(format!(
                        "{text_or_file}: not an Ed25519 public key (64 hex digits)"
                    ))
                })?
            }
        };
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| HeadKeyError::Invalid("not a valid Ed25519 public key".into()))?;
        Ok(HeadVerifier { key })
    }

    /// The public key, 64 hex digits.
    pub fn public_hex(&self) -> String {
        fraud_core::hex::encode(self.key.as_bytes())
    }

    /// Whether `signature` (128 hex digits) signs the head after `records` records.
    pub fn verify(&self, records: u64, head: &str, signature: &str) -> bool {
        let s = signature.trim();
        if s.len() != 128 {
            return false;
        }
        let mut b = [0u8; 64];
        for (i, o) in b.iter_mut().enumerate() {
            match s
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => *o = v,
                None => return false,
            }
        }
        self.key
            .verify(
                &message(records, head),
                &ed25519_dalek::Signature::from_bytes(&b),
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_the_count_and_the_head() {
        let (signer, seed) = HeadSigner::generate().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("k");
        std::fs::write(&path, fraud_core::hex::encode(&seed)).unwrap_or_else(|e| panic!("{e}"));
        let again = HeadSigner::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.public_hex(), signer.public_hex());
        let v = HeadVerifier::parse(&signer.public_hex()).unwrap_or_else(|e| panic!("{e}"));
        let head = "ab".repeat(32);
        let sig = signer.sign(7, &head);
        assert!(v.verify(7, &head, &sig));
        assert!(!v.verify(8, &head, &sig));
        assert!(!v.verify(7, &"cd".repeat(32), &sig));
        assert!(!v.verify(7, &head, "00"));
        let (other, _) = HeadSigner::generate().unwrap_or_else(|e| panic!("{e}"));
        assert!(!v.verify(7, &head, &other.sign(7, &head)));
        assert!(HeadSigner::from_file(&dir.path().join("missing")).is_err());
    }
}
