//! `arrayjob`: run, validate and plan ArrayJob manifests on this machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use arrayjob_engine::exec::{ExecError, JobProgress};
use arrayjob_engine::graph::TaskGraph;
use arrayjob_engine::resources;
use arrayjob_engine::runner::{self, RunOptions};
use arrayjob_engine::spec::ArrayJobManifest;
use arrayjob_engine::validate::{self, ValidatedSpec};
use clap::{Parser, Subcommand};

mod report;

/// Distributed NumPy-style processing of image stacks; this command runs a job on this machine.
#[derive(Debug, Parser)]
#[command(name = "arrayjob", version, about)]
struct Cli {
    /// Log format on stderr: `text` or `json` (one object per line).
    #[arg(
        long,
        env = "ARRAYJOB_LOG_FORMAT",
        global = true,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a job locally and write its outputs.
    Run {
        /// The ArrayJob manifest (YAML).
        file: PathBuf,
        /// Output directory, or `s3://bucket/prefix` (default: ./out/<job name>). On S3 the connection settings
        /// are `spec.storage.s3`'s, else the environment's.
        #[arg(long, env = "ARRAYJOB_OUT")]
        out: Option<String>,
        /// Worker threads (default: all cores).
        #[arg(long, env = "ARRAYJOB_THREADS")]
        threads: Option<usize>,
        /// Memory for chunks waiting between stages before they spill to disk, e.g. `2GiB`
        /// (default: half of the memory this process may use: RAM, or its cgroup's limit when lower).
        #[arg(long, env = "ARRAYJOB_MEMORY_LIMIT")]
        memory_limit: Option<bytesize::ByteSize>,
        /// Bytes spilled to local disk (per process) before the rest goes to the job's S3 scratch, e.g. `20GiB`
        /// (only for jobs with `spec.storage.s3`; default: no limit).
        #[arg(long, env = "ARRAYJOB_SPILL_DISK_LIMIT")]
        spill_disk_limit: Option<bytesize::ByteSize>,
        /// No progress bars (the summary table is still printed).
        #[arg(long, short, env = "ARRAYJOB_QUIET")]
        quiet: bool,
        /// Run on this many worker processes started on this machine, each on its own loopback address
        /// (127.0.0.2, 127.0.0.3, ... through 127/8), talking over the network as on separate machines. 0: in
        /// this process.
        #[arg(long, env = "ARRAYJOB_WORKERS", default_value_t = 0)]
        workers: usize,
        /// A stable id for this run (1-63 of a-z, 0-9, '-'). With `spec.storage.s3`, outputs on S3 and workers,
        /// the coordinator keeps a ledger in the job's scratch prefix, and a run started again with the same id
        /// (after the coordinator was killed, or the run failed) resumes: tasks whose results are durable are
        /// not run again. Default: a fresh id per run.
        #[arg(long, env = "ARRAYJOB_JOB_ID", value_parser = parse_job_id)]
        job_id: Option<String>,
        #[command(flatten)]
        dist: DistArgs,
    },
    /// Run a worker process that joins a coordinator (`arrayjob run --listen ...`); the job token comes
    /// from `ARRAYJOB_TOKEN`.
    Worker {
        #[command(flatten)]
        args: arrayjob_runtime::cli::WorkerArgs,
    },
    /// Print what a worker started here would offer, as JSON: its threads, the memory this process may use
    /// (RAM, or its cgroup's limit when lower: what the kernel enforces in a container) and the default
    /// chunk-memory budget derived from it (half), the same figures `arrayjob worker` uses.
    Resources {
        /// Threads for tasks (default: the cores this process may use).
        #[arg(long, env = "ARRAYJOB_THREADS")]
        threads: Option<usize>,
    },
    /// Print a running job's progress (JSON) from its coordinator, with a request signed with the job token
    /// from `ARRAYJOB_TOKEN` (the token itself is not sent; the answer is read only once the coordinator
    /// proved it holds it).
    Progress {
        #[command(flatten)]
        args: arrayjob_runtime::cli::ProgressArgs,
    },
    /// Remove what runs that did not finish left at an S3 output location (staging prefixes, an interrupted
    /// publish, which it completes). Refused while a run holds the location.
    Gc {
        /// The output location, `s3://bucket/prefix`.
        location: Option<String>,
        /// A manifest whose `spec.storage.s3` says how to reach S3 (default: the environment).
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// Also remove the scratch of every run of the manifest's job (`{storage prefix}scratch/{job}/`: what
        /// failed runs kept). Needs `--file`. Do not use while the job runs.
        #[arg(long, requires = "file")]
        scratch: bool,
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

/// Flags of a distributed run's coordinator.
#[derive(Debug, clap::Args)]
struct DistArgs {
    /// Coordinate workers started by hand (or by the operator): listen here, e.g. `0.0.0.0:7070`, and wait
    /// for them. With `--workers N` the default is a free port on 127.0.0.1.
    #[arg(long, env = "ARRAYJOB_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// The `host:port` local workers reach the coordinator at (default: the one it listens on; loopback
    /// when that is every interface).
    #[arg(long, env = "ARRAYJOB_ADVERTISE", value_parser = arrayjob_runtime::cli::advertised)]
    advertise: Option<String>,
    /// Threads of each local worker (default: this machine's cores divided among the workers).
    #[arg(long, env = "ARRAYJOB_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Seconds without a heartbeat before a worker is declared lost and its data recomputed (0.5 to 86400).
    #[arg(
        long,
        env = "ARRAYJOB_WORKER_TIMEOUT",
        default_value = "3",
        value_parser = arrayjob_runtime::cli::worker_timeout
    )]
    worker_timeout: Duration,
    /// Whether a rechunk's pieces move to the worker of their merge as soon as they are cut (overlapping
    /// the loads), or only when the merge starts (to compare the two).
    #[arg(long, env = "ARRAYJOB_EARLY_EXCHANGE", default_value_t = true, action = clap::ArgAction::Set)]
    early_exchange: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("ARRAYJOB_LOG")
        .unwrap_or_else(|_| "warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(file: &Path) -> anyhow::Result<(ArrayJobManifest, ValidatedSpec)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let m = validate::parse_manifest(&text, &file.display().to_string())?;
    let valid = validate::validate(&m.spec).map_err(|p| validate::SpecError::Invalid {
        file: file.display().to_string(),
        problems: p,
    })?;
    Ok((m, valid))
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
            let (m, valid) = load(&file)?;
            println!(
                "{}: valid ArrayJob '{}' with {} stage(s)",
                file.display(),
                m.metadata.name,
                valid.stages.len()
            );
            Ok(())
        }
        Command::Plan {
            file,
            json,
            threads,
        } => {
            let (m, valid) = load(&file)?;
            let job = runner::prepare(m, &valid, &base_dir(&file))?;
            // An unbuildable graph is a bug that `run` reports; the plan is printed without task counts.
            let counts = TaskGraph::build(&job.plan)
                .map(|g| g.task_counts())
                .unwrap_or_default();
            let r = job
                .plan
                .report(threads.unwrap_or_else(default_threads), counts);
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
        Command::Gc {
            location,
            file,
            scratch,
        } => gc(location.as_deref(), file.as_deref(), scratch),
        Command::Resources { threads } => {
            let res = resources::detect();
            let v = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "threads": threads.unwrap_or(res.cores).max(1),
                "memoryBytes": res.memory_bytes,
                "memoryBudgetBytes": resources::default_memory_budget(),
            });
            println!("{v}");
            Ok(())
        }
        Command::Progress { args } => {
            let p = arrayjob_runtime::cli::progress(&args)?;
            println!("{}", serde_json::to_string_pretty(&p)?);
            Ok(())
        }
        Command::Worker { args } => {
            // In a container this process is PID 1, for which the kernel has no default SIGTERM action: without
            // a handler a deleted worker pod would go on until SIGKILL. Leaving at once is safe: the coordinator
            // notices, and recomputes what this worker held elsewhere.
            ctrlc::set_handler(|| {
                eprintln!("arrayjob worker: terminated (SIGTERM or Ctrl-C); leaving the job");
                std::process::exit(143);
            })
            .context("cannot install the SIGTERM handler")?;
            let outcome = arrayjob_runtime::worker::run(args.into_options()?)?;
            tracing::info!(
                worker = outcome.worker.0,
                tasks = outcome.tasks,
                "worker done"
            );
            Ok(())
        }
        Command::Run {
            file,
            out,
            threads,
            memory_limit,
            spill_disk_limit,
            quiet,
            workers,
            job_id,
            dist,
        } => {
            let (m, valid) = load(&file)?;
            let out = match out {
                Some(o) => runner::OutLocation::parse("--out", &o)?,
                None => runner::OutLocation::Dir(PathBuf::from("out").join(&m.metadata.name)),
            };
            let manifest_text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let job = runner::prepare(m, &valid, &base_dir(&file))?;
            let threads = threads.unwrap_or_else(default_threads).max(1);
            let memory_budget =
                memory_limit.map_or_else(resources::default_memory_budget, |b| b.as_u64() as usize);
            let opts = RunOptions {
                out: out.clone(),
                threads,
                memory_budget,
                spill_disk_limit: spill_disk_limit.map(|b| b.as_u64()),
                job_id,
            };
            let mut coordinator = (workers > 0 || dist.listen.is_some())
                .then(|| coordinator(&dist, workers, threads, memory_budget, manifest_text, &file))
                .transpose()?
                .map(|mut c| {
                    c.set_worker_spill_disk_limit(opts.spill_disk_limit);
                    c
                });
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
                let r = match &mut coordinator {
                    Some(c) => runner::run_with(&job, &opts, c, &progress, cancel),
                    None => runner::run(&job, &opts, &progress, cancel),
                };
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                r
            });
            if let Some(b) = &bars {
                b.finish(&progress, result.is_ok());
            }
            let summary = match result {
                Err(runner::RunError::Exec(ExecError::Cancelled)) => anyhow::bail!(
                    "interrupted (Ctrl-C or SIGTERM): run cancelled, the outputs in {} are as they were",
                    with_slash(&out)
                ),
                r => r?,
            };
            print!("{}", report::summary_table(&summary));
            if let Some(r) = coordinator.as_ref().and_then(|c| c.report()) {
                print!("{}", report::distributed_table(r));
            }
            println!("outputs in {}", with_slash(&out));
            Ok(())
        }
    }
}

/// `arrayjob gc`: the leftovers at an output location, and with `scratch` the scratch of the manifest's job.
fn gc(location: Option<&str>, file: Option<&Path>, scratch: bool) -> anyhow::Result<()> {
    use arrayjob_engine::s3::objects::{S3Location, block};
    anyhow::ensure!(
        location.is_some() || scratch,
        "nothing to do: give an output location (s3://bucket/prefix), --scratch, or both"
    );
    let manifest = file.map(load).transpose()?;
    let storage = manifest.as_ref().and_then(|(m, _)| m.spec.s3_storage());
    if let Some(location) = location {
        let out = S3Location::parse("location", location)?;
        let bucket = arrayjob_engine::s3::bucket(storage, &out.bucket)?;
        bucket.probe()?;
        let removed = arrayjob_engine::output::commit::s3::gc(&bucket, &out)?;
        for p in &removed {
            println!("removed s3://{}/{p}", out.bucket);
        }
        println!(
            "{out}: {} leftover staging prefix(es) removed",
            removed.len()
        );
    }
    if scratch {
        let (Some((m, _)), Some(storage)) = (&manifest, storage) else {
            anyhow::bail!(
                "--scratch: the manifest has no spec.storage.s3, so its jobs have no scratch"
            );
        };
        let place = arrayjob_engine::s3::spill::job_scratch(storage, &m.metadata.name);
        let bucket = arrayjob_engine::s3::bucket(Some(storage), &place.bucket)?;
        let prefix = place.prefix.clone();
        let n = block(async move { bucket.delete_prefix(&prefix).await })?;
        println!("{place}: {n} scratch object(s) removed");
    }
    Ok(())
}

/// The output location as printed: a directory with a trailing `/`, an S3 prefix as it is.
fn with_slash(out: &runner::OutLocation) -> String {
    match out {
        runner::OutLocation::Dir(d) => format!("{}/", d.display()),
        runner::OutLocation::S3(l) => l.to_string(),
    }
}

/// The coordinator of `arrayjob run --workers N` / `--listen`: local workers are this same program's
/// `worker` subcommand; the token comes from `ARRAYJOB_TOKEN` or is generated.
fn coordinator(
    dist: &DistArgs,
    workers: usize,
    threads: usize,
    memory_budget: usize,
    manifest: String,
    file: &Path,
) -> anyhow::Result<arrayjob_runtime::coordinator::Coordinator> {
    use arrayjob_runtime::coordinator::{Coordinator, CoordinatorOptions};
    let exe = std::env::current_exe().context("cannot find this program to start workers")?;
    let mut o = CoordinatorOptions::local(
        manifest,
        base_dir(file),
        workers,
        vec![exe.display().to_string(), "worker".into()],
    )?;
    if let Ok(t) = std::env::var("ARRAYJOB_TOKEN") {
        o.token = arrayjob_auth::Token::from_text(&t)?;
    }
    if let Some(l) = dist.listen {
        o.listen = l;
        o.announce = true;
    }
    o.advertise = dist.advertise.clone();
    o.worker_threads = dist
        .worker_threads
        .unwrap_or_else(|| (threads / workers.max(1)).max(1));
    o.worker_memory = memory_budget / workers.max(1);
    o.worker_timeout = dist.worker_timeout;
    o.scheduler.move_early = dist.early_exchange;
    if o.announce && std::env::var("ARRAYJOB_TOKEN").is_err() {
        eprintln!(
            "job token (give it to workers as ARRAYJOB_TOKEN): {}",
            o.token.expose()
        );
    }
    Ok(Coordinator::new(o))
}

/// `--job-id`, checked as [`runner::check_job_id`] does.
fn parse_job_id(s: &str) -> Result<String, String> {
    runner::check_job_id(s).map(|()| s.to_owned())
}
