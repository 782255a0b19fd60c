//! Sources against real things: the recipe's committed test vectors, image files and a local HTTP server.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrayjob_engine::array::{Chunk, DType};
use arrayjob_engine::source::{self, SliceInfo, SliceSource, SourceError, emstack};
use arrayjob_engine::spec::{FilesSource, HttpSource, SourceSpec, SyntheticSource};
use image::{GrayImage, ImageBuffer, Luma, RgbImage};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn synthetic(slices: usize, height: usize, width: usize) -> SourceSpec {
    SourceSpec {
        synthetic: Some(SyntheticSource {
            slices,
            height,
            width,
            seed: None,
        }),
        files: None,
        http: None,
        s3: None,
        tiff: None,
        zarr: None,
        slices_per_chunk: None,
        slice_shape: None,
        dtype: None,
    }
}

fn files_pattern(pattern: &str, start: u64, stop: u64) -> SourceSpec {
    SourceSpec {
        synthetic: None,
        files: Some(FilesSource {
            pattern: Some(pattern.into()),
            glob: None,
            start: Some(start),
            stop: Some(stop),
            base_dir: None,
        }),
        http: None,
        s3: None,
        tiff: None,
        zarr: None,
        slices_per_chunk: None,
        slice_shape: None,
        dtype: None,
    }
}

fn files_glob(glob: &str) -> SourceSpec {
    SourceSpec {
        synthetic: None,
        files: Some(FilesSource {
            pattern: None,
            glob: Some(glob.into()),
            start: None,
            stop: None,
            base_dir: None,
        }),
        http: None,
        s3: None,
        tiff: None,
        zarr: None,
        slices_per_chunk: None,
        slice_shape: None,
        dtype: None,
    }
}

fn http(url_template: String, stop: u64, retries: u32, timeout_seconds: Option<u64>) -> SourceSpec {
    SourceSpec {
        synthetic: None,
        files: None,
        http: Some(HttpSource {
            url_template,
            start: None,
            stop,
            concurrency: Some(2),
            retries: Some(retries),
            timeout_seconds,
        }),
        s3: None,
        tiff: None,
        zarr: None,
        slices_per_chunk: None,
        slice_shape: None,
        dtype: None,
    }
}

fn open(spec: &SourceSpec, dir: &Path) -> Box<dyn SliceSource> {
    source::open(spec, dir).unwrap_or_else(|e| panic!("open {spec:?}: {e}"))
}

fn open_err(spec: &SourceSpec, dir: &Path) -> String {
    match source::open(spec, dir) {
        Ok(s) => panic!("expected an error opening {}", s.describe()),
        Err(e) => e.to_string(),
    }
}

fn read_err(src: &dyn SliceSource, start: usize, end: usize) -> SourceError {
    match src.read(start, end) {
        Ok(c) => panic!(
            "expected an error reading {start}..{end} of {}, got {:?}",
            src.describe(),
            c.shape()
        ),
        Err(e) => e,
    }
}

fn assert_contains(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(message.contains(p), "{message:?} should contain {p:?}");
    }
}

fn u8_values(c: &Chunk) -> Vec<u8> {
    match c {
        Chunk::U8(a) => a.iter().copied().collect(),
        other => panic!("expected uint8, got {}", other.dtype()),
    }
}

fn u16_values(c: &Chunk) -> Vec<u16> {
    match c {
        Chunk::U16(a) => a.iter().copied().collect(),
        other => panic!("expected uint16, got {}", other.dtype()),
    }
}

/// An 8-bit `w` x `h` test image whose pixel (x, y) is `base + x + 10 y`.
fn grey8(w: u32, h: u32, base: u8) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| Luma([base.wrapping_add((x + 10 * y) as u8)]))
}

fn grey16(w: u32, h: u32, base: u16) -> ImageBuffer<Luma<u16>, Vec<u16>> {
    ImageBuffer::from_fn(w, h, |x, y| Luma([base + (x * 1000 + y) as u16]))
}

fn png_bytes(img: &GrayImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

fn expected8(w: u32, h: u32, base: u8) -> Vec<u8> {
    grey8(w, h, base).into_raw()
}

// ---------------------------------------------------------------------------------------------------------------
// Synthetic: bit-exact against the Python recipe's test vectors (fixtures/emstack-v1-testvec.json)

#[test]
fn synthetic_matches_python_testvec() {
    // Facts printed by the Python recipe (`gen_data.py --testvec`), committed with the generation note.
    let fx: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/emstack-v1-testvec.json"))
            .expect("fixture JSON");
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("number: {v}"));
    let bytes = |name: &str| -> Vec<u8> {
        fx[name]
            .as_array()
            .unwrap_or_else(|| panic!("{name} in the fixture"))
            .iter()
            .map(|v| u8::try_from(num(v)).expect("byte"))
            .collect()
    };
    assert_eq!(fx["recipe"], "emstack-v1");
    let seed = emstack::DEFAULT_SEED;
    assert_eq!(num(&fx["seed"]), seed);
    let ours: Vec<u8> = (0..8).map(|i| emstack::noise_byte(seed, i)).collect();
    assert_eq!(ours, bytes("noiseTopBytesFrom0"));
    let ours: Vec<u8> = (0..4)
        .map(|i| emstack::noise_byte(seed, 1_000_000_000 + i))
        .collect();
    assert_eq!(ours, bytes("noiseTopBytesFrom1e9"));

    let (h, w) = (num(&fx["height"]) as usize, num(&fx["width"]) as usize);
    assert_eq!((h, w), (1000, 1000));
    let src = open(&synthetic(1000, h, w), Path::new("."));
    assert_eq!(
        src.slice_info().expect("info"),
        SliceInfo {
            height: 1000,
            width: 1000,
            dtype: DType::Uint8
        }
    );
    let slices = fx["slices"].as_array().expect("slices");
    assert_eq!(slices.len(), 4);
    for f in slices {
        let z = num(&f["z"]) as usize;
        let slice = u8_values(&src.read(z, z + 1).expect("read"));
        let (cy, cx) = emstack::centre(z as u64, h, w);
        let px = |y: usize, x: usize| u64::from(slice[y * w + x]);
        let sum: u64 = slice.iter().map(|&v| u64::from(v)).sum();
        let sha: String = Sha256::digest(&slice)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            [num(&f["centre"][0]), num(&f["centre"][1])],
            [cy as u64, cx as u64],
            "z={z}"
        );
        assert_eq!(num(&f["gain"]), emstack::gain(z as u64), "z={z}");
        assert_eq!(num(&f["pCentre"]), px(cy, cx), "z={z}");
        assert_eq!(num(&f["pCentrePlus200Rows"]), px(cy + 200, cx), "z={z}");
        assert_eq!(num(&f["p00"]), px(0, 0), "z={z}");
        assert_eq!(num(&f["sum"]), sum, "z={z}");
        assert_eq!(f["sha256"], sha.as_str(), "z={z}");
    }
}

#[test]
fn synthetic_chunks_agree_with_single_slices() {
    let src = open(&synthetic(12, 64, 48), Path::new("."));
    let chunk = src.read(3, 9).expect("read");
    assert_eq!(chunk.shape(), &[6, 64, 48]);
    let all = u8_values(&chunk);
    for z in 3..9 {
        let one = emstack::generate_slice(z as u64, 64, 48, emstack::DEFAULT_SEED);
        assert_eq!(
            &all[(z - 3) * 64 * 48..(z - 2) * 64 * 48],
            &one[..],
            "z={z}"
        );
    }
    assert!(all.iter().any(|&v| v > 0));
    let e = read_err(src.as_ref(), 10, 13).to_string();
    assert_contains(&e, &["slices 10..13", "12 slice(s)", "synthetic"]);
}

#[test]
fn synthetic_config_errors() {
    let e = open_err(&synthetic(10, 10, 8), Path::new("."));
    assert_contains(&e, &["spec.source.synthetic.height", "multiple of 4", "10"]);
    let e = open_err(&synthetic(10, 8, 6), Path::new("."));
    assert_contains(&e, &["spec.source.synthetic.width"]);
    let e = open_err(&synthetic(0, 8, 8), Path::new("."));
    assert_contains(&e, &["spec.source.synthetic.slices"]);
}

#[test]
fn exactly_one_source_kind() {
    let mut spec = synthetic(1, 8, 8);
    spec.files = files_glob("*.png").files;
    assert_contains(
        &open_err(&spec, Path::new(".")),
        &["spec.source:", "exactly one", "synthetic, files"],
    );
    spec.synthetic = None;
    spec.files = None;
    assert_contains(
        &open_err(&spec, Path::new(".")),
        &["spec.source:", "none is set"],
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Files

#[test]
fn files_png_tiff_jpeg_and_16_bit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for i in 0..3u8 {
        grey8(7, 5, 10 * i)
            .save(d.join(format!("p_{:05}.png", i + 2)))
            .expect("png");
        grey8(7, 5, 40 + i)
            .save(d.join(format!("t{}.tif", i)))
            .expect("tiff");
        grey16(6, 4, 300 * u16::from(i))
            .save(d.join(format!("w{i}.png")))
            .expect("png16");
        grey16(6, 4, 7 + u16::from(i))
            .save(d.join(format!("w{i}.tiff")))
            .expect("tiff16");
    }
    GrayImage::from_pixel(16, 8, Luma([77]))
        .save(d.join("j0.jpg"))
        .expect("jpeg");

    // Pattern with an offset start and zero padding, relative to base_dir.
    let src = open(&files_pattern("p_{index:05}.png", 2, 5), d);
    assert_eq!(src.len(), 3);
    assert_eq!(
        src.slice_info().expect("info"),
        SliceInfo {
            height: 5,
            width: 7,
            dtype: DType::Uint8
        }
    );
    let c = src.read(1, 3).expect("read png");
    assert_eq!(c.shape(), &[2, 5, 7]);
    assert_eq!(
        u8_values(&c),
        [expected8(7, 5, 10), expected8(7, 5, 20)].concat()
    );
    assert_contains(&src.describe(), &["p_{index:05}.png", "[2, 5)"]);

    let c = open(&files_pattern("t%d.tif", 0, 3), d)
        .read(0, 3)
        .expect("read tiff");
    assert_eq!(
        u8_values(&c),
        [
            expected8(7, 5, 40),
            expected8(7, 5, 41),
            expected8(7, 5, 42)
        ]
        .concat()
    );

    for pattern in ["w%d.png", "w{index}.tiff"] {
        let src = open(&files_pattern(pattern, 0, 3), d);
        let c = src.read(0, 3).expect("read 16-bit");
        assert_eq!(src.slice_info().expect("info").dtype, DType::Uint16);
        let want: Vec<u16> = (0..3u16)
            .flat_map(|i| {
                grey16(
                    6,
                    4,
                    if pattern.ends_with("png") {
                        300 * i
                    } else {
                        7 + i
                    },
                )
                .into_raw()
            })
            .collect();
        assert_eq!(u16_values(&c), want, "{pattern}");
    }

    let c = open(&files_glob("j*.jpg"), d)
        .read(0, 1)
        .expect("read jpeg");
    assert_eq!(c.shape(), &[1, 8, 16]);
    assert!(
        u8_values(&c).iter().all(|&v| v.abs_diff(77) <= 1),
        "{:?}",
        u8_values(&c)
    );
}

#[test]
fn files_glob_is_sorted_by_name_and_base_dir_is_relative() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("stack");
    std::fs::create_dir(&sub).expect("mkdir");
    for (name, base) in [("b.png", 2), ("c.png", 3), ("a.png", 1)] {
        grey8(3, 2, base).save(sub.join(name)).expect("png");
    }
    let mut spec = files_glob("*.png");
    if let Some(f) = spec.files.as_mut() {
        f.base_dir = Some("stack".into());
    }
    let src = open(&spec, dir.path());
    assert_eq!(src.len(), 3);
    let c = src.read(0, 3).expect("read");
    assert_eq!(
        u8_values(&c),
        [expected8(3, 2, 1), expected8(3, 2, 2), expected8(3, 2, 3)].concat()
    );

    let e = open_err(&files_glob("*.tif"), &sub);
    assert_contains(&e, &["spec.source.files.glob", "no file matches", "*.tif"]);
}

#[test]
fn files_config_errors() {
    let d = Path::new("/nonexistent");
    let e = open_err(&files_pattern("s_{index}.png", 5, 5), d);
    assert_contains(&e, &["spec.source.files.stop", "empty range [5, 5)"]);
    let e = open_err(&files_pattern("s.png", 0, 5), d);
    assert_contains(&e, &["spec.source.files.pattern", "no index placeholder"]);
    let mut both = files_glob("*.png");
    if let Some(f) = both.files.as_mut() {
        f.pattern = Some("x{index}.png".into());
    }
    assert_contains(
        &open_err(&both, d),
        &["spec.source.files", "exactly one of pattern or glob"],
    );
}

#[test]
fn files_read_errors_name_index_and_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let good = png_bytes(&grey8(40, 30, 0));
    let write = |name: &str, bytes: &[u8]| std::fs::write(d.join(name), bytes).expect("write");
    write("s0.png", &good);
    write("s1.png", &good);
    // Corrupt: compressed pixel data overwritten (header intact).
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid - 20..mid + 20].fill(0xA5);
    write("s2.png", &corrupt);
    write("s3.png", &good[..good.len() / 2]);
    write("s4.png", b"this is not an image at all");
    grey8(40, 31, 0).save(d.join("s5.png")).expect("png");
    grey16(40, 30, 0).save(d.join("s6.png")).expect("png16");
    RgbImage::from_pixel(40, 30, image::Rgb([1, 2, 3]))
        .save(d.join("s7.png"))
        .expect("rgb");
    // s8.png is missing.

    let src = open(&files_pattern("s{index}.png", 0, 9), d);
    let path = |i: usize| d.join(format!("s{i}.png")).display().to_string();
    assert_eq!(
        u8_values(&src.read(0, 2).expect("good slices")).len(),
        2 * 40 * 30
    );

    for (i, kind) in [(2, "corrupt"), (3, "truncated"), (4, "garbage")] {
        let e = read_err(src.as_ref(), i, i + 1);
        assert!(
            matches!(e, SourceError::Decode { index, .. } if index == i),
            "{kind}: {e:?}"
        );
        assert_contains(
            &e.to_string(),
            &[&format!("slice {i}:"), &path(i), "cannot decode"],
        );
    }
    let e = read_err(src.as_ref(), 4, 5).to_string();
    assert_contains(&e, &["not a PNG, TIFF or JPEG"]);

    let e = read_err(src.as_ref(), 4, 6);
    assert!(matches!(e, SourceError::Decode { index: 4, .. }), "{e:?}");
    let e = read_err(src.as_ref(), 5, 6).to_string();
    assert_contains(
        &e,
        &[
            "slice 5",
            &path(5),
            "31x40 uint8",
            "expected 30x40 uint8 (from slice 0)",
        ],
    );
    let e = read_err(src.as_ref(), 6, 7).to_string();
    assert_contains(&e, &["slice 6", &path(6), "30x40 uint16", "30x40 uint8"]);
    let e = read_err(src.as_ref(), 7, 8).to_string();
    assert_contains(&e, &["slice 7", &path(7), "Rgb8", "greyscale"]);
    let e = read_err(src.as_ref(), 8, 9);
    assert!(matches!(e, SourceError::Io { index: 8, .. }), "{e:?}");
    assert_contains(&e.to_string(), &["slice 8", &path(8)]);
}

#[test]
fn mismatch_found_when_slice_0_is_read_in_the_same_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    grey8(4, 4, 0).save(dir.path().join("m0.png")).expect("png");
    grey16(4, 4, 0)
        .save(dir.path().join("m1.png"))
        .expect("png16");
    let src = open(&files_pattern("m{index}.png", 0, 2), dir.path());
    let e = read_err(src.as_ref(), 0, 2);
    assert!(
        matches!(
            e,
            SourceError::Mismatch {
                index: 1,
                found_dtype: DType::Uint16,
                ..
            }
        ),
        "{e:?}"
    );
    assert_contains(&e.to_string(), &["slice 1", "m1.png"]);
}

#[test]
fn declared_shape_and_dtype() {
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..3 {
        grey8(5, 4, i)
            .save(dir.path().join(format!("d{i}.png")))
            .expect("png");
    }
    let mut spec = files_pattern("d{index}.png", 0, 3);
    spec.slice_shape = Some(vec![4, 5]);
    spec.dtype = Some(DType::Uint8);
    // Declared: known without reading, even with the files gone.
    let src = open(&spec, Path::new("/nonexistent"));
    assert_eq!(
        src.slice_info().expect("declared"),
        SliceInfo {
            height: 4,
            width: 5,
            dtype: DType::Uint8
        }
    );

    spec.slice_shape = Some(vec![5, 5]);
    let src = open(&spec, dir.path());
    let e = read_err(src.as_ref(), 0, 3);
    assert!(matches!(e, SourceError::Mismatch { index: 0, .. }), "{e:?}");
    assert_contains(
        &e.to_string(),
        &[
            "slice 0",
            "d0.png",
            "4x5 uint8",
            "expected 5x5 uint8",
            "sliceShape",
        ],
    );

    spec.slice_shape = None;
    spec.dtype = Some(DType::Uint16);
    let e = open(&spec, dir.path())
        .slice_info()
        .expect_err("uint8 files declared uint16")
        .to_string();
    assert_contains(
        &e,
        &[
            "slice 0",
            "d0.png",
            "expected 4x5 uint16",
            "spec.source.dtype",
        ],
    );

    spec.slice_shape = Some(vec![5]);
    assert_contains(&open_err(&spec, dir.path()), &["spec.source.sliceShape"]);
    let mut syn = synthetic(2, 8, 8);
    syn.slice_shape = Some(vec![8, 12]);
    assert_contains(
        &open_err(&syn, dir.path()),
        &["spec.source.sliceShape", "[8, 12]"],
    );
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP, against a real local server

/// What the test server does for one path.
#[derive(Clone)]
enum Reply {
    /// 200 with these bytes.
    Body(Vec<u8>),
    /// This status, every time.
    Status(u16),
    /// HTTP 500 for the first `n` requests, then 200 with the bytes.
    FailThen(usize, Vec<u8>),
    /// Read the request, close the connection without answering.
    Close,
    /// Read the request, never answer (until the client gives up).
    Hang,
    /// 200 with the bytes, after a delay.
    Slow(Duration, Vec<u8>),
}

/// What the test server saw.
#[derive(Default)]
struct Seen {
    /// Requests per path.
    hits: HashMap<String, usize>,
    /// Requests being answered now.
    in_flight: usize,
    /// Most requests ever answered at once.
    max_in_flight: usize,
}

/// A small HTTP/1.1 server on 127.0.0.1, one thread per connection, recording what it sees.
struct Server {
    base: String,
    seen: Arc<Mutex<Seen>>,
}

impl Server {
    fn start(routes: &[(&str, Reply)]) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let routes: Arc<HashMap<String, Reply>> = Arc::new(
            routes
                .iter()
                .map(|(p, r)| ((*p).to_owned(), r.clone()))
                .collect(),
        );
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (routes, record) = (Arc::clone(&routes), Arc::clone(&record));
                std::thread::spawn(move || handle(stream, &routes, &record));
            }
        });
        Server { base, seen }
    }

    fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .expect("lock")
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn max_in_flight(&self) -> usize {
        self.seen.lock().expect("lock").max_in_flight
    }
}

fn handle(mut stream: TcpStream, routes: &HashMap<String, Reply>, seen: &Mutex<Seen>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split(' ').nth(1).unwrap_or("").to_owned();
    let n = {
        let mut seen = seen.lock().expect("lock");
        seen.in_flight += 1;
        seen.max_in_flight = seen.max_in_flight.max(seen.in_flight);
        let n = seen.hits.entry(path.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let reply = match routes.get(&path) {
        None => Some((404, b"not found".to_vec())),
        Some(Reply::Body(b)) => Some((200, b.clone())),
        Some(Reply::Status(s)) => Some((*s, b"error".to_vec())),
        Some(Reply::FailThen(k, _)) if n <= *k => Some((500, b"try again".to_vec())),
        Some(Reply::FailThen(_, b)) => Some((200, b.clone())),
        Some(Reply::Close) => None,
        Some(Reply::Hang) => {
            std::thread::sleep(Duration::from_secs(5));
            None
        }
        Some(Reply::Slow(delay, b)) => {
            std::thread::sleep(*delay);
            Some((200, b.clone()))
        }
    };
    // Counted out before answering, so the count never exceeds the requests the client has open.
    seen.lock().expect("lock").in_flight -= 1;
    if let Some((status, body)) = reply {
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(&body));
    }
}

#[test]
fn http_concurrency_is_bounded_across_reads() {
    let img = png_bytes(&grey8(4, 4, 9));
    let routes: Vec<(String, Reply)> = (0..8)
        .map(|i| {
            (
                format!("/c/{i}"),
                Reply::Slow(Duration::from_millis(150), img.clone()),
            )
        })
        .collect();
    let routes: Vec<(&str, Reply)> = routes
        .iter()
        .map(|(p, r)| (p.as_str(), r.clone()))
        .collect();
    let server = Server::start(&routes);
    let mut spec = http(format!("{}/c/{{index}}", server.base), 8, 0, None);
    if let Some(h) = spec.http.as_mut() {
        h.concurrency = Some(3);
    }
    let src = open(&spec, Path::new("."));
    let chunks: Vec<Chunk> = std::thread::scope(|s| {
        let readers: Vec<_> = (0..4)
            .map(|k| {
                s.spawn({
                    let src = &src;
                    move || src.read(2 * k, 2 * k + 2)
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().expect("reader").expect("read"))
            .collect()
    });
    assert!(
        chunks
            .iter()
            .all(|c| u8_values(c) == [expected8(4, 4, 9), expected8(4, 4, 9)].concat())
    );
    assert_eq!(
        server.max_in_flight(),
        3,
        "concurrency 3 shared by 4 readers of 2 slices"
    );
}

#[test]
fn http_reads_slices_and_retries_5xx() {
    let imgs: Vec<Vec<u8>> = (0..4).map(|i| png_bytes(&grey8(9, 6, 50 * i))).collect();
    let server = Server::start(&[
        ("/ok/00000.png", Reply::Body(imgs[0].clone())),
        ("/ok/00001.png", Reply::FailThen(2, imgs[1].clone())),
        ("/ok/00002.png", Reply::Body(imgs[2].clone())),
        ("/ok/00003.png", Reply::Body(imgs[3].clone())),
    ]);
    let src = open(
        &http(format!("{}/ok/{{index:05}}.png", server.base), 4, 4, None),
        Path::new("."),
    );
    assert_eq!(src.len(), 4);
    assert_eq!(
        src.slice_info().expect("info"),
        SliceInfo {
            height: 6,
            width: 9,
            dtype: DType::Uint8
        }
    );
    // Two readers at once share the source (and its concurrency bound).
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| src.read(0, 2));
        let b = s.spawn(|| src.read(2, 4));
        (a.join().expect("thread a"), b.join().expect("thread b"))
    });
    let (a, b) = (a.expect("read 0..2"), b.expect("read 2..4"));
    assert_eq!(
        u8_values(&a),
        [expected8(9, 6, 0), expected8(9, 6, 50)].concat()
    );
    assert_eq!(
        u8_values(&b),
        [expected8(9, 6, 100), expected8(9, 6, 150)].concat()
    );
    assert_eq!(
        server.hits("/ok/00000.png"),
        2,
        "slice 0 is fetched once for slice_info and once for read"
    );
    assert_eq!(server.hits("/ok/00001.png"), 3, "two 500s then success");
    assert_contains(&src.describe(), &["http", "/ok/{index:05}.png", "[0, 4)"]);
}

#[test]
fn http_errors_name_url_status_and_attempts() {
    let good = png_bytes(&grey8(9, 6, 0));
    let server = Server::start(&[
        ("/e/0", Reply::Body(good.clone())),
        ("/e/1", Reply::Status(500)),
        ("/e/2", Reply::Status(403)),
        ("/e/3", Reply::Close),
        ("/e/4", Reply::Body(b"\x89PNG\r\n\x1a\n garbage".to_vec())),
        ("/e/5", Reply::Body(png_bytes(&grey8(9, 7, 0)))),
        (
            "/e/6",
            Reply::Body({
                let mut out = std::io::Cursor::new(Vec::new());
                RgbImage::new(9, 6)
                    .write_to(&mut out, image::ImageFormat::Png)
                    .expect("rgb png");
                out.into_inner()
            }),
        ),
    ]);
    let src = open(
        &http(format!("{}/e/{{index}}", server.base), 8, 2, None),
        Path::new("."),
    );
    let url = |i: usize| format!("{}/e/{i}", server.base);

    let e = read_err(src.as_ref(), 1, 2);
    assert!(
        matches!(
            e,
            SourceError::HttpStatus {
                index: 1,
                status: 500,
                attempts: 3,
                ..
            }
        ),
        "{e:?}"
    );
    assert_contains(
        &e.to_string(),
        &["slice 1", &url(1), "HTTP 500", "3 attempt"],
    );
    assert_eq!(server.hits("/e/1"), 3, "retries + 1 attempts");

    let e = read_err(src.as_ref(), 2, 3).to_string();
    assert_contains(&e, &["slice 2", &url(2), "HTTP 403", "1 attempt"]);
    assert_eq!(server.hits("/e/2"), 1, "4xx is not retried");

    let e = read_err(src.as_ref(), 7, 8).to_string();
    assert_contains(&e, &["slice 7", &url(7), "HTTP 404", "1 attempt"]);
    assert_eq!(server.hits("/e/7"), 1);

    let e = read_err(src.as_ref(), 3, 4);
    assert!(
        matches!(
            e,
            SourceError::HttpTransport {
                index: 3,
                attempts: 3,
                ..
            }
        ),
        "{e:?}"
    );
    assert_contains(
        &e.to_string(),
        &["slice 3", &url(3), "3 attempt", "connection closed"],
    );
    assert_eq!(server.hits("/e/3"), 3);

    let e = read_err(src.as_ref(), 4, 5).to_string();
    assert_contains(&e, &["slice 4", &url(4), "cannot decode"]);
    let e = read_err(src.as_ref(), 5, 6).to_string();
    assert_contains(
        &e,
        &[
            "slice 5",
            &url(5),
            "7x9 uint8",
            "expected 6x9 uint8 (from slice 0)",
        ],
    );
    let e = read_err(src.as_ref(), 6, 7).to_string();
    assert_contains(&e, &["slice 6", &url(6), "Rgb8"]);
}

#[test]
fn http_timeout_and_refused_connection() {
    let server = Server::start(&[("/slow/0", Reply::Hang)]);
    let src = open(
        &http(format!("{}/slow/{{index}}", server.base), 1, 1, Some(1)),
        Path::new("."),
    );
    let e = read_err(src.as_ref(), 0, 1);
    assert!(
        matches!(
            e,
            SourceError::HttpTransport {
                index: 0,
                attempts: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert_contains(
        &e.to_string(),
        &["slice 0", &format!("{}/slow/0", server.base), "timed out"],
    );
    assert_eq!(server.hits("/slow/0"), 2);

    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let src = open(
        &http(format!("http://127.0.0.1:{port}/{{index}}"), 1, 1, Some(5)),
        Path::new("."),
    );
    let e = read_err(src.as_ref(), 0, 1);
    assert!(
        matches!(
            e,
            SourceError::HttpTransport {
                index: 0,
                attempts: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert_contains(
        &e.to_string(),
        &[
            &format!("http://127.0.0.1:{port}/0"),
            "2 attempt",
            "Connection refused",
        ],
    );
}

#[test]
fn http_config_errors() {
    let d = Path::new(".");
    assert_contains(
        &open_err(&http("http://h/x.png".into(), 3, 0, None), d),
        &["spec.source.http.urlTemplate", "no index placeholder"],
    );
    assert_contains(
        &open_err(&http("ftp://h/{index}".into(), 3, 0, None), d),
        &["spec.source.http.urlTemplate", "ftp"],
    );
    assert_contains(
        &open_err(&http("http://h/{index}".into(), 0, 0, None), d),
        &["spec.source.http.stop", "empty"],
    );
}
