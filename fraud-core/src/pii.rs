//! Card-number protection: a keyed token (HMAC-SHA-256) and a mask (first 6 / last 4).
//!
//! A raw card number lives only inside [`CardNumber`], which cannot be printed (its `Debug`
//! shows the mask), is wiped from memory when dropped, and is turned into a
//! [`ProtectedCard`] at the boundary. Everything downstream (features, state, logs, responses)
//! sees only the token and the mask. This module does not store keys: the caller loads the
//! tokenization key from a file or the environment.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Why a card number or key was refused. Messages never contain the number.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PiiError {
    /// Not 12 to 19 digits (spaces and dashes aside).
    #[error("card number must have 12 to 19 digits (found {0})")]
    Length(usize),
    /// A character other than a digit, space or dash.
    #[error("card number may contain only digits, spaces and dashes")]
    Characters,
    /// The Luhn check digit is wrong.
    #[error("card number fails the Luhn check")]
    Luhn,
    /// The tokenization key is too short.
    #[error("tokenization key must be at least 32 bytes (found {0})")]
    KeyLength(usize),
}

/// A validated raw card number (digits only). Never printed; wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct CardNumber(String);

impl std::fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CardNumber({})", self.mask())
    }
}

/// Whether `digits` passes the Luhn check.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(c.wrapping_sub(b'0'));
        if d > 9 {
            return false;
        }
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

impl CardNumber {
    /// Validates a card number: 12 to 19 digits (spaces and dashes are ignored), Luhn check.
    pub fn parse(raw: &str) -> Result<Self, PiiError> {
        let mut digits = String::with_capacity(19);
        for c in raw.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' => {}
                _ => {
                    digits.zeroize();
                    return Err(PiiError::Characters);
                }
            }
        }
        let n = digits.len();
        if !(12..=19).contains(&n) {
            digits.zeroize();
            return Err(PiiError::Length(n));
        }
        if !luhn_valid(&digits) {
            digits.zeroize();
            return Err(PiiError::Luhn);
        }
        Ok(CardNumber(digits))
    }

    /// First 6 and last 4 digits, the rest as `*`.
    pub fn mask(&self) -> String {
        let d = &self.0;
        let n = d.len();
        format!("{}{}{}", &d[..6], "*".repeat(n - 10), &d[n - 4..])
    }
}

/// A tokenization key with the HMAC-SHA-256 it keys.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Tokenizer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokenizer(<key hidden>)")
    }
}

/// Prefix of every card token.
pub const TOKEN_PREFIX: &str = "tok_";

impl Tokenizer {
    /// A tokenizer from a secret key of at least 32 bytes.
    pub fn new(key: &[u8]) -> Result<Self, PiiError> {
        if key.len() < 32 {
            return Err(PiiError::KeyLength(key.len()));
        }
        Ok(Tokenizer { key: key.to_vec() })
    }

    /// The keyed token of a card: `tok_` and 32 hex digits (128 bits of HMAC-SHA-256). The
    /// same card and key always give the same token; without the key it reveals nothing.
    pub fn token(&self, card: &CardNumber) -> String {
        // A key of any length is valid for HMAC; `new` guarantees 32 bytes or more.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        mac.update(card.0.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut out = String::with_capacity(TOKEN_PREFIX.len() + 32);
        out.push_str(TOKEN_PREFIX);
        push_hex(&mut out, &tag[..16]);
        out
    }

    /// Token and mask of a card; the raw number is dropped (and wiped) by the caller.
    pub fn protect(&self, card: &CardNumber) -> ProtectedCard {
        ProtectedCard {
            token: self.token(card),
            mask: Some(card.mask()),
        }
    }
}

/// What remains of a card after the boundary: its token and, when the raw number was seen,
/// its mask.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProtectedCard {
    /// Keyed token (`tok_` + 32 hex digits).
    pub token: String,
    /// First 6 / last 4, or `None` when the caller sent a token.
    pub mask: Option<String>,
}

/// A value as an error message may quote it: in backticks, at most 32 characters, and not
/// at all when it holds 12 or more digits (it could be, or contain, a card number).
pub fn quoted(s: &str) -> String {
    if s.chars().filter(char::is_ascii_digit).count() >= 12 {
        return "(value not shown)".to_string();
    }
    format!("`{}`", s.chars().take(32).collect::<String>())
}

/// Whether `s` has the shape of a card token.
pub fn is_token(s: &str) -> bool {
    s.strip_prefix(TOKEN_PREFIX)
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `bytes` as lowercase hexadecimal, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends `bytes` to `out` as lowercase hexadecimal (no formatting machinery: this runs
/// several times for every scored transaction).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_quote_values_short_and_never_a_card_number() {
        assert_eq!(quoted("EURO"), "`EURO`");
        assert_eq!(quoted(&"x".repeat(40)), format!("`{}`", "x".repeat(32)));
        for card in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "pan=411111111111",
        ] {
            assert_eq!(quoted(card), "(value not shown)");
        }
        assert_eq!(quoted("12345678901"), "`12345678901`");
    }

    #[test]
    fn hex_is_two_lowercase_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0x10, 0xab, 0xff]), "000f10abff");
        assert_eq!(hex(&[]), "");
    }

    const VISA: &str = "4111 1111 1111 1111";

    #[test]
    fn luhn_and_shapes() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(CardNumber::parse(VISA).is_ok());
        assert!(CardNumber::parse("4111-1111-1111-1111").is_ok());
        assert_eq!(
            CardNumber::parse("4111111111111112").unwrap_err(),
            PiiError::Luhn
        );
        assert_eq!(CardNumber::parse("4111").unwrap_err(), PiiError::Length(4));
        assert_eq!(
            CardNumber::parse("4111x111").unwrap_err(),
            PiiError::Characters
        );
    }

    #[test]
    fn mask_token_and_no_leak() {
        let c = CardNumber::parse(VISA).unwrap();
        assert_eq!(c.mask(), "411111******1111");
        let t = Tokenizer::new(&[7u8; 32]).unwrap();
        let tok = t.token(&c);
        assert!(is_token(&tok), "{tok}");
        assert_eq!(
            tok,
            t.token(&CardNumber::parse("4111111111111111").unwrap())
        );
        let other = Tokenizer::new(&[8u8; 32]).unwrap();
        assert_ne!(tok, other.token(&c), "the key matters");
        for shown in [
            format!("{c:?}"),
            format!("{t:?}"),
            format!("{:?}", t.protect(&c)),
        ] {
            assert!(!shown.contains("4111111111111111"), "{shown}");
            assert!(!shown.contains("1111 1111"), "{shown}");
        }
        let bad = CardNumber::parse("4111111111111112")
            .unwrap_err()
            .to_string();
        assert!(!bad.contains("4111"), "{bad}");
        assert!(Tokenizer::new(b"short").is_err());
    }
}
