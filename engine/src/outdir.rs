//! The output directory of a local run: its lock, the leftovers of killed runs, and the all-or-nothing commit
//! of a run's outputs (the protocol is written down in `docs/architecture.md`, "Output directory").
//!
//! Entries of the runner, all named `.arrayjob*` (output paths may not start so, see validation):
//! - `.arrayjob.lock`: held (OS advisory lock) by the run using the directory; removed when it ends;
//! - `.arrayjob-staging-*`: where a run writes its outputs; removed when it ends, or by the next run if the
//!   process was killed;
//! - `.arrayjob-backup/`: the previous outputs while a commit replaces them, with `journal.json`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::runner::{RunError, io_err};

/// Lock file of the run that uses an output directory.
pub const LOCK_FILE: &str = ".arrayjob.lock";
/// Prefix of staging directories.
pub const STAGING_PREFIX: &str = ".arrayjob-staging-";
/// Where a commit keeps the previous outputs until the new ones are all in place.
pub const BACKUP_DIR: &str = ".arrayjob-backup";
/// The run's summary, written last: its presence marks a committed run.
pub const SUMMARY: &str = "summary.json";
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
    /// [`RunError::Busy`] when another run holds it, [`RunError::OutDir`] when the file cannot be made.
    pub fn acquire(dir: &Path) -> Result<OutDirLock, RunError> {
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
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let holder = match holder.trim() {
                        "" => "a process".to_owned(),
                        h => h.to_owned(),
                    };
                    return Err(RunError::Busy {
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
/// When a leftover cannot be removed or restored.
pub fn clean(dir: &Path, _lock: &OutDirLock) -> Result<(), RunError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(STAGING_PREFIX)
        {
            let path = entry.path();
            warn!(path = %path.display(), "removing the staging directory of a killed run");
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
    }
    recover(dir)
}

/// What a commit moves: `old` paths go from the output directory to the backup, `new` ones from staging to
/// the output directory.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    old: Vec<String>,
    new: Vec<String>,
}

/// Settles a backup left by a commit that did not finish: if `summary.json` is in place the commit had
/// happened and the backup is deleted; otherwise the commit is rolled back and the backup restored.
///
/// # Errors
/// When the backup cannot be read, restored or removed.
pub fn recover(dir: &Path) -> Result<(), RunError> {
    let backup = dir.join(BACKUP_DIR);
    if !backup.exists() {
        return Ok(());
    }
    let journal_path = backup.join(JOURNAL);
    let journal = match std::fs::read(&journal_path) {
        // Killed before the journal was written: nothing was moved yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&journal_path)(e)),
        Ok(bytes) => Some(serde_json::from_slice::<Journal>(&bytes).map_err(|e| {
            io_err(&journal_path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?),
    };
    match journal {
        Some(j) if !dir.join(SUMMARY).exists() => {
            warn!(dir = %dir.display(), "restoring the previous outputs after an interrupted commit");
            roll_back(dir, &j)
        }
        _ => std::fs::remove_dir_all(&backup).map_err(io_err(&backup)),
    }
}

/// Moves the outputs `new` (paths relative to `staging`) and then `staging/summary.json` into `dir`, replacing
/// the previous run's outputs (those listed in its `summary.json`, and any other file at a new path) as a
/// whole: on failure everything is put back as it was.
///
/// # Errors
/// The first failure; [`RunError::Rollback`] when putting things back failed too (the next run retries).
pub fn commit(dir: &Path, staging: &Path, new: &[String]) -> Result<(), RunError> {
    let backup = dir.join(BACKUP_DIR);
    let journal = Journal {
        old: previous_outputs(dir, new),
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
            Err(r) => Err(RunError::Rollback {
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
fn swap(dir: &Path, staging: &Path, j: &Journal) -> Result<(), RunError> {
    let backup = dir.join(BACKUP_DIR);
    move_if_there(&dir.join(SUMMARY), &backup.join(SUMMARY))?;
    for p in &j.old {
        move_if_there(&dir.join(p), &backup.join("files").join(p))?;
    }
    for p in &j.new {
        move_path(&staging.join(p), &dir.join(p))?;
    }
    move_path(&staging.join(SUMMARY), &dir.join(SUMMARY))
}

/// Undoes a partial [`swap`]: removes the new outputs moved in, moves the old ones and the old summary back,
/// then deletes the backup.
fn roll_back(dir: &Path, j: &Journal) -> Result<(), RunError> {
    let backup = dir.join(BACKUP_DIR);
    let files = backup.join("files");
    for p in &j.new {
        let to = dir.join(p);
        // A path that existed before the commit is new only once its old content went to the backup.
        let moved_in = !j.old.contains(p) || files.join(p).symlink_metadata().is_ok();
        if moved_in && to.symlink_metadata().is_ok() {
            remove_path(&to)?;
        }
    }
    for p in &j.old {
        move_if_there(&files.join(p), &dir.join(p))?;
    }
    move_if_there(&backup.join(SUMMARY), &dir.join(SUMMARY))?;
    std::fs::remove_dir_all(&backup).map_err(io_err(&backup))
}

/// Outputs of the run committed in `dir` (from its `summary.json`) and whatever is at the `new` paths, minus
/// paths inside another of them (they move with it) and paths that are not plain relative output paths.
fn previous_outputs(dir: &Path, new: &[String]) -> Vec<String> {
    let mut paths: Vec<String> = std::fs::read(dir.join(SUMMARY))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.get("outputs")?.as_array().map(|a| {
                a.iter()
                    .filter_map(|o| Some(o.get("path")?.as_str()?.to_owned()))
                    .collect()
            })
        })
        .unwrap_or_default();
    paths.extend(
        new.iter()
            .filter(|p| dir.join(p).symlink_metadata().is_ok())
            .cloned(),
    );
    paths.retain(|p| crate::validate::output_path_problem(p).is_none());
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

/// Renames `from` to `to` (creating `to`'s parent), if `from` exists.
fn move_if_there(from: &Path, to: &Path) -> Result<(), RunError> {
    if from.symlink_metadata().is_ok() {
        move_path(from, to)?;
    }
    Ok(())
}

fn move_path(from: &Path, to: &Path) -> Result<(), RunError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    std::fs::rename(from, to).map_err(io_err(to))
}

fn remove_path(p: &Path) -> Result<(), RunError> {
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

    /// A commit killed after moving `moved_aside` of the old outputs (`a.csv`, `b.csv`) to the backup and
    /// moving in the new `c.csv`; the new `a.csv` is in place only if its old one was moved aside.
    fn killed_commit(dir: &Path, moved_aside: &[&str]) {
        let backup = dir.join(BACKUP_DIR);
        put(&backup.join(SUMMARY), "old summary");
        put(
            &backup.join(JOURNAL),
            r#"{"old": ["a.csv", "b.csv"], "new": ["a.csv", "c.csv"]}"#,
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
