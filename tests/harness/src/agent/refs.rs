//! What a pod's spec refers to outside its containers: field paths (`fieldRef`), secrets and
//! config maps. Both the container environment ([`super::prepare`]) and the volumes
//! ([`super::volumes`]) read them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Client;
use kube::api::Api;

use crate::Result;

/// The value of a `fieldRef` path for `pod` (`None` for a path the agent does not support).
pub(crate) fn field_value(
    pod: &Pod,
    path: &str,
    ip: Ipv4Addr,
    node_ip: Ipv4Addr,
) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let in_brackets = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_owned)
    };
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => ip.to_string(),
        "status.hostIP" | "status.hostIPs" => node_ip.to_string(),
        _ => {
            if let Some(k) = in_brackets("metadata.labels") {
                meta.labels.as_ref()?.get(&k)?.clone()
            } else if let Some(k) = in_brackets("metadata.annotations") {
                meta.annotations.as_ref()?.get(&k)?.clone()
            } else {
                return None;
            }
        }
    })
}

/// A secret's data, decoded as UTF-8 (lossily).
pub(crate) async fn secret_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, String>> {
    let s: Secret = Api::namespaced(client.clone(), ns).get(name).await?;
    Ok(s.data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect())
}

/// A config map's data.
pub(crate) async fn config_map_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, String>> {
    let c: ConfigMap = Api::namespaced(client.clone(), ns).get(name).await?;
    Ok(c.data.unwrap_or_default())
}
