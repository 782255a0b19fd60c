//! The output directory of a local run: its lock, the leftovers of killed runs, and the all-or-nothing commit
//! of a run's outputs by renames (the states and their invariants: `docs/architecture.md`, "Committing
//! outputs").
//!
//! Entries of the runner, all named `.arrayjob*` (output paths may not start so, see validation):
//! - `.arrayjob.lock`: held (OS advisory lock) by the run using the directory; removed when it ends;
//! - `.arrayjob-staging-*`: where a run writes its outputs; removed when it ends, or by the next run if the
//!   process was killed;
//! - `.arrayjob-backup/`: the previous outputs while a commit replaces them, with `journal.json`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{
    CommitError, CommittedRun, Fingerprint, LOCK_FILE, MAX_RECORD_BYTES, STAGING_PREFIX, SUMMARY,
    io_err,
};

/// Where a commit keeps the previous outputs until the new ones are all in place.
pub const BACKUP_DIR: &str = ".arrayjob-backup";
const JOURNAL: &str = "journal.json";

/// The exclusive lock on an output directory: the file `.arrayjob.lock` with an OS advisory lock on it, so a
/// killed holder (SIGKILL, OOM) releases it with its process. Dropping it removes the file and unlocks.
#[derive(Debug)]
pub struct OutDirLock {
    path: PathBuf,
    _file: File,
}

impl OutDirLock {
    /// Takes the lock of `dir` without waiting.
    ///
    /// # Errors
    /// [`CommitError::Busy`] when another run holds it, [`CommitError::Io`] when the file cannot be made.
    pub fn acquire(dir: &Path) -> Result<OutDirLock, CommitError> {
        let path = dir.join(LOCK_FILE);
        loop {
            let mut file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err(&path))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = (&file).take(256).read_to_string(&mut holder);
                    let holder = match holder.trim() {
                        "" => "a process".to_owned(),
                        h => h.to_owned(),
                    };
                    return Err(CommitError::Busy {
                        dir: dir.display().to_string(),
                        holder,
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
            }
            // A holder that just finished removes the file before unlocking; a lock taken on that removed
            // file locks nothing, so open the path again.
            if !same_file(&file, &path) {
                continue;
            }
            file.set_len(0).map_err(io_err(&path))?;
            writeln!(file, "pid {}", std::process::id()).map_err(io_err(&path))?;
            return Ok(OutDirLock { path, _file: file });
        }
    }
}

impl Drop for OutDirLock {
    fn drop(&mut self) {
        // Removed while still locked (the file closes after this), see `acquire`.
        if let Err(e) = std::fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), error = %e, "cannot remove the lock file");
        }
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// Prepares a locked output directory for a run: removes the staging directories of killed runs and settles
/// a commit that a killed run left half done ([`recover`]).
///
/// # Errors
/// When a leftover cannot be removed or restored, or the backup's journal is not one a commit writes.
pub fn clean(dir: &Path, _lock: &OutDirLock) -> Result<(), CommitError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let staging = entry
            .file_name()
            .to_string_lossy()
            .starts_with(STAGING_PREFIX);
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if staging && is_dir {
            let path = entry.path();
            warn!(path = %path.display(), "removing the staging directory of a killed run");
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
    }
    recover(dir)
}

/// A new output moved in by a commit, with the fingerprint it had in staging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewOutput {
    /// Path relative to the output directory.
    pub path: String,
    /// Its fingerprint.
    pub fingerprint: Fingerprint,
}

/// What a commit moves: `old` paths go from the output directory to the backup, `new` ones from staging to
/// the output directory.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    old: Vec<String>,
    new: Vec<NewOutput>,
}

impl Journal {
    /// Reads the journal at `path` (`None` when there is none), refusing one that is too large, not JSON of a
    /// journal, or names a path that is not a plain output path.
    fn read(path: &Path) -> Result<Option<Journal>, CommitError> {
        let bytes = match read_limited(path, MAX_RECORD_BYTES) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            other => other.map_err(io_err(path))?,
        };
        let refuse = |problem: String| CommitError::Journal {
            at: path.display().to_string(),
            problem,
        };
        let j: Journal = serde_json::from_slice(&bytes)
            .map_err(|e| refuse(format!("not a commit journal ({e})")))?;
        let paths = j.old.iter().chain(j.new.iter().map(|n| &n.path));
        for p in paths {
            if let Some(problem) = crate::validate::output_path_problem(p) {
                return Err(refuse(format!(
                    "names {p:?}, which is not an output path: {problem}"
                )));
            }
        }
        Ok(Some(j))
    }
}

/// Reads a file of at most `max` bytes.
fn read_limited(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// Settles a backup left by a commit that did not finish: if `summary.json` is in place the commit had
/// happened and the backup is deleted; otherwise the commit is rolled back and the backup restored.
///
/// # Errors
/// When the backup cannot be read, restored or removed, or its journal is not one a commit writes (then nothing
/// is touched).
pub fn recover(dir: &Path) -> Result<(), CommitError> {
    let backup = dir.join(BACKUP_DIR);
    if !backup.exists() {
        return Ok(());
    }
    // Killed before the journal was written: nothing was moved yet.
    let journal = Journal::read(&backup.join(JOURNAL))?;
    match journal {
        Some(j) if dir.join(SUMMARY).symlink_metadata().is_err() => {
            warn!(dir = %dir.display(), "restoring the previous outputs after an interrupted commit");
            roll_back(dir, &j)
        }
        _ => std::fs::remove_dir_all(&backup).map_err(io_err(&backup)),
    }
}

/// Moves the outputs `new` (paths relative to `staging`, with their fingerprints) and then
/// `staging/summary.json` into `dir`, replacing the previous run's outputs as a whole: whatever is at a new
/// path, and the previous outputs listed in its `summary.json` that still have the fingerprint recorded there.
/// On failure everything is put back as it was.
///
/// # Errors
/// The first failure; [`CommitError::Rollback`] when putting things back failed too (the next run retries).
pub fn commit(dir: &Path, staging: &Path, new: &[NewOutput]) -> Result<(), CommitError> {
    let backup = dir.join(BACKUP_DIR);
    let paths: Vec<String> = new.iter().map(|n| n.path.clone()).collect();
    let journal = Journal {
        old: previous_outputs(dir, &paths),
        new: new.to_vec(),
    };
    std::fs::create_dir(&backup).map_err(io_err(&backup))?;
    let journal_path = backup.join(JOURNAL);
    let tmp = backup.join("journal.tmp");
    let text = serde_json::to_vec(&journal).map_err(|e| {
        io_err(&journal_path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    })?;
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &journal_path).map_err(io_err(&journal_path))?;
    if let Err(e) = swap(dir, staging, &journal) {
        return match roll_back(dir, &journal) {
            Ok(()) => Err(e),
            Err(r) => Err(CommitError::Rollback {
                dir: dir.display().to_string(),
                error: e.to_string(),
                rollback: r.to_string(),
            }),
        };
    }
    // Committed: a backup that cannot be removed now is removed by the next run.
    if let Err(e) = std::fs::remove_dir_all(&backup) {
        warn!(path = %backup.display(), error = %e, "cannot remove the backup of the previous outputs");
    }
    Ok(())
}

/// The commit's moves: old summary and outputs aside, new outputs in, new summary last.
fn swap(dir: &Path, staging: &Path, j: &Journal) -> Result<(), CommitError> {
    let backup = dir.join(BACKUP_DIR);
    move_if_there(&dir.join(SUMMARY), &backup.join(SUMMARY))?;
    for p in &j.old {
        move_if_there(&dir.join(p), &backup.join("files").join(p))?;
    }
    for n in &j.new {
        move_path(&staging.join(&n.path), &dir.join(&n.path))?;
    }
    move_path(&staging.join(SUMMARY), &dir.join(SUMMARY))
}

/// Undoes a partial [`swap`]: removes the new outputs moved in (those that still have their fingerprint), moves
/// the old ones and the old summary back, then deletes the backup. Every step can be done twice.
fn roll_back(dir: &Path, j: &Journal) -> Result<(), CommitError> {
    let backup = dir.join(BACKUP_DIR);
    let files = backup.join("files");
    for n in &j.new {
        let to = dir.join(&n.path);
        // A path that existed before the commit is new only once its old content went to the backup.
        let moved_in = !j.old.contains(&n.path) || files.join(&n.path).symlink_metadata().is_ok();
        if !moved_in || to.symlink_metadata().is_err() {
            continue;
        }
        if fingerprint(dir, &n.path)?.as_ref() == Some(&n.fingerprint) {
            remove_path(&to)?;
        } else {
            warn!(path = %to.display(), "left in place: it is not what the interrupted commit moved in");
        }
    }
    for p in &j.old {
        restore(&files.join(p), &dir.join(p))?;
    }
    restore(&backup.join(SUMMARY), &dir.join(SUMMARY))?;
    std::fs::remove_dir_all(&backup).map_err(io_err(&backup))
}

/// Moves a backed-up `from` back to `to`, if it is in the backup; refuses to replace something at `to`.
fn restore(from: &Path, to: &Path) -> Result<(), CommitError> {
    if from.symlink_metadata().is_err() {
        return Ok(());
    }
    if to.symlink_metadata().is_ok() {
        return Err(io_err(to)(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "cannot restore the previous output kept in {}: something else is at its place",
                from.display()
            ),
        )));
    }
    move_path(from, to)
}

/// The previous outputs a commit of `new` moves aside: whatever is at the new paths, and the outputs listed in
/// the committed `summary.json` (if it is one) whose listing still has its recorded fingerprint; minus paths
/// inside another of them (they move with it).
fn previous_outputs(dir: &Path, new: &[String]) -> Vec<String> {
    let committed = read_limited(&dir.join(SUMMARY), MAX_RECORD_BYTES)
        .ok()
        .and_then(|b| CommittedRun::parse(&b))
        .unwrap_or_default();
    let mut paths: Vec<String> = new
        .iter()
        .filter(|p| dir.join(p).symlink_metadata().is_ok())
        .cloned()
        .collect();
    for (path, recorded) in committed.candidates(new) {
        match fingerprint(dir, path) {
            Ok(Some(f)) if f == *recorded => paths.push(path.to_owned()),
            Ok(None) => {}
            _ => warn!(
                path = %dir.join(path).display(),
                "left in place: the previous summary.json lists it, but it is not as that run wrote it"
            ),
        }
    }
    paths.sort();
    paths.dedup();
    let inside = |p: &String, q: &String| {
        p.strip_prefix(q.as_str())
            .is_some_and(|r| r.starts_with('/'))
    };
    paths
        .iter()
        .filter(|p| !paths.iter().any(|q| inside(p, q)))
        .cloned()
        .collect()
}

/// The fingerprint of `rel` under `root` (a file, or a directory: every file below it, symbolic links as
/// themselves), `None` when nothing is there.
///
/// # Errors
/// When it cannot be listed.
pub fn fingerprint(root: &Path, rel: &str) -> Result<Option<Fingerprint>, CommitError> {
    let top = root.join(rel);
    let meta = match top.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        other => other.map_err(io_err(&top))?,
    };
    if !meta.is_dir() {
        return Ok(Some(Fingerprint::of([(String::new(), meta.len())])));
    }
    let mut entries = Vec::new();
    let mut todo = vec![top.clone()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let path = entry.path();
            let meta = path.symlink_metadata().map_err(io_err(&path))?;
            if meta.is_dir() {
                todo.push(path);
            } else if let Ok(r) = path.strip_prefix(&top) {
                entries.push((r.to_string_lossy().replace('\\', "/"), meta.len()));
            }
        }
    }
    Ok(Some(Fingerprint::of(entries)))
}

/// Renames `from` to `to` (creating `to`'s parent), if `from` exists.
fn move_if_there(from: &Path, to: &Path) -> Result<(), CommitError> {
    if from.symlink_metadata().is_ok() {
        move_path(from, to)?;
    }
    Ok(())
}

fn move_path(from: &Path, to: &Path) -> Result<(), CommitError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    std::fs::rename(from, to).map_err(io_err(to))
}

fn remove_path(p: &Path) -> Result<(), CommitError> {
    let meta = p.symlink_metadata().map_err(io_err(p))?;
    if meta.is_dir() {
        std::fs::remove_dir_all(p).map_err(io_err(p))
    } else {
        std::fs::remove_file(p).map_err(io_err(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    fn read(path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    fn file_print(text: &str) -> Fingerprint {
        Fingerprint::of([(String::new(), text.len() as u64)])
    }

    /// A commit killed after moving `moved_aside` of the old outputs (`a.csv`, `b.csv`) to the backup and
    /// moving in the new `c.csv`; the new `a.csv` is in place only if its old one was moved aside.
    fn killed_commit(dir: &Path, moved_aside: &[&str]) {
        let backup = dir.join(BACKUP_DIR);
        put(&backup.join(SUMMARY), "old summary");
        let journal = Journal {
            old: vec!["a.csv".into(), "b.csv".into()],
            new: ["a.csv", "c.csv"]
                .iter()
                .map(|p| NewOutput {
                    path: (*p).to_owned(),
                    fingerprint: file_print(&format!("new {p}")),
                })
                .collect(),
        };
        put(
            &backup.join(JOURNAL),
            &serde_json::to_string(&journal).expect("json"),
        );
        for name in ["a.csv", "b.csv"] {
            let at = if moved_aside.contains(&name) {
                backup.join("files").join(name)
            } else {
                dir.join(name)
            };
            put(&at, &format!("old {name}"));
        }
        if moved_aside.contains(&"a.csv") {
            put(&dir.join("a.csv"), "new a.csv");
        }
        put(&dir.join("c.csv"), "new c.csv");
    }

    fn assert_previous_run(dir: &Path) {
        assert_eq!(read(&dir.join(SUMMARY)).as_deref(), Some("old summary"));
        assert_eq!(read(&dir.join("a.csv")).as_deref(), Some("old a.csv"));
        assert_eq!(read(&dir.join("b.csv")).as_deref(), Some("old b.csv"));
        assert!(!dir.join("c.csv").exists());
        assert!(!dir.join(BACKUP_DIR).exists());
    }

    #[test]
    fn interrupted_commit_is_rolled_back() {
        let d = tempfile::tempdir().expect("tmp");
        killed_commit(d.path(), &["a.csv", "b.csv"]);
        recover(d.path()).expect("recover");
        assert_previous_run(d.path());
    }

    #[test]
    fn an_old_output_not_yet_moved_aside_is_kept() {
        let d = tempfile::tempdir().expect("tmp");
        killed_commit(d.path(), &["b.csv"]);
        recover(d.path()).expect("recover");
        assert_previous_run(d.path());
    }

    #[test]
    fn finished_commit_keeps_the_new_outputs() {
        let d = tempfile::tempdir().expect("tmp");
        killed_commit(d.path(), &["a.csv", "b.csv"]);
        put(&d.path().join(SUMMARY), "new summary");
        recover(d.path()).expect("recover");
        assert_eq!(
            read(&d.path().join(SUMMARY)).as_deref(),
            Some("new summary")
        );
        assert_eq!(read(&d.path().join("a.csv")).as_deref(), Some("new a.csv"));
        assert_eq!(read(&d.path().join("c.csv")).as_deref(), Some("new c.csv"));
        assert!(!d.path().join("b.csv").exists());
        assert!(!d.path().join(BACKUP_DIR).exists());
    }

    #[test]
    fn a_rollback_leaves_a_new_path_that_is_not_what_was_moved_in() {
        let d = tempfile::tempdir().expect("tmp");
        killed_commit(d.path(), &["b.csv"]);
        put(
            &d.path().join("c.csv"),
            "the user's own c.csv, written since",
        );
        recover(d.path()).expect("recover");
        assert_eq!(
            read(&d.path().join("c.csv")).as_deref(),
            Some("the user's own c.csv, written since")
        );
        assert_eq!(read(&d.path().join("b.csv")).as_deref(), Some("old b.csv"));
    }

    #[test]
    fn a_journal_naming_paths_outside_the_directory_is_refused_and_nothing_moves() {
        let d = tempfile::tempdir().expect("tmp");
        let outside = d.path().join("outside");
        put(&outside.join("precious"), "keep me");
        let dir = d.path().join("out");
        put(
            &dir.join(BACKUP_DIR).join(JOURNAL),
            r#"{"old": [], "new": [{"path": "../outside", "fingerprint": {"files": 1, "bytes": 7, "sha256": "x"}}]}"#,
        );
        let e = recover(&dir).expect_err("refused");
        assert!(
            e.to_string()
                .contains(r#"names "../outside", which is not an output path"#),
            "{e}"
        );
        assert_eq!(read(&outside.join("precious")).as_deref(), Some("keep me"));
        assert!(dir.join(BACKUP_DIR).join(JOURNAL).exists());
        for bad in [
            "not json",
            r#"{"old": ["summary.json"], "new": []}"#,
            r#"{"old": [], "new": [], "x": 1}"#,
        ] {
            put(&dir.join(BACKUP_DIR).join(JOURNAL), bad);
            let e = recover(&dir).expect_err("refused");
            assert!(matches!(e, CommitError::Journal { .. }), "{bad}: {e}");
        }
    }

    /// A directory holding a committed run (`old.png`, `power.zarr/`) beside the user's own `keep/`.
    fn committed(dir: &Path, summary: impl FnOnce(&Path) -> String) {
        put(&dir.join("old.png"), "old png");
        put(&dir.join("power.zarr/zarr.json"), "{}");
        put(&dir.join("power.zarr/c/0"), "chunk");
        put(&dir.join("keep/notes.txt"), "mine");
        let text = summary(dir);
        put(&dir.join(SUMMARY), &text);
    }

    fn summary_of(dir: &Path, paths: &[&str]) -> String {
        let outputs: Vec<serde_json::Value> = paths
            .iter()
            .map(|p| {
                let f = fingerprint(dir, p).expect("list").expect("there");
                serde_json::json!({"path": p, "fingerprint": f})
            })
            .collect();
        serde_json::json!({"outputs": outputs}).to_string()
    }

    fn commit_new(dir: &Path) {
        let staging = dir.join(format!("{STAGING_PREFIX}x"));
        put(&staging.join("power.zarr/zarr.json"), "{\"new\": 1}");
        put(&staging.join(SUMMARY), "new summary");
        let f = fingerprint(&staging, "power.zarr")
            .expect("list")
            .expect("there");
        commit(
            dir,
            &staging,
            &[NewOutput {
                path: "power.zarr".into(),
                fingerprint: f,
            }],
        )
        .expect("commit");
    }

    #[test]
    fn previous_outputs_with_their_recorded_fingerprint_are_replaced() {
        let d = tempfile::tempdir().expect("tmp");
        committed(d.path(), |dir| summary_of(dir, &["old.png", "power.zarr"]));
        commit_new(d.path());
        assert!(!d.path().join("old.png").exists());
        assert!(!d.path().join("power.zarr/c/0").exists());
        assert_eq!(
            read(&d.path().join("power.zarr/zarr.json")).as_deref(),
            Some("{\"new\": 1}")
        );
        assert_eq!(
            read(&d.path().join("keep/notes.txt")).as_deref(),
            Some("mine")
        );
    }

    #[test]
    fn a_summary_arrayjob_did_not_write_deletes_nothing() {
        for summary in [
            // Hand-written: no fingerprints.
            r#"{"outputs": [{"path": "keep"}, {"path": "old.png"}]}"#.to_owned(),
            // A fingerprint that is not the directory's.
            r#"{"outputs": [{"path": "keep", "fingerprint": {"files": 1, "bytes": 4, "sha256": "00"}}]}"#.to_owned(),
            // Paths outside.
            r#"{"outputs": [{"path": "../../etc"}, {"path": "/tmp"}]}"#.to_owned(),
            "not even JSON".to_owned(),
        ] {
            let d = tempfile::tempdir().expect("tmp");
            committed(d.path(), |_| summary.clone());
            commit_new(d.path());
            assert_eq!(read(&d.path().join("keep/notes.txt")).as_deref(), Some("mine"), "{summary}");
            assert_eq!(read(&d.path().join("old.png")).as_deref(), Some("old png"), "{summary}");
        }
    }

    #[test]
    fn a_previous_output_changed_since_its_run_is_left_in_place() {
        let d = tempfile::tempdir().expect("tmp");
        committed(d.path(), |dir| summary_of(dir, &["old.png", "keep"]));
        put(&d.path().join("keep/more.txt"), "added later");
        commit_new(d.path());
        assert_eq!(
            read(&d.path().join("keep/notes.txt")).as_deref(),
            Some("mine")
        );
        assert!(!d.path().join("old.png").exists());
    }

    #[test]
    fn second_lock_is_refused_and_released_on_drop() {
        let d = tempfile::tempdir().expect("tmp");
        let held = OutDirLock::acquire(d.path()).expect("first");
        let e = OutDirLock::acquire(d.path()).expect_err("second");
        assert!(
            e.to_string()
                .contains(&format!("(pid {} holds", std::process::id())),
            "{e}"
        );
        drop(held);
        assert!(!d.path().join(LOCK_FILE).exists());
        OutDirLock::acquire(d.path()).expect("after release");
    }
}
