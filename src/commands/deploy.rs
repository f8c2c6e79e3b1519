//! `imgbuild deploy RECIPE`: make the built proxmox target a VM template over the Proxmox API
//! (also `build --target proxmox --deploy`). The template's VM id on stdout.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use imgbuild::proxmox::api::{Api, Token};
use imgbuild::proxmox::deploy::{self, DeployOptions};
use imgbuild::proxmox::target;
use imgbuild::recipe::Loaded;

use super::UsageError;
use super::progress::Progress;
use crate::cli::{Global, ProxmoxArgs};

pub fn run(g: &Global, recipe: &Path, dir: Option<&Path>, args: &ProxmoxArgs) -> Result<()> {
    let loaded = super::load(g, recipe)?;
    let progress = Progress::new(g);
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| {
        PathBuf::from("out")
            .join(&loaded.recipe.image.name)
            .join("proxmox")
    });
    deploy_dir(g, &loaded, &dir, args, &progress)
}

pub fn deploy_dir(
    _g: &Global,
    loaded: &Loaded,
    dir: &Path,
    args: &ProxmoxArgs,
    progress: &Progress,
) -> Result<()> {
    let url = args.proxmox_url.as_deref().ok_or_else(|| {
        UsageError("no Proxmox API address: set PROXMOX_URL or pass --proxmox-url".into())
    })?;
    let token = args.proxmox_token.as_deref().ok_or_else(|| {
        UsageError("no Proxmox API token: set PROXMOX_TOKEN=USER@REALM!TOKENID=SECRET".into())
    })?;
    let token = Token::parse(token).map_err(|e| UsageError(e.to_string()))?;
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ':']).next())
        .unwrap_or("")
        .to_string();
    let mut api = Api::new(
        url,
        &token,
        args.proxmox_ca.as_deref(),
        args.proxmox_insecure,
    )
    .map_err(|e| UsageError(e.to_string()))?;
    if let Some(ms) = std::env::var("IMGBUILD_PROXMOX_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        api.poll = std::time::Duration::from_millis(ms);
    }
    let manifest = target::read_manifest(dir)?;
    let opts = DeployOptions {
        ssh_target: args.ssh.clone(),
    };
    let done = deploy::deploy(&api, loaded, dir, &manifest, &opts, &host, progress)
        .with_context(|| format!("deploying {} to {url}", dir.display()))?;
    let ids = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    progress.line(&format!(
        "==> template {} ({}) on node {}: disk {}; older templates kept: [{}], removed: [{}]",
        done.vmid,
        done.name,
        done.node,
        done.disk_volid,
        ids(&done.kept),
        ids(&done.removed)
    ));
    outln!("{}", done.vmid);
    Ok(())
}
