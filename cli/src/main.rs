//! `arrayjob`: run, validate and plan ArrayJob manifests on this machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use arrayjob_engine::exec::{ExecError, JobProgress};
use arrayjob_engine::resources;
use arrayjob_engine::runner::{self, RunOptions};
use arrayjob_engine::spec::ArrayJobManifest;
use arrayjob_engine::validate;
use clap::{Parser, Subcommand};

mod report;

/// Distributed NumPy-style processing of image stacks; this command runs a job on this machine.
#[derive(Debug, Parser)]
#[command(name = "arrayjob", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a job locally and write its outputs.
    Run {
        /// The ArrayJob manifest (YAML).
        file: PathBuf,
        /// Output directory (default: ./out/<job name>).
        #[arg(long, env = "ARRAYJOB_OUT")]
        out: Option<PathBuf>,
        /// Worker threads (default: all cores).
        #[arg(long, env = "ARRAYJOB_THREADS")]
        threads: Option<usize>,
        /// Memory for chunks waiting between stages before they spill to disk, e.g. `2GiB`
        /// (default: half of the memory this process may use: RAM, or its cgroup's limit when lower).
        #[arg(long, env = "ARRAYJOB_MEMORY_LIMIT")]
        memory_limit: Option<bytesize::ByteSize>,
        /// No progress bars (the summary table is still printed).
        #[arg(long, short, env = "ARRAYJOB_QUIET")]
        quiet: bool,
    },
    /// Check a manifest and report every problem.
    Validate {
        /// The ArrayJob manifest (YAML).
        file: PathBuf,
    },
    /// Show the stages, chunk and task counts, bytes moved and a peak memory estimate.
    Plan {
        /// The ArrayJob manifest (YAML).
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Threads assumed for the memory estimate (default: all cores).
        #[arg(long, env = "ARRAYJOB_THREADS")]
        threads: Option<usize>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ARRAYJOB_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(file: &Path) -> anyhow::Result<(ArrayJobManifest, Vec<usize>)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let m = validate::parse_manifest(&text, &file.display().to_string())?;
    let order = validate::validate(&m.spec).map_err(|p| validate::SpecError::Invalid {
        file: file.display().to_string(),
        problems: p,
    })?;
    Ok((m, order))
}

fn base_dir(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Validate { file } => {
            let (m, order) = load(&file)?;
            println!(
                "{}: valid ArrayJob '{}' with {} stage(s)",
                file.display(),
                m.metadata.name,
                order.len()
            );
            Ok(())
        }
        Command::Plan {
            file,
            json,
            threads,
        } => {
            let (m, order) = load(&file)?;
            let job = runner::prepare(m, &order, &base_dir(&file))?;
            let r = job.plan.report(threads.unwrap_or_else(default_threads));
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "job '{}': source {}",
                    job.manifest.metadata.name,
                    job.source.describe()
                );
                print!("{}", report::plan_table(&r));
            }
            Ok(())
        }
        Command::Run {
            file,
            out,
            threads,
            memory_limit,
            quiet,
        } => {
            let (m, order) = load(&file)?;
            let out = out.unwrap_or_else(|| PathBuf::from("out").join(&m.metadata.name));
            let job = runner::prepare(m, &order, &base_dir(&file))?;
            let opts = RunOptions {
                out_dir: out.clone(),
                threads: threads.unwrap_or_else(default_threads).max(1),
                memory_budget: memory_limit
                    .map_or_else(resources::default_memory_budget, |b| b.as_u64() as usize),
            };
            let progress = JobProgress::new(&job.plan);
            // Ctrl-C and SIGTERM (what Kubernetes sends a pod) stop the run cleanly: workers stop, the staging
            // directory is removed, old outputs stay.
            let cancel: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
            ctrlc::set_handler(move || cancel.store(true, std::sync::atomic::Ordering::Relaxed))
                .context("cannot install the Ctrl-C/SIGTERM handler")?;
            let bars = (!quiet).then(|| report::Bars::new(&progress));
            let done = AtomicBool::new(false);
            let result = std::thread::scope(|s| {
                if let Some(b) = &bars {
                    s.spawn(|| {
                        while !done.load(std::sync::atomic::Ordering::Relaxed) {
                            b.update(&progress);
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    });
                }
                let r = runner::run(&job, &opts, &progress, cancel);
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                r
            });
            if let Some(b) = &bars {
                b.finish(&progress, result.is_ok());
            }
            let summary = match result {
                Err(runner::RunError::Exec(ExecError::Cancelled)) => anyhow::bail!(
                    "interrupted (Ctrl-C or SIGTERM): run cancelled, the outputs in {}/ are as they were",
                    out.display()
                ),
                r => r?,
            };
            print!("{}", report::summary_table(&summary));
            println!("outputs in {}/", out.display());
            Ok(())
        }
    }
}
