//! What a node must offer before a deploy sends anything, each shortfall named with the
//! command that fixes it: a Proxmox VE version that takes a qcow2 as `import` content, storages
//! with the right content types, and the token's privileges (`GET /access/permissions`).
//!
//! Sources of the rules (Proxmox's own code, read at their current heads):
//! - pve-storage `src/PVE/API2/Storage/Status.pm`, `upload`: `Datastore.AllocateTemplate` on the
//!   storage; `import` content only with a `.qcow2/.raw/.vmdk/.ova` name
//!   (`UPLOAD_IMPORT_EXT_RE_1`, qcow2 since libpve-storage-perl 8.3.6 = PVE 8.4; 8.2.8 = PVE
//!   8.3 took only `.ova`; before, `import` was not an upload content type); "storage '...'
//!   does not support '...' content".
//! - pve-storage `src/PVE/Storage.pm`, `check_volume_access`: an `import` volume needs
//!   `Datastore.Allocate`, or `Datastore.AllocateSpace` or `Datastore.Audit`, on its storage.
//! - qemu-server `src/PVE/API2/Qemu.pm`, `create_vm` and its disk checks: `VM.Allocate` and the
//!   `VM.Config.*` of the options set, `Datastore.AllocateSpace` on the disk storage, which must
//!   have `images` content ("storage '...' does not support vm images").
//! - pve-guest-common `src/PVE/GuestHelpers.pm`, `check_vnet_access`: `SDN.Use` on
//!   `/sdn/zones/localnetwork/BRIDGE` for the NIC's bridge (any user but root@pam).
//! - pve-access-control `API2/AccessControl.pm`, `permissions`: `{path: {privilege: propagate}}`
//!   for the calling token; a privilege is held whatever its propagate flag.

use std::collections::BTreeSet;

use serde_json::Value;

use super::api::{Api, ApiError};

/// The first version whose `upload` takes a `.qcow2` as `import` content.
pub const MIN_VERSION: (u32, u32) = (8, 4);

/// What a deploy does, by ACL path: upload to and read the file storage, allocate disks on
/// the disk storage, use the bridge, create, configure, template and remove VMs.
pub fn required(
    storage: &str,
    disk_storage: &str,
    bridge: &str,
) -> Vec<(String, Vec<&'static str>)> {
    let mut out: Vec<(String, Vec<&'static str>)> = vec![(
        format!("/storage/{storage}"),
        vec!["Datastore.Audit", "Datastore.AllocateTemplate"],
    )];
    let disk = format!("/storage/{disk_storage}");
    match out.iter_mut().find(|(p, _)| *p == disk) {
        Some((_, privs)) => privs.push("Datastore.AllocateSpace"),
        None => out.push((disk, vec!["Datastore.AllocateSpace"])),
    }
    out.push((
        "/vms".into(),
        vec![
            "VM.Allocate",
            "VM.Audit",
            "VM.Config.CDROM",
            "VM.Config.CPU",
            "VM.Config.Cloudinit",
            "VM.Config.Disk",
            "VM.Config.HWType",
            "VM.Config.Memory",
            "VM.Config.Network",
            "VM.Config.Options",
        ],
    ));
    out.push((format!("/sdn/zones/localnetwork/{bridge}"), vec!["SDN.Use"]));
    out
}

/// The role the `pveum` hint creates.
pub const ROLE: &str = "ImgbuildDeploy";

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The failing call names itself (`GET /version: ...`).
    #[error(transparent)]
    Api(Box<ApiError>),
    #[error(
        "the node runs Proxmox VE {version}, which cannot take a qcow2 disk as `import` content \
         (that needs 8.4 or later, libpve-storage-perl 8.3.6); upgrade it: apt update && apt \
         dist-upgrade (on the node)"
    )]
    Version { version: String },
    #[error("the node's storages are not ready:\n{}", .0.join("\n"))]
    Storage(Vec<String>),
    #[error(
        "the token {token} lacks privileges this deploy needs:\n{}\ngrant them (as root on the node):\n  pveum role add {ROLE} --privs '{}'\n{}",
        .missing.iter().map(|(p, v)| format!("  {p}: {}", v.join(", "))).collect::<Vec<_>>().join("\n"),
        .all.join(","),
        .missing.iter().map(|(p, _)| format!("  pveum acl modify {p} --tokens '{token}' --roles {ROLE}")).collect::<Vec<_>>().join("\n")
    )]
    Privileges {
        token: String,
        missing: Vec<(String, Vec<String>)>,
        all: Vec<String>,
    },
}

/// `major.minor` of a `GET /version` answer (`{"version": "8.4.1", "release": "8.4"}`).
pub fn parse_version(v: &Value) -> Option<(u32, u32)> {
    let s = v.get("version").and_then(|x| x.as_str())?;
    let mut it = s.split(['.', '-', '~']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The node's version, refused below [`MIN_VERSION`].
pub fn check_version(api: &Api) -> Result<String, PreflightError> {
    let v = api
        .get("/version")
        .map_err(|e| PreflightError::Api(Box::new(e)))?;
    let shown = v
        .get("version")
        .and_then(|x| x.as_str())
        .unwrap_or("unknown")
        .to_string();
    match parse_version(&v) {
        Some(mv) if mv >= MIN_VERSION => Ok(shown),
        _ => Err(PreflightError::Version { version: shown }),
    }
}

/// File-based storage types: the only ones `upload` accepts (they have a `path`).
const FILE_TYPES: &[&str] = &["dir", "nfs", "cifs", "cephfs", "glusterfs", "btrfs"];

/// The storages as the node lists them (`GET /nodes/NODE/storage`, those the token may see):
/// the file storage must be file based with `import` and `iso` (and `snippets` when they are
/// copied over ssh); the disk storage must hold `images`.
pub fn check_storages(
    api: &Api,
    node: &str,
    storage: &str,
    disk_storage: &str,
    snippets: bool,
) -> Result<(), PreflightError> {
    let list = api
        .get(&format!("/nodes/{node}/storage"))
        .map_err(|e| PreflightError::Api(Box::new(e)))?;
    let find = |id: &str| {
        list.as_array()
            .and_then(|a| {
                a.iter()
                    .find(|s| s.get("storage").and_then(|x| x.as_str()) == Some(id))
            })
            .cloned()
    };
    let content = |s: &Value| -> Vec<String> {
        s.get("content")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut problems = Vec::new();
    let mut need = |id: &str, wanted: &[&str], file_based: bool, hint: &str| match find(id) {
        None => problems.push(format!(
            "  storage `{id}` is not on node {node} (or the token cannot see it: \
             Datastore.Audit on /storage/{id}){hint}"
        )),
        Some(s) => {
            let ty = s.get("type").and_then(|t| t.as_str()).unwrap_or("");
            if file_based && !FILE_TYPES.contains(&ty) {
                problems.push(format!(
                    "  storage `{id}` is of type `{ty}`, not file based: uploads need a \
                     directory-like storage (dir, nfs, cifs, cephfs, btrfs){hint}"
                ));
                return;
            }
            let have = content(&s);
            let missing: Vec<&str> = wanted
                .iter()
                .copied()
                .filter(|w| !have.iter().any(|h| h == w))
                .collect();
            if !missing.is_empty() {
                let all: BTreeSet<String> = have
                    .iter()
                    .cloned()
                    .chain(missing.iter().map(|m| m.to_string()))
                    .collect();
                problems.push(format!(
                    "  storage `{id}` has content {} but needs {}: pvesm set {id} --content {}{hint}",
                    if have.is_empty() {
                        "(none)".to_string()
                    } else {
                        have.join(",")
                    },
                    missing.join(","),
                    all.into_iter().collect::<Vec<_>>().join(",")
                ));
            }
        }
    };
    let mut file_content = vec!["import", "iso"];
    if snippets {
        file_content.push("snippets");
    }
    need(storage, &file_content, true, "");
    need(
        disk_storage,
        &["images"],
        false,
        " (or set [target.proxmox] disk_storage to a storage with images, e.g. local-lvm)",
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::Storage(problems))
    }
}

/// Checks the token's privileges on every path of [`required`].
pub fn check_privileges(
    api: &Api,
    storage: &str,
    disk_storage: &str,
    bridge: &str,
) -> Result<(), PreflightError> {
    let needed = required(storage, disk_storage, bridge);
    let mut missing = Vec::new();
    for (path, privs) in &needed {
        let v = api
            .get_query("/access/permissions", &[("path", path)])
            .map_err(|e| PreflightError::Api(Box::new(e)))?;
        // `{ "<path>": { "<privilege>": <propagate 0|1>, ... } }`; held whatever the flag.
        let have = v.get(path).and_then(|p| p.as_object());
        let lacking: Vec<String> = privs
            .iter()
            .filter(|p| !have.is_some_and(|h| h.contains_key(**p)))
            .map(|p| p.to_string())
            .collect();
        if !lacking.is_empty() {
            missing.push((path.clone(), lacking));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let all: BTreeSet<String> = needed
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.to_string()))
        .collect();
    Err(PreflightError::Privileges {
        token: api.token_id.clone(),
        missing,
        all: all.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = |s: &str| parse_version(&serde_json::json!({ "version": s }));
        assert_eq!(v("8.4.1"), Some((8, 4)));
        assert_eq!(v("9.0.3"), Some((9, 0)));
        assert!(v("8.3.5").unwrap() < MIN_VERSION);
        assert!(v("9.0.0").unwrap() >= MIN_VERSION);
        assert_eq!(v("x"), None);
    }
}
