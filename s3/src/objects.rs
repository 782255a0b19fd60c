//! Object operations on one bucket, as the outputs and the commit protocol need them: PUT (multipart above
//! one part), conditional PUT, GET, server-side copy, listing and deletion, each error naming the operation and
//! the object. Every request is counted ([`counters`]), for the run's summary and the benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{Missing, RequestPolicy, S3Connection, S3Error, explain, outlast};
use arrayjob_spec::limits;

/// Default size of one part of a multipart upload (objects up to this size go in one PUT).
pub const DEFAULT_PART_BYTES: usize = 16 << 20;
/// Smallest part S3 accepts (all but the last).
pub const MIN_PART_BYTES: usize = 5 << 20;
/// Parts of one object uploaded at once.
const PART_CONCURRENCY: usize = 4;
/// Largest object one CopyObject copies (the S3 limit).
pub const MAX_SINGLE_COPY_BYTES: u64 = 5 << 30;
/// Part size of a multipart copy of a larger object.
const COPY_PART_BYTES: u64 = 1 << 30;
/// Keys per DeleteObjects request (the S3 limit).
const DELETE_BATCH: usize = 1000;

/// An `s3://bucket/prefix/` location: keys under it are `prefix` + a relative path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct S3Location {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket` or `s3://bucket/some/prefix` (a trailing `/` is added to a non-empty prefix).
    ///
    /// # Errors
    /// [`S3Error::Config`] naming `field` when it is not an `s3://` URI with a valid bucket name.
    pub fn parse(field: &str, uri: &str) -> Result<S3Location, S3Error> {
        let Some(rest) = uri.strip_prefix("s3://") else {
            return Err(S3Error::Config {
                field: field.to_owned(),
                message: format!("expected s3://bucket/prefix, found {uri:?}"),
            });
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        super::check_bucket(field, bucket)?;
        let prefix = prefix.trim_start_matches('/');
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_owned()
        } else {
            format!("{prefix}/")
        };
        Ok(S3Location {
            bucket: bucket.to_owned(),
            prefix,
        })
    }

    /// The key of `rel` under this location.
    pub fn key(&self, rel: &str) -> String {
        format!("{}{}", self.prefix, rel.trim_start_matches('/'))
    }

    /// The location of the sub-prefix `rel/`.
    pub fn join(&self, rel: &str) -> S3Location {
        S3Location {
            bucket: self.bucket.clone(),
            prefix: format!("{}{}/", self.prefix, rel.trim_matches('/')),
        }
    }

    /// `s3://bucket/prefix` + `rel`.
    pub fn uri(&self, rel: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(rel))
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Requests and bytes of this process, by kind (a wire type: reports carry it).
pub use arrayjob_spec::progress::S3Counters;

static REQUESTS: AtomicU64 = AtomicU64::new(0);
static OBJECTS_PUT: AtomicU64 = AtomicU64::new(0);
static MULTIPART: AtomicU64 = AtomicU64::new(0);
static BYTES_PUT: AtomicU64 = AtomicU64::new(0);
static BYTES_GOT: AtomicU64 = AtomicU64::new(0);
static COPIES: AtomicU64 = AtomicU64::new(0);
static DELETED: AtomicU64 = AtomicU64::new(0);

fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The S3 counters of this process so far.
pub fn counters() -> S3Counters {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    S3Counters {
        requests: get(&REQUESTS),
        objects_put: get(&OBJECTS_PUT),
        multipart_uploads: get(&MULTIPART),
        bytes_put: get(&BYTES_PUT),
        bytes_got: get(&BYTES_GOT),
        copies: get(&COPIES),
        deleted: get(&DELETED),
    }
}

/// A bucket and a client for it: what every operation of this module runs on. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Bucket {
    client: Client,
    name: String,
    policy: RequestPolicy,
    part_bytes: usize,
}

/// The answer to a conditional PUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CondPut {
    /// Written; the new ETag.
    Written(String),
    /// The condition did not hold (HTTP 412): someone else's object is there (or not there).
    Refused,
}

impl Bucket {
    /// `name` on `conn`, with `policy` for every request and uploads in parts of `part_bytes` (at least
    /// [`MIN_PART_BYTES`]) above one part.
    pub fn new(
        conn: &S3Connection,
        name: &str,
        policy: RequestPolicy,
        part_bytes: usize,
    ) -> Bucket {
        Bucket {
            client: conn.client(policy),
            name: name.to_owned(),
            policy,
            part_bytes: part_bytes.max(MIN_PART_BYTES),
        }
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks that the bucket exists and may be listed ([`super::probe_bucket`]), before any work.
    ///
    /// # Errors
    /// The probe's error, naming `ListObjectsV2` and the bucket.
    pub fn probe(&self) -> Result<(), S3Error> {
        let b = self.clone();
        count(&REQUESTS, 1);
        block(async move { super::probe_bucket(&b.client, &b.name, b.policy).await })
    }

    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.name)
    }

    fn fail<E>(
        &self,
        operation: &'static str,
        key: &str,
        e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> S3Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        S3Error::request(
            None,
            operation,
            &self.uri(key),
            explain(e, Missing::Key, self.policy),
        )
    }

    /// Writes `body` at `key`: one PUT, or a multipart upload when it is larger than one part.
    ///
    /// # Errors
    /// The first request that failed (an unfinished multipart upload is aborted).
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), S3Error> {
        let len = body.len() as u64;
        if body.len() > self.part_bytes {
            self.put_multipart(key, body).await?;
            count(&MULTIPART, 1);
        } else {
            outlast(self.policy, key, || {
                count(&REQUESTS, 1);
                self.client
                    .put_object()
                    .bucket(&self.name)
                    .key(key)
                    .body(ByteStream::from(body.clone()))
                    .send()
            })
            .await
            .map_err(|e| self.fail("PutObject", key, &e))?;
        }
        count(&OBJECTS_PUT, 1);
        count(&BYTES_PUT, len);
        Ok(())
    }

    async fn put_multipart(&self, key: &str, body: Bytes) -> Result<(), S3Error> {
        self.multipart(key, |upload| async move {
            self.upload_parts(key, &upload, &body).await
        })
        .await
    }

    /// A multipart upload to `key` whose parts `parts` sends, given the upload id: created, then completed, or
    /// aborted when a part failed.
    async fn multipart<F, Fut>(&self, key: &str, parts: F) -> Result<(), S3Error>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<CompletedPart>, S3Error>>,
    {
        let created = outlast(self.policy, key, || {
            count(&REQUESTS, 1);
            self.client
                .create_multipart_upload()
                .bucket(&self.name)
                .key(key)
                .send()
        })
        .await
        .map_err(|e| self.fail("CreateMultipartUpload", key, &e))?;
        let Some(upload) = created.upload_id().map(str::to_owned) else {
            return Err(S3Error::request(
                None,
                "CreateMultipartUpload",
                &self.uri(key),
                "the answer has no upload id".into(),
            ));
        };
        let done = match parts(upload.clone()).await {
            Ok(parts) => outlast(self.policy, key, || {
                count(&REQUESTS, 1);
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.name)
                    .key(key)
                    .upload_id(&upload)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts.clone()))
                            .build(),
                    )
                    .send()
            })
            .await
            .map(|_| ())
            .map_err(|e| self.fail("CompleteMultipartUpload", key, &e)),
            Err(e) => Err(e),
        };
        if done.is_err() {
            count(&REQUESTS, 1);
            // Best effort: a bucket lifecycle rule reaps what this cannot.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.name)
                .key(key)
                .upload_id(&upload)
                .send()
                .await;
        }
        done
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload: &str,
        body: &Bytes,
    ) -> Result<Vec<CompletedPart>, S3Error> {
        let ranges: Vec<(i32, Bytes)> = (0..body.len())
            .step_by(self.part_bytes)
            .enumerate()
            .map(|(i, at)| {
                let end = (at + self.part_bytes).min(body.len());
                (i as i32 + 1, body.slice(at..end))
            })
            .collect();
        futures::stream::iter(ranges)
            .map(|(number, part)| async move {
                let out = outlast(self.policy, key, || {
                    count(&REQUESTS, 1);
                    self.client
                        .upload_part()
                        .bucket(&self.name)
                        .key(key)
                        .upload_id(upload)
                        .part_number(number)
                        .body(ByteStream::from(part.clone()))
                        .send()
                })
                .await
                .map_err(|e| self.fail("UploadPart", key, &e))?;
                Ok(CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .build())
            })
            .buffered(PART_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Writes `body` at `key` only if no object is there (`If-None-Match: *`) or only if the object there has
    /// ETag `etag` (`If-Match`).
    ///
    /// # Errors
    /// When the request fails for another reason than the condition.
    pub async fn put_if(
        &self,
        key: &str,
        body: Bytes,
        etag: Option<&str>,
    ) -> Result<CondPut, S3Error> {
        let answer = outlast(self.policy, key, || {
            count(&REQUESTS, 1);
            let req = self
                .client
                .put_object()
                .bucket(&self.name)
                .key(key)
                .body(ByteStream::from(body.clone()));
            match etag {
                Some(etag) => req.if_match(etag),
                None => req.if_none_match("*"),
            }
            .send()
        })
        .await;
        match answer {
            Ok(out) => {
                count(&OBJECTS_PUT, 1);
                Ok(CondPut::Written(out.e_tag().unwrap_or_default().to_owned()))
            }
            Err(e) if precondition_failed(&e) => Ok(CondPut::Refused),
            Err(e) => Err(self.fail("PutObject", key, &e)),
        }
    }

    /// The object at `key` and its ETag; `None` when there is none. For the job's own objects (a spilled frame,
    /// a shipped batch, a ledger): at most [`limits::MAX_SCRATCH_OBJECT_BYTES`].
    ///
    /// # Errors
    /// When the request fails (other than 404), or the object is longer than the limit.
    pub async fn get(&self, key: &str) -> Result<Option<(Bytes, String)>, S3Error> {
        self.get_ranged(key, None, limits::MAX_SCRATCH_OBJECT_BYTES)
            .await
    }

    /// The object at `key`, refused when it is longer than `limit` bytes (announced or read: its body is never
    /// held past the limit); `None` when there is none.
    ///
    /// # Errors
    /// When the request fails (other than 404), or the object is longer than `limit`.
    pub async fn get_limited(&self, key: &str, limit: u64) -> Result<Option<Bytes>, S3Error> {
        Ok(self.get_ranged(key, None, limit).await?.map(|(b, _)| b))
    }

    /// The object at `key` and its ETag, as [`Bucket::get`], refused when it is larger than `max` bytes (a
    /// record read back from a location that anyone may have written: a lock, a journal, a summary).
    ///
    /// # Errors
    /// When the request fails (other than 404), or the object is larger than `max`.
    pub async fn get_bounded(
        &self,
        key: &str,
        max: u64,
    ) -> Result<Option<(Bytes, String)>, S3Error> {
        self.get_ranged(key, None, max).await
    }

    /// Bytes `start..end` of the object at `key` (one ranged GetObject; fewer when the object is shorter);
    /// `None` when there is none.
    ///
    /// # Errors
    /// When the request fails (other than 404), or the answer is longer than the range.
    pub async fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
    ) -> Result<Option<Bytes>, S3Error> {
        if end <= start {
            return Ok(Some(Bytes::new()));
        }
        let range = format!("bytes={start}-{}", end - 1);
        Ok(self
            .get_ranged(key, Some(range), end - start)
            .await?
            .map(|(b, _)| b))
    }

    /// The last `n` bytes of the object at `key` (all of it when shorter); `None` when there is none.
    ///
    /// # Errors
    /// When the request fails (other than 404), or the answer is longer than `n`.
    pub async fn get_suffix(&self, key: &str, n: u64) -> Result<Option<Bytes>, S3Error> {
        if n == 0 {
            return Ok(Some(Bytes::new()));
        }
        let range = format!("bytes=-{n}");
        Ok(self.get_ranged(key, Some(range), n).await?.map(|(b, _)| b))
    }

    /// GetObject of `key`, whole or of the HTTP `range`, reading at most `limit` bytes of body.
    async fn get_ranged(
        &self,
        key: &str,
        range: Option<String>,
        limit: u64,
    ) -> Result<Option<(Bytes, String)>, S3Error> {
        let answer = outlast(self.policy, key, || {
            count(&REQUESTS, 1);
            self.client
                .get_object()
                .bucket(&self.name)
                .key(key)
                .set_range(range.clone())
                .send()
        })
        .await;
        let out = match answer {
            Ok(out) => out,
            Err(e) if is_not_found(&e) => return Ok(None),
            // A range that starts at the end of the object: no bytes (as a read at the end of a file).
            Err(e) if range.is_some() && status_of(&e) == Some(416) => {
                return Ok(Some((Bytes::new(), String::new())));
            }
            Err(e) => return Err(self.fail("GetObject", key, &e)),
        };
        let etag = out.e_tag().unwrap_or_default().to_owned();
        let fail = |message: String| S3Error::request(None, "GetObject", &self.uri(key), message);
        let too_long =
            |what: String| fail(format!("{what} the limit of {limit} bytes for this read"));
        let announced = out.content_length().and_then(|n| u64::try_from(n).ok());
        if let Some(n) = announced.filter(|&n| n > limit) {
            return Err(too_long(format!(
                "a body of {n} bytes (Content-Length) exceeds"
            )));
        }
        // Read piece by piece, so a body longer than announced stops at the limit.
        let mut body = out.body;
        let mut bytes =
            Vec::with_capacity(usize::try_from(announced.unwrap_or(0).min(64 << 20)).unwrap_or(0));
        while let Some(piece) = body
            .try_next()
            .await
            .map_err(|e| fail(format!("reading the body: {}", super::error_chain(&e))))?
        {
            if (bytes.len() as u64).saturating_add(piece.len() as u64) > limit {
                return Err(too_long("the body exceeds".into()));
            }
            bytes.extend_from_slice(&piece);
        }
        count(&BYTES_GOT, bytes.len() as u64);
        Ok(Some((Bytes::from(bytes), etag)))
    }

    /// Every key under `prefix` with its size, in key order (all pages).
    ///
    /// # Errors
    /// When a page cannot be listed.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, S3Error> {
        let (mut keys, _) = self.list_pages(prefix, None).await?;
        keys.sort();
        Ok(keys)
    }

    /// The sub-prefixes right under `prefix` whose names start with `start` (ListObjectsV2 with a `/`
    /// delimiter), e.g. the staging prefixes of an output location.
    ///
    /// # Errors
    /// When a page cannot be listed.
    pub async fn list_dirs(&self, prefix: &str, start: &str) -> Result<Vec<String>, S3Error> {
        let (_, mut dirs) = self
            .list_pages(&format!("{prefix}{start}"), Some("/"))
            .await?;
        dirs.sort();
        Ok(dirs)
    }

    /// Keys (with sizes) and, with a delimiter, common prefixes under `prefix`: every page of ListObjectsV2.
    async fn list_pages(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> Result<(Vec<(String, u64)>, Vec<String>), S3Error> {
        let (mut keys, mut dirs) = (Vec::new(), Vec::new());
        let mut token: Option<String> = None;
        loop {
            let page = outlast(self.policy, prefix, || {
                count(&REQUESTS, 1);
                self.client
                    .list_objects_v2()
                    .bucket(&self.name)
                    .prefix(prefix)
                    .set_delimiter(delimiter.map(str::to_owned))
                    .set_continuation_token(token.clone())
                    .send()
            })
            .await
            .map_err(|e| self.fail("ListObjectsV2", prefix, &e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    keys.push((k.to_owned(), o.size().unwrap_or(0).max(0) as u64));
                }
            }
            dirs.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(str::to_owned)),
            );
            token = page.next_continuation_token().map(str::to_owned);
            if token.is_none() || page.is_truncated() != Some(true) {
                return Ok((keys, dirs));
            }
        }
    }

    /// Copies `from` (of `size` bytes) to `to` inside the bucket, server-side: one CopyObject up to 5 GiB (its
    /// limit), a multipart copy of 1 GiB parts beyond.
    ///
    /// # Errors
    /// When a request fails.
    pub async fn copy_sized(&self, from: &str, to: &str, size: u64) -> Result<(), S3Error> {
        if size <= MAX_SINGLE_COPY_BYTES {
            self.copy(from, to).await
        } else {
            self.copy_in_parts(from, to, size, COPY_PART_BYTES).await
        }
    }

    /// Copies `from` (of `size` bytes) to `to` server-side as a multipart upload of `part`-byte ranges
    /// (UploadPartCopy), [`PART_CONCURRENCY`] at a time.
    ///
    /// # Errors
    /// When a request fails (the multipart upload is then aborted).
    pub async fn copy_in_parts(
        &self,
        from: &str,
        to: &str,
        size: u64,
        part: u64,
    ) -> Result<(), S3Error> {
        let source = copy_source(&self.name, from);
        self.multipart(to, |upload| async move {
            let ranges: Vec<(i32, u64, u64)> = (0..size)
                .step_by(part.max(1) as usize)
                .enumerate()
                .map(|(i, at)| (i as i32 + 1, at, (at + part).min(size) - 1))
                .collect();
            futures::stream::iter(ranges)
                .map(|(number, first, last)| {
                    let (upload, source) = (&upload, &source);
                    async move {
                        let out = outlast(self.policy, to, || {
                            count(&REQUESTS, 1);
                            self.client
                                .upload_part_copy()
                                .bucket(&self.name)
                                .key(to)
                                .upload_id(upload)
                                .part_number(number)
                                .copy_source(source)
                                .copy_source_range(format!("bytes={first}-{last}"))
                                .send()
                        })
                        .await
                        .map_err(|e| self.fail("UploadPartCopy", to, &e))?;
                        Ok(CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(
                                out.copy_part_result()
                                    .and_then(|r| r.e_tag())
                                    .map(str::to_owned),
                            )
                            .build())
                    }
                })
                .buffered(PART_CONCURRENCY)
                .try_collect()
                .await
        })
        .await?;
        count(&COPIES, 1);
        Ok(())
    }

    /// Copies `from` to `to` inside the bucket, server-side (objects up to 5 GiB, the CopyObject limit).
    ///
    /// # Errors
    /// When the copy fails.
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), S3Error> {
        outlast(self.policy, to, || {
            count(&REQUESTS, 1);
            self.client
                .copy_object()
                .bucket(&self.name)
                .key(to)
                .copy_source(copy_source(&self.name, from))
                .send()
        })
        .await
        .map_err(|e| self.fail("CopyObject", to, &e))?;
        count(&COPIES, 1);
        Ok(())
    }

    /// Deletes `keys` (DeleteObjects, 1000 at a time); keys that are already gone are fine.
    ///
    /// # Errors
    /// When a request fails or S3 reports a key it could not delete.
    pub async fn delete(&self, keys: &[String]) -> Result<(), S3Error> {
        for batch in keys.chunks(DELETE_BATCH) {
            let ids = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    S3Error::request(None, "DeleteObjects", &self.uri(""), e.to_string())
                })?;
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| {
                    S3Error::request(None, "DeleteObjects", &self.uri(""), e.to_string())
                })?;
            let out = outlast(self.policy, &batch[0], || {
                count(&REQUESTS, 1);
                self.client
                    .delete_objects()
                    .bucket(&self.name)
                    .delete(delete.clone())
                    .send()
            })
            .await
            .map_err(|e| self.fail("DeleteObjects", &batch[0], &e))?;
            if let Some(err) = out.errors().first() {
                return Err(S3Error::request(
                    None,
                    "DeleteObjects",
                    &self.uri(err.key().unwrap_or_default()),
                    format!(
                        "{} ({})",
                        err.message().unwrap_or("not deleted"),
                        err.code().unwrap_or("no code")
                    ),
                ));
            }
            count(&DELETED, batch.len() as u64);
        }
        Ok(())
    }

    /// Deletes every object under `prefix`; returns how many there were.
    ///
    /// # Errors
    /// As [`Bucket::list`] and [`Bucket::delete`].
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, S3Error> {
        // Everything arrayjob deletes lies below a "directory" of the bucket; the empty prefix is the whole
        // bucket, and a prefix without '/' takes whatever top-level keys happen to start with it.
        if !prefix.contains('/') {
            return Err(S3Error::request(
                None,
                "DeleteObjects",
                &self.uri(prefix),
                "refusing to delete every object under a prefix that is not inside a folder of the bucket".into(),
            ));
        }
        let keys: Vec<String> = self
            .list(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        self.delete(&keys).await?;
        Ok(keys.len())
    }
}

/// `bucket/key` for CopyObject's `x-amz-copy-source`, the key URL-encoded but for its `/`.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = format!("{bucket}/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn precondition_failed<E: ProvideErrorMetadata>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => {
            s.raw().status().as_u16() == 412 || s.err().code() == Some("PreconditionFailed")
        }
        _ => false,
    }
}

/// The HTTP status of a service error.
fn status_of<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Option<u16> {
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
        _ => None,
    }
}

fn is_not_found<E: ProvideErrorMetadata>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => {
            s.raw().status().as_u16() == 404 || s.err().code() == Some("NoSuchKey")
        }
        _ => false,
    }
}

/// Runs `fut` on the S3 runtime and waits for it from this (non-async) thread. Unlike `block_on`, it also works
/// from a thread that is inside another runtime's context.
///
/// # Errors
/// `fut`'s error, or [`S3Error::Config`] when the runtime cannot start.
pub fn block<T, E, F>(fut: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<S3Error> + Send + 'static,
    F: std::future::Future<Output = Result<T, E>> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    super::runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().unwrap_or_else(|_| {
        Err(E::from(S3Error::Config {
            field: "spec.storage.s3".into(),
            message: "the S3 runtime stopped".into(),
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_name_keys() {
        let l = S3Location::parse("--out", "s3://em-jobs/results/run1").expect("valid");
        assert_eq!(l.prefix, "results/run1/");
        assert_eq!(
            l.key("power.zarr/zarr.json"),
            "results/run1/power.zarr/zarr.json"
        );
        assert_eq!(
            l.join("power.zarr").uri("c/0"),
            "s3://em-jobs/results/run1/power.zarr/c/0"
        );
        assert_eq!(
            S3Location::parse("--out", "s3://em-jobs")
                .expect("valid")
                .prefix,
            ""
        );
        let e = S3Location::parse("--out", "s3://Em_Jobs/x")
            .expect_err("invalid")
            .to_string();
        assert!(
            e.starts_with("--out: \"Em_Jobs\" is not a valid bucket name"),
            "{e}"
        );
        let e = S3Location::parse("--out", "/tmp/x")
            .expect_err("invalid")
            .to_string();
        assert_eq!(e, "--out: expected s3://bucket/prefix, found \"/tmp/x\"");
    }

    #[test]
    fn copy_sources_encode_what_a_header_cannot_carry() {
        assert_eq!(
            copy_source("b", "a/b c/ü+.zarr"),
            "b/a/b%20c/%C3%BC%2B.zarr"
        );
    }
}
