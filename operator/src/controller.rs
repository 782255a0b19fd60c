//! The reconciler: level-triggered, idempotent. Each pass reads the ArrayJob and its pods, builds the desired
//! objects ([`crate::desired`]), applies what is missing (server-side apply, field manager
//! `arrayjob-operator`), replaces lost workers, reads the coordinator's progress snapshot and writes the
//! status (coalesced). Deleting an ArrayJob runs the finalizer: its pods go, its S3 scratch goes (the engine's
//! own cleanup), its outputs stay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::cleanup::{self, AfterFailure};
use crate::desired::{self, JOB_LABEL, ROLE_LABEL, Settings, role};
use crate::events;
use crate::metrics::Metrics;
use crate::progress::{self, Progress, ProgressError};
use crate::status::{self, Observed};
use crate::v1alpha1::{ArrayJob, ArrayJobStatus};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "arrayjob-operator";
/// The finalizer that removes a job's pods and S3 scratch.
pub const FINALIZER: &str = "arrayjob.dev/cleanup";
/// How often a running job is looked at (progress, lost pods).
const RUNNING_PERIOD: Duration = Duration::from_secs(2);
/// A running job's status is written at most this often (transitions are written at once).
const STATUS_PERIOD: Duration = Duration::from_secs(3);

/// What the reconciler shares.
#[allow(missing_debug_implementations)] // the kube client has no useful Debug
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The operator's settings.
    pub settings: Settings,
    /// Client for the coordinators' progress endpoints.
    pub http: reqwest::Client,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// When each job's status was last written.
    written: Mutex<HashMap<String, Instant>>,
    /// Who publishes the jobs' Events.
    reporter: Reporter,
}

impl Context {
    /// A context for `client` with `settings`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Context> {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Ok(Context {
            reporter,
            client,
            settings,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(progress::READ_TIMEOUT)
                .build()?,
            metrics,
            written: Mutex::new(HashMap::new()),
        })
    }
}

/// Reconcile failures (retried with back-off; an invalid spec is not one: it fails the job).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{0}")]
    Kube(#[from] kube::Error),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// A deleted job's cleanup waits for its back-off (a pass woken early by a watch event): not a failure.
    #[error("the S3 scratch cleanup waits {} s for its back-off", after.as_secs())]
    CleanupWaiting {
        /// What is left of the back-off.
        after: Duration,
    },
    /// Cleaning up the job's S3 scratch failed; tried again after `after` (the finalizer's back-off).
    #[error("S3 scratch cleanup: {message}; trying again in {} s", after.as_secs())]
    CleanupRetry {
        /// What failed.
        message: String,
        /// The back-off.
        after: Duration,
    },
    /// Something else (a serialisation bug).
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// A short label for the `reconcile_errors` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::CleanupRetry { .. } | Error::CleanupWaiting { .. } => "cleanup",
            Error::Other(_) => "other",
        }
    }
}

/// Runs the controller until SIGTERM/Ctrl-C: ArrayJobs in `namespace` (all when `None`) and the pods they own.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let (jobs, pods): (Api<ArrayJob>, Api<Pod>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=arrayjob-operator");
    Controller::new(jobs, watcher::Config::default())
        .owns(pods, owned)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
}

fn error_policy(job: Arc<ArrayJob>, e: &Error, ctx: Arc<Context>) -> Action {
    if let Error::CleanupWaiting { after } = e {
        tracing::debug!(job = %job.name_any(), "{e}");
        return Action::requeue(*after);
    }
    tracing::warn!(job = %job.name_any(), error = %e, "reconcile failed; retrying");
    ctx.metrics.reconcile_error(e.kind());
    // The finalizer's own back-off, else a short one. A `Finalizer` error wraps the cleanup's: its back-off
    // is in the status, and the next pass waits for it (see `cleanup`).
    match e {
        Error::CleanupRetry { after, .. } => Action::requeue(*after),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

async fn reconcile(job: Arc<ArrayJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled();
    let ns = job.namespace().unwrap_or_default();
    let api: Api<ArrayJob> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, job, |event| async {
        match event {
            Finalizer::Apply(job) => apply(&job, &ctx).await,
            Finalizer::Cleanup(job) => cleanup(&job, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::CleanupFailed(
            inner @ (Error::CleanupRetry { .. } | Error::CleanupWaiting { .. }),
        ) => inner,
        e => Error::Finalizer(e.to_string()),
    })
}

/// One pass over a live job.
async fn apply(job: &ArrayJob, ctx: &Context) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    // The status as last written, not the watch cache's copy (which may not have our last write yet: its
    // counts would go back).
    let fresh = Api::<ArrayJob>::namespaced(ctx.client.clone(), &ns)
        .get_status(&job.name_any())
        .await?;
    let current = fresh.status.unwrap_or_default();
    if status::is_terminal(&current) {
        delete_pods(ctx, &ns, job, "worker").await?;
        return Ok(Action::await_change());
    }
    if let Err(problem) = check(job) {
        // Not retried: the spec must change first.
        let next = status::invalid(job, &current, &problem);
        write_status(ctx, job, &current, next, true).await?;
        return Ok(Action::await_change());
    }
    // The Secret's labels are read when the spec is new or changed, or the job has not started: not on every
    // pass of a running job (the pure checks are).
    let recheck = current.observed_generation != job.metadata.generation
        || matches!(current.phase.as_deref(), None | Some("Pending"));
    match admit(ctx, &ns, job, recheck).await? {
        Admission::Allowed => {}
        Admission::Refused(problem) => {
            let next = status::violates_policy(job, &current, &problem);
            write_status(ctx, job, &current, next, true).await?;
            return Ok(Action::await_change());
        }
        Admission::Waiting(reason, message) => {
            let next = status::waiting(
                job,
                &current,
                reason,
                &message,
                k8s_openapi::jiff::Timestamp::now(),
            );
            write_status(ctx, job, &current, next, true).await?;
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
    }
    let token = ensure_token(ctx, &ns, job).await?;
    apply_objects(ctx, &ns, job).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mine = pods
        .list(&ListParams::default().labels(&format!("{JOB_LABEL}={}", desired::key(job))))
        .await?
        .items;
    let created = replace_workers(ctx, &ns, job, &current, &mine).await?;
    let (mut progress, mut unreadable) = read_progress(ctx, &ns, job, &token).await;
    if progress.is_none() && coordinator_succeeded(&mine) {
        // Its last stages' times and counts, also when it ended before its progress was ever read (a short
        // job, or this operator just started).
        (progress, unreadable) = read_summary(ctx, &ns, job).await;
    }
    let observed = Observed {
        pods: mine,
        created,
        progress,
        unreadable,
        now: k8s_openapi::jiff::Timestamp::now(),
    };
    let next = status::observe(job, &current, &observed);
    // A phase change, or pods created (their count must not be lost to coalescing), is written at once.
    let transition = next.phase != current.phase
        || next.worker_pods.as_ref().map(|w| w.created)
            != current.worker_pods.as_ref().map(|w| w.created);
    write_status(ctx, job, &current, next.clone(), transition).await?;
    if status::is_terminal(&next) {
        delete_pods(ctx, &ns, job, "worker").await?;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(RUNNING_PERIOD))
}

/// What the API server could not check: the spec's validation (field paths) and the output location.
fn check(job: &ArrayJob) -> Result<(), String> {
    arrayjob_spec::validate::validate(&job.spec.job).map_err(|problems| {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    desired::output_uri(job)?;
    Ok(())
}

/// What the cluster's policy says of a job.
enum Admission {
    /// It may run.
    Allowed,
    /// It asks for what the policy refuses: the fields and why.
    Refused(String),
    /// It names a Secret that is not there (yet): the reason and message of `Stalled`.
    Waiting(&'static str, String),
}

/// The admin's policy on the job's image, service account, tolerations and (when `secret`) credentials Secret
/// (its labels only: the operator reads the Secret's data for the finalizer alone).
async fn admit(ctx: &Context, ns: &str, job: &ArrayJob, secret: bool) -> Result<Admission, Error> {
    let policy = &ctx.settings.policy;
    let mut problems: Vec<String> = policy
        .check(job, &ctx.settings.image)
        .iter()
        .map(ToString::to_string)
        .collect();
    if let Some(name) = job.spec.s3_credentials_secret.as_ref().filter(|_| secret) {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        match secrets.get_metadata_opt(name).await? {
            None => {
                return Ok(Admission::Waiting(
                    "SecretNotFound",
                    format!("spec.s3CredentialsSecret: Secret {ns}/{name} not found"),
                ));
            }
            Some(meta) => {
                if let Err(v) = policy.check_secret(name, meta.labels()) {
                    problems.push(v.to_string());
                }
            }
        }
    }
    Ok(if problems.is_empty() {
        Admission::Allowed
    } else {
        Admission::Refused(problems.join("; "))
    })
}

/// The job's token: read from its Secret, or created once.
async fn ensure_token(ctx: &Context, ns: &str, job: &ArrayJob) -> Result<String, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = desired::names(job).secret;
    if let Some(s) = secrets.get_opt(&name).await? {
        let token = s
            .data
            .as_ref()
            .and_then(|d| d.get(desired::TOKEN_KEY))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned());
        if let Some(t) = token {
            return Ok(t);
        }
    }
    let token = arrayjob_auth::Token::generate()
        .map_err(|e| Error::Other(e.to_string()))?
        .expose()
        .to_owned();
    let secret = desired::token_secret(job, &token);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(token),
        // Created by a pass that raced this one: read it back next time.
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Other(
            "the token Secret appeared meanwhile; reading it next pass".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Applies the manifest ConfigMap, the NetworkPolicy, the Service and (unless it exists) the coordinator Pod.
async fn apply_objects(ctx: &Context, ns: &str, job: &ArrayJob) -> Result<(), Error> {
    let pp = PatchParams::apply(MANAGER).force();
    let n = desired::names(job);
    // Before any pod: the job's pods never run unprotected.
    Api::<NetworkPolicy>::namespaced(ctx.client.clone(), ns)
        .patch(
            &n.network_policy,
            &pp,
            &Patch::Apply(&desired::network_policy(job, &ctx.settings)),
        )
        .await?;
    let cm = desired::manifest_config(job).map_err(|e| Error::Other(e.to_string()))?;
    Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
        .patch(&n.config, &pp, &Patch::Apply(&cm))
        .await?;
    Api::<Service>::namespaced(ctx.client.clone(), ns)
        .patch(
            &n.coordinator,
            &pp,
            &Patch::Apply(&desired::coordinator_service(job)),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    if pods.get_opt(&n.coordinator).await?.is_none() {
        let pod = desired::coordinator_pod(job, &ctx.settings).map_err(Error::Other)?;
        pods.patch(&n.coordinator, &pp, &Patch::Apply(&pod)).await?;
    }
    Ok(())
}

/// Deletes worker pods that failed, creates pods up to `workers.replicas`; returns how many worker pods were
/// created in all.
async fn replace_workers(
    ctx: &Context,
    ns: &str,
    job: &ArrayJob,
    current: &ArrayJobStatus,
    mine: &[Pod],
) -> Result<i32, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let workers: Vec<&Pod> = mine.iter().filter(|p| role(p) == "worker").collect();
    let mut created = current.worker_pods.as_ref().map_or(0, |w| w.created);
    // Workers exit 0 when the coordinator says the job is over: nothing to replace then.
    if workers.iter().any(|p| status::pod_phase(p) == "Succeeded") {
        return Ok(created);
    }
    let mut active = 0;
    for p in &workers {
        if status::pod_gone(p) {
            if p.metadata.deletion_timestamp.is_none() && status::pod_phase(p) == "Failed" {
                pods.delete(&p.name_any(), &DeleteParams::default()).await?;
            }
        } else {
            active += 1;
        }
    }
    let prefix = desired::names(job).worker_prefix;
    let taken: Vec<String> = workers.iter().map(|p| p.name_any()).collect();
    let mut n = 0;
    let pp = PatchParams::apply(MANAGER).force();
    while active < job.spec.workers.replicas {
        let name = loop {
            let name = format!("{prefix}{n}");
            n += 1;
            if !taken.contains(&name) {
                break name;
            }
        };
        let pod = desired::worker_pod(job, &ctx.settings, &name);
        pods.patch(&name, &pp, &Patch::Apply(&pod)).await?;
        active += 1;
        created += 1;
    }
    Ok(created)
}

fn coordinator_succeeded(pods: &[Pod]) -> bool {
    pods.iter()
        .any(|p| role(p) == "coordinator" && status::pod_phase(p) == "Succeeded")
}

/// The published `summary.json`'s stages (read with the job's credentials, or the operator's own when the
/// chart allows it for cleanup), as a progress snapshot.
async fn read_summary(
    ctx: &Context,
    ns: &str,
    job: &ArrayJob,
) -> (Option<Progress>, Option<ProgressError>) {
    let (Some(storage), Ok(output)) =
        (job.spec.job.s3_storage().cloned(), desired::output_uri(job))
    else {
        return (None, None);
    };
    let credentials = match s3_credentials(ctx, ns, job).await {
        Ok(Some(c)) => c,
        Ok(None) | Err(_) => return (None, None),
    };
    let body = tokio::task::spawn_blocking(move || {
        crate::scratch::summary(&storage, credentials, &output)
    })
    .await;
    match body {
        Ok(Ok(Some(body))) => checked(job, "summary.json", progress::parse_summary(&body)),
        Ok(Ok(None)) => (None, None),
        Ok(Err(e)) => {
            tracing::warn!(job = %job.name_any(), error = %e, "cannot read the job's summary.json");
            (None, None)
        }
        Err(e) => {
            tracing::warn!(job = %job.name_any(), error = %e, "the summary.json read stopped");
            (None, None)
        }
    }
}

/// A parsed answer as the status takes it: the progress, or why it was refused (logged).
fn checked(
    job: &ArrayJob,
    what: &str,
    parsed: Result<Progress, ProgressError>,
) -> (Option<Progress>, Option<ProgressError>) {
    match parsed {
        Ok(p) => (Some(p), None),
        Err(e) => {
            tracing::warn!(job = %job.name_any(), error = %e, "refused the job's {what}");
            (None, Some(e))
        }
    }
}

/// The coordinator's progress snapshot (through its Service), when it answers; why it was refused, when it
/// was.
async fn read_progress(
    ctx: &Context,
    ns: &str,
    job: &ArrayJob,
    token: &str,
) -> (Option<Progress>, Option<ProgressError>) {
    let Some(answer) = request_progress(ctx, ns, job, token).await else {
        return (None, None);
    };
    let parsed = match progress::read_body(answer, progress::BODY_LIMIT).await {
        Ok(body) => progress::parse_progress(&body),
        Err(e) => Err(e),
    };
    checked(job, "progress answer", parsed)
}

/// `GET /v1/progress` of the job's coordinator with its token; `None` when it does not answer 2xx (not
/// started yet, gone).
async fn request_progress(
    ctx: &Context,
    ns: &str,
    job: &ArrayJob,
    token: &str,
) -> Option<reqwest::Response> {
    let svc = Api::<Service>::namespaced(ctx.client.clone(), ns)
        .get_opt(&desired::names(job).coordinator)
        .await
        .ok()??;
    let ip = svc.spec?.cluster_ip?;
    let url = format!("http://{ip}:{}/v1/progress", desired::COORDINATOR_PORT);
    // Signed with the job token (never sent itself); the answer is read once the coordinator proved it holds
    // the token.
    let token = arrayjob_auth::Token::from_text(token).ok()?;
    let answer = arrayjob_auth::send(ctx.http.get(url), &token).await.ok()?;
    answer.status().is_success().then_some(answer)
}

/// Writes `next` (its messages bounded) if it differs from `current`, at most every few seconds unless `now`
/// (a transition), then publishes the Events of the change.
async fn write_status(
    ctx: &Context,
    job: &ArrayJob,
    current: &ArrayJobStatus,
    mut next: ArrayJobStatus,
    now: bool,
) -> Result<(), Error> {
    status::bound_messages(&mut next);
    if &next == current {
        return Ok(());
    }
    let key = job.uid().unwrap_or_default();
    {
        let written = ctx.written.lock().unwrap_or_else(|e| e.into_inner());
        if !now
            && written
                .get(&key)
                .is_some_and(|t| t.elapsed() < STATUS_PERIOD)
        {
            return Ok(());
        }
    }
    let api: Api<ArrayJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    // A merge patch keeps what it does not name: fields that went away are set to null.
    let mut fields = serde_json::to_value(&next).map_err(|e| Error::Other(e.to_string()))?;
    if let (Some(new), Ok(serde_json::Value::Object(old))) =
        (fields.as_object_mut(), serde_json::to_value(current))
    {
        for k in old.keys() {
            new.entry(k.clone()).or_insert(serde_json::Value::Null);
        }
    }
    let patch = serde_json::json!({ "status": fields });
    api.patch_status(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    ctx.metrics.status_written();
    if next.phase != current.phase {
        ctx.metrics
            .job_phase(current.phase.as_deref(), next.phase.as_deref());
    }
    ctx.written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, Instant::now());
    publish_events(ctx, job, current, &next).await;
    Ok(())
}

/// The Events of a status change (a failure to publish one is logged: the status is what counts).
async fn publish_events(
    ctx: &Context,
    job: &ArrayJob,
    current: &ArrayJobStatus,
    next: &ArrayJobStatus,
) {
    for note in events::between(current, next) {
        publish(ctx, job, note, "Reconcile").await;
    }
}

/// Publishes one Event about `job` (a failure is logged: in a namespace being deleted none can be created).
async fn publish(ctx: &Context, job: &ArrayJob, note: events::Note, action: &str) {
    // A recorder for each: kube's merges events of one reason into a series under the first one's note,
    // and each of these says something different (which stage, which failure).
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let ev = KubeEvent {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason,
        note: Some(note.text),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &job.object_ref(&())).await {
        tracing::warn!(job = %job.name_any(), error = %e, "cannot publish an event");
    }
}

/// Deletes `job`'s pods of `role` that are still there.
async fn delete_pods(ctx: &Context, ns: &str, job: &ArrayJob, role: &str) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "{JOB_LABEL}={},{ROLE_LABEL}={role}",
        desired::key(job)
    ));
    for p in pods.list(&lp).await?.items {
        if p.metadata.deletion_timestamp.is_none() {
            pods.delete(&p.name_any(), &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

/// The finalizer: the job's pods go, its S3 scratch goes (unless skipped); its outputs stay. A failure is
/// tried again with back-off (`status.cleanup`, condition `CleanupFailed`) and given up after the settings'
/// limits, or at once when the credentials are gone: then the finalizer goes and an Event names the scratch
/// left behind. Never an endless Terminating.
async fn cleanup(job: &ArrayJob, ctx: &Context) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let api = Api::<ArrayJob>::namespaced(ctx.client.clone(), &ns);
    let Some(fresh) = api.get_opt(&job.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let current = fresh.status.unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now();
    if let Some(after) = cleanup::wait(&current, now) {
        // A pass woken by a watch event (our own status write) before the back-off is over.
        return Err(Error::CleanupWaiting { after });
    }
    match remove_everything(job, ctx, &ns).await {
        Ok(outcome) => {
            ctx.metrics.cleanup(outcome.metric);
            if let Some(note) = outcome.note {
                publish(ctx, job, note, "Cleanup").await;
            }
            Ok(Action::await_change())
        }
        Err(failure) => {
            let settings = &ctx.settings.cleanup;
            match cleanup::after_failure(
                &current,
                settings,
                &failure.message,
                failure.permanent,
                now,
            ) {
                AfterFailure::Retry {
                    status: next,
                    after,
                } => {
                    write_status(ctx, job, &current, *next, true).await?;
                    Err(Error::CleanupRetry {
                        message: failure.message,
                        after,
                    })
                }
                AfterFailure::GiveUp { attempts, why } => {
                    tracing::warn!(job = %job.name_any(), attempts, error = %why, scratch = %failure.scratch,
                        "gave up removing the job's S3 scratch; removing the finalizer");
                    ctx.metrics.cleanup("abandoned");
                    let text = format!(
                        "gave up removing the S3 scratch {}: {why}; it is left for `arrayjob gc --scratch`",
                        failure.scratch
                    );
                    publish(
                        ctx,
                        job,
                        events::Note::warning("CleanupAbandoned", text),
                        "Cleanup",
                    )
                    .await;
                    Ok(Action::await_change())
                }
            }
        }
    }
}

/// How a cleanup ended: the metric's outcome and the Event to publish, if any.
struct Cleaned {
    metric: &'static str,
    note: Option<events::Note>,
}

/// Why a cleanup attempt failed.
struct CleanupFailure {
    message: String,
    /// Trying again cannot help (the credentials Secret is gone).
    permanent: bool,
    /// The scratch prefix, for the give-up Event.
    scratch: String,
}

/// One attempt: the pods, then the S3 scratch with the job's credentials (or the operator's, when allowed).
async fn remove_everything(
    job: &ArrayJob,
    ctx: &Context,
    ns: &str,
) -> Result<Cleaned, CleanupFailure> {
    let storage = job.spec.job.s3_storage().cloned();
    let key = desired::key(job);
    let job_id = desired::job_id(job);
    let scratch = storage.as_ref().map_or_else(String::new, |s| {
        crate::scratch::scratch_uri(s, &key, &job_id)
    });
    let fail = |message: String, permanent: bool| CleanupFailure {
        message,
        permanent,
        scratch: scratch.clone(),
    };
    for role in ["worker", "coordinator"] {
        delete_pods(ctx, ns, job, role)
            .await
            .map_err(|e| fail(format!("deleting the {role} pods: {e}"), false))?;
    }
    let Some(storage) = storage else {
        return Ok(Cleaned {
            metric: "removed",
            note: None,
        });
    };
    if cleanup::skip_requested(job) {
        let text = format!(
            "{}: the S3 scratch {scratch} is left as asked",
            cleanup::SKIP_ANNOTATION
        );
        return Ok(Cleaned {
            metric: "skipped",
            note: Some(events::Note::normal("CleanupSkipped", text)),
        });
    }
    let credentials = match s3_credentials(ctx, ns, job).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            let text = format!(
                "no s3CredentialsSecret, and the operator does not clean up with its own identity                  (chart value cleanup.operatorIdentity): the S3 scratch {scratch} is left"
            );
            return Ok(Cleaned {
                metric: "skipped",
                note: Some(events::Note::warning("CleanupSkipped", text)),
            });
        }
        Err(CredentialsError::Missing(m)) => return Err(fail(m, true)),
        Err(CredentialsError::Api(e)) => return Err(fail(e.to_string(), false)),
    };
    let name = job.name_any();
    let removal = tokio::task::spawn_blocking(move || {
        crate::scratch::remove(&storage, credentials, &key, &job_id)
    });
    let removed = match tokio::time::timeout(CLEANUP_TIMEOUT, removal).await {
        Ok(Ok(Ok(n))) => n,
        Ok(Ok(Err(e))) => return Err(fail(e.to_string(), false)),
        Ok(Err(e)) => return Err(fail(format!("the removal stopped: {e}"), false)),
        Err(_) => {
            return Err(fail(
                format!("no answer within {} s", CLEANUP_TIMEOUT.as_secs()),
                false,
            ));
        }
    };
    tracing::info!(job = %name, objects = removed, %scratch, "removed the job's S3 scratch");
    Ok(Cleaned {
        metric: "removed",
        note: None,
    })
}

/// The longest one removal attempt is waited for (the requests' own timeouts end it sooner).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the job's credentials cannot be had.
enum CredentialsError {
    /// The Secret or one of its keys is not there: trying again cannot help.
    Missing(String),
    /// The API call failed.
    Api(kube::Error),
}

/// The S3 credentials of the job's pods, for the operator's own requests: the Secret's keys (with the session
/// token of temporary credentials), the operator's own identity (AWS default chain) when the job names no
/// Secret and the chart allows it, else `None`.
async fn s3_credentials(
    ctx: &Context,
    ns: &str,
    job: &ArrayJob,
) -> Result<Option<arrayjob_s3::S3Credentials>, CredentialsError> {
    let Some(name) = &job.spec.s3_credentials_secret else {
        return Ok(ctx
            .settings
            .cleanup
            .operator_identity
            .then_some(arrayjob_s3::S3Credentials::DefaultChain));
    };
    let what = format!("{ns}/{name}");
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(CredentialsError::Api)?
        .ok_or_else(|| CredentialsError::Missing(format!("Secret {what} not found")))?;
    crate::scratch::credentials(&secret.data.unwrap_or_default(), &what)
        .map(Some)
        .map_err(CredentialsError::Missing)
}
