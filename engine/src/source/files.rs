//! The `files` source: local image files named by an index template or matched by a glob.

use std::path::{Path, PathBuf};

use super::decode::{decode_into, probe};
use super::stack::SliceStack;
use super::template::IndexTemplate;
use super::{Declared, InfoCache, SliceInfo, SliceSource, SourceError, check_range, limits};
use crate::array::Chunk;
use crate::spec::FilesSource;

/// How the files of a [`FilesSliceSource`] are named.
#[derive(Debug, Clone)]
enum Naming {
    /// `template` rendered for indices `start..start + len`, relative to `dir` (which is not parsed, so it may
    /// hold `{`, `%` or `[`).
    Pattern {
        dir: PathBuf,
        template: IndexTemplate,
        start: u64,
    },
    /// These files, sorted by name.
    Glob { glob: String, paths: Vec<PathBuf> },
}

/// Slices read from local PNG, TIFF or JPEG files (8- or 16-bit greyscale).
#[derive(Debug)]
pub struct FilesSliceSource {
    naming: Naming,
    len: usize,
    info: InfoCache,
}

impl FilesSliceSource {
    /// Resolves the spec: relative paths are taken from `files.baseDir` (itself relative to `base_dir`) or
    /// `base_dir`. A glob is expanded here, once. `declared` is what the spec says every slice is.
    ///
    /// # Errors
    /// [`SourceError::Config`] when not exactly one of `pattern` or `glob` is set, the pattern is not a valid
    /// template (only the pattern is parsed, not the directory it is taken from) or its range is empty or too
    /// long, or the glob is invalid or matches no file.
    pub fn new(
        spec: &FilesSource,
        base_dir: &Path,
        declared: Declared,
    ) -> Result<FilesSliceSource, SourceError> {
        let config = |field: &str, message: String| SourceError::Config {
            field: format!("spec.source.files{field}"),
            message,
        };
        let dir = match &spec.base_dir {
            Some(d) => base_dir.join(d),
            None => base_dir.to_path_buf(),
        };
        let (naming, len) = match (&spec.pattern, &spec.glob) {
            (Some(pattern), None) => {
                let template = IndexTemplate::parse(pattern, "spec.source.files.pattern")?;
                let start = spec.start.unwrap_or(0);
                let stop = spec
                    .stop
                    .ok_or_else(|| config(".stop", "is required with pattern".into()))?;
                let len = limits::slice_count("spec.source.files", start, stop)?;
                (
                    Naming::Pattern {
                        dir,
                        template,
                        start,
                    },
                    len,
                )
            }
            (None, Some(glob)) => {
                if spec.start.is_some() || spec.stop.is_some() {
                    return Err(config(
                        "",
                        "start/stop go with pattern, not with glob".into(),
                    ));
                }
                let text = glob_in(&dir, glob)
                    .ok_or_else(|| config(".glob", format!("{dir:?} is not valid UTF-8")))?;
                let text = text.as_str();
                let entries = glob::glob(text)
                    .map_err(|e| config(".glob", format!("bad glob {text:?}: {e}")))?;
                let mut paths = entries
                    .map(|entry| {
                        entry.map_err(|e| config(".glob", format!("while expanding {text:?}: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                paths.retain(|p| p.is_file());
                if paths.is_empty() {
                    return Err(config(".glob", format!("no file matches {text:?}")));
                }
                paths.sort();
                let len = paths.len();
                (
                    Naming::Glob {
                        glob: text.to_owned(),
                        paths,
                    },
                    len,
                )
            }
            _ => {
                return Err(config(
                    "",
                    "exactly one of pattern or glob must be set".into(),
                ));
            }
        };
        Ok(FilesSliceSource {
            naming,
            len,
            info: InfoCache::new(declared),
        })
    }

    /// Path of slice `index`.
    pub fn path(&self, index: usize) -> PathBuf {
        match &self.naming {
            Naming::Pattern {
                dir,
                template,
                start,
            } => dir.join(template.render(start + index as u64)),
            Naming::Glob { paths, .. } => paths.get(index).cloned().unwrap_or_default(),
        }
    }

    /// The bytes of slice `index`'s file, read into `buf` (reused from slice to slice).
    fn read_file(&self, index: usize, buf: &mut Vec<u8>) -> Result<PathBuf, SourceError> {
        use std::io::Read;
        let path = self.path(index);
        let io = |source| SourceError::Io {
            index,
            path: path.display().to_string(),
            source,
        };
        buf.clear();
        // Bounded: a huge file, or one that never ends (a FIFO, a device), fails instead of filling memory.
        let limit = limits::MAX_SLICE_BYTES;
        std::fs::File::open(&path)
            .and_then(|f| f.take(limit + 1).read_to_end(buf))
            .map_err(io)?;
        if buf.len() as u64 > limit {
            return Err(io(std::io::Error::other(format!(
                "more than the limit of {limit} bytes per slice"
            ))));
        }
        Ok(path)
    }
}

/// The glob `pattern` taken from `dir`: `dir` is escaped so its `[`, `*` or `?` match themselves; an absolute
/// `pattern` is used as is. `None` when `dir` is not UTF-8.
fn glob_in(dir: &Path, pattern: &str) -> Option<String> {
    if Path::new(pattern).is_absolute() {
        return Some(pattern.to_owned());
    }
    let dir = glob::Pattern::escape(dir.to_str()?);
    Some(format!("{}/{pattern}", dir.trim_end_matches('/')))
}

impl SliceSource for FilesSliceSource {
    fn len(&self) -> usize {
        self.len
    }

    fn slice_info(&self) -> Result<SliceInfo, SourceError> {
        self.info.get_or_try(|| {
            let mut bytes = Vec::new();
            let path = self.read_file(0, &mut bytes)?;
            let location = path.display().to_string();
            Ok((probe(&bytes, 0, &location)?, location))
        })
    }

    fn read(&self, start: usize, end: usize) -> Result<Chunk, SourceError> {
        check_range(self, start, end)?;
        let info = self.slice_info()?;
        let mut stack = SliceStack::new(start, end, info)?;
        let mut bytes = Vec::new();
        for index in start..end {
            let path = self.read_file(index, &mut bytes)?;
            let location = path.display().to_string();
            let basis = self.info.declared.basis();
            decode_into(&bytes, index, &location, info, basis, stack.slot(index))?;
        }
        Ok(stack.finish())
    }

    fn describe(&self) -> String {
        match &self.naming {
            Naming::Pattern {
                dir,
                template,
                start,
            } => format!(
                "files {} [{start}, {})",
                dir.join(template.as_str()).display(),
                start + self.len as u64
            ),
            Naming::Glob { glob, .. } => format!("files {glob} ({} files)", self.len),
        }
    }
}
