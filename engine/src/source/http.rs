//! The `http` source: one image per URL, fetched with bounded concurrency and retries.
//!
//! The source owns a one-thread tokio runtime that only moves bytes; [`SliceSource::read`] blocks on it from the
//! calling thread (an executor thread, never one inside another tokio runtime) and decodes each slice there as
//! soon as its body is in, so decoding counts against the executor's threads and overlaps the downloads still
//! in flight.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::decode::{decode_into, probe};
use super::stack::SliceStack;
use super::template::IndexTemplate;
use super::{Declared, InfoCache, SliceInfo, SliceSource, SourceError, check_range, limits};
use crate::array::Chunk;
use crate::s3::error_chain;
use crate::spec::HttpSource;

/// Requests in flight at once when the spec does not say.
pub use crate::spec::DEFAULT_HTTP_CONCURRENCY as DEFAULT_CONCURRENCY;
/// Retries of one URL when the spec does not say.
pub const DEFAULT_RETRIES: u32 = 4;
/// Timeout of one request when the spec does not say.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 30;
/// Delay before the first retry; it doubles on each further retry.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest delay between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Slices fetched over HTTP(S) from `urlTemplate` for indices `[start, stop)`.
#[derive(Debug)]
pub struct HttpSliceSource {
    template: IndexTemplate,
    start: u64,
    len: usize,
    retries: u32,
    client: reqwest::Client,
    /// Shared by every concurrent `read`, so `concurrency` bounds the whole source.
    permits: Arc<Semaphore>,
    /// Always `Some` until dropped (taken in `Drop` to shut it down without blocking).
    runtime: Option<Runtime>,
    info: InfoCache,
}

/// Why one attempt failed.
enum Failure {
    /// The server answered with a non-success status.
    Status(u16),
    /// No answer: refused, reset, closed, timed out...; `retry` is false for errors a retry cannot fix.
    Transport { message: String, retry: bool },
}

impl HttpSliceSource {
    /// Checks the spec and builds the HTTP client and its runtime. `declared` is what the spec says every slice
    /// is.
    ///
    /// # Errors
    /// [`SourceError::Config`] naming the field when the template is not a valid http(s) URL template (see
    /// [`IndexTemplate::parse_url`]), the range is empty or too long, `concurrency` is out of range or
    /// `timeoutSeconds` is 0.
    pub fn new(spec: &HttpSource, declared: Declared) -> Result<HttpSliceSource, SourceError> {
        let config = |field: &str, message: String| SourceError::Config {
            field: format!("spec.source.http.{field}"),
            message,
        };
        let start = spec.start.unwrap_or(0);
        let template =
            IndexTemplate::parse_url(&spec.url_template, "spec.source.http.urlTemplate", start)?;
        let len = limits::slice_count("spec.source.http", start, spec.stop)?;
        let concurrency = spec.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        limits::concurrency("spec.source.http.concurrency", concurrency)?;
        let timeout = spec.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
        if timeout == 0 {
            return Err(config("timeoutSeconds", "must be at least 1".into()));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(timeout))
            .connect_timeout(Duration::from_secs(timeout.min(10)))
            .build()
            .map_err(|e| {
                config(
                    "urlTemplate",
                    format!("cannot build the HTTP client: {}", error_chain(&e)),
                )
            })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("arrayjob-http")
            .enable_all()
            .build()
            .map_err(|e| config("urlTemplate", format!("cannot start the HTTP runtime: {e}")))?;
        Ok(HttpSliceSource {
            template,
            start,
            len,
            retries: spec.retries.unwrap_or(DEFAULT_RETRIES),
            client,
            permits: Arc::new(Semaphore::new(concurrency)),
            runtime: Some(runtime),
            info: InfoCache::new(declared),
        })
    }

    /// URL of slice `index`.
    pub fn url(&self, index: usize) -> String {
        self.template.render(self.start + index as u64)
    }

    /// The runtime, or the error of a source being dropped.
    fn runtime(&self, index: usize) -> Result<&Runtime, SourceError> {
        self.runtime
            .as_ref()
            .ok_or_else(|| SourceError::HttpTransport {
                index,
                url: self.url(index),
                attempts: 0,
                message: "the source is shutting down".into(),
            })
    }

    /// Fetches slices `start..end` (all requested at once, within the concurrency bound) and hands each body to
    /// `take(index, url, body)` on the calling thread as soon as it is in; stops at the first slice that fails
    /// for good, or the first error of `take`.
    fn fetch_each(
        &self,
        start: usize,
        end: usize,
        mut take: impl FnMut(usize, &str, &[u8]) -> Result<(), SourceError>,
    ) -> Result<(), SourceError> {
        let runtime = self.runtime(start)?;
        let mut tasks = JoinSet::new();
        for index in start..end {
            let url = self.url(index);
            let fetch = fetch(
                self.client.clone(),
                Arc::clone(&self.permits),
                url.clone(),
                index,
                self.retries,
            );
            tasks.spawn_on(async move { (index, url, fetch.await) }, runtime.handle());
        }
        runtime.block_on(async {
            while let Some(joined) = tasks.join_next().await {
                let (index, url, body) = joined.map_err(|e| SourceError::HttpTransport {
                    index: start,
                    url: self.url(start),
                    attempts: 0,
                    message: format!("fetch task failed: {e}"),
                })?;
                // Returning drops `tasks`, which aborts the fetches still running.
                take(index, &url, &body?)?;
            }
            Ok(())
        })
    }
}

/// GETs `url`, retrying 5xx answers (and 429) and transport failures with exponential backoff.
async fn fetch(
    client: reqwest::Client,
    permits: Arc<Semaphore>,
    url: String,
    index: usize,
    retries: u32,
) -> Result<Vec<u8>, SourceError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = {
            let _permit = permits
                .acquire()
                .await
                .map_err(|e| SourceError::HttpTransport {
                    index,
                    url: url.clone(),
                    attempts,
                    message: e.to_string(),
                })?;
            get(&client, &url).await
        };
        let retry = match &outcome {
            Ok(body) => {
                debug!(index, url, attempts, bytes = body.len(), "fetched slice");
                false
            }
            Err(Failure::Status(status)) => *status >= 500 || *status == 429,
            Err(Failure::Transport { retry, .. }) => *retry,
        };
        if retry && attempts <= retries {
            let delay = BACKOFF_BASE
                .saturating_mul(1 << (attempts - 1).min(16))
                .min(BACKOFF_MAX);
            let why = match &outcome {
                Err(Failure::Status(status)) => format!("HTTP {status}"),
                Err(Failure::Transport { message, .. }) => message.clone(),
                Ok(_) => String::new(),
            };
            warn!(
                index,
                url,
                attempts,
                retries,
                delay_ms = delay.as_millis() as u64,
                error = why,
                "retrying slice fetch"
            );
            tokio::time::sleep(delay).await;
            continue;
        }
        return outcome.map_err(|failure| match failure {
            Failure::Status(status) => SourceError::HttpStatus {
                index,
                url,
                status,
                attempts,
            },
            Failure::Transport { message, .. } => SourceError::HttpTransport {
                index,
                url,
                attempts,
                message,
            },
        });
    }
}

/// One attempt: GET `url` and read the whole body (at most [`limits::MAX_SLICE_BYTES`]).
async fn get(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, Failure> {
    let transport = |e: reqwest::Error| Failure::Transport {
        retry: !e.is_builder(),
        message: error_chain(&e.without_url()),
    };
    let response = client.get(url).send().await.map_err(transport)?;
    let status = response.status();
    if !status.is_success() {
        return Err(Failure::Status(status.as_u16()));
    }
    // Bounded, so a huge or endless body fails instead of exhausting memory (retrying would not help).
    limits::read_body(response, limits::MAX_SLICE_BYTES, "per slice")
        .await
        .map_err(|e| match e {
            limits::BodyError::TooLarge(message) => Failure::Transport {
                message,
                retry: false,
            },
            limits::BodyError::Transport(e) => transport(e),
        })
}

impl Drop for HttpSliceSource {
    fn drop(&mut self) {
        // A runtime dropped from async code panics; shutting it down in the background never does.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl SliceSource for HttpSliceSource {
    fn len(&self) -> usize {
        self.len
    }

    fn slice_info(&self) -> Result<SliceInfo, SourceError> {
        self.info.get_or_try(|| {
            let mut info = None;
            self.fetch_each(0, 1, |index, url, body| {
                info = Some((probe(body, index, url)?, url.to_owned()));
                Ok(())
            })?;
            info.ok_or_else(|| SourceError::HttpTransport {
                index: 0,
                url: self.url(0),
                attempts: 0,
                message: "no answer".into(),
            })
        })
    }

    fn read(&self, start: usize, end: usize) -> Result<Chunk, SourceError> {
        check_range(self, start, end)?;
        let info = self.slice_info()?;
        let basis = self.info.declared.basis();
        let mut stack = SliceStack::new(start, end, info)?;
        self.fetch_each(start, end, |index, url, body| {
            decode_into(body, index, url, info, basis, stack.slot(index))
        })?;
        Ok(stack.finish())
    }

    fn describe(&self) -> String {
        format!(
            "http {} [{}, {})",
            self.template,
            self.start,
            self.start + self.len as u64
        )
    }
}
