//! The image map: which local binary or podman image stands for an image reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What an image of the image map stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageTarget {
    /// A local binary (JSON: its path), run as a process: `command[0]` is replaced by it.
    Binary(PathBuf),
    /// An image in podman's local store (JSON: `{"podman": "localhost/name:tag"}`), run as a container.
    Container {
        /// The podman image reference.
        podman: String,
    },
}

/// Finds what `image` maps to in `map`: the exact image reference first, then the reference
/// without tag / digest, then its last path segment (`registry/org/name:tag` -> `name`).
pub fn image_lookup(map: &BTreeMap<String, ImageTarget>, image: &str) -> Option<ImageTarget> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let repo = match no_digest.rsplit_once(':') {
        Some((head, tag)) if !tag.contains('/') => head,
        _ => no_digest,
    };
    let last = repo.rsplit('/').next().unwrap_or(repo);
    [image, no_digest, repo, last]
        .iter()
        .find_map(|k| map.get(*k))
        .cloned()
}

pub(super) fn read_image_map(path: &Path) -> BTreeMap<String, ImageTarget> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_lookup_tries_exact_then_repo_then_last_segment() -> serde_json::Result<()> {
        let m: BTreeMap<String, ImageTarget> = serde_json::from_str(
            r#"{"busybox": "/bin/sh", "arrayjob:dev": "/w/dev", "registry:5000/org/tool": "/t",
                "ghcr.io/arrayjob/arrayjob:dev": {"podman": "localhost/arrayjob-test:1"}}"#,
        )?;
        let bin = |p: &str| Some(ImageTarget::Binary(p.into()));
        assert_eq!(image_lookup(&m, "busybox:1.36"), bin("/bin/sh"));
        assert_eq!(
            image_lookup(&m, "docker.io/library/busybox@sha256:ab"),
            bin("/bin/sh")
        );
        assert_eq!(image_lookup(&m, "arrayjob:dev"), bin("/w/dev"));
        assert_eq!(image_lookup(&m, "arrayjob:other"), None);
        assert_eq!(image_lookup(&m, "registry:5000/org/tool:v1"), bin("/t"));
        assert_eq!(image_lookup(&m, "nginx"), None);
        assert_eq!(
            image_lookup(&m, "ghcr.io/arrayjob/arrayjob:dev"),
            Some(ImageTarget::Container {
                podman: "localhost/arrayjob-test:1".into()
            })
        );
        Ok(())
    }
}
