//! Preparing a container to run: its image target, environment (`env`, `envFrom`, service links,
//! `$(VAR)` expansion), mounts, working directory and readiness probe.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use kube::api::Api;
use kube::{Client, ResourceExt};

use super::Ctx;
use super::container::{self, ContainerSpec};
use super::images::{ImageTarget, image_lookup, read_image_map};
use super::probes::ProbeSpec;
use super::proxy;
use super::refs::{config_map_data, field_value, secret_data};
use super::sandbox::BindMount;
use super::volumes::{self, PodVolumes};
use super::waiting::NotReady;

/// Expands `$(NAME)` references like Kubernetes does (`$$` escapes; unknown names stay as is).
fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("$(")
            && let Some(end) = t.find(')')
        {
            let name = &t[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn config_error(what: String) -> NotReady {
    NotReady {
        reason: "CreateContainerConfigError",
        message: what,
    }
}

/// How a prepared container runs.
#[derive(Clone)]
pub(super) enum Runner {
    /// A local binary.
    Process {
        /// The binary.
        program: PathBuf,
        /// Its arguments (`command[1..]`, then `args`).
        argv: Vec<String>,
    },
    /// A podman container.
    Container(Box<ContainerSpec>),
}

/// A container ready to start.
#[derive(Clone)]
pub(super) struct Prepared {
    pub(super) runner: Runner,
    pub(super) env: Vec<(String, String)>,
    pub(super) workdir: PathBuf,
    pub(super) mounts: Vec<BindMount>,
    pub(super) readiness: Option<ProbeSpec>,
}

/// What every container of a pod shares while being prepared.
pub(super) struct PodSetup<'a> {
    pub(super) pod_dir: &'a Path,
    pub(super) ip: Ipv4Addr,
    pub(super) node_ip: Ipv4Addr,
    pub(super) volumes: &'a PodVolumes,
    pub(super) service_env: &'a [(String, String)],
}

/// The service variables for a pod (none when `enableServiceLinks: false`).
pub(super) async fn service_links(
    client: &Client,
    pod: &Pod,
) -> std::result::Result<Vec<(String, String)>, NotReady> {
    if pod.spec.as_ref().and_then(|s| s.enable_service_links) == Some(false) {
        return Ok(Vec::new());
    }
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let list = Api::<Service>::namespaced(client.clone(), &ns)
        .list(&kube::api::ListParams::default())
        .await
        .map_err(|e| config_error(format!("listing the services of {ns}: {e}")))?;
    Ok(proxy::service_env(&list.items))
}

/// The working directory: `workingDir` when it is an existing directory or lies in a mount.
fn working_dir(c: &Container, pod_dir: &Path, mounts: &[BindMount]) -> PathBuf {
    c.working_dir
        .as_ref()
        .map(PathBuf::from)
        .filter(|p| {
            p.is_absolute() && (p.is_dir() || mounts.iter().any(|m| p.starts_with(&m.target)))
        })
        .unwrap_or_else(|| pod_dir.to_path_buf())
}

/// Prepares container `c` of `pod`: what runs, with which environment, mounts and probe.
pub(super) async fn prepare(
    ctx: &Ctx,
    pod: &Pod,
    c: &Container,
    setup: &PodSetup<'_>,
) -> std::result::Result<Prepared, NotReady> {
    let PodSetup {
        pod_dir,
        ip,
        node_ip,
        ..
    } = *setup;
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let image = c.image.clone().unwrap_or_default();
    let map = read_image_map(&ctx.cfg.images_file);
    let target = image_lookup(&map, &image).ok_or_else(|| NotReady {
        reason: "ErrImagePull",
        message: format!(
            "image {image:?} has no local binary in {}",
            ctx.cfg.images_file.display()
        ),
    })?;
    // A container gets PATH and HOME from its image and HOSTNAME from the runtime, as on a node.
    let mut vars: Vec<(String, String)> = match target {
        ImageTarget::Binary(_) => vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOSTNAME".into(), pod.name_any()),
            ("HOME".into(), pod_dir.display().to_string()),
        ],
        ImageTarget::Container { .. } => Vec::new(),
    };
    vars.extend(setup.service_env.iter().cloned());
    if let Some((h, p)) = &ctx.cfg.api_host_port {
        vars.push(("KUBERNETES_SERVICE_HOST".into(), h.clone()));
        vars.push(("KUBERNETES_SERVICE_PORT".into(), p.to_string()));
    }
    for name in &ctx.cfg.pass_env {
        if let Ok(v) = std::env::var(name) {
            vars.push((name.clone(), v));
        }
    }
    let client = &ctx.client;
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(r) = &from.config_map_ref {
            (
                config_map_data(client, &ns, &r.name).await,
                r.optional,
                format!("configmap {}", r.name),
            )
        } else if let Some(r) = &from.secret_ref {
            (
                secret_data(client, &ns, &r.name).await,
                r.optional,
                format!("secret {}", r.name),
            )
        } else {
            continue;
        };
        match data {
            Ok(d) => vars.extend(d.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v))),
            Err(_) if optional == Some(true) => {}
            Err(e) => return Err(config_error(format!("{what}: {e}"))),
        }
    }
    for e in c.env.iter().flatten() {
        let known: HashMap<String, String> = vars.iter().cloned().collect();
        let value = if let Some(v) = &e.value {
            Some(expand(v, &known))
        } else if let Some(src) = &e.value_from {
            if let Some(f) = &src.field_ref {
                Some(field_value(pod, &f.field_path, ip, node_ip).ok_or_else(|| {
                    config_error(format!("unsupported fieldRef {}", f.field_path))
                })?)
            } else if let Some(r) = &src.secret_key_ref {
                match secret_data(client, &ns, &r.name).await {
                    Ok(d) => match d.get(&r.key) {
                        Some(v) => Some(v.clone()),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(config_error(format!(
                                "secret {} has no key {}",
                                r.name, r.key
                            )));
                        }
                    },
                    Err(_) if r.optional == Some(true) => None,
                    Err(err) => return Err(config_error(format!("secret {}: {err}", r.name))),
                }
            } else if let Some(r) = &src.config_map_key_ref {
                match config_map_data(client, &ns, &r.name).await {
                    Ok(d) => match d.get(&r.key) {
                        Some(v) => Some(v.clone()),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(config_error(format!(
                                "configmap {} has no key {}",
                                r.name, r.key
                            )));
                        }
                    },
                    Err(_) if r.optional == Some(true) => None,
                    Err(err) => return Err(config_error(format!("configmap {}: {err}", r.name))),
                }
            } else if let Some(r) = &src.resource_field_ref {
                let res = c.resources.as_ref();
                let (kind, key) = r.resource.split_once('.').unwrap_or(("limits", "cpu"));
                let table = if kind == "requests" {
                    res.and_then(|r| r.requests.as_ref())
                } else {
                    res.and_then(|r| r.limits.as_ref())
                };
                Some(
                    table
                        .and_then(|t| t.get(key))
                        .map(|q| q.0.clone())
                        .unwrap_or_default(),
                )
            } else {
                None
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            vars.retain(|(k, _)| k != &e.name);
            vars.push((e.name.clone(), v));
        }
    }
    let known: HashMap<String, String> = vars.iter().cloned().collect();
    let command: Vec<String> = c
        .command
        .iter()
        .flatten()
        .map(|s| expand(s, &known))
        .collect();
    let args: Vec<String> = c.args.iter().flatten().map(|s| expand(s, &known)).collect();
    let mounts = volumes::container_mounts(setup.volumes, c)?;
    let readiness = c
        .readiness_probe
        .as_ref()
        .map(|p| ProbeSpec::from_k8s(p, c, ip))
        .transpose()
        .map_err(|e| config_error(format!("readinessProbe: {e}")))?;
    let runner = match target {
        // command[0] names the program inside the image; the image map says which local binary that is.
        ImageTarget::Binary(program) => Runner::Process {
            program,
            argv: command.into_iter().skip(1).chain(args).collect(),
        },
        ImageTarget::Container { podman } => {
            let image_user = container::image_user(&podman).await?;
            let mut names: Vec<String> = vars.iter().map(|(k, _)| k.clone()).collect();
            names.sort();
            names.dedup();
            let entrypoint = c.command.is_some().then_some(command);
            Runner::Container(Box::new(container::spec(
                pod,
                c,
                &podman,
                &image_user,
                names,
                mounts.clone(),
                entrypoint,
                args,
            )?))
        }
    };
    Ok(Prepared {
        runner,
        env: vars,
        workdir: working_dir(c, pod_dir, &mounts),
        mounts,
        readiness,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_replaces_known_vars_and_keeps_escapes() {
        let vars: HashMap<String, String> = [("A".to_owned(), "x".to_owned())].into();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$5", &vars), "x-$(B)-$(A)-$5");
        assert_eq!(expand("plain", &vars), "plain");
        assert_eq!(expand("$(A", &vars), "$(A");
    }
}
