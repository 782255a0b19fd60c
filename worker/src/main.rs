//! `arrayjob-worker`: the process that runs chunk tasks on a node.
//!
//! `arrayjob-worker run --coordinator URL` joins a job's coordinator (the token comes from `ARRAYJOB_TOKEN`)
//! and runs its tasks until the job is over (see `arrayjob_runtime::worker`); it is the same worker as
//! `arrayjob worker`. `arrayjob-worker resources` prints the resources it would offer, as JSON.

use clap::{Parser, Subcommand};

/// arrayjob worker process.
#[derive(Debug, Parser)]
#[command(name = "arrayjob-worker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the resources this worker offers (threads, memory) as JSON.
    Resources {
        /// Threads for chunk tasks (default: all cores).
        #[arg(long, env = "ARRAYJOB_THREADS")]
        threads: Option<usize>,
    },
    /// Join a coordinator and run its job's tasks.
    Run {
        #[command(flatten)]
        args: arrayjob_runtime::cli::WorkerArgs,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { args } => {
            let outcome = arrayjob_runtime::worker::run(args.into_options()?)?;
            tracing::info!(
                worker = outcome.worker.0,
                tasks = outcome.tasks,
                "worker done"
            );
            Ok(())
        }
        Command::Resources { threads } => {
            let threads = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let mem_total_kb = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find(|l| l.starts_with("MemTotal:"))
                        .map(str::to_string)
                })
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                });
            let v = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "threads": threads,
                "memoryBytes": mem_total_kb.map(|kb| kb * 1024),
            });
            println!("{v}");
            Ok(())
        }
    }
}
