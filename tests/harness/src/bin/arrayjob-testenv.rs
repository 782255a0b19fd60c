//! `arrayjob-testenv up`: starts the same environment the tests use, for poking at by hand.
//! Prints shell `export` lines (KUBECONFIG, AWS_*), then runs until Ctrl-C / SIGTERM; everything
//! is stopped when it exits (the environment's watchdog also covers `kill -9`).

use std::path::PathBuf;

use arrayjob_testenv::{EnvOptions, TestEnv};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "Start the arrayjob test environment by hand")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start the environment and keep it running until interrupted.
    Up {
        /// The node agent binary (default: next to this executable).
        #[arg(long)]
        node_agent: Option<PathBuf>,
        /// Extra image mappings, IMAGE=PATH.
        #[arg(long = "image")]
        images: Vec<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Cmd::Up { node_agent, images } = Cli::parse().cmd;
    let mut opts = EnvOptions {
        node_agent,
        ..EnvOptions::default()
    };
    for m in images {
        let (image, path) = m
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--image wants IMAGE=PATH, got {m}"))?;
        opts.images.insert(image.to_owned(), PathBuf::from(path));
    }
    let env = TestEnv::start(opts)?;
    println!("export KUBECONFIG={}", env.kubeconfig().display());
    for (k, v) in env.s3().env_vars() {
        println!("export {k}={v}");
    }
    println!("# logs: {}/logs", env.run_dir().display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    env.stop();
    Ok(())
}
