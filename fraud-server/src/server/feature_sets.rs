//! Feature sets: a decision record holds its feature row as a list of values and the id of
//! the list of names they go with (`"features": [...]`, `"feature_set": "<id>"`), not the
//! names themselves: 68 names were 2.4 KiB of a 3.9 KiB record, written, hashed and stored
//! with every decision. The names are kept once per set, beside the log (`feature-sets.json`
//! in the log directory) or in the store (`fraud_feature_sets`), before the first record
//! that uses them is written. Readers name the values again ([`name_features`]); a set's id
//! is a hash of its names, so a set read back is checked against the id the (chained)
//! record holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::decisions::LogError;

/// The file of a log directory that holds its feature sets (id -> names).
pub const FILE: &str = "feature-sets.json";

/// The id of the feature set `names`: the first 128 bits of a SHA-256 of the names (each
/// preceded by its length, so that no two lists share their bytes), in hex.
pub fn set_id(names: &[String]) -> String {
    let mut h = Sha256::new();
    for n in names {
        h.update((n.len() as u64).to_le_bytes());
        h.update(n.as_bytes());
    }
    fraud_core::hex::encode(&h.finalize()[..16])
}

/// Replaces a record's feature values (`data["features"]`, a list) by an object of the
/// same values by name, when `names` (the record's set) has one name per value. A record
/// written before sets (its features an object already) is left as it is.
pub fn name_features(data: &mut Value, names: &[String]) {
    let Some(values) = data.get("features").and_then(Value::as_array) else {
        return;
    };
    if values.len() != names.len() {
        return;
    }
    let named: serde_json::Map<String, Value> =
        names.iter().cloned().zip(values.iter().cloned()).collect();
    data["features"] = Value::Object(named);
    if let Some(m) = data.as_object_mut() {
        m.remove("feature_set");
    }
}

/// The feature set id a record names, if its features are a list of values.
pub fn record_set(data: &Value) -> Option<&str> {
    data.get("features")
        .filter(|f| f.is_array())
        .and(data.get("feature_set"))
        .and_then(Value::as_str)
}

/// The feature sets of a log directory, in its `feature-sets.json`. One per open log: its
/// lock keeps two sets kept at once from losing one another.
#[derive(Debug)]
pub struct FileSets {
    path: PathBuf,
    lock: std::sync::Mutex<()>,
}

impl FileSets {
    /// The sets kept in log directory `dir`.
    pub fn new(dir: &Path) -> Self {
        FileSets {
            path: dir.join(FILE),
            lock: std::sync::Mutex::new(()),
        }
    }

    fn io(&self, e: std::io::Error) -> LogError {
        LogError::Io {
            path: self.path.clone(),
            source: e,
        }
    }

    /// Every set of the file (none when it does not exist); sets whose names do not hash
    /// to their id are left out.
    fn read(&self) -> Result<BTreeMap<String, Vec<String>>, LogError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(self.io(e)),
        };
        let sets: BTreeMap<String, Vec<String>> = serde_json::from_slice(&bytes).map_err(|e| {
            self.io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a JSON object of feature name lists: {e}"),
            ))
        })?;
        Ok(sets
            .into_iter()
            .filter(|(id, names)| set_id(names) == *id)
            .collect())
    }

    /// Keeps set `names` (durably: written, synced and renamed into place) unless the file
    /// holds it already. Returns its id.
    pub fn keep(&self, names: &[String]) -> Result<String, LogError> {
        let id = set_id(names);
        let _g = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut sets = self.read()?;
        if !sets.contains_key(&id) {
            sets.insert(id.clone(), names.to_vec());
            let bytes =
                serde_json::to_vec_pretty(&sets).map_err(|e| self.io(std::io::Error::other(e)))?;
            fraud_core::files::write_atomic(&self.path, &bytes).map_err(|e| self.io(e))?;
        }
        Ok(id)
    }

    /// The names of set `id`, if the file holds it.
    pub fn names(&self, id: &str) -> Result<Option<Vec<String>>, LogError> {
        Ok(self.read()?.remove(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ids_tell_lists_apart() {
        assert_eq!(set_id(&names(&["a", "b"])), set_id(&names(&["a", "b"])));
        assert_ne!(set_id(&names(&["a", "b"])), set_id(&names(&["b", "a"])));
        assert_ne!(set_id(&names(&["ab"])), set_id(&names(&["a", "b"])));
        assert_eq!(set_id(&names(&["a"])).len(), 32);
    }

    #[test]
    fn sets_are_kept_once_and_checked_when_read() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let sets = FileSets::new(dir.path());
        let a = names(&["x", "y"]);
        let b = names(&["x", "y", "z"]);
        let ia = sets.keep(&a).unwrap_or_else(|e| panic!("{e}"));
        let ib = sets.keep(&b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sets.keep(&a).unwrap_or_else(|e| panic!("{e}")), ia);
        let again = FileSets::new(dir.path());
        assert_eq!(again.names(&ia).unwrap_or_default(), Some(a));
        assert_eq!(again.names(&ib).unwrap_or_default(), Some(b.clone()));
        assert_eq!(again.names("0000").unwrap_or_default(), None);
        // A set whose names were changed in the file no longer answers to its id.
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap_or_default();
        std::fs::write(dir.path().join(FILE), text.replace("\"z\"", "\"w\""))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.names(&ib).unwrap_or_default(), None);
        // A damaged file is an error naming it.
        std::fs::write(dir.path().join(FILE), "[").unwrap_or_else(|e| panic!("{e}"));
        let e = again
            .names(&ia)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(FILE), "{e}");
    }

    #[test]
    fn values_are_named_again() {
        let n = names(&["a", "b"]);
        let mut rec = json!({"features": [1.5, null], "feature_set": set_id(&n), "x": 1});
        assert_eq!(record_set(&rec), Some(set_id(&n).as_str()));
        name_features(&mut rec, &n);
        assert_eq!(rec, json!({"features": {"a": 1.5, "b": null}, "x": 1}));
        // Records written with names are left as they are.
        let before = rec.clone();
        assert_eq!(record_set(&rec), None);
        name_features(&mut rec, &n);
        assert_eq!(rec, before);
        // A list of another length is not named by the wrong set.
        let mut rec = json!({"features": [1.0], "feature_set": "x"});
        name_features(&mut rec, &n);
        assert_eq!(rec["features"], json!([1.0]));
    }
}
