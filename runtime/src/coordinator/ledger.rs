//! The ledger of a resumable run (`arrayjob run --job-id ID` with `storage.s3` and outputs on S3): what a
//! restarted coordinator needs to go on where the killed one stopped (`docs/s3.md`, "Resume").
//!
//! Under the run's scratch prefix, `ledger/`:
//! - `owner.lock`: the coordinator that owns the job, a lease like an output location's lock (created with
//!   `If-None-Match: *`, renewed and taken over with `If-Match`): two coordinators never both own a job;
//! - `seg-0000000000.json`, `seg-0000000001.json`, ...: segments appended by the owner, each written with
//!   `If-None-Match: *` (a coordinator that lost the job cannot overwrite its successor's): tasks done (their
//!   output files written and acknowledged), objects stored in the exchange (their keys, sizes and crc32c),
//!   objects deleted since;
//! - `gathered/`: the blocks of small outputs (images, plots, CSVs) the coordinator received, stored before it
//!   acknowledged them, so a resumed run has them without running their tasks again.
//!
//! The ledger only says what is durable; the scheduler decides what to run again ([`Scheduler::restore`]).
//!
//! [`Scheduler::restore`]: arrayjob_engine::schedule::Scheduler::restore

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::warn;

use arrayjob_engine::data::DataKey;
use arrayjob_engine::graph::TaskId;
use arrayjob_engine::output::commit::CommitError;
use arrayjob_engine::output::commit::s3::S3OutLock;
use arrayjob_engine::s3::S3Error;
use arrayjob_engine::s3::objects::{Bucket, CondPut, S3Location, block};
use arrayjob_engine::s3::spill::Scratch;

/// An object of the exchange: the frames of `keys`, in this order (a fetch answer's bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredObject {
    /// Its key in the job's bucket.
    pub object: String,
    /// The keys whose frames it holds, in order, with their sizes in memory.
    pub keys: Vec<(DataKey, u64)>,
    /// Its length.
    pub bytes: u64,
    /// crc32c of its bytes.
    pub crc32c: u32,
}

/// One appended segment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Segment {
    /// The plan it is about.
    pub plan_hash: String,
    /// The coordinator that wrote it.
    pub owner: String,
    /// Tasks done since the previous segment.
    pub done: Vec<TaskId>,
    /// Objects stored since.
    pub stored: Vec<StoredObject>,
    /// Objects deleted since (nobody reads their keys any more).
    pub deleted: Vec<String>,
}

impl Segment {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.done.is_empty() && self.stored.is_empty() && self.deleted.is_empty()
    }
}

/// What the segments of a ledger add up to.
#[derive(Debug, Clone, Default)]
pub struct LedgerState {
    /// Tasks done, in the order they were recorded.
    pub done: Vec<TaskId>,
    /// Objects stored and not deleted.
    pub stored: Vec<StoredObject>,
    /// Segments read.
    pub segments: u64,
    /// Segments written for another plan (the spec or the engine changed): the state is not usable.
    pub other_plan: bool,
}

impl LedgerState {
    /// Every key with a durable copy, with its size.
    pub fn durable(&self) -> Vec<(DataKey, u64)> {
        self.stored
            .iter()
            .flat_map(|o| o.keys.iter().copied())
            .collect()
    }
}

/// A block of a small output, as the coordinator received it.
#[derive(Debug, Clone, PartialEq)]
pub struct GatheredBlock {
    /// Plan node.
    pub node: usize,
    /// Where the block starts.
    pub start: Vec<usize>,
    /// The plotted pixel it is a series of, if it is one.
    pub pixel: Option<usize>,
    /// Its frame.
    pub frame: Bytes,
}

/// The owned ledger of one run.
#[derive(Debug)]
pub struct Ledger {
    bucket: Bucket,
    location: S3Location,
    plan_hash: String,
    owner: String,
    next: AtomicU64,
    lock: S3OutLock,
    found: LedgerState,
}

/// The ledger's own prefix under a run's scratch.
const LEDGER_DIR: &str = "ledger";
const OWNER_LOCK: &str = "owner.lock";
const SEGMENT_PREFIX: &str = "seg-";
const GATHERED_DIR: &str = "gathered";

impl Ledger {
    /// Takes ownership of the ledger of the run whose scratch is `scratch`, waiting while another coordinator
    /// holds it (at most one lease and a little: a holder that stopped renewing loses it), and reads it.
    ///
    /// # Errors
    /// [`CommitError::Busy`] when a live coordinator keeps it; the S3 error when a request fails.
    pub fn open(
        scratch: &Scratch,
        plan_hash: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Ledger, CommitError> {
        let location = scratch.location.join(LEDGER_DIR);
        let lock = acquire_waiting(&scratch.bucket, &location, owner, lease)?;
        let mut ledger = Ledger {
            bucket: scratch.bucket.clone(),
            location,
            plan_hash: plan_hash.to_owned(),
            owner: owner.to_owned(),
            next: AtomicU64::new(0),
            lock,
            found: LedgerState::default(),
        };
        ledger.found = ledger.read()?;
        ledger.next.store(ledger.found.segments, Ordering::SeqCst);
        Ok(ledger)
    }

    /// What the ledger held when it was opened (empty after [`Ledger::reset`]).
    pub fn found(&self) -> &LedgerState {
        &self.found
    }

    /// Where the ledger is (`s3://bucket/.../ledger/`).
    pub fn uri(&self) -> String {
        self.location.to_string()
    }

    fn read(&self) -> Result<LedgerState, CommitError> {
        let (b, prefix) = (
            self.bucket.clone(),
            self.location.key(SEGMENT_PREFIX).to_owned(),
        );
        let segments = block(async move { fetch_all(&b, &prefix, MAX_SEGMENT_BYTES).await })?;
        let mut state = LedgerState::default();
        let mut deleted = BTreeSet::new();
        for (key, body) in segments {
            let seg: Segment = serde_json::from_slice(&body).map_err(|e| {
                CommitError::S3(S3Error::request(
                    None,
                    "GetObject",
                    &format!("s3://{}/{key}", self.bucket.name()),
                    format!("not a ledger segment: {e}"),
                ))
            })?;
            state.segments += 1;
            state.other_plan |= seg.plan_hash != self.plan_hash;
            state.done.extend(seg.done);
            state.stored.extend(seg.stored);
            deleted.extend(seg.deleted);
        }
        state.stored.retain(|o| !deleted.contains(&o.object));
        Ok(state)
    }

    /// Appends `seg` (stamped with this ledger's plan and owner) as the next segment.
    ///
    /// # Errors
    /// When the write fails, or when another coordinator wrote that segment or took the lock over: this one
    /// no longer owns the job.
    pub fn append(&self, mut seg: Segment) -> Result<(), CommitError> {
        self.lock.check()?;
        seg.plan_hash.clone_from(&self.plan_hash);
        seg.owner.clone_from(&self.owner);
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let key = self.location.key(&format!("{SEGMENT_PREFIX}{n:010}.json"));
        let body = Bytes::from(serde_json::to_vec(&seg).unwrap_or_default());
        let (b, k) = (self.bucket.clone(), key.clone());
        match block(async move { b.put_if(&k, body, None).await })? {
            CondPut::Written(_) => Ok(()),
            CondPut::Refused => Err(CommitError::S3(S3Error::request(
                None,
                "PutObject",
                &format!("s3://{}/{key}", self.bucket.name()),
                "another coordinator wrote this ledger segment: this one no longer owns the job"
                    .into(),
            ))),
        }
    }

    /// Stores a block of a small output.
    ///
    /// # Errors
    /// When the upload fails.
    pub fn put_gathered(&self, g: &GatheredBlock) -> Result<(), S3Error> {
        let start: Vec<String> = g.start.iter().map(usize::to_string).collect();
        let pixel = g.pixel.map_or_else(|| "x".to_owned(), |p| p.to_string());
        let name = format!("n{}-s{}-p{pixel}", g.node, start.join("_"));
        let key = self.location.key(&format!("{GATHERED_DIR}/{name}"));
        let (b, body) = (self.bucket.clone(), g.frame.clone());
        block(async move { b.put(&key, body).await })
    }

    /// Every stored block of a small output.
    ///
    /// # Errors
    /// When listing or reading fails, or a name is not one [`Ledger::put_gathered`] writes.
    pub fn gathered(&self) -> Result<Vec<GatheredBlock>, S3Error> {
        let (b, prefix) = (
            self.bucket.clone(),
            self.location.key(&format!("{GATHERED_DIR}/")),
        );
        let objects = block(async move { fetch_all(&b, &prefix, MAX_GATHERED_BYTES).await })?;
        objects
            .into_iter()
            .map(|(key, frame)| {
                let name = key.rsplit('/').next().unwrap_or_default();
                parse_gathered_name(name)
                    .map(|(node, start, pixel)| GatheredBlock {
                        node,
                        start,
                        pixel,
                        frame,
                    })
                    .ok_or_else(|| {
                        S3Error::request(
                            None,
                            "GetObject",
                            &format!("s3://{}/{key}", self.bucket.name()),
                            "not a gathered block's name".into(),
                        )
                    })
            })
            .collect()
    }

    /// Deletes the segments and gathered blocks (a run that cannot use them starts over).
    ///
    /// # Errors
    /// When listing or deleting fails.
    pub fn reset(&mut self) -> Result<(), S3Error> {
        let b = self.bucket.clone();
        let (segs, gathered) = (
            self.location.key(SEGMENT_PREFIX),
            self.location.key(&format!("{GATHERED_DIR}/")),
        );
        block(async move {
            b.delete_prefix(&segs).await?;
            b.delete_prefix(&gathered).await
        })?;
        self.next.store(0, Ordering::SeqCst);
        self.found = LedgerState::default();
        Ok(())
    }
}

/// Largest ledger segment read back (a segment holds ~50 ms of news: far less).
const MAX_SEGMENT_BYTES: u64 = arrayjob_engine::output::commit::MAX_RECORD_BYTES;
/// Largest gathered block read back: a block of an image, CSV or plot of a small output.
const MAX_GATHERED_BYTES: u64 = 1 << 30;

/// Every object under `prefix`, in key order, with its bytes; an object larger than `max` is an error.
async fn fetch_all(b: &Bucket, prefix: &str, max: u64) -> Result<Vec<(String, Bytes)>, S3Error> {
    let mut out = Vec::new();
    for (key, _) in b.list(prefix).await? {
        if let Some((body, _)) = b.get_bounded(&key, max).await? {
            out.push((key, body));
        }
    }
    Ok(out)
}

/// `n{node}-s{a_b_c}-p{pixel|x}`.
fn parse_gathered_name(name: &str) -> Option<(usize, Vec<usize>, Option<usize>)> {
    let rest = name.strip_prefix('n')?;
    let (node, rest) = rest.split_once("-s")?;
    let (start, pixel) = rest.rsplit_once("-p")?;
    let start = if start.is_empty() {
        Vec::new()
    } else {
        start
            .split('_')
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<usize>>>()?
    };
    let pixel = match pixel {
        "x" => None,
        p => Some(p.parse().ok()?),
    };
    Some((node.parse().ok()?, start, pixel))
}

/// Takes the owner lock at `location`, waiting while someone else holds it, for at most a lease and 10 s.
fn acquire_waiting(
    bucket: &Bucket,
    location: &S3Location,
    owner: &str,
    lease: Duration,
) -> Result<S3OutLock, CommitError> {
    let deadline = Instant::now() + lease + Duration::from_secs(10);
    let what = format!("the ledger at {location}");
    let mut warned = false;
    loop {
        match S3OutLock::acquire_key(bucket, &location.key(OWNER_LOCK), &what, owner, lease) {
            Err(CommitError::Busy { holder, .. }) if Instant::now() < deadline => {
                if !warned {
                    warn!(ledger = %location, %holder, "another coordinator owns this job; waiting for its lease to run out");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_gathered_name;

    #[test]
    fn gathered_names_round_trip() {
        assert_eq!(
            parse_gathered_name("n3-s0_10_20-px"),
            Some((3, vec![0, 10, 20], None))
        );
        assert_eq!(parse_gathered_name("n5-s-p7"), Some((5, vec![], Some(7))));
        assert_eq!(parse_gathered_name("n5-s1_a-px"), None);
        assert_eq!(parse_gathered_name("x5-s1-px"), None);
    }
}
