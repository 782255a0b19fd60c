//! S3 connections: settings from `spec.storage.s3` and the AWS default credential chain, clients with the SDK's
//! retry and timeout configuration, one tokio runtime for the whole process, and errors that name the
//! operation, the bucket and the key.
//!
//! Retries are the SDK's (standard mode: exponential backoff with jitter). It retries HTTP 500, 502, 503 and
//! 504, the throttling codes (`SlowDown`, `Throttling`, ...), `RequestTimeout`, attempt timeouts and
//! connection failures; it never retries 403 or 404.

use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use tokio::runtime::Runtime;

use arrayjob_spec::spec::S3Storage;

pub mod objects;
pub mod scratch;

// The spec's S3 defaults and name checks live with the spec; re-exported at their old paths.
pub use arrayjob_spec::s3::{
    DEFAULT_RETRIES, DEFAULT_TIMEOUT_SECONDS, MAX_RETRIES, check_bucket, check_storage,
};
/// Delay before the first retry (the SDK doubles it on each further retry, with jitter).
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest delay between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Longest time to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Region signed for when none is configured but an endpoint is (S3-compatible servers accept any).
const FALLBACK_REGION: &str = "us-east-1";

/// Where the credentials come from.
///
/// The operator resolves a Kubernetes Secret reference into [`S3Credentials::Static`].
#[derive(Clone, Default, PartialEq, Eq)]
pub enum S3Credentials {
    /// The AWS default chain: environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`), shared profile files (`AWS_PROFILE`), web identity token (IAM roles for service
    /// accounts), ECS container and EC2 instance metadata.
    #[default]
    DefaultChain,
    /// An access key and its secret given by the caller (what the operator reads from a Kubernetes Secret),
    /// with the session token of temporary credentials (STS).
    Static {
        /// Access key id.
        access_key: String,
        /// Secret access key.
        secret_key: String,
        /// `AWS_SESSION_TOKEN` of temporary credentials; `None` for long-lived keys.
        session_token: Option<String>,
    },
}

/// The secret never appears in logs or error messages.
impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            S3Credentials::DefaultChain => f.write_str("DefaultChain"),
            S3Credentials::Static {
                access_key,
                session_token,
                ..
            } => f
                .debug_struct("Static")
                .field("access_key", access_key)
                .field("secret_key", &"<redacted>")
                .field(
                    "session_token",
                    &session_token.as_ref().map(|_| "<redacted>"),
                )
                .finish(),
        }
    }
}

/// How to reach S3: from `spec.storage.s3`, anything unset taken from the environment (`AWS_REGION`,
/// `AWS_ENDPOINT_URL`, profile files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// Region to sign for.
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible server.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`).
    pub force_path_style: bool,
    /// Credentials.
    pub credentials: S3Credentials,
}

impl S3Settings {
    /// The settings of `spec.storage.s3`, or the environment's alone when it is not set.
    pub fn from_spec(storage: Option<&S3Storage>) -> S3Settings {
        S3Settings {
            region: storage.and_then(|s| s.region.clone()),
            endpoint: storage.and_then(|s| s.endpoint.clone()),
            force_path_style: storage.and_then(|s| s.force_path_style).unwrap_or(false),
            credentials: S3Credentials::DefaultChain,
        }
    }
}

/// How long a request that keeps failing for a transient reason is tried again when the spec does not say.
pub const DEFAULT_OUTAGE_SECONDS: u64 = 120;
/// First wait between two rounds of attempts during an outage (doubling up to [`OUTAGE_BACKOFF_MAX`]).
const OUTAGE_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between two rounds of attempts during an outage.
const OUTAGE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Retries and timeout of the requests of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPolicy {
    /// Retries after the first attempt (the SDK's, quick).
    pub retries: u32,
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// How long after its first failure a request that keeps failing for a transient reason (no answer,
    /// connection refused or reset, 5xx, throttling) is tried again, in further rounds of `retries + 1`
    /// attempts, before the job fails: what a job outlasts of an S3 outage.
    pub outage: Duration,
}

impl Default for RequestPolicy {
    fn default() -> Self {
        RequestPolicy {
            retries: DEFAULT_RETRIES,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECONDS),
            outage: Duration::from_secs(DEFAULT_OUTAGE_SECONDS),
        }
    }
}

impl RequestPolicy {
    /// The default policy with the outage budget of `storage` (`outageSeconds`).
    pub fn of_storage(storage: Option<&S3Storage>) -> RequestPolicy {
        RequestPolicy {
            outage: outage_of(storage),
            ..RequestPolicy::default()
        }
    }
}

/// The outage budget of `storage` (`outageSeconds`), or the default.
pub fn outage_of(storage: Option<&S3Storage>) -> Duration {
    Duration::from_secs(
        storage
            .and_then(|s| s.outage_seconds)
            .unwrap_or(DEFAULT_OUTAGE_SECONDS),
    )
}

/// Whether a failure may go away by itself: no answer, a connection refused or reset, HTTP 5xx or 429, a
/// throttling code.
pub fn transient<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            status >= 500
                || status == 429
                || matches!(
                    s.err().code(),
                    Some("SlowDown" | "Throttling" | "ThrottlingException" | "RequestTimeout")
                )
        }
        _ => false,
    }
}

/// Sends a request (`attempt` makes and sends it, the SDK retrying quickly) and, while it fails for a
/// [`transient`] reason, sends it again after 0.5 s, 1 s, 2 s... (5 s at most) until `policy.outage` has passed
/// since the first failure: a server restarting or a network cut of that long is outlasted. The last answer is
/// returned.
pub async fn outlast<T, E, F, Fut>(
    policy: RequestPolicy,
    what: &str,
    mut attempt: F,
) -> Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>>,
{
    let mut first_failure: Option<std::time::Instant> = None;
    let mut wait = OUTAGE_BACKOFF;
    loop {
        let e = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let since = *first_failure.get_or_insert_with(std::time::Instant::now);
        if !transient(&e) || since.elapsed() + wait > policy.outage {
            return Err(e);
        }
        tracing::warn!(
            request = what,
            error = %error_chain(&e),
            retry_in_s = wait.as_secs_f64(),
            "S3 unavailable; trying again"
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(OUTAGE_BACKOFF_MAX);
    }
}

/// What went wrong talking to S3.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The configuration cannot work (no region, bad endpoint...).
    #[error("{field}: {message}")]
    Config {
        /// Spec field path, e.g. `spec.storage.s3.region`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A request failed for good (after the SDK's retries where they apply).
    #[error("{}{operation} {location} failed: {message}", index.map(|i| format!("slice {i}: ")).unwrap_or_default())]
    Request {
        /// Slice index, when the request was for one slice.
        index: Option<usize>,
        /// S3 operation, e.g. `GetObject`.
        operation: &'static str,
        /// `s3://bucket` or `s3://bucket/key`.
        location: String,
        /// What the answer means (`no such key (HTTP 404 NoSuchKey)`, ...).
        message: String,
    },
}

/// A spec check's problem ([`arrayjob_spec::ConfigError`]) is an S3 configuration error, with the same text.
impl From<arrayjob_spec::ConfigError> for S3Error {
    fn from(e: arrayjob_spec::ConfigError) -> S3Error {
        S3Error::Config {
            field: e.field,
            message: e.message,
        }
    }
}

impl S3Error {
    /// The failure of `operation` on `location`.
    pub fn request(
        index: Option<usize>,
        operation: &'static str,
        location: &str,
        message: String,
    ) -> S3Error {
        S3Error::Request {
            index,
            operation,
            location: location.to_owned(),
            message,
        }
    }
}

/// The runtime that moves S3 bytes for the whole process (one worker thread; callers decode on their own
/// threads). Never dropped, so it can never be dropped from async code.
///
/// # Errors
/// When the runtime cannot be started.
pub fn runtime() -> Result<&'static Runtime, S3Error> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("arrayjob-s3")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| S3Error::Config {
            field: "spec.storage.s3".into(),
            message: format!("cannot start the S3 runtime: {e}"),
        })
}

/// Loaded configuration (region, endpoint, credential provider) from which clients are made.
#[derive(Debug, Clone)]
pub struct S3Connection {
    sdk: aws_config::SdkConfig,
    force_path_style: bool,
}

impl S3Connection {
    /// Loads the configuration: `settings`, then the environment and profile files. Credentials are resolved
    /// by the first request.
    ///
    /// # Errors
    /// [`S3Error::Config`] when no region is configured and no endpoint is set (AWS S3 needs the region).
    pub fn connect(settings: &S3Settings) -> Result<S3Connection, S3Error> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let S3Credentials::Static {
            access_key,
            secret_key,
            session_token,
        } = &settings.credentials
        {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                access_key,
                secret_key,
                session_token.clone(),
                None,
                "arrayjob-static",
            ));
        }
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let mut sdk = runtime()?.block_on(loader.load());
        if sdk.region().is_none() {
            if sdk.endpoint_url().is_none() {
                return Err(S3Error::Config {
                    field: "spec.storage.s3.region".into(),
                    message:
                        "no region configured: set it here, or AWS_REGION, or a profile's region"
                            .into(),
                });
            }
            sdk = sdk
                .into_builder()
                .region(Region::new(FALLBACK_REGION))
                .build();
        }
        Ok(S3Connection {
            sdk,
            force_path_style: settings.force_path_style,
        })
    }

    /// A client whose requests follow `policy`.
    pub fn client(&self, policy: RequestPolicy) -> aws_sdk_s3::Client {
        let retry = RetryConfig::standard()
            .with_max_attempts(policy.retries.saturating_add(1))
            .with_initial_backoff(BACKOFF_BASE)
            .with_max_backoff(BACKOFF_MAX);
        let timeout = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(policy.timeout))
            .operation_attempt_timeout(policy.timeout)
            .build();
        let config = aws_sdk_s3::config::Builder::from(&self.sdk)
            .force_path_style(self.force_path_style)
            .retry_config(retry)
            .timeout_config(timeout)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

/// A [`objects::Bucket`] named `name` with the connection settings and part size of `storage` (or the
/// environment's when it is not set), default request policy.
///
/// # Errors
/// As [`S3Connection::connect`].
pub fn bucket(storage: Option<&S3Storage>, name: &str) -> Result<objects::Bucket, S3Error> {
    let conn = S3Connection::connect(&S3Settings::from_spec(storage))?;
    let part = storage
        .and_then(|s| s.part_size_mib)
        .map_or(objects::DEFAULT_PART_BYTES, |m| m as usize * (1 << 20));
    Ok(objects::Bucket::new(
        &conn,
        name,
        RequestPolicy::of_storage(storage),
        part,
    ))
}

/// Checks that `bucket` exists and the credentials may list it, with one ListObjectsV2 of at most one key
/// (whose error answers, unlike HeadBucket's, say why: `NoSuchBucket`, `SignatureDoesNotMatch`...).
///
/// # Errors
/// [`S3Error::Request`] naming `ListObjectsV2` and the bucket.
pub async fn probe_bucket(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    policy: RequestPolicy,
) -> Result<(), S3Error> {
    outlast(policy, bucket, || {
        client.list_objects_v2().bucket(bucket).max_keys(1).send()
    })
    .await
    .map(|_| ())
    .map_err(|e| {
        S3Error::request(
            None,
            "ListObjectsV2",
            &format!("s3://{bucket}"),
            explain(&e, Missing::Bucket, policy),
        )
    })
}

/// What a bare 404 (`NotFound`: the answer to a HEAD request has no body, hence no precise code) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The bucket does not exist.
    Bucket,
    /// The key does not exist.
    Key,
}

/// What the failure `e` of a request means, for a message: the error code and HTTP status when S3 answered,
/// the transport error otherwise.
pub fn explain<E>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    missing: Missing,
    policy: RequestPolicy,
) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let retried = format!("still failing after {} attempt(s)", policy.retries + 1);
    let SdkError::ServiceError(service) = e else {
        return match e {
            SdkError::TimeoutError(_) => format!(
                "no answer within {} s, {retried}",
                policy.timeout.as_secs_f64()
            ),
            SdkError::DispatchFailure(_) => format!("{}, {retried}", error_chain(e)),
            _ => error_chain(e),
        };
    };
    let status = service.raw().status().as_u16();
    let code = service.err().code();
    let meaning = match (code, status) {
        (Some("NoSuchKey"), _) => "no such key".to_owned(),
        (Some("NoSuchBucket"), _) => "no such bucket".to_owned(),
        (Some("SignatureDoesNotMatch"), _) => {
            "the request signature was refused: wrong secret access key".to_owned()
        }
        (Some("InvalidAccessKeyId"), _) => "unknown access key id".to_owned(),
        (Some("AccessDenied"), _) => "access denied".to_owned(),
        (Some("PermanentRedirect" | "AuthorizationHeaderMalformed"), _) | (None, 301) => {
            "the bucket is in another region: set spec.storage.s3.region".to_owned()
        }
        (Some("NotFound"), _) | (None, 404) => match missing {
            Missing::Bucket => "no such bucket".to_owned(),
            Missing::Key => "no such key".to_owned(),
        },
        (None, 403) => "access denied: wrong credentials, or no permission".to_owned(),
        (_, 500..) => format!(
            "{}, {retried}",
            service.err().message().unwrap_or("server error")
        ),
        _ => service
            .err()
            .message()
            .unwrap_or("unexpected answer")
            .to_owned(),
    };
    match code {
        Some(code) => format!("{meaning} (HTTP {status} {code})"),
        None => format!("{meaning} (HTTP {status})"),
    }
}

/// An error and its causes, `: `-separated: the SDK's own message is only `dispatch failure`, reqwest's hides
/// the cause ("connection reset"). The `http` source uses it too.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use aws_sdk_s3::error::{ErrorMetadata, SdkError};
    use aws_sdk_s3::operation::get_object::GetObjectError;

    use super::{RequestPolicy, outlast, transient};

    type Failure = SdkError<GetObjectError, aws_sdk_s3::config::http::HttpResponse>;

    /// An S3 error answer: HTTP `status` with error `code`.
    fn answer(status: u16, code: &str) -> Failure {
        let raw = aws_sdk_s3::config::http::HttpResponse::new(
            status.try_into().expect("status"),
            aws_sdk_s3::primitives::SdkBody::empty(),
        );
        SdkError::service_error(
            GetObjectError::generic(ErrorMetadata::builder().code(code).build()),
            raw,
        )
    }

    fn policy(outage_ms: u64) -> RequestPolicy {
        RequestPolicy {
            outage: Duration::from_millis(outage_ms),
            ..RequestPolicy::default()
        }
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn what_may_go_away_by_itself_is_transient() {
        assert!(transient(&answer(503, "SlowDown")));
        assert!(transient(&answer(500, "InternalError")));
        assert!(transient(&answer(429, "TooManyRequests")));
        assert!(transient(&answer(400, "RequestTimeout")));
        assert!(transient(&Failure::timeout_error("no answer")));
        assert!(!transient(&answer(403, "AccessDenied")));
        assert!(!transient(&answer(404, "NoSuchKey")));
        assert!(!transient(&answer(412, "PreconditionFailed")));
        assert!(!transient(&Failure::construction_failure("bad request")));
    }

    #[test]
    fn an_outage_shorter_than_the_budget_is_outlasted() {
        let calls = AtomicU32::new(0);
        let got = block(outlast(policy(10_000), "k", || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(answer(503, "SlowDown"))
                } else {
                    Ok(n)
                }
            }
        }));
        assert_eq!(got.expect("outlasted"), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_final_answer_is_not_retried_and_a_long_outage_gives_up_within_its_budget() {
        let calls = AtomicU32::new(0);
        let got: Result<(), _> = block(outlast(policy(10_000), "k", || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(answer(403, "AccessDenied")) }
        }));
        assert!(got.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "403 was retried");

        let (calls, t0) = (AtomicU32::new(0), Instant::now());
        let got: Result<(), _> = block(outlast(policy(1_200), "k", || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(answer(500, "InternalError")) }
        }));
        assert!(got.is_err());
        // Waits of 0.5 s then 1 s: the second would end past the 1.2 s budget, so two attempts in 0.5 s.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let spent = t0.elapsed();
        assert!(
            spent >= Duration::from_millis(500) && spent < Duration::from_millis(1_200),
            "{spent:?}"
        );
    }
}
