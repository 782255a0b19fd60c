//! `arrayjob-test-pod`: a small program the e2e tests run as a pod image.
//!
//! ```text
//! arrayjob-test-pod serve --addr IP:PORT --body TEXT --ready-file PATH [--listen-after-ms N]
//!     HTTP: `GET /` answers TEXT; `GET /ready` answers 200 while PATH exists, else 503.
//!     With --listen-after-ms, the port opens only after N ms.
//! arrayjob-test-pod api-check --namespace NS
//!     With the in-cluster configuration (service-account token files and
//!     KUBERNETES_SERVICE_HOST/PORT), prints who the API server says we are, then the outcome of
//!     listing pods and of creating a ConfigMap in NS, one line each.
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(about = "Test program run as a pod by the arrayjob e2e tests")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve TEXT over HTTP, ready while a file exists.
    Serve {
        /// Address to listen on.
        #[arg(long)]
        addr: String,
        /// Body of `GET /`.
        #[arg(long)]
        body: String,
        /// `GET /ready` answers 200 while this file exists.
        #[arg(long)]
        ready_file: PathBuf,
        /// Wait this long before listening.
        #[arg(long, default_value_t = 0)]
        listen_after_ms: u64,
    },
    /// Use the in-cluster service-account configuration against the API server.
    ApiCheck {
        /// Namespace to list pods in and create a ConfigMap in.
        #[arg(long)]
        namespace: String,
    },
}

async fn answer(mut s: TcpStream, body: String, ready_file: PathBuf) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
        let got = s.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let path = head.split(' ').nth(1).unwrap_or("/");
    let (code, text) = match path {
        "/ready" if ready_file.exists() => ("200 OK", "ready".to_owned()),
        "/ready" => ("503 Service Unavailable", "not ready".to_owned()),
        _ => ("200 OK", body),
    };
    let reply = format!(
        "HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    s.write_all(reply.as_bytes()).await?;
    s.shutdown().await
}

async fn serve(addr: &str, body: String, ready_file: PathBuf, delay: u64) -> anyhow::Result<()> {
    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen on {addr}"))?;
    println!("listening on {addr}");
    loop {
        let (s, _) = l.accept().await?;
        tokio::spawn(answer(s, body.clone(), ready_file.clone()));
    }
}

fn outcome<T>(r: kube::Result<T>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(kube::Error::Api(s)) => format!("{} {}", s.code, s.reason),
        Err(e) => format!("error {e}"),
    }
}

async fn api_check(ns: &str) -> anyhow::Result<()> {
    let cfg = kube::Config::incluster().context("in-cluster configuration")?;
    let client = kube::Client::try_from(cfg)?;
    let review: SelfSubjectReview = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"
    }))?;
    let me = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .context("SelfSubjectReview")?;
    let user = me.status.and_then(|s| s.user_info).unwrap_or_default();
    let extra = user.extra.unwrap_or_default();
    let pod_name = extra
        .get("authentication.kubernetes.io/pod-name")
        .and_then(|v| v.first().cloned())
        .unwrap_or_default();
    println!("user: {}", user.username.unwrap_or_default());
    println!("bound to pod: {pod_name}");
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await;
    println!(
        "list pods: {}",
        outcome(pods, |l| format!("ok {}", l.items.len()))
    );
    let cm: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "from-pod"}}))?;
    let created = Api::<ConfigMap>::namespaced(client, ns)
        .create(&PostParams::default(), &cm)
        .await;
    println!("create configmap: {}", outcome(created, |_| "ok".into()));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve {
            addr,
            body,
            ready_file,
            listen_after_ms,
        } => serve(&addr, body, ready_file, listen_after_ms).await,
        Cmd::ApiCheck { namespace } => api_check(&namespace).await,
    }
}
