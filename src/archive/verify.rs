//! `auditflow verify`: checks an archive or an export and says exactly what is wrong.
//!
//! Every data file must be listed by exactly one manifest with its size and SHA-256; every
//! manifest must be where its sequence number says, name its predecessor's hash, and (with a
//! key) carry a valid signature; and, for an archive, the offsets the manifests cover must run
//! without a gap or an overlap in every partition, up to where the writer says it goes on.

use std::collections::{BTreeMap, HashMap};

use super::ArchiveError;
use super::files::parquet_rows;
use super::manifest::{
    MANIFEST_DIR, Manifest, ManifestKind, OffsetRange, PUBLIC_KEY_FILE, PublicKey, manifest_path, sequence_of,
    sha256_hex, signature_path,
};
use super::store::ArchiveStore;
use super::writer::{get, list};

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Each problem, by path (and offset range where it is about offsets).
    pub problems: Vec<String>,
    pub manifests: usize,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    pub partitions: usize,
    /// Whether signatures were checked.
    pub signed: bool,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, message: String) {
        self.problems.push(message);
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.problems {
            writeln!(f, "FAIL {p}")?;
        }
        let verdict = if self.is_clean() { "OK" } else { "FAILED" };
        write!(
            f,
            "{verdict}: {} manifests, {} files, {} rows, {} bytes checked; offsets of {} partitions; signatures {}; {} problems",
            self.manifests,
            self.files,
            self.rows,
            self.bytes,
            self.partitions,
            if self.signed { "verified" } else { "not used" },
            self.problems.len()
        )
    }
}

/// Options of one run.
#[derive(Debug, Default, Clone)]
pub struct VerifyOptions {
    /// A public key held apart from the archive (PEM): stronger than the published one, which
    /// whoever can write the archive could replace.
    pub public_key: Option<String>,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

/// Checks the archive or export at `url` (a directory or an object store URL).
pub async fn verify(url: &str, options: &VerifyOptions) -> Result<Report, ArchiveError> {
    let local = url.strip_prefix("file://").unwrap_or(url);
    if (!url.contains("://") || url.starts_with("file://")) && !std::path::Path::new(local).is_dir() {
        return Err(ArchiveError::Export(format!("{url}: no such directory")));
    }
    let store = ArchiveStore::open(url)?;
    let objects = list(&store, None).await?;
    let mut report = Report::default();

    // Sort the objects: manifests, signatures, the key, data.
    let mut manifests: BTreeMap<u64, String> = BTreeMap::new();
    let mut signatures: HashMap<String, ()> = HashMap::new();
    let mut data: BTreeMap<String, u64> = BTreeMap::new();
    let mut has_key = false;
    for (path, size) in &objects {
        if path == PUBLIC_KEY_FILE {
            has_key = true;
        } else if let Some(manifest) = path.strip_suffix(".sig") {
            signatures.insert(manifest.to_owned(), ());
        } else if path.starts_with(&format!("{MANIFEST_DIR}/")) {
            match sequence_of(path) {
                Some(seq) => {
                    manifests.insert(seq, path.clone());
                }
                None => report.problem(format!("{path}: not a manifest name (added, or a manifest renamed)")),
            }
        } else {
            data.insert(path.clone(), *size);
        }
    }
    if manifests.is_empty() {
        report.problem(format!("{}: no manifests", store.display));
    }

    let key = match (&options.public_key, has_key) {
        (Some(pem), _) => Some(PublicKey::from_pem(pem).map_err(ArchiveError::Export)?),
        (None, true) => {
            let pem = get(&store, PUBLIC_KEY_FILE).await?;
            match PublicKey::from_pem(&String::from_utf8_lossy(&pem)) {
                Ok(k) => Some(k),
                Err(e) => {
                    report.problem(format!("{PUBLIC_KEY_FILE}: {e}"));
                    None
                }
            }
        }
        (None, false) => None,
    };
    report.signed = key.is_some();

    let progress = progress_bar(options.progress, objects.iter().map(|(_, s)| *s).sum());

    // The chain.
    let mut parsed: Vec<(u64, String, Manifest)> = Vec::new();
    let mut previous: Option<(u64, String, String)> = None; // (sequence, path, sha256)
    let last = manifests.keys().next_back().copied().unwrap_or(0);
    for expected in 1..=last {
        let Some(path) = manifests.get(&expected).cloned() else {
            report.problem(format!(
                "{}: missing (removed); the chain is broken there",
                manifest_path(expected)
            ));
            previous = None;
            continue;
        };
        let bytes = get(&store, &path).await?;
        progress.inc(bytes.len() as u64);
        report.bytes += bytes.len() as u64;
        let sha = sha256_hex(&bytes);
        let manifest = match Manifest::parse(&bytes) {
            Ok(m) => m,
            Err(e) => {
                report.problem(format!("{path}: {e} (altered)"));
                previous = None;
                continue;
            }
        };
        report.manifests += 1;
        if manifest.sequence != expected {
            report.problem(format!(
                "{path}: says it is manifest {} (renamed or reordered)",
                manifest.sequence
            ));
        }
        match (&manifest.previous, &previous) {
            (None, _) if expected == 1 => {}
            (None, _) => report.problem(format!("{path}: names no predecessor; the chain is broken")),
            (Some(p), _) if expected == 1 => report.problem(format!(
                "{path}: is the first manifest but names a predecessor {} (earlier manifests removed?)",
                p.path
            )),
            (Some(p), Some((_, prev_path, prev_sha))) => {
                if p.path != *prev_path {
                    report.problem(format!(
                        "{path}: names {} as its predecessor, not {prev_path} (reordered)",
                        p.path
                    ));
                } else if p.sha256 != *prev_sha {
                    report.problem(format!(
                        "{prev_path}: altered: its SHA-256 is {prev_sha}, but {path} recorded {}",
                        p.sha256
                    ));
                }
            }
            (Some(_), None) => {} // the predecessor itself was reported
        }
        check_signature(&store, &mut report, key.as_ref(), &path, &bytes, &manifest, &signatures).await?;
        previous = Some((expected, path.clone(), sha));
        parsed.push((expected, path, manifest));
    }
    for manifest in signatures.keys() {
        if sequence_of(manifest).is_none_or(|s| !manifests.contains_key(&s)) {
            report.problem(format!(
                "{}: a signature without its manifest (removed)",
                signature_path(manifest)
            ));
        }
    }

    // The files.
    let mut listed: HashMap<String, String> = HashMap::new(); // file -> manifest
    let mut wanted: Vec<(String, super::manifest::FileEntry)> = Vec::new();
    for (_, path, m) in &parsed {
        for f in &m.files {
            if let Some(first) = listed.insert(f.path.clone(), path.clone()) {
                report.problem(format!("{}: listed by both {first} and {path}", f.path));
            }
            wanted.push((path.clone(), f.clone()));
        }
    }
    let unlisted: Vec<String> = data.keys().filter(|p| !listed.contains_key(*p)).cloned().collect();
    let mut unlisted_sha: HashMap<String, String> = HashMap::new();
    for path in &unlisted {
        let bytes = get(&store, path).await?;
        progress.inc(bytes.len() as u64);
        unlisted_sha.insert(sha256_hex(&bytes), path.clone());
    }
    let mut renamed_to: Vec<String> = Vec::new();
    for (manifest, entry) in &wanted {
        let Some(&size) = data.get(&entry.path) else {
            match unlisted_sha.get(&entry.sha256) {
                Some(now) => {
                    report.problem(format!("{}: renamed to {now} (listed by {manifest})", entry.path));
                    renamed_to.push(now.clone());
                }
                None => report.problem(format!(
                    "{}: deleted ({} rows, {} offsets, listed by {manifest})",
                    entry.path,
                    entry.rows,
                    show_ranges(&entry.offsets)
                )),
            }
            continue;
        };
        let bytes = get(&store, &entry.path).await?;
        progress.inc(bytes.len() as u64);
        report.bytes += bytes.len() as u64;
        report.files += 1;
        if size < entry.size {
            report.problem(format!(
                "{}: truncated: {size} of {} bytes ({} offsets)",
                entry.path,
                entry.size,
                show_ranges(&entry.offsets)
            ));
            continue;
        }
        if size != entry.size || sha256_hex(&bytes) != entry.sha256 {
            report.problem(format!(
                "{}: altered: its SHA-256 or size differs from {manifest} ({} offsets)",
                entry.path,
                show_ranges(&entry.offsets)
            ));
            continue;
        }
        match count_rows(&entry.path, bytes) {
            Ok(rows) if rows == entry.rows => report.rows += rows,
            Ok(rows) => report.problem(format!(
                "{}: holds {rows} rows, {manifest} says {}",
                entry.path, entry.rows
            )),
            Err(e) => report.problem(format!("{}: {e}", entry.path)),
        }
    }
    for path in unlisted.iter().filter(|p| !renamed_to.contains(p)) {
        report.problem(format!("{path}: added: in no manifest"));
    }
    progress.finish_and_clear();

    check_offsets(&mut report, &parsed);
    Ok(report)
}

async fn check_signature(
    store: &ArchiveStore,
    report: &mut Report,
    key: Option<&PublicKey>,
    path: &str,
    bytes: &[u8],
    manifest: &Manifest,
    signatures: &HashMap<String, ()>,
) -> Result<(), ArchiveError> {
    let has_sig = signatures.contains_key(path);
    match key {
        None if manifest.signing_key_sha256.is_some() || has_sig => {
            report.problem(format!(
                "{path}: is signed, but there is no public key ({PUBLIC_KEY_FILE} removed?); pass --public-key"
            ));
        }
        None => {}
        Some(key) => {
            if manifest
                .signing_key_sha256
                .as_deref()
                .is_some_and(|f| f != key.fingerprint())
            {
                report.problem(format!(
                    "{path}: was signed with another key than the one checked against"
                ));
            }
            if !has_sig {
                report.problem(format!("{path}: not signed ({} missing)", signature_path(path)));
            } else {
                let sig = get(store, &signature_path(path)).await?;
                if let Err(e) = key.verify(bytes, &sig) {
                    report.problem(format!("{path}: bad signature: {e}"));
                }
            }
        }
    }
    Ok(())
}

fn count_rows(path: &str, bytes: bytes::Bytes) -> Result<u64, String> {
    if path.ends_with(".parquet") {
        parquet_rows(bytes)
    } else if path.ends_with(".jsonl") {
        Ok(bytes.iter().filter(|&&b| b == b'\n').count() as u64)
    } else if path.ends_with(".csv") {
        let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(&bytes[..]);
        let mut n = 0;
        for record in reader.records() {
            record.map_err(|e| format!("not CSV: {e}"))?;
            n += 1;
        }
        Ok(n)
    } else {
        Err("not a file the archive or an export writes".into())
    }
}

fn show_ranges(ranges: &[OffsetRange]) -> String {
    let shown: Vec<String> = ranges.iter().map(ToString::to_string).collect();
    if shown.is_empty() {
        "no".into()
    } else {
        shown.join(", ")
    }
}

/// Offsets `first..=last` of a partition and where they are.
type Run = (i64, i64, String);

/// Gaps and overlaps per partition, across the whole chain.
fn check_offsets(report: &mut Report, parsed: &[(u64, String, Manifest)]) {
    let mut by_partition: BTreeMap<(String, i32), Vec<Run>> = BTreeMap::new();
    let mut kind = ManifestKind::Archive;
    for (_, path, m) in parsed {
        kind = m.kind;
        let mut add = |r: &OffsetRange, what: String| {
            by_partition
                .entry((r.topic.clone(), r.partition))
                .or_default()
                .push((r.first, r.last, what));
        };
        for f in &m.files {
            for r in &f.offsets {
                add(r, f.path.clone());
            }
        }
        for r in &m.dead_letters {
            add(r, format!("the dead-letter topic ({path})"));
        }
        for r in &m.duplicates {
            add(r, format!("duplicates ({path})"));
        }
    }
    report.partitions = by_partition.len();
    for ((topic, partition), mut runs) in by_partition {
        runs.sort();
        let mut prev: Option<(i64, String)> = None;
        for (first, last, what) in runs {
            if let Some((prev_last, prev_what)) = &prev {
                if first <= *prev_last {
                    report.problem(format!(
                        "{topic}/{partition} offsets {first}..={}: in both {prev_what} and {what} (overlap)",
                        last.min(*prev_last)
                    ));
                } else if first > prev_last + 1 && kind == ManifestKind::Archive {
                    report.problem(format!(
                        "{topic}/{partition} offsets {}..={}: in no manifest (a gap between {prev_what} and {what})",
                        prev_last + 1,
                        first - 1
                    ));
                }
            }
            if prev.as_ref().is_none_or(|(l, _)| last > *l) {
                prev = Some((last, what));
            }
        }
        // The writer goes on from the end of what it covered.
        if kind == ManifestKind::Archive
            && let Some((_, path, m)) = parsed.last()
            && let Some((covered_to, _)) = &prev
            && let Some(next) = m
                .next_offsets
                .iter()
                .find(|n| n.topic == topic && n.partition == partition)
            && next.offset != covered_to + 1
        {
            report.problem(format!(
                "{topic}/{partition}: {path} says the archive goes on from offset {}, but the manifests cover up to {covered_to}",
                next.offset
            ));
        }
    }
}

fn progress_bar(show: bool, total: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("verifying {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
            .expect("a valid template"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::{FORMAT, FileEntry, NextOffset};

    fn range(partition: i32, first: i64, last: i64) -> OffsetRange {
        OffsetRange {
            topic: "audit".into(),
            partition,
            first,
            last,
        }
    }

    fn manifest(
        sequence: u64,
        files: Vec<Vec<OffsetRange>>,
        dead: Vec<OffsetRange>,
        next: i64,
    ) -> (u64, String, Manifest) {
        let files = files
            .into_iter()
            .enumerate()
            .map(|(i, offsets)| FileEntry {
                path: format!("f{sequence}-{i}.parquet"),
                sha256: String::new(),
                size: 0,
                rows: 0,
                min_time: String::new(),
                max_time: String::new(),
                offsets,
            })
            .collect();
        let m = Manifest {
            format: FORMAT.into(),
            kind: ManifestKind::Archive,
            sequence,
            created: String::new(),
            previous: None,
            files,
            dead_letters: dead,
            duplicates: vec![],
            next_offsets: vec![NextOffset {
                topic: "audit".into(),
                partition: 0,
                offset: next,
            }],
            segment: None,
            export: None,
            signing_key_sha256: None,
        };
        (sequence, manifest_path(sequence), m)
    }

    #[test]
    fn offsets_must_run_without_gap_or_overlap_to_the_writers_next() {
        let mut clean = Report::default();
        let chain = [
            manifest(1, vec![vec![range(0, 0, 9)]], vec![range(0, 10, 10)], 11),
            manifest(2, vec![vec![range(0, 11, 20)], vec![range(1, 0, 4)]], vec![], 21),
        ];
        check_offsets(&mut clean, &chain);
        assert!(clean.problems.is_empty(), "{:?}", clean.problems);
        assert_eq!(clean.partitions, 2);

        let mut gap = Report::default();
        let chain = [
            manifest(1, vec![vec![range(0, 0, 9)]], vec![], 10),
            manifest(2, vec![vec![range(0, 15, 20)]], vec![], 21),
        ];
        check_offsets(&mut gap, &chain);
        assert_eq!(
            gap.problems,
            ["audit/0 offsets 10..=14: in no manifest (a gap between f1-0.parquet and f2-0.parquet)"]
        );

        let mut overlap = Report::default();
        let chain = [
            manifest(1, vec![vec![range(0, 0, 9)]], vec![], 10),
            manifest(2, vec![vec![range(0, 8, 20)]], vec![], 21),
        ];
        check_offsets(&mut overlap, &chain);
        assert_eq!(
            overlap.problems,
            ["audit/0 offsets 8..=9: in both f1-0.parquet and f2-0.parquet (overlap)"]
        );

        let mut behind = Report::default();
        check_offsets(&mut behind, &[manifest(1, vec![vec![range(0, 0, 9)]], vec![], 12)]);
        assert_eq!(behind.problems.len(), 1);
        assert!(behind.problems[0].contains("goes on from offset 12, but the manifests cover up to 9"));
    }
}
