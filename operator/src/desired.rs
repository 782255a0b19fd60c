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
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

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

/// The operator's own settings that shape the objects.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Image of the coordinator and workers, unless the job names one.
    pub image: String,
}

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
}

/// The names of `job`'s objects (all start with `aj-{name}`, 5 + 63 characters at most with the suffixes).
pub fn names(job: &ArrayJob) -> Names {
    let base = format!("aj-{}", job.name_any());
    Names {
        secret: format!("{base}-token"),
        config: format!("{base}-manifest"),
        coordinator: base.clone(),
        worker_prefix: format!("{base}-worker-"),
    }
}

/// The labels of `job`'s objects of `role`.
pub fn labels(job: &ArrayJob, role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "arrayjob".to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "arrayjob-operator".to_owned(),
        ),
        (JOB_LABEL.to_owned(), job.name_any()),
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
/// ledger), new for a new object of the same name.
pub fn job_id(job: &ArrayJob) -> String {
    let uid = job.uid().unwrap_or_default();
    let short: String = uid.chars().filter(|c| *c != '-').take(12).collect();
    format!("{}-{short}", job.name_any())
        .chars()
        .take(63)
        .collect()
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
        "metadata": {"name": job.name_any()},
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
                (JOB_LABEL.to_owned(), job.name_any()),
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
        Settings {
            image: "ghcr.io/arrayjob/arrayjob:0.1.0".into(),
        }
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
        let m = arrayjob_engine::validate::parse_manifest(text, "job.yaml").expect("parses");
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
