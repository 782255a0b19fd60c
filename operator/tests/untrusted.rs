//! The operator's reads of what a job controls, against real HTTP servers on loopback (no cluster): a
//! progress answer announced too large, one that never ends and one that trickles are each refused with
//! their error and without reading past the limit; and the finalizer's S3 requests carry the session token of
//! temporary credentials (`x-amz-security-token`), seen by a loopback server speaking enough S3 for a listing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrayjob_operator::progress::{self, ProgressError};
use arrayjob_s3::S3Credentials;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the loopback server does after the request head.
#[derive(Clone, Copy)]
enum Answer {
    /// `content-length` of 100 MB, then nothing.
    Announced,
    /// A body with no length that never ends; counts what was written.
    Endless,
    /// One byte every 500 ms.
    Trickle,
}

/// Serves one connection the way `answer` says; returns the address and the bytes written so far.
async fn serve(answer: Answer) -> anyhow::Result<(String, Arc<Mutex<usize>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let written = Arc::new(Mutex::new(0usize));
    let count = written.clone();
    tokio::spawn(async move {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        let mut head = [0u8; 4096];
        let _ = conn.read(&mut head).await;
        let start: &[u8] = match answer {
            Answer::Announced => b"HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n{",
            Answer::Endless | Answer::Trickle => {
                b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"phase\": \"running\", \"stages\": ["
            }
        };
        if conn.write_all(start).await.is_err() {
            return;
        }
        let piece = vec![b' '; 64 * 1024];
        loop {
            let r = match answer {
                Answer::Announced => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                Answer::Endless => conn.write_all(&piece).await.map(|()| piece.len()),
                Answer::Trickle => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    conn.write_all(b" ").await.map(|()| 1)
                }
            };
            match r {
                Ok(n) => *count.lock().unwrap_or_else(|e| e.into_inner()) += n,
                Err(_) => return,
            }
        }
    });
    Ok((addr, written))
}

async fn read(addr: &str) -> anyhow::Result<Result<Vec<u8>, ProgressError>> {
    let answer = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(format!("http://{addr}/v1/progress"))
        .send()
        .await?;
    Ok(progress::read_body(answer, progress::BODY_LIMIT).await)
}

#[tokio::test]
async fn oversized_endless_and_trickling_answers_are_refused_within_bounds() -> anyhow::Result<()> {
    let (addr, _) = serve(Answer::Announced).await?;
    let started = Instant::now();
    assert_eq!(
        read(&addr).await?,
        Err(ProgressError::TooLarge {
            limit: progress::BODY_LIMIT
        })
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused from the header"
    );

    let (addr, written) = serve(Answer::Endless).await?;
    assert_eq!(
        read(&addr).await?,
        Err(ProgressError::TooLarge {
            limit: progress::BODY_LIMIT
        })
    );
    // The reader stopped at the limit: the server could only write that much more than socket buffers hold.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = *written.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        (progress::BODY_LIMIT..progress::BODY_LIMIT + (16 << 20)).contains(&sent),
        "{sent} bytes written"
    );

    let (addr, _) = serve(Answer::Trickle).await?;
    let started = Instant::now();
    assert_eq!(
        read(&addr).await?,
        Err(ProgressError::Timeout(progress::READ_TIMEOUT))
    );
    let took = started.elapsed();
    assert!(
        took >= progress::READ_TIMEOUT && took < progress::READ_TIMEOUT + Duration::from_secs(2),
        "{took:?}"
    );
    Ok(())
}

/// A loopback server answering every request with an empty ListObjectsV2 page; returns its endpoint and the
/// request heads it saw.
async fn fake_s3() -> anyhow::Result<(String, Arc<Mutex<Vec<String>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let Ok(n) = conn.read(&mut buf).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(head);
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>b</Name>\
                    <Prefix></Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys>\
                    <IsTruncated>false</IsTruncated></ListBucketResult>";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    Ok((endpoint, heads))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cleanup_sends_the_session_token_of_temporary_credentials() -> anyhow::Result<()> {
    let (endpoint, heads) = fake_s3().await?;
    let storage: arrayjob_spec::spec::S3Storage = serde_yaml::from_str(&format!(
        "{{bucket: b, endpoint: \"{endpoint}\", region: us-east-1, forcePathStyle: true}}"
    ))?;
    let data = [
        ("AWS_ACCESS_KEY_ID", "ASIATEMPORARY"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEXAMPLETOKEN"),
    ]
    .iter()
    .map(|(k, v)| {
        (
            (*k).to_owned(),
            k8s_openapi::ByteString(v.as_bytes().to_vec()),
        )
    })
    .collect();
    let temporary =
        arrayjob_operator::scratch::credentials(&data, "lab/s3").map_err(anyhow::Error::msg)?;
    let s = storage.clone();
    let removed = tokio::task::spawn_blocking(move || {
        arrayjob_operator::scratch::remove(&s, temporary, "em", "em-0a1b2c3d4e5f")
    })
    .await??;
    assert_eq!(removed, 0);
    let seen = heads.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with("get /b/?list-type=2")
            && seen[0].contains("prefix=scratch%2fem%2fem-0a1b2c3d4e5f%2f"),
        "{}",
        seen[0]
    );
    assert!(
        seen[0].contains("\r\nx-amz-security-token: fwogzxivyxdzexampletoken\r\n"),
        "{}",
        seen[0]
    );
    assert!(seen[0].contains("credential=asiatemporary/"), "{}", seen[0]);
    assert!(
        seen[0]
            .contains("signedheaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token;"),
        "the token is signed: {}",
        seen[0]
    );

    // Long-lived keys: no token header.
    let long = S3Credentials::Static {
        access_key: "AKIALONG".into(),
        secret_key: "secret".into(),
        session_token: None,
    };
    tokio::task::spawn_blocking(move || {
        arrayjob_operator::scratch::remove(&storage, long, "em", "em-0a1b2c3d4e5f")
    })
    .await??;
    let seen = heads.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(seen.len(), 2);
    assert!(!seen[1].contains("x-amz-security-token"), "{}", seen[1]);
    assert!(seen[1].contains("credential=akialong/"), "{}", seen[1]);
    Ok(())
}
