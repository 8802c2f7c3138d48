//! The model artifact file: what `fraud import` and `fraud train` write and the service loads.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! offset  size  content
//! 0       8     magic "FRAUDGBT"
//! 8       4     format version (u32, currently 1)
//! 12      4     metadata length M (u32)
//! 16      M     metadata, UTF-8 JSON (feature names, source, created, training summary, ...)
//! 16+M    8     ensemble length E (u64)
//! 24+M    E     the ensemble, encoded with postcard
//! 24+M+E  32    SHA-256 of every byte before it
//! ```
//!
//! Metadata is JSON so it can grow new optional fields without a format change; the ensemble
//! is postcard because it is large and only this crate reads it. Reading checks, in order:
//! magic, version, lengths, checksum, decoding, then the ensemble's structure, and names the
//! first thing that is wrong. Nothing in a file can make the reader panic.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Ensemble, ModelError};

/// First bytes of every artifact.
pub const ARTIFACT_MAGIC: &[u8; 8] = b"FRAUDGBT";
/// The format version this build writes and reads.
pub const ARTIFACT_VERSION: u32 = 1;

const HEADER: usize = 16;
const CHECKSUM: usize = 32;
/// Largest metadata section accepted (guards allocations on hostile files).
const MAX_METADATA: usize = 64 << 20;

/// Descriptive data stored beside the trees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Feature names in column order (the same as the ensemble's).
    pub feature_names: Vec<String>,
    /// What produced the model, e.g. `xgboost 3.2.0` or `lightgbm v4`.
    pub source: String,
    /// When the artifact was created, RFC 3339 UTC.
    pub created: String,
    /// Free-form description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Training summary (parameters, rows, validation metric, importance) when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
    /// Other string attributes carried over from the source.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// The feature spec whose features the model was trained on, so the model always gets
    /// the features it expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_spec: Option<crate::features::FeatureSpec>,
    /// Categorical features scored by value: feature name -> its categories in code order
    /// (code `i` is `categories[i]`; strings or numbers). From XGBoost's and LightGBM's own
    /// model files (`cats`, `pandas_categorical`) or from the frame at training time. A value
    /// that is not among them scores as missing, as both libraries do.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categories: BTreeMap<String, Vec<serde_json::Value>>,
}

/// The text a category is matched by: a string as is; a number as its shortest decimal
/// form (`5411`, `1.5`), whether it came as a number or a string holding one.
pub fn category_key(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(number_key(s).unwrap_or_else(|| s.clone())),
        serde_json::Value::Number(n) => n.as_f64().map(float_key),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The key of a numeric value (see [`category_key`]).
pub fn float_key(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn number_key(s: &str) -> Option<String> {
    let t = s.trim();
    if t.is_empty()
        || !t
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
    {
        return None;
    }
    t.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .map(float_key)
}

impl Metadata {
    /// For each categorical feature with stored categories, its value -> code table (keys as
    /// [`category_key`] makes them).
    pub fn category_codes(&self) -> BTreeMap<String, std::collections::HashMap<String, f64>> {
        self.categories
            .iter()
            .map(|(name, cats)| {
                let table = cats
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| category_key(v).map(|k| (k, i as f64)))
                    .collect();
                (name.clone(), table)
            })
            .collect()
    }
}

impl Metadata {
    /// Metadata for `ensemble` from `source`, created now (or at `SOURCE_DATE_EPOCH`, when
    /// that variable holds Unix seconds, so that a build can be reproduced byte for byte).
    pub fn new(ensemble: &Ensemble, source: impl Into<String>) -> Self {
        let created = reproducible_epoch()
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
            .unwrap_or_else(time::OffsetDateTime::now_utc)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "unknown".to_string());
        Metadata {
            feature_names: ensemble.features.iter().map(|f| f.name.clone()).collect(),
            source: source.into(),
            created,
            description: None,
            training: None,
            attributes: BTreeMap::new(),
            feature_spec: None,
            categories: BTreeMap::new(),
        }
    }
}

/// `SOURCE_DATE_EPOCH` (the reproducible-builds convention), when set to Unix seconds.
pub fn reproducible_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

/// A model with its metadata, as stored in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    /// Descriptive data.
    pub metadata: Metadata,
    /// The trees.
    pub ensemble: Ensemble,
}

/// Why an artifact could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not a model artifact at all.
    #[error("not a fraud model artifact: {hint}")]
    Foreign {
        /// What the file looks like instead.
        hint: String,
    },
    /// The file ends before its declared content.
    #[error("truncated model artifact: {0}")]
    Truncated(String),
    /// Written by a format version this build does not read.
    #[error("model artifact format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The content does not match its checksum or does not decode.
    #[error("corrupted model artifact: {0}")]
    Corrupted(String),
    /// The content decodes but is not a valid model.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl Artifact {
    /// An artifact of `ensemble` with fresh metadata naming `source`.
    pub fn new(ensemble: Ensemble, source: impl Into<String>) -> Self {
        let metadata = Metadata::new(&ensemble, source);
        Artifact { metadata, ensemble }
    }

    /// Encodes the artifact.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ArtifactError> {
        self.ensemble.validate()?;
        let meta = serde_json::to_vec(&self.metadata)
            .map_err(|e| ArtifactError::Corrupted(format!("cannot encode metadata: {e}")))?;
        let body = postcard::to_stdvec(&self.ensemble)
            .map_err(|e| ArtifactError::Corrupted(format!("cannot encode ensemble: {e}")))?;
        let meta_len = u32::try_from(meta.len())
            .ok()
            .filter(|&l| (l as usize) <= MAX_METADATA)
            .ok_or_else(|| ArtifactError::Corrupted("metadata is too large".into()))?;
        let mut out = Vec::with_capacity(HEADER + meta.len() + 8 + body.len() + CHECKSUM);
        out.extend_from_slice(ARTIFACT_MAGIC);
        out.extend_from_slice(&ARTIFACT_VERSION.to_le_bytes());
        out.extend_from_slice(&meta_len.to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&body);
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        Ok(out)
    }

    /// Decodes and validates an artifact.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ArtifactError> {
        if bytes.len() < ARTIFACT_MAGIC.len() || &bytes[..8] != ARTIFACT_MAGIC {
            if !bytes.is_empty() && ARTIFACT_MAGIC.starts_with(bytes) {
                return Err(ArtifactError::Truncated(format!(
                    "{} bytes, shorter than the header",
                    bytes.len()
                )));
            }
            return Err(ArtifactError::Foreign {
                hint: describe_foreign(bytes),
            });
        }
        if bytes.len() < HEADER {
            return Err(ArtifactError::Truncated(format!(
                "{} bytes, shorter than the {HEADER}-byte header",
                bytes.len()
            )));
        }
        let version = u32::from_le_bytes(word4(bytes, 8));
        if version != ARTIFACT_VERSION {
            return Err(ArtifactError::UnsupportedVersion {
                found: version,
                supported: ARTIFACT_VERSION,
            });
        }
        let meta_len = u32::from_le_bytes(word4(bytes, 12)) as usize;
        if meta_len > MAX_METADATA {
            return Err(ArtifactError::Corrupted(format!(
                "metadata length {meta_len} is implausible"
            )));
        }
        let body_len_at = HEADER + meta_len;
        if bytes.len() < body_len_at + 8 {
            return Err(ArtifactError::Truncated(format!(
                "file ends inside the metadata ({} of {} bytes)",
                bytes.len().saturating_sub(HEADER),
                meta_len
            )));
        }
        let body_len = u64::from_le_bytes(word8(bytes, body_len_at));
        let body_at = body_len_at + 8;
        let expected = usize::try_from(body_len)
            .ok()
            .and_then(|b| body_at.checked_add(b))
            .and_then(|e| e.checked_add(CHECKSUM));
        let Some(expected) = expected else {
            return Err(ArtifactError::Corrupted(format!(
                "ensemble length {body_len} is implausible"
            )));
        };
        if bytes.len() < expected {
            return Err(ArtifactError::Truncated(format!(
                "{} bytes, but the header declares {expected}",
                bytes.len()
            )));
        }
        if bytes.len() > expected {
            return Err(ArtifactError::Corrupted(format!(
                "{} unexpected bytes after the checksum",
                bytes.len() - expected
            )));
        }
        let (content, checksum) = bytes.split_at(expected - CHECKSUM);
        if Sha256::digest(content).as_slice() != checksum {
            return Err(ArtifactError::Corrupted(
                "SHA-256 checksum does not match the content".into(),
            ));
        }
        let metadata: Metadata = serde_json::from_slice(&bytes[HEADER..body_len_at])
            .map_err(|e| ArtifactError::Corrupted(format!("metadata: {e}")))?;
        let ensemble: Ensemble = postcard::from_bytes(&bytes[body_at..expected - CHECKSUM])
            .map_err(|e| ArtifactError::Corrupted(format!("ensemble: {e}")))?;
        ensemble.validate()?;
        if metadata.feature_names.len() != ensemble.features.len() {
            return Err(ArtifactError::Corrupted(format!(
                "metadata names {} features, the ensemble has {}",
                metadata.feature_names.len(),
                ensemble.features.len()
            )));
        }
        Ok(Artifact { metadata, ensemble })
    }

    /// Writes the artifact to `path` (through a temporary file and a rename, so a crash never
    /// leaves a half-written model under the final name).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ArtifactError> {
        let path = path.as_ref();
        let io = |source| ArtifactError::Io {
            path: path.display().to_string(),
            source,
        };
        let bytes = self.to_bytes()?;
        let tmp = path.with_extension("tmp-write");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads and validates the artifact at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ArtifactError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ArtifactError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// The feature spec the model was trained on (stored with it), or the default spec for
    /// a model stored without one: what the service computes for it.
    pub fn feature_spec(&self) -> crate::features::FeatureSpec {
        self.metadata
            .feature_spec
            .clone()
            .unwrap_or_else(crate::features::FeatureSpec::default_spec)
    }

    /// Hex SHA-256 of the encoded artifact: a stable identity for the model version.
    pub fn fingerprint(&self) -> Result<String, ArtifactError> {
        let bytes = self.to_bytes()?;
        let digest = Sha256::digest(&bytes[..bytes.len() - CHECKSUM]);
        Ok(crate::hex::encode(&digest))
    }
}

fn word4(b: &[u8], at: usize) -> [u8; 4] {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    w
}

fn word8(b: &[u8], at: usize) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    w
}

fn describe_foreign(bytes: &[u8]) -> String {
    let start: Vec<u8> = bytes
        .iter()
        .copied()
        .skip_while(|b| b.is_ascii_whitespace())
        .take(16)
        .collect();
    if bytes.is_empty() {
        "the file is empty".into()
    } else if start.first() == Some(&b'{') {
        "it looks like JSON (an XGBoost model? convert it with `fraud import --format xgboost`)"
            .into()
    } else if start.starts_with(b"tree") {
        "it looks like a LightGBM text model (convert it with `fraud import --format lightgbm`)"
            .into()
    } else {
        "wrong magic bytes at the start of the file".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Accumulation, Feature, FeatureKind, Missing, Node, Objective, Split, Test, Tree,
    };

    fn sample() -> Artifact {
        let ensemble = Ensemble {
            features: vec![
                Feature {
                    name: "amount".into(),
                    kind: FeatureKind::Numeric,
                },
                Feature {
                    name: "mcc".into(),
                    kind: FeatureKind::Categorical,
                },
            ],
            trees: vec![Tree {
                nodes: vec![
                    Node::Split(Split {
                        feature: 0,
                        test: Test::LessEqual(100.5),
                        missing: Missing::Nan,
                        default_left: true,
                        left: 1,
                        right: 2,
                        cover: 2.0,
                    }),
                    Node::Leaf {
                        value: -0.5,
                        id: 0,
                        cover: 1.0,
                    },
                    Node::Leaf {
                        value: 0.75,
                        id: 1,
                        cover: 1.0,
                    },
                ],
            }],
            base_margin: 0.1,
            objective: Objective::Logistic { scale: 1.0 },
            accumulation: Accumulation::F64,
            average_output: false,
            linear: None,
        };
        Artifact::new(ensemble, "test")
    }

    #[test]
    fn round_trip() {
        let a = sample();
        let bytes = a.to_bytes().unwrap();
        assert_eq!(&bytes[..8], ARTIFACT_MAGIC);
        let b = Artifact::from_bytes(&bytes).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample().to_bytes().unwrap();
        for n in 0..bytes.len() {
            let err = Artifact::from_bytes(&bytes[..n]).unwrap_err();
            assert!(
                matches!(
                    err,
                    ArtifactError::Truncated(_)
                        | ArtifactError::Foreign { .. }
                        | ArtifactError::Corrupted(_)
                ),
                "{n}: {err}"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = sample().to_bytes().unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(Artifact::from_bytes(&b).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn wrong_version_and_foreign_files() {
        let mut bytes = sample().to_bytes().unwrap();
        bytes[8] = 9;
        let err = Artifact::from_bytes(&bytes).unwrap_err();
        assert!(matches!(
            err,
            ArtifactError::UnsupportedVersion { found: 9, .. }
        ));
        assert!(err.to_string().contains("version 9"));
        let err = Artifact::from_bytes(b"{\"learner\": {}}").unwrap_err();
        assert!(err.to_string().contains("XGBoost"), "{err}");
        let err = Artifact::from_bytes(b"tree\nversion=v4\n").unwrap_err();
        assert!(err.to_string().contains("LightGBM"), "{err}");
        let err = Artifact::from_bytes(b"").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn a_valid_checksum_over_a_broken_tree_is_still_refused() {
        let mut a = sample();
        // Bypass to_bytes' validation by encoding by hand.
        if let Node::Split(s) = &mut a.ensemble.trees[0].nodes[0] {
            s.left = 7;
        }
        let meta = serde_json::to_vec(&a.metadata).unwrap();
        let body = postcard::to_stdvec(&a.ensemble).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(ARTIFACT_MAGIC);
        out.extend_from_slice(&ARTIFACT_VERSION.to_le_bytes());
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&body);
        let d = Sha256::digest(&out);
        out.extend_from_slice(&d);
        let err = Artifact::from_bytes(&out).unwrap_err();
        assert!(matches!(err, ArtifactError::Model(_)), "{err}");
    }
}
