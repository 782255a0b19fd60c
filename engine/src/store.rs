//! The chunk store: finished chunks waiting for their consumers, held in memory up to a byte budget.
//!
//! Over the budget, the least recently stored chunks are spilled to a [`SpillBackend`] (a local file here; an
//! S3 backend slots in for the distributed runner) and read back when a consumer asks for them. Each chunk is
//! stored with the number of consumers that will take it; the last take frees it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::array::{Chunk, DType};

/// Identifies a stored chunk: node, target chunk (linear index) and part (linear index of the source chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkKey {
    /// Plan node the chunk belongs to.
    pub node: u32,
    /// Linear index of the chunk (or of the target chunk, for rechunk pieces).
    pub chunk: u32,
    /// Linear index of the input chunk a piece came from (0 otherwise).
    pub part: u32,
}

/// Where spilled chunks go.
pub trait SpillBackend: Send + Sync + std::fmt::Debug {
    /// Stores bytes; returns a handle for [`SpillBackend::read`].
    ///
    /// # Errors
    /// When the backend cannot write.
    fn write(&self, bytes: &[u8]) -> std::io::Result<SpillHandle>;
    /// Reads back what `write` stored.
    ///
    /// # Errors
    /// When the backend cannot read.
    fn read(&self, handle: &SpillHandle) -> std::io::Result<Vec<u8>>;
}

/// Location of spilled bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpillHandle {
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
}

/// Spills into one append-only file (unlinked on drop), read back with positioned reads.
#[derive(Debug)]
pub struct FileSpill {
    file: std::fs::File,
    end: Mutex<u64>,
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
            end: Mutex::new(0),
            _dir: dir,
        })
    }
}

impl SpillBackend for FileSpill {
    fn write(&self, bytes: &[u8]) -> std::io::Result<SpillHandle> {
        use std::os::unix::fs::FileExt;
        let offset = {
            let mut end = self.end.lock().unwrap_or_else(|e| e.into_inner());
            let o = *end;
            *end += bytes.len() as u64;
            o
        };
        self.file.write_all_at(bytes, offset)?;
        Ok(SpillHandle {
            offset,
            len: bytes.len() as u64,
        })
    }

    fn read(&self, h: &SpillHandle) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; h.len as usize];
        self.file.read_exact_at(&mut buf, h.offset)?;
        Ok(buf)
    }
}

/// Failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A chunk was asked for that is not (or no longer) stored: a planning bug.
    #[error("chunk {0:?} is not in the store")]
    Missing(ChunkKey),
    /// Spilling or reading back failed.
    #[error("spill of chunk {key:?} failed: {source}")]
    Spill {
        /// The chunk.
        key: ChunkKey,
        /// The I/O error.
        source: std::io::Error,
    },
}

enum Slot {
    Resident(Arc<Chunk>, u64),
    Spilled {
        handle: SpillHandle,
        dtype: DType,
        shape: Vec<usize>,
    },
}

struct Entry {
    slot: Slot,
    takes_left: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<ChunkKey, Entry>,
    /// Resident chunks by insertion tick (oldest first), the spill order.
    lru: BTreeMap<u64, ChunkKey>,
    resident: usize,
    tick: u64,
}

/// Counters of a store, for summaries.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStats {
    /// Highest resident bytes seen.
    pub peak_resident_bytes: u64,
    /// Bytes written to the spill backend.
    pub spilled_bytes: u64,
    /// Bytes read back from it.
    pub unspilled_bytes: u64,
}

/// Chunks waiting for consumers, bounded by a byte budget.
#[derive(Debug)]
pub struct ChunkStore {
    budget: usize,
    inner: Mutex<Inner>,
    spill: Box<dyn SpillBackend>,
    peak: AtomicU64,
    spilled: AtomicU64,
    unspilled: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Inner({} chunks, {} resident bytes)",
            self.entries.len(),
            self.resident
        )
    }
}

impl ChunkStore {
    /// A store keeping at most `budget` bytes resident, spilling the rest to `spill`.
    pub fn new(budget: usize, spill: Box<dyn SpillBackend>) -> ChunkStore {
        ChunkStore {
            budget,
            inner: Mutex::new(Inner::default()),
            spill,
            peak: AtomicU64::new(0),
            spilled: AtomicU64::new(0),
            unspilled: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `chunk` for `takes` consumers (each calls [`ChunkStore::take`] once), spilling older chunks
    /// if the budget is exceeded.
    ///
    /// # Errors
    /// When spilling fails.
    pub fn put(&self, key: ChunkKey, chunk: Chunk, takes: usize) -> Result<(), StoreError> {
        let n = chunk.nbytes();
        {
            let mut g = self.lock();
            g.tick += 1;
            let t = g.tick;
            g.entries.insert(
                key,
                Entry {
                    slot: Slot::Resident(Arc::new(chunk), t),
                    takes_left: takes.max(1),
                },
            );
            g.lru.insert(t, key);
            g.resident += n;
            self.peak.fetch_max(g.resident as u64, Ordering::Relaxed);
        }
        self.enforce_budget()
    }

    /// Spills the oldest resident chunks until the budget holds. Serialisation and I/O happen outside the lock.
    fn enforce_budget(&self) -> Result<(), StoreError> {
        loop {
            let (key, chunk) = {
                let mut g = self.lock();
                if g.resident <= self.budget {
                    return Ok(());
                }
                let Some((&t, &key)) = g.lru.iter().next() else {
                    return Ok(());
                };
                g.lru.remove(&t);
                let chunk = match g.entries.get(&key).map(|e| &e.slot) {
                    Some(Slot::Resident(c, _)) => c.clone(),
                    _ => continue,
                };
                // Accounted as gone now; a concurrent reader may still hold its own Arc.
                g.resident -= chunk.nbytes();
                (key, chunk)
            };
            let handle = self
                .spill
                .write(&chunk.to_le_bytes())
                .map_err(|source| StoreError::Spill { key, source })?;
            self.spilled.fetch_add(handle.len, Ordering::Relaxed);
            let mut g = self.lock();
            if let Some(e) = g.entries.get_mut(&key) {
                e.slot = Slot::Spilled {
                    handle,
                    dtype: chunk.dtype(),
                    shape: chunk.shape().to_vec(),
                };
            }
        }
    }

    /// Takes a chunk for one consumer; the last consumer's take removes it from the store.
    ///
    /// # Errors
    /// When the chunk is not stored, or reading it back from the spill fails.
    pub fn take(&self, key: ChunkKey) -> Result<Arc<Chunk>, StoreError> {
        let slot_copy = {
            let mut g = self.lock();
            let e = g.entries.get_mut(&key).ok_or(StoreError::Missing(key))?;
            e.takes_left -= 1;
            let last = e.takes_left == 0;
            let copy = match &e.slot {
                Slot::Resident(c, t) => Ok((c.clone(), *t)),
                Slot::Spilled {
                    handle,
                    dtype,
                    shape,
                } => Err((*handle, *dtype, shape.clone())),
            };
            if last {
                g.entries.remove(&key);
                if let Ok((c, t)) = &copy {
                    g.lru.remove(t);
                    g.resident -= c.nbytes();
                }
            }
            copy
        };
        match slot_copy {
            Ok((c, _)) => Ok(c),
            Err((handle, dtype, shape)) => {
                let bytes = self
                    .spill
                    .read(&handle)
                    .map_err(|source| StoreError::Spill { key, source })?;
                self.unspilled.fetch_add(handle.len, Ordering::Relaxed);
                let c =
                    Chunk::from_le_bytes(dtype, &shape, &bytes).map_err(|m| StoreError::Spill {
                        key,
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, m),
                    })?;
                Ok(Arc::new(c))
            }
        }
    }

    /// Bytes currently resident.
    pub fn resident_bytes(&self) -> usize {
        self.lock().resident
    }

    /// Number of chunks stored (resident or spilled).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters so far.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            peak_resident_bytes: self.peak.load(Ordering::Relaxed),
            spilled_bytes: self.spilled.load(Ordering::Relaxed),
            unspilled_bytes: self.unspilled.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn chunk(v: u8) -> Chunk {
        Chunk::U8(ArrayD::from_elem(IxDyn(&[10, 10]), v))
    }

    fn key(c: u32) -> ChunkKey {
        ChunkKey {
            node: 1,
            chunk: c,
            part: 0,
        }
    }

    #[test]
    fn spills_over_budget_and_reads_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = ChunkStore::new(250, Box::new(FileSpill::new(dir.path()).expect("spill")));
        for c in 0..5 {
            s.put(key(c), chunk(c as u8), 1).expect("put");
        }
        assert!(s.resident_bytes() <= 250);
        assert_eq!(s.len(), 5);
        assert_eq!(s.stats().spilled_bytes, 300);
        for c in 0..5 {
            let got = s.take(key(c)).expect("take");
            assert_eq!(*got, chunk(c as u8));
        }
        assert!(s.is_empty());
        assert_eq!(s.resident_bytes(), 0);
        assert_eq!(s.stats().unspilled_bytes, 300);
        assert!(matches!(s.take(key(0)), Err(StoreError::Missing(_))));
    }

    #[test]
    fn chunk_lives_until_its_last_consumer() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = ChunkStore::new(
            1 << 20,
            Box::new(FileSpill::new(dir.path()).expect("spill")),
        );
        s.put(key(7), chunk(7), 2).expect("put");
        s.take(key(7)).expect("first");
        assert_eq!(s.len(), 1);
        s.take(key(7)).expect("second");
        assert!(s.is_empty());
    }
}
