//! Peer transfer throughput on loopback: one worker's data server holds `GIB` GiB of chunks (16 MiB each);
//! another address fetches them all, `BATCH` keys per request, decoding every frame (checksums verified), as
//! a merge's inputs are fetched. Prints GB/s.
//!
//!     cargo run --release -p arrayjob-runtime --example transfer_bench -- [GIB] [BATCH]
//!
//! Also prints the CPU time and minor page faults of the whole process (sender and receiver) during the
//! transfer, from `/proc/self/stat`: less sensitive than GB/s to other work on the machine. To profile the
//! transfer alone, `perf record -D -1 --control fifo:CTL ...` with `PERF_CTL_FIFO=CTL` set: the bench enables
//! perf just before the transfer and disables it after.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use arrayjob_auth::{Guard, Token};
use arrayjob_engine::array::Chunk;
use arrayjob_engine::data::{Data, DataKey};
use arrayjob_engine::schedule::WorkerId;
use arrayjob_engine::store::{ChunkStore, FileSpill};
use arrayjob_runtime::worker::{DataServer, fetch_keys, serve_data};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let gib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let batch: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(8);
    let chunk_bytes = 16 << 20;
    let n = gib * (1 << 30) / chunk_bytes;
    let tmp = tempfile::tempdir()?;
    let store = Arc::new(ChunkStore::new(
        usize::MAX,
        Box::new(FileSpill::new(tmp.path())?),
    ));
    let keys: Vec<DataKey> = (0..n)
        .map(|i| DataKey::Piece {
            node: 1,
            group: i,
            part: 0,
        })
        .collect();
    for (i, &k) in keys.iter().enumerate() {
        let c = Chunk::F32(ndarray::ArrayD::from_elem(
            ndarray::IxDyn(&[chunk_bytes / 4 / 1024, 1024]),
            i as f32,
        ));
        store.put(k, Data::Chunk(c), usize::MAX)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let token = Token::generate()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.2:0"))?;
    let address = listener.local_addr()?.to_string();
    let data = DataServer {
        damaged: None,
        worker: WorkerId(0),
        store,
        metrics: Arc::new(arrayjob_runtime::metrics::WorkerMetrics::new()),
        refused: Arc::new(AtomicU64::new(0)),
    };
    // As a worker: requests signed for its address, answers proven (docs/security.md).
    let guard = Guard::new(token.clone()).addressed_as(&address);
    rt.spawn(serve_data(listener, data, guard));
    let client = reqwest::Client::builder().no_proxy().build()?;
    // One warm-up request opens the connection.
    rt.block_on(fetch_keys(&client, &token, &address, &keys[..1]))
        .map_err(anyhow::Error::msg)?;
    let mut perf = std::env::var_os("PERF_CTL_FIFO")
        .map(|p| std::fs::OpenOptions::new().write(true).open(p))
        .transpose()?;
    if let Some(f) = &mut perf {
        f.write_all(b"enable\n")?;
    }
    let usage0 = usage();
    let t0 = Instant::now();
    let mut bytes = 0u64;
    for group in keys.chunks(batch) {
        let (got, b) = rt
            .block_on(fetch_keys(&client, &token, &address, group))
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(got.len() == group.len(), "short answer");
        bytes += b;
    }
    let secs = t0.elapsed().as_secs_f64();
    let usage1 = usage();
    if let Some(f) = &mut perf {
        f.write_all(b"disable\n")?;
    }
    println!(
        "moved {:.2} GB in {} requests of {batch} x 16 MiB over loopback in {secs:.3} s: {:.2} GB/s",
        bytes as f64 / 1e9,
        keys.len().div_ceil(batch),
        bytes as f64 / 1e9 / secs
    );
    if let (Some((cpu0, faults0)), Some((cpu1, faults1))) = (usage0, usage1) {
        println!(
            "CPU {:.2} s ({:.2} s per GB), {} minor page faults",
            cpu1 - cpu0,
            (cpu1 - cpu0) / (bytes as f64 / 1e9),
            faults1 - faults0
        );
    }
    Ok(())
}

/// The process's CPU seconds (user and system, all threads) and minor page faults so far, from
/// `/proc/self/stat` (Linux; None elsewhere). The CPU time counts in clock ticks of 10 ms.
fn usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which is in parentheses and may hold spaces): state is field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(((field(14)? + field(15)?) as f64 / 100.0, field(10)?))
}
