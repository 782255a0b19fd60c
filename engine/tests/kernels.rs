//! Tests of the compute kernels: reductions, recentering and spectra.

use arrayjob_engine::array::{Chunk, DType};
use arrayjob_engine::kernels::KernelError;
use arrayjob_engine::kernels::fft::spectrum;
use arrayjob_engine::kernels::recenter::{centroid, post_window, recenter_chunk};
use arrayjob_engine::kernels::reduce::{Partial, combine, finish, partial};
use arrayjob_engine::spec::ReduceKind;
use ndarray::{Array2, ArrayD, Axis, IxDyn, Slice};

const KINDS: [ReduceKind; 5] = [
    ReduceKind::Mean,
    ReduceKind::Sum,
    ReduceKind::Min,
    ReduceKind::Max,
    ReduceKind::Std,
];

fn f64s(c: &Chunk) -> (Vec<usize>, Vec<f64>) {
    (c.shape().to_vec(), c.to_f64().iter().copied().collect())
}

fn reduce(c: &Chunk, axes: &[usize], kind: ReduceKind) -> Chunk {
    finish(partial(c, axes, kind).expect("partial"), c.dtype())
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let scale = w.abs().max(1.0);
        assert!(
            (g - w).abs() <= tol * scale,
            "element {i}: got {g}, want {w} (all: {got:?})"
        );
    }
}

/// Deterministic pseudo-random values in [0, 1).
fn lcg(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

fn u8_chunk(shape: &[usize], v: Vec<u8>) -> Chunk {
    Chunk::U8(ArrayD::from_shape_vec(IxDyn(shape), v).expect("shape"))
}

#[test]
fn reduce_2d_hand_computed() {
    let c = u8_chunk(&[2, 3], vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(
        f64s(&reduce(&c, &[0], ReduceKind::Sum)),
        (vec![3], vec![5.0, 7.0, 9.0])
    );
    assert_eq!(
        f64s(&reduce(&c, &[1], ReduceKind::Sum)),
        (vec![2], vec![6.0, 15.0])
    );
    assert_eq!(
        f64s(&reduce(&c, &[1], ReduceKind::Mean)),
        (vec![2], vec![2.0, 5.0])
    );
    assert_eq!(
        f64s(&reduce(&c, &[0], ReduceKind::Mean)),
        (vec![3], vec![2.5, 3.5, 4.5])
    );
    let all = reduce(&c, &[0, 1], ReduceKind::Sum);
    assert_eq!(all.dtype(), DType::Float64);
    assert_eq!(f64s(&all), (vec![], vec![21.0]));
    assert_eq!(
        f64s(&reduce(&c, &[1, 0], ReduceKind::Mean)),
        (vec![], vec![3.5])
    );

    let mn = reduce(&c, &[0], ReduceKind::Min);
    assert_eq!(mn, u8_chunk(&[3], vec![1, 2, 3]));
    let mx = reduce(&c, &[1], ReduceKind::Max);
    assert_eq!(mx, u8_chunk(&[2], vec![3, 6]));
    assert_eq!(reduce(&c, &[0, 1], ReduceKind::Max), u8_chunk(&[], vec![6]));

    let (_, s1) = f64s(&reduce(&c, &[1], ReduceKind::Std));
    assert_close(&s1, &[(2.0f64 / 3.0).sqrt(), (2.0f64 / 3.0).sqrt()], 1e-15);
    let (_, s0) = f64s(&reduce(&c, &[0], ReduceKind::Std));
    assert_close(&s0, &[1.5, 1.5, 1.5], 1e-15);
    // std of 1..6 = sqrt(35/12)
    let (_, sa) = f64s(&reduce(&c, &[0, 1], ReduceKind::Std));
    assert_close(&sa, &[(35.0f64 / 12.0).sqrt()], 1e-15);
}

#[test]
fn reduce_3d_axis_sets() {
    // a[i, j, k] = 12 i + 4 j + k
    let v: Vec<f64> = (0..24).map(|x| x as f64).collect();
    let c = Chunk::F64(ArrayD::from_shape_vec(IxDyn(&[2, 3, 4]), v).expect("shape"));
    // sum over i, k: 8 elements, 4*(0+12) + 8*4j + 2*(0+1+2+3) = 60 + 32 j
    assert_eq!(
        f64s(&reduce(&c, &[0, 2], ReduceKind::Sum)),
        (vec![3], vec![60.0, 92.0, 124.0])
    );
    // sum over j: 36 i + 12 + 3 k
    assert_eq!(
        f64s(&reduce(&c, &[1], ReduceKind::Sum)),
        (
            vec![2, 4],
            vec![12.0, 15.0, 18.0, 21.0, 48.0, 51.0, 54.0, 57.0]
        )
    );
    // mean over i, j: 6 + 4 + k
    assert_eq!(
        f64s(&reduce(&c, &[0, 1], ReduceKind::Mean)),
        (vec![4], vec![10.0, 11.0, 12.0, 13.0])
    );
    // min / max over j, k: 12 i and 12 i + 11
    assert_eq!(
        f64s(&reduce(&c, &[1, 2], ReduceKind::Min)),
        (vec![2], vec![0.0, 12.0])
    );
    assert_eq!(
        f64s(&reduce(&c, &[2, 1], ReduceKind::Max)),
        (vec![2], vec![11.0, 23.0])
    );
    // std over i: values differ by 12 -> 6 everywhere; over k: std of 0..4 = sqrt(1.25)
    let (sh, s) = f64s(&reduce(&c, &[0], ReduceKind::Std));
    assert_eq!(sh, vec![3, 4]);
    assert_close(&s, &[6.0; 12], 1e-15);
    let (_, s) = f64s(&reduce(&c, &[2], ReduceKind::Std));
    assert_close(&s, &[1.25f64.sqrt(); 6], 1e-15);
    // no axes: identity (in f64)
    let (sh, s) = f64s(&reduce(&c, &[], ReduceKind::Sum));
    assert_eq!(sh, vec![2, 3, 4]);
    assert_eq!(s[23], 23.0);
    // min/max keep the input type
    let f =
        Chunk::F32(ArrayD::from_shape_vec(IxDyn(&[3]), vec![2.5f32, -1.25, 7.0]).expect("shape"));
    assert_eq!(
        reduce(&f, &[0], ReduceKind::Min),
        Chunk::F32(ArrayD::from_elem(IxDyn(&[]), -1.25))
    );
    let u = Chunk::U16(
        ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![65535u16, 3, 9, 40000]).expect("shape"),
    );
    assert_eq!(
        reduce(&u, &[0], ReduceKind::Max),
        Chunk::U16(ArrayD::from_shape_vec(IxDyn(&[2]), vec![65535, 40000]).expect("shape"))
    );
    assert_eq!(
        f64s(&reduce(&u, &[0, 1], ReduceKind::Sum)).1,
        vec![105547.0]
    );
    assert_eq!(
        f64s(&reduce(&u, &[0], ReduceKind::Sum)).1,
        vec![65544.0, 40003.0]
    );
    assert_eq!(
        f64s(&reduce(&u, &[0], ReduceKind::Mean)).1,
        vec![32772.0, 20001.5]
    );
}

#[test]
fn reduce_nan_propagates_through_min_max() {
    let f =
        Chunk::F64(ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.0, f64::NAN, 0.5]).expect("shape"));
    assert!(f64s(&reduce(&f, &[0], ReduceKind::Min)).1[0].is_nan());
    assert!(f64s(&reduce(&f, &[0], ReduceKind::Max)).1[0].is_nan());
}

#[test]
fn reduce_rejects_bad_axes() {
    let c = u8_chunk(&[2, 3], vec![0; 6]);
    let e = partial(&c, &[2], ReduceKind::Sum).expect_err("out of range");
    assert!(
        matches!(e, KernelError::InvalidArgument { name: "axes", .. }),
        "{e}"
    );
    let e = partial(&c, &[1, 1], ReduceKind::Sum).expect_err("duplicate");
    assert!(e.to_string().contains("axes"), "{e}");
    let a = partial(&c, &[0], ReduceKind::Sum).expect("partial");
    let b = partial(&c, &[1], ReduceKind::Sum).expect("partial");
    assert!(combine(a.clone(), &b).is_err(), "shapes differ");
    let m = partial(&c, &[0], ReduceKind::Max).expect("partial");
    assert!(combine(a, &m).is_err(), "kinds differ");
}

fn split(c: &ArrayD<f64>, axis: usize, at: usize) -> (ArrayD<f64>, ArrayD<f64>) {
    (
        c.slice_axis(Axis(axis), Slice::from(..at)).to_owned(),
        c.slice_axis(Axis(axis), Slice::from(at..)).to_owned(),
    )
}

#[test]
fn combined_partials_of_split_chunks_equal_the_whole() {
    let shape = [7, 5, 6];
    let vals: Vec<f64> = lcg(210, 7)
        .into_iter()
        .map(|v| (v * 1000.0).floor() - 300.0)
        .collect();
    let whole = ArrayD::from_shape_vec(IxDyn(&shape), vals).expect("shape");
    let cases: [(&[usize], usize, usize); 6] = [
        (&[0], 0, 3),
        (&[0, 2], 0, 4),
        (&[0, 2], 2, 1),
        (&[1], 1, 2),
        (&[0, 1, 2], 1, 3),
        (&[2], 2, 5),
    ];
    for (kind, dtype) in KINDS
        .iter()
        .flat_map(|&k| [(k, DType::Float32), (k, DType::Uint16)])
    {
        for (axes, split_axis, at) in cases {
            let to = |a: ArrayD<f64>| match dtype {
                DType::Uint16 => Chunk::U16(a.mapv(|v| (v + 300.0) as u16)),
                _ => Chunk::F32(a.mapv(|v| v as f32)),
            };
            let full = finish(partial(&to(whole.clone()), axes, kind).expect("p"), dtype);
            let (l, r) = split(&whole, split_axis, at);
            // three-way split: right part split again, combined in a different order
            let (r1, r2) = split(&r, split_axis, (shape[split_axis] - at) / 2);
            let pl = partial(&to(l), axes, kind).expect("p");
            let pr1 = partial(&to(r1), axes, kind).expect("p");
            let pr2 = partial(&to(r2), axes, kind).expect("p");
            let right = combine(pr2, &pr1).expect("combine");
            // through the byte encoding, as a spilled partial would go
            let right = Partial::from_bytes(&right.to_bytes()).expect("decode");
            let merged = combine(pl, &right).expect("combine");
            assert_eq!(
                merged.count() as usize,
                axes.iter().map(|&a| shape[a]).product::<usize>()
            );
            let got = finish(merged, dtype);
            let (gs, gv) = f64s(&got);
            let (fs, fv) = f64s(&full);
            assert_eq!(gs, fs, "{kind:?} {axes:?}");
            assert_eq!(got.dtype(), full.dtype());
            assert_close(&gv, &fv, 1e-12);
        }
    }
}

#[test]
fn partial_bytes_round_trip_and_reject_garbage() {
    let c = u8_chunk(&[2, 3], vec![1, 2, 3, 4, 5, 6]);
    for kind in KINDS {
        let p = partial(&c, &[0], kind).expect("partial");
        let b = p.to_bytes();
        assert!(
            b.len() <= p.nbytes() + 8 && b.len() + 8 >= p.nbytes(),
            "nbytes {} vs {}",
            p.nbytes(),
            b.len()
        );
        assert_eq!(Partial::from_bytes(&b).expect("decode"), p);
        assert!(matches!(
            Partial::from_bytes(&b[..b.len() - 1]),
            Err(KernelError::Decode { .. })
        ));
        let mut longer = b.clone();
        longer.push(0);
        assert!(Partial::from_bytes(&longer).is_err());
    }
    assert!(Partial::from_bytes(b"nope").is_err());
    assert!(Partial::from_bytes(&[]).is_err());
}

#[test]
fn reduce_large_u8_mean_axis0_and_slices() {
    let (n, h, w) = (5, 40, 3000);
    let v: Vec<u8> = (0..n * h * w).map(|i| (i * 7 % 251) as u8).collect();
    let c = u8_chunk(&[n, h, w], v.clone());
    let (_, m) = f64s(&reduce(&c, &[0], ReduceKind::Mean));
    for (idx, got) in m.iter().enumerate().step_by(997) {
        let want: f64 = (0..n).map(|s| v[s * h * w + idx] as f64).sum::<f64>() / n as f64;
        assert_eq!(*got, want);
    }
    let (_, m) = f64s(&reduce(&c, &[1, 2], ReduceKind::Mean));
    for (s, got) in m.iter().enumerate() {
        let want = v[s * h * w..(s + 1) * h * w]
            .iter()
            .map(|&x| x as u64)
            .sum::<u64>() as f64
            / (h * w) as f64;
        assert_eq!(*got, want);
    }
}

// ---------------------------------------------------------------- recenter

#[test]
fn centroid_of_hand_made_slices() {
    let mut a = Array2::<u8>::zeros((4, 5));
    a[[1, 3]] = 5;
    assert_eq!(centroid(a.view()), (1.0, 3.0));
    a[[3, 0]] = 15;
    // x = (1*5 + 3*15)/20 = 2.5, y = (3*5 + 0)/20 = 0.75
    assert_eq!(centroid(a.view()), (2.5, 0.75));
    assert_eq!(centroid(Array2::<u16>::zeros((3, 3)).view()), (0.0, 0.0));
    let f = Array2::from_shape_vec((2, 2), vec![0.5f32, 0.0, 0.0, 1.5]).expect("shape");
    assert_eq!(centroid(f.view()), (0.75, 0.75));
    let mut big = Array2::<u16>::from_elem((100, 200), 65535);
    big[[0, 0]] = 0;
    let (x, y) = centroid(big.view());
    let total = 65535.0 * 19999.0;
    assert_eq!(x, 65535.0 * (100.0 * 99.0 / 2.0 * 200.0) / total);
    assert_eq!(y, 65535.0 * (200.0 * 199.0 / 2.0 * 100.0) / total);
}

/// An (n, h, w) u8 chunk with one bright pixel per slice at the given positions.
fn dots(h: usize, w: usize, at: &[(usize, usize)]) -> Chunk {
    let mut a = ArrayD::<u8>::zeros(IxDyn(&[at.len(), h, w]));
    for (s, &(r, c)) in at.iter().enumerate() {
        a[[s, r, c]] = 200;
    }
    Chunk::U8(a)
}

/// Position of the bright pixel in each output slice.
fn found(c: &Chunk) -> Vec<(usize, usize)> {
    let a = c.to_f64();
    a.outer_iter()
        .map(|s| {
            let hits: Vec<(usize, usize)> = s
                .indexed_iter()
                .filter(|(_, v)| **v > 0.0)
                .map(|(i, _)| (i[0], i[1]))
                .collect();
            assert_eq!(hits.len(), 1, "one bright pixel expected, found {hits:?}");
            hits[0]
        })
        .collect()
}

#[test]
fn recenter_clamps_at_all_four_edges() {
    // 8x8 slices, the post's default window (H/2): centroid clamped to [2, 6], crop x-2..x+2
    let at = [(0, 0), (7, 7), (0, 7), (7, 0), (4, 3), (2, 6)];
    let c = dots(8, 8, &at);
    let (out, cents) = recenter_chunk(&c, [4, 4]).expect("recenter");
    assert_eq!(out.shape(), &[6, 4, 4]);
    assert_eq!(out.dtype(), DType::Uint8);
    let want_cents: Vec<(f64, f64)> = at.iter().map(|&(r, c)| (r as f64, c as f64)).collect();
    assert_eq!(cents, want_cents);
    // crop starts: (0,0) (4,4) (0,4) (4,0) (2,1) (0,4)
    assert_eq!(
        found(&out),
        vec![(0, 0), (3, 3), (0, 3), (3, 0), (2, 2), (2, 2)]
    );
}

#[test]
fn recenter_odd_window_and_truncation() {
    // 7x9 slice, window 3x5: rows clamp to [1, 5], cols to [2, 6]
    let c = dots(7, 9, &[(6, 0), (3, 4)]);
    let (out, _) = recenter_chunk(&c, [3, 5]).expect("recenter");
    assert_eq!(out.shape(), &[2, 3, 5]);
    // (6,0): x 6 -> 5, rows 4..7; y 0 -> 2, cols 0..5
    // (3,4): rows 2..5, cols 2..7
    assert_eq!(found(&out), vec![(2, 0), (1, 2)]);

    // centroid (2.75, 4.75) truncates to (2, 4): window 3x3 crops rows 1..4, cols 3..6
    let mut a = ArrayD::<u16>::zeros(IxDyn(&[1, 8, 8]));
    a[[0, 2, 4]] = 1;
    a[[0, 3, 5]] = 3;
    let (out, cents) = recenter_chunk(&Chunk::U16(a), [3, 3]).expect("recenter");
    assert_eq!(cents, vec![(2.75, 4.75)]);
    let o = out.to_f64();
    assert_eq!(o[[0, 1, 1]], 1.0);
    assert_eq!(o[[0, 2, 2]], 3.0);
    assert_eq!(o.sum(), 4.0);
}

#[test]
fn recenter_keeps_values_and_type_for_floats() {
    // 6x6 ramp a[r, c] = 10 r + c plus weight: centroid computed and crop values checked against the source
    let v: Vec<f32> = (0..36).map(|i| (10 * (i / 6) + i % 6) as f32).collect();
    let a = ArrayD::from_shape_vec(IxDyn(&[1, 6, 6]), v).expect("shape");
    let (cx, cy) = centroid(a.index_axis(Axis(0), 0).into_dimensionality().expect("2d"));
    let (out, cents) = recenter_chunk(&Chunk::F32(a.clone()), [3, 3]).expect("recenter");
    assert_eq!(cents, vec![(cx, cy)]);
    let (r0, c0) = ((cx as usize).clamp(1, 4) - 1, (cy as usize).clamp(1, 4) - 1);
    let Chunk::F32(o) = out else {
        panic!("type changed")
    };
    for r in 0..3 {
        for c in 0..3 {
            assert_eq!(o[[0, r, c]], a[[0, r0 + r, c0 + c]]);
        }
    }
}

#[test]
fn recenter_rejects_bad_windows() {
    let c = dots(8, 6, &[(1, 1)]);
    for win in [[9, 2], [2, 7], [0, 2]] {
        let e = recenter_chunk(&c, win).expect_err("bad window");
        assert!(
            matches!(e, KernelError::InvalidArgument { name: "window", .. }),
            "{e}"
        );
    }
    assert!(
        recenter_chunk(&c, [8, 6]).is_ok(),
        "a full-slice window is allowed"
    );
    let flat = u8_chunk(&[4, 4], vec![0; 16]);
    assert!(matches!(
        recenter_chunk(&flat, [2, 2]),
        Err(KernelError::InvalidArgument { name: "chunk", .. })
    ));
}

// ---------------------------------------------------------------- fft

fn series_chunk(v: &[f64]) -> Chunk {
    Chunk::F64(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).expect("shape"))
}

fn spec1(v: &[f64], power: bool, onesided: bool) -> Vec<f64> {
    let out = spectrum(&series_chunk(v), 0, power, onesided, DType::Float64).expect("spectrum");
    f64s(&out).1
}

/// Naive DFT power spectrum.
fn dft_power(x: &[f64]) -> Vec<f64> {
    let n = x.len();
    (0..n)
        .map(|k| {
            let (mut re, mut im) = (0.0, 0.0);
            for (t, v) in x.iter().enumerate() {
                let ang = -2.0 * std::f64::consts::PI * (k * t % n) as f64 / n as f64;
                re += v * ang.cos();
                im += v * ang.sin();
            }
            re * re + im * im
        })
        .collect()
}

#[test]
fn spectrum_of_impulse_and_constant() {
    assert_close(
        &spec1(&[1.0, 0.0, 0.0, 0.0, 0.0], true, false),
        &[1.0; 5],
        1e-12,
    );
    assert_close(&spec1(&[3.0, 0.0, 0.0, 0.0], false, true), &[3.0; 3], 1e-12);
    assert_close(
        &spec1(&[2.0; 4], true, false),
        &[64.0, 0.0, 0.0, 0.0],
        1e-12,
    );
    assert_close(
        &spec1(&[2.0; 4], false, false),
        &[8.0, 0.0, 0.0, 0.0],
        1e-12,
    );
    assert_close(&spec1(&[5.0], true, false), &[25.0], 1e-12);
}

#[test]
fn spectrum_of_a_cosine() {
    for (n, k, amp) in [(16usize, 3usize, 2.0f64), (15, 4, 1.5), (10, 5, 1.0)] {
        let x: Vec<f64> = (0..n)
            .map(|t| amp * (2.0 * std::f64::consts::PI * (k * t) as f64 / n as f64).cos())
            .collect();
        let p = spec1(&x, true, false);
        assert_eq!(p.len(), n);
        let peak = (n as f64 / 2.0).powi(2) * amp * amp;
        let mut want = vec![0.0; n];
        if 2 * k == n {
            want[k] = (n as f64 * amp).powi(2); // Nyquist: both halves land in one bin
        } else {
            want[k] = peak;
            want[n - k] = peak;
        }
        for (i, (g, w)) in p.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 1e-9 * peak, "n={n} bin {i}: {g} vs {w}");
        }
    }
}

#[test]
fn spectrum_onesided_is_the_first_half_of_full() {
    for n in [9usize, 10, 1, 2] {
        let x: Vec<f64> = lcg(n, n as u64).iter().map(|v| v * 10.0 - 3.0).collect();
        let full = spec1(&x, true, false);
        let half = spec1(&x, true, true);
        assert_eq!(half.len(), n / 2 + 1);
        assert_close(&half, &full[..n / 2 + 1], 1e-12);
        assert_close(&full, &dft_power(&x), 1e-9);
        let amp = spec1(&x, false, false);
        let sq: Vec<f64> = amp.iter().map(|a| a * a).collect();
        assert_close(&sq, &full, 1e-12);
    }
}

#[test]
fn spectrum_along_inner_axes_and_u8_input() {
    // (2, 8, 3) u8, transform along axis 1
    let v: Vec<u8> = lcg(48, 3).iter().map(|x| (x * 255.0) as u8).collect();
    let a = ArrayD::from_shape_vec(IxDyn(&[2, 8, 3]), v).expect("shape");
    let out = spectrum(&Chunk::U8(a.clone()), 1, true, false, DType::Float32).expect("spectrum");
    assert_eq!(out.dtype(), DType::Float32);
    assert_eq!(out.shape(), &[2, 8, 3]);
    let o = out.to_f64();
    for i in 0..2 {
        for j in 0..3 {
            let series: Vec<f64> = (0..8).map(|k| a[[i, k, j]] as f64).collect();
            let want = dft_power(&series);
            let got: Vec<f64> = (0..8).map(|k| o[[i, k, j]]).collect();
            assert_close(&got, &want, 1e-6);
        }
    }
    // last axis, onesided, odd length
    let out = spectrum(&Chunk::U8(a.clone()), 2, false, true, DType::Float64).expect("spectrum");
    assert_eq!(out.shape(), &[2, 8, 2]);
    let o = out.to_f64();
    let series: Vec<f64> = (0..3).map(|k| a[[1, 5, k]] as f64).collect();
    let want: Vec<f64> = dft_power(&series).iter().map(|p| p.sqrt()).collect();
    assert_close(&[o[[1, 5, 0]], o[[1, 5, 1]]], &want[..2], 1e-12);
    // axis 0 of a wide chunk (more series than one gather block)
    let v: Vec<u8> = lcg(6 * 10 * 10, 9)
        .iter()
        .map(|x| (x * 255.0) as u8)
        .collect();
    let b = ArrayD::from_shape_vec(IxDyn(&[6, 10, 10]), v).expect("shape");
    let o = spectrum(&Chunk::U8(b.clone()), 0, true, false, DType::Float64)
        .expect("spectrum")
        .to_f64();
    for (r, c) in [(0, 0), (9, 9), (6, 4)] {
        let series: Vec<f64> = (0..6).map(|k| b[[k, r, c]] as f64).collect();
        let got: Vec<f64> = (0..6).map(|k| o[[k, r, c]]).collect();
        assert_close(&got, &dft_power(&series), 1e-9);
    }
}

/// Every series of chunks whose lengths and series counts are not multiples of the kernel's tiles (8) nor of
/// its gather block (64), both one-sided and full, against the naive DFT.
#[test]
fn spectrum_every_series_of_ragged_shapes() {
    for (shape, axis) in [
        (vec![19usize, 9, 11], 0usize),
        (vec![16, 70], 0),
        (vec![2, 21, 13, 5], 1),
        (vec![3, 8, 8], 1),
        (vec![7, 1], 0),
    ] {
        let total: usize = shape.iter().product();
        let v: Vec<u8> = lcg(total, 17).iter().map(|x| (x * 255.0) as u8).collect();
        let a = ArrayD::from_shape_vec(IxDyn(&shape), v).expect("shape");
        let n = shape[axis];
        for onesided in [false, true] {
            let out = spectrum(&Chunk::U8(a.clone()), axis, true, onesided, DType::Float64)
                .expect("spectrum")
                .to_f64();
            let m = if onesided { n / 2 + 1 } else { n };
            assert_eq!(out.shape()[axis], m, "{shape:?} axis {axis}");
            let mut others = shape.clone();
            others[axis] = 1;
            for idx in arrayjob_engine::array::grid_indices(&others) {
                let at = |k: usize| {
                    let mut i = idx.clone();
                    i[axis] = k;
                    IxDyn(&i)
                };
                let series: Vec<f64> = (0..n).map(|k| f64::from(a[at(k)])).collect();
                let want = dft_power(&series);
                let got: Vec<f64> = (0..m).map(|k| out[at(k)]).collect();
                assert_close(&got, &want[..m], 1e-9);
            }
        }
    }
}

#[test]
fn spectrum_rejects_bad_arguments() {
    let c = series_chunk(&[1.0, 2.0]);
    assert!(matches!(
        spectrum(&c, 1, true, false, DType::Float32),
        Err(KernelError::InvalidArgument { name: "axis", .. })
    ));
    assert!(matches!(
        spectrum(&c, 0, true, false, DType::Uint8),
        Err(KernelError::InvalidArgument { name: "dtype", .. })
    ));
    let empty = Chunk::F64(ArrayD::zeros(IxDyn(&[0, 3])));
    assert!(spectrum(&empty, 0, true, false, DType::Float64).is_err());
    assert_eq!(
        spectrum(&empty, 1, true, true, DType::Float64)
            .expect("no series")
            .shape(),
        &[0, 2]
    );
}

#[test]
fn post_window_matches_bench_common() {
    assert_eq!(post_window(2000, 2000), [1000, 1000]);
    assert_eq!(post_window(1000, 800), [500, 400]);
    // H = 10: the post clamps to [2, 8] and crops x-2 .. x+2 (4 rows)
    assert_eq!(post_window(10, 7), [4, 2]);
    let c = dots(10, 7, &[(9, 6), (0, 0), (5, 3)]);
    let (out, _) = recenter_chunk(&c, post_window(10, 7)).expect("recenter");
    // (9, 6): x -> 8, rows 6..10; y: clamp [1, 6] -> 6, cols 5..7
    // (0, 0): rows 0..4, cols 0..2; (5, 3): rows 3..7, cols 2..4
    assert_eq!(found(&out), vec![(3, 1), (0, 0), (2, 1)]);
}
