//! The coordinator's book of the job's object store (`exchange: s3`, a resumed run's durable keys) and of its
//! ledger: which object holds each stored key and at which position, which objects nobody reads any more
//! (deleted once the ledger says so), and the ledger segment being gathered between two flushes. It holds
//! names and counts, never chunk bytes: workers upload and read the objects themselves.

use std::collections::HashMap;

use crate::coordinator::ledger::{Ledger, Segment, StoredObject};
use arrayjob_engine::data::DataKey;
use arrayjob_engine::error::RunError;
use arrayjob_engine::graph::TaskId;
use arrayjob_engine::s3::objects::{Bucket, block};
use arrayjob_engine::schedule::WorkerId;

/// Where the stored keys are, and what the ledger has not been told yet.
#[derive(Debug, Default)]
pub struct StoreBook {
    /// Key -> (object, position of its frame).
    by_key: HashMap<DataKey, (String, usize)>,
    /// Object -> keys on record in it not released yet.
    live: HashMap<String, usize>,
    /// Key prefix of this coordinator's exchange objects (`{scratch}exchange/{incarnation}/`).
    prefix: String,
    shipments: u64,
    /// Whether there is a ledger to write `pending` to.
    recording: bool,
    pending: Segment,
    deletes: Vec<String>,
}

impl StoreBook {
    /// A book whose objects are named under `prefix` (unique to this coordinator), recording for a ledger
    /// when `recording`.
    pub fn new(prefix: String, recording: bool) -> StoreBook {
        StoreBook {
            prefix,
            recording,
            ..StoreBook::default()
        }
    }

    /// Takes in the objects a ledger holds (a resumed run).
    pub fn load(&mut self, stored: &[StoredObject]) {
        for o in stored {
            let mut n = 0;
            for (pos, &(key, _)) in o.keys.iter().enumerate() {
                if let std::collections::hash_map::Entry::Vacant(e) = self.by_key.entry(key) {
                    e.insert((o.object.clone(), pos));
                    n += 1;
                }
            }
            if n > 0 {
                self.live.insert(o.object.clone(), n);
            }
        }
    }

    /// A fresh object name for `worker`'s pieces of `merge`.
    pub fn object_name(&mut self, merge: TaskId, worker: WorkerId) -> String {
        self.shipments += 1;
        format!(
            "{}m{}-w{}-{}",
            self.prefix, merge.0, worker.0, self.shipments
        )
    }

    /// `object` was uploaded; of its keys, `accepted` are now the copies on record (the scheduler's say). An
    /// object with none is deleted at once.
    pub fn shipped(&mut self, object: StoredObject, accepted: &[DataKey]) {
        let mut n = 0;
        for (pos, (key, _)) in object.keys.iter().enumerate() {
            if accepted.contains(key) {
                self.by_key.insert(*key, (object.object.clone(), pos));
                n += 1;
            }
        }
        if n == 0 {
            self.deletes.push(object.object);
            return;
        }
        self.live.insert(object.object.clone(), n);
        if self.recording {
            self.pending.stored.push(object);
        }
    }

    /// The object holding `key` and its frame's position there.
    pub fn location(&self, key: DataKey) -> Option<(&str, usize)> {
        self.by_key.get(&key).map(|(o, p)| (o.as_str(), *p))
    }

    /// Nobody reads `key` any more: its object goes when none of its keys is read.
    pub fn released(&mut self, key: DataKey) {
        let Some((object, _)) = self.by_key.remove(&key) else {
            return;
        };
        let Some(n) = self.live.get_mut(&object) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.live.remove(&object);
            if self.recording {
                self.pending.deleted.push(object.clone());
            }
            self.deletes.push(object);
        }
    }

    /// `key` was found damaged or missing in the store: forgotten (rebuilt elsewhere).
    pub fn forget(&mut self, key: DataKey) {
        self.released(key);
    }

    /// `task` is done (its output files written): recorded.
    pub fn done(&mut self, task: TaskId) {
        if self.recording {
            self.pending.done.push(task);
        }
    }

    /// What to write and delete at the next flush.
    pub fn take(&mut self) -> (Segment, Vec<String>) {
        (
            std::mem::take(&mut self.pending),
            std::mem::take(&mut self.deletes),
        )
    }
}

/// Appends `seg` to the ledger (when there is one and it says something), then deletes `deletes`: an object
/// goes only once the ledger no longer needs it.
///
/// # Errors
/// When the ledger cannot be written (this coordinator lost the job, or S3 failed beyond its outage budget).
/// A failed delete is only logged: the run's scratch goes when it ends.
pub fn flush(
    ledger: Option<&Ledger>,
    bucket: Option<&Bucket>,
    seg: Segment,
    deletes: Vec<String>,
) -> Result<(), RunError> {
    if let Some(l) = ledger
        && !seg.is_empty()
    {
        l.append(seg)?;
    }
    if let Some(b) = bucket
        && !deletes.is_empty()
    {
        let b = b.clone();
        if let Err(e) = block(async move { b.delete(&deletes).await }) {
            tracing::warn!(error = %e, "cannot delete exchange objects; the run's scratch removal does");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(part: usize) -> DataKey {
        DataKey::Piece {
            node: 2,
            group: 0,
            part,
        }
    }

    fn object(name: &str, parts: &[usize]) -> StoredObject {
        StoredObject {
            object: name.into(),
            keys: parts.iter().map(|&p| (piece(p), 100)).collect(),
            bytes: 0,
            crc32c: 0,
        }
    }

    #[test]
    fn an_object_is_deleted_after_its_last_key_on_record_is_released_and_the_ledger_says_so() {
        let mut book = StoreBook::new("s/exchange/abc/".into(), true);
        assert_eq!(
            book.object_name(TaskId(7), WorkerId(1)),
            "s/exchange/abc/m7-w1-1"
        );
        // Part 2 was shipped twice: the first copy stays on record.
        book.shipped(object("a", &[0, 1, 2]), &[piece(0), piece(1), piece(2)]);
        book.shipped(object("b", &[2, 3]), &[piece(3)]);
        book.shipped(object("c", &[2]), &[]);
        assert_eq!(book.location(piece(2)), Some(("a", 2)));
        assert_eq!(book.location(piece(3)), Some(("b", 1)));
        book.done(TaskId(4));
        let (seg, deletes) = book.take();
        assert_eq!(deletes, vec!["c".to_string()]);
        assert_eq!(seg.stored.len(), 2);
        assert_eq!(seg.done, vec![TaskId(4)]);
        for p in [0, 1, 3] {
            book.released(piece(p));
        }
        let (seg, deletes) = book.take();
        assert_eq!(deletes, vec!["b".to_string()]);
        assert_eq!(seg.deleted, vec!["b".to_string()]);
        book.released(piece(2));
        assert_eq!(book.take().1, vec!["a".to_string()]);
        assert_eq!(book.location(piece(2)), None);
    }

    #[test]
    fn a_resumed_book_reads_the_ledgers_objects_and_records_nothing_without_a_ledger() {
        let mut book = StoreBook::new("p/".into(), false);
        book.load(&[object("a", &[0, 1]), object("b", &[1, 2])]);
        assert_eq!(book.location(piece(1)), Some(("a", 1)));
        assert_eq!(book.location(piece(2)), Some(("b", 1)));
        book.done(TaskId(1));
        book.released(piece(2));
        let (seg, deletes) = book.take();
        assert!(seg.is_empty());
        assert_eq!(deletes, vec!["b".to_string()]);
    }
}
