//! Which S3 answers the `s3` source retries, through `arrayjob run` against a loopback server that answers like
//! S3 under load: `503 SlowDown` and `500 InternalError` are retried (the SDK's backoff) until the object comes,
//! `403 AccessDenied` fails at once, naming index and key. SeaweedFS cannot be made to throttle, hence this
//! server; the rest of the S3 behaviour is tested against SeaweedFS in `s3.rs`.

mod common;
use common::*;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Requests seen per `METHOD path` (query string dropped).
type Seen = Arc<Mutex<HashMap<String, usize>>>;

fn png(value: u8) -> Vec<u8> {
    png_bytes(image::GrayImage::from_pixel(3, 2, image::Luma([value])))
}

fn error_xml(code: &str) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{code}</Message></Error>"
    )
    .into_bytes()
}

/// The answer to the `n`-th (from 1) request `method path`: bucket `bkt`, keys `s/0000{i}.png` for i < 3;
/// slice 0 is throttled twice, slice 1 fails once with 500, slice 2 is refused (403) unless `allow_2`.
fn answer(method: &str, path: &str, n: usize, allow_2: bool) -> (u16, Vec<u8>) {
    match (method, path) {
        ("GET", "/bkt" | "/bkt/") => (
            200,
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
              <Name>bkt</Name><Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1</MaxKeys><IsTruncated>false</IsTruncated>\
              <Contents><Key>s/00000.png</Key><Size>1</Size></Contents></ListBucketResult>"
                .to_vec(),
        ),
        ("HEAD", "/bkt/s/00000.png") => (200, Vec::new()),
        ("GET", "/bkt/s/00000.png") if n <= 2 => (503, error_xml("SlowDown")),
        ("GET", "/bkt/s/00001.png") if n <= 1 => (500, error_xml("InternalError")),
        ("GET", "/bkt/s/00002.png") if !allow_2 => (403, error_xml("AccessDenied")),
        ("GET", p) if p.starts_with("/bkt/s/0000") => {
            let i = p.as_bytes()[11] - b'0';
            (200, png(10 * i + 1))
        }
        _ => (404, error_xml("NoSuchKey")),
    }
}

/// Serves requests on a loopback port until the test ends; returns the endpoint and the request counts.
fn serve(allow_2: bool) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let seen: Seen = Arc::default();
    let counts = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let counts = Arc::clone(&counts);
            std::thread::spawn(move || connection(conn, &counts, allow_2));
        }
    });
    (endpoint, seen)
}

/// Answers the requests of one keep-alive connection.
fn connection(conn: TcpStream, seen: &Seen, allow_2: bool) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let path = parts
            .next()
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("")
            .to_owned();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let n = {
            let mut seen = seen.lock().expect("lock");
            let n = seen.entry(format!("{method} {path}")).or_default();
            *n += 1;
            *n
        };
        let (status, body) = answer(&method, &path, n, allow_2);
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/xml\r\n\r\n",
            body.len()
        );
        let body = if method == "HEAD" { Vec::new() } else { body };
        if out
            .write_all(head.as_bytes())
            .and_then(|_| out.write_all(&body))
            .is_err()
        {
            return;
        }
    }
}

fn run(endpoint: &str) -> (bool, String, String) {
    let d = tempfile::tempdir().expect("tmp");
    let empty = write(d.path(), "empty", "");
    let m = write(
        d.path(),
        "job.yaml",
        &format!(
            "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: r}}\nspec:\n  storage: {{s3: \
             {{bucket: bkt, endpoint: \"{endpoint}\", forcePathStyle: true}}}}\n  source: {{slicesPerChunk: 3, s3: \
             {{keys: \"s/{{index:05}}.png\", stop: 3, retries: 3}}}}\n  stages:\n  - {{name: v, input: source, \
             reduce: {{op: max, axes: [1, 2]}}, output: {{csv: v.csv}}}}\n"
        ),
    );
    let out = d.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_arrayjob"))
        .args(["run", &m, "--out", &out.display().to_string()])
        .env("ARRAYJOB_QUIET", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_REGION")
        .env("AWS_CONFIG_FILE", &empty)
        .env("AWS_SHARED_CREDENTIALS_FILE", &empty)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .output()
        .expect("run arrayjob");
    let csv = std::fs::read_to_string(out.join("v.csv")).unwrap_or_default();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into(),
        csv,
    )
}

#[test]
fn slow_down_and_server_errors_are_retried_until_the_objects_come() {
    let (endpoint, seen) = serve(true);
    let (ok, err, csv) = run(&endpoint);
    assert!(ok, "{err}");
    assert_eq!(csv, "index,value\n0,1.0\n1,11.0\n2,21.0\n");
    let seen = seen.lock().expect("lock");
    // Slice 0: two SlowDown and a success when it is read to learn the slice shape, then once in the chunk.
    assert_eq!(seen.get("GET /bkt/s/00000.png"), Some(&4), "{seen:?}");
    assert_eq!(seen.get("GET /bkt/s/00001.png"), Some(&2), "{seen:?}");
    assert_eq!(seen.get("GET /bkt/s/00002.png"), Some(&1), "{seen:?}");
}

#[test]
fn access_denied_fails_at_once_naming_index_and_key() {
    let (endpoint, seen) = serve(false);
    let (ok, err, csv) = run(&endpoint);
    assert!(!ok, "the run succeeded");
    assert_eq!(
        err.trim_end(),
        "error: slice 2: GetObject s3://bkt/s/00002.png failed: access denied (HTTP 403 AccessDenied)"
    );
    assert_eq!(csv, "", "a failed run wrote v.csv");
    assert_eq!(
        seen.lock().expect("lock").get("GET /bkt/s/00002.png"),
        Some(&1)
    );
}
