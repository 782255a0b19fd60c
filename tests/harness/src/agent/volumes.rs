//! Pod volumes, kept on the host under `<state>/volumes/<pod uid>/<volume>` and bind-mounted into
//! the containers by the sandbox (see [`super::sandbox`]):
//!
//! * `emptyDir`: an empty directory, removed with the pod;
//! * `projected` (what the ServiceAccount admission plugin adds as `kube-api-access-*`):
//!   `serviceAccountToken` through the TokenRequest API, bound to the pod and refreshed at 80 % of
//!   its lifetime, plus `configMap`, `secret` and `downwardAPI` items;
//! * `configMap` and `secret`: one file per key (or per listed item).
//!
//! Files are replaced atomically (written beside, then renamed), so a refresh never shows a
//! half-written token.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccount, Volume, VolumeProjection,
};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::Ctx;
use super::refs::{config_map_data, field_value, secret_data};
use super::sandbox::BindMount;
use super::waiting::NotReady;

/// Mode of projected files when the volume does not say (kubelet's default, 0644).
const DEFAULT_MODE: u32 = 0o644;

/// Where the volumes of the pod with this uid live on the host.
pub(crate) fn pod_volumes_dir(state_dir: &Path, uid: &str) -> PathBuf {
    state_dir.join("volumes").join(uid)
}

/// Removes a deleted pod's volumes.
pub(crate) fn remove(state_dir: &Path, uid: &str) {
    let dir = pod_volumes_dir(state_dir, uid);
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("removing {}: {e}", dir.display());
    }
}

/// A projected service-account token to keep fresh.
#[derive(Debug, Clone)]
pub(crate) struct TokenFile {
    file: PathBuf,
    mode: u32,
    account: String,
    audience: Option<String>,
    expiration: i64,
}

/// The host directories of a pod's volumes, by volume name.
#[derive(Debug, Default)]
pub(crate) struct PodVolumes {
    dirs: HashMap<String, PathBuf>,
    pub(crate) tokens: Vec<TokenFile>,
}

fn mount_error(volume: &str, message: impl std::fmt::Display) -> NotReady {
    NotReady {
        reason: "ContainerCreating",
        message: format!("MountVolume of {volume:?} failed: {message}"),
    }
}

/// A relative path that stays inside its volume (no `..`, not absolute).
fn inside(dir: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    let ok = !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| dir.join(p))
}

/// Writes `data` to `dir/rel` atomically with `mode`.
fn write_file(dir: &Path, rel: &str, data: &[u8], mode: u32) -> std::io::Result<()> {
    let path = inside(dir, rel).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("bad path {rel:?}"),
        )
    })?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!("..{name}.tmp"));
    std::fs::write(&tmp, data)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, &path)
}

fn mode_of(item: Option<i32>, default: u32) -> u32 {
    item.and_then(|m| u32::try_from(m).ok()).unwrap_or(default)
}

/// Writes the listed items of a key/value source, or every key when no item is listed.
fn write_items(
    dir: &Path,
    data: &BTreeMap<String, String>,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    what: &str,
) -> Result<(), String> {
    let pairs: Vec<(String, String, u32)> = match items {
        Some(items) => items
            .iter()
            .map(|i| match data.get(&i.key) {
                Some(_) => Ok((i.key.clone(), i.path.clone(), mode_of(i.mode, mode))),
                None => Err(format!("{what} has no key {}", i.key)),
            })
            .collect::<Result<_, _>>()?,
        None => data.keys().map(|k| (k.clone(), k.clone(), mode)).collect(),
    };
    for (key, path, mode) in pairs {
        let value = data.get(&key).map(String::as_bytes).unwrap_or_default();
        write_file(dir, &path, value, mode).map_err(|e| format!("write {path}: {e}"))?;
    }
    Ok(())
}

/// Asks the API server for a token of `account`, bound to `pod`.
async fn request_token(
    client: &Client,
    pod: &Pod,
    account: &str,
    audience: Option<&str>,
    expiration: i64,
) -> Result<String, String> {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let body = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {
            "audiences": audience.map(|a| vec![a]).unwrap_or_default(),
            "expirationSeconds": expiration,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                               "name": pod.name_any(), "uid": pod.uid()},
        },
    });
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let tr: TokenRequest = api
        .create_subresource("token", account, &PostParams::default(), &body)
        .await
        .map_err(|e| format!("token request for service account {ns}/{account}: {e}"))?;
    tr.status
        .and_then(|s| s.token)
        .ok_or_else(|| format!("token request for {ns}/{account}: no status"))
}

impl TokenFile {
    async fn write(&self, client: &Client, pod: &Pod) -> Result<(), String> {
        let token = request_token(
            client,
            pod,
            &self.account,
            self.audience.as_deref(),
            self.expiration,
        )
        .await?;
        let dir = self.file.parent().unwrap_or(Path::new("/"));
        let name = self
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("token");
        write_file(dir, name, token.as_bytes(), self.mode).map_err(|e| e.to_string())
    }

    /// When to ask again: after 80 % of the requested lifetime, like kubelet.
    pub(crate) fn refresh_after(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.expiration).unwrap_or(600) * 4 / 5)
    }

    /// Keeps the token fresh until the task is aborted.
    pub(crate) async fn refresh_loop(self, client: Client, pod: Arc<Pod>) {
        loop {
            tokio::time::sleep(self.refresh_after()).await;
            while let Err(e) = self.write(&client, &pod).await {
                tracing::warn!(pod = %pod.name_any(), "token refresh failed: {e}");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

struct Filler<'a> {
    ctx: &'a Ctx,
    pod: &'a Pod,
    ns: String,
    ip: Ipv4Addr,
    node_ip: Ipv4Addr,
}

impl Filler<'_> {
    async fn config_map(
        &self,
        name: &str,
        optional: Option<bool>,
    ) -> Result<BTreeMap<String, String>, String> {
        match config_map_data(&self.ctx.client, &self.ns, name).await {
            Ok(d) => Ok(d),
            Err(_) if optional == Some(true) => Ok(BTreeMap::new()),
            Err(e) => Err(format!("configmap {name}: {e}")),
        }
    }

    async fn secret(
        &self,
        name: &str,
        optional: Option<bool>,
    ) -> Result<BTreeMap<String, String>, String> {
        match secret_data(&self.ctx.client, &self.ns, name).await {
            Ok(d) => Ok(d),
            Err(_) if optional == Some(true) => Ok(BTreeMap::new()),
            Err(e) => Err(format!("secret {name}: {e}")),
        }
    }

    fn downward(
        &self,
        dir: &Path,
        items: &[DownwardAPIVolumeFile],
        mode: u32,
    ) -> Result<(), String> {
        for item in items {
            let path = item
                .field_ref
                .as_ref()
                .map(|f| f.field_path.as_str())
                .ok_or_else(|| format!("downwardAPI item {} needs a fieldRef", item.path))?;
            let value = field_value(self.pod, path, self.ip, self.node_ip)
                .ok_or_else(|| format!("unsupported fieldRef {path}"))?;
            write_file(dir, &item.path, value.as_bytes(), mode_of(item.mode, mode))
                .map_err(|e| format!("write {}: {e}", item.path))?;
        }
        Ok(())
    }

    async fn projection(
        &self,
        dir: &Path,
        src: &VolumeProjection,
        mode: u32,
        tokens: &mut Vec<TokenFile>,
    ) -> Result<(), String> {
        if let Some(t) = &src.service_account_token {
            let file =
                inside(dir, &t.path).ok_or_else(|| format!("bad token path {:?}", t.path))?;
            let account = self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            let token = TokenFile {
                file,
                mode,
                account,
                audience: t.audience.clone().filter(|a| !a.is_empty()),
                expiration: t.expiration_seconds.unwrap_or(3600),
            };
            token.write(&self.ctx.client, self.pod).await?;
            tokens.push(token);
        }
        if let Some(c) = &src.config_map {
            let data = self.config_map(&c.name, c.optional).await?;
            write_items(
                dir,
                &data,
                c.items.as_ref(),
                mode,
                &format!("configmap {}", c.name),
            )?;
        }
        if let Some(s) = &src.secret {
            let data = self.secret(&s.name, s.optional).await?;
            write_items(
                dir,
                &data,
                s.items.as_ref(),
                mode,
                &format!("secret {}", s.name),
            )?;
        }
        if let Some(d) = &src.downward_api {
            self.downward(dir, d.items.as_deref().unwrap_or_default(), mode)?;
        }
        if src.cluster_trust_bundle.is_some() || src.pod_certificate.is_some() {
            return Err(
                "clusterTrustBundle and podCertificate projections are not supported".into(),
            );
        }
        Ok(())
    }

    async fn volume(
        &self,
        dir: &Path,
        v: &Volume,
        tokens: &mut Vec<TokenFile>,
    ) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        if v.empty_dir.is_some() {
            // World-writable, as kubelet makes it: a container running as any user can use it.
            return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| format!("chmod {}: {e}", dir.display()));
        }
        if let Some(p) = &v.projected {
            let mode = mode_of(p.default_mode, DEFAULT_MODE);
            for src in p.sources.iter().flatten() {
                self.projection(dir, src, mode, tokens).await?;
            }
            return Ok(());
        }
        if let Some(c) = &v.config_map {
            let data = self.config_map(&c.name, c.optional).await?;
            let mode = mode_of(c.default_mode, DEFAULT_MODE);
            return write_items(
                dir,
                &data,
                c.items.as_ref(),
                mode,
                &format!("configmap {}", c.name),
            );
        }
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = self.secret(&name, s.optional).await?;
            let mode = mode_of(s.default_mode, DEFAULT_MODE);
            return write_items(
                dir,
                &data,
                s.items.as_ref(),
                mode,
                &format!("secret {name}"),
            );
        }
        Err("unsupported volume type (the test agent has emptyDir, projected, configMap and secret)".into())
    }
}

/// Creates and fills the pod's volumes on the host.
pub(crate) async fn prepare(
    ctx: &Ctx,
    pod: &Pod,
    ip: Ipv4Addr,
    node_ip: Ipv4Addr,
) -> Result<PodVolumes, NotReady> {
    let uid = pod.uid().unwrap_or_default();
    let root = pod_volumes_dir(&ctx.cfg.state_dir, &uid);
    let filler = Filler {
        ctx,
        pod,
        ns: pod.namespace().unwrap_or_else(|| "default".into()),
        ip,
        node_ip,
    };
    let mut out = PodVolumes::default();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = inside(&root, &v.name).ok_or_else(|| mount_error(&v.name, "bad volume name"))?;
        filler
            .volume(&dir, v, &mut out.tokens)
            .await
            .map_err(|e| mount_error(&v.name, e))?;
        out.dirs.insert(v.name.clone(), dir);
    }
    Ok(out)
}

/// The bind mounts of one container, parents before children.
pub(crate) fn container_mounts(
    vols: &PodVolumes,
    c: &Container,
) -> Result<Vec<BindMount>, NotReady> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let dir = vols
            .dirs
            .get(&m.name)
            .ok_or_else(|| mount_error(&m.name, "no volume of that name in the pod"))?;
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let d = inside(dir, sub)
                    .ok_or_else(|| mount_error(&m.name, format!("bad subPath {sub:?}")))?;
                std::fs::create_dir_all(&d).map_err(|e| mount_error(&m.name, e))?;
                d
            }
            None => dir.clone(),
        };
        if !m.mount_path.starts_with('/') {
            return Err(mount_error(
                &m.name,
                format!("mountPath {:?} is not absolute", m.mount_path),
            ));
        }
        out.push(BindMount {
            source,
            target: PathBuf::from(&m.mount_path),
            read_only: m.read_only.unwrap_or(false),
        });
    }
    out.sort_by_key(|m| m.target.components().count());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_volume() {
        let d = Path::new("/v");
        assert_eq!(inside(d, "token"), Some(PathBuf::from("/v/token")));
        assert_eq!(inside(d, "a/b"), Some(PathBuf::from("/v/a/b")));
        assert_eq!(inside(d, "../x"), None);
        assert_eq!(inside(d, "/etc/passwd"), None);
        assert_eq!(inside(d, ""), None);
    }

    #[test]
    fn items_are_written_with_their_modes() -> std::result::Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data: BTreeMap<String, String> = [
            ("ca.crt".to_owned(), "PEM".to_owned()),
            ("other".to_owned(), "x".to_owned()),
        ]
        .into();
        let items = vec![KeyToPath {
            key: "ca.crt".into(),
            path: "sub/ca.crt".into(),
            mode: Some(0o600),
            ..KeyToPath::default()
        }];
        write_items(dir.path(), &data, Some(&items), 0o644, "configmap c")?;
        let f = dir.path().join("sub/ca.crt");
        assert_eq!(
            std::fs::read_to_string(&f).map_err(|e| e.to_string())?,
            "PEM"
        );
        let mode = std::fs::metadata(&f)
            .map_err(|e| e.to_string())?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("other").exists());
        let missing = vec![KeyToPath {
            key: "nope".into(),
            path: "n".into(),
            ..KeyToPath::default()
        }];
        assert_eq!(
            write_items(dir.path(), &data, Some(&missing), 0o644, "configmap c"),
            Err("configmap c has no key nope".to_owned())
        );
        Ok(())
    }

    #[test]
    fn tokens_are_refreshed_at_four_fifths_of_their_lifetime() {
        let t = TokenFile {
            file: PathBuf::from("/v/token"),
            mode: 0o644,
            account: "default".into(),
            audience: None,
            expiration: 3607,
        };
        assert_eq!(t.refresh_after(), Duration::from_secs(2885));
    }
}
