//! `arrayjob-worker`: the process that runs chunk tasks on a node.
//!
//! Distributed execution (registering with a coordinator, serving chunks to peers) comes with the
//! distributed issue. Today the binary reports the resources it would offer, which the operator's pod spec
//! and the coordinator will use: `arrayjob-worker resources` prints them as JSON.

use clap::{Parser, Subcommand};

/// arrayjob worker process.
#[derive(Debug, Parser)]
#[command(name = "arrayjob-worker", version, about)]
struct Cli {
    /// Threads for chunk tasks (default: all cores).
    #[arg(long, env = "ARRAYJOB_THREADS", global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the resources this worker offers (threads, memory) as JSON.
    Resources,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Resources => {
            let threads = cli
                .threads
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
