//! Manifests: what each closed file holds, chained by hash (in the manner of AWS CloudTrail's
//! digest files) and optionally signed with Ed25519.
//!
//! Each manifest `manifest/manifest-<sequence>.json` names the SHA-256 of its predecessor, so
//! removing, altering or reordering one breaks the chain at a named place. With a signing key,
//! `manifest-<sequence>.json.sig` holds the base64 Ed25519 signature of the manifest's exact
//! bytes, and the public key is published at the archive's root.

use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ArchiveError;

/// Folder of the manifests, under the archive's root.
pub const MANIFEST_DIR: &str = "manifest";
/// The published public key, at the archive's root.
pub const PUBLIC_KEY_FILE: &str = "auditflow-archive-public-key.pem";
/// The manifest format this version writes and reads.
pub const FORMAT: &str = "auditflow-manifest/1";

/// A run of consecutive offsets of one topic partition, both ends included.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OffsetRange {
    pub topic: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

impl std::fmt::Display for OffsetRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} offsets {}..={}",
            self.topic, self.partition, self.first, self.last
        )
    }
}

/// Collapses offsets into ranges, per topic partition, sorted.
pub fn ranges<'a>(offsets: impl IntoIterator<Item = (&'a str, i32, i64)>) -> Vec<OffsetRange> {
    let mut by_partition: BTreeMap<(&str, i32), Vec<i64>> = BTreeMap::new();
    for (topic, partition, offset) in offsets {
        by_partition.entry((topic, partition)).or_default().push(offset);
    }
    let mut out = Vec::new();
    for ((topic, partition), mut offsets) in by_partition {
        offsets.sort_unstable();
        offsets.dedup();
        let mut iter = offsets.into_iter();
        let Some(mut first) = iter.next() else { continue };
        let mut last = first;
        for o in iter {
            if o != last + 1 {
                out.push(OffsetRange {
                    topic: topic.to_owned(),
                    partition,
                    first,
                    last,
                });
                first = o;
            }
            last = o;
        }
        out.push(OffsetRange {
            topic: topic.to_owned(),
            partition,
            first,
            last,
        });
    }
    out
}

/// One closed data file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the archive's (or export's) root.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub rows: u64,
    /// Event times of the earliest and latest row, RFC 3339.
    pub min_time: String,
    pub max_time: String,
    /// The Kafka records the file's rows came from.
    pub offsets: Vec<OffsetRange>,
}

/// The manifest before this one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Previous {
    pub path: String,
    pub sha256: String,
}

/// Where an archive's writer goes on from: per partition, the next offset to archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NextOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What an export was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportQuery {
    pub source: String,
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub filter: Option<String>,
    pub format: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestKind {
    /// Written by the archive sink: offsets must be contiguous across the chain.
    Archive,
    /// Written by `auditflow export`: a selection, so only overlaps are errors.
    Export,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub kind: ManifestKind,
    pub sequence: u64,
    /// When it was written, RFC 3339.
    pub created: String,
    pub previous: Option<Previous>,
    pub files: Vec<FileEntry>,
    /// Records of the archived topics that went to the dead-letter topic instead.
    #[serde(default)]
    pub dead_letters: Vec<OffsetRange>,
    /// Records dropped as repeats of an event id already archived.
    #[serde(default)]
    pub duplicates: Vec<OffsetRange>,
    #[serde(default)]
    pub next_offsets: Vec<NextOffset>,
    /// The spool segment the files came from (crash recovery finds it done by this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportQuery>,
    /// SHA-256 of the raw Ed25519 public key that signs this manifest, if any.
    #[serde(default)]
    pub signing_key_sha256: Option<String>,
}

impl Manifest {
    /// The manifest's bytes as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest is plain data");
        out.push(b'\n');
        out
    }

    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
        if m.format != FORMAT {
            return Err(format!("format `{}` is not `{FORMAT}`", m.format));
        }
        Ok(m)
    }
}

/// The path of manifest `sequence`, relative to the root.
pub fn manifest_path(sequence: u64) -> String {
    format!("{MANIFEST_DIR}/manifest-{sequence:012}.json")
}

/// The sequence number a manifest's file name claims.
pub fn sequence_of(relative: &str) -> Option<u64> {
    relative
        .strip_prefix(MANIFEST_DIR)?
        .strip_prefix("/manifest-")?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

/// The signature file beside a manifest.
pub fn signature_path(manifest: &str) -> String {
    format!("{manifest}.sig")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Signs manifests.
pub struct Signer {
    key: SigningKey,
}

impl Signer {
    /// Reads a PKCS#8 PEM Ed25519 private key (`openssl genpkey -algorithm ed25519`).
    pub fn load(path: &Path) -> Result<Signer, ArchiveError> {
        let fail = |message: String| ArchiveError::Key {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let key = SigningKey::from_pkcs8_pem(&text)
            .map_err(|e| fail(format!("not a PKCS#8 PEM Ed25519 private key: {e}")))?;
        Ok(Signer { key })
    }

    /// The signature file's content for `manifest` (its exact bytes).
    pub fn sign(&self, manifest: &[u8]) -> Vec<u8> {
        use base64::Engine as _;
        let sig = self.key.sign(manifest);
        let mut out = base64::engine::general_purpose::STANDARD
            .encode(sig.to_bytes())
            .into_bytes();
        out.push(b'\n');
        out
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }
}

/// A manifest signer's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_pem(text: &str) -> Result<PublicKey, String> {
        VerifyingKey::from_public_key_pem(text)
            .map(PublicKey)
            .map_err(|e| format!("not a PEM Ed25519 public key: {e}"))
    }

    pub fn to_pem(&self) -> String {
        self.0
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("an Ed25519 key encodes")
    }

    pub fn fingerprint(&self) -> String {
        sha256_hex(self.0.as_bytes())
    }

    /// Whether `signature_file` (as [`Signer::sign`] writes it) signs `manifest`.
    pub fn verify(&self, manifest: &[u8], signature_file: &[u8]) -> Result<(), String> {
        use base64::Engine as _;
        let text = std::str::from_utf8(signature_file).map_err(|_| "the signature is not text".to_owned())?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| format!("the signature is not base64: {e}"))?;
        let sig = ed25519_dalek::Signature::from_slice(&bytes).map_err(|e| format!("not an Ed25519 signature: {e}"))?;
        self.0
            .verify(manifest, &sig)
            .map_err(|_| "the signature does not match the manifest".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_collapse_into_ranges_per_partition() {
        let r = ranges([
            ("a", 0, 3),
            ("a", 0, 1),
            ("a", 0, 2),
            ("a", 0, 7),
            ("b", 1, 5),
            ("a", 0, 8),
        ]);
        let shown: Vec<String> = r.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["a/0 offsets 1..=3", "a/0 offsets 7..=8", "b/1 offsets 5..=5"]);
        assert!(ranges([]).is_empty());
    }

    #[test]
    fn manifest_names_round_trip_and_foreign_names_are_not_manifests() {
        assert_eq!(manifest_path(12), "manifest/manifest-000000000012.json");
        assert_eq!(sequence_of(&manifest_path(12)), Some(12));
        assert_eq!(sequence_of("manifest/manifest-x.json"), None);
        assert_eq!(sequence_of("date=2026-01-01/manifest-000000000001.json"), None);
    }

    #[test]
    fn signatures_verify_only_the_bytes_they_signed() {
        // RFC 8032's first test key, as PKCS#8 PEM.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, pem).unwrap();
        let signer = Signer::load(&path).unwrap();
        let public = PublicKey::from_pem(&signer.public().to_pem()).unwrap();
        assert_eq!(public, signer.public());
        let sig = signer.sign(b"manifest");
        public.verify(b"manifest", &sig).unwrap();
        assert!(public.verify(b"manifest!", &sig).is_err());
        assert!(public.verify(b"manifest", b"AAAA").is_err());
        std::fs::write(&path, "not a key").unwrap();
        let e = Signer::load(&path).err().unwrap().to_string();
        assert!(e.contains("k.pem") && e.contains("PKCS#8"), "{e}");
    }
}
