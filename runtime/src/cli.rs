//! Command-line pieces of `arrayjob`: the flags of `arrayjob worker`, the checks of address and duration
//! flags, and `arrayjob progress`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::worker::WorkerOptions;
use arrayjob_auth::{AuthError, Token, TokenError};

/// Why a command of the runtime could not start or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `ARRAYJOB_TOKEN` is not set.
    #[error("ARRAYJOB_TOKEN is not set: {why}")]
    NoToken {
        /// What needs it.
        why: String,
    },
    /// `ARRAYJOB_TOKEN` is not a valid token.
    #[error("ARRAYJOB_TOKEN: {0}")]
    Token(#[from] TokenError),
    /// The async runtime or the HTTP client could not start.
    #[error("cannot start the HTTP client: {0}")]
    Client(String),
    /// No trusted answer from `url`.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// `url` answered with an error status.
    #[error("{url}: {status}: {message}")]
    Refused {
        /// The URL asked.
        url: String,
        /// The answer's status.
        status: reqwest::StatusCode,
        /// The answer's text.
        message: String,
    },
    /// `url` answered something that is not JSON.
    #[error("{url}: {source}")]
    Answer {
        /// The URL asked.
        url: String,
        /// What failed.
        source: reqwest::Error,
    },
}

/// A flag's value refused, with why (clap names the flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FlagError(String);

impl FlagError {
    /// What is wrong with the value.
    pub fn message(&self) -> &str {
        &self.0
    }
}

/// Flags of a worker process. Every flag has an environment variable, so a pod spec can set them.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The coordinator's URL, e.g. `http://10.1.2.3:7070`.
    #[arg(long, env = "ARRAYJOB_COORDINATOR")]
    pub coordinator: String,
    /// Where this worker's data server listens (port 0: any free port).
    #[arg(long, env = "ARRAYJOB_LISTEN", default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// The `host:port` peers reach this worker at (default: the address it listens on; when that is every
    /// interface, as by default, the address this host reaches the coordinator from, with the port it
    /// listens on).
    #[arg(long, env = "ARRAYJOB_ADVERTISE", value_parser = advertised)]
    pub advertise: Option<String>,
    /// Threads for tasks (default: the cores this process may use).
    #[arg(long, env = "ARRAYJOB_THREADS")]
    pub threads: Option<usize>,
    /// Memory for chunks before they spill to disk, e.g. `4GiB` (default: half of the memory this process
    /// may use: RAM, or its cgroup's limit when lower).
    #[arg(long, env = "ARRAYJOB_MEMORY_LIMIT")]
    pub memory_limit: Option<bytesize::ByteSize>,
    /// Where spill files go (default: the system's temporary directory).
    #[arg(long, env = "ARRAYJOB_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Bytes spilled to local disk before the rest goes to the job's S3 scratch, e.g. `20GiB` (only for jobs
    /// with `spec.storage.s3`; default: no limit).
    #[arg(long, env = "ARRAYJOB_SPILL_DISK_LIMIT")]
    pub spill_disk_limit: Option<bytesize::ByteSize>,
    /// Refuse to join a job with another plan hash.
    #[arg(long, env = "ARRAYJOB_PLAN_HASH")]
    pub expect_plan_hash: Option<String>,
    /// Set by a coordinator for the workers it starts itself: the id it knows this process by.
    #[arg(long, env = "ARRAYJOB_LAUNCH_ID", hide = true)]
    pub launch_id: Option<String>,
}

impl WorkerArgs {
    /// The worker's options, with the job token from `ARRAYJOB_TOKEN`.
    ///
    /// # Errors
    /// When `ARRAYJOB_TOKEN` is not set or not a valid token.
    pub fn into_options(self) -> Result<WorkerOptions, CliError> {
        let token = token_from_env("a worker needs its job's token")?;
        let res = arrayjob_engine::resources::detect();
        Ok(WorkerOptions {
            coordinator: self.coordinator,
            token,
            listen: self.listen,
            advertise: self.advertise,
            threads: self.threads.unwrap_or(res.cores).max(1),
            memory_budget: self
                .memory_limit
                .map_or_else(arrayjob_engine::resources::default_memory_budget, |b| {
                    b.as_u64() as usize
                }),
            spill_dir: self.spill_dir.unwrap_or_else(std::env::temp_dir),
            spill_disk_limit: self.spill_disk_limit.map(|b| b.as_u64()),
            expect_plan_hash: self.expect_plan_hash,
            launch_id: self.launch_id,
            join_timeout: crate::worker::DEFAULT_JOIN_TIMEOUT,
            abort_on_task: std::env::var("ARRAYJOB_FAULT_ABORT_TASK")
                .ok()
                .and_then(|t| t.parse().ok()),
        })
    }
}

/// The job token from `ARRAYJOB_TOKEN`.
///
/// # Errors
/// When it is not set (`why` says what needs it) or not a valid token.
pub fn token_from_env(why: &str) -> Result<Token, CliError> {
    let token = std::env::var("ARRAYJOB_TOKEN").map_err(|_| CliError::NoToken {
        why: why.to_owned(),
    })?;
    Ok(Token::from_text(&token)?)
}

/// `--advertise`: a `host:port` a peer can dial: a host (name, IPv4, or IPv6 in brackets) that is not "every
/// interface" (`0.0.0.0`, `::`) and a port that is not 0.
///
/// # Errors
/// What is wrong with it (clap names the flag).
pub fn advertised(s: &str) -> Result<String, FlagError> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| FlagError(format!("'{s}' is not host:port")))?;
    match port.parse::<u16>() {
        Ok(0) => {
            return Err(FlagError(format!(
                "'{s}': port 0 cannot be dialled; give the port peers reach"
            )));
        }
        Ok(_) => {}
        Err(_) => {
            return Err(FlagError(format!(
                "'{s}': '{port}' is not a port (1-65535)"
            )));
        }
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.is_empty() || bare.contains(char::is_whitespace) || bare.contains('/') {
        return Err(FlagError(format!("'{s}': '{host}' is not a host")));
    }
    if bare.contains(':') && bare == host {
        return Err(FlagError(format!(
            "'{s}': an IPv6 address goes in brackets, e.g. [fd00::1]:7071"
        )));
    }
    if bare
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(FlagError(format!(
            "'{s}' means every interface, which no peer can dial; give this host's address on the job's network"
        )));
    }
    Ok(s.to_owned())
}

/// A duration flag in seconds, checked: a finite number within `[min, max]` (never NaN, infinite or
/// negative, which would make `Duration` panic or mean nothing).
///
/// # Errors
/// What is wrong with it (clap names the flag).
pub fn seconds_within(s: &str, min: f64, max: f64) -> Result<Duration, FlagError> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| FlagError(format!("'{s}' is not a number of seconds")))?;
    if !v.is_finite() || v < min || v > max {
        return Err(FlagError(format!(
            "'{s}' is not a duration from {min} to {max} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Shortest `--worker-timeout`: below the heartbeat (0.5 s) a live worker would be declared lost.
pub const MIN_WORKER_TIMEOUT_SECONDS: f64 = 0.5;
/// Longest `--worker-timeout`: a day (a worker silent longer is gone).
pub const MAX_WORKER_TIMEOUT_SECONDS: f64 = 86_400.0;

/// `--worker-timeout`: seconds within [`MIN_WORKER_TIMEOUT_SECONDS`] and [`MAX_WORKER_TIMEOUT_SECONDS`].
///
/// # Errors
/// What is wrong with it (clap names the flag).
pub fn worker_timeout(s: &str) -> Result<Duration, FlagError> {
    seconds_within(s, MIN_WORKER_TIMEOUT_SECONDS, MAX_WORKER_TIMEOUT_SECONDS)
}

/// Flags of `arrayjob progress`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProgressArgs {
    /// The coordinator's URL, e.g. `http://10.1.2.3:7070`.
    #[arg(env = "ARRAYJOB_COORDINATOR")]
    pub coordinator: String,
}

/// Reads the coordinator's progress snapshot with a request signed with the job token (from
/// `ARRAYJOB_TOKEN`; never sent itself), and returns its JSON once the coordinator proved it holds the token.
///
/// # Errors
/// When the token is missing, the coordinator cannot be reached, does not prove it holds the token, or
/// refuses.
pub fn progress(args: &ProgressArgs) -> Result<serde_json::Value, CliError> {
    let token = token_from_env("it signs the request for the coordinator's progress")?;
    let url = format!("{}/v1/progress", args.coordinator.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Client(e.to_string()))?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| CliError::Client(e.to_string()))?;
        let answer = arrayjob_auth::send(client.get(&url), &token).await?;
        let status = answer.status();
        if !status.is_success() {
            let message = answer.text().await.unwrap_or_default();
            return Err(CliError::Refused {
                url,
                status,
                message,
            });
        }
        answer
            .json()
            .await
            .map_err(|source| CliError::Answer { url, source })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_addresses_must_be_dialable() {
        for good in [
            "10.1.2.3:7071",
            "b.example:7071",
            "[fd00::1]:7071",
            "127.0.0.9:1",
        ] {
            assert_eq!(advertised(good).as_deref(), Ok(good));
        }
        for (bad, why) in [
            ("0.0.0.0:7071", "every interface"),
            ("[::]:7071", "every interface"),
            ("10.1.2.3:0", "port 0"),
            ("10.1.2.3", "not host:port"),
            ("10.1.2.3:http", "not a port"),
            ("10.1.2.3:70000", "not a port"),
            (":7071", "not a host"),
            ("fd00::1:7071", "in brackets"),
            ("a b:7071", "not a host"),
        ] {
            let e = advertised(bad).expect_err(bad).to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn durations_refuse_what_is_not_a_finite_number_in_range() {
        assert_eq!(worker_timeout("3"), Ok(Duration::from_secs(3)));
        assert_eq!(worker_timeout("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(worker_timeout("86400"), Ok(Duration::from_secs(86_400)));
        for bad in [
            "inf", "-inf", "NaN", "nan", "-1", "0", "0.49", "86400.5", "1e300", "3s", "",
        ] {
            let e = worker_timeout(bad).expect_err(bad).to_string();
            assert!(e.contains(&format!("'{bad}'")), "{bad}: {e}");
        }
        assert!(
            worker_timeout("inf")
                .expect_err("inf")
                .message()
                .contains("from 0.5 to 86400 seconds")
        );
    }
}
