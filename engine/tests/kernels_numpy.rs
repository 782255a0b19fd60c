//! Kernels against NumPy as the oracle: the same uint8 stack is reduced, recentered (the post's code) and
//! transformed by NumPy in the test venv and by the kernels here.

use std::path::Path;
use std::process::Command;

use arrayjob_engine::array::{Chunk, DType};
use arrayjob_engine::kernels::fft::spectrum;
use arrayjob_engine::kernels::recenter::{post_window, recenter_chunk};
use arrayjob_engine::kernels::reduce::{finish, partial};
use arrayjob_engine::spec::ReduceKind;
use ndarray::{ArrayD, IxDyn};

mod common;
use common::python;

const SHAPE: [usize; 3] = [12, 40, 48];

/// The post's functions (bench_common.py) in plain NumPy, plus the reductions and the FFT of the workflow.
const ORACLE: &str = r#"
import sys
import numpy as np
d = sys.argv[1]
a = np.fromfile(d + '/a.u8', dtype=np.uint8).reshape(12, 40, 48)

def centroid(im):
    im = im.astype(np.int64)
    n, m = im.shape
    total = int(im.sum())
    total_x = int((np.arange(n)[:, None] * im).sum())
    total_y = int((np.arange(m)[None, :] * im).sum())
    if total > 0:
        return total_x / total, total_y / total
    return float(total_x), float(total_y)

def recenter(im):
    H, W = im.shape[-2], im.shape[-1]
    hh, hw = H // 4, W // 4
    x, y = centroid(im.squeeze())
    x, y = int(x), int(y)
    if x < hh: x = hh
    if y < hw: y = hw
    if x > H - hh: x = H - hh
    if y > W - hw: y = W - hw
    return im[..., x - hh:x + hh, y - hw:y + hw]

np.stack([recenter(a[i]) for i in range(a.shape[0])]).tofile(d + '/recentered.u8')
np.array([centroid(a[i]) for i in range(a.shape[0])], np.float64).tofile(d + '/centroids.f64')
a.mean(axis=0).astype(np.float64).tofile(d + '/mean0.f64')
a.mean(axis=(1, 2)).astype(np.float64).tofile(d + '/mean12.f64')
a.std(axis=(1, 2)).astype(np.float64).tofile(d + '/std12.f64')
a.std(axis=0).astype(np.float64).tofile(d + '/std0.f64')
a.min(axis=(0, 2)).tofile(d + '/min02.u8')
a.max(axis=1).tofile(d + '/max1.u8')
abs(np.fft.fft(a, axis=0) ** 2).astype('float32').tofile(d + '/power.f32')
np.abs(np.fft.rfft(a, axis=2)).tofile(d + '/amp_rfft2.f64')
"#;

/// A drifting bright blob on noise, like the synthetic EM stack.
fn stack() -> Vec<u8> {
    let [n, h, w] = SHAPE;
    let mut s = 12345u64;
    let mut out = Vec::with_capacity(n * h * w);
    for t in 0..n {
        let (cr, cc) = (8.0 + 2.0 * t as f64, 30.0 - 1.5 * t as f64);
        for r in 0..h {
            for c in 0..w {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = (s >> 59) as f64;
                let d2 = (r as f64 - cr).powi(2) + (c as f64 - cc).powi(2);
                out.push((noise + 200.0 * (-d2 / 30.0).exp()).min(255.0) as u8);
            }
        }
    }
    out
}

fn read_f64(p: &Path) -> Vec<f64> {
    std::fs::read(p)
        .expect("oracle output")
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect()
}

fn vals(c: &Chunk) -> Vec<f64> {
    c.to_f64().iter().copied().collect()
}

fn close(got: &[f64], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * w.abs().max(1.0),
            "{what}[{i}]: got {g}, NumPy {w}"
        );
    }
}

#[test]
fn kernels_match_numpy_on_a_drifting_blob() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let data = stack();
    std::fs::write(d.join("a.u8"), &data).expect("write input");
    let out = Command::new(python())
        .arg("-c")
        .arg(ORACLE)
        .arg(d)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = Chunk::U8(ArrayD::from_shape_vec(IxDyn(&SHAPE), data).expect("shape"));
    let red =
        |axes: &[usize], kind| finish(partial(&c, axes, kind).expect("partial"), DType::Uint8);

    // reductions: sums of integers are exact, so means agree exactly
    assert_eq!(
        vals(&red(&[0], ReduceKind::Mean)),
        read_f64(&d.join("mean0.f64"))
    );
    assert_eq!(
        vals(&red(&[1, 2], ReduceKind::Mean)),
        read_f64(&d.join("mean12.f64"))
    );
    close(
        &vals(&red(&[1, 2], ReduceKind::Std)),
        &read_f64(&d.join("std12.f64")),
        1e-12,
        "std12",
    );
    close(
        &vals(&red(&[0], ReduceKind::Std)),
        &read_f64(&d.join("std0.f64")),
        1e-12,
        "std0",
    );
    let min02 = std::fs::read(d.join("min02.u8")).expect("min02");
    assert_eq!(
        red(&[0, 2], ReduceKind::Min),
        Chunk::U8(ArrayD::from_shape_vec(IxDyn(&[40]), min02).expect("shape"))
    );
    let max1 = std::fs::read(d.join("max1.u8")).expect("max1");
    assert_eq!(
        red(&[1], ReduceKind::Max),
        Chunk::U8(ArrayD::from_shape_vec(IxDyn(&[12, 48]), max1).expect("shape"))
    );

    // recentering with the post's default window (half the slice)
    let (rec, cents) = recenter_chunk(&c, post_window(40, 48)).expect("recenter");
    let want = std::fs::read(d.join("recentered.u8")).expect("recentered");
    assert_eq!(
        rec,
        Chunk::U8(ArrayD::from_shape_vec(IxDyn(&[12, 20, 24]), want).expect("shape"))
    );
    let flat: Vec<f64> = cents.iter().flat_map(|&(x, y)| [x, y]).collect();
    assert_eq!(flat, read_f64(&d.join("centroids.f64")));
    // the blob moves, so the crops differ: the test is not trivially satisfied by clamping
    assert!(
        cents[0].0 < cents[11].0 && cents[0].1 > cents[11].1,
        "{cents:?}"
    );

    // power spectrum along axis 0 as float32, like the post
    let p = spectrum(&c, 0, true, false, DType::Float32).expect("spectrum");
    let want: Vec<f64> = std::fs::read(d.join("power.f32"))
        .expect("power")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)
        .collect();
    close(&vals(&p), &want, 1e-6, "power");
    let amp = spectrum(&c, 2, false, true, DType::Float64).expect("spectrum");
    assert_eq!(amp.shape(), &[12, 40, 25]);
    close(
        &vals(&amp),
        &read_f64(&d.join("amp_rfft2.f64")),
        1e-10,
        "rfft amplitude",
    );
}
