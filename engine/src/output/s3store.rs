//! Zarr arrays under an S3 prefix: zarrs' storage trait over [`Bucket`] (metadata and unsharded chunks, written
//! from the calling thread), and [`Uploads`], which PUTs encoded shards in the background as the shard writer
//! of local arrays writes files.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use zarrs::storage::{
    OffsetBytesIterator, StorageError, StoreKey, StorePrefix, WritableStorageTraits,
};

use crate::s3::S3Error;
use crate::s3::objects::{Bucket, block};

/// Most shard bytes queued or being uploaded by one [`Uploads`]; a writer asking for more waits.
const MAX_BYTES_IN_FLIGHT: usize = 256 << 20;
/// Shards uploaded at once by one [`Uploads`].
const CONCURRENT_UPLOADS: usize = 8;

/// The keys of a Zarr hierarchy under `prefix` (which ends in `/`) in a bucket. Write-only: the writers never
/// read back.
#[derive(Debug, Clone)]
pub struct S3Store {
    bucket: Bucket,
    prefix: String,
}

impl S3Store {
    /// The store whose keys are `prefix` + the Zarr key.
    pub fn new(bucket: Bucket, prefix: String) -> S3Store {
        S3Store { bucket, prefix }
    }

    fn key(&self, key: &StoreKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }
}

fn storage_error(e: S3Error) -> StorageError {
    StorageError::Other(e.to_string())
}

impl WritableStorageTraits for S3Store {
    fn set(&self, key: &StoreKey, value: Bytes) -> Result<(), StorageError> {
        let (bucket, key) = (self.bucket.clone(), self.key(key));
        block(async move { bucket.put(&key, value).await }).map_err(storage_error)
    }

    fn set_partial_many(
        &self,
        key: &StoreKey,
        _offset_values: OffsetBytesIterator,
    ) -> Result<(), StorageError> {
        Err(StorageError::Unsupported(format!(
            "{}: S3 objects are written whole",
            self.key(key)
        )))
    }

    fn erase(&self, key: &StoreKey) -> Result<(), StorageError> {
        let (bucket, key) = (self.bucket.clone(), self.key(key));
        block(async move { bucket.delete(&[key]).await }).map_err(storage_error)
    }

    fn erase_prefix(&self, prefix: &StorePrefix) -> Result<(), StorageError> {
        let bucket = self.bucket.clone();
        let prefix = format!("{}{}", self.prefix, prefix.as_str());
        block(async move { bucket.delete_prefix(&prefix).await.map(|_| ()) }).map_err(storage_error)
    }

    fn supports_set_partial(&self) -> bool {
        false
    }
}

/// Uploads objects in the background on the S3 runtime, at most [`CONCURRENT_UPLOADS`] at once and
/// [`MAX_BYTES_IN_FLIGHT`] queued, with the marks of [`super::direct::FileWriter`]: [`Uploads::submitted`]
/// before a task reports, [`Uploads::wait_written`] for that mark.
#[derive(Debug)]
pub struct Uploads {
    bucket: Bucket,
    state: Arc<(Mutex<UploadState>, Condvar)>,
    permits: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, Default)]
struct UploadState {
    /// Sequence number of the next submission.
    next: u64,
    /// Submissions not finished yet.
    pending: BTreeSet<u64>,
    bytes_in_flight: usize,
    /// The first failure: key and message.
    failed: Option<(String, String)>,
}

impl Uploads {
    /// Uploads into `bucket`.
    pub fn new(bucket: Bucket) -> Uploads {
        Uploads {
            bucket,
            state: Arc::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_UPLOADS)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UploadState> {
        self.state.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `body` to be written at `key`; waits first while too many bytes are in flight.
    ///
    /// # Errors
    /// The first failed upload (key and message); nothing more is uploaded after one.
    pub fn submit(&self, key: String, body: Bytes) -> Result<(), (String, String)> {
        let runtime = crate::s3::runtime().map_err(|e| (key.clone(), e.to_string()))?;
        let seq = {
            let mut s = self.lock();
            while s.bytes_in_flight > 0
                && s.bytes_in_flight + body.len() > MAX_BYTES_IN_FLIGHT
                && s.failed.is_none()
            {
                s = self.state.1.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if let Some(f) = &s.failed {
                return Err(f.clone());
            }
            let seq = s.next;
            s.next += 1;
            s.pending.insert(seq);
            s.bytes_in_flight += body.len();
            seq
        };
        let (bucket, state, permits) = (
            self.bucket.clone(),
            self.state.clone(),
            self.permits.clone(),
        );
        runtime.spawn(async move {
            let len = body.len();
            let result = match permits.acquire().await {
                Ok(_permit) => bucket.put(&key, body).await,
                Err(e) => Err(S3Error::request(
                    None,
                    "PutObject",
                    &key,
                    format!("upload queue closed: {e}"),
                )),
            };
            let mut s = state.0.lock().unwrap_or_else(|e| e.into_inner());
            s.pending.remove(&seq);
            s.bytes_in_flight -= len;
            if let Err(e) = result
                && s.failed.is_none()
            {
                s.failed = Some((key, e.to_string()));
            }
            state.1.notify_all();
        });
        Ok(())
    }

    /// Objects submitted so far: a mark for [`Uploads::wait_written`].
    pub fn submitted(&self) -> u64 {
        self.lock().next
    }

    /// Waits until the objects submitted before `mark` are written.
    ///
    /// # Errors
    /// The first failed upload (key and message).
    pub fn wait_written(&self, mark: u64) -> Result<(), (String, String)> {
        let mut s = self.lock();
        while s.pending.first().is_some_and(|&p| p < mark) {
            s = self.state.1.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        match &s.failed {
            Some(f) => Err(f.clone()),
            None => Ok(()),
        }
    }

    /// Waits until every submitted object is written.
    ///
    /// # Errors
    /// The first failed upload (key and message).
    pub fn finish(self) -> Result<(), (String, String)> {
        let mark = self.submitted();
        self.wait_written(mark)
    }
}
