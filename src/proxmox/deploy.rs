//! Turning a built proxmox target into a VM template over the API: check the node's version,
//! the token's privileges and the storages ([`super::preflight`]), upload the disk (`import`
//! content, PVE 8.4+), create a VM with a new id importing the disk (`scsi0:
//! STORAGE:0,import-from=...`) with an EFI disk, a cloud-init drive, a serial console and the
//! guest agent, convert it to a template, then give it the image's name and retire older
//! templates beyond `[target.proxmox] keep`.
//!
//! The recipe's cloud-init reaches clones through Proxmox's own cloud-init drive (`ide2`) and
//! a `cicustom` snippet: the API cannot upload snippets (upload content is `iso`, `vztmpl`,
//! `import`), so `snippets_via = "ssh"` copies the user-data into the storage's `snippets/`
//! and sets `cicustom` on the template; otherwise whoever clones (Terraform, see the README)
//! passes the per-workspace snippet. A NoCloud seed ISO would give every clone the same
//! user-data, so none is uploaded.
//!
//! Replacement is atomic: the new template is built beside the old ones under a temporary
//! name, and only once it is a template does it take the name (older ones become
//! `NAME-VMID`) and are templates beyond `keep` removed, oldest first (by the `ctime` Proxmox
//! records in each VM's `meta`). imgbuild only ever renames or removes templates carrying its
//! tags (`imgbuild` and `imgbuild-NAME`); a failure at any call leaves the previous template
//! intact, and a VM half-made by this deploy is removed. Uploads are named by their digest,
//! so a second deploy of the same disk uploads nothing.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::api::{self, Api, ApiError};
use super::target::Manifest;
use crate::recipe::{Loaded, ProxmoxTarget};
use crate::report::{Event, Reporter};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("[target.proxmox] {0} is not set: the node to deploy to must be named")]
    Missing(&'static str),
    #[error(
        "VM {vmid} on {node} is named `{name}` but imgbuild did not make it (no `{TAG}` tag on \
         a template): refusing to deploy beside it under the same name (rename it, or set \
         [target.proxmox] name)"
    )]
    Foreign {
        vmid: u64,
        node: String,
        name: String,
    },
    #[error(transparent)]
    Preflight(#[from] super::preflight::PreflightError),
    #[error(
        "the new template {vmid} (`{name}`) is ready, but retiring the older ones failed: {step}"
    )]
    Retire {
        vmid: u64,
        name: String,
        step: String,
        #[source]
        source: Box<DeployError>,
    },
    #[error("{step}")]
    Api {
        step: String,
        #[source]
        source: Box<ApiError>,
    },
    #[error("{step} failed, and removing the half-made VM {vmid} failed too ({cleanup})")]
    CleanupFailed {
        step: String,
        vmid: u64,
        cleanup: String,
        #[source]
        source: Box<ApiError>,
    },
    #[error("copying the user-data snippet over ssh to {target}: {message}")]
    Ssh { target: String, message: String },
}

/// Where the deploy went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployed {
    pub node: String,
    pub vmid: u64,
    pub name: String,
    pub disk_volid: String,
    pub cicustom: Option<String>,
    /// Older templates of this image that were kept (renamed `NAME-VMID`).
    pub kept: Vec<u64>,
    /// Older templates removed beyond `keep`.
    pub removed: Vec<u64>,
}

/// The tag on every template imgbuild makes; with [`name_tag`], what marks a VM as ours.
pub const TAG: &str = "imgbuild";

/// The tag naming the image (Proxmox tags: lowercase letters, digits, `_ - + .`).
pub fn name_tag(name: &str) -> String {
    let slug: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || "_-+.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{TAG}-{slug}")
}

/// Deploy settings beyond the recipe's `[target.proxmox]`.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// `user@host` for `snippets_via = "ssh"` (default: `root@` the API's host).
    pub ssh_target: Option<String>,
}

struct Ctx<'a> {
    api: &'a Api,
    reporter: &'a dyn Reporter,
}

impl Ctx<'_> {
    /// Waits for task `upid`; a task that ended with warnings succeeded, and they are shown.
    fn wait(&self, what: &str, node: &str, upid: &str) -> Result<(), DeployError> {
        let warnings = self.call(what, || self.api.wait(node, upid))?;
        for w in &warnings {
            self.reporter
                .report(Event::Warning(&format!("proxmox: {what}: {w}")));
        }
        Ok(())
    }

    /// Runs one API call, reporting it and its outcome.
    fn call<T>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T, ApiError>,
    ) -> Result<T, DeployError> {
        self.reporter
            .report(Event::Stage(&format!("proxmox: {what}")));
        match f() {
            Ok(v) => {
                self.reporter
                    .report(Event::Stage(&format!("proxmox: {what}: ok")));
                Ok(v)
            }
            Err(source) => {
                self.reporter
                    .report(Event::Stage(&format!("proxmox: {what}: failed: {source}")));
                Err(DeployError::Api {
                    step: what.to_string(),
                    source: Box::new(source),
                })
            }
        }
    }
}

/// Deploys the target built in `dir` (with `manifest`) as a template.
pub fn deploy(
    api: &Api,
    loaded: &Loaded,
    dir: &Path,
    manifest: &Manifest,
    opts: &DeployOptions,
    api_host: &str,
    reporter: &dyn Reporter,
) -> Result<Deployed, DeployError> {
    let px = loaded.recipe.target.proxmox.clone().unwrap_or_default();
    let node = px.node.clone().ok_or(DeployError::Missing("node"))?;
    let storage = px.storage.clone().unwrap_or_else(|| "local".into());
    let disk_storage = px.disk_storage.clone().unwrap_or_else(|| storage.clone());
    let name = manifest.name.clone();
    let c = Ctx { api, reporter };
    let keep = px.keep.unwrap_or(2).max(1) as usize;
    let tag = name_tag(&name);

    let t = Where {
        node: node.clone(),
        storage: storage.clone(),
        disk_storage: disk_storage.clone(),
        name: name.clone(),
        tag: tag.clone(),
    };
    preflight(&c, &px, &t)?;
    let (vmid, older) = select(&c, &px, &t)?;
    let disk_volid = upload_disk(&c, &t, dir, manifest)?;
    let cicustom = match px.snippets_via.as_deref() {
        Some("ssh") => Some(copy_snippet(
            &c, &node, &storage, &name, dir, opts, api_host,
        )?),
        _ => {
            reporter.report(Event::Warning(
                "the template gets Proxmox's own cloud-init (user, ssh keys, DHCP); clones get \
                 the recipe's user-data only through a cicustom snippet: set snippets_via = \"ssh\" \
                 or pass it when cloning (README: Terraform)",
            ));
            None
        }
    };

    create_template(&c, loaded, &px, &t, vmid, &disk_volid, &cicustom)?;
    // From here on the new template stays whatever fails.
    let (kept, removed) = retire(&c, &t, vmid, &older, keep).map_err(|e| DeployError::Retire {
        vmid,
        name: name.clone(),
        step: e.to_string(),
        source: Box::new(e),
    })?;
    Ok(Deployed {
        node,
        vmid,
        name,
        disk_volid,
        cicustom,
        kept,
        removed,
    })
}

/// Where the template goes and what it is called.
struct Where {
    node: String,
    storage: String,
    disk_storage: String,
    name: String,
    tag: String,
}

/// Checks the node before anything is sent: its version, the token's privileges, the storages.
fn preflight(c: &Ctx, px: &ProxmoxTarget, t: &Where) -> Result<(), DeployError> {
    let (api, reporter) = (c.api, c.reporter);
    let (node, storage, disk_storage) = (&t.node, &t.storage, &t.disk_storage);
    let bridge = px.bridge.clone().unwrap_or_else(|| "vmbr0".into());
    reporter.report(Event::Stage("proxmox: checking the node's version"));
    let version = super::preflight::check_version(api)?;
    reporter.report(Event::Stage(&format!(
        "proxmox: Proxmox VE {version}; checking the token's privileges"
    )));
    super::preflight::check_privileges(api, storage, disk_storage, &bridge)?;
    reporter.report(Event::Stage("proxmox: checking the storages"));
    super::preflight::check_storages(
        api,
        node,
        storage,
        disk_storage,
        px.snippets_via.as_deref() == Some("ssh"),
    )?;

    Ok(())
}

/// Our older templates of this image, refusing a foreign VM of its name, and the new VM's id:
/// the recipe's if it is free, else the node's next free one.
fn select(c: &Ctx, px: &ProxmoxTarget, t: &Where) -> Result<(u64, Vec<u64>), DeployError> {
    let api = c.api;
    let (node, name, tag) = (&t.node, &t.name, &t.tag);
    let vms = list_vms(c, node)?;
    let is_ours = |v: &Value| {
        v.get("template").and_then(as_u64) == Some(1) && {
            let tags = v.get("tags").and_then(|t| t.as_str()).unwrap_or("");
            let tags: Vec<&str> = tags.split([';', ',', ' ']).collect();
            tags.contains(&TAG) && tags.contains(&tag.as_str())
        }
    };
    let vm_name = |v: &Value| {
        v.get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string()
    };
    let building = format!("{name}-building");
    if let Some(v) = vms
        .iter()
        .find(|v| !is_ours(v) && (vm_name(v) == *name || vm_name(v) == building))
    {
        return Err(DeployError::Foreign {
            vmid: v.get("vmid").and_then(as_u64).unwrap_or(0),
            node: node.clone(),
            name: vm_name(v),
        });
    }
    let older: Vec<u64> = vms
        .iter()
        .filter(|v| is_ours(v))
        .filter_map(|v| v.get("vmid").and_then(as_u64))
        .collect();
    // A new id every time: the recipe's if it is free, else the next free one.
    let taken = |id: u64| {
        vms.iter()
            .any(|v| v.get("vmid").and_then(as_u64) == Some(id))
    };
    let vmid = match px.vmid.map(u64::from).filter(|id| !taken(*id)) {
        Some(id) => id,
        None => {
            let v = c.call("GET /cluster/nextid (next free VM id)", || {
                api.get("/cluster/nextid")
            })?;
            as_u64(&v).ok_or_else(|| DeployError::Api {
                step: "GET /cluster/nextid".into(),
                source: Box::new(ApiError::Body {
                    method: "GET",
                    path: "/cluster/nextid".into(),
                    message: format!("expected a number, got {v}"),
                }),
            })?
        }
    };

    Ok((vmid, older))
}

/// Uploads the disk as `import` content unless a volume of that digest is already there;
/// returns its volume id.
fn upload_disk(c: &Ctx, t: &Where, dir: &Path, manifest: &Manifest) -> Result<String, DeployError> {
    let (api, reporter) = (c.api, c.reporter);
    let (node, storage, name) = (&t.node, &t.storage, &t.name);
    let content = c.call(
        &format!("GET /nodes/{node}/storage/{storage}/content (what is there)"),
        || api.get(&format!("/nodes/{node}/storage/{storage}/content")),
    )?;
    let have: Vec<String> = content
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.get("volid").and_then(|s| s.as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let disk_file = format!(
        "{name}-{}.{}",
        &manifest.disk.sha256[..12],
        manifest.disk_format
    );
    let disk_volid = format!("{storage}:import/{disk_file}");
    if have.contains(&disk_volid) {
        reporter.report(Event::Stage(&format!(
            "proxmox: {disk_volid} is already on {storage}: not uploading"
        )));
    } else {
        let what = format!("POST /nodes/{node}/storage/{storage}/upload (import: {disk_file})");
        let local = dir.join(&manifest.disk.file);
        let upid = c.call(&what, || {
            api.upload(
                node,
                storage,
                "import",
                &local,
                &disk_file,
                &manifest.disk.sha256,
            )
        })?;
        // The checksum is verified inside the upload task, not in the HTTP answer.
        c.wait(
            &format!("waiting for the upload of {disk_file}"),
            node,
            &upid,
        )?;
    }

    Ok(disk_volid)
}

/// Creates the VM under its temporary name and makes it a template; a VM half-made by a
/// failure is removed again.
fn create_template(
    c: &Ctx,
    loaded: &Loaded,
    px: &ProxmoxTarget,
    t: &Where,
    vmid: u64,
    disk_volid: &str,
    cicustom: &Option<String>,
) -> Result<(), DeployError> {
    let (api, reporter) = (c.api, c.reporter);
    let (node, disk_storage, tag) = (&t.node, &t.disk_storage, &t.tag);
    let building = format!("{}-building", t.name);
    let mut form = create_form(
        loaded,
        px,
        vmid,
        &building,
        disk_storage,
        disk_volid,
        cicustom,
    );
    form.push(("tags", format!("{TAG};{tag}")));
    // A refused create made nothing; once the task runs, the VM exists (perhaps half-made).
    let upid = c.call(
        &format!("POST /nodes/{node}/qemu (create VM {vmid})"),
        || {
            api.post(&format!("/nodes/{node}/qemu"), &form)
                .and_then(|v| api::upid(&v, "POST", &format!("/nodes/{node}/qemu")))
        },
    )?;
    let created = (|| {
        c.wait(
            &format!("waiting for VM {vmid} to be created (disk import)"),
            node,
            &upid,
        )?;
        let path = format!("/nodes/{node}/qemu/{vmid}/template");
        let v = c.call(&format!("POST {path} (convert to template)"), || {
            api.post(&path, &[])
        })?;
        if let Some(upid) = v.as_str() {
            c.wait(
                &format!("waiting for VM {vmid} to become a template"),
                node,
                upid,
            )?;
        }
        Ok::<(), DeployError>(())
    })();
    if let Err(e) = created {
        let DeployError::Api { step, source } = e else {
            return Err(e);
        };
        reporter.report(Event::Stage(&format!(
            "proxmox: removing the half-made VM {vmid}"
        )));
        return match destroy(c, node, vmid) {
            Ok(()) => Err(DeployError::Api { step, source }),
            Err(cleanup) => Err(DeployError::CleanupFailed {
                step,
                vmid,
                cleanup: cleanup.to_string(),
                source,
            }),
        };
    }

    Ok(())
}

/// The new template takes the name; older ones step aside as NAME-VMID and those beyond
/// `keep` are removed, oldest first. Returns (kept, removed).
fn retire(
    c: &Ctx,
    t: &Where,
    vmid: u64,
    older: &[u64],
    keep: usize,
) -> Result<(Vec<u64>, Vec<u64>), DeployError> {
    let api = c.api;
    let (node, name) = (&t.node, &t.name);
    rename(c, node, vmid, name)?;
    let mut dated = Vec::new();
    for id in older {
        let path = format!("/nodes/{node}/qemu/{id}/config");
        let cfg = c.call(&format!("GET {path} (its creation time)"), || {
            api.get(&path)
        })?;
        let ctime = cfg
            .get("meta")
            .and_then(|m| m.as_str())
            .and_then(|m| m.split(',').find_map(|kv| kv.strip_prefix("ctime=")))
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0);
        dated.push((
            ctime,
            *id,
            cfg.get("name").and_then(|n| n.as_str()).map(str::to_string),
        ));
    }
    dated.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let (mut kept, mut removed) = (Vec::new(), Vec::new());
    for (i, (_, id, old_name)) in dated.iter().enumerate() {
        if i + 1 < keep {
            let aside = format!("{name}-{id}");
            if old_name.as_deref() != Some(aside.as_str()) {
                rename(c, node, *id, &aside)?;
            }
            kept.push(*id);
        } else {
            destroy(c, node, *id)?;
            removed.push(*id);
        }
    }
    Ok((kept, removed))
}

/// The VMs on `node`.
fn list_vms(c: &Ctx, node: &str) -> Result<Vec<Value>, DeployError> {
    let vms = c.call(&format!("GET /nodes/{node}/qemu (list VMs)"), || {
        c.api.get(&format!("/nodes/{node}/qemu"))
    })?;
    Ok(vms.as_array().cloned().unwrap_or_default())
}

/// Renames VM `vmid` (a synchronous config change).
fn rename(c: &Ctx, node: &str, vmid: u64, to: &str) -> Result<(), DeployError> {
    let path = format!("/nodes/{node}/qemu/{vmid}/config");
    c.call(&format!("PUT {path} (name it {to})"), || {
        c.api.put(&path, &[("name", to.to_string())])
    })?;
    Ok(())
}

fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Destroys VM `vmid` with its disks and waits for it.
fn destroy(c: &Ctx, node: &str, vmid: u64) -> Result<(), DeployError> {
    let path = format!("/nodes/{node}/qemu/{vmid}");
    let v = c.call(&format!("DELETE {path} (destroy VM {vmid})"), || {
        c.api.delete(
            &path,
            &[("purge", "1"), ("destroy-unreferenced-disks", "1")],
        )
    })?;
    if let Some(upid) = v.as_str() {
        c.wait(
            &format!("waiting for VM {vmid} to be destroyed"),
            node,
            upid,
        )?;
    }
    Ok(())
}

/// The form of `POST /nodes/{node}/qemu`.
fn create_form(
    loaded: &Loaded,
    px: &ProxmoxTarget,
    vmid: u64,
    name: &str,
    disk_storage: &str,
    disk_volid: &str,
    cicustom: &Option<String>,
) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("vmid", vmid.to_string()),
        ("name", name.to_string()),
        ("ostype", "l26".into()),
        ("machine", "q35".into()),
        ("bios", "ovmf".into()),
        (
            "efidisk0",
            format!("{disk_storage}:1,efitype=4m,pre-enrolled-keys=0"),
        ),
        ("scsihw", "virtio-scsi-single".into()),
        (
            "scsi0",
            format!("{disk_storage}:0,import-from={disk_volid},discard=on"),
        ),
        ("ide2", format!("{disk_storage}:cloudinit")),
        ("boot", "order=scsi0".into()),
        ("serial0", "socket".into()),
        ("vga", "serial0".into()),
        ("agent", "enabled=1".into()),
        ("memory", px.memory.unwrap_or(2048).to_string()),
        ("cores", px.cores.unwrap_or(2).to_string()),
        (
            "net0",
            format!(
                "virtio,bridge={}",
                px.bridge.clone().unwrap_or_else(|| "vmbr0".into())
            ),
        ),
        ("ipconfig0", "ip=dhcp".into()),
        (
            "description",
            format!("Built by imgbuild from {}", loaded.path.display()),
        ),
    ];
    if let Some(u) = loaded.recipe.user.first() {
        f.push(("ciuser", u.name.clone()));
    }
    let keys = &px.cloud_init.ssh_authorized_keys;
    if !keys.is_empty() {
        // The API wants the keys URL-encoded inside the (itself encoded) form value.
        f.push(("sshkeys", api::encode(&keys.join("\n"))));
    }
    if let Some(ci) = cicustom {
        f.push(("cicustom", ci.clone()));
    }
    f
}

/// `snippets_via = "ssh"`: the seed's way. The API cannot upload snippets, so the user-data
/// is copied with `scp` into the storage's `snippets/` directory; returns the `cicustom` value.
fn copy_snippet(
    c: &Ctx,
    node: &str,
    storage: &str,
    name: &str,
    dir: &Path,
    opts: &DeployOptions,
    api_host: &str,
) -> Result<String, DeployError> {
    let cfg = c.call(
        &format!("GET /storage/{storage} (where snippets go)"),
        || c.api.get(&format!("/storage/{storage}")),
    )?;
    let base = cfg
        .get("path")
        .and_then(|p| p.as_str())
        .unwrap_or("/var/lib/vz")
        .to_string();
    let file = format!("{name}-user-data.yaml");
    let remote = PathBuf::from(base).join("snippets").join(&file);
    let target = opts
        .ssh_target
        .clone()
        .unwrap_or_else(|| format!("root@{api_host}"));
    c.reporter.report(Event::Stage(&format!(
        "proxmox: scp user-data {target}:{} (node {node})",
        remote.display()
    )));
    let mut scp = crate::tool::SCP.command().map_err(|e| DeployError::Ssh {
        target: target.clone(),
        message: e.to_string(),
    })?;
    let out = scp
        .args(["-q", "-o", "BatchMode=yes"])
        .arg(dir.join("user-data"))
        .arg(format!("{target}:{}", remote.display()))
        .output()
        .map_err(|e| DeployError::Ssh {
            target: target.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(DeployError::Ssh {
            target,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(format!("user={storage}:snippets/{file}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sshkeys_encoding() {
        assert_eq!(
            super::api::encode("ssh-ed25519 AAAA+/= me@x\nk2"),
            "ssh-ed25519%20AAAA%2B%2F%3D%20me%40x%0Ak2"
        );
    }
}
