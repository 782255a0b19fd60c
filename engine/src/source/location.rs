//! Where a `tiff` or `zarr` source lives (a local path, an HTTP(S) URL or an S3 key) and whole or ranged reads
//! of it and of the files under it (a Zarr hierarchy's keys).
//!
//! HTTP ranges are asked with a `Range` header; a server that answers `200` with the whole body instead is
//! logged once, and that body is kept and served for the object's further ranges.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tracing::{info, warn};

use super::SourceError;
use crate::s3 as s3c;
use crate::s3::objects::Bucket;
use crate::spec::{S3Object, S3Storage};

/// Retries of one HTTP request after a 5xx answer or a transport error.
const HTTP_RETRIES: u32 = 4;
/// Timeout of one HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// Delay before the first HTTP retry; it doubles on each further retry.
const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// The root of a source: a file or directory, a URL, or an S3 key or prefix.
#[derive(Debug)]
enum Root {
    Path(PathBuf),
    Url {
        url: String,
        client: reqwest::Client,
        /// Whole bodies of objects whose server refused ranges, by URL.
        whole: Mutex<HashMap<String, Bytes>>,
    },
    S3 {
        bucket: Bucket,
        key: String,
    },
}

/// A located file or directory and reads of it.
#[derive(Debug)]
pub struct Location {
    root: Root,
}

impl Location {
    /// The location set in `spec.source.{kind}` (exactly one of `path`, relative to `base_dir`, `url` or `s3`,
    /// whose bucket defaults to `storage`'s).
    ///
    /// # Errors
    /// [`SourceError::Config`] naming the field when not exactly one is set, the URL is not http(s) or no
    /// bucket is known; [`SourceError::S3`] when the S3 connection cannot be set up.
    pub fn of_spec(
        kind: &str,
        path: Option<&str>,
        url: Option<&str>,
        s3: Option<&S3Object>,
        storage: Option<&S3Storage>,
        base_dir: &Path,
    ) -> Result<Location, SourceError> {
        let config = |field: &str, message: String| SourceError::Config {
            field: format!("spec.source.{kind}{field}"),
            message,
        };
        let root = match (path, url, s3) {
            (Some(p), None, None) => Root::Path(base_dir.join(p)),
            (None, Some(u), None) => {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(config(".url", format!("{u:?} is not an http(s) URL")));
                }
                let client = reqwest::Client::builder()
                    .timeout(HTTP_TIMEOUT)
                    .connect_timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| config(".url", format!("cannot build the HTTP client: {e}")))?;
                Root::Url {
                    url: u.trim_end_matches('/').to_owned(),
                    client,
                    whole: Mutex::new(HashMap::new()),
                }
            }
            (None, None, Some(o)) => {
                let name = o
                    .bucket
                    .as_deref()
                    .or(storage.map(|s| s.bucket.as_str()))
                    .ok_or_else(|| {
                        config(
                            ".s3.bucket",
                            "required when spec.storage.s3 (whose bucket is the default) is not set"
                                .into(),
                        )
                    })?;
                s3c::check_bucket(&format!("spec.source.{kind}.s3.bucket"), name)?;
                Root::S3 {
                    bucket: s3c::bucket(storage, name)?,
                    key: o.key.trim_end_matches('/').to_owned(),
                }
            }
            _ => {
                return Err(config(
                    "",
                    "exactly one of 'path', 'url' or 's3' must be set".into(),
                ));
            }
        };
        Ok(Location { root })
    }

    /// The path, URL or `s3://` URI of `key` under the root (`""`: the root itself).
    pub fn name(&self, key: &str) -> String {
        let join = |root: &str| {
            if key.is_empty() {
                root.to_owned()
            } else {
                format!("{root}/{key}")
            }
        };
        match &self.root {
            Root::Path(p) => join(&p.display().to_string()),
            Root::Url { url, .. } => join(url),
            Root::S3 { bucket, key: k } => join(&format!("s3://{}/{k}", bucket.name())),
        }
    }

    /// Bytes `range` of `key` (all of it when `None`; fewer at the end of the object); `None` when it does not
    /// exist (no file, HTTP 404, `NoSuchKey`).
    ///
    /// # Errors
    /// [`SourceError::Object`] naming the file or URL (after retries for 5xx), [`SourceError::S3`] naming the
    /// key.
    pub fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Option<Bytes>, SourceError> {
        let name = self.name(key);
        match &self.root {
            Root::Path(_) => read_file(Path::new(&name), range),
            Root::Url { client, whole, .. } => http_get(client, whole, &name, range),
            Root::S3 { bucket, .. } => {
                let (bucket, k) = (bucket.clone(), s3_key(&self.root, key));
                Ok(crate::s3::objects::block(async move {
                    match range {
                        Some(r) => bucket.get_range(&k, r.start, r.end).await,
                        None => Ok(bucket.get(&k).await?.map(|(b, _)| b)),
                    }
                })?)
            }
        }
    }

    /// [`Location::get`] of a key that must exist.
    ///
    /// # Errors
    /// As [`Location::get`]; [`SourceError::Object`] when the key does not exist.
    pub fn get_existing(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, SourceError> {
        self.get(key, range)?.ok_or_else(|| SourceError::Object {
            location: self.name(key),
            message: "not found".into(),
        })
    }
}

/// The S3 key of `key` under an S3 root.
fn s3_key(root: &Root, key: &str) -> String {
    match root {
        Root::S3 { key: k, .. } if key.is_empty() => k.clone(),
        Root::S3 { key: k, .. } if k.is_empty() => key.to_owned(),
        Root::S3 { key: k, .. } => format!("{k}/{key}"),
        _ => key.to_owned(),
    }
}

/// Bytes `range` of a local file.
fn read_file(path: &Path, range: Option<Range<u64>>) -> Result<Option<Bytes>, SourceError> {
    let io = |e: std::io::Error| SourceError::Object {
        location: path.display().to_string(),
        message: e.to_string(),
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut buf = Vec::new();
    match range {
        None => file.read_to_end(&mut buf).map_err(io)?,
        Some(r) => {
            file.seek(SeekFrom::Start(r.start)).map_err(io)?;
            file.take(r.end - r.start)
                .read_to_end(&mut buf)
                .map_err(io)?
        }
    };
    Ok(Some(Bytes::from(buf)))
}

/// One GET of `url` (ranged when `range` is set), retried after 5xx answers and transport errors.
fn http_get(
    client: &reqwest::Client,
    whole: &Mutex<HashMap<String, Bytes>>,
    url: &str,
    range: Option<Range<u64>>,
) -> Result<Option<Bytes>, SourceError> {
    let cached = whole.lock().ok().and_then(|w| w.get(url).cloned());
    if let Some(body) = cached {
        return Ok(Some(slice(&body, range)));
    }
    let (client, target, header) = (
        client.clone(),
        url.to_owned(),
        range
            .clone()
            .map(|r| format!("bytes={}-{}", r.start, r.end.saturating_sub(1))),
    );
    let answer = block_http(async move { http_attempts(&client, &target, header).await })?;
    let Some((status, body)) = answer else {
        return Ok(None);
    };
    if status == 200 && range.is_some() {
        info!(
            url,
            bytes = body.len(),
            "the server does not honour range requests: the whole file was read in one GET and is kept for the \
             source's other reads"
        );
        if let Ok(mut w) = whole.lock() {
            w.insert(url.to_owned(), body.clone());
        }
        return Ok(Some(slice(&body, range)));
    }
    Ok(Some(body))
}

/// `range` of `body` (clamped to it).
fn slice(body: &Bytes, range: Option<Range<u64>>) -> Bytes {
    match range {
        None => body.clone(),
        Some(r) => {
            let end = (r.end as usize).min(body.len());
            body.slice((r.start as usize).min(end)..end)
        }
    }
}

/// Runs an HTTP request future on the process's I/O runtime and waits for it from this thread.
fn block_http<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, SourceError>> + Send + 'static,
) -> Result<T, SourceError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    s3c::runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().unwrap_or_else(|_| {
        Err(SourceError::Object {
            location: "HTTP runtime".into(),
            message: "stopped".into(),
        })
    })
}

/// GETs `url` until it succeeds, fails for good or the retries are spent: the status and body, `None` on 404.
async fn http_attempts(
    client: &reqwest::Client,
    url: &str,
    range: Option<String>,
) -> Result<Option<(u16, Bytes)>, SourceError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut request = client.get(url);
        if let Some(r) = &range {
            request = request.header("Range", r);
        }
        let failure = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                if status == 404 {
                    return Ok(None);
                }
                if status == 416 && range.is_some() {
                    // The range starts at the end of the file: no bytes, as a read at the end of a file.
                    return Ok(Some((206, Bytes::new())));
                }
                if status == 200 || status == 206 {
                    match response.bytes().await {
                        Ok(body) => return Ok(Some((status, body))),
                        Err(e) => (true, format!("reading the body: {}", s3c::error_chain(&e))),
                    }
                } else {
                    (status >= 500 || status == 429, format!("HTTP {status}"))
                }
            }
            Err(e) => (true, s3c::error_chain(&e)),
        };
        let (retry, message) = failure;
        if !retry || attempt > HTTP_RETRIES {
            return Err(SourceError::Object {
                location: url.to_owned(),
                message: format!("GET failed with {message} after {attempt} attempt(s)"),
            });
        }
        warn!(url, attempt, error = message, "retrying GET");
        tokio::time::sleep(BACKOFF_BASE.saturating_mul(1 << (attempt - 1))).await;
    }
}

/// Blocks read this long from a [`RangeReader`] on a miss (more when the read asks for more).
const BLOCK: u64 = 64 << 10;
/// Blocks a [`RangeReader`] keeps.
const KEEP_BLOCKS: usize = 8;

/// `Read + Seek` over one object of a [`Location`], by ranged reads of at least [`BLOCK`] bytes, keeping the
/// last few; the first bytes can be overlaid (the TIFF reader points a file's header at another page).
#[derive(Debug)]
pub struct RangeReader<'a> {
    location: &'a Location,
    key: &'a str,
    pos: u64,
    blocks: Vec<(u64, Bytes)>,
    overlay: Vec<u8>,
}

impl<'a> RangeReader<'a> {
    /// A reader of `key` under `location`, at offset 0.
    pub fn new(location: &'a Location, key: &'a str) -> RangeReader<'a> {
        RangeReader {
            location,
            key,
            pos: 0,
            blocks: Vec::new(),
            overlay: Vec::new(),
        }
    }

    /// Reads of bytes `0..overlay.len()` return `overlay` instead of the object's bytes.
    pub fn set_overlay(&mut self, overlay: Vec<u8>) {
        self.overlay = overlay;
    }

    /// Fetches `range` in one read, for the reads that follow.
    ///
    /// # Errors
    /// As [`Location::get_existing`].
    pub fn prefetch(&mut self, range: Range<u64>) -> Result<(), SourceError> {
        if !range.is_empty() && self.cached(range.start, range.end - range.start).is_none() {
            let bytes = self.location.get_existing(self.key, Some(range.clone()))?;
            self.keep(range.start, bytes);
        }
        Ok(())
    }

    /// A block holding `len` bytes from `pos`, or up to the end of the object when it ends sooner.
    fn cached(&self, pos: u64, len: u64) -> Option<(u64, Bytes)> {
        self.blocks
            .iter()
            .find(|(start, b)| {
                let end = start + b.len() as u64;
                *start <= pos && pos < end && (pos + len <= end || b.len() < BLOCK as usize)
            })
            .cloned()
    }

    fn keep(&mut self, start: u64, bytes: Bytes) {
        if self.blocks.len() >= KEEP_BLOCKS {
            self.blocks.remove(0);
        }
        self.blocks.push((start, bytes));
    }
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if (self.pos as usize) < self.overlay.len() {
            let from = &self.overlay[self.pos as usize..];
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            self.pos += n as u64;
            return Ok(n);
        }
        let want = buf.len() as u64;
        let (start, block) = match self.cached(self.pos, want) {
            Some(b) => b,
            None => {
                let range = self.pos..self.pos + want.max(BLOCK);
                let bytes = self
                    .location
                    .get_existing(self.key, Some(range))
                    .map_err(std::io::Error::other)?;
                self.keep(self.pos, bytes.clone());
                (self.pos, bytes)
            }
        };
        let from = block.get((self.pos - start) as usize..).unwrap_or_default();
        let n = from.len().min(buf.len());
        buf[..n].copy_from_slice(&from[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangeReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
            })?,
            SeekFrom::End(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "seek from the end of a remote file",
                ));
            }
        };
        Ok(self.pos)
    }
}
