//! Lowercase hexadecimal: keys, digests and tokens as text, and back (the `hex` crate, with
//! an appending form for the hot path).

/// `bytes` as lowercase hexadecimal, two digits a byte (one allocation of the right size,
/// filled a slice at a time: the `hex` crate's `encode` pushes one character at a time).
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push(&mut out, bytes);
    out
}

/// Appends `bytes` to `out` as lowercase hexadecimal (through a stack buffer: this runs
/// several times for every scored transaction, and allocates nothing).
pub fn push(out: &mut String, bytes: &[u8]) {
    let mut buf = [0u8; 128];
    for chunk in bytes.chunks(buf.len() / 2) {
        let text = &mut buf[..chunk.len() * 2];
        if hex::encode_to_slice(chunk, text).is_ok() {
            // Hexadecimal digits are ASCII.
            out.push_str(std::str::from_utf8(text).unwrap_or_default());
        }
    }
}

/// The bytes of a hexadecimal text (either case, surrounding space ignored); None when it is
/// not an even number of hexadecimal digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    hex::decode(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(encode(&[0, 0xab, 0x7f]), "00ab7f");
        assert_eq!(decode(" 00AB7f\n"), Some(vec![0, 0xab, 0x7f]));
        let long: Vec<u8> = (0..=255).collect();
        let mut pushed = String::from("x");
        push(&mut pushed, &long);
        assert_eq!(encode(&long), hex::encode(&long));
        assert_eq!(encode(&[]), "");
        assert_eq!(pushed, format!("x{}", encode(&long)));
        assert_eq!(decode(&pushed[1..]), Some(long));
        for bad in ["0", "zz", "0g", "\u{e9}a"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
