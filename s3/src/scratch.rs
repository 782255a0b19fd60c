//! Where a job's runs keep their scratch on S3 (spilled chunks, exchange objects, the resume ledger), and its
//! removal: what the engine writes there and what the operator's finalizer deletes are named in one place.

use arrayjob_spec::spec::S3Storage;

use crate::objects::{Bucket, S3Location, block};
use crate::{S3Error, bucket};

/// A run's scratch prefix on S3, `{storage.prefix}scratch/{job}/{run}/` in the job's bucket: where spilled
/// chunks go beyond the disk limit (`spill/local/`, `spill/w{worker}/`). Deleted when the run succeeds; kept
/// when it fails unless `storage.s3.keepFailedScratch` is false; `arrayjob gc --scratch` removes a job's.
#[derive(Debug, Clone)]
pub struct Scratch {
    /// The job's bucket.
    pub bucket: Bucket,
    /// The run's prefix.
    pub location: S3Location,
}

impl Scratch {
    /// The scratch of run `run` of the job named `job` with `storage`.
    ///
    /// # Errors
    /// As [`bucket`].
    pub fn of(storage: &S3Storage, job: &str, run: &str) -> Result<Scratch, S3Error> {
        Ok(Scratch {
            bucket: bucket(Some(storage), &storage.bucket)?,
            location: job_scratch(storage, job).join(run),
        })
    }

    /// The prefix of one process's spilled chunks (`who`: `local` or `w{id}`).
    pub fn spill_prefix(&self, who: &str) -> String {
        self.location.join(&format!("spill/{who}")).prefix
    }

    /// Deletes everything under the run's prefix; returns how many objects there were.
    ///
    /// # Errors
    /// When listing or deleting fails.
    pub fn remove(&self) -> Result<usize, S3Error> {
        let (b, p) = (self.bucket.clone(), self.location.prefix.clone());
        block(async move { b.delete_prefix(&p).await })
    }
}

/// Where every run of the job named `job` keeps its scratch: `s3://{bucket}/{prefix}scratch/{job}/`.
pub fn job_scratch(storage: &S3Storage, job: &str) -> S3Location {
    S3Location {
        bucket: storage.bucket.clone(),
        prefix: format!(
            "{}scratch/{job}/",
            storage.prefix.as_deref().unwrap_or_default()
        ),
    }
}
