//! The operator's few S3 requests, with the engine's own functions and the job's credentials: the finalizer's
//! cleanup of the job's scratch prefix (spilled chunks, exchange objects, the ledger; outputs are not touched),
//! and reading a finished job's `summary.json` (a few KB of counts) when the coordinator ended before its
//! progress was read.

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
    let location: S3Location = job_scratch(storage, job).join(job_id);
    let bucket = bucket(storage, credentials, &storage.bucket)?;
    Scratch { bucket, location }.remove()
}

/// The `summary.json` published at `output` (`s3://bucket/prefix`), if there is one.
///
/// # Errors
/// When the URI is not an S3 location or the request fails.
pub fn summary(
    storage: &S3Storage,
    credentials: S3Credentials,
    output: &str,
) -> Result<Option<serde_json::Value>, S3Error> {
    let location = S3Location::parse("output", output)?;
    let b = bucket(storage, credentials, &location.bucket)?;
    let key = location.key("summary.json");
    let got = arrayjob_engine::s3::objects::block(async move { b.get(&key).await })?;
    Ok(got.and_then(|(body, _)| serde_json::from_slice(&body).ok()))
}

fn bucket(
    storage: &S3Storage,
    credentials: S3Credentials,
    name: &str,
) -> Result<arrayjob_engine::s3::objects::Bucket, S3Error> {
    let mut settings = S3Settings::from_spec(Some(storage));
    settings.credentials = credentials;
    let conn = S3Connection::connect(&settings)?;
    Ok(arrayjob_engine::s3::objects::Bucket::new(
        &conn,
        name,
        RequestPolicy::of_storage(Some(storage)),
        arrayjob_engine::s3::objects::DEFAULT_PART_BYTES,
    ))
}
