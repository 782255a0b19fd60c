//! Property tests of every reader of outside bytes in the engine: the manifest (YAML -> spec -> validate ->
//! plan, offline), PNG headers, TIFF directories, Zarr metadata (`zarr.json`, `.zarray`, OME `.zattrs`) and chunk
//! frames. For any input each reader must answer a value or an error, never panic, and never make an allocation
//! larger than the limit it states: the test binary runs under a counting allocator ([`counting_alloc`]) that
//! records the largest single allocation made while a reader runs, and each property bounds it.
//!
//! The committed corpus (`tests/fixtures/corpus/<reader>/`: hostile files found or written by hand) runs first,
//! then generated cases: structured ones (a valid layout with hostile numbers in every field) and mutations of
//! the corpus. `PROPTEST_CASES` sets the number of generated cases per property (default: [`DEFAULT_CASES`],
//! about 15 s for all of them in release); failures are kept in `tests/proptest-regressions/fuzz.txt` and run
//! first next time.

mod counting_alloc;

use std::path::{Path, PathBuf};

use arrayjob_engine::array::DType;
use arrayjob_engine::frame;
use arrayjob_engine::source::decode::{SliceStack, decode_into, probe};
use arrayjob_engine::source::limits;
use arrayjob_engine::spec::SourceSpec;
use counting_alloc::{Counting, largest_allocation, serial};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

#[global_allocator]
static ALLOC: Counting = Counting;

/// Generated cases per property when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 256;
/// Largest allocation any reader may make for the small inputs generated here, beyond what the input declares
/// and the limits allow it (the slice or chunk it decodes into, which the properties add): zlib windows, row
/// buffers, a TIFF tag's values (at most `MAX_TIFF_TAG_BYTES`), a Zarr document (at most
/// `MAX_METADATA_BYTES`).
const OVERHEAD: usize = 64 << 20;
/// A decoded slice or chunk larger than this is not read (probing and planning still are): reading it would
/// allocate it, as it should.
const READ_AT_MOST: u64 = 16 << 20;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/proptest-regressions/fuzz.txt"
        )))),
        ..Config::default()
    }
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

/// The committed hostile inputs of one reader, read while this test is the only one running.
fn corpus_of(reader: &str) -> (std::sync::MutexGuard<'static, ()>, Vec<(PathBuf, Vec<u8>)>) {
    (serial(), corpus(reader))
}

/// The committed hostile inputs of one reader.
fn corpus(reader: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/corpus")
        .join(reader);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("corpus file");
            (p, bytes)
        })
        .collect()
}

/// Numbers as a hostile header or manifest holds them: small, at the limits and one past, huge.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..70,
        2 => prop::sample::select(vec![
            limits::MAX_SLICE_SIDE as u64,
            limits::MAX_SLICE_SIDE as u64 + 1,
            limits::MAX_SLICES,
            limits::MAX_SLICES + 1,
            1_000_000,
            u32::MAX as u64,
            1 << 32,
            1 << 40,
            1_000_000_000_000,
            i64::MAX as u64,
            u64::MAX,
        ]),
        1 => any::<u64>(),
    ]
}

/// Flips, overwrites, cuts or extends `bytes` at positions chosen by `edits`.
fn mutate(mut bytes: Vec<u8>, edits: &[(u32, u8, u8)]) -> Vec<u8> {
    for &(at, kind, value) in edits {
        if bytes.is_empty() {
            bytes.push(value);
            continue;
        }
        let i = at as usize % bytes.len();
        match kind % 6 {
            0 => bytes[i] ^= value | 1,
            1 => bytes[i] = value,
            2 => bytes.truncate(i),
            3 => bytes.insert(i, value),
            // An 8-byte field set to a hostile value (a length, an extent, an offset).
            4 => {
                let v = [u64::MAX, 1 << 40, u32::MAX as u64, 0][value as usize % 4].to_le_bytes();
                for (k, b) in v.iter().enumerate() {
                    if let Some(x) = bytes.get_mut(i + k) {
                        *x = *b;
                    }
                }
            }
            _ => {
                let v = [0xff, 0x7f, 0, 0x80][value as usize % 4];
                for x in bytes.iter_mut().skip(i).take(4) {
                    *x = v;
                }
            }
        }
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<(u32, u8, u8)>> {
    prop::collection::vec(any::<(u32, u8, u8)>(), 1..6)
}

fn check_bound(what: &str, largest: usize, bound: usize) -> Result<(), TestCaseError> {
    prop_assert!(
        largest <= bound,
        "{what}: an allocation of {largest} bytes, more than the bound of {bound}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Images given to the files/http/s3 sources (PNG, single-page TIFF, JPEG through the `image` crate)

/// Probes `bytes` as slice 0, and decodes it when it is small; the largest allocation meanwhile.
fn image_case(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (result, largest) = largest_allocation(|| {
        let info = probe(bytes, 0, "fuzz.img")?;
        assert!(info.height <= limits::MAX_SLICE_SIDE && info.width <= limits::MAX_SLICE_SIDE);
        let size = (info.height * info.width * info.dtype.size()) as u64;
        if size > READ_AT_MOST {
            return Ok(size);
        }
        let mut stack = SliceStack::new(0, 1, info)?;
        decode_into(bytes, 0, "fuzz.img", info, "slice 0", stack.slot(0))?;
        Ok::<u64, arrayjob_engine::source::SourceError>(size)
    });
    let decoded = result.as_ref().map_or(0, |&s| s.min(READ_AT_MOST)) as usize;
    check_bound("image", largest, OVERHEAD + decoded)
}

/// A PNG with the IHDR fields given and `data` as its (zlib) image data.
fn png(w: u32, h: u32, depth: u8, colour: u8, interlace: u8, data: &[u8]) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], body: &[u8]) {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        let crc = crc32c_png(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, colour, 0, 0, interlace]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", data);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// The CRC-32 of PNG chunks (ISO 3309).
fn crc32c_png(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn image_corpus() {
    let (_one, files) = corpus_of("image");
    for (path, bytes) in files {
        image_case(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn png_headers_with_hostile_fields() {
    check(
        (
            number(),
            number(),
            prop::sample::select(vec![1u8, 2, 4, 8, 16, 0, 3, 32]),
            prop::sample::select(vec![0u8, 2, 3, 4, 6, 1, 7]),
            0u8..3,
            prop::collection::vec(any::<u8>(), 0..200),
        ),
        |(w, h, depth, colour, interlace, data)| {
            image_case(&png(w as u32, h as u32, depth, colour, interlace, &data))?;
            Ok(())
        },
    );
}

#[test]
fn mutated_images() {
    check((any::<prop::sample::Index>(), edits()), |(pick, e)| {
        let all = corpus("image");
        let (_, bytes) = &all[pick.index(all.len())];
        image_case(&mutate(bytes.clone(), &e))?;
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------------------------
// TIFF stacks (the `tiff` source: directory chain, page headers, strips)

/// Opens `bytes` as a `tiff` source, reads slice 0's header and, when small, the first two slices.
fn tiff_case(bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("s.tif"), bytes).expect("write");
    let spec: SourceSpec = serde_yaml::from_str("{tiff: {path: s.tif}}").expect("spec");
    let (result, largest) = largest_allocation(|| {
        let src = arrayjob_engine::source::open(&spec, dir.path())?;
        let info = src.slice_info()?;
        let end = src.len().min(2);
        let size = (end * info.height * info.width * info.dtype.size()) as u64;
        if size <= READ_AT_MOST {
            src.read(0, end)?;
        }
        Ok::<u64, arrayjob_engine::source::SourceError>(size.min(READ_AT_MOST))
    });
    let decoded = result.as_ref().map_or(0, |&s| s) as usize;
    check_bound("tiff", largest, OVERHEAD + decoded)?;
    // The same bytes as one slice of a files source.
    image_case(bytes)
}

/// A TIFF (classic or BigTIFF, little- or big-endian) of the given directory entries `(tag, type, count,
/// value)`, chained `pages` times, followed by `tail`.
fn tiff(
    big: bool,
    little: bool,
    pages: usize,
    entries: &[(u16, u16, u64, u64)],
    tail: &[u8],
) -> Vec<u8> {
    let mut out = if little {
        b"II".to_vec()
    } else {
        b"MM".to_vec()
    };
    let put = |out: &mut Vec<u8>, n: u64, size: usize| {
        let le = n.to_le_bytes();
        if little {
            out.extend_from_slice(&le[..size]);
        } else {
            out.extend(le[..size].iter().rev());
        }
    };
    let (count_size, field, entry) = if big { (8, 8, 20) } else { (2, 4, 12) };
    if big {
        put(&mut out, 43, 2);
        put(&mut out, 8, 2);
        put(&mut out, 0, 2);
        put(&mut out, 16, 8);
    } else {
        put(&mut out, 42, 2);
        put(&mut out, 8, 4);
    }
    let ifd_len = (count_size + entries.len() * entry + field) as u64;
    for p in 0..pages {
        let here = out.len() as u64;
        put(&mut out, entries.len() as u64, count_size);
        for &(tag, kind, count, value) in entries {
            put(&mut out, u64::from(tag), 2);
            put(&mut out, u64::from(kind), 2);
            put(&mut out, count, field);
            put(&mut out, value, field);
        }
        let next = if p + 1 < pages { here + ifd_len } else { 0 };
        put(&mut out, next, field);
    }
    out.extend_from_slice(tail);
    out
}

fn tiff_entry() -> impl Strategy<Value = (u16, u16, u64, u64)> {
    (
        prop::sample::select(vec![
            256u16, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325, 338, 339,
            999,
        ]),
        prop_oneof![3 => prop::sample::select(vec![3u16, 4, 16]), 1 => 0u16..20],
        prop_oneof![3 => Just(1u64), 1 => number()],
        number(),
    )
}

#[test]
fn tiff_corpus() {
    let (_one, files) = corpus_of("tiff");
    for (path, bytes) in files {
        tiff_case(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn tiff_directories_with_hostile_fields() {
    check(
        (
            any::<bool>(),
            any::<bool>(),
            1usize..4,
            prop::collection::vec(tiff_entry(), 0..14),
            prop::collection::vec(any::<u8>(), 0..300),
        ),
        |(big, little, pages, entries, tail)| {
            tiff_case(&tiff(big, little, pages, &entries, &tail))?;
            Ok(())
        },
    );
}

#[test]
fn mutated_tiffs() {
    check((any::<prop::sample::Index>(), edits()), |(pick, e)| {
        let all = corpus("tiff");
        let (_, bytes) = &all[pick.index(all.len())];
        tiff_case(&mutate(bytes.clone(), &e))?;
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------------------------
// Zarr arrays and OME-Zarr images (metadata documents; a chunk of random bytes)

/// Writes `files` (relative path -> bytes) under a `img.zarr` directory, opens it as a `zarr` source (at
/// `level` when set), and reads its first slices when they are small.
fn zarr_case(files: &[(String, Vec<u8>)], level: Option<u64>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("img.zarr");
    for (rel, bytes) in files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
        std::fs::write(&p, bytes).expect("write");
    }
    let level = level.map_or(String::new(), |l| format!(", level: {l}"));
    let Ok(spec) =
        serde_yaml::from_str::<SourceSpec>(&format!("{{zarr: {{path: img.zarr{level}}}}}"))
    else {
        return Ok(());
    };
    let (result, largest) = largest_allocation(|| {
        let src = arrayjob_engine::source::open(&spec, dir.path())?;
        let _ = (src.describe(), src.chunk_depth());
        let info = src.slice_info()?;
        let end = src.len().min(2);
        let size = (end * info.height * info.width * 8) as u64;
        if size <= READ_AT_MOST && zarr_chunk_small(&root) {
            src.read(0, end)?;
        }
        Ok::<(), arrayjob_engine::source::SourceError>(())
    });
    let _ = result;
    check_bound("zarr", largest, OVERHEAD + 2 * READ_AT_MOST as usize)
}

/// Whether the array's chunks (as its metadata declares them, outer or inner) are small enough to decode here.
fn zarr_chunk_small(root: &Path) -> bool {
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(root.join(name)).ok()?).ok()
    };
    let shapes: Vec<serde_json::Value> = match (read("zarr.json"), read(".zarray")) {
        (Some(m), _) => {
            let mut v = vec![m.pointer("/chunk_grid/configuration/chunk_shape").cloned()];
            v.extend(
                m.get("codecs")
                    .and_then(|c| c.as_array())
                    .into_iter()
                    .flatten()
                    .map(|c| c.pointer("/configuration/chunk_shape").cloned()),
            );
            v.into_iter().flatten().collect()
        }
        (None, Some(m)) => m.get("chunks").cloned().into_iter().collect(),
        _ => return true,
    };
    shapes.iter().all(|s| {
        s.as_array().is_some_and(|dims| {
            dims.iter()
                .try_fold(8u64, |a, d| a.checked_mul(d.as_u64()?))
                .is_some_and(|b| b <= READ_AT_MOST)
        })
    })
}

fn json_number() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        6 => number().prop_map(serde_json::Value::from),
        1 => Just(serde_json::json!(-1)),
        1 => Just(serde_json::json!(1.5)),
        1 => Just(serde_json::json!("4")),
        1 => Just(serde_json::Value::Null),
    ]
}

fn zarr_shape() -> impl Strategy<Value = Vec<serde_json::Value>> {
    prop_oneof![
        6 => prop::collection::vec(json_number(), 3..=3),
        1 => prop::collection::vec(json_number(), 0..6),
    ]
}

/// A Zarr v3 `zarr.json` of an array with hostile numbers (shape, chunk shape, sharding's inner chunks).
fn zarr_v3() -> impl Strategy<Value = serde_json::Value> {
    (
        zarr_shape(),
        zarr_shape(),
        prop::sample::select(vec!["uint8", "uint16", "float32", "float64", "int64", "bool", "complex64", "r16"]),
        prop::option::of(zarr_shape()),
        prop::sample::select(vec!["bytes", "zstd", "gzip", "crc32c"]),
    )
        .prop_map(|(shape, chunks, dtype, inner, codec)| {
            let mut codecs = vec![serde_json::json!({"name": "bytes", "configuration": {"endian": "little"}})];
            if codec != "bytes" {
                codecs.push(serde_json::json!({"name": codec}));
            }
            let codecs = match inner {
                Some(inner) => vec![serde_json::json!({
                    "name": "sharding_indexed",
                    "configuration": {"chunk_shape": inner, "codecs": codecs,
                                      "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]}
                })],
                None => codecs,
            };
            serde_json::json!({
                "zarr_format": 3, "node_type": "array", "shape": shape, "data_type": dtype,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
                "chunk_key_encoding": {"name": "default"}, "fill_value": 0, "codecs": codecs
            })
        })
}

/// A Zarr v2 `.zarray` with hostile numbers.
fn zarr_v2() -> impl Strategy<Value = serde_json::Value> {
    (
        zarr_shape(),
        zarr_shape(),
        prop::sample::select(vec!["|u1", "<u2", "<f4", "<f8", ">i8", "|b1", "<c8", "<U4"]),
    )
        .prop_map(|(shape, chunks, dtype)| {
            serde_json::json!({
                "zarr_format": 2, "shape": shape, "chunks": chunks, "dtype": dtype, "compressor": null,
                "fill_value": 0, "order": "C", "filters": null
            })
        })
}

#[test]
fn zarr_corpus() {
    // Each corpus file is a JSON object: {"files": {"zarr.json": <document or string>, ...}, "level": n?}.
    let (_one, files) = corpus_of("zarr");
    for (path, bytes) in files {
        let case: serde_json::Value = serde_json::from_slice(&bytes).expect("corpus JSON");
        let files: Vec<(String, Vec<u8>)> = case["files"]
            .as_object()
            .expect("files")
            .iter()
            .map(|(k, v)| {
                let body = match v {
                    serde_json::Value::String(s) => s.clone().into_bytes(),
                    other => other.to_string().into_bytes(),
                };
                (k.clone(), body)
            })
            .collect();
        zarr_case(&files, case["level"].as_u64())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn zarr_metadata_with_hostile_numbers() {
    check(
        (
            any::<bool>(),
            zarr_v3(),
            zarr_v2(),
            prop::collection::vec(any::<u8>(), 0..64),
        ),
        |(v3, a, b, chunk)| {
            let files = if v3 {
                vec![
                    ("zarr.json".to_string(), a.to_string().into_bytes()),
                    ("c/0/0/0".into(), chunk),
                ]
            } else {
                vec![
                    (".zarray".to_string(), b.to_string().into_bytes()),
                    ("0.0.0".into(), chunk),
                ]
            };
            zarr_case(&files, None)?;
            Ok(())
        },
    );
}

#[test]
fn ome_multiscales_with_hostile_levels_and_paths() {
    check(
        (
            prop::option::of(number()),
            prop::collection::vec(
                prop::sample::select(vec!["0", "/", "..", "../..", "", "0/../..", "a\u{0}b"]),
                0..4,
            ),
            zarr_v3(),
        ),
        |(level, paths, array)| {
            let datasets: Vec<serde_json::Value> = paths
                .iter()
                .map(|p| serde_json::json!({"path": p}))
                .collect();
            let group = serde_json::json!({
                "zarr_format": 3, "node_type": "group",
                "attributes": {"ome": {"version": "0.5", "multiscales": [{"datasets": datasets}]}}
            });
            let files = vec![
                ("zarr.json".to_string(), group.to_string().into_bytes()),
                ("0/zarr.json".to_string(), array.to_string().into_bytes()),
            ];
            zarr_case(&files, level)?;
            Ok(())
        },
    );
}

#[test]
fn mutated_zarr_documents() {
    check((any::<prop::sample::Index>(), edits()), |(pick, e)| {
        let all = corpus("zarr");
        let (_, bytes) = &all[pick.index(all.len())];
        let case: serde_json::Value = serde_json::from_slice(bytes).expect("corpus JSON");
        let files: Vec<(String, Vec<u8>)> = case["files"]
            .as_object()
            .expect("files")
            .iter()
            .map(|(k, v)| (k.clone(), mutate(v.to_string().into_bytes(), &e)))
            .collect();
        zarr_case(&files, None)?;
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------------------------
// Chunk frames (spill files; the runtime's readers of fetch answers have their own tests)

fn frame_case(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (_, largest) = largest_allocation(|| {
        let _ = frame::parse_header(bytes);
        frame::decode(bytes)
    });
    // Decoding allocates the payload's elements from the bytes there are, never from the header (plus messages).
    check_bound("frame", largest, 2 * bytes.len() + (64 << 10))
}

fn frames() -> Vec<Vec<u8>> {
    use arrayjob_engine::array::Chunk;
    use arrayjob_engine::data::Data;
    let mut out: Vec<Vec<u8>> = corpus("frame").into_iter().map(|(_, b)| b).collect();
    for dtype in [DType::Uint8, DType::Uint16, DType::Float32, DType::Float64] {
        out.push(frame::encode(&Data::Chunk(Chunk::zeros(dtype, &[2, 3, 1]))));
    }
    out
}

#[test]
fn frame_corpus() {
    let (_one, files) = corpus_of("frame");
    for (path, bytes) in files {
        frame_case(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn mutated_frames() {
    check((any::<prop::sample::Index>(), edits()), |(pick, e)| {
        let all = frames();
        frame_case(&mutate(all[pick.index(all.len())].clone(), &e))?;
        Ok(())
    });
}

#[test]
fn frame_headers_with_hostile_fields() {
    check(
        (
            prop::sample::select(vec![0u8, 1, 2, 3, 16, 4, 255]),
            prop::collection::vec(number(), 0..5),
            prop::option::of(any::<u8>()),
            number(),
            prop::collection::vec(any::<u8>(), 0..64),
        ),
        |(code, shape, ndim, len, tail)| {
            let mut f = b"AJCF\x01".to_vec();
            f.push(code);
            f.push(ndim.unwrap_or(shape.len() as u8));
            f.push(0);
            for n in &shape {
                f.extend_from_slice(&n.to_le_bytes());
            }
            f.extend_from_slice(&len.to_le_bytes());
            f.extend_from_slice(&tail);
            frame_case(&f)?;
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Manifests (`arrayjob validate` and `plan` without network)

/// Parses, validates and, for a source that needs no network, plans `text`; the largest allocation.
fn manifest_case(text: &str) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tmp");
    let (_, largest) = largest_allocation(|| {
        use arrayjob_engine::validate;
        let Ok(m) = validate::parse_manifest(text, "fuzz.yaml") else {
            return;
        };
        let Ok(valid) = validate::validate(&m.spec) else {
            return;
        };
        // Offline only: the synthetic source (a source read from the network or S3 is validated, not opened).
        let small = m
            .spec
            .source
            .synthetic
            .as_ref()
            .is_some_and(|s| s.slices <= 100_000);
        if small && let Ok(job) = arrayjob_engine::runner::prepare(m, &valid, dir.path()) {
            let counts = arrayjob_engine::graph::TaskGraph::build(&job.plan)
                .map(|g| g.task_counts())
                .unwrap_or_default();
            let _ = job.plan.report(2, counts);
        }
    });
    // A select keeps its index lists: 8 bytes per index of an axis of at most `MAX_SLICES`.
    check_bound(
        "manifest",
        largest,
        OVERHEAD + 8 * limits::MAX_SLICES as usize,
    )
}

fn yaml_number() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => number().prop_map(|n| n.to_string()),
        1 => Just("-1".to_string()),
        1 => Just("18446744073709551616".to_string()),
        1 => Just("1e30".to_string()),
        1 => Just("0x10".to_string()),
        1 => Just("null".to_string()),
        1 => Just("[1, 2]".to_string()),
    ]
}

/// A manifest of a synthetic, http or files source and up to four stages, with hostile numbers everywhere.
fn manifest() -> impl Strategy<Value = String> {
    let n = yaml_number;
    let source = prop_oneof![
        (n(), n(), n()).prop_map(|(s, h, w)| format!("{{synthetic: {{slices: {s}, height: {h}, width: {w}}}}}")),
        (n(), n(), n(), n()).prop_map(|(a, b, c, r)| format!(
            "{{http: {{urlTemplate: \"http://127.0.0.1:9/{{index}}.png\", start: {a}, stop: {b}, concurrency: {c}, \
             retries: {r}}}, sliceShape: [{a}, {b}], dtype: uint8}}"
        )),
        (n(), n()).prop_map(|(a, b)| format!("{{files: {{pattern: \"s{{index:05}}.png\", start: {a}, stop: {b}}}}}")),
    ];
    let stage = prop_oneof![
        (n(), n(), n(), n()).prop_map(|(a, i, s, t)| format!(
            "{{input: IN, select: [{{axis: {a}, start: {i}, stop: {s}, step: {t}}}]}}"
        )),
        (n(), n()).prop_map(|(a, i)| format!(
            "{{input: IN, select: [{{axis: {a}, indices: [{i}, {a}]}}]}}"
        )),
        (n(), n())
            .prop_map(|(a, b)| format!("{{input: IN, reduce: {{op: std, axes: [{a}, {b}]}}}}")),
        (n(), n()).prop_map(|(a, b)| format!("{{input: IN, recenter: {{window: [{a}, {b}]}}}}")),
        (n(), n(), n())
            .prop_map(|(a, b, c)| format!("{{input: IN, rechunk: {{chunks: [{a}, {b}, {c}]}}}}")),
        n().prop_map(|a| format!(
            "{{input: IN, fft: {{axis: {a}, dtype: float64}}, output: {{zarr: f.zarr}}}}"
        )),
    ];
    (source, n(), prop::collection::vec(stage, 0..4)).prop_map(|(source, per, stages)| {
        let source = format!("{}, slicesPerChunk: {per}}}", &source[..source.len() - 1]);
        let mut text = format!(
            "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: fuzz}}\nspec:\n  source: {source}\n  stages:\n"
        );
        for (i, s) in stages.iter().enumerate() {
            let input = if i == 0 { "source".to_string() } else { format!("s{}", i - 1) };
            text.push_str(&format!("  - {}\n", s.replacen("{input: IN", &format!("{{name: s{i}, input: {input}"), 1)));
        }
        text
    })
}

#[test]
fn manifest_corpus() {
    let (_one, files) = corpus_of("manifest");
    for (path, bytes) in files {
        manifest_case(&String::from_utf8_lossy(&bytes))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn manifests_with_hostile_numbers() {
    check((manifest(),), |(text,)| {
        manifest_case(&text)?;
        Ok(())
    });
}

#[test]
fn mutated_manifests() {
    check((any::<prop::sample::Index>(), edits()), |(pick, e)| {
        let all = corpus("manifest");
        let (_, bytes) = &all[pick.index(all.len())];
        manifest_case(&String::from_utf8_lossy(&mutate(bytes.clone(), &e)))?;
        Ok(())
    });
}
