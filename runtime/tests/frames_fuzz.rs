//! Property tests of the runtime's readers of peer answers: [`FrameReader`] (a `/v1/fetch` body or an exchange
//! object, in pieces split anywhere) and [`read_frames`] (an upgraded connection). For any bytes they answer
//! values or an error, never panic, and never allocate more than the frames' bytes that arrived plus the one
//! buffer a chunk header may reserve up front (64 MiB): a header announcing terabytes is refused or costs
//! nothing until its bytes come. The largest allocation is measured by the engine's counting allocator.
//!
//! The seed corpus is the engine's (`engine/tests/fixtures/corpus/frame/`), as length-prefixed answers, then
//! mutations of real answers. `PROPTEST_CASES` sets the generated cases (default [`DEFAULT_CASES`]).

#[path = "../../engine/tests/counting_alloc/mod.rs"]
mod counting_alloc;

use std::path::Path;
use std::sync::Arc;

use arrayjob_engine::array::Chunk;
use arrayjob_engine::data::Data;
use arrayjob_runtime::protocol::{FrameReader, answer_parts, read_frames};
use counting_alloc::{Counting, largest_allocation, serial};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

#[global_allocator]
static ALLOC: Counting = Counting;

/// Generated cases per property when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 512;
/// What one chunk header may reserve before its bytes arrive (`frame::PayloadFill`), plus headers and slack.
const FIRST_ROOM: usize = (64 << 20) + (1 << 20);

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/proptest-regressions/frames_fuzz.txt"
        )))),
        ..Config::default()
    }
}

/// A fetch answer of a few values: chunks of every type (one larger than a network piece), a partial, an empty
/// chunk.
fn answer() -> (Vec<Data>, Vec<u8>) {
    use arrayjob_engine::kernels::reduce;
    use arrayjob_engine::spec::ReduceKind;
    let src = Chunk::U16(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[2, 3]), 9));
    let values = vec![
        Data::Chunk(Chunk::F32(ndarray::ArrayD::from_shape_fn(
            ndarray::IxDyn(&[20, 300]),
            |ix| (ix[0] * 300 + ix[1]) as f32,
        ))),
        Data::Partial(reduce::partial(&src, &[0], ReduceKind::Std).expect("partial")),
        Data::Chunk(Chunk::U8(ndarray::ArrayD::from_elem(
            ndarray::IxDyn(&[0, 4]),
            1,
        ))),
        Data::Chunk(Chunk::F64(ndarray::ArrayD::from_elem(
            ndarray::IxDyn(&[3]),
            0.5,
        ))),
    ];
    let mut bytes = Vec::new();
    for d in &values {
        for part in answer_parts(&Arc::new(d.clone())) {
            bytes.extend_from_slice(&part);
        }
    }
    (values, bytes)
}

/// The corpus frames, each with its length prefix.
fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/corpus/frame");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let frame = std::fs::read(p).expect("frame");
            let mut out = (frame.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(&frame);
            out
        })
        .collect()
}

/// Feeds `bytes` to a [`FrameReader`] in pieces of the given sizes (cycled), then to [`read_frames`]; checks the
/// largest allocation of each against the bytes given.
fn readers_case(bytes: &[u8], pieces: &[usize], frames: usize) -> Result<(), TestCaseError> {
    let bound = FIRST_ROOM + 2 * bytes.len();
    let (_, largest) = largest_allocation(|| {
        let mut r = FrameReader::expecting(frames);
        let (mut at, mut k) = (0, 0);
        while at < bytes.len() {
            let n = pieces[k % pieces.len()].clamp(1, bytes.len() - at);
            if r.push(&bytes[at..at + n]).is_err() {
                return;
            }
            at += n;
            k += 1;
        }
        let _ = r.finish();
    });
    prop_assert!(
        largest <= bound,
        "FrameReader: {largest} bytes allocated, bound {bound}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (_, largest) = largest_allocation(|| rt.block_on(read_frames(&mut &bytes[..], frames)));
    prop_assert!(
        largest <= bound,
        "read_frames: {largest} bytes allocated, bound {bound}"
    );
    Ok(())
}

/// Runs `test` on the configured number of cases of `strategy` (after the saved regressions), as the only test
/// of the binary running; panics with the smallest failing input found.
fn check<S>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let _one = serial();
    let mut runner = proptest::test_runner::TestRunner::new(config());
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

#[test]
fn corpus_answers_are_refused_within_bounds() {
    let _one = serial();
    for bytes in corpus() {
        readers_case(&bytes, &[7, 4096], 1).expect("corpus frame");
    }
}

#[test]
fn an_honest_answer_reads_back_and_a_header_claiming_a_tebibyte_allocates_nothing_for_it() {
    let _one = serial();
    let (values, bytes) = answer();
    let mut r = FrameReader::expecting(values.len());
    r.push(&bytes).expect("push");
    assert_eq!(r.finish().expect("finish"), values);
    // A u8 chunk of 2^20 x 2^20 announced, 8 bytes sent: refused (past the 16 GiB limit) before any room.
    let mut frame = b"AJCF\x01\x00\x02\x00".to_vec();
    for n in [1u64 << 20, 1 << 20, 1 << 40] {
        frame.extend_from_slice(&n.to_le_bytes());
    }
    let mut lying = ((frame.len() + (1 << 40) + 4) as u64)
        .to_le_bytes()
        .to_vec();
    lying.extend_from_slice(&frame);
    lying.extend_from_slice(&[0; 8]);
    let (err, largest) = largest_allocation(|| {
        let mut r = FrameReader::default();
        r.push(&lying).expect_err("refused").to_string()
    });
    assert!(
        err.contains("is more than the limit of 17179869460 bytes"),
        "{err}"
    );
    assert!(largest < 1 << 20, "{largest} bytes allocated");
    // 1 GiB announced (within the limit), 8 bytes sent: at most the first room is reserved, then the end.
    let mut frame = b"AJCF\x01\x00\x01\x00".to_vec();
    for n in [1u64 << 30, 1 << 30] {
        frame.extend_from_slice(&n.to_le_bytes());
    }
    let mut short = ((frame.len() + (1 << 30) + 4) as u64)
        .to_le_bytes()
        .to_vec();
    short.extend_from_slice(&frame);
    short.extend_from_slice(&[0; 8]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (err, largest) = largest_allocation(|| {
        rt.block_on(read_frames(&mut short.as_slice(), 1))
            .expect_err("cut")
            .to_string()
    });
    assert!(
        err.contains("frame 1 of 1: the fetch answer ended inside a frame"),
        "{err}"
    );
    assert!(largest <= FIRST_ROOM, "{largest} bytes allocated");
    // More frames than asked for.
    let mut r = FrameReader::expecting(1);
    let err = r.push(&bytes).expect_err("too many").to_string();
    assert!(err.contains("more than the 1 frame(s) asked for"), "{err}");
}

#[test]
fn mutated_answers() {
    let edits = prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u64>()), 1..5);
    let pieces = prop::collection::vec(1usize..5000, 1..4);
    check((edits, pieces), |(edits, pieces)| {
        let (values, mut bytes) = answer();
        for (at, kind, v) in edits {
            let i = at.index(bytes.len().max(1));
            match kind {
                0 => {
                    if let Some(b) = bytes.get_mut(i) {
                        *b ^= (v as u8) | 1;
                    }
                }
                1 => bytes.truncate(i),
                // A length prefix, extent or payload length replaced by a hostile u64.
                _ => {
                    let v = [v, u64::MAX, 1 << 40, u64::MAX - 40][(v % 4) as usize].to_le_bytes();
                    for (k, b) in v.iter().enumerate() {
                        if let Some(x) = bytes.get_mut(i + k) {
                            *x = *b;
                        }
                    }
                }
            }
        }
        readers_case(&bytes, &pieces, values.len())
    });
}

#[test]
fn random_bytes() {
    let bytes = prop::collection::vec(any::<u8>(), 0..2000);
    let pieces = prop::collection::vec(1usize..300, 1..4);
    check((bytes, pieces), |(bytes, pieces)| {
        readers_case(&bytes, &pieces, 4)
    });
}
