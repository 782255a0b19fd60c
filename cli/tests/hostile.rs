//! Hostile inputs through the `arrayjob` command (issue 21): image headers, TIFF directories and Zarr metadata
//! that declare absurd sizes, HTTP servers that send endless bodies or ignore `Range`. Each `plan` or `run` must
//! end in bounded time with exit status 1 and an error naming the file or URL, the slice and the value, never
//! abort on an allocation (exit 134) or run on. Every child's peak RSS (getrusage of the children, the largest
//! of all the cases in this binary) stays under [`MAX_RSS_KB`].

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};

/// Largest peak RSS of any `arrayjob` child of these tests, KiB: the bodies read before a refusal (at most
/// the 256 MiB kept for a server that ignores `Range`) plus the program itself.
const MAX_RSS_KB: i64 = 400 << 10;
/// Longest any case may take; each fails in well under a second here.
const DEADLINE: Duration = Duration::from_secs(30);

/// Runs `arrayjob args` with a deadline (killed after it); returns (exit code, stderr, seconds).
fn arrayjob_within(args: &[&str]) -> (Option<i32>, String, f64) {
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_arrayjob"))
        .args(args)
        .env("ARRAYJOB_QUIET", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run arrayjob");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("arrayjob {args:?} still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = reader.join().expect("stderr reader");
    let rss = getrusage(UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage")
        .max_rss();
    assert!(
        rss < MAX_RSS_KB,
        "a child's peak RSS reached {rss} KiB (limit {MAX_RSS_KB}); last: {args:?}"
    );
    (status.code(), text, t0.elapsed().as_secs_f64())
}

/// `plan` (and `run` when `also_run`) of `source` fail with exit status 1 and every `expected` part in the
/// message.
fn refused(dir: &Path, source: &str, also_run: bool, expected: &[&str]) {
    let text = format!(
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: hostile}}\nspec:\n  source: {source}\n  \
         stages:\n  - {{name: m, input: source, reduce: {{op: mean, axes: [0]}}, output: {{zarr: m.zarr}}}}\n"
    );
    let m = write(dir, "job.yaml", &text);
    let out = dir.join("out").display().to_string();
    let mut commands = vec![vec!["plan", m.as_str()]];
    if also_run {
        commands.push(vec!["run", m.as_str(), "--out", out.as_str()]);
    }
    for args in commands {
        let (code, stderr, secs) = arrayjob_within(&args);
        assert_eq!(code, Some(1), "{args:?} exited {code:?}:\n{stderr}");
        for e in expected {
            assert!(stderr.contains(e), "{args:?}: expected {e:?} in:\n{stderr}");
        }
        assert!(secs < 10.0, "{args:?} took {secs:.1} s");
    }
}

/// A PNG of `w` x `h` 16-bit grey whose header is valid and whose data is 100 zero bytes.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[16, 0, 0, 0, 0]);
    // A stored (uncompressed) zlib stream of 100 zero bytes.
    let mut idat = vec![0x78, 0x01, 0x01, 100, 0, !100, 0xff];
    idat.extend_from_slice(&[0; 100]);
    idat.extend_from_slice(&adler32(&[0; 100]).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// The CRC-32 of PNG chunks (ISO 3309).
fn crc32(bytes: &[u8]) -> u32 {
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

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

/// A classic little-endian TIFF of `pages` pages of `w` x `h` 16-bit grey, each in one strip of the same 100
/// zero bytes.
fn tiff_claiming(pages: u32, w: u32, h: u32) -> Vec<u8> {
    const ENTRIES: u32 = 9;
    let ifd_len = 2 + 12 * ENTRIES + 4;
    let strip = 8 + pages * ifd_len;
    let mut out = b"II*\0\x08\0\0\0".to_vec();
    for p in 0..pages {
        let next = if p + 1 < pages {
            8 + (p + 1) * ifd_len
        } else {
            0
        };
        let entries: [(u16, u16, u32); ENTRIES as usize] = [
            (256, 4, w),
            (257, 4, h),
            (258, 3, 16),
            (259, 3, 1),
            (262, 3, 1),
            (273, 4, strip),
            (277, 3, 1),
            (278, 4, h),
            (279, 4, 100),
        ];
        out.extend_from_slice(&(ENTRIES as u16).to_le_bytes());
        for (tag, kind, value) in entries {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&next.to_le_bytes());
    }
    out.extend_from_slice(&[0; 100]);
    out
}

#[test]
fn twenty_pngs_claiming_a_million_squared_are_refused_by_plan_and_run() {
    let d = tempfile::tempdir().expect("tmp");
    for i in 0..20 {
        std::fs::write(
            d.path().join(format!("s{i:02}.png")),
            png_claiming(1_000_000, 1_000_000),
        )
        .expect("png");
    }
    refused(
        d.path(),
        "{files: {pattern: \"s{index:02}.png\", stop: 20}}",
        true,
        &[
            "slice 0: cannot decode",
            "s00.png",
            "the header's height of 1000000 pixels is more than the limit of 65536",
        ],
    );
}

#[test]
fn a_tiff_page_claiming_a_million_squared_is_refused_by_plan_and_run() {
    let d = tempfile::tempdir().expect("tmp");
    std::fs::write(
        d.path().join("page.tif"),
        tiff_claiming(1, 1_000_000, 1_000_000),
    )
    .expect("tif");
    refused(
        d.path(),
        "{tiff: {path: page.tif}}",
        true,
        &[
            "slice 0: cannot decode page 0 of",
            "page.tif",
            "ImageWidth of 1000000 pixels is more than the limit of 65536",
        ],
    );
}

#[test]
fn slices_within_the_side_limit_but_too_large_a_load_chunk_are_refused_by_the_planner() {
    // 65536 x 65536 uint16 slices are allowed one by one, but 3 of them in one load task are 24 GiB.
    let d = tempfile::tempdir().expect("tmp");
    std::fs::write(d.path().join("pages.tif"), tiff_claiming(3, 65_536, 65_536)).expect("tif");
    refused(
        d.path(),
        "{tiff: {path: pages.tif}, slicesPerChunk: 3}",
        true,
        &[
            "spec.source.slicesPerChunk: a load task's 3 slice(s) of 65536x65536 uint16 is 25769803776 bytes, more \
             than the limit of 17179869184 bytes per chunk",
        ],
    );
}

fn zarr_json(shape: &str, chunks: &str) -> String {
    format!(
        "{{\"zarr_format\": 3, \"node_type\": \"array\", \"shape\": {shape}, \"data_type\": \"uint8\", \
         \"chunk_grid\": {{\"name\": \"regular\", \"configuration\": {{\"chunk_shape\": {chunks}}}}}, \
         \"chunk_key_encoding\": {{\"name\": \"default\"}}, \"fill_value\": 0, \"codecs\": [{{\"name\": \"bytes\"}}]}}"
    )
}

#[test]
fn a_zarr_array_of_a_trillion_slices_is_refused_at_once() {
    let d = tempfile::tempdir().expect("tmp");
    for (name, shape, chunks, expected) in [
        (
            "big.zarr",
            "[1000000000000, 4, 4]",
            "[1, 4, 4]",
            "shape [1000000000000, 4, 4]: shape[0] of 1000000000000 slices is more than the limit of 10000000",
        ),
        (
            "wide.zarr",
            "[3, 4, 70000]",
            "[1, 4, 4]",
            "shape [3, 4, 70000]: shape[2] of 70000 pixels is more than the limit of 65536",
        ),
        (
            "chunky.zarr",
            "[3, 4, 4]",
            "[10000000, 65536, 65536]",
            "chunk shape [10000000, 65536, 65536] of 1-byte elements is more than the limit of 17179869184 bytes",
        ),
    ] {
        let z = d.path().join(name);
        std::fs::create_dir(&z).expect("dir");
        std::fs::write(z.join("zarr.json"), zarr_json(shape, chunks)).expect("json");
        refused(
            d.path(),
            &format!("{{zarr: {{path: {name}}}}}"),
            false,
            &[name, expected],
        );
    }
}

/// What the test server sends.
#[derive(Clone, Copy)]
enum Body {
    /// 200 without a length, bytes until the client hangs up.
    Endless,
    /// 200 with `Content-Length: n` whatever the `Range`, then bytes until the client hangs up.
    IgnoresRange(u64),
    /// 200 without a length and without honouring `Range`: a TIFF header, then `n` bytes, then the end.
    UnrangedTiff(u64),
}

/// Serves `body` for every request on a loopback port; returns the base URL.
fn serve(body: Body) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream, body));
        }
    });
    base
}

fn answer(mut s: TcpStream, body: Body) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let (head, first, total) = match body {
        Body::Endless => (
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned(),
            Vec::new(),
            u64::MAX,
        ),
        Body::IgnoresRange(n) => (
            format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"),
            Vec::new(),
            n,
        ),
        Body::UnrangedTiff(n) => (
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned(),
            b"II*\0\x08\0\0\0".to_vec(),
            n,
        ),
    };
    if s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(&first))
        .is_err()
    {
        return;
    }
    let block = vec![0x2au8; 1 << 16];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(block.len() as u64) as usize;
        if s.write_all(&block[..n]).is_err() {
            return;
        }
        sent += n as u64;
    }
}

#[test]
fn an_endless_body_for_a_tiff_or_zarr_url_fails_in_bounded_time_and_memory() {
    let d = tempfile::tempdir().expect("tmp");
    let base = serve(Body::Endless);
    refused(
        d.path(),
        &format!("{{tiff: {{url: \"{base}/stack.tif\"}}}}"),
        false,
        &[
            &format!("{base}/stack.tif"),
            // The first read asks 64 KiB; the server answers the whole (endless) file.
            "response body exceeds the limit of 268435456 bytes of a file whose server does not honour Range",
        ],
    );
    refused(
        d.path(),
        &format!("{{zarr: {{url: \"{base}/img.zarr\"}}}}"),
        false,
        &[
            &format!("{base}/img.zarr/zarr.json"),
            "response body exceeds the limit of 67108864 bytes of a Zarr metadata document",
        ],
    );
}

#[test]
fn a_server_ignoring_range_on_a_large_file_is_refused_without_holding_it() {
    let d = tempfile::tempdir().expect("tmp");
    // Announced: refused before the body is read.
    let base = serve(Body::IgnoresRange(4 << 30));
    refused(
        d.path(),
        &format!("{{tiff: {{url: \"{base}/stack.tif\"}}}}"),
        false,
        &[
            &format!("{base}/stack.tif"),
            "response body of 4294967296 bytes (Content-Length) exceeds the limit of 268435456 bytes of a file whose \
             server does not honour Range requests",
        ],
    );
    // Not announced: refused once the bytes read pass the limit.
    let base = serve(Body::UnrangedTiff(1 << 30));
    refused(
        d.path(),
        &format!("{{tiff: {{url: \"{base}/stack.tif\"}}}}"),
        false,
        &[
            &format!("{base}/stack.tif"),
            "response body exceeds the limit of 268435456 bytes of a file whose server does not honour Range",
        ],
    );
}
