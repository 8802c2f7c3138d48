//! Lowercase hexadecimal: keys, digests and tokens as text, and back.

/// `bytes` as lowercase hexadecimal, two digits a byte.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push(&mut out, bytes);
    out
}

/// Appends `bytes` to `out` as lowercase hexadecimal (no formatting machinery: this runs
/// several times for every scored transaction).
pub fn push(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// The bytes of a hexadecimal text (either case, surrounding space ignored); None when it is
/// not an even number of hexadecimal digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let t = text.trim().as_bytes();
    if !t.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16);
    t.chunks(2)
        .map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(encode(&[0, 0xab, 0x7f]), "00ab7f");
        assert_eq!(decode(" 00AB7f\n"), Some(vec![0, 0xab, 0x7f]));
        for bad in ["0", "zz", "0g", "\u{e9}a"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
