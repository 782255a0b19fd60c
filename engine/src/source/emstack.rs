//! The synthetic stack recipe `emstack-v1` of `shared/bench/gen_data.py`, reproduced bit-exactly.
//!
//! Everything is integer arithmetic, as the recipe requires. Pixels outside the bright disc are 0 whatever the
//! texture is (their radial weight is 0), so only the disc's bounding box is generated: about a quarter of the
//! noise a full slice would need, with the same result.

/// Name of the recipe implemented here.
pub const RECIPE: &str = "emstack-v1";
/// Seed of the noise stream when the spec gives none.
pub const DEFAULT_SEED: u64 = 20_170_117;

/// Box-filter radius; the window is `2R + 1` wide.
const R: usize = 2;
/// Box-filter window width.
const K: usize = 2 * R + 1;
/// splitmix64 increment.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
/// Output rows generated per parallel task (each also computes `K - 1` rows of noise overlap).
const BAND_ROWS: usize = 64;

/// The splitmix64 finaliser.
#[inline]
pub fn mix(mut s: u64) -> u64 {
    s ^= s >> 30;
    s = s.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    s ^= s >> 27;
    s = s.wrapping_mul(0x94D0_49BB_1331_11EB);
    s ^ (s >> 31)
}

/// Top byte of output number `i` (0-based) of the splitmix64 stream seeded with `seed`.
pub fn noise_byte(seed: u64, i: u64) -> u8 {
    top_byte(mix(
        seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN))
    ))
}

#[inline]
fn top_byte(v: u64) -> u8 {
    // The shift leaves exactly 8 bits.
    (v >> 56) as u8
}

/// Triangle wave of period `2p`: `z mod 2p` folded back above `p`.
pub fn tri(z: u64, p: u64) -> u64 {
    let m = z % (2 * p);
    if m <= p { m } else { 2 * p - m }
}

/// Centre `(row, column)` of the bright disc of slice `z` in an `h` x `w` slice.
pub fn centre(z: u64, h: usize, w: usize) -> (usize, usize) {
    let (h, w) = (h as u64, w as u64);
    let cy = (3 * h) / 8 + ((h / 4) * tri(z, 250)) / 250;
    let cx = (3 * w) / 8 + ((w / 4) * tri(z, 1000)) / 1000;
    (cy as usize, cx as usize)
}

/// Global gain of slice `z` (192..=256).
pub fn gain(z: u64) -> u64 {
    192 + (64 * tri(z, 500)) / 500
}

/// Generates slice `z` of an `h` x `w` stack into `out` (row-major, `h * w` bytes).
///
/// # Panics
/// When `out.len() != h * w`, or `h` or `w` is not a positive multiple of 4 (callers validate the spec first).
pub fn generate_slice_into(z: u64, h: usize, w: usize, seed: u64, out: &mut [u8]) {
    assert!(
        h > 0 && w > 0 && h.is_multiple_of(4) && w.is_multiple_of(4),
        "emstack-v1 needs positive multiples of 4"
    );
    assert_eq!(out.len(), h * w, "output buffer size");
    out.fill(0);
    let (cy, cx) = centre(z, h, w);
    let rout = h.min(w) / 4;
    // Pixels with |y - cy| >= rout or |x - cx| >= rout have d2 >= rout^2, hence weight 0.
    let (ylo, yhi) = (cy.saturating_sub(rout - 1), (cy + rout).min(h));
    let (xlo, xhi) = (cx.saturating_sub(rout - 1), (cx + rout).min(w));
    if ylo >= yhi || xlo >= xhi {
        return;
    }
    let geo = Geometry {
        z,
        h,
        w,
        seed,
        cy,
        cx,
        xlo,
        xhi,
    };
    out[ylo * w..yhi * w]
        .chunks_mut(BAND_ROWS * w)
        .enumerate()
        .for_each(|(band, rows)| {
            geo.band(ylo + band * BAND_ROWS, rows);
        });
}

/// Generates slice `z` as a new `h * w` buffer; see [`generate_slice_into`].
pub fn generate_slice(z: u64, h: usize, w: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; h * w];
    generate_slice_into(z, h, w, seed, &mut out);
    out
}

/// What one band of rows needs to know about its slice.
struct Geometry {
    z: u64,
    h: usize,
    w: usize,
    seed: u64,
    cy: usize,
    cx: usize,
    /// Output columns `xlo..xhi` are generated; the others stay 0.
    xlo: usize,
    xhi: usize,
}

impl Geometry {
    /// Fills output rows `y0..` (`rows` holds whole rows) with running 5x5 box sums over a ring of noise rows.
    fn band(&self, y0: usize, rows: &mut [u8]) {
        let (h, w) = (self.h as u64, self.w as u64);
        let (ph, pw) = (h + 2 * R as u64, w + 2 * R as u64);
        let nrows = rows.len() / self.w;
        let ncols = self.xhi - self.xlo;
        let nb = ncols + K - 1;
        let rin = (3 * self.h.min(self.w) as i64) / 16;
        let rout = self.h.min(self.w) as i64 / 4;
        let (rin2, rout2) = (rin * rin, rout * rout);
        let g = gain(self.z) as i64;

        let mut ring = vec![0u8; K * nb];
        let mut colsum = vec![0u16; nb];
        for a_rel in 0..nrows + K - 1 {
            let slot = &mut ring[(a_rel % K) * nb..(a_rel % K + 1) * nb];
            if a_rel >= K {
                for (c, &n) in colsum.iter_mut().zip(slot.iter()) {
                    *c -= u16::from(n);
                }
            }
            // Padded noise row a, columns xlo.. : stream index (z * PH + a) * PW + b.
            let a = (y0 + a_rel) as u64;
            let first = (self.z * ph + a) * pw + self.xlo as u64;
            let mut s = self
                .seed
                .wrapping_add(first.wrapping_add(1).wrapping_mul(GOLDEN));
            for (c, n) in colsum.iter_mut().zip(slot.iter_mut()) {
                *n = top_byte(mix(s));
                *c += u16::from(*n);
                s = s.wrapping_add(GOLDEN);
            }
            if a_rel < K - 1 {
                continue;
            }
            let out_row = a_rel + 1 - K;
            let y = (y0 + out_row) as i64;
            let dy2 = (y - self.cy as i64).pow(2);
            let row = &mut rows[out_row * self.w + self.xlo..out_row * self.w + self.xhi];
            let mut sum: i64 = colsum[..K].iter().map(|&c| i64::from(c)).sum();
            for (x_rel, px) in row.iter_mut().enumerate() {
                let x = (self.xlo + x_rel) as i64;
                let d2 = dy2 + (x - self.cx as i64).pow(2);
                let b = if d2 <= rin2 {
                    256
                } else if d2 >= rout2 {
                    0
                } else {
                    ((rout2 - d2) * 256) / (rout2 - rin2)
                };
                let t = (((sum * 7) >> 6) - 208).clamp(1, 255);
                // At most (255 * 256 * 256) >> 16 = 255.
                *px = ((t * b * g) >> 16) as u8;
                if x_rel + K < nb {
                    sum += i64::from(colsum[x_rel + K]) - i64::from(colsum[x_rel]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straight transcription of the recipe over the whole slice, to check the bounding-box shortcut.
    fn reference(z: u64, h: usize, w: usize, seed: u64) -> Vec<u8> {
        let (ph, pw) = (h + 2 * R, w + 2 * R);
        let n: Vec<i64> = (0..ph * pw)
            .map(|i| i64::from(noise_byte(seed, (z as usize * ph * pw + i) as u64)))
            .collect();
        let (cy, cx) = centre(z, h, w);
        let rin = (3 * h.min(w) as i64) / 16;
        let rout = h.min(w) as i64 / 4;
        let mut out = vec![0u8; h * w];
        for y in 0..h {
            for x in 0..w {
                let s: i64 = (0..K)
                    .flat_map(|i| (0..K).map(move |j| (i, j)))
                    .map(|(i, j)| n[(y + i) * pw + x + j])
                    .sum();
                let t = (((s * 7) >> 6) - 208).clamp(1, 255);
                let d2 = (y as i64 - cy as i64).pow(2) + (x as i64 - cx as i64).pow(2);
                let b = if d2 <= rin * rin {
                    256
                } else if d2 >= rout * rout {
                    0
                } else {
                    ((rout * rout - d2) * 256) / (rout * rout - rin * rin)
                };
                out[y * w + x] = ((t * b * gain(z) as i64) >> 16) as u8;
            }
        }
        out
    }

    #[test]
    fn matches_direct_transcription() {
        for &(z, h, w) in &[
            (0, 8, 8),
            (3, 24, 40),
            (137, 200, 136),
            (999, 132, 260),
            (77, 4, 4),
        ] {
            assert_eq!(
                generate_slice(z, h, w, 7),
                reference(z, h, w, 7),
                "z={z} {h}x{w}"
            );
        }
    }

    #[test]
    fn triangle_wave() {
        assert_eq!(
            (
                tri(0, 250),
                tri(250, 250),
                tri(251, 250),
                tri(500, 250),
                tri(501, 250)
            ),
            (0, 250, 249, 0, 1)
        );
    }
}
