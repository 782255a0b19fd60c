//! The finalizer's S3 cleanup: the job's scratch prefix (spilled chunks, exchange objects, the ledger), with
//! the engine's own function and the job's credentials. Outputs are not touched.

use arrayjob_engine::s3::objects::S3Location;
use arrayjob_engine::s3::spill::{Scratch, job_scratch};
use arrayjob_engine::s3::{RequestPolicy, S3Connection, S3Credentials, S3Error, S3Settings};
use arrayjob_engine::spec::S3Storage;

/// Deletes the scratch of run `job_id` of job `job` in `storage`'s bucket; returns how many objects there
/// were. Blocking (runs on the engine's S3 runtime).
///
/// # Errors
/// When listing or deleting fails.
pub fn remove(
    storage: &S3Storage,
    credentials: S3Credentials,
    job: &str,
    job_id: &str,
) -> Result<usize, S3Error> {
    let mut settings = S3Settings::from_spec(Some(storage));
    settings.credentials = credentials;
    let conn = S3Connection::connect(&settings)?;
    let location: S3Location = job_scratch(storage, job).join(job_id);
    let bucket = arrayjob_engine::s3::objects::Bucket::new(
        &conn,
        &storage.bucket,
        RequestPolicy::of_storage(Some(storage)),
        arrayjob_engine::s3::objects::DEFAULT_PART_BYTES,
    );
    Scratch { bucket, location }.remove()
}
