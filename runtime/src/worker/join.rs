//! How a worker joins its job: the client to the coordinator, the job's description, the address peers
//! reach it at, the plan it builds itself (and whose hash must match), its registration, and its spill.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arrayjob_auth::{AuthError, Token};
use arrayjob_engine::runner::{self, Prepared};
use arrayjob_engine::s3::objects::S3Location;
use arrayjob_engine::schedule::WorkerId;
use arrayjob_engine::store::FileSpill;

use super::error::{ADVERTISE_HINT, WorkerError};
use crate::protocol::{JobDescription, RegisterRequest, RegisterResponse};

/// The worker's HTTP client side: the coordinator's URL, the token, and a runtime handle to block on from
/// compute threads.
#[derive(Clone)]
pub(super) struct Http {
    pub(super) client: reqwest::Client,
    pub(super) coordinator: String,
    pub(super) token: Token,
    pub(super) rt: tokio::runtime::Handle,
}

impl Http {
    /// Signs and sends a request; the answer comes back once the server proved it holds the job's token.
    pub(super) async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AuthError> {
        arrayjob_auth::send(request, &self.token).await
    }
}

/// How long a worker started from the command line waits for its coordinator to answer at all.
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the coordinator for the job, retrying for up to `wait` while it is not up yet (a worker may start
/// first).
pub(super) async fn fetch_job(http: &Http, wait: Duration) -> Result<JobDescription, WorkerError> {
    let url = format!("{}/v1/job", http.coordinator);
    let deadline = Instant::now() + wait;
    loop {
        match http.send(http.client.get(&url)).await {
            Ok(r) if r.status().is_success() => {
                return r
                    .json()
                    .await
                    .map_err(|source| WorkerError::Answer { url, source });
            }
            Ok(r) => return Err(refused(url, r).await),
            Err(source @ AuthError::Send { .. }) if Instant::now() > deadline => {
                return Err(WorkerError::Unreachable {
                    url,
                    seconds: wait.as_secs_f64(),
                    source,
                });
            }
            Err(AuthError::Send { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(source) => return Err(WorkerError::Coordinator { url, source }),
        }
    }
}

/// The coordinator's refusal of `url`, with its status and text.
async fn refused(url: String, r: reqwest::Response) -> WorkerError {
    let status = r.status();
    let message = r.text().await.unwrap_or_default();
    WorkerError::Refused {
        url,
        status,
        message,
    }
}

/// The address peers reach this worker at: `advertise` when given; else the address it is bound to; else,
/// when it listens on every interface (`0.0.0.0` or `::`, which nobody can dial), the local address of a
/// connection to the coordinator (the interface that routes to the job's network, e.g. a pod's IP) with the
/// bound port.
///
/// # Errors
/// When it listens on every interface and that address cannot be found, naming `--advertise`.
pub async fn advertised_address(
    advertise: Option<&str>,
    bound: SocketAddr,
    coordinator: &str,
) -> Result<String, WorkerError> {
    if let Some(a) = advertise {
        return Ok(a.to_owned());
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound.to_string());
    }
    let bad_url = |reason: String| WorkerError::CoordinatorUrl {
        url: coordinator.to_owned(),
        reason,
    };
    let url =
        reqwest::Url::parse(coordinator).map_err(|e| bad_url(format!("is not a URL ({e})")))?;
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Err(bad_url("has no host and port".into()));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let own = |source| WorkerError::OwnAddress {
        bound,
        coordinator: coordinator.to_owned(),
        source,
    };
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(own)?;
    let local = stream.local_addr().map_err(own)?.ip();
    if local.is_unspecified() {
        return Err(WorkerError::NoOwnAddress { bound });
    }
    let address = SocketAddr::new(local, bound.port()).to_string();
    if local.is_loopback() {
        // Right when every worker runs on this host; peers elsewhere would dial themselves.
        tracing::warn!(
            %address,
            "this worker reaches the coordinator over loopback, so it advertises a loopback address: only \
             workers on this host can fetch from it; {ADVERTISE_HINT} if others run elsewhere"
        );
    }
    Ok(address)
}

/// Builds the plan from the job description, as the coordinator did.
pub(super) fn prepare(desc: &JobDescription) -> Result<Prepared, WorkerError> {
    let m = arrayjob_engine::validate::parse_manifest(&desc.manifest, "job manifest")?;
    let valid = arrayjob_engine::validate::validate(&m.spec).map_err(WorkerError::Invalid)?;
    Ok(runner::prepare(
        m,
        &valid,
        std::path::Path::new(&desc.base_dir),
    )?)
}

/// Registers with the coordinator; its answer is this worker's number in the job.
pub(super) async fn register(http: &Http, req: &RegisterRequest) -> Result<WorkerId, WorkerError> {
    let url = format!("{}/v1/register", http.coordinator);
    let r = match http.send(http.client.post(&url).json(req)).await {
        Ok(r) => r,
        Err(source) => return Err(WorkerError::Coordinator { url, source }),
    };
    if !r.status().is_success() {
        return Err(refused(url, r).await);
    }
    match r.json::<RegisterResponse>().await {
        Ok(answer) => Ok(answer.worker),
        Err(source) => Err(WorkerError::Answer { url, source }),
    }
}

/// The worker's spill: its disk, then (beyond `disk_limit`, when the job has a scratch prefix on S3)
/// `{scratch}spill/w{id}/`.
pub(super) fn spill_backend(
    disk: FileSpill,
    job: &Prepared,
    desc: &JobDescription,
    id: WorkerId,
    disk_limit: Option<u64>,
) -> Result<Box<dyn arrayjob_engine::store::SpillBackend>, WorkerError> {
    let (Some(uri), Some(limit)) = (&desc.scratch, disk_limit) else {
        return Ok(Box::new(disk));
    };
    let location = S3Location::parse("scratch", uri)?;
    let storage = job.manifest.spec.s3_storage();
    let scratch = arrayjob_engine::s3::spill::Scratch {
        bucket: arrayjob_engine::s3::bucket(storage, &location.bucket)?,
        location,
    };
    let mut tier = arrayjob_engine::s3::spill::spill_tier(&scratch, &format!("w{}", id.0), limit);
    // Fault injection for the recovery test of a damaged spilled object.
    tier.damage_first = std::env::var_os("ARRAYJOB_FAULT_DAMAGE_SPILL").is_some();
    Ok(Box::new(arrayjob_engine::s3::spill::TieredSpill::new(
        disk, tier,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_listening_everywhere_advertises_the_address_it_reaches_the_coordinator_from() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // A coordinator on 127.0.0.7: the connection to it leaves from a loopback address peers can dial.
        let coordinator = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.7:0"))
            .expect("listen");
        let url = format!("http://{}", coordinator.local_addr().expect("address"));
        let everywhere: SocketAddr = "0.0.0.0:7171".parse().expect("address");
        let a = rt
            .block_on(advertised_address(None, everywhere, &url))
            .expect("derived");
        assert_eq!(a, "127.0.0.1:7171");
        let given = rt
            .block_on(advertised_address(Some("b.example:7071"), everywhere, &url))
            .expect("given");
        assert_eq!(given, "b.example:7071");
        let bound: SocketAddr = "127.0.0.9:7171".parse().expect("address");
        let own = rt
            .block_on(advertised_address(None, bound, &url))
            .expect("bound");
        assert_eq!(own, "127.0.0.9:7171");
        // Nobody at the coordinator's address: no guess, the flag is named.
        drop(coordinator);
        let err = rt
            .block_on(advertised_address(None, everywhere, &url))
            .expect_err("unreachable");
        let text = err.to_string();
        assert!(
            text.contains("--advertise") && text.contains("0.0.0.0:7171"),
            "{text}"
        );
    }
}
