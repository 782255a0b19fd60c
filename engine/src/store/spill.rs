//! Where the chunk store spills: the [`SpillBackend`] trait and [`FileSpill`], one local file with a hole
//! punched for every frame deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::data::DataKey;

/// Where spilled chunks go: frames ([`crate::frame`]) stored under their chunk's key.
pub trait SpillBackend: Send + Sync + std::fmt::Debug {
    /// Stores `frame` under `key`, replacing what was stored under it.
    ///
    /// # Errors
    /// When the backend cannot write.
    fn write(&self, key: DataKey, frame: &[u8]) -> std::io::Result<()>;
    /// Reads back the frame stored under `key`.
    ///
    /// # Errors
    /// When nothing is stored under `key` or the backend cannot read.
    fn read(&self, key: DataKey) -> std::io::Result<Vec<u8>>;
    /// Forgets `key` and frees the space of its frame (nothing happens for a key not stored).
    ///
    /// # Errors
    /// When the backend cannot free the space.
    fn delete(&self, key: DataKey) -> std::io::Result<()>;
    /// Bytes written so far to S3 (the third tier, [`crate::s3::spill::TieredSpill`]); 0 for local backends.
    fn s3_bytes(&self) -> u64 {
        0
    }
}

/// Where each key's frame is in a [`FileSpill`]'s file (offset, length), and the end of the file.
type SpillIndex = (HashMap<DataKey, (u64, u64)>, u64);

/// Spills into one file (unlinked on drop): frames are appended and read back with positioned reads; a deleted
/// frame's blocks are given back to the filesystem by punching a hole (`fallocate`), so the file's disk usage
/// follows what is spilled now, not everything ever spilled.
#[derive(Debug)]
pub struct FileSpill {
    file: std::fs::File,
    index: Mutex<SpillIndex>,
    _dir: tempfile::TempDir,
}

impl FileSpill {
    /// Creates the spill file in a fresh temporary directory under `parent`.
    ///
    /// # Errors
    /// When the directory or file cannot be created.
    pub fn new(parent: &std::path::Path) -> std::io::Result<FileSpill> {
        std::fs::create_dir_all(parent)?;
        let dir = tempfile::Builder::new()
            .prefix("arrayjob-spill-")
            .tempdir_in(parent)?;
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(dir.path().join("chunks"))?;
        Ok(FileSpill {
            file,
            index: Mutex::new((HashMap::new(), 0)),
            _dir: dir,
        })
    }

    /// Blocks of the file in use (what the spill costs on disk now).
    pub fn disk_bytes(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }

    fn punch(&self, offset: u64, len: u64) -> std::io::Result<()> {
        use nix::fcntl::{FallocateFlags, fallocate};
        let (Ok(o), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(std::io::Error::other("spill offset out of range"));
        };
        match fallocate(
            &self.file,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            o,
            l,
        ) {
            // Filesystems without hole punching keep the space until the file goes (at the end of the job).
            Ok(()) | Err(nix::errno::Errno::EOPNOTSUPP) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl SpillBackend for FileSpill {
    fn write(&self, key: DataKey, frame: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let offset = {
            let mut g = self.index.lock().unwrap_or_else(|e| e.into_inner());
            let o = g.1;
            g.1 += frame.len() as u64;
            o
        };
        self.file.write_all_at(frame, offset)?;
        let old = {
            let mut g = self.index.lock().unwrap_or_else(|e| e.into_inner());
            g.0.insert(key, (offset, frame.len() as u64))
        };
        match old {
            Some((o, l)) => self.punch(o, l),
            None => Ok(()),
        }
    }

    fn read(&self, key: DataKey) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let found = {
            let g = self.index.lock().unwrap_or_else(|e| e.into_inner());
            g.0.get(&key).copied()
        };
        let Some((offset, len)) = found else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no spilled frame for {key}"),
            ));
        };
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn delete(&self, key: DataKey) -> std::io::Result<()> {
        let found = {
            let mut g = self.index.lock().unwrap_or_else(|e| e.into_inner());
            g.0.remove(&key)
        };
        match found {
            Some((o, l)) => self.punch(o, l),
            None => Ok(()),
        }
    }
}

/// A shared backend (e.g. one a caller keeps to look at) spills like the backend itself.
impl<B: SpillBackend> SpillBackend for Arc<B> {
    fn write(&self, key: DataKey, frame: &[u8]) -> std::io::Result<()> {
        (**self).write(key, frame)
    }
    fn read(&self, key: DataKey) -> std::io::Result<Vec<u8>> {
        (**self).read(key)
    }
    fn delete(&self, key: DataKey) -> std::io::Result<()> {
        (**self).delete(key)
    }
    fn s3_bytes(&self) -> u64 {
        (**self).s3_bytes()
    }
}
