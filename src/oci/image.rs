//! The image config (via `oci-spec`) and manifest documents of a build.
//!
//! Manifests and indexes use the small [`super::layout`] types (sorted `BTreeMap`
//! annotations, exactly the fields we emit); the config, with its many optional fields that a
//! base image may carry, uses `oci_spec::image::ImageConfiguration`. Both are written as
//! canonical JSON so digests do not depend on map iteration order.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use oci_spec::image::{
    Arch, ConfigBuilder, History, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder,
    Os, RootFsBuilder,
};

use super::layout::{Desc, Manifest};
use super::{MEDIA_TYPE_MANIFEST, OciError};
use crate::digest::Digest;

/// RFC 3339 for a UNIX time (the build's `SOURCE_DATE_EPOCH`).
pub fn rfc3339(epoch: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(epoch)).to_string()
}

/// What the recipe says about the runtime config, already interpolated.
#[derive(Debug, Clone, Default)]
pub struct RuntimeSpec {
    pub platform: String,
    /// `[env]` in declaration order, values not yet expanded.
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    /// Added to the base's (`80/tcp`; a bare number gets `/tcp`, as Docker writes it).
    pub expose: Vec<String>,
    /// Added to the base's.
    pub volumes: Vec<String>,
    /// Replaces the base's.
    pub stop_signal: Option<String>,
}

/// One history entry per layer (and none for config-only changes).
pub fn history(created: &str, created_by: &str) -> Result<History, OciError> {
    HistoryBuilder::default()
        .created(created.to_string())
        .created_by(created_by.to_string())
        .comment("imgbuild".to_string())
        .build()
        .map_err(|e| OciError::Spec("history entry", e))
}

/// The environment after applying `[env]` over the base's, Docker-style.
pub fn merged_env(base: &[String], recipe: &[(String, String)]) -> Vec<String> {
    crate::recipe::interp::merged_env(base, recipe)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// Builds the image config from the base's, the recipe and the layers.
pub fn config(
    base: Option<&ImageConfiguration>,
    spec: &RuntimeSpec,
    diff_ids: &[Digest],
    history: Vec<History>,
    created: &str,
) -> Result<ImageConfiguration, OciError> {
    let bc = base.and_then(|b| b.config().clone());
    let base_env = bc
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    let mut labels: BTreeMap<String, String> = bc
        .as_ref()
        .and_then(|c| c.labels().clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.extend(spec.labels.clone());
    // Docker semantics: a new entrypoint resets the base's cmd.
    let cmd = match (&spec.entrypoint, &spec.cmd) {
        (_, Some(c)) => Some(c.clone()),
        (Some(_), None) => None,
        (None, None) => bc.as_ref().and_then(|c| c.cmd().clone()),
    };
    let mut cb = ConfigBuilder::default().env(merged_env(&base_env, &spec.env));
    if let Some(u) = spec
        .user
        .clone()
        .or_else(|| bc.as_ref().and_then(|c| c.user().clone()))
    {
        cb = cb.user(u);
    }
    if let Some(w) = spec
        .workdir
        .clone()
        .or_else(|| bc.as_ref().and_then(|c| c.working_dir().clone()))
    {
        cb = cb.working_dir(w);
    }
    if let Some(e) = spec
        .entrypoint
        .clone()
        .or_else(|| bc.as_ref().and_then(|c| c.entrypoint().clone()))
    {
        cb = cb.entrypoint(e);
    }
    if let Some(c) = cmd {
        cb = cb.cmd(c);
    }
    if !labels.is_empty() {
        cb = cb.labels(
            labels
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        );
    }
    let mut ports = bc
        .as_ref()
        .and_then(|c| c.exposed_ports().clone())
        .unwrap_or_default();
    for p in &spec.expose {
        let p = if p.contains('/') {
            p.clone()
        } else {
            format!("{p}/tcp")
        };
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports.sort();
    if !ports.is_empty() {
        cb = cb.exposed_ports(ports);
    }
    let mut volumes = bc
        .as_ref()
        .and_then(|c| c.volumes().clone())
        .unwrap_or_default();
    for v in &spec.volumes {
        if !volumes.contains(v) {
            volumes.push(v.clone());
        }
    }
    volumes.sort();
    if !volumes.is_empty() {
        cb = cb.volumes(volumes);
    }
    if let Some(s) = spec
        .stop_signal
        .clone()
        .or_else(|| bc.as_ref().and_then(|c| c.stop_signal().clone()))
    {
        cb = cb.stop_signal(s);
    }
    let arch = match spec.platform.split_once('/').map(|(_, a)| a) {
        Some("arm64") => Arch::ARM64,
        _ => Arch::Amd64,
    };
    let mut all_history = base.and_then(|b| b.history().clone()).unwrap_or_default();
    all_history.extend(history);
    let mut builder = ImageConfigurationBuilder::default();
    if let Some(v) = platform(&spec.platform).variant {
        builder = builder.variant(v);
    }
    builder
        .created(created.to_string())
        .architecture(arch)
        .os(Os::Linux)
        .config(
            cb.build()
                .map_err(|e| OciError::Spec("runtime config", e))?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>())
                .build()
                .map_err(|e| OciError::Spec("rootfs", e))?,
        )
        .history(all_history)
        .build()
        .map_err(|e| OciError::Spec("image config", e))
}

/// The manifest for `config` and `layers`.
pub fn manifest(config: Desc, layers: Vec<Desc>) -> Manifest {
    Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.into()),
        config,
        layers,
        annotations: BTreeMap::new(),
    }
}

/// The index entry's platform for `os/arch`: arm64 with variant `v8`, as Docker and the
/// container tools write it.
pub fn platform(p: &str) -> crate::oci::layout::Platform {
    let (os, arch) = p.split_once('/').unwrap_or(("linux", p));
    let (arch, variant) = arch
        .split_once('/')
        .map_or((arch, None), |(a, v)| (a, Some(v)));
    crate::oci::layout::Platform {
        architecture: arch.to_string(),
        os: os.to_string(),
        variant: variant
            .map(str::to_string)
            .or_else(|| (arch == "arm64").then(|| "v8".to_string())),
    }
}
