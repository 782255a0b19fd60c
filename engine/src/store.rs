//! The chunk store: finished chunks waiting for their consumers, held in memory up to a byte budget.
//!
//! Over the budget, the least recently stored chunks are spilled to a [`SpillBackend`] (a local file here; an
//! S3 backend slots in for the distributed runner) as self-describing, checksummed frames ([`crate::frame`])
//! stored under their key, and read back when a consumer asks for them. Each chunk is stored with the number
//! of consumers that will take it; the last take frees it, and deletes its spilled frame.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::data::{Data, DataKey};

mod spill;

pub use self::spill::{FileSpill, SpillBackend};

/// Failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A chunk was asked for that is not (or no longer) stored: a planning bug.
    #[error("{0} is not in the store")]
    Missing(DataKey),
    /// A spilled chunk came back damaged (its frame's length, header or checksum is wrong): never used; the
    /// distributed runtime rebuilds it from lineage.
    #[error("spilled {key} came back damaged: {message}")]
    Damaged {
        /// The chunk.
        key: DataKey,
        /// What was wrong.
        message: String,
    },
    /// Spilling or reading back failed.
    #[error("spill of {key} failed: {source}")]
    Spill {
        /// The chunk.
        key: DataKey,
        /// The I/O error.
        source: std::io::Error,
    },
}

enum Slot {
    /// In memory, listed in the LRU under this tick.
    Resident(Arc<Data>, u64),
    /// Chosen for spilling; still in memory (and counted as resident) until the write finishes. Out of the LRU.
    Spilling(Arc<Data>),
    /// Spilled: its frame is in the backend under the entry's key.
    Spilled,
}

struct Entry {
    slot: Slot,
    takes_left: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<DataKey, Entry>,
    /// Resident chunks by insertion tick (oldest first), the spill order.
    lru: BTreeMap<u64, DataKey>,
    /// Bytes of the Resident and Spilling entries.
    resident: usize,
    /// Bytes of the Spilling entries (part of `resident`, no longer counted against the budget).
    spilling: usize,
    /// Bytes the engine holds outside the store but within the budget ([`ChunkStore::hold`]).
    held: usize,
    tick: u64,
}

impl Inner {
    /// Forgets the memory accounting of a slot leaving the store (or leaving memory).
    fn release(&mut self, slot: &Slot) {
        match slot {
            Slot::Resident(c, t) => {
                self.lru.remove(t);
                self.resident = sub(self.resident, c.nbytes());
            }
            Slot::Spilling(c) => {
                self.resident = sub(self.resident, c.nbytes());
                self.spilling = sub(self.spilling, c.nbytes());
            }
            Slot::Spilled => {}
        }
    }
}

/// Counter decrement; an underflow would be an accounting bug, so it is loud in debug builds and saturates
/// otherwise (a wrapped counter would spill everything forever).
fn sub(a: usize, b: usize) -> usize {
    debug_assert!(a >= b, "chunk store accounting underflow: {a} - {b}");
    a.saturating_sub(b)
}

/// Counters of a store, for summaries (a wire type).
pub use arrayjob_spec::progress::StoreStats;

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
    pub fn put(&self, key: DataKey, data: impl Into<Data>, takes: usize) -> Result<(), StoreError> {
        let chunk: Data = data.into();
        let n = chunk.nbytes();
        {
            let mut g = self.lock();
            g.tick += 1;
            let t = g.tick;
            let old = g.entries.insert(
                key,
                Entry {
                    slot: Slot::Resident(Arc::new(chunk), t),
                    takes_left: takes.max(1),
                },
            );
            // A key stored again replaces the old chunk: its bytes no longer count.
            if let Some(old) = &old {
                g.release(&old.slot);
            }
            if let Some(Entry {
                slot: Slot::Spilled,
                ..
            }) = old
            {
                drop(g);
                self.spill
                    .delete(key)
                    .map_err(|source| StoreError::Spill { key, source })?;
                g = self.lock();
            }
            g.lru.insert(t, key);
            g.resident += n;
            self.peak
                .fetch_max((g.resident + g.held) as u64, Ordering::Relaxed);
        }
        self.enforce_budget()
    }

    /// Counts `bytes` that the caller keeps in memory outside the store (a block being merged, reduction
    /// partials waiting for their siblings) against the budget, spilling stored chunks to make room. Give them
    /// back with [`ChunkStore::release`].
    ///
    /// # Errors
    /// When spilling fails.
    pub fn hold(&self, bytes: usize) -> Result<(), StoreError> {
        {
            let mut g = self.lock();
            g.held += bytes;
            self.peak
                .fetch_max((g.resident + g.held) as u64, Ordering::Relaxed);
        }
        self.enforce_budget()
    }

    /// Gives back bytes counted by [`ChunkStore::hold`].
    pub fn release(&self, bytes: usize) {
        let mut g = self.lock();
        g.held = sub(g.held, bytes);
    }

    /// Bytes currently counted by [`ChunkStore::hold`].
    pub fn held_bytes(&self) -> usize {
        self.lock().held
    }

    /// Spills the oldest resident chunks until the budget holds. Serialisation and I/O happen outside the lock;
    /// meanwhile the chunk is `Spilling`: readable, still counted as resident, but no longer against the budget.
    fn enforce_budget(&self) -> Result<(), StoreError> {
        loop {
            let (key, chunk) = {
                let mut g = self.lock();
                if sub(g.resident, g.spilling) + g.held <= self.budget {
                    return Ok(());
                }
                let Some((_, key)) = g.lru.pop_first() else {
                    return Ok(());
                };
                let Some(e) = g.entries.get_mut(&key) else {
                    continue;
                };
                let Slot::Resident(c, _) = &e.slot else {
                    continue;
                };
                let chunk = c.clone();
                e.slot = Slot::Spilling(chunk.clone());
                g.spilling += chunk.nbytes();
                (key, chunk)
            };
            let frame = crate::frame::encode(&chunk);
            let frame_len = frame.len() as u64;
            let written = self.spill.write(key, &frame);
            drop(frame);
            if written.is_ok() {
                self.spilled.fetch_add(frame_len, Ordering::Relaxed);
            }
            let mut g = self.lock();
            // Only the entry this spill started from: its last take may have removed it meanwhile (its
            // accounting went with it; the write, even a failed one, no longer matters), and a new chunk may
            // have been stored under the same key since.
            let ours = matches!(
                g.entries.get(&key),
                Some(Entry { slot: Slot::Spilling(c), .. }) if Arc::ptr_eq(c, &chunk)
            );
            if !ours {
                // Taken meanwhile by its last consumer: nobody will read the frame. (A chunk stored again under
                // the same key since is resident or being spilled itself, and its own write replaces ours.)
                let gone = !g.entries.contains_key(&key);
                drop(g);
                if gone && written.is_ok() {
                    self.spill
                        .delete(key)
                        .map_err(|source| StoreError::Spill { key, source })?;
                }
                continue;
            }
            let n = chunk.nbytes();
            g.spilling = sub(g.spilling, n);
            match written {
                Ok(()) => {
                    g.resident = sub(g.resident, n);
                    if let Some(e) = g.entries.get_mut(&key) {
                        e.slot = Slot::Spilled;
                    }
                }
                Err(source) => {
                    // Back to the LRU (as the newest) so the store stays usable; the caller sees the error.
                    g.tick += 1;
                    let t = g.tick;
                    g.lru.insert(t, key);
                    if let Some(e) = g.entries.get_mut(&key) {
                        e.slot = Slot::Resident(chunk, t);
                    }
                    return Err(StoreError::Spill { key, source });
                }
            }
        }
    }

    /// Takes a chunk for one consumer; the last consumer's take removes it from the store.
    ///
    /// # Errors
    /// When the chunk is not stored, or reading it back from the spill fails.
    pub fn take(&self, key: DataKey) -> Result<Arc<Data>, StoreError> {
        let (found, last) = {
            let mut g = self.lock();
            let e = g.entries.get_mut(&key).ok_or(StoreError::Missing(key))?;
            e.takes_left -= 1;
            let found = match &e.slot {
                Slot::Resident(c, _) | Slot::Spilling(c) => Some(c.clone()),
                Slot::Spilled => None,
            };
            let last = e.takes_left == 0;
            if last && let Some(e) = g.entries.remove(&key) {
                g.release(&e.slot);
            }
            (found, last)
        };
        if let Some(c) = found {
            return Ok(c);
        }
        let c = self.read_back(key)?;
        if last {
            self.spill
                .delete(key)
                .map_err(|source| StoreError::Spill { key, source })?;
        }
        Ok(c)
    }

    /// Reads a spilled chunk back from the backend (its frame stays there).
    fn read_back(&self, key: DataKey) -> Result<Arc<Data>, StoreError> {
        let spill_err = |source| StoreError::Spill { key, source };
        let frame = self.spill.read(key).map_err(spill_err)?;
        self.unspilled
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        let c = crate::frame::decode(&frame).map_err(|e| StoreError::Damaged {
            key,
            message: e.to_string(),
        })?;
        Ok(Arc::new(c))
    }

    /// Reads a chunk without taking it (for stores whose entries live until [`ChunkStore::remove`]: a worker
    /// keeps what it produced until the coordinator says no reader is left).
    ///
    /// # Errors
    /// When the chunk is not stored, or reading it back from the spill fails.
    pub fn get(&self, key: DataKey) -> Result<Arc<Data>, StoreError> {
        let found = {
            let g = self.lock();
            match &g.entries.get(&key).ok_or(StoreError::Missing(key))?.slot {
                Slot::Resident(c, _) | Slot::Spilling(c) => Some(c.clone()),
                Slot::Spilled => None,
            }
        };
        match found {
            Some(c) => Ok(c),
            None => self.read_back(key),
        }
    }

    /// Whether `key` is stored (in memory or spilled).
    pub fn contains(&self, key: DataKey) -> bool {
        self.lock().entries.contains_key(&key)
    }

    /// Forgets `key` (and its spilled frame); true when it was stored.
    ///
    /// # Errors
    /// When the spilled frame cannot be deleted.
    pub fn remove(&self, key: DataKey) -> Result<bool, StoreError> {
        let removed = {
            let mut g = self.lock();
            let e = g.entries.remove(&key);
            if let Some(e) = &e {
                g.release(&e.slot);
            }
            e
        };
        match removed {
            Some(Entry {
                slot: Slot::Spilled,
                ..
            }) => {
                self.spill
                    .delete(key)
                    .map_err(|source| StoreError::Spill { key, source })?;
                Ok(true)
            }
            Some(_) => Ok(true),
            None => Ok(false),
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
            spilled_to_s3_bytes: self.spill.s3_bytes(),
        }
    }

    /// Recounts the entries and compares with the running counters.
    #[cfg(test)]
    fn audit(&self) -> Result<(), String> {
        let g = self.lock();
        let (mut resident, mut spilling, mut listed) = (0, 0, 0);
        for (k, e) in &g.entries {
            match &e.slot {
                Slot::Resident(c, t) => {
                    resident += c.nbytes();
                    listed += 1;
                    if g.lru.get(t) != Some(k) {
                        return Err(format!("{k:?} resident but not in the LRU at {t}"));
                    }
                }
                Slot::Spilling(c) => {
                    resident += c.nbytes();
                    spilling += c.nbytes();
                }
                Slot::Spilled => {}
            }
        }
        if (resident, spilling, listed) != (g.resident, g.spilling, g.lru.len()) {
            return Err(format!(
                "counted resident {resident}, spilling {spilling}, {listed} in the LRU; \
                 store says {}, {}, {}",
                g.resident,
                g.spilling,
                g.lru.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::array::Chunk;
    use ndarray::{ArrayD, IxDyn};

    fn chunk(v: u8) -> Data {
        Data::Chunk(Chunk::U8(ArrayD::from_elem(IxDyn(&[10, 10]), v)))
    }

    /// Bytes of the spill frame of a test chunk (its 100 bytes plus the frame's header and checksum).
    fn frame_len() -> u64 {
        crate::frame::encode(&chunk(0)).len() as u64
    }

    fn key(c: usize) -> DataKey {
        DataKey::Piece {
            node: 1,
            group: c,
            part: 0,
        }
    }

    #[test]
    fn held_bytes_count_against_the_budget() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = ChunkStore::new(250, Box::new(FileSpill::new(dir.path()).expect("spill")));
        for c in 0..2 {
            s.put(key(c), chunk(c as u8), 1).expect("put");
        }
        assert_eq!(s.stats().spilled_bytes, 0, "200 bytes fit in 250");
        // A 120-byte merge block: the oldest chunk goes to disk to make room.
        s.hold(120).expect("hold");
        assert_eq!(s.stats().spilled_bytes, frame_len());
        assert_eq!((s.resident_bytes(), s.held_bytes()), (100, 120));
        assert_eq!(s.stats().peak_resident_bytes, 320);
        s.release(120);
        assert_eq!(s.held_bytes(), 0);
        assert_eq!(*s.take(key(0)).expect("read back"), chunk(0));
    }

    #[test]
    fn get_keeps_and_remove_forgets_spilled_and_resident_chunks() {
        let dir = tempfile::tempdir().expect("tmp");
        let spill = std::sync::Arc::new(FileSpill::new(dir.path()).expect("spill"));
        let s = ChunkStore::new(150, Box::new(spill.clone()));
        for c in 0..3 {
            s.put(key(c), chunk(c as u8), usize::MAX).expect("put");
        }
        // Two of three are on disk; reading any of them twice leaves it stored.
        for _ in 0..2 {
            for c in 0..3 {
                assert_eq!(*s.get(key(c)).expect("get"), chunk(c as u8));
            }
        }
        assert_eq!(s.len(), 3);
        assert!(s.remove(key(0)).expect("remove spilled"));
        assert!(s.remove(key(2)).expect("remove resident"));
        assert!(!s.remove(key(2)).expect("remove again"), "already gone");
        assert_eq!(s.len(), 1);
        assert!(matches!(s.get(key(0)), Err(StoreError::Missing(_))));
        assert!(s.remove(key(1)).expect("remove"));
        assert_eq!((s.resident_bytes(), s.len()), (0, 0));
        for c in 0..3 {
            assert!(spill.read(key(c)).is_err(), "spilled frame {c} deleted");
        }
        s.audit().expect("accounting");
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
        assert_eq!(s.stats().spilled_bytes, 3 * frame_len());
        for c in 0..5 {
            let got = s.take(key(c)).expect("take");
            assert_eq!(*got, chunk(c as u8));
        }
        assert!(s.is_empty());
        assert_eq!(s.resident_bytes(), 0);
        assert_eq!(s.stats().unspilled_bytes, 3 * frame_len());
        assert!(matches!(s.take(key(0)), Err(StoreError::Missing(_))));
    }

    #[test]
    fn consumed_frames_are_deleted_from_the_spill_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let spill = std::sync::Arc::new(FileSpill::new(dir.path()).expect("spill"));
        // 64 KiB chunks, a budget of one: every other chunk goes to disk.
        let big = |v: u8| Data::Chunk(Chunk::U8(ArrayD::from_elem(IxDyn(&[256, 256]), v)));
        let s = ChunkStore::new(70_000, Box::new(spill.clone()));
        for c in 0..8 {
            s.put(key(c), big(c as u8), 2).expect("put");
        }
        let on_disk = spill.disk_bytes().expect("stat");
        assert!(
            on_disk >= 7 * 65536,
            "7 chunks spilled: {on_disk} bytes on disk"
        );
        for c in 0..8 {
            // The first take reads the frame back and keeps it; the second deletes it.
            assert_eq!(*s.take(key(c)).expect("take 1"), big(c as u8));
            assert_eq!(*s.take(key(c)).expect("take 2"), big(c as u8));
        }
        assert!(s.is_empty());
        let left = spill.disk_bytes().expect("stat");
        assert!(
            left < 65536,
            "frames deleted when consumed: {left} bytes still on disk"
        );
        assert!(
            spill.read(key(3)).is_err(),
            "a consumed chunk's frame is gone from the backend"
        );
    }

    #[test]
    fn storing_a_spilled_key_again_deletes_its_old_frame() {
        let dir = tempfile::tempdir().expect("tmp");
        let spill = std::sync::Arc::new(FileSpill::new(dir.path()).expect("spill"));
        let s = ChunkStore::new(100, Box::new(spill.clone()));
        s.put(key(0), chunk(1), 1).expect("put");
        s.put(key(1), chunk(2), 1).expect("put (spills chunk 0)");
        assert!(spill.read(key(0)).is_ok(), "chunk 0 is on disk");
        s.take(key(1)).expect("take 1");
        s.put(key(0), chunk(3), 1).expect("put again");
        assert!(spill.read(key(0)).is_err(), "the replaced frame is deleted");
        s.audit().expect("consistent");
        assert_eq!(
            *s.take(key(0)).expect("take"),
            chunk(3),
            "the new chunk, not the spilled one"
        );
        assert!(s.is_empty());
    }

    #[test]
    fn a_corrupted_spill_frame_is_an_error_naming_the_chunk() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = ChunkStore::new(
            100,
            Box::new(FlippingSpill(FileSpill::new(dir.path()).expect("spill"))),
        );
        s.put(key(0), chunk(1), 1).expect("put");
        s.put(key(1), chunk(2), 1).expect("put (spills chunk 0)");
        let err = s.take(key(0)).expect_err("the frame was damaged");
        let msg = err.to_string();
        assert!(
            msg.contains("piece of chunk 0 for merge group 0 of node 1")
                && msg.contains("checksum"),
            "{msg}"
        );
        assert_eq!(*s.take(key(1)).expect("resident"), chunk(2));
    }

    /// A [`FileSpill`] that flips one payload bit of every frame it reads back.
    #[derive(Debug)]
    struct FlippingSpill(FileSpill);

    impl SpillBackend for FlippingSpill {
        fn write(&self, key: DataKey, frame: &[u8]) -> std::io::Result<()> {
            self.0.write(key, frame)
        }
        fn read(&self, key: DataKey) -> std::io::Result<Vec<u8>> {
            let mut f = self.0.read(key)?;
            let at = f.len() - 10;
            f[at] ^= 1;
            Ok(f)
        }
        fn delete(&self, key: DataKey) -> std::io::Result<()> {
            self.0.delete(key)
        }
    }

    /// A spill backend whose writes wait for a go-ahead (announcing that they started), or always fail.
    #[derive(Debug)]
    struct GatedSpill {
        inner: FileSpill,
        started: Mutex<std::sync::mpsc::Sender<()>>,
        go: Mutex<std::sync::mpsc::Receiver<bool>>,
    }

    impl SpillBackend for GatedSpill {
        fn write(&self, key: DataKey, frame: &[u8]) -> std::io::Result<()> {
            self.started.lock().expect("lock").send(()).expect("send");
            if self.go.lock().expect("lock").recv().expect("recv") {
                self.inner.write(key, frame)
            } else {
                Err(std::io::Error::other("disk full"))
            }
        }
        fn read(&self, key: DataKey) -> std::io::Result<Vec<u8>> {
            self.inner.read(key)
        }
        fn delete(&self, key: DataKey) -> std::io::Result<()> {
            self.inner.delete(key)
        }
    }

    /// A store of budget 150 over a [`GatedSpill`]: the store, "write started" and "go (succeed?)".
    fn gated(
        dir: &std::path::Path,
    ) -> (
        ChunkStore,
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<bool>,
    ) {
        let (started_tx, started) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let spill = GatedSpill {
            inner: FileSpill::new(dir).expect("spill"),
            started: Mutex::new(started_tx),
            go: Mutex::new(go_rx),
        };
        (ChunkStore::new(150, Box::new(spill)), started, go)
    }

    #[test]
    fn last_take_during_a_spill_counts_the_chunk_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let (s, started, go) = gated(dir.path());
        s.put(key(0), chunk(0), 1).expect("put");
        std::thread::scope(|scope| {
            // The second put goes over the budget and spills chunk 0, whose write waits.
            let putter = scope.spawn(|| s.put(key(1), chunk(1), 1));
            started.recv().expect("spill started");
            assert_eq!(*s.take(key(0)).expect("take while spilling"), chunk(0));
            assert_eq!(s.resident_bytes(), 100, "only chunk 1 left");
            s.audit().expect("consistent during the spill");
            go.send(true).expect("go");
            putter.join().expect("join").expect("put");
        });
        s.audit().expect("consistent after the spill");
        assert_eq!((s.resident_bytes(), s.len()), (100, 1));
        assert_eq!(s.stats().spilled_bytes, frame_len());
        assert!(
            s.spill.read(key(0)).is_err(),
            "the frame of a chunk taken during its spill is deleted once written"
        );
        assert_eq!(*s.take(key(1)).expect("take"), chunk(1));
        assert_eq!((s.resident_bytes(), s.len()), (0, 0));
        assert_eq!(s.stats().unspilled_bytes, 0, "nothing was read back");
    }

    #[test]
    fn failed_spill_keeps_the_chunk_resident() {
        let dir = tempfile::tempdir().expect("tmp");
        let (s, started, go) = gated(dir.path());
        s.put(key(0), chunk(0), 1).expect("put");
        go.send(false).expect("fail the write");
        let e = s.put(key(1), chunk(1), 1).expect_err("spill fails");
        started.recv().expect("spill started");
        assert!(e.to_string().contains("disk full"), "{e}");
        s.audit().expect("consistent");
        assert_eq!((s.resident_bytes(), s.len()), (200, 2));
        assert_eq!(*s.take(key(0)).expect("take"), chunk(0));
        assert_eq!(*s.take(key(1)).expect("take"), chunk(1));
        assert_eq!((s.resident_bytes(), s.len()), (0, 0));
    }

    #[test]
    fn storing_a_key_again_replaces_its_bytes() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = ChunkStore::new(
            1 << 20,
            Box::new(FileSpill::new(dir.path()).expect("spill")),
        );
        s.put(key(3), chunk(1), 1).expect("put");
        s.put(key(3), chunk(2), 1).expect("put again");
        s.audit().expect("consistent");
        assert_eq!((s.resident_bytes(), s.len()), (100, 1));
        assert_eq!(*s.take(key(3)).expect("take"), chunk(2));
        assert_eq!(s.resident_bytes(), 0);
    }

    /// xorshift64*: a deterministic stream per thread, no extra dependency.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// The chunk stored under `key`: its length and bytes follow from the key, so any mix-up shows.
    fn stress_chunk(key: DataKey, len: usize) -> Data {
        let DataKey::Piece { node, group, .. } = key else {
            panic!("stress keys are pieces");
        };
        let v: Vec<u8> = (0..len)
            .map(|i| (node * 31 + group * 7 + i) as u8)
            .collect();
        Data::Chunk(Chunk::U8(
            ArrayD::from_shape_vec(IxDyn(&[len]), v).expect("shape"),
        ))
    }

    /// 8 threads put and take chunks of random sizes (each for `1..=max_takes` consumers) under a budget of a
    /// few chunks: every chunk reads back as stored and the counters end at zero. Before the `Spilling`
    /// state, a last take racing a spill subtracted the chunk's bytes twice.
    fn stress(max_takes: u64) -> StoreStats {
        const THREADS: u32 = 8;
        const ROUNDS: u32 = 3000;
        let dir = tempfile::tempdir().expect("tmp");
        let s = ChunkStore::new(200, Box::new(FileSpill::new(dir.path()).expect("spill")));
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let s = &s;
                scope.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (u64::from(t) + 1));
                    // (key, takes left, length) of this thread's chunks still in the store
                    let mut open: Vec<(DataKey, usize, usize)> = Vec::new();
                    for c in 0..ROUNDS {
                        let k = DataKey::Piece {
                            node: t as usize,
                            group: c as usize,
                            part: 0,
                        };
                        let len = 1 + rng.below(120) as usize;
                        let takes = 1 + rng.below(max_takes) as usize;
                        s.put(k, stress_chunk(k, len), takes).expect("put");
                        open.push((k, takes, len));
                        while open.len() > rng.below(6) as usize {
                            let i = rng.below(open.len() as u64) as usize;
                            let (k, left, len) = &mut open[i];
                            let got = s.take(*k).expect("take");
                            assert_eq!(*got, stress_chunk(*k, *len), "{k:?}");
                            *left -= 1;
                            if *left == 0 {
                                open.swap_remove(i);
                            }
                        }
                        if c % 100 == 0 {
                            s.audit().expect("consistent counters");
                        }
                    }
                    for (k, left, len) in open {
                        for _ in 0..left {
                            assert_eq!(*s.take(k).expect("take"), stress_chunk(k, len));
                        }
                    }
                });
            }
        });
        s.audit().expect("consistent counters");
        assert_eq!(s.resident_bytes(), 0);
        assert!(s.is_empty());
        let st = s.stats();
        assert!(st.spilled_bytes > 0, "the budget forced spills");
        assert!(st.peak_resident_bytes >= 200, "{st:?}");
        st
    }

    #[test]
    fn concurrent_single_takes_keep_exact_accounting() {
        let st = stress(1);
        // Each spilled chunk is read back at most once (not at all when its take came during the spill).
        assert!(st.unspilled_bytes <= st.spilled_bytes, "{st:?}");
    }

    #[test]
    fn concurrent_multiple_takes_keep_exact_accounting() {
        let st = stress(3);
        // Every take of a spilled chunk reads it back: at most 3 reads per write.
        assert!(st.unspilled_bytes <= 3 * st.spilled_bytes, "{st:?}");
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
