//! Upper bounds on what a source spec may ask for, so that a typo (a stop of 10^12, a height of 2^40, a
//! concurrency of 2^62) gives an error naming the field instead of an overflow, a panic or an attempt to
//! allocate petabytes. Validation and the sources call the same checks, so they give the same messages.

use super::SourceError;

/// Most slices a source may have (length of axis 0); also the largest `slicesPerChunk`.
pub const MAX_SLICES: u64 = 10_000_000;
/// Longest side of a slice, in pixels (`synthetic.height`/`width`, `sliceShape`).
pub const MAX_SLICE_SIDE: usize = 65_536;
/// Most HTTP requests in flight at once.
pub const MAX_CONCURRENCY: usize = 1024;
/// Largest HTTP response body of one slice, bytes (1 GiB; a 65536 x 65536 uint16 TIFF is 8 GiB, but no EM
/// slice served over HTTP comes near this).
pub const MAX_SLICE_BYTES: u64 = 1 << 30;

fn config(field: &str, message: String) -> SourceError {
    SourceError::Config {
        field: field.to_owned(),
        message,
    }
}

/// Number of slices of the index range `[start, stop)` of the source section `section` (e.g.
/// `spec.source.files`).
///
/// # Errors
/// Naming `section.stop` when the range is empty or longer than [`MAX_SLICES`].
pub fn slice_count(section: &str, start: u64, stop: u64) -> Result<usize, SourceError> {
    let field = format!("{section}.stop");
    if stop <= start {
        return Err(config(
            &field,
            format!("empty range [{start}, {stop}): stop must be greater than start"),
        ));
    }
    slices(&field, stop - start)
}

/// Checks a slice count (or `slicesPerChunk`): at least 1 and at most [`MAX_SLICES`].
///
/// # Errors
/// Naming `field` when it is out of that range.
pub fn slices(field: &str, n: u64) -> Result<usize, SourceError> {
    if n == 0 {
        return Err(config(field, "must be at least 1".into()));
    }
    if n > MAX_SLICES {
        return Err(config(
            field,
            format!("{n} slices is more than the limit of {MAX_SLICES}"),
        ));
    }
    usize::try_from(n).map_err(|_| config(field, format!("{n} does not fit this machine")))
}

/// Checks one side of a slice: at most [`MAX_SLICE_SIDE`] pixels (positivity is checked by the caller, whose
/// message says more, e.g. "a multiple of 4").
///
/// # Errors
/// Naming `field` when the side is too long.
pub fn slice_side(field: &str, v: usize) -> Result<(), SourceError> {
    if v > MAX_SLICE_SIDE {
        return Err(config(
            field,
            format!("{v} pixels is more than the limit of {MAX_SLICE_SIDE}"),
        ));
    }
    Ok(())
}

/// Checks an HTTP `concurrency`: between 1 and [`MAX_CONCURRENCY`].
///
/// # Errors
/// Naming `field` when it is out of that range.
pub fn concurrency(field: &str, v: usize) -> Result<(), SourceError> {
    if v == 0 {
        return Err(config(field, "must be at least 1".into()));
    }
    if v > MAX_CONCURRENCY {
        return Err(config(
            field,
            format!("{v} requests in flight is more than the limit of {MAX_CONCURRENCY}"),
        ));
    }
    Ok(())
}

/// Why [`read_body`] failed.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The body is larger than the limit (the message says so, with the limit).
    TooLarge(String),
    /// The connection failed while reading.
    Transport(reqwest::Error),
}

/// Reads the body of `response`, refusing more than `limit` bytes: at once when the server announces a larger
/// `Content-Length`, otherwise as soon as the bytes read pass the limit, so a huge or endless body is never
/// held in memory.
pub(crate) async fn read_body(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Vec<u8>, BodyError> {
    let too_large = |what: String| {
        BodyError::TooLarge(format!(
            "response body {what} the limit of {limit} bytes per slice"
        ))
    };
    if let Some(n) = response.content_length().filter(|&n| n > limit) {
        return Err(too_large(format!("of {n} bytes (Content-Length) exceeds")));
    }
    let mut body = Vec::with_capacity(response.content_length().unwrap_or(0) as usize);
    while let Some(piece) = response.chunk().await.map_err(BodyError::Transport)? {
        if (body.len() + piece.len()) as u64 > limit {
            return Err(too_large("exceeds".into()));
        }
        body.extend_from_slice(&piece);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Serves one request with `head` and then `body` on a loopback port; returns its URL.
    fn serve_once(head: &'static str, body: Vec<u8>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/s", listener.local_addr().expect("addr"));
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s
                    .write_all(head.as_bytes())
                    .and_then(|_| s.write_all(&body));
            }
        });
        url
    }

    fn fetch(url: &str, limit: u64) -> Result<Vec<u8>, BodyError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let response = reqwest::get(url).await.expect("response");
            read_body(response, limit).await
        })
    }

    /// `n` chunks of 100 bytes in chunked transfer encoding (no Content-Length).
    fn chunked(n: usize) -> Vec<u8> {
        let mut body = Vec::new();
        for _ in 0..n {
            body.extend_from_slice(b"64\r\n");
            body.extend_from_slice(&[7u8; 100]);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        body
    }

    const CHUNKED: &str =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";

    #[test]
    fn body_is_read_up_to_the_limit() {
        let url = serve_once(CHUNKED, chunked(3));
        assert_eq!(fetch(&url, 300).expect("within the limit"), vec![7u8; 300]);
    }

    #[test]
    fn body_past_the_limit_is_refused_while_streaming() {
        let url = serve_once(CHUNKED, chunked(3));
        match fetch(&url, 250) {
            Err(BodyError::TooLarge(m)) => {
                assert_eq!(m, "response body exceeds the limit of 250 bytes per slice")
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn announced_length_past_the_limit_is_refused_at_once() {
        let url = serve_once(
            "HTTP/1.1 200 OK\r\nContent-Length: 5000000000\r\nConnection: close\r\n\r\n",
            vec![1; 10],
        );
        match fetch(&url, MAX_SLICE_BYTES) {
            Err(BodyError::TooLarge(m)) => assert_eq!(
                m,
                "response body of 5000000000 bytes (Content-Length) exceeds the limit of 1073741824 bytes per slice"
            ),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
}
