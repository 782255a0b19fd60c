//! The objects an ArrayJob needs, built from the resource alone (a pure function of it and the operator's
//! settings): the job token Secret, the manifest ConfigMap, the coordinator's Service and Pod, the worker
//! Pods. The reconciler applies them; the unit tests below check them field by field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SeccompProfile, Secret, SecretEnvSource, SecretKeySelector,
    SecurityContext, Service, ServicePort, ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::Digest;

pub use crate::settings::{Peer, Settings};
use crate::v1alpha1::ArrayJob;

/// The coordinator's port (workers' requests, the operator's progress reads).
pub const COORDINATOR_PORT: i32 = 7070;
/// Where the manifest is mounted in the coordinator.
const MANIFEST_DIR: &str = "/etc/arrayjob";
/// The key of the token in the job's Secret.
pub const TOKEN_KEY: &str = "token";
/// Label naming the job an object belongs to.
pub const JOB_LABEL: &str = "arrayjob.dev/job";
/// Label saying what the object is to the job: `coordinator` or `worker`.
pub const ROLE_LABEL: &str = "arrayjob.dev/role";
/// The node label of the capacity type (Karpenter's; EKS managed groups use `eks.amazonaws.com/capacityType`).
pub const CAPACITY_LABEL: &str = "karpenter.sh/capacity-type";

/// The names of a job's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The token Secret.
    pub secret: String,
    /// The manifest ConfigMap.
    pub config: String,
    /// The coordinator's Service and Pod.
    pub coordinator: String,
    /// Worker pods are named `{worker_prefix}{n}`.
    pub worker_prefix: String,
    /// The NetworkPolicy that lets only the job's pods (and the operator) reach them.
    pub network_policy: String,
}

/// The longest ArrayJob name used as is in its objects' names; a longer one, or one that is not a DNS label
/// (dots, capitals), gets a [`key`] made of its cleaned start and a hash.
pub const KEY_MAX: usize = 40;

/// The job's key: its name when that is a DNS label of at most [`KEY_MAX`] characters, else the name cleaned
/// to one (lowercase letters, digits, `-`; at most 31 characters) and `-` and 8 hex digits of its SHA-256. A
/// DNS-1123 label either way: the value of the `arrayjob.dev/job` label, the manifest's `metadata.name` and
/// the scratch prefix's job part; `aj-{key}` is a valid Service name (DNS-1035) whatever the ArrayJob's name
/// (up to 253 characters, dots allowed).
pub fn key(job: &ArrayJob) -> String {
    key_of(&job.name_any())
}

fn key_of(name: &str) -> String {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if plain
        && !name.is_empty()
        && name.len() <= KEY_MAX
        && !name.starts_with('-')
        && !name.ends_with('-')
    {
        return name.to_owned();
    }
    let digest = sha2::Sha256::digest(name.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let mut clean = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            clean.push(c);
        } else if !clean.is_empty() && !clean.ends_with('-') {
            clean.push('-');
        }
        if clean.len() >= KEY_MAX - hash.len() - 1 {
            break;
        }
    }
    let clean = clean.trim_end_matches('-');
    if clean.is_empty() {
        hash
    } else {
        format!("{clean}-{hash}")
    }
}

/// The names of `job`'s objects: `aj-{key}` and suffixes (see [`key`]), 63 characters at most but for the
/// worker pods' numbers.
pub fn names(job: &ArrayJob) -> Names {
    let base = format!("aj-{}", key(job));
    Names {
        secret: format!("{base}-token"),
        config: format!("{base}-manifest"),
        coordinator: base.clone(),
        worker_prefix: format!("{base}-worker-"),
        network_policy: format!("{base}-peers"),
    }
}

/// The role label of a pod (`coordinator`, `worker`).
pub fn role(p: &Pod) -> &str {
    p.labels().get(ROLE_LABEL).map_or("", String::as_str)
}

/// The labels of `job`'s objects of `role`.
pub fn labels(job: &ArrayJob, role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "arrayjob".to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "arrayjob-operator".to_owned(),
        ),
        (JOB_LABEL.to_owned(), key(job)),
        (ROLE_LABEL.to_owned(), role.to_owned()),
    ])
}

/// Metadata of an object of `job` named `name`, owned by the job (garbage-collected with it).
fn meta(job: &ArrayJob, name: &str, role: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: job.namespace(),
        labels: Some(labels(job, role)),
        owner_references: job
            .controller_owner_ref(&())
            .map(|o: OwnerReference| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Where the outputs of `job` are published.
///
/// # Errors
/// The field path and the problem, when neither `spec.output` nor `spec.storage.s3` says it.
pub fn output_uri(job: &ArrayJob) -> Result<String, String> {
    if let Some(o) = &job.spec.output {
        return Ok(o.trim_end_matches('/').to_owned());
    }
    let s3 =
        job.spec.job.s3_storage().ok_or_else(|| {
            "spec.storage.s3: required on Kubernetes (outputs go to S3)".to_owned()
        })?;
    Ok(format!(
        "s3://{}/{}outputs/{}/{}",
        s3.bucket,
        s3.prefix.as_deref().unwrap_or_default(),
        job.namespace().unwrap_or_default(),
        job.name_any()
    ))
}

/// The run id the coordinator uses: stable for the object (a coordinator pod started again resumes from the
/// ledger), new for a new object of the same name: `{key}-{12 hex digits of the UID}`, at most 53 characters.
pub fn job_id(job: &ArrayJob) -> String {
    let uid = job.uid().unwrap_or_default();
    let short: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .take(12)
        .collect();
    format!("{}-{short}", key(job))
}

/// The Secret holding the job token (created once; never rewritten).
pub fn token_secret(job: &ArrayJob, token: &str) -> Secret {
    Secret {
        metadata: meta(job, &names(job).secret, "token"),
        string_data: Some(BTreeMap::from([(TOKEN_KEY.to_owned(), token.to_owned())])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The manifest `arrayjob run` reads in the coordinator: the engine's part of the spec.
///
/// # Errors
/// When the spec cannot be written as YAML (a bug).
pub fn manifest_config(job: &ArrayJob) -> Result<ConfigMap, serde_yaml::Error> {
    let manifest = serde_json::json!({
        "apiVersion": "arrayjob.dev/v1alpha1",
        "kind": "ArrayJob",
        "metadata": {"name": key(job)},
        "spec": job.spec.job,
    });
    Ok(ConfigMap {
        metadata: meta(job, &names(job).config, "manifest"),
        data: Some(BTreeMap::from([(
            "job.yaml".to_owned(),
            serde_yaml::to_string(&manifest)?,
        )])),
        ..ConfigMap::default()
    })
}

/// The coordinator's stable address.
pub fn coordinator_service(job: &ArrayJob) -> Service {
    let n = names(job);
    Service {
        metadata: meta(job, &n.coordinator, "coordinator"),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([
                (JOB_LABEL.to_owned(), key(job)),
                (ROLE_LABEL.to_owned(), "coordinator".to_owned()),
            ])),
            ports: Some(vec![ServicePort {
                name: Some("coordinator".into()),
                port: COORDINATOR_PORT,
                target_port: Some(IntOrString::Int(COORDINATOR_PORT)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The job's NetworkPolicy: its pods (coordinator and workers) accept traffic only from each other, and the
/// coordinator's port from the operator's pods (its progress reads). Other policies of the namespace add to
/// it (e.g. to let Prometheus scrape the coordinator).
pub fn network_policy(job: &ArrayJob, settings: &Settings) -> NetworkPolicy {
    let mine = || LabelSelector {
        match_labels: Some(BTreeMap::from([(JOB_LABEL.to_owned(), key(job))])),
        ..LabelSelector::default()
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(mine()),
            ..NetworkPolicyPeer::default()
        }]),
        ports: None,
    }];
    if let Some(peer) = &settings.operator_peer {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_owned(),
                        peer.namespace.clone(),
                    )])),
                    ..LabelSelector::default()
                }),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(peer.labels.clone()),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![NetworkPolicyPort {
                port: Some(IntOrString::Int(COORDINATOR_PORT)),
                protocol: Some("TCP".into()),
                ..NetworkPolicyPort::default()
            }]),
        });
    }
    NetworkPolicy {
        metadata: meta(job, &names(job).network_policy, "network-policy"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(mine()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }
}

/// The environment variable kubelet gives pods for the coordinator's Service address (`{NAME}_SERVICE_HOST`).
pub fn service_env(job: &ArrayJob, suffix: &str) -> String {
    format!(
        "{}_SERVICE_{suffix}",
        names(job).coordinator.to_uppercase().replace('-', "_")
    )
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Environment common to the coordinator and workers: the pod's IP, the token, S3 credentials.
fn common_env(job: &ArrayJob) -> (Vec<EnvVar>, Option<Vec<EnvFromSource>>) {
    let token = EnvVar {
        name: "ARRAYJOB_TOKEN".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: names(job).secret,
                key: TOKEN_KEY.into(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let env = vec![
        field_env("POD_IP", "status.podIP"),
        token,
        plain_env("ARRAYJOB_LOG_FORMAT", "json"),
    ];
    let from = job.spec.s3_credentials_secret.as_ref().map(|s| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: s.clone(),
                ..SecretEnvSource::default()
            }),
            ..EnvFromSource::default()
        }]
    });
    (env, from)
}

/// Non-root, read-only root filesystem, no capabilities, the runtime's seccomp profile.
fn restricted() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        // Not left to the image's /etc/passwd (0 on an image without the `nonroot` user).
        run_as_group: Some(65532),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

fn tmp_volume() -> (Volume, VolumeMount) {
    (
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    )
}

/// A pod of `job` running `args` of the image's `arrayjob` program.
fn pod(job: &ArrayJob, name: &str, role: &str, container: Container) -> Pod {
    let w = &job.spec.workers;
    let (tmp, _) = tmp_volume();
    let mut volumes = vec![tmp];
    if role == "coordinator" {
        volumes.push(Volume {
            name: "manifest".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names(job).config,
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let mut node_selector = w.node_selector.clone();
    let mut tolerations: Vec<Toleration> = w
        .tolerations
        .iter()
        .map(|t| Toleration {
            key: t.key.clone(),
            operator: t.operator.clone(),
            value: t.value.clone(),
            effect: t.effect.clone(),
            ..Toleration::default()
        })
        .collect();
    if w.spot && role == "worker" {
        node_selector.insert(CAPACITY_LABEL.into(), "spot".into());
        tolerations.push(Toleration {
            key: Some(CAPACITY_LABEL.into()),
            operator: Some("Equal".into()),
            value: Some("spot".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        });
    }
    Pod {
        metadata: meta(job, name, role),
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            service_account_name: w.service_account_name.clone(),
            enable_service_links: Some(true),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            node_selector: (!node_selector.is_empty() && role == "worker").then_some(node_selector),
            tolerations: (!tolerations.is_empty() && role == "worker").then_some(tolerations),
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn image(job: &ArrayJob, settings: &Settings) -> String {
    job.spec
        .workers
        .image
        .clone()
        .unwrap_or_else(|| settings.image.clone())
}

/// The coordinator pod: `arrayjob run` of the manifest, listening on its pod IP for the workers, publishing to
/// the job's output location, resumable under the job's stable id.
///
/// # Errors
/// When the output location cannot be derived (see [`output_uri`]).
pub fn coordinator_pod(job: &ArrayJob, settings: &Settings) -> Result<Pod, String> {
    let n = names(job);
    let (mut env, env_from) = common_env(job);
    env.push(plain_env("ARRAYJOB_QUIET", "true"));
    let (_, tmp_mount) = tmp_volume();
    let container = Container {
        name: "coordinator".into(),
        image: Some(image(job, settings)),
        command: Some(vec!["arrayjob".into()]),
        args: Some(vec![
            "run".into(),
            format!("{MANIFEST_DIR}/job.yaml"),
            "--out".into(),
            output_uri(job)?,
            "--listen".into(),
            format!("$(POD_IP):{COORDINATOR_PORT}"),
            "--job-id".into(),
            job_id(job),
        ]),
        env: Some(env),
        env_from,
        ports: Some(vec![ContainerPort {
            name: Some("coordinator".into()),
            container_port: COORDINATOR_PORT,
            ..ContainerPort::default()
        }]),
        volume_mounts: Some(vec![
            tmp_mount,
            VolumeMount {
                name: "manifest".into(),
                mount_path: MANIFEST_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        security_context: Some(restricted()),
        // The job's failure is the end of the coordinator's log: it shows in the pod's status.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    Ok(pod(job, &n.coordinator, "coordinator", container))
}

/// A worker pod named `name`: `arrayjob worker` joining the coordinator through its Service.
pub fn worker_pod(job: &ArrayJob, settings: &Settings, name: &str) -> Pod {
    let w = &job.spec.workers;
    let (mut env, env_from) = common_env(job);
    if let Some(t) = w.threads {
        env.push(plain_env("ARRAYJOB_THREADS", &t.to_string()));
    }
    let (_, tmp_mount) = tmp_volume();
    let quantities: BTreeMap<String, Quantity> = [("cpu", &w.cpu), ("memory", &w.memory)]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), Quantity(v.clone()?))))
        .collect();
    let container = Container {
        name: "worker".into(),
        image: Some(image(job, settings)),
        command: Some(vec!["arrayjob".into()]),
        args: Some(vec![
            "worker".into(),
            "--coordinator".into(),
            format!(
                "http://$({}):$({})",
                service_env(job, "HOST"),
                service_env(job, "PORT")
            ),
            "--listen".into(),
            "$(POD_IP):0".into(),
        ]),
        env: Some(env),
        env_from,
        resources: (!quantities.is_empty()).then(|| ResourceRequirements {
            requests: Some(quantities.clone()),
            limits: Some(quantities),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(vec![tmp_mount]),
        security_context: Some(restricted()),
        ..Container::default()
    };
    pod(job, name, "worker", container)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(extra: &str) -> ArrayJob {
        let text = format!(
            "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: em, namespace: lab, uid: \
             0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9}}\nspec:\n  storage: {{s3: {{bucket: data, prefix: jobs/}}}}\n  \
             source: {{synthetic: {{slices: 4, height: 8, width: 8}}}}\n  stages:\n  - {{name: m, input: source, \
             reduce: {{op: mean, axes: [0]}}, output: {{zarr: m.zarr}}}}\n{extra}"
        );
        serde_yaml::from_str(&text).expect("an ArrayJob")
    }

    fn settings() -> Settings {
        Settings::new("ghcr.io/arrayjob/arrayjob:0.1.0")
    }

    fn named(name: &str) -> ArrayJob {
        let mut j = job("");
        j.metadata.name = Some(name.to_owned());
        j
    }

    /// A DNS-1035 label (a Service's name): a letter, then letters, digits and `-`, ending alphanumeric.
    fn dns_1035(s: &str) -> bool {
        s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }

    #[test]
    fn any_arrayjob_name_gives_valid_object_names_and_a_job_id_with_the_uid() {
        // A plain short name is kept as it is.
        let plain = named("quick");
        assert_eq!(key(&plain), "quick");
        assert_eq!(names(&plain).coordinator, "aj-quick");
        assert_eq!(job_id(&plain), "quick-0a1b2c3d4e5f");
        let dotted = named("em.run.v2");
        let long = named(&format!("a{}", ".b-C".repeat(63)));
        assert_eq!(long.name_any().len(), 253);
        let forty = named(&"x".repeat(40));
        let forty_one = named(&"x".repeat(41));
        assert_eq!(key(&forty), "x".repeat(40));
        for j in [&dotted, &long, &forty_one, &named("-.-"), &named("Em")] {
            let k = key(j);
            assert!(k.len() <= KEY_MAX, "{k}");
            let n = names(j);
            for name in [&n.coordinator, &n.secret, &n.config, &n.network_policy] {
                assert!(dns_1035(name), "{name} of {}", j.name_any());
            }
            assert!(dns_1035(&format!("{}1000", n.worker_prefix)));
            let id = job_id(j);
            assert!(id.ends_with("-0a1b2c3d4e5f"), "{id}: the UID is kept");
            assert!(arrayjob_spec::job::check_job_id(&id).is_ok(), "{id}");
            assert_eq!(labels(j, "worker")[JOB_LABEL], k);
            // The coordinator's manifest names the job by its key (the engine wants a DNS label).
            let cm = manifest_config(j).expect("config map");
            let m = arrayjob_spec::validate::parse_manifest(
                &cm.data.expect("data")["job.yaml"],
                "job.yaml",
            )
            .expect("the engine takes the manifest");
            assert_eq!(m.metadata.name, k);
        }
        assert_eq!(key(&dotted), "em-run-v2-56701891");
        assert_eq!(names(&dotted).coordinator, "aj-em-run-v2-56701891");
        assert_eq!(key(&named("Em")), format!("em-{}", &key(&named("Em"))[3..]));
        // Different names, different keys (the hash), even when they clean to the same text.
        assert_ne!(key(&named("em.run")), key(&named("em_run")));
        assert_ne!(key(&forty_one), key(&named(&"x".repeat(42))));
        assert!(service_env(&dotted, "HOST").starts_with("AJ_EM_RUN_V2_"));
    }

    #[test]
    fn the_network_policy_lets_in_only_the_jobs_pods_and_the_operator() {
        let j = named("em.run.v2");
        let mut s = settings();
        s.operator_peer = Some(Peer {
            namespace: "arrayjob-system".into(),
            labels: BTreeMap::from([("app.kubernetes.io/component".into(), "operator".into())]),
        });
        let np = serde_json::to_value(network_policy(&j, &s)).expect("json");
        let k = key(&j);
        assert_eq!(np["metadata"]["name"], format!("aj-{k}-peers"));
        assert_eq!(np["metadata"]["ownerReferences"][0]["kind"], "ArrayJob");
        assert_eq!(
            np["spec"],
            serde_json::json!({
                "podSelector": {"matchLabels": {JOB_LABEL: k}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {JOB_LABEL: k}}}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "arrayjob-system"}},
                               "podSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}}}],
                     "ports": [{"port": 7070, "protocol": "TCP"}]}
                ]
            })
        );
        // Every pod of the job carries the label the policy selects.
        for p in [
            coordinator_pod(&j, &s).expect("pod"),
            worker_pod(&j, &s, "w"),
        ] {
            assert_eq!(p.metadata.labels.expect("labels")[JOB_LABEL], k);
        }
        // Without a known operator: the job's pods only.
        let np = network_policy(&j, &settings());
        assert_eq!(np.spec.and_then(|s| s.ingress).map(|i| i.len()), Some(1));
    }

    #[test]
    fn the_coordinator_runs_the_manifest_resumably_and_publishes_to_the_default_location() {
        let j = job("");
        let p = coordinator_pod(&j, &settings()).expect("pod");
        let c = &p.spec.as_ref().expect("spec").containers[0];
        assert_eq!(
            c.args.clone().expect("args"),
            vec![
                "run",
                "/etc/arrayjob/job.yaml",
                "--out",
                "s3://data/jobs/outputs/lab/em",
                "--listen",
                "$(POD_IP):7070",
                "--job-id",
                "em-0a1b2c3d4e5f",
            ]
        );
        assert_eq!(p.metadata.name.as_deref(), Some("aj-em"));
        let owner = &p.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("ArrayJob", Some(true))
        );
        let cm = manifest_config(&j).expect("config map");
        let text = &cm.data.expect("data")["job.yaml"];
        let m = arrayjob_spec::validate::parse_manifest(text, "job.yaml").expect("parses");
        assert_eq!(
            m.spec, j.spec.job,
            "the manifest is the engine's part of the spec"
        );
        assert!(!text.contains("workers"), "{text}");
    }

    #[test]
    fn pods_are_locked_down_and_get_the_token_from_the_secret() {
        let j = job("  s3CredentialsSecret: s3-keys\n");
        for p in [
            coordinator_pod(&j, &settings()).expect("pod"),
            worker_pod(&j, &settings(), "aj-em-worker-0"),
        ] {
            let spec = p.spec.expect("spec");
            assert_eq!(spec.automount_service_account_token, Some(false));
            assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
            let c = &spec.containers[0];
            let sc = c.security_context.as_ref().expect("security context");
            assert_eq!(sc.run_as_non_root, Some(true));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(
                sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_owned()])
            );
            assert_eq!(
                sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
                Some("RuntimeDefault")
            );
            let env = c.env.as_ref().expect("env");
            let token = env
                .iter()
                .find(|e| e.name == "ARRAYJOB_TOKEN")
                .expect("token");
            let r = token
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .expect("from a secret");
            assert_eq!((r.name.as_str(), r.key.as_str()), ("aj-em-token", "token"));
            assert!(env.iter().all(|e| e.value.as_deref() != Some("secret")));
            let from = c.env_from.as_ref().expect("env from");
            assert_eq!(
                from[0].secret_ref.as_ref().map(|s| s.name.as_str()),
                Some("s3-keys")
            );
        }
    }

    #[test]
    fn spot_workers_select_spot_nodes_and_reach_the_coordinator_through_its_service() {
        let j = job(
            "  workers: {replicas: 3, spot: true, cpu: \"2\", memory: 4Gi, threads: 2, nodeSelector: {zone: a}}\n",
        );
        let p = worker_pod(&j, &settings(), "aj-em-worker-7");
        let spec = p.spec.expect("spec");
        let sel = spec.node_selector.expect("selector");
        assert_eq!(sel[CAPACITY_LABEL], "spot");
        assert_eq!(sel["zone"], "a");
        let c = &spec.containers[0];
        assert_eq!(
            c.args.clone().expect("args")[..3],
            [
                "worker",
                "--coordinator",
                "http://$(AJ_EM_SERVICE_HOST):$(AJ_EM_SERVICE_PORT)"
            ]
        );
        let r = c.resources.as_ref().expect("resources");
        assert_eq!(r.limits.as_ref().expect("limits")["memory"].0, "4Gi");
        assert_eq!(r.requests.as_ref().expect("requests")["cpu"].0, "2");
        let s = coordinator_service(&j);
        assert_eq!(s.metadata.name.as_deref(), Some("aj-em"));
        let sel = s.spec.expect("spec").selector.expect("selector");
        assert_eq!(sel[ROLE_LABEL], "coordinator");
        // The coordinator does not need spot capacity.
        let c = coordinator_pod(&j, &settings()).expect("pod");
        assert!(c.spec.expect("spec").node_selector.is_none());
    }
}
