//! The operator's few S3 requests, with the engine's own functions and the job's credentials: the finalizer's
//! cleanup of the job's scratch prefix (spilled chunks, exchange objects, the ledger; outputs are not touched),
//! and reading a finished job's `summary.json` (a few KB of counts; at most [`BODY_LIMIT`] bytes are
//! fetched) when the coordinator ended before its progress was read. The requests use the operator's own
//! [`REQUESTS`] policy, not the job's outage budget: an S3 that does not answer fails an attempt in seconds,
//! and the finalizer's back-off decides what comes next.

use std::collections::BTreeMap;
use std::time::Duration;

use arrayjob_s3::objects::S3Location;
use arrayjob_s3::scratch::{Scratch, job_scratch};
use arrayjob_s3::{RequestPolicy, S3Connection, S3Credentials, S3Error, S3Settings};
use arrayjob_spec::spec::S3Storage;
use k8s_openapi::ByteString;

use crate::progress::BODY_LIMIT;

/// How the operator's S3 requests are made: two quick retries, 20 s per attempt, no outage rounds.
pub const REQUESTS: RequestPolicy = RequestPolicy {
    retries: 2,
    timeout: Duration::from_secs(20),
    outage: Duration::ZERO,
};

/// The keys of a credentials Secret.
pub const ACCESS_KEY: &str = "AWS_ACCESS_KEY_ID";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// See [`ACCESS_KEY`]; optional (temporary credentials).
pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// The S3 credentials in a Secret's `data`: the access key, its secret and, for temporary credentials, the
/// session token.
///
/// # Errors
/// The missing key, naming the Secret (`what`, e.g. `lab/s3-credentials`).
pub fn credentials(
    data: &BTreeMap<String, ByteString>,
    what: &str,
) -> Result<S3Credentials, String> {
    let field = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
    };
    let need = |k: &str| field(k).ok_or_else(|| format!("Secret {what} has no {k}"));
    Ok(S3Credentials::Static {
        access_key: need(ACCESS_KEY)?,
        secret_key: need(SECRET_KEY)?,
        session_token: field(SESSION_TOKEN).filter(|t| !t.is_empty()),
    })
}

/// The scratch prefix of run `job_id` of the job keyed `key`, as a URI (for messages).
pub fn scratch_uri(storage: &S3Storage, key: &str, job_id: &str) -> String {
    job_scratch(storage, key).join(job_id).uri("")
}

/// Deletes the scratch of run `job_id` of the job keyed `key` in `storage`'s bucket; returns how many objects
/// there were. Blocking (runs on the engine's S3 runtime).
///
/// # Errors
/// When listing or deleting fails.
pub fn remove(
    storage: &S3Storage,
    credentials: S3Credentials,
    key: &str,
    job_id: &str,
) -> Result<usize, S3Error> {
    let location: S3Location = job_scratch(storage, key).join(job_id);
    let bucket = bucket(storage, credentials, &storage.bucket)?;
    Scratch { bucket, location }.remove()
}

/// The first [`BODY_LIMIT`]` + 1` bytes of the `summary.json` published at `output` (`s3://bucket/prefix`), if
/// there is one (one byte more than the limit, so that a reader sees it is too large).
///
/// # Errors
/// When the URI is not an S3 location or the request fails.
pub fn summary(
    storage: &S3Storage,
    credentials: S3Credentials,
    output: &str,
) -> Result<Option<Vec<u8>>, S3Error> {
    let location = S3Location::parse("output", output)?;
    let b = bucket(storage, credentials, &location.bucket)?;
    let key = location.key("summary.json");
    let end = BODY_LIMIT as u64 + 1;
    let got = arrayjob_s3::objects::block(async move { b.get_range(&key, 0, end).await })?;
    Ok(got.map(|body| body.to_vec()))
}

fn bucket(
    storage: &S3Storage,
    credentials: S3Credentials,
    name: &str,
) -> Result<arrayjob_s3::objects::Bucket, S3Error> {
    let mut settings = S3Settings::from_spec(Some(storage));
    settings.credentials = credentials;
    let conn = S3Connection::connect(&settings)?;
    Ok(arrayjob_s3::objects::Bucket::new(
        &conn,
        name,
        REQUESTS,
        arrayjob_s3::objects::DEFAULT_PART_BYTES,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn a_secret_gives_long_lived_or_temporary_credentials() {
        let long = credentials(
            &data(&[
                (ACCESS_KEY, "AKIA1"),
                (SECRET_KEY, "s3cr3t\n"),
                ("AWS_REGION", "eu-west-1"),
            ]),
            "lab/s3",
        )
        .expect("credentials");
        assert_eq!(
            long,
            S3Credentials::Static {
                access_key: "AKIA1".into(),
                secret_key: "s3cr3t".into(),
                session_token: None
            }
        );
        let temporary = credentials(
            &data(&[
                (ACCESS_KEY, "ASIA2"),
                (SECRET_KEY, "k"),
                (SESSION_TOKEN, "FwoGZXIvYXdzE"),
            ]),
            "lab/s3",
        )
        .expect("credentials");
        assert_eq!(
            temporary,
            S3Credentials::Static {
                access_key: "ASIA2".into(),
                secret_key: "k".into(),
                session_token: Some("FwoGZXIvYXdzE".into())
            }
        );
        assert!(
            !format!("{temporary:?}").contains("FwoGZXIvYXdzE"),
            "the token is redacted"
        );
        assert_eq!(
            credentials(&data(&[(ACCESS_KEY, "A")]), "lab/s3"),
            Err("Secret lab/s3 has no AWS_SECRET_ACCESS_KEY".into())
        );
    }
}
