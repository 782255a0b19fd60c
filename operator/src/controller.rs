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
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::desired::{self, JOB_LABEL, ROLE_LABEL, Settings};
use crate::events;
use crate::metrics::Metrics;
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
                .timeout(Duration::from_secs(3))
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
    /// Cleaning up the job's S3 scratch failed.
    #[error("S3 scratch cleanup: {0}")]
    Scratch(String),
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
            Error::Scratch(_) => "s3",
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
    tracing::warn!(job = %job.name_any(), error = %e, "reconcile failed; retrying");
    ctx.metrics.reconcile_error(e.kind());
    Action::requeue(Duration::from_secs(5))
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
    .map_err(|e| Error::Finalizer(e.to_string()))
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
    let token = ensure_token(ctx, &ns, job).await?;
    apply_objects(ctx, &ns, job).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mine = pods
        .list(&ListParams::default().labels(&format!("{JOB_LABEL}={}", job.name_any())))
        .await?
        .items;
    let created = replace_workers(ctx, &ns, job, &current, &mine).await?;
    let mut progress = read_progress(ctx, &ns, job, &token).await;
    if progress.is_none() && coordinator_succeeded(&mine) {
        // Its last stages' times and counts, also when it ended before its progress was ever read (a short
        // job, or this operator just started).
        progress = read_summary(ctx, &ns, job).await;
    }
    let observed = Observed {
        pods: mine,
        created,
        progress,
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

/// What the API server could not check: the engine's validation (field paths) and the output location.
fn check(job: &ArrayJob) -> Result<(), String> {
    arrayjob_engine::validate::validate(&job.spec.job).map_err(|problems| {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    desired::output_uri(job)?;
    Ok(())
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
    let token = arrayjob_runtime::auth::Token::generate()
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

/// Applies the manifest ConfigMap, the Service and (unless it exists) the coordinator Pod.
async fn apply_objects(ctx: &Context, ns: &str, job: &ArrayJob) -> Result<(), Error> {
    let pp = PatchParams::apply(MANAGER).force();
    let n = desired::names(job);
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

/// The published `summary.json`'s stages, as a progress snapshot (`stages` with `tasksDone`/`tasksTotal`).
async fn read_summary(ctx: &Context, ns: &str, job: &ArrayJob) -> Option<serde_json::Value> {
    let storage = job.spec.job.s3_storage()?.clone();
    let output = desired::output_uri(job).ok()?;
    let credentials = s3_credentials(ctx, ns, job).await.ok()?;
    let summary = tokio::task::spawn_blocking(move || {
        crate::scratch::summary(&storage, credentials, &output)
    })
    .await
    .ok()?;
    match summary {
        Ok(s) => s.map(|s| serde_json::json!({"stages": s["stages"]})),
        Err(e) => {
            tracing::warn!(job = %job.name_any(), error = %e, "cannot read the job's summary.json");
            None
        }
    }
}

/// The role label of a pod.
pub fn role(p: &Pod) -> &str {
    p.labels().get(ROLE_LABEL).map_or("", String::as_str)
}

/// The coordinator's progress snapshot (through its Service), when it answers.
async fn read_progress(
    ctx: &Context,
    ns: &str,
    job: &ArrayJob,
    token: &str,
) -> Option<serde_json::Value> {
    let svc = Api::<Service>::namespaced(ctx.client.clone(), ns)
        .get_opt(&desired::names(job).coordinator)
        .await
        .ok()??;
    let ip = svc.spec?.cluster_ip?;
    let url = format!("http://{ip}:{}/v1/progress", desired::COORDINATOR_PORT);
    // Signed with the job token (never sent itself); the answer is read once the coordinator proved it holds
    // the token.
    let token = arrayjob_runtime::auth::Token::from_text(token).ok()?;
    let answer = arrayjob_runtime::auth::send(ctx.http.get(url), &token)
        .await
        .ok()?;
    answer.json().await.ok()
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
    let reference = job.object_ref(&());
    for note in events::between(current, next) {
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
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &reference).await {
            tracing::warn!(job = %job.name_any(), error = %e, "cannot publish an event");
        }
    }
}

/// Deletes `job`'s pods of `role` that are still there.
async fn delete_pods(ctx: &Context, ns: &str, job: &ArrayJob, role: &str) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "{JOB_LABEL}={},{ROLE_LABEL}={role}",
        job.name_any()
    ));
    for p in pods.list(&lp).await?.items {
        if p.metadata.deletion_timestamp.is_none() {
            pods.delete(&p.name_any(), &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

/// The finalizer: the job's pods go, its S3 scratch goes; its outputs stay.
async fn cleanup(job: &ArrayJob, ctx: &Context) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    delete_pods(ctx, &ns, job, "worker").await?;
    delete_pods(ctx, &ns, job, "coordinator").await?;
    if let Some(storage) = job.spec.job.s3_storage().cloned() {
        let credentials = s3_credentials(ctx, &ns, job).await?;
        let job_id = desired::job_id(job);
        let name = job.name_any();
        let removed = tokio::task::spawn_blocking(move || {
            crate::scratch::remove(&storage, credentials, &name, &job_id)
        })
        .await
        .map_err(|e| Error::Scratch(e.to_string()))?
        .map_err(|e| Error::Scratch(e.to_string()))?;
        tracing::info!(job = %job.name_any(), objects = removed, "removed the job's S3 scratch");
    }
    Ok(Action::await_change())
}

/// The S3 credentials of the job's pods, for the operator's own cleanup.
async fn s3_credentials(
    ctx: &Context,
    ns: &str,
    job: &ArrayJob,
) -> Result<arrayjob_engine::s3::S3Credentials, Error> {
    let Some(name) = &job.spec.s3_credentials_secret else {
        return Ok(arrayjob_engine::s3::S3Credentials::DefaultChain);
    };
    let s = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get(name)
        .await?;
    let data = s.data.unwrap_or_default();
    let field = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| Error::Scratch(format!("Secret {ns}/{name} has no {k}")))
    };
    Ok(arrayjob_engine::s3::S3Credentials::Static {
        access_key: field("AWS_ACCESS_KEY_ID")?,
        secret_key: field("AWS_SECRET_ACCESS_KEY")?,
    })
}
