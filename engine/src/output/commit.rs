//! Making a run's outputs appear all at once, or not at all: in a local directory ([`dir`]: renames, with the
//! previous outputs in a backup and a journal) or under an S3 prefix ([`s3`]: a staging prefix, a publish
//! journal, server-side copies), `summary.json` last either way. The protocol, as a state machine with its
//! invariants and the tests that kill each state, is in `docs/architecture.md`, "Committing outputs".
//!
//! What both sides share: the names of the runner's entries, the error type, and *fingerprints*. A fingerprint
//! is the digest of an output's listing (the relative path and size of every file or object in it). A run
//! records each output's fingerprint in `summary.json`; a later run removes a previous output it does not write
//! again only when the output's listing still has that fingerprint. A `summary.json` or a journal found in an
//! output location is input from outside: read with a size limit, every path checked, and nothing deleted or
//! moved that a run cannot show it wrote.

use serde::{Deserialize, Serialize};

use crate::s3::S3Error;

pub mod dir;
pub mod s3;

/// Lock file (object) of the run that uses an output location.
pub const LOCK_FILE: &str = ".arrayjob.lock";
/// Prefix of staging directories (prefixes on S3).
pub const STAGING_PREFIX: &str = ".arrayjob-staging-";
/// The run's summary, written last: its presence marks a committed run.
pub const SUMMARY: &str = "summary.json";
/// Largest `summary.json` or journal read back from an output location (a larger one is not this protocol's).
pub const MAX_RECORD_BYTES: u64 = 64 << 20;

/// Why preparing an output location, or committing into it, failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another run is using the output location.
    #[error(
        "output directory {dir} is in use by another arrayjob run ({holder} holds {dir}/{LOCK_FILE}); wait for \
         it to finish or choose another --out"
    )]
    Busy {
        /// Directory or `s3://` location.
        dir: String,
        /// What the lock says of its holder (`pid N`).
        holder: String,
    },
    /// A filesystem operation on the output directory failed.
    // The I/O error is in the message, not a `source`, so `{:#}` chains do not print it twice.
    #[error("output directory {path}: {error}")]
    Io {
        /// The file or directory.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Moving the outputs into place failed, and so did putting the previous ones back.
    #[error(
        "output directory {dir}: moving the outputs into place failed ({error}), and restoring the previous \
         outputs failed too ({rollback}); the next run into it retries restoring them"
    )]
    Rollback {
        /// Directory.
        dir: String,
        /// Why the commit failed.
        error: String,
        /// Why the rollback failed.
        rollback: String,
    },
    /// An S3 request failed.
    #[error(transparent)]
    S3(#[from] S3Error),
    /// A journal found in the output location is not one this protocol writes for it: nothing is done from it.
    #[error(
        "{at}: {problem}; nothing was changed: look at the output location, and delete this journal to go on"
    )]
    Journal {
        /// The journal (path or `s3://` URI).
        at: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An S3 publish began (its journal is written) and stopped part way: the journal finishes it later.
    #[error(
        "publishing to {location} began and could not finish ({error}); the next run there, or `arrayjob gc \
         {location}`, finishes it from its journal"
    )]
    PublishUnfinished {
        /// The output location.
        location: String,
        /// What stopped it.
        error: Box<CommitError>,
    },
}

/// Maps an I/O error on `path` to [`CommitError::Io`].
pub fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CommitError + '_ {
    move |error| CommitError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// The digest of an output's listing: how many files (objects) it has, their total size, and the sha256 of the
/// sorted lines `relative-path TAB size`. Equal fingerprints mean the same names with the same sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fingerprint {
    /// Files (objects).
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Hex sha256 of the listing.
    pub sha256: String,
}

impl Fingerprint {
    /// The fingerprint of a listing: (path relative to the output, `""` for the output itself, size), in any
    /// order.
    pub fn of(entries: impl IntoIterator<Item = (String, u64)>) -> Fingerprint {
        use sha2::Digest;
        let mut entries: Vec<(String, u64)> = entries.into_iter().collect();
        entries.sort();
        let mut h = sha2::Sha256::new();
        let mut bytes = 0u64;
        for (rel, size) in &entries {
            h.update(format!("{rel}\t{size}\n").as_bytes());
            bytes = bytes.saturating_add(*size);
        }
        Fingerprint {
            files: entries.len() as u64,
            bytes,
            sha256: h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// What a run reads of a `summary.json` found in an output location: the run that wrote it and its outputs
/// with their fingerprints. Anything else in it is ignored; what is missing is treated as unknown.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommittedRun {
    /// The run's id (`--job-id`, or a random one).
    #[serde(default)]
    pub run: Option<String>,
    /// The plan's hash.
    #[serde(default)]
    pub plan_hash: Option<String>,
    /// Its outputs.
    #[serde(default)]
    pub outputs: Vec<CommittedOutput>,
}

/// One output listed in a committed `summary.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommittedOutput {
    /// Path relative to the output location.
    pub path: String,
    /// Its fingerprint when the run wrote it.
    #[serde(default)]
    pub fingerprint: Option<Fingerprint>,
}

impl CommittedRun {
    /// The run described by the bytes of a `summary.json`, or `None` when they are not one (a hand-written
    /// file, another program's): then nothing is known of previous outputs, and nothing is removed.
    pub fn parse(bytes: &[u8]) -> Option<CommittedRun> {
        serde_json::from_slice(bytes).ok()
    }

    /// The outputs a new run writing `new` may remove: listed, at a plain output path that the new run does not
    /// write, not inside another of them, and with a recorded fingerprint (checked against the listing by the
    /// caller).
    pub fn candidates<'a>(
        &'a self,
        new: &'a [String],
    ) -> impl Iterator<Item = (&'a str, &'a Fingerprint)> {
        self.outputs.iter().filter_map(move |o| {
            let f = o.fingerprint.as_ref()?;
            let fresh = !new.iter().any(|n| overlaps(n, &o.path));
            (fresh && crate::validate::output_path_problem(&o.path).is_none())
                .then_some((o.path.as_str(), f))
        })
    }
}

/// Whether output paths `a` and `b` are the same or one is inside the other.
pub fn overlaps(a: &str, b: &str) -> bool {
    let inside = |p: &str, q: &str| p.strip_prefix(q).is_some_and(|r| r.starts_with('/'));
    a == b || inside(a, b) || inside(b, a)
}

/// Checks a run id read from outside (a journal, a staging name): 1 to 64 of `a-z 0-9 -`, as run ids and
/// `--job-id`s are.
pub fn run_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_depends_on_names_and_sizes_not_order() {
        let a = Fingerprint::of([("c/0".to_owned(), 10), ("zarr.json".to_owned(), 3)]);
        let b = Fingerprint::of([("zarr.json".to_owned(), 3), ("c/0".to_owned(), 10)]);
        assert_eq!(a, b);
        assert_eq!((a.files, a.bytes), (2, 13));
        assert_ne!(
            a,
            Fingerprint::of([("c/0".to_owned(), 11), ("zarr.json".to_owned(), 3)])
        );
        assert_ne!(
            a,
            Fingerprint::of([("c/1".to_owned(), 10), ("zarr.json".to_owned(), 3)])
        );
        assert_eq!(a.sha256.len(), 64);
    }

    #[test]
    fn only_plain_fingerprinted_paths_the_new_run_does_not_write_are_candidates() {
        let f = Fingerprint::of([(String::new(), 1)]);
        let run = CommittedRun {
            outputs: [
                "a.png",
                "../x",
                ".arrayjob-backup",
                "keep",
                "b.zarr",
                "c.zarr/inner",
                "summary.json",
            ]
            .iter()
            .map(|p| CommittedOutput {
                path: (*p).to_owned(),
                fingerprint: (*p != "keep").then(|| f.clone()),
            })
            .collect(),
            ..CommittedRun::default()
        };
        let new = ["b.zarr".to_owned(), "c.zarr".to_owned()];
        let paths: Vec<&str> = run.candidates(&new).map(|(p, _)| p).collect();
        assert_eq!(paths, ["a.png"]);
    }

    #[test]
    fn a_summary_that_is_not_json_of_a_run_gives_nothing() {
        assert!(CommittedRun::parse(b"not json").is_none());
        assert!(CommittedRun::parse(br#"{"outputs": 3}"#).is_none());
        let run =
            CommittedRun::parse(br#"{"outputs": [{"path": "keep"}], "other": 1}"#).expect("parse");
        assert!(
            run.candidates(&[]).next().is_none(),
            "no fingerprint: not removable"
        );
    }

    #[test]
    fn run_ids_from_outside_are_checked() {
        assert!(run_id_ok("run-17"));
        assert!(run_id_ok("0123456789abcdef"));
        for bad in ["", "a/b", "..", "A", &"x".repeat(65)] {
            assert!(!run_id_ok(bad), "{bad}");
        }
    }
}
