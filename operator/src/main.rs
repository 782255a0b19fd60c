//! `arrayjob-operator`: the Kubernetes side of arrayjob.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;

use arrayjob_operator::controller::{self, Context};
use arrayjob_operator::metrics::Metrics;
use arrayjob_operator::policy::Policy;
use arrayjob_operator::settings::{CleanupSettings, Peer, Settings};
use clap::{Parser, Subcommand};

/// The arrayjob Kubernetes operator.
#[derive(Debug, Parser)]
#[command(name = "arrayjob-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the ArrayJob CustomResourceDefinition as YAML (committed as crds/arrayjob.yaml).
    Crd,
    /// Run the controller (in the cluster with its service account, or with `KUBECONFIG`).
    Run(Box<RunArgs>),
}

/// The settings of `run`.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Image of the coordinator and worker pods (a job's `workers.image` overrides it).
    #[arg(long, env = "ARRAYJOB_IMAGE")]
    image: String,
    /// Where `/metrics` (Prometheus) and `/healthz` are served.
    #[arg(long, env = "ARRAYJOB_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Watch this namespace only (default: all).
    #[arg(long, env = "ARRAYJOB_NAMESPACE")]
    namespace: Option<String>,
    /// Reconcile only while holding the Lease `arrayjob-operator` in `POD_NAMESPACE` (several replicas:
    /// one leads, the others wait to take over).
    #[arg(long, env = "ARRAYJOB_LEADER_ELECTION")]
    leader_election: bool,
    /// What a job may ask for, as JSON (`allowedImages`, `allowedServiceAccounts`,
    /// `s3CredentialsSecrets`, `allowedTolerationKeys`). Default: the safe policy (docs/security.md).
    #[arg(long, env = "ARRAYJOB_POLICY", value_parser = parse_policy)]
    policy: Option<Policy>,
    /// Labels of the operator's pods (`k=v,k=v`): each job's NetworkPolicy lets them (in
    /// `POD_NAMESPACE`) reach the coordinator's port. Unset: no such rule.
    #[arg(long, env = "ARRAYJOB_OPERATOR_LABELS", value_parser = parse_labels)]
    operator_labels: Option<Labels>,
    #[command(flatten)]
    cleanup: CleanupArgs,
}

/// How the finalizer cleans up.
#[derive(Debug, clap::Args)]
struct CleanupArgs {
    /// Remove the scratch of a job without `s3CredentialsSecret` with the operator's own identity (its IRSA
    /// role); without this flag that scratch is left, with an Event.
    #[arg(long, env = "ARRAYJOB_CLEANUP_OPERATOR_IDENTITY")]
    cleanup_operator_identity: bool,
    /// Failed cleanup attempts before the finalizer gives up.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    cleanup_max_attempts: u32,
    /// Wait after the first failed attempt, doubled after each next one (at most 300 s).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    cleanup_backoff_seconds: u64,
    /// Give up this long after the first failed attempt.
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    cleanup_give_up_after_seconds: u64,
}

/// Label pairs, in order.
type Labels = std::collections::BTreeMap<String, String>;

fn parse_policy(s: &str) -> Result<Policy, String> {
    serde_json::from_str(s).map_err(|e| format!("--policy: {e}"))
}

fn parse_labels(s: &str) -> Result<Labels, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("--operator-labels: {pair:?} is not key=value"))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ARRAYJOB_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a pod's log is a file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", arrayjob_operator::crd_yaml()?);
            Ok(())
        }
        Command::Run(args) => {
            let RunArgs {
                image,
                metrics_addr,
                namespace,
                leader_election,
                policy,
                operator_labels,
                cleanup,
            } = *args;
            let settings = Settings {
                image,
                policy: policy.unwrap_or_default(),
                operator_peer: operator_labels.map(|labels| Peer {
                    namespace: std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into()),
                    labels,
                }),
                cleanup: CleanupSettings {
                    operator_identity: cleanup.cleanup_operator_identity,
                    max_attempts: cleanup.cleanup_max_attempts,
                    backoff: std::time::Duration::from_secs(cleanup.cleanup_backoff_seconds),
                    give_up_after: std::time::Duration::from_secs(
                        cleanup.cleanup_give_up_after_seconds,
                    ),
                },
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run(settings, metrics_addr, namespace, leader_election))
        }
    }
}

async fn run(
    settings: Settings,
    metrics_addr: SocketAddr,
    namespace: Option<String>,
    leader_election: bool,
) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind(metrics_addr).await?;
    tracing::info!(%metrics_addr, ?namespace, policy = ?settings.policy, cleanup = ?settings.cleanup,
        "arrayjob operator starting");
    let m = metrics.clone();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = m.clone();
                async move { m.encode() }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    let ctx = Arc::new(Context::new(client.clone(), settings, metrics.clone())?);
    if !leader_election {
        metrics.set_leader(true);
        controller::run(ctx, namespace).await;
        return Ok(());
    }
    let (mut leading, lease) = lead(client).await?;
    metrics.set_leader(true);
    tokio::select! {
        () = controller::run(ctx, namespace) => {
            // Shut down (SIGTERM): hand the Lease over now rather than when it expires.
            drop(leading);
            match tokio::time::timeout(std::time::Duration::from_secs(5), lease).await {
                Ok(Ok(Ok(_))) => tracing::info!("released the leader Lease"),
                other => tracing::warn!(?other, "could not release the leader Lease; it expires by itself"),
            }
            Ok(())
        }
        () = async {
            while leading.changed().await.is_ok() && *leading.borrow_and_update() {}
        } => {
            // Another replica may take over at once: stop before reconciling anything more.
            anyhow::bail!("lost the leader Lease; exiting so that a restart waits for it again")
        }
    }
}

/// The task that holds the Lease; it releases it once the receiver is dropped.
type LeaseTask =
    tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>;

/// Waits until this replica holds the Lease `arrayjob-operator` (in `POD_NAMESPACE`, as `POD_NAME`); the
/// receiver turns false if it is lost.
async fn lead(
    client: kube::Client,
) -> anyhow::Result<(tokio::sync::watch::Receiver<bool>, LeaseTask)> {
    let ns = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
    let me = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("arrayjob-operator-{}", std::process::id()));
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, "arrayjob-operator")
        .with_namespace(&ns)
        .with_identity(&me)
        .with_duration(15)
        .with_grace(5)
        .with_field_manager(arrayjob_operator::controller::MANAGER)
        .build()
        .await?;
    // The manager renews the Lease as long as the receiver lives.
    let (mut leading, task) = manager.watch().await;
    tracing::info!(lease = %format!("{ns}/arrayjob-operator"), identity = %me, "waiting for the leader Lease");
    while !*leading.borrow_and_update() {
        leading.changed().await?;
    }
    tracing::info!(identity = %me, "leading");
    Ok((leading, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_policy_flags_parse_or_name_the_problem() {
        assert_eq!(
            parse_labels("app.kubernetes.io/name=arrayjob,app.kubernetes.io/component=operator"),
            Ok(Labels::from([
                ("app.kubernetes.io/component".into(), "operator".into()),
                ("app.kubernetes.io/name".into(), "arrayjob".into()),
            ]))
        );
        assert_eq!(
            parse_labels("a=b,oops"),
            Err("--operator-labels: \"oops\" is not key=value".into())
        );
        assert!(
            parse_policy(r#"{"s3CredentialsSecrets": "every"}"#)
                .is_err_and(|e| e.starts_with("--policy: unknown variant `every`")),
        );
        let cli = Cli::try_parse_from([
            "arrayjob-operator",
            "run",
            "--image=x:1",
            "--policy={\"allowedImages\": [\"r.example/*\"]}",
            "--cleanup-max-attempts=3",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(
            args.policy.map(|p| p.allowed_images),
            Some(vec!["r.example/*".to_owned()])
        );
        assert_eq!(args.cleanup.cleanup_max_attempts, 3);
        assert!(
            Cli::try_parse_from([
                "arrayjob-operator",
                "run",
                "--image=x",
                "--cleanup-max-attempts=0"
            ])
            .is_err()
        );
    }
}
