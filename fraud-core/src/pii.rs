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
    /// The operating system gave no randomness for a one-off key.
    #[error("no randomness from the operating system for a one-off tokenization key")]
    NoRandomness,
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
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && luhn_ok(digits.bytes().map(|b| b - b'0'))
}

/// The Luhn check on digit values (0-9), most significant first.
fn luhn_ok(values: impl DoubleEndedIterator<Item = u8>) -> bool {
    let mut sum = 0u32;
    for (i, v) in values.rev().enumerate() {
        let mut d = u32::from(v);
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
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

    /// The card's mask: never more than the first 6 and the last 4 digits, and always at
    /// least 6 digits hidden (a 16-digit number shows 6 and 4; a 12-digit one 2 and 4).
    pub fn mask(&self) -> String {
        mask_digits(&self.0)
    }
}

/// The mask of a string of digits: at most the first 6 and the last 4 shown, at least 6
/// hidden as `*` (the last 4 are shown first, then up to 6 leading ones).
pub fn mask_digits(d: &str) -> String {
    let n = d.len();
    let shown = n.saturating_sub(6).min(10);
    let last = shown.min(4);
    let first = shown - last;
    let mut out = String::with_capacity(n);
    out.push_str(d.get(..first).unwrap_or(""));
    out.extend(std::iter::repeat_n('*', n - shown));
    out.push_str(d.get(n - last..).unwrap_or(""));
    out
}

/// Shortest and longest card numbers looked for in free text (ISO/IEC 7812 numbers of 13 to
/// 19 digits).
const PAN_MIN: usize = 13;
const PAN_MAX: usize = 19;

/// The spans (byte ranges) of `s` that hold a card number: a run of 13 to 19 digits that
/// passes the Luhn check, the digits possibly separated by single spaces, dashes, dots or
/// slashes ("4111 1111-1111 1111"). Within a longer run of digits every window of 13 to 19
/// digits is checked, so a card number glued to other digits is found too.
pub fn card_number_spans(s: &str) -> Vec<std::ops::Range<usize>> {
    let b = s.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // One run: digits, with single separators between them.
        let mut digits: Vec<usize> = Vec::new();
        let mut j = i;
        while j < b.len() {
            if b[j].is_ascii_digit() {
                digits.push(j);
                j += 1;
            } else if matches!(b[j], b' ' | b'-' | b'.' | b'/' | b'\t')
                && b.get(j + 1).is_some_and(u8::is_ascii_digit)
            {
                j += 1;
            } else {
                break;
            }
        }
        if digits.len() >= PAN_MIN {
            let values: Vec<u8> = digits.iter().map(|&k| b[k] - b'0').collect();
            let mut start_hidden: Option<usize> = None;
            let mut end_hidden = 0usize;
            for len in PAN_MIN..=PAN_MAX.min(values.len()) {
                for start in 0..=values.len() - len {
                    if luhn_ok(values[start..start + len].iter().copied()) {
                        start_hidden = Some(start_hidden.map_or(start, |h| h.min(start)));
                        end_hidden = end_hidden.max(start + len);
                    }
                }
            }
            if let Some(first) = start_hidden {
                spans.push(digits[first]..digits[end_hidden - 1] + 1);
            }
        }
        i = j;
    }
    spans
}

/// Whether `s` holds a card number anywhere (see [`card_number_spans`]) or data shaped like a
/// magnetic stripe's track (`;PAN=YYMM...`, `%BPAN^NAME^YYMM...`).
pub fn holds_card_data(s: &str) -> bool {
    !card_number_spans(s).is_empty() || looks_like_track(s)
}

/// Track 1 (`%B` + digits + `^`) or track 2 (12+ digits, `=` or `D`, 4+ digits) shaped data.
fn looks_like_track(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let run = i - start;
            if run >= 12 && i < b.len() {
                let sep = b[i];
                let after = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
                // Track 2 (`;PAN=YYMM...`, `D` in some readers' output); not digits inside a
                // longer word such as a hexadecimal hash (`...a0123456789012d4567...`).
                let inside_word = start >= 1 && b[start - 1].is_ascii_alphanumeric();
                if (sep == b'=' || sep == b'D' || sep == b'd') && after >= 4 && !inside_word {
                    return true;
                }
                if sep == b'^' && start >= 1 && matches!(b[start - 1], b'B' | b'b') {
                    return true;
                }
            }
        } else {
            i += 1;
        }
    }
    false
}

/// `s` with every card number (see [`card_number_spans`]) replaced by `[card number
/// removed]`: the one sanitizer every error message, log line and metric label passes
/// through at the edge.
pub fn redact(s: &str) -> std::borrow::Cow<'_, str> {
    let spans = card_number_spans(s);
    if spans.is_empty() && !looks_like_track(s) {
        return std::borrow::Cow::Borrowed(s);
    }
    if spans.is_empty() {
        return std::borrow::Cow::Owned("[card data removed]".to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for r in spans {
        out.push_str(&s[at..r.start]);
        out.push_str("[card number removed]");
        at = r.end;
    }
    out.push_str(&s[at..]);
    if looks_like_track(&out) {
        return std::borrow::Cow::Owned("[card data removed]".to_string());
    }
    std::borrow::Cow::Owned(out)
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

    /// A tokenizer with a one-off key from the operating system's generator: its tokens
    /// only compare with each other, within this process.
    pub fn one_off() -> Result<Self, PiiError> {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut_slice()).map_err(|_| PiiError::NoRandomness)?;
        Tokenizer::new(key.as_slice())
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
        crate::hex::push(&mut out, &tag[..16]);
        out
    }

    /// The card token of an id standing in for a card (a customer or account id, when the
    /// data has no card): `tok_` and 32 hex digits, keyed as card tokens are and separated
    /// from them (an id and a card number with the same digits get different tokens).
    pub fn token_of_id(&self, id: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        mac.update(b"card-id\0");
        mac.update(id.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut out = String::with_capacity(TOKEN_PREFIX.len() + 32);
        out.push_str(TOKEN_PREFIX);
        crate::hex::push(&mut out, &tag[..16]);
        out
    }

    /// HMAC-SHA-256 of `bytes` under the tokenization key, as hex: a fingerprint of data that
    /// may hold personal fields (e.g. a request, to recognise a retry) which reveals nothing
    /// without the key. Domain-separated from card tokens.
    pub fn fingerprint(&self, bytes: &[u8]) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        mac.update(b"fingerprint\0");
        mac.update(bytes);
        crate::hex::encode(&mac.finalize().into_bytes())
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
    fn masks_hide_at_least_six_digits() {
        let m = |d: &str| mask_digits(d);
        assert_eq!(m("4111111111111111"), "411111******1111");
        assert_eq!(m("675971123403340"), "67597******3340");
        assert_eq!(m("675971113340"), "67******3340");
        assert_eq!(m("6759711233405"), "675******3405");
        assert_eq!(m("4111111111111111111"), "411111*********1111");
        for n in 12..=19 {
            let d: String = "1234567890123456789".chars().take(n).collect();
            let masked = m(&d);
            let hidden = masked.chars().filter(|&c| c == '*').count();
            assert!(hidden >= 6, "{masked}");
            assert!(n - hidden <= 10, "{masked}");
            assert_eq!(masked.len(), n);
        }
        assert_eq!(
            CardNumber::parse("6759 7111 3344").map(|c| c.mask()),
            Ok("67******3344".into())
        );
    }

    #[test]
    fn card_numbers_are_found_in_any_spacing_and_removed() {
        for text in [
            "4556405440559871",
            "invalid type: integer `4556405440559871`, expected a string",
            "unknown field `4556-4054-4055-9871`",
            "id 4556 4054 4055 9871 here",
            "x4556.4054.4055.9871y",
            "99994556405440559871000",
            "378282246310005",
        ] {
            assert!(holds_card_data(text), "{text}");
            let clean = redact(text);
            assert!(!clean.contains("4556"), "{clean}");
            assert!(!holds_card_data(&clean), "{clean}");
        }
        assert!(holds_card_data(";4556405440559872=25121010000000000000?"));
        assert!(holds_card_data("%B4556405440559872^DOE/JOHN^2512101"));
        assert!(holds_card_data("4556405440559872=2512101"));
        // A hash whose digits happen to look like track data (twelve digits, `d`, four
        // more) is not card data: the message around it is kept.
        let hash =
            "head 7a0123456789012d4567ffaabbccddeeff0a1b2c3d4e5f6a7b8c9d0e1f2a3b not in the log";
        assert!(!holds_card_data(hash), "{hash}");
        assert_eq!(redact(hash), hash);
        for text in [
            "order 12345",
            "1234567890",
            "2024-05-01T10:00:00Z",
            "4556405440559872",
            "t-1-2-3",
        ] {
            assert!(!holds_card_data(text), "{text}");
            assert_eq!(redact(text), text);
        }
    }

    #[test]
    fn hex_is_two_lowercase_digits_a_byte() {
        assert_eq!(
            crate::hex::encode(&[0x00, 0x0f, 0x10, 0xab, 0xff]),
            "000f10abff"
        );
        assert_eq!(crate::hex::encode(&[]), "");
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
