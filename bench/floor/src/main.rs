//! What this machine allows for each stage of the benchmark pipeline, measured with the crates the engine
//! itself uses and nothing of the engine: PNG decode (`png`, `image`), the FFT (`realfft`), copies (memcpy)
//! and zstd level 1 (the Zarr codec), and writing new files buffered and with the engine's direct-I/O writer. Each figure is the best of `--reps` runs, on 1 thread and on
//! `--threads` threads, and is printed as one JSON object for `bench/report.py`.
//!
//! usage: arrayjob-bench-floor --data DIR [--n 1000] [--threads 2] [--reps 3]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use arrayjob_engine::output::direct::{self, PageBuf};
use clap::Parser;
use realfft::RealFftPlanner;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    /// Directory of `slice_%05d.png` files.
    #[arg(long)]
    data: PathBuf,
    /// Slices to use (the series length of the FFT too).
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Threads for the parallel figures.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Repetitions; the best is kept.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Side of the recentered window (the FFT runs over `window^2` series).
    #[arg(long, default_value_t = 500)]
    window: usize,
}

/// Best wall time of `reps` runs of `f`, seconds.
fn best(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut t = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        f()?;
        t = t.min(t0.elapsed().as_secs_f64());
    }
    Ok(t)
}

/// Runs `work(i)` for `i in 0..items` on `threads` threads (static interleaved split).
fn parallel(
    threads: usize,
    items: usize,
    work: impl Fn(usize, &mut Vec<u8>) -> Result<()> + Sync,
) -> Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let work = &work;
                s.spawn(move || {
                    let mut scratch = Vec::new();
                    (t..items)
                        .step_by(threads)
                        .try_for_each(|i| work(i, &mut scratch))
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| anyhow::anyhow!("thread panicked"))?)
    })
}

/// Decodes one 8-bit PNG with `png` straight into `out`.
fn decode_png(bytes: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info()?;
    out.resize(reader.output_buffer_size().context("image too large")?, 0);
    reader.next_frame(out)?;
    Ok(())
}

/// Decodes one PNG with `image` (format guessed from the bytes) into `out`.
fn decode_image(bytes: &[u8], out: &mut Vec<u8>) -> Result<()> {
    use image::ImageDecoder;
    let decoder = image::codecs::png::PngDecoder::new(std::io::Cursor::new(bytes))?;
    out.resize(decoder.total_bytes() as usize, 0);
    decoder.read_image(out)?;
    Ok(())
}

fn decode_figures(a: &Args, files: &[Vec<u8>]) -> Result<Value> {
    let n = files.len();
    let mut per = serde_json::Map::new();
    for (name, f) in [
        ("png", decode_png as fn(&[u8], &mut Vec<u8>) -> Result<()>),
        ("image", decode_image),
    ] {
        let one = best(a.reps, || parallel(1, n, |i, buf| f(&files[i], buf)))?;
        let many = best(a.reps, || {
            parallel(a.threads, n, |i, buf| f(&files[i], buf))
        })?;
        per.insert(
            name.into(),
            json!({"ms_per_slice_1t": one / n as f64 * 1e3, "seconds_1t": one, "seconds_nt": many}),
        );
    }
    Ok(Value::Object(per))
}

/// The loading phase at its floor: each slice read from its file and decoded with `image` into a reused
/// buffer, then swept once, while it is in cache, for all the per-pixel work the pipeline's loading needs: the
/// time sum (`u32` per pixel, per thread), the slice's sum (brightness) and the row and column sums of the
/// centroid. The engine does the same work in separate passes, plus the recenter crop and the rechunk split,
/// so this is a lower bound of its `loadEndSeconds` with the `files` source.
fn load_figures(a: &Args) -> Result<Value> {
    let run = |threads: usize| -> Result<()> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || -> Result<u64> {
                        let mut buf = Vec::new();
                        let (mut acc, mut cols, mut rows) = (Vec::new(), Vec::new(), Vec::new());
                        let mut total = 0u64;
                        for i in (t..a.n).step_by(threads) {
                            let p = a.data.join(format!("slice_{i:05}.png"));
                            let bytes = std::fs::read(&p)
                                .with_context(|| format!("reading {}", p.display()))?;
                            let (w, h) = {
                                use image::ImageDecoder;
                                let d = image::codecs::png::PngDecoder::new(std::io::Cursor::new(
                                    &bytes,
                                ))?;
                                d.dimensions()
                            };
                            decode_image(&bytes, &mut buf)?;
                            let (w, h) = (w as usize, h as usize);
                            acc.resize(w * h, 0u32);
                            cols.resize(w, 0u32);
                            rows.resize(h, 0u32);
                            total += sweep(&buf, w, &mut acc, &mut cols, &mut rows);
                        }
                        Ok(total + u64::from(acc.iter().fold(0u32, |x, &v| x ^ v)))
                    })
                })
                .collect();
            for h in handles {
                let total = h.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
                std::hint::black_box(total);
            }
            Ok(())
        })
    };
    let one = best(a.reps, || run(1))?;
    let many = best(a.reps, || run(a.threads))?;
    Ok(json!({"seconds_1t": one, "seconds_nt": many, "ms_per_slice_1t": one / a.n as f64 * 1e3}))
}

/// One pass over a decoded slice: adds it to the time sums `acc`, its columns to `cols`, its rows to `rows`
/// (the centroid's marginals); returns its sum.
fn sweep(img: &[u8], w: usize, acc: &mut [u32], cols: &mut [u32], rows: &mut [u32]) -> u64 {
    let mut total = 0u64;
    for ((row, acc_row), r) in img.chunks_exact(w).zip(acc.chunks_exact_mut(w)).zip(rows) {
        let mut rs = 0u32;
        for ((v, a), c) in row.iter().zip(acc_row.iter_mut()).zip(cols.iter_mut()) {
            let v = u32::from(*v);
            *a += v;
            *c += v;
            rs += v;
        }
        *r = rs;
        total += u64::from(rs);
    }
    total
}

/// `series` real series of length `len` (the benchmark's window pixels over time), FFT'd with realfft in f64,
/// `|X|^2` taken and stored as f32: the engine's FFT stage without its gathers.
fn fft_figures(a: &Args, len: usize, series: usize) -> Result<(Value, Vec<u8>)> {
    let plan = RealFftPlanner::<f64>::new().plan_fft_forward(len);
    let run = |threads: usize, keep: bool| -> Result<Vec<f32>> {
        let chunk = series.div_ceil(threads);
        let mut out = if keep {
            vec![0f32; series * (len / 2 + 1)]
        } else {
            Vec::new()
        };
        std::thread::scope(|s| -> Result<()> {
            let mut parts: Vec<&mut [f32]> = if keep {
                out.chunks_mut(chunk * (len / 2 + 1)).collect()
            } else {
                Vec::new()
            };
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let plan = plan.clone();
                    let mut dst = if keep { Some(parts.remove(0)) } else { None };
                    s.spawn(move || {
                        let mut input = plan.make_input_vec();
                        let mut spec = plan.make_output_vec();
                        let mut scratch = plan.make_scratch_vec();
                        // One pixel-like series (values 0..=250), copied in before each transform (realfft
                        // uses its input as scratch).
                        let template: Vec<f64> =
                            (0..len).map(|k| ((k * 17) % 251) as f64).collect();
                        let lo = t * chunk;
                        let hi = ((t + 1) * chunk).min(series);
                        for j in lo..hi {
                            input.copy_from_slice(&template);
                            input[j % len] += 1.0;
                            plan.process_with_scratch(&mut input, &mut spec, &mut scratch)
                                .map_err(|e| anyhow::anyhow!("{e}"))?;
                            if let Some(d) = dst.as_deref_mut() {
                                let row = &mut d[(j - lo) * spec.len()..(j - lo + 1) * spec.len()];
                                for (o, c) in row.iter_mut().zip(&spec) {
                                    *o = (c.re * c.re + c.im * c.im) as f32;
                                }
                            }
                        }
                        Ok::<(), anyhow::Error>(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
            }
            Ok(())
        })?;
        Ok(out)
    };
    let one = best(a.reps, || run(1, false).map(drop))?;
    let many = best(a.reps, || run(a.threads, false).map(drop))?;
    let kept = run(1, true)?;
    let bytes: Vec<u8> = kept.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok((
        json!({"series": series, "length": len, "us_per_series_1t": one / series as f64 * 1e6,
               "seconds_1t": one, "seconds_nt": many}),
        bytes,
    ))
}

fn memcpy_figures(a: &Args) -> Result<Value> {
    let block = 20 << 20;
    let total = 1usize << 30;
    let src = vec![7u8; block];
    let mut dst = vec![0u8; block];
    let t = best(a.reps, || {
        for _ in 0..total / block {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        Ok(())
    })?;
    Ok(json!({"bytes": total, "gb_per_s_1t": total as f64 / t / 1e9}))
}

/// zstd at `level` over float32 spectra, in pieces of one `(N, 10, 10)` chunk as the engine writes them.
fn zstd_figures(a: &Args, power: &[u8], level: i32) -> Result<Value> {
    let piece = 400_000.min(power.len().max(1));
    let mut out_len = 0usize;
    let t = best(a.reps, || {
        out_len = 0;
        for p in power.chunks(piece) {
            out_len += zstd::bulk::compress(p, level)?.len();
        }
        Ok(())
    })?;
    Ok(
        json!({"level": level, "bytes": power.len(), "mb_per_s_1t": power.len() as f64 / t / 1e6,
              "ratio": out_len as f64 / power.len().max(1) as f64}),
    )
}

/// Writing `total` bytes as new files of `file` bytes each in a fresh directory under `dir`, as a sharded
/// 1 GB Zarr array is written (the page cache: what an output costs before any disk is involved). Each
/// repetition writes new files and deletes them afterwards; the first and the best are reported, since on a
/// VM the first touch of page-cache memory costs far more than rewriting freed pages.
/// Writing `total` bytes as new files of `piece`: buffered (`std::fs::write`, through the page cache) or with
/// the engine's direct-I/O writer (`arrayjob_engine::output::direct`, what power shards are written with).
fn write_figures(
    a: &Args,
    dir: &std::path::Path,
    piece: &[u8],
    total: usize,
    direct: bool,
) -> Result<Value> {
    let files = total.div_ceil(piece.len().max(1));
    let mut buf = PageBuf::default();
    buf.extend_from_slice(piece);
    let mut times = Vec::new();
    for rep in 0..a.reps.max(1) {
        let d = dir.join(format!(
            ".arrayjob-floor-write-{}-{rep}",
            std::process::id()
        ));
        std::fs::create_dir_all(&d)?;
        let t0 = Instant::now();
        for i in 0..files {
            let path = d.join(format!("{i}"));
            if direct {
                direct::write_file(&path, &buf)?;
            } else {
                std::fs::write(path, piece)?;
            }
        }
        times.push(t0.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&d)?;
    }
    let bytes = (files * piece.len()) as f64;
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(
        json!({"bytes": bytes, "files": files, "gb_per_s_first": bytes / times[0] / 1e9,
              "gb_per_s_best": bytes / best / 1e9}),
    )
}

fn main() -> Result<()> {
    let a = Args::parse();
    let files = (0..a.n)
        .map(|i| {
            let p = a.data.join(format!("slice_{i:05}.png"));
            std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let decode = decode_figures(&a, &files)?;
    let load = load_figures(&a)?;
    let series = a.window * a.window;
    let (fft, power) = fft_figures(&a, a.n, series)?;
    let memcpy = memcpy_figures(&a)?;
    // A slice's worth of spectra is plenty for a stable compression rate.
    let sample = &power[..power.len().min(200 << 20)];
    let zstd1 = zstd_figures(&a, sample, 1)?;
    let zstd_fast = zstd_figures(&a, sample, -3)?;
    let piece = &power[..power.len().min(20 << 20)];
    let write = write_figures(&a, &std::env::temp_dir(), piece, 1 << 30, false)?;
    let write_direct = write_figures(&a, &std::env::temp_dir(), piece, 1 << 30, true)?;
    let out = json!({"threads": a.threads, "n": a.n, "decode": decode, "load": load, "fft": fft, "memcpy": memcpy,
                     "zstd1": zstd1, "zstd_fast": zstd_fast, "write": write, "write_direct": write_direct});
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
