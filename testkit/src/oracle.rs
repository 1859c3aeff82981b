//! The oracle: compares what a sink delivered with every event version the API server stored,
//! under the key (uid, resourceVersion), and reports what is missing and what is duplicated.
//!
//! Owns reading delivered rows (the file sink's active and rotated files) and the comparison. It
//! must never count a row it cannot key as delivered.

use std::{
    collections::{HashMap, HashSet},
    io::BufRead as _,
    path::{Path, PathBuf},
};

use serde_json::Value;

/// One event version, as stored or as delivered.
pub type Key = (String, String);

/// How many missing keys a report names.
const MISSING_SAMPLE: usize = 5;

/// The comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Versions the API server stored.
    pub stored: usize,
    /// Rows delivered.
    pub delivered: usize,
    /// Stored versions never delivered.
    pub missing: usize,
    /// Extra deliveries of a version (a version delivered three times counts two).
    pub duplicated: usize,
    /// Delivered rows that no stored version matches.
    pub unexpected: usize,
    /// Delivered rows without `Uid`/`ResourceVersion`.
    pub unkeyed: usize,
    /// A few missing keys, for the log.
    pub missing_sample: Vec<Key>,
}

impl Report {
    /// True when nothing is missing, duplicated, unexpected or unkeyed.
    #[must_use]
    pub fn is_exact(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.unexpected == 0 && self.unkeyed == 0
    }

    /// Adds the counts of `other` (a separate comparison, such as another lab's) to these.
    pub fn add(&mut self, other: Self) {
        self.stored += other.stored;
        self.delivered += other.delivered;
        self.missing += other.missing;
        self.duplicated += other.duplicated;
        self.unexpected += other.unexpected;
        self.unkeyed += other.unkeyed;
        let room = MISSING_SAMPLE.saturating_sub(self.missing_sample.len());
        self.missing_sample
            .extend(other.missing_sample.into_iter().take(room));
    }
}

/// Compares delivered keys with stored keys.
#[must_use]
pub fn compare(stored: &[Key], delivered: &[Key], unkeyed: usize) -> Report {
    let truth: HashSet<&Key> = stored.iter().collect();
    let mut counts: HashMap<&Key, usize> = HashMap::new();
    for key in delivered {
        *counts.entry(key).or_default() += 1;
    }
    let missing: Vec<Key> = stored
        .iter()
        .filter(|k| !counts.contains_key(k))
        .cloned()
        .collect();
    Report {
        stored: truth.len(),
        delivered: delivered.len(),
        missing: missing.len(),
        duplicated: counts.values().map(|n| n.saturating_sub(1)).sum(),
        unexpected: counts.keys().filter(|k| !truth.contains(*k)).count(),
        unkeyed,
        missing_sample: missing.into_iter().take(MISSING_SAMPLE).collect(),
    }
}

/// The file sink's files: rotated ones (`<path>.N`, oldest first) then the active one.
#[must_use]
pub fn sink_files(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(usize, PathBuf)> = Vec::new();
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        let name = name.to_string_lossy().into_owned();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if let Some(index) = file
                    .strip_prefix(&name)
                    .and_then(|r| r.strip_prefix('.'))
                    .and_then(|r| r.parse::<usize>().ok())
                {
                    rotated.push((index, entry.path()));
                }
            }
        }
    }
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        files.push(path.to_owned());
    }
    files
}

/// Reads delivered keys from NDJSON rows with `Uid` and `ResourceVersion` columns (flat shape)
/// or the same keys under `log` (fluent-bit shape). Returns the keys and the unkeyed row count.
///
/// # Errors
/// Fails if a file cannot be read.
pub fn read_delivered(files: &[PathBuf]) -> std::io::Result<(Vec<Key>, usize)> {
    read_delivered_where(files, |_| true)
}

/// As [`read_delivered`], for the rows `keep` accepts only — for example the namespaces a test
/// writes to, on a real API server that writes events of its own.
///
/// # Errors
/// Fails if a file cannot be read.
pub fn read_delivered_where(
    files: &[PathBuf],
    keep: impl Fn(&Value) -> bool,
) -> std::io::Result<(Vec<Key>, usize)> {
    let mut keys = Vec::new();
    let mut unkeyed = 0;
    for file in files {
        let reader = std::io::BufReader::new(std::fs::File::open(file)?);
        for line in reader.lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let row = serde_json::from_str::<Value>(&line).ok();
            if let Some(row) = &row
                && !keep(row.get("log").unwrap_or(row))
            {
                continue;
            }
            match row.as_ref().and_then(key_of) {
                Some(key) => keys.push(key),
                None => unkeyed += 1,
            }
        }
    }
    Ok((keys, unkeyed))
}

/// Reads ground truth: NDJSON lines with `uid` and `resourceVersion` (other fields ignored), as
/// `chaos/kind/drill.sh` writes them from a `kubectl get events --watch` of the drill namespace.
///
/// # Errors
/// Fails if the file cannot be read, or names the line that is not such an object.
pub fn read_truth(path: &Path) -> anyhow::Result<Vec<Key>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{} line {}: not JSON: {e}", path.display(), index + 1))?;
        let field = |name: &str| row.get(name).and_then(Value::as_str).map(str::to_owned);
        match (field("uid"), field("resourceVersion")) {
            (Some(uid), Some(rv)) => keys.push((uid, rv)),
            _ => anyhow::bail!(
                "{} line {}: needs string fields uid and resourceVersion",
                path.display(),
                index + 1
            ),
        }
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// The `(Uid, ResourceVersion)` of a delivered row.
#[must_use]
pub fn key_of(row: &Value) -> Option<Key> {
    let row = row.get("log").unwrap_or(row);
    let uid = row.get("Uid")?.as_str()?;
    let rv = row.get("ResourceVersion")?.as_str()?;
    Some((uid.to_owned(), rv.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(uid: &str, rv: &str) -> Key {
        (uid.to_owned(), rv.to_owned())
    }

    #[test]
    fn truth_files_are_read_deduplicated_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truth.ndjson");
        std::fs::write(
            &path,
            "{\"uid\":\"a\",\"resourceVersion\":\"1\",\"name\":\"x\"}\n\n\
             {\"uid\":\"a\",\"resourceVersion\":\"1\"}\n{\"uid\":\"b\",\"resourceVersion\":\"2\"}\n",
        )
        .unwrap();
        assert_eq!(read_truth(&path).unwrap(), vec![k("a", "1"), k("b", "2")]);
        std::fs::write(
            &path,
            "{\"uid\":\"a\",\"resourceVersion\":\"1\"}\n{\"uid\":\"b\"}\n",
        )
        .unwrap();
        let error = read_truth(&path).unwrap_err().to_string();
        assert!(
            error.contains("line 2") && error.contains("resourceVersion"),
            "{error}"
        );
    }

    #[test]
    fn the_oracle_counts_missing_duplicated_and_unexpected_versions() {
        let stored = vec![k("a", "1"), k("a", "2"), k("b", "3")];
        let delivered = vec![
            k("a", "1"),
            k("a", "1"),
            k("a", "1"),
            k("b", "3"),
            k("c", "9"),
        ];
        let report = compare(&stored, &delivered, 1);
        assert_eq!(report.stored, 3);
        assert_eq!(report.delivered, 5);
        assert_eq!(report.missing, 1);
        assert_eq!(report.missing_sample, vec![k("a", "2")]);
        assert_eq!(report.duplicated, 2);
        assert_eq!(report.unexpected, 1);
        assert!(!report.is_exact());
        assert!(compare(&stored, &stored, 0).is_exact());
    }

    #[test]
    fn reports_of_separate_labs_add_up() {
        let stored: Vec<Key> = (0..8).map(|n| k("a", &n.to_string())).collect();
        let mut total = compare(&stored, &stored, 0);
        total.add(compare(&stored, &stored[..4], 1));
        total.add(compare(&stored, &stored[..6], 0));
        assert_eq!((total.stored, total.delivered), (24, 18));
        assert_eq!((total.missing, total.unkeyed, total.duplicated), (6, 1, 0));
        assert_eq!(
            total.missing_sample.len(),
            MISSING_SAMPLE,
            "the sample stays small"
        );
        assert!(!total.is_exact());
    }

    #[test]
    fn rows_are_keyed_in_both_record_shapes() {
        let flat: Value = serde_json::json!({"Uid": "u", "ResourceVersion": "5"});
        let fluent: Value =
            serde_json::json!({"TimeGenerated": "x", "log": {"Uid": "u", "ResourceVersion": "5"}});
        assert_eq!(key_of(&flat), Some(k("u", "5")));
        assert_eq!(key_of(&fluent), Some(k("u", "5")));
        assert_eq!(key_of(&serde_json::json!({"Uid": "u"})), None);
    }

    #[test]
    fn a_scoped_read_skips_rows_the_filter_rejects_but_never_unparsable_ones() {
        let dir = std::env::temp_dir().join(format!("kevents-oracle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rows.ndjson");
        std::fs::write(
            &file,
            "{\"Namespace\":\"a\",\"Uid\":\"u\",\"ResourceVersion\":\"1\"}\n\
             {\"Namespace\":\"b\",\"Uid\":\"v\",\"ResourceVersion\":\"2\"}\n\
             {\"log\":{\"Namespace\":\"a\",\"Uid\":\"w\",\"ResourceVersion\":\"3\"}}\n\
             not json\n",
        )
        .unwrap();
        let (keys, unkeyed) = read_delivered_where(&[file], |row| row["Namespace"] == "a").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(keys, vec![k("u", "1"), k("w", "3")]);
        assert_eq!(unkeyed, 1);
    }
}
