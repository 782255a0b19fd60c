//! Where a `tiff` or `zarr` source lives (a local path, an HTTP(S) URL or an S3 key) and bounded reads of it and
//! of the files under it (a Zarr hierarchy's keys): every read says how many bytes it may take ([`Part`]), and
//! a longer body, announced or sent, fails naming the location instead of filling memory.
//!
//! HTTP ranges are asked with a `Range` header, and the answer's `Content-Range` must start where the range
//! does. A server that answers `200` with the whole body instead is logged once; a body of at most
//! [`limits::MAX_UNRANGED_BYTES`] is kept (all such bodies together at most that much, the oldest dropped first)
//! and served for the object's further ranges, a longer one is refused naming the URL.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tracing::{info, warn};

use super::{SourceError, limits};
use crate::s3 as s3c;
use crate::s3::objects::Bucket;
use crate::spec::{S3Object, S3Storage};

/// Retries of one HTTP request after a 5xx answer or a transport error.
const HTTP_RETRIES: u32 = 4;
/// Timeout of one HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// Delay before the first HTTP retry; it doubles on each further retry.
const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// Which bytes of a key a read asks for, and so how many it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// All of it, refused when longer than `limit` bytes; `what` names the kind of object for the message
    /// (e.g. `a Zarr metadata document`).
    Whole {
        /// Most bytes accepted.
        limit: u64,
        /// What the object is, for the message.
        what: &'static str,
    },
    /// Bytes `start..end` (fewer at the end of the object); at most [`limits::MAX_OBJECT_BYTES`] of them.
    Range(Range<u64>),
    /// The last `n` bytes (all of it when shorter); `n` at most [`limits::MAX_OBJECT_BYTES`].
    Suffix(u64),
}

impl Part {
    /// Most bytes the answer may hold.
    fn limit(&self) -> u64 {
        match self {
            Part::Whole { limit, .. } => *limit,
            Part::Range(r) => r.end.saturating_sub(r.start),
            Part::Suffix(n) => *n,
        }
    }

    /// The error of a read whose body is longer than its limit.
    fn too_long(&self, location: &str, found: &str) -> SourceError {
        let message = match self {
            Part::Whole { limit, what } => {
                format!("{found} more than {limit} bytes, the limit of {what}")
            }
            Part::Range(r) => format!(
                "{found} more than the {} bytes of the range {}..{} asked for",
                self.limit(),
                r.start,
                r.end
            ),
            Part::Suffix(n) => format!("{found} more than the last {n} bytes asked for"),
        };
        SourceError::Object {
            location: location.to_owned(),
            message,
        }
    }

    /// Refuses a range or suffix longer than [`limits::MAX_OBJECT_BYTES`] before anything is read.
    fn check(&self, location: &str) -> Result<(), SourceError> {
        let n = self.limit();
        if !matches!(self, Part::Whole { .. }) && n > limits::MAX_OBJECT_BYTES {
            return Err(SourceError::Object {
                location: location.to_owned(),
                message: format!(
                    "a read of {n} bytes ({self:?}) is more than the limit of {} bytes per read",
                    limits::MAX_OBJECT_BYTES
                ),
            });
        }
        Ok(())
    }
}

/// Whole bodies of objects whose server refused ranges, by URL, oldest first; together at most
/// [`limits::MAX_UNRANGED_BYTES`].
#[derive(Debug, Default)]
struct Unranged {
    bodies: VecDeque<(String, Bytes)>,
    bytes: u64,
}

impl Unranged {
    fn get(&self, url: &str) -> Option<Bytes> {
        self.bodies
            .iter()
            .find(|(u, _)| u == url)
            .map(|(_, b)| b.clone())
    }

    /// Keeps `body`, dropping the oldest bodies until all fit in the limit.
    fn keep(&mut self, url: &str, body: Bytes) {
        let n = body.len() as u64;
        while self.bytes + n > limits::MAX_UNRANGED_BYTES {
            let Some((_, old)) = self.bodies.pop_front() else {
                break;
            };
            self.bytes -= old.len() as u64;
        }
        self.bytes += n;
        self.bodies.push_back((url.to_owned(), body));
    }
}

/// The root of a source: a file or directory, a URL, or an S3 key or prefix.
#[derive(Debug)]
enum Root {
    Path(PathBuf),
    Url {
        url: String,
        client: reqwest::Client,
        whole: Mutex<Unranged>,
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
                    whole: Mutex::new(Unranged::default()),
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

    /// The bytes `part` of `key` asks for; `None` when the key does not exist (no file, HTTP 404,
    /// `NoSuchKey`).
    ///
    /// # Errors
    /// [`SourceError::Object`] naming the file or URL (after retries for 5xx), or when the body is longer than
    /// the part allows; [`SourceError::S3`] naming the key.
    pub fn get(&self, key: &str, part: Part) -> Result<Option<Bytes>, SourceError> {
        let name = self.name(key);
        part.check(&name)?;
        match &self.root {
            Root::Path(_) => read_file(Path::new(&name), &part),
            Root::Url { client, whole, .. } => http_get(client, whole, &name, part),
            Root::S3 { bucket, .. } => {
                let (bucket, k) = (bucket.clone(), s3_key(&self.root, key));
                Ok(crate::s3::objects::block(async move {
                    match part {
                        Part::Range(r) => bucket.get_range(&k, r.start, r.end).await,
                        Part::Suffix(n) => bucket.get_suffix(&k, n).await,
                        Part::Whole { limit, .. } => bucket.get_limited(&k, limit).await,
                    }
                })?)
            }
        }
    }

    /// [`Location::get`] of a key that must exist.
    ///
    /// # Errors
    /// As [`Location::get`]; [`SourceError::Object`] when the key does not exist.
    pub fn get_existing(&self, key: &str, part: Part) -> Result<Bytes, SourceError> {
        self.get(key, part)?.ok_or_else(|| SourceError::Object {
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

/// The bytes `part` of a local file asks for (read with a bound, so a device or FIFO that never ends fails too).
fn read_file(path: &Path, part: &Part) -> Result<Option<Bytes>, SourceError> {
    let name = path.display().to_string();
    let io = |e: std::io::Error| SourceError::Object {
        location: name.clone(),
        message: e.to_string(),
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    match part {
        Part::Whole { .. } => {}
        Part::Range(r) => {
            file.seek(SeekFrom::Start(r.start)).map_err(io)?;
        }
        Part::Suffix(n) => {
            let len = file.metadata().map_err(io)?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(*n)))
                .map_err(io)?;
        }
    }
    // A range takes its bytes; a whole file one byte more than its limit, to tell a longer one.
    let limit = part.limit();
    let whole = matches!(part, Part::Whole { .. });
    let mut buf = Vec::new();
    file.take(limit.saturating_add(u64::from(whole)))
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > limit {
        return Err(part.too_long(&name, "it holds"));
    }
    Ok(Some(Bytes::from(buf)))
}

/// One GET of `url` for `part`, retried after 5xx answers and transport errors.
fn http_get(
    client: &reqwest::Client,
    whole: &Mutex<Unranged>,
    url: &str,
    part: Part,
) -> Result<Option<Bytes>, SourceError> {
    let ranged = !matches!(part, Part::Whole { .. });
    if ranged && let Some(body) = whole.lock().ok().and_then(|w| w.get(url)) {
        return Ok(Some(slice(&body, &part)));
    }
    let (client, target, asked) = (client.clone(), url.to_owned(), part.clone());
    let answer = block_http(async move { http_attempts(&client, &target, &asked).await })?;
    match answer {
        Answer::Missing => Ok(None),
        Answer::Asked(body) => Ok(Some(body)),
        Answer::Unranged(body) => {
            info!(
                url,
                bytes = body.len(),
                "the server does not honour range requests: the whole file was read in one GET and is kept for \
                 the source's other reads"
            );
            if let Ok(mut w) = whole.lock() {
                w.keep(url, body.clone());
            }
            Ok(Some(slice(&body, &part)))
        }
    }
}

/// The bytes of `body` (a whole object) that `part` asks for (clamped to it).
fn slice(body: &Bytes, part: &Part) -> Bytes {
    let len = body.len() as u64;
    let (start, end) = match part {
        Part::Whole { .. } => (0, len),
        Part::Range(r) => (r.start.min(len), r.end.min(len)),
        Part::Suffix(n) => (len.saturating_sub(*n), len),
    };
    // Both are at most the body's length, which is a usize.
    body.slice(start as usize..end.max(start) as usize)
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

/// What a GET got.
enum Answer {
    /// HTTP 404.
    Missing,
    /// The bytes asked for.
    Asked(Bytes),
    /// The whole object, from a server that ignored the `Range` header.
    Unranged(Bytes),
}

/// Why one attempt failed: `retry` when another attempt may succeed.
struct Failure {
    retry: bool,
    message: String,
}

impl Failure {
    fn once(message: String) -> Failure {
        Failure {
            retry: false,
            message,
        }
    }
}

/// GETs `url` until it succeeds, fails for good or the retries are spent.
async fn http_attempts(
    client: &reqwest::Client,
    url: &str,
    part: &Part,
) -> Result<Answer, SourceError> {
    let range = match part {
        Part::Whole { .. } => None,
        Part::Range(r) if r.end <= r.start => return Ok(Answer::Asked(Bytes::new())),
        Part::Range(r) => Some(format!("bytes={}-{}", r.start, r.end - 1)),
        Part::Suffix(0) => return Ok(Answer::Asked(Bytes::new())),
        Part::Suffix(n) => Some(format!("bytes=-{n}")),
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut request = client.get(url);
        if let Some(r) = &range {
            request = request.header("Range", r);
        }
        let failure = match request.send().await {
            Ok(response) => match answer(response, part).await {
                Ok(a) => return Ok(a),
                Err(f) => f,
            },
            Err(e) => Failure {
                retry: true,
                message: s3c::error_chain(&e),
            },
        };
        if !failure.retry || attempt > HTTP_RETRIES {
            return Err(SourceError::Object {
                location: url.to_owned(),
                message: format!(
                    "GET failed with {} after {attempt} attempt(s)",
                    failure.message
                ),
            });
        }
        warn!(url, attempt, error = failure.message, "retrying GET");
        tokio::time::sleep(BACKOFF_BASE.saturating_mul(1 << (attempt - 1))).await;
    }
}

/// Reads one answer to a GET for `part`: the status, the `Content-Range` of a partial answer, then the body,
/// bounded by what was asked (or by [`limits::MAX_UNRANGED_BYTES`] when the server sends the whole object).
async fn answer(response: reqwest::Response, part: &Part) -> Result<Answer, Failure> {
    let status = response.status().as_u16();
    let ranged = !matches!(part, Part::Whole { .. });
    match status {
        404 => return Ok(Answer::Missing),
        // The range starts at the end of the file: no bytes, as a read at the end of a file.
        416 if ranged => return Ok(Answer::Asked(Bytes::new())),
        200 | 206 => {}
        _ => {
            return Err(Failure {
                retry: status >= 500 || status == 429,
                message: format!("HTTP {status}"),
            });
        }
    }
    if status == 206
        && let Part::Range(r) = part
    {
        check_content_range(&response, r)?;
    }
    let unranged = status == 200 && ranged;
    let (limit, per) = match part {
        _ if unranged => (
            limits::MAX_UNRANGED_BYTES,
            "of a file whose server does not honour Range requests (serve it from one that does, e.g. any \
             static file server or S3, or copy it locally)"
                .to_owned(),
        ),
        Part::Whole { limit, what } => (*limit, format!("of {what}")),
        _ => (part.limit(), "of this read".to_owned()),
    };
    let body = limits::read_body(response, limit, &per)
        .await
        .map_err(|e| match e {
            limits::BodyError::TooLarge(message) => Failure::once(message),
            limits::BodyError::Transport(e) => Failure {
                retry: true,
                message: format!("reading the body: {}", s3c::error_chain(&e)),
            },
        })?;
    Ok(if unranged {
        Answer::Unranged(Bytes::from(body))
    } else {
        Answer::Asked(Bytes::from(body))
    })
}

/// Checks the `Content-Range` of a `206` answer to `Range: bytes=start-(end-1)`: it must start at `start` and
/// end before `end` (a server that sends other bytes would put them in the wrong place).
fn check_content_range(response: &reqwest::Response, r: &Range<u64>) -> Result<(), Failure> {
    let Some(value) = response.headers().get(reqwest::header::CONTENT_RANGE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or_default();
    let bounds = text
        .strip_prefix("bytes ")
        .and_then(|t| t.split('/').next())
        .and_then(|t| t.split_once('-'))
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)));
    match bounds {
        Some((a, b)) if a == r.start && a <= b && b < r.end => Ok(()),
        _ => Err(Failure::once(format!(
            "Content-Range {text:?} in the answer to a request of bytes {}-{}",
            r.start,
            r.end - 1
        ))),
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
            let start = range.start;
            let bytes = self.location.get_existing(self.key, Part::Range(range))?;
            self.keep(start, bytes);
        }
        Ok(())
    }

    /// A block holding `len` bytes from `pos`, or up to the end of the object when it ends sooner.
    fn cached(&self, pos: u64, len: u64) -> Option<(u64, Bytes)> {
        self.blocks
            .iter()
            .find(|(start, b)| {
                let end = start.saturating_add(b.len() as u64);
                *start <= pos
                    && pos < end
                    && (pos.saturating_add(len) <= end || b.len() < BLOCK as usize)
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
        if self.pos < self.overlay.len() as u64 {
            let from = self.overlay.get(self.pos as usize..).unwrap_or_default();
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            self.pos += n as u64;
            return Ok(n);
        }
        // A read may return fewer bytes than asked: one of a huge buffer asks at most the limit of one read.
        let want = (buf.len() as u64).min(limits::MAX_OBJECT_BYTES);
        let (start, block) = match self.cached(self.pos, want) {
            Some(b) => b,
            None => {
                let range = self.pos..self.pos.saturating_add(want.max(BLOCK));
                let bytes = self
                    .location
                    .get_existing(self.key, Part::Range(range))
                    .map_err(std::io::Error::other)?;
                self.keep(self.pos, bytes.clone());
                (self.pos, bytes)
            }
        };
        let from = usize::try_from(self.pos - start)
            .ok()
            .and_then(|at| block.get(at..))
            .unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Serves every request with `head` and `body` on a loopback port; returns the location of its root URL.
    fn serve(head: &'static str, body: &'static [u8]) -> Location {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/f", listener.local_addr().expect("addr"));
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
            }
        });
        Location::of_spec("tiff", None, Some(&url), None, None, Path::new(".")).expect("location")
    }

    fn error(location: &Location, part: Part) -> String {
        location.get("", part).expect_err("refused").to_string()
    }

    #[test]
    fn a_range_answered_from_elsewhere_or_longer_than_asked_is_refused() {
        let moved = serve(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-3/100\r\nContent-Length: 4\r\nConnection: close\r\n\r\n",
            b"abcd",
        );
        let m = error(&moved, Part::Range(10..14));
        assert!(
            m.ends_with(
                "/f: GET failed with Content-Range \"bytes 0-3/100\" in the answer to a request of bytes 10-13 after 1 \
                 attempt(s)"
            ),
            "{m}"
        );
        let long = serve(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 10-13/100\r\nContent-Length: 8\r\nConnection: close\r\n\r\n",
            b"abcdefgh",
        );
        let m = error(&long, Part::Range(10..14));
        assert!(
            m.contains("response body of 8 bytes (Content-Length) exceeds the limit of 4 bytes of this read"),
            "{m}"
        );
        let ok = serve(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 10-13/100\r\nContent-Length: 4\r\nConnection: close\r\n\r\n",
            b"abcd",
        );
        assert_eq!(
            ok.get("", Part::Range(10..14)).expect("read").as_deref(),
            Some(&b"abcd"[..])
        );
    }

    #[test]
    fn reads_past_the_limits_are_refused_before_any_request() {
        // No server: the parts are refused before anything is sent.
        let l = Location::of_spec(
            "zarr",
            None,
            Some("http://127.0.0.1:9/x"),
            None,
            None,
            Path::new("."),
        )
        .expect("location");
        let m = error(&l, Part::Range(0..limits::MAX_OBJECT_BYTES + 1));
        assert_eq!(
            m,
            "http://127.0.0.1:9/x: a read of 1073741825 bytes (Range(0..1073741825)) is more than the limit of \
             1073741824 bytes per read"
        );
        let m = error(&l, Part::Suffix(u64::MAX));
        assert!(
            m.contains("a read of 18446744073709551615 bytes (Suffix("),
            "{m}"
        );
    }

    #[test]
    fn a_local_file_longer_than_its_limit_is_refused_and_ranges_are_clamped() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("f"), b"0123456789").expect("write");
        let l =
            Location::of_spec("zarr", Some("."), None, None, None, dir.path()).expect("location");
        let whole = Part::Whole {
            limit: 9,
            what: "a Zarr metadata document",
        };
        let m = l.get("f", whole).expect_err("too long").to_string();
        assert_eq!(
            m,
            format!(
                "{}/./f: it holds more than 9 bytes, the limit of a Zarr metadata document",
                dir.path().display()
            )
        );
        let get = |p| l.get("f", p).expect("read").expect("exists");
        assert_eq!(&get(Part::Range(8..20))[..], b"89");
        assert_eq!(&get(Part::Range(20..30))[..], b"");
        assert_eq!(&get(Part::Suffix(3))[..], b"789");
        assert_eq!(&get(Part::Suffix(30))[..], b"0123456789");
    }

    #[test]
    fn whole_bodies_of_unranged_servers_are_kept_within_the_limit() {
        let mut u = Unranged::default();
        let half = Bytes::from(vec![0u8; (limits::MAX_UNRANGED_BYTES / 2) as usize]);
        u.keep("a", half.clone());
        u.keep("b", half.clone());
        assert!(u.get("a").is_some() && u.get("b").is_some());
        u.keep("c", Bytes::from_static(b"x"));
        assert!(u.get("a").is_none(), "the oldest is dropped");
        assert!(u.get("b").is_some() && u.get("c").is_some());
        assert_eq!(u.bytes, limits::MAX_UNRANGED_BYTES / 2 + 1);
    }
}
