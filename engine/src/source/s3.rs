//! The `s3` source: one image per object of an S3 bucket, named by a key template or listed under a prefix.
//!
//! Requests run on the process's S3 runtime ([`crate::s3::runtime`]), at most `concurrency` at once for the
//! whole source (every reader shares its semaphore), with the SDK's retries. [`SliceSource::read`] blocks on
//! them from the calling executor thread and decodes each slice there, straight into the chunk, as soon as its
//! body is in. The bucket (and the first key, or the listing) is checked when the source is opened, before any
//! work starts.

use std::sync::Arc;

use aws_sdk_s3::Client;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::debug;

use super::decode::{decode_into, probe};
use super::stack::SliceStack;
use super::template::IndexTemplate;
use super::{Declared, InfoCache, SliceInfo, SliceSource, SourceError, check_range, limits};
use crate::array::Chunk;
use crate::s3::{
    self as s3c, Missing, RequestPolicy, S3Connection, S3Error, S3Settings, explain, probe_bucket,
};
use crate::spec::{S3Source, S3Storage};

/// Requests in flight at once when the spec does not say.
pub use arrayjob_spec::s3::DEFAULT_SOURCE_CONCURRENCY as DEFAULT_CONCURRENCY;

/// How the objects of an [`S3SliceSource`] are named.
#[derive(Debug, Clone)]
enum Naming {
    /// `template` rendered for indices `start..start + len`.
    Keys { template: IndexTemplate, start: u64 },
    /// These keys (listed under `prefix`), sorted.
    Listed { prefix: String, keys: Vec<String> },
}

/// The checked fields of an `s3` source spec.
#[derive(Debug, Clone)]
pub struct S3SourcePlan {
    /// Bucket (the source's, else the storage's).
    pub bucket: String,
    /// Key template and first index, when `keys` is set.
    pub keys: Option<(IndexTemplate, u64)>,
    /// Number of slices, when known without listing (with `keys`).
    pub len: Option<usize>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Retries and timeout of each request.
    pub policy: RequestPolicy,
}

/// Checks an `s3` source spec ([`arrayjob_spec::s3::check_source`], which validation calls too); `storage`
/// gives the default bucket and the outage budget.
///
/// # Errors
/// Every problem found, each a [`SourceError::Config`] naming its field.
pub fn check_spec(
    spec: &S3Source,
    storage: Option<&S3Storage>,
) -> Result<S3SourcePlan, Vec<SourceError>> {
    let c = arrayjob_spec::s3::check_source(spec, storage).map_err(|problems| {
        problems
            .into_iter()
            .map(SourceError::from)
            .collect::<Vec<_>>()
    })?;
    Ok(S3SourcePlan {
        bucket: c.bucket,
        keys: c.keys,
        len: c.len,
        concurrency: c.concurrency,
        policy: RequestPolicy {
            retries: c.retries,
            timeout: c.timeout,
            outage: s3c::outage_of(storage),
        },
    })
}

/// Slices read from the objects of an S3 bucket.
#[derive(Debug)]
pub struct S3SliceSource {
    client: Client,
    bucket: String,
    naming: Naming,
    len: usize,
    policy: RequestPolicy,
    /// Shared by every concurrent `read`, so `concurrency` bounds the whole source.
    permits: Arc<Semaphore>,
    info: InfoCache,
}

impl S3SliceSource {
    /// Checks the spec, connects (`spec.storage.s3`'s settings, then the environment) and checks the bucket
    /// and the first key, or lists the prefix. `declared` is what the spec says every slice is.
    ///
    /// # Errors
    /// [`SourceError::Config`] for an invalid spec (the first problem) or an empty listing;
    /// [`SourceError::S3`] naming the operation and the bucket (and key) when the bucket is missing, the
    /// credentials are refused, access is denied or the first key is missing.
    pub fn new(
        spec: &S3Source,
        storage: Option<&S3Storage>,
        declared: Declared,
    ) -> Result<S3SliceSource, SourceError> {
        let plan = check_spec(spec, storage).map_err(|mut problems| problems.swap_remove(0))?;
        let connection = S3Connection::connect(&S3Settings::from_spec(storage))?;
        let client = connection.client(plan.policy);
        let bucket = plan.bucket;
        let policy = plan.policy;
        let naming = s3c::runtime()?.block_on(async {
            probe_bucket(&client, &bucket, policy).await?;
            match plan.keys {
                Some((template, start)) => {
                    let first = template.render(start);
                    head(&client, &bucket, &first, policy).await?;
                    Ok(Naming::Keys { template, start })
                }
                None => {
                    let prefix = spec.prefix.clone().unwrap_or_default();
                    let keys = list(&client, &bucket, &prefix, policy).await?;
                    Ok::<_, SourceError>(Naming::Listed { prefix, keys })
                }
            }
        })?;
        let len = match (&naming, plan.len) {
            (Naming::Listed { keys, .. }, _) => keys.len(),
            (Naming::Keys { .. }, Some(len)) => len,
            (Naming::Keys { .. }, None) => 0,
        };
        Ok(S3SliceSource {
            client,
            bucket,
            naming,
            len,
            policy,
            permits: Arc::new(Semaphore::new(plan.concurrency)),
            info: InfoCache::new(declared),
        })
    }

    /// Key of slice `index`.
    pub fn key(&self, index: usize) -> String {
        match &self.naming {
            Naming::Keys { template, start } => template.render(start + index as u64),
            Naming::Listed { keys, .. } => keys.get(index).cloned().unwrap_or_default(),
        }
    }

    /// `s3://bucket/key` of slice `index`.
    pub fn location(&self, index: usize) -> String {
        format!("s3://{}/{}", self.bucket, self.key(index))
    }

    /// Fetches slices `start..end` (all requested at once, within the concurrency bound) and hands each body to
    /// `take(index, location, body)` on the calling thread as soon as it is in; stops at the first slice that
    /// fails for good, or the first error of `take`.
    fn fetch_each(
        &self,
        start: usize,
        end: usize,
        mut take: impl FnMut(usize, &str, &[u8]) -> Result<(), SourceError>,
    ) -> Result<(), SourceError> {
        let runtime = s3c::runtime()?;
        let mut tasks = JoinSet::new();
        for index in start..end {
            let get = get_object(
                self.client.clone(),
                Arc::clone(&self.permits),
                self.bucket.clone(),
                self.key(index),
                index,
                self.policy,
            );
            tasks.spawn_on(async move { (index, get.await) }, runtime.handle());
        }
        runtime.block_on(async {
            while let Some(joined) = tasks.join_next().await {
                let (index, body) = joined.map_err(|e| {
                    S3Error::request(
                        Some(start),
                        "GetObject",
                        &self.location(start),
                        format!("fetch task failed: {e}"),
                    )
                })?;
                // Returning drops `tasks`, which aborts the fetches still running.
                take(index, &self.location(index), &body?)?;
            }
            Ok(())
        })
    }
}

/// Checks that the first key exists (HeadObject), so a wrong template fails before any work starts.
async fn head(
    client: &Client,
    bucket: &str,
    key: &str,
    policy: RequestPolicy,
) -> Result<(), SourceError> {
    s3c::outlast(policy, key, || {
        client.head_object().bucket(bucket).key(key).send()
    })
    .await
    .map_err(|e| {
        S3Error::request(
            Some(0),
            "HeadObject",
            &format!("s3://{bucket}/{key}"),
            explain(&e, Missing::Key, policy),
        )
    })?;
    Ok(())
}

/// Every key under `prefix` (ListObjectsV2, all pages), without folder markers (keys ending in '/'), sorted.
async fn list(
    client: &Client,
    bucket: &str,
    prefix: &str,
    policy: RequestPolicy,
) -> Result<Vec<String>, SourceError> {
    let location = format!("s3://{bucket}/{prefix}");
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = s3c::outlast(policy, &location, || {
            client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
        })
        .await
        .map_err(|e| {
            S3Error::request(
                None,
                "ListObjectsV2",
                &location,
                explain(&e, Missing::Bucket, policy),
            )
        })?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key())
                .filter(|k| !k.ends_with('/'))
                .map(str::to_owned),
        );
        if keys.len() as u64 > limits::MAX_SLICES {
            return Err(SourceError::Config {
                field: "spec.source.s3.prefix".into(),
                message: format!(
                    "more than the limit of {} objects under {location}",
                    limits::MAX_SLICES
                ),
            });
        }
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() || page.is_truncated() != Some(true) {
            break;
        }
    }
    if keys.is_empty() {
        return Err(SourceError::Config {
            field: "spec.source.s3.prefix".into(),
            message: format!("no object under {location}"),
        });
    }
    keys.sort();
    Ok(keys)
}

/// GETs one object (the SDK retrying what can be retried) and reads its body, at most
/// [`limits::MAX_SLICE_BYTES`] and within the attempt timeout.
async fn get_object(
    client: Client,
    permits: Arc<Semaphore>,
    bucket: String,
    key: String,
    index: usize,
    policy: RequestPolicy,
) -> Result<Vec<u8>, SourceError> {
    let location = format!("s3://{bucket}/{key}");
    let fail = |message: String| S3Error::request(Some(index), "GetObject", &location, message);
    let _permit = permits.acquire().await.map_err(|e| fail(e.to_string()))?;
    let answer = s3c::outlast(policy, &location, || {
        client.get_object().bucket(&bucket).key(&key).send()
    })
    .await
    .map_err(|e| fail(explain(&e, Missing::Key, policy)))?;
    let announced = answer.content_length().and_then(|n| u64::try_from(n).ok());
    if let Some(n) = announced.filter(|&n| n > limits::MAX_SLICE_BYTES) {
        return Err(fail(format!(
            "object of {n} bytes exceeds the limit of {} bytes per slice",
            limits::MAX_SLICE_BYTES
        ))
        .into());
    }
    let mut stream = answer.body;
    // What the length announces is checked above; the buffer still grows only as bytes arrive beyond 64 MiB.
    let reserve = announced.unwrap_or(0).min(64 << 20);
    let mut body = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
    let read = async {
        while let Some(piece) = stream.try_next().await.map_err(|e| {
            fail(format!(
                "reading the body: {} (not retried)",
                s3c::error_chain(&e)
            ))
        })? {
            if (body.len() as u64).saturating_add(piece.len() as u64) > limits::MAX_SLICE_BYTES {
                return Err(fail(format!(
                    "body exceeds the limit of {} bytes per slice",
                    limits::MAX_SLICE_BYTES
                )));
            }
            body.extend_from_slice(&piece);
        }
        Ok(())
    };
    tokio::time::timeout(policy.timeout, read)
        .await
        .map_err(|_| {
            fail(format!(
                "reading the body took more than {} s (not retried)",
                policy.timeout.as_secs_f64()
            ))
        })??;
    debug!(index, location, bytes = body.len(), "fetched slice");
    Ok(body)
}

impl SliceSource for S3SliceSource {
    fn len(&self) -> usize {
        self.len
    }

    fn slice_info(&self) -> Result<SliceInfo, SourceError> {
        self.info.get_or_try(|| {
            let mut info = None;
            self.fetch_each(0, 1, |index, location, body| {
                info = Some((probe(body, index, location)?, location.to_owned()));
                Ok(())
            })?;
            info.ok_or_else(|| {
                S3Error::request(Some(0), "GetObject", &self.location(0), "no answer".into()).into()
            })
        })
    }

    fn read(&self, start: usize, end: usize) -> Result<Chunk, SourceError> {
        check_range(self, start, end)?;
        let info = self.slice_info()?;
        let basis = self.info.declared.basis();
        let mut stack = SliceStack::new(start, end, info)?;
        self.fetch_each(start, end, |index, location, body| {
            decode_into(body, index, location, info, basis, stack.slot(index))
        })?;
        Ok(stack.finish())
    }

    fn describe(&self) -> String {
        match &self.naming {
            Naming::Keys { template, start } => format!(
                "s3 s3://{}/{} [{start}, {})",
                self.bucket,
                template,
                start + self.len as u64
            ),
            Naming::Listed { prefix, .. } => {
                format!("s3 s3://{}/{prefix} ({} objects)", self.bucket, self.len)
            }
        }
    }
}
