//! The limits on numbers from outside (defined with the spec, [`arrayjob_spec::limits`], and re-exported here at
//! their old path), and reading an HTTP body within one.

pub use arrayjob_spec::limits::*;

/// Why [`read_body`] failed.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The body is larger than the limit (the message says so, with the limit).
    TooLarge(String),
    /// The connection failed while reading.
    Transport(reqwest::Error),
}

/// Bytes reserved at once for a body that announces its length: more is grown into as it arrives, so a
/// `Content-Length` that lies costs nothing.
const FIRST_RESERVE: u64 = 64 << 20;

/// Reads the body of `response`, refusing more than `limit` bytes (`per` says what the limit is for, e.g. `per
/// slice`): at once when the server announces a larger `Content-Length`, otherwise as soon as the bytes read pass
/// the limit, so a huge or endless body is never held in memory.
pub(crate) async fn read_body(
    mut response: reqwest::Response,
    limit: u64,
    per: &str,
) -> Result<Vec<u8>, BodyError> {
    let too_large = |what: String| {
        BodyError::TooLarge(format!(
            "response body {what} the limit of {limit} bytes {per}"
        ))
    };
    let announced = response.content_length();
    if let Some(n) = announced.filter(|&n| n > limit) {
        return Err(too_large(format!("of {n} bytes (Content-Length) exceeds")));
    }
    let reserve = announced.unwrap_or(0).min(FIRST_RESERVE);
    let mut body = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
    while let Some(piece) = response.chunk().await.map_err(BodyError::Transport)? {
        if (body.len() as u64).saturating_add(piece.len() as u64) > limit {
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
            read_body(response, limit, "per slice").await
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
