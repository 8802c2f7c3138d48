//! Strict JSON: finds a name given twice in one object (`{"amount": "1", "amount": "1000"}`),
//! which serde_json's `Value` and most parsers accept silently, keeping one of the two, so
//! that a checkout system and the scorer could read different values from the same body.
//!
//! [`duplicate_name`] walks the document once without building it and names the first
//! duplicated member by its path (`transactions[3].amount`), never by a value.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The reason given for a duplicated member, wherever it is refused.
pub const DUPLICATE_REASON: &str = "is given twice in the same object; each name may appear once";

/// Maximum nesting walked (deeper documents are refused by serde_json itself at 128).
const MAX_DEPTH: usize = 128;

/// The path of the first member whose name appears twice in the same object of `bytes`, or
/// `None` when every object's names are distinct (or `bytes` is not JSON: the caller's own
/// parse then says what is wrong).
pub fn duplicate_name(bytes: &[u8]) -> Option<String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut found = None;
    let walk = Walk {
        path: String::new(),
        found: &mut found,
        depth: 0,
    };
    let _ = walk.deserialize(&mut de);
    found
}

/// One value being walked: where it is and where to put the finding.
struct Walk<'a> {
    path: String,
    found: &'a mut Option<String>,
    depth: usize,
}

/// Stops the walk at the first duplicate (serde needs an error type to unwind).
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("duplicate name")
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(serde::de::Error::custom(Stop));
        }
        let mut i = 0usize;
        loop {
            let child = Walk {
                path: format!("{}[{i}]", self.path),
                found: &mut *self.found,
                depth: self.depth + 1,
            };
            if seq.next_element_seed(child)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(serde::de::Error::custom(Stop));
        }
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                name.clone()
            } else {
                format!("{}.{name}", self.path)
            };
            if !seen.insert(name) {
                *self.found = Some(path);
                return Err(serde::de::Error::custom(Stop));
            }
            map.next_value_seed(Walk {
                path,
                found: &mut *self.found,
                depth: self.depth + 1,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::duplicate_name;

    #[test]
    fn names_the_first_duplicate_by_its_path() {
        assert_eq!(duplicate_name(br#"{"a":1,"b":2}"#), None);
        assert_eq!(
            duplicate_name(br#"{"amount":"1","x":[1,{"y":2}],"amount":"1000"}"#),
            Some("amount".into())
        );
        assert_eq!(
            duplicate_name(br#"{"transactions":[{"a":1},{"a":1,"b":{"c":1,"c":2}}]}"#),
            Some("transactions[1].b.c".into())
        );
        assert_eq!(
            duplicate_name(br#"{"a\u0062":1,"ab":2}"#),
            Some("ab".into())
        );
        assert_eq!(duplicate_name(b"not json"), None);
        assert_eq!(duplicate_name(b"[1,2,3]"), None);
    }
}
