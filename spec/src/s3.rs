//! What can be checked of S3 settings without a request: bucket names, the fields of `spec.storage.s3`, and
//! an `s3` source's fields. The engine's S3 client and source call these same checks when they start.

use std::time::Duration;

use crate::error::ConfigError;
use crate::limits;
use crate::spec::{S3Source, S3Storage};
use crate::template::IndexTemplate;

/// Retries of one request when the spec does not say.
pub const DEFAULT_RETRIES: u32 = 4;
/// Most retries a spec may ask for.
pub const MAX_RETRIES: u32 = 20;
/// Timeout of one request attempt when the spec does not say.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 30;
/// Requests in flight at once for an `s3` source when the spec does not say.
pub const DEFAULT_SOURCE_CONCURRENCY: usize = 8;

/// Checks a bucket name: 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or
/// digit.
///
/// # Errors
/// [`ConfigError`] naming `field`.
pub fn check_bucket(field: &str, name: &str) -> Result<(), ConfigError> {
    let valid = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!(
                "{name:?} is not a valid bucket name (3 to 63 lowercase letters, digits, '.' and '-', starting and \
                 ending with a letter or digit)"
            ),
        ))
    }
}

/// Checks the fields of `spec.storage.s3` other than the bucket: an http(s) endpoint URL, a non-empty region,
/// a prefix without a leading '/'.
///
/// # Errors
/// Every problem, each naming its field.
pub fn check_storage(storage: &S3Storage) -> Vec<ConfigError> {
    let config = |field: &str, message: String| {
        ConfigError::new(format!("spec.storage.s3.{field}"), message)
    };
    let mut problems = Vec::new();
    if let Err(e) = check_bucket("spec.storage.s3.bucket", &storage.bucket) {
        problems.push(e);
    }
    if let Some(endpoint) = &storage.endpoint {
        let ok = url::Url::parse(endpoint).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
        });
        if !ok {
            problems.push(config(
                "endpoint",
                format!("expected an http:// or https:// URL, found {endpoint:?}"),
            ));
        }
    }
    if storage
        .part_size_mib
        .is_some_and(|m| !(5..=5120).contains(&m))
    {
        problems.push(config(
            "partSizeMiB",
            "must be from 5 (the smallest part S3 accepts) to 5120".into(),
        ));
    }
    if storage.outage_seconds.is_some_and(|s| s > 3600) {
        problems.push(config(
            "outageSeconds",
            "must be at most 3600 (an hour)".into(),
        ));
    }
    if storage
        .lease_seconds
        .is_some_and(|s| !(5..=3600).contains(&s))
    {
        problems.push(config("leaseSeconds", "must be from 5 to 3600".into()));
    }
    if storage.region.as_deref().is_some_and(str::is_empty) {
        problems.push(config("region", "must not be empty".into()));
    }
    if storage
        .prefix
        .as_deref()
        .is_some_and(|p| p.starts_with('/'))
    {
        problems.push(config(
            "prefix",
            "must not start with '/' (keys are relative to the bucket)".into(),
        ));
    }
    problems
}

/// The checked fields of an `s3` source spec.
#[derive(Debug, Clone)]
pub struct S3SourceCheck {
    /// Bucket (the source's, else the storage's).
    pub bucket: String,
    /// Key template and first index, when `keys` is set.
    pub keys: Option<(IndexTemplate, u64)>,
    /// Number of slices, when known without listing (with `keys`).
    pub len: Option<usize>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Retries of each request.
    pub retries: u32,
    /// Timeout of each request attempt.
    pub timeout: Duration,
}

/// Checks an `s3` source spec; `storage` gives the default bucket. Validation and the source both call it.
///
/// # Errors
/// Every problem found, each naming its field.
pub fn check_source(
    spec: &S3Source,
    storage: Option<&S3Storage>,
) -> Result<S3SourceCheck, Vec<ConfigError>> {
    let config =
        |field: &str, message: &str| ConfigError::new(format!("spec.source.s3{field}"), message);
    let mut problems = Vec::new();
    let bucket = match (&spec.bucket, storage) {
        (Some(b), _) => {
            if let Err(e) = check_bucket("spec.source.s3.bucket", b) {
                problems.push(e);
            }
            b.clone()
        }
        (None, Some(s)) => s.bucket.clone(),
        (None, None) => {
            problems.push(config(
                ".bucket",
                "required when spec.storage.s3 (whose bucket is the default) is not set",
            ));
            String::new()
        }
    };
    let (keys, len) = match (&spec.keys, &spec.prefix) {
        (Some(keys), None) => {
            let start = spec.start.unwrap_or(0);
            let template = IndexTemplate::parse(keys, "spec.source.s3.keys")
                .map_err(|e| problems.push(e))
                .ok();
            let len = match spec.stop {
                None => {
                    problems.push(config(
                        ".stop",
                        "required with 'keys' (last index, exclusive)",
                    ));
                    None
                }
                Some(stop) => limits::slice_count("spec.source.s3", start, stop)
                    .map_err(|e| problems.push(e))
                    .ok(),
            };
            (template.map(|t| (t, start)), len)
        }
        (None, Some(prefix)) => {
            if spec.start.is_some() || spec.stop.is_some() {
                problems.push(config(
                    "",
                    "'start'/'stop' go with 'keys', not with 'prefix'",
                ));
            }
            if prefix.starts_with('/') {
                problems.push(config(
                    ".prefix",
                    "must not start with '/' (keys are relative to the bucket)",
                ));
            }
            (None, None)
        }
        _ => {
            problems.push(config("", "exactly one of 'keys' or 'prefix' must be set"));
            (None, None)
        }
    };
    let concurrency = spec.concurrency.unwrap_or(DEFAULT_SOURCE_CONCURRENCY);
    if let Err(e) = limits::concurrency("spec.source.s3.concurrency", concurrency) {
        problems.push(e);
    }
    let retries = spec.retries.unwrap_or(DEFAULT_RETRIES);
    if retries > MAX_RETRIES {
        problems.push(config(
            ".retries",
            &format!("{retries} is more than the limit of {}", MAX_RETRIES),
        ));
    }
    let timeout = spec.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if timeout == 0 {
        problems.push(config(".timeoutSeconds", "must be at least 1"));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(S3SourceCheck {
        bucket,
        keys,
        len,
        concurrency,
        retries,
        timeout: Duration::from_secs(timeout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(yaml: &str) -> S3Storage {
        serde_yaml::from_str(yaml).expect("storage")
    }

    #[test]
    fn bucket_names_follow_the_s3_rules() {
        for good in ["abc", "my.bucket-1", &"a".repeat(63)] {
            assert_eq!(check_bucket("f", good), Ok(()), "{good}");
        }
        for bad in ["ab", "Abc", "-abc", "abc-", "a_b", &"a".repeat(64)] {
            let e = check_bucket("spec.x.bucket", bad).expect_err(bad);
            assert_eq!(e.field, "spec.x.bucket");
            assert!(
                e.message
                    .starts_with(&format!("{bad:?} is not a valid bucket name")),
                "{e}"
            );
        }
    }

    #[test]
    fn storage_problems_name_their_fields() {
        let fields = |yaml: &str| -> Vec<String> {
            check_storage(&storage(yaml))
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(
            fields("{bucket: data, endpoint: 'http://127.0.0.1:8333'}"),
            Vec::<String>::new()
        );
        assert_eq!(
            fields(
                "{bucket: B, endpoint: 'ftp://h', partSizeMiB: 4, leaseSeconds: 4, region: '', prefix: /p}"
            ),
            vec![
                "spec.storage.s3.bucket",
                "spec.storage.s3.endpoint",
                "spec.storage.s3.partSizeMiB",
                "spec.storage.s3.leaseSeconds",
                "spec.storage.s3.region",
                "spec.storage.s3.prefix",
            ]
        );
    }

    #[test]
    fn a_source_takes_the_storage_bucket_and_counts_its_keys() {
        let src: S3Source = serde_yaml::from_str("{keys: 'z/{index:04}.png', start: 10, stop: 30}")
            .expect("source");
        let c = check_source(&src, Some(&storage("{bucket: data}"))).expect("valid");
        assert_eq!(c.bucket, "data");
        assert_eq!(c.len, Some(20));
        assert_eq!(
            c.keys.map(|(t, s)| t.render(s)),
            Some("z/0010.png".to_string())
        );
        assert_eq!(
            (c.concurrency, c.retries),
            (DEFAULT_SOURCE_CONCURRENCY, DEFAULT_RETRIES)
        );
        let e = check_source(&src, None).expect_err("no bucket");
        assert_eq!(e[0].field, "spec.source.s3.bucket");
    }
}
