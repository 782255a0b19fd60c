//! `arrayjob-node-agent`: registers test Nodes and runs their pods as local processes (or as podman
//! containers, for images mapped to podman images).
//!
//! ```text
//! arrayjob-node-agent run --kubeconfig K --nodes nodes.json --images images.json --state-dir D
//! arrayjob-node-agent reclaim --kubeconfig K --node spot-b --grace 5
//! arrayjob-node-agent sandbox --plan JSON -- PROGRAM ARGS..   (used by the agent itself)
//! ```

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use arrayjob_testenv::agent::sandbox::{self, SandboxPlan};
use arrayjob_testenv::agent::{self, AgentConfig, NodeSpec};
use clap::{Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Parser, Debug)]
#[command(about = "Test node agent for the arrayjob test environment")]
struct Cli {
    /// kubeconfig to use.
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Register the nodes and run their pods until stopped.
    Run {
        /// JSON file with a list of nodes (name, instance_type, zone, capacity_type, cpu, memory);
        /// the default set (one on-demand, two spot nodes) when absent.
        #[arg(long)]
        nodes: Option<PathBuf>,
        /// JSON file mapping image names to local binaries or `{"podman": IMAGE}` (re-read at every
        /// container start).
        #[arg(long)]
        images: PathBuf,
        /// Folder for pod working directories and logs.
        #[arg(long)]
        state_dir: PathBuf,
        /// Folder where the process group id of each running pod is recorded.
        #[arg(long)]
        pgid_dir: Option<PathBuf>,
        /// Folder where the name of each podman container is recorded (container mode).
        #[arg(long)]
        container_dir: Option<PathBuf>,
        /// First loopback pod IP.
        #[arg(long, default_value = "127.0.1.1")]
        pod_ip_start: Ipv4Addr,
        /// KUBERNETES_SERVICE_HOST:PORT given to pods.
        #[arg(long)]
        api_host_port: Option<String>,
        /// Agent environment variables passed through to pods.
        #[arg(long)]
        pass_env: Vec<String>,
        /// Heartbeat interval in seconds.
        #[arg(long, default_value_t = 10)]
        heartbeat_secs: u64,
    },
    /// Simulate a spot interruption of a node: taint, delete its pods, delete the node.
    Reclaim {
        /// Node to reclaim.
        #[arg(long)]
        node: String,
        /// Grace period for the pods, in seconds (their own when absent).
        #[arg(long)]
        grace: Option<u32>,
    },
    /// Run PROGRAM in a pod's mount namespace (how the agent starts containers with volumes and
    /// exec probes; see `agent::sandbox`).
    Sandbox {
        /// The plan as JSON: mounts, the process whose mount namespace to join, workdir.
        #[arg(long)]
        plan: String,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// Sets up the sandbox and execs the program; returns only on failure (exit status 127).
fn run_sandbox(plan: &str, command: &[String]) -> anyhow::Result<()> {
    let plan: SandboxPlan = serde_json::from_str(plan).context("parse the sandbox plan")?;
    let (program, args) = command.split_first().context("no program to run")?;
    match sandbox::enter(&plan, std::path::Path::new(program), args) {
        Ok(never) => match never {},
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(127);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The sandbox must stay single-threaded (mount namespaces), so it runs before any runtime.
    if let Cmd::Sandbox { plan, command } = &cli.cmd {
        return run_sandbox(plan, command);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?
        .block_on(agent_main(cli))
}

async fn client(path: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let cfg = match path {
        Some(p) => {
            let kc = Kubeconfig::read_from(p).with_context(|| format!("read {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(cfg)?)
}

async fn agent_main(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let client = client(cli.kubeconfig.as_ref()).await?;
    match cli.cmd {
        Cmd::Run {
            nodes,
            images,
            state_dir,
            pgid_dir,
            container_dir,
            pod_ip_start,
            api_host_port,
            pass_env,
            heartbeat_secs,
        } => {
            let nodes: Vec<NodeSpec> = match nodes {
                Some(p) => serde_json::from_str(
                    &std::fs::read_to_string(&p)
                        .with_context(|| format!("read {}", p.display()))?,
                )
                .with_context(|| format!("parse {}", p.display()))?,
                None => agent::default_nodes(),
            };
            let api_host_port = match api_host_port {
                Some(hp) => {
                    let (h, p) = hp
                        .rsplit_once(':')
                        .context("--api-host-port must be HOST:PORT")?;
                    Some((h.to_owned(), p.parse().context("bad port")?))
                }
                None => None,
            };
            let cfg = AgentConfig {
                nodes,
                images_file: images,
                state_dir,
                pgid_dir,
                container_dir,
                pod_ip_start,
                api_host_port,
                pass_env,
                heartbeat: Duration::from_secs(heartbeat_secs),
            };
            tokio::select! {
                r = agent::run(client, cfg) => r?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Cmd::Reclaim { node, grace } => {
            let report = agent::reclaim::reclaim_spot_node(&client, &node, grace).await?;
            println!(
                "{}",
                serde_json::to_string(&serde_json::json!({
                    "evicted": report.evicted, "left_running": report.left_running
                }))?
            );
        }
        Cmd::Sandbox { .. } => anyhow::bail!("the sandbox runs before the agent starts"),
    }
    Ok(())
}
