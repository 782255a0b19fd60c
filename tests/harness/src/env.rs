//! Starting, sharing and using a whole test environment.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use crate::agent::{self, ImageTarget, NodeSpec, lock};
use crate::locate::{self, Binaries};
use crate::proc::{ProcessGroup, free_ports, prune_stale_runs};
use crate::s3::{self, S3Endpoint};
use crate::{Error, Result};

/// What to start.
#[derive(Debug, Clone)]
pub struct EnvOptions {
    /// Nodes the agent registers ([`agent::default_nodes`] by default).
    pub nodes: Vec<NodeSpec>,
    /// Image name -> local binary. By default `busybox` and `sh` map to `/bin/sh`.
    pub images: BTreeMap<String, PathBuf>,
    /// The `arrayjob-node-agent` binary; found by [`locate::node_agent`] when `None`.
    pub node_agent: Option<PathBuf>,
    /// How long to wait for the whole environment to become ready.
    pub ready_timeout: Duration,
}

impl Default for EnvOptions {
    fn default() -> Self {
        let mut images = BTreeMap::new();
        images.insert("busybox".to_owned(), PathBuf::from("/bin/sh"));
        images.insert("sh".to_owned(), PathBuf::from("/bin/sh"));
        EnvOptions {
            nodes: agent::default_nodes(),
            images,
            node_agent: None,
            ready_timeout: Duration::from_secs(120),
        }
    }
}

/// A running environment: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
/// SeaweedFS and the node agent, all on loopback, all in one process group that a watchdog kills
/// when the owning test process ends. Dropping an owned environment stops it at once.
#[derive(Debug)]
pub struct TestEnv {
    bins: Binaries,
    run_dir: PathBuf,
    kubeconfig: PathBuf,
    api_server: String,
    s3: S3Endpoint,
    nodes: Vec<NodeSpec>,
    images_file: PathBuf,
    agent_state: PathBuf,
    group: Mutex<ProcessGroup>,
}

static SHARED: OnceLock<std::result::Result<TestEnv, String>> = OnceLock::new();
static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

fn kubeconfig_yaml(server: &str, pki: &Path, user: &str) -> String {
    let p = |f: &str| pki.join(f).display().to_string();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: arrayjob-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {crt}
    client-key: {key}
contexts:
- name: arrayjob-test
  context:
    cluster: arrayjob-test
    user: {user}
current-context: arrayjob-test
",
        ca = p("ca.crt"),
        crt = p(&format!("{user}.crt")),
        key = p(&format!("{user}.key")),
    )
}

fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, data).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

async fn client_for(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}

fn run_command(mut cmd: Command, input: Option<&str>) -> Result<String> {
    let line = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("spawn {line}"), e))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| Error::io("write stdin", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("wait {line}"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

impl TestEnv {
    /// The environment shared by all tests of this test binary, started on first use with
    /// [`EnvOptions::default`].
    pub fn shared() -> Result<&'static TestEnv> {
        Self::shared_with(EnvOptions::default)
    }

    /// Like [`TestEnv::shared`]; `options` is used only by the call that starts it.
    pub fn shared_with(options: impl FnOnce() -> EnvOptions) -> Result<&'static TestEnv> {
        SHARED
            .get_or_init(|| Self::start(options()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::SharedStart(e.clone()))
    }

    /// Starts a new environment owned by the caller (blocking; call it from any context).
    pub fn start(options: EnvOptions) -> Result<TestEnv> {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("build a tokio runtime", e))?;
            rt.block_on(Self::start_async(options))
        })
        .join()
        .map_err(|_| Error::Invalid("the start-up thread panicked".into()))?
    }

    async fn start_async(opts: EnvOptions) -> Result<TestEnv> {
        let t0 = Instant::now();
        let bins = Binaries::locate()?;
        let node_agent = match opts.node_agent.clone() {
            Some(p) => p,
            None => locate::node_agent()?,
        };
        let runs = locate::cache_dir().join("run");
        std::fs::create_dir_all(&runs).map_err(|e| Error::io("create run dir", e))?;
        prune_stale_runs(&runs, 4);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let run_dir = runs.join(format!("{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&run_dir).map_err(|e| Error::io("create run dir", e))?;
        let mut group = ProcessGroup::start(&run_dir)?;

        let ports = free_ports(5)?;
        let port = |i: usize| ports.get(i).copied().unwrap_or_default();
        let (etcd_client, etcd_peer, api_port, kcm_port, sched_port) =
            (port(0), port(1), port(2), port(3), port(4));

        // S3 first: it is independent of everything else.
        let (weed, s3) = s3::weed_mini(&bins.weed, &run_dir)?;
        group.spawn("seaweedfs", weed)?;

        let mut etcd = Command::new(&bins.etcd);
        let peer = format!("http://127.0.0.1:{etcd_peer}");
        let client_url = format!("http://127.0.0.1:{etcd_client}");
        etcd.arg("--name=arrayjob-test")
            .arg(format!(
                "--data-dir={}",
                run_dir.join("etcd-data").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=arrayjob-test={peer}"))
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        group.spawn("etcd", etcd)?;
        wait_tcp(&mut group, etcd_client, Duration::from_secs(30), "etcd").await?;

        let pki = &bins.pki_dir;
        let pf = |f: &str| pki.join(f).display().to_string();
        let mut api = Command::new(&bins.kube_apiserver);
        api.arg(format!("--etcd-servers={client_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            .arg("--endpoint-reconciler-type=none")
            .arg(format!(
                "--cert-dir={}",
                run_dir.join("apiserver-certs").display()
            ))
            .arg(format!("--tls-cert-file={}", pf("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", pf("apiserver.key")))
            .arg(format!("--client-ca-file={}", pf("ca.crt")))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", pf("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pf("sa.key")
            ))
            .arg(format!(
                "--service-cluster-ip-range={}",
                service_cidr(std::process::id())
            ))
            .arg("--profiling=false");
        group.spawn("kube-apiserver", api)?;

        let api_server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = run_dir.join("admin.kubeconfig");
        write(&kubeconfig, kubeconfig_yaml(&api_server, pki, "admin"))?;
        let kcm_kc = run_dir.join("controller-manager.kubeconfig");
        write(
            &kcm_kc,
            kubeconfig_yaml(&api_server, pki, "controller-manager"),
        )?;
        let sched_kc = run_dir.join("scheduler.kubeconfig");
        write(&sched_kc, kubeconfig_yaml(&api_server, pki, "scheduler"))?;

        let deadline = Instant::now() + opts.ready_timeout;
        let client = client_for(&kubeconfig).await?;
        wait_until(&mut group, deadline, "kube-apiserver /readyz", || {
            let client = client.clone();
            async move {
                let req = http::Request::get("/readyz")
                    .body(Vec::new())
                    .map_err(|e| Error::Invalid(e.to_string()))?;
                Ok(client
                    .request_text(req)
                    .await
                    .is_ok_and(|t| t.trim() == "ok"))
            }
        })
        .await?;

        // Started once RBAC is bootstrapped: kube-controller-manager exits when it cannot read
        // kube-system/extension-apiserver-authentication at start-up.
        let mut kcm = Command::new(&bins.kube_controller_manager);
        kcm.arg(format!("--kubeconfig={}", kcm_kc.display()))
            .arg(format!("--authentication-kubeconfig={}", kcm_kc.display()))
            .arg(format!("--authorization-kubeconfig={}", kcm_kc.display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={kcm_port}"))
            .arg(format!(
                "--cert-dir={}",
                run_dir.join("kcm-certs").display()
            ))
            .arg("--leader-elect=false")
            .arg("--use-service-account-credentials=true")
            .arg(format!(
                "--service-account-private-key-file={}",
                pf("sa.key")
            ))
            .arg(format!("--root-ca-file={}", pf("ca.crt")))
            .arg(format!("--cluster-signing-cert-file={}", pf("ca.crt")))
            .arg(format!("--cluster-signing-key-file={}", pf("ca.key")))
            .arg("--profiling=false");
        group.spawn("kube-controller-manager", kcm)?;

        let mut sched = Command::new(&bins.kube_scheduler);
        sched
            .arg(format!("--kubeconfig={}", sched_kc.display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                sched_kc.display()
            ))
            .arg(format!("--authorization-kubeconfig={}", sched_kc.display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={sched_port}"))
            .arg(format!(
                "--cert-dir={}",
                run_dir.join("scheduler-certs").display()
            ))
            .arg("--leader-elect=false")
            .arg("--profiling=false");
        group.spawn("kube-scheduler", sched)?;

        // Node agent.
        let images_file = run_dir.join("images.json");
        write(&images_file, serde_json::to_vec_pretty(&opts.images)?)?;
        let nodes_file = run_dir.join("nodes.json");
        write(&nodes_file, serde_json::to_vec_pretty(&opts.nodes)?)?;
        let agent_state = run_dir.join("agent");
        let third = u8::try_from(1 + std::process::id() % 200).unwrap_or(1);
        let mut agent_cmd = Command::new(&node_agent);
        agent_cmd
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("run")
            .arg(format!("--nodes={}", nodes_file.display()))
            .arg(format!("--images={}", images_file.display()))
            .arg(format!("--state-dir={}", agent_state.display()))
            .arg(format!("--pgid-dir={}", run_dir.join("podpgids").display()))
            .arg(format!(
                "--container-dir={}",
                run_dir.join("podcontainers").display()
            ))
            .arg(format!(
                "--pod-ip-start={}",
                Ipv4Addr::new(127, 0, third, 1)
            ))
            .arg(format!("--api-host-port=127.0.0.1:{api_port}"))
            .args(["--pass-env=RUST_LOG", "--pass-env=RUST_BACKTRACE"])
            .env("RUST_LOG", "info,kube=warn");
        group.spawn("node-agent", agent_cmd)?;

        let node_names: Vec<String> = opts.nodes.iter().map(|n| n.name.clone()).collect();
        wait_until(
            &mut group,
            deadline,
            "nodes Ready (no node.kubernetes.io/* taints)",
            || {
                let api: Api<Node> = Api::all(client.clone());
                let names = node_names.clone();
                async move {
                    for n in names {
                        let Some(node) = api.get_opt(&n).await.ok().flatten() else {
                            return Ok(false);
                        };
                        let ready = node
                            .status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            });
                        let tainted = node
                            .spec
                            .as_ref()
                            .and_then(|s| s.taints.as_ref())
                            .is_some_and(|t| {
                                t.iter().any(|t| t.key.starts_with("node.kubernetes.io/"))
                            });
                        if !ready || tainted {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                }
            },
        )
        .await?;
        wait_until(
            &mut group,
            deadline,
            "the default service account (kube-controller-manager)",
            || {
                let api: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
                async move { Ok(api.get_opt("default").await.ok().flatten().is_some()) }
            },
        )
        .await?;
        let s3c = s3.client();
        wait_until(&mut group, deadline, "SeaweedFS S3", || {
            let s3c = s3c.clone();
            async move { Ok(s3c.list_buckets().send().await.is_ok()) }
        })
        .await?;
        tracing::info!(
            "test environment ready in {:.1} s at {}",
            t0.elapsed().as_secs_f64(),
            run_dir.display()
        );
        write(
            &run_dir.join("ready"),
            format!("{:.1}\n", t0.elapsed().as_secs_f64()),
        )?;
        Ok(TestEnv {
            bins,
            run_dir,
            kubeconfig,
            api_server,
            s3,
            nodes: opts.nodes,
            images_file,
            agent_state,
            group: Mutex::new(group),
        })
    }

    /// A new client for the API server (as cluster admin). Create one per test: a client is
    /// bound to the tokio runtime it first runs on.
    pub async fn client(&self) -> Result<Client> {
        client_for(&self.kubeconfig).await
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server URL (`https://127.0.0.1:<port>`).
    pub fn api_server(&self) -> &str {
        &self.api_server
    }

    /// The S3 endpoint and credentials.
    pub fn s3(&self) -> &S3Endpoint {
        &self.s3
    }

    /// The registered nodes.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// The folder with this environment's logs (`logs/`), kubeconfigs and agent state.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Paths of the binaries in use.
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// Maps a container image to a local binary for pods started from now on.
    pub fn map_image(&self, image: &str, binary: &Path) -> Result<()> {
        self.set_image(image, ImageTarget::Binary(binary.to_path_buf()))
    }

    /// Maps a container image to an image of podman's local store (e.g. one made by
    /// [`crate::podman::build_image`]) for pods started from now on: their containers run as podman
    /// containers, with the security context and limits enforced (the agent's container mode).
    pub fn map_image_to_container(&self, image: &str, podman_image: &str) -> Result<()> {
        self.set_image(
            image,
            ImageTarget::Container {
                podman: podman_image.to_owned(),
            },
        )
    }

    fn set_image(&self, image: &str, target: ImageTarget) -> Result<()> {
        let _g = lock(&self.group);
        let mut map: BTreeMap<String, ImageTarget> =
            match std::fs::read_to_string(&self.images_file) {
                Ok(s) => serde_json::from_str(&s)?,
                Err(_) => BTreeMap::new(),
            };
        map.insert(image.to_owned(), target);
        let tmp = self.images_file.with_extension("json.tmp");
        write(&tmp, serde_json::to_vec_pretty(&map)?)?;
        std::fs::rename(&tmp, &self.images_file).map_err(|e| Error::io("rename images.json", e))
    }

    /// Where the agent appends the output of a pod's container.
    pub fn pod_log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.agent_state
            .join("pods")
            .join(namespace)
            .join(pod)
            .join(format!("{container}.log"))
    }

    /// The output of a pod's container so far (all runs, appended).
    pub fn pod_log(&self, namespace: &str, pod: &str, container: &str) -> Result<String> {
        let p = self.pod_log_path(namespace, pod, container);
        std::fs::read_to_string(&p).map_err(|e| Error::io(format!("read {}", p.display()), e))
    }

    /// Runs kubectl against this cluster and returns its standard output.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_with_input(args, None)
    }

    /// Runs kubectl with `input` on its standard input (e.g. `apply -f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        self.kubectl_as(&self.kubeconfig, args, input)
    }

    /// Runs kubectl with another kubeconfig (e.g. one holding a service-account token).
    pub fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String> {
        let mut cmd = Command::new(&self.bins.kubectl);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.run_dir.join("kube-cache").display()
            ))
            .args(args);
        run_command(cmd, input)
    }

    /// Runs Helm 3 against this cluster and returns its standard output.
    pub fn helm(&self, args: &[&str]) -> Result<String> {
        self.run_helm(&self.bins.helm, "helm", args)
    }

    /// Runs Helm 4 against this cluster and returns its standard output. It keeps its own
    /// cache/config/data folders, apart from Helm 3's.
    pub fn helm4(&self, args: &[&str]) -> Result<String> {
        self.run_helm(&self.bins.helm4, "helm4", args)
    }

    fn run_helm(&self, program: &Path, home: &str, args: &[&str]) -> Result<String> {
        let home = self.run_dir.join(home);
        let mut cmd = Command::new(program);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .args(args);
        run_command(cmd, None)
    }

    /// Creates a fresh namespace `<prefix>-<n>` and waits for its default service account. The
    /// namespace is deleted when the returned guard is dropped (also when the test panics).
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let n = NS_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let name = format!("{prefix}-{}-{n}", std::process::id() % 100_000);
        let client = self.client().await?;
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"arrayjob.dev/test": "true"}}
        }))?;
        api.create(&PostParams::default(), &ns).await?;
        let guard = TestNamespace {
            name: name.clone(),
            kubectl: self.bins.kubectl.clone(),
            kubeconfig: self.kubeconfig.clone(),
        };
        let sa: Api<ServiceAccount> = Api::namespaced(client, &name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while sa.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("service account default in {name}"),
                    secs: 30,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(guard)
    }

    /// Polls the pod until `pred` holds; returns it.
    pub async fn wait_pod(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Pod) -> bool,
    ) -> Result<Pod> {
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = api.get_opt(name).await?
                && pred(&p)
            {
                return Ok(p);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("pod {namespace}/{name}: {what}"),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until the pod no longer exists.
    pub async fn wait_pod_gone(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let deadline = Instant::now() + timeout;
        while api.get_opt(name).await?.is_some() {
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("pod {namespace}/{name} to be deleted"),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Simulates a spot interruption of `node` (see [`agent::reclaim::reclaim_spot_node`]).
    pub async fn reclaim_spot_node(
        &self,
        node: &str,
        grace: Option<u32>,
    ) -> Result<agent::reclaim::ReclaimReport> {
        let client = self.client().await?;
        agent::reclaim::reclaim_spot_node(&client, node, grace).await
    }

    /// Stops every process of this environment now (also done by the watchdog at exit).
    pub fn stop(&self) {
        lock(&self.group).shutdown();
    }
}

/// A namespace for one test, deleted (without waiting) when dropped.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Blocking and runtime-free, so it also works while a test unwinds.
        let _ = Command::new(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The Service ClusterIP range of the environment started by process `pid`: a loopback /24
/// (`127.100-199.x.0/24`, chosen from the PID so that concurrent environments rarely share one),
/// so that the node agent can listen on the ClusterIPs and nothing ever goes to a private-range
/// address. The first address goes to the `kubernetes` Service.
pub(crate) fn service_cidr(pid: u32) -> String {
    let second = 100 + pid % 100;
    let third = (pid / 100) % 256;
    format!("127.{second}.{third}.0/24")
}

async fn wait_tcp(
    group: &mut ProcessGroup,
    port: u16,
    timeout: Duration,
    what: &str,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        group.check_alive()?;
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                secs: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until<F, Fut>(
    group: &mut ProcessGroup,
    deadline: Instant,
    what: &str,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        if check().await? {
            tracing::debug!("{what} after {:.1} s", started.elapsed().as_secs_f64());
            return Ok(());
        }
        group.check_alive()?;
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                secs: started.elapsed().as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ranges_are_loopback_and_differ_between_processes() {
        assert_eq!(service_cidr(0), "127.100.0.0/24");
        assert_eq!(service_cidr(12_345), "127.145.123.0/24");
        assert_ne!(service_cidr(12_345), service_cidr(12_346));
        assert_ne!(service_cidr(12_345), service_cidr(12_445));
    }
}
