//! The permission preflight of a deploy: before anything is uploaded, the token's effective
//! privileges (`GET /access/permissions?path=...`) are compared with what the deploy needs,
//! and every missing one is named with the `pveum` commands that grant it.

use std::collections::BTreeSet;

use super::api::{Api, ApiError};

/// What a deploy does, by ACL path: list and upload to the file storage, allocate disks on
/// the disk storage, create, configure, template and remove VMs.
pub fn required(storage: &str, disk_storage: &str) -> Vec<(String, Vec<&'static str>)> {
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
    out
}

/// The role the `pveum` hint creates.
pub const ROLE: &str = "ImgbuildDeploy";

#[derive(Debug, thiserror::Error)]
pub enum PermissionError {
    #[error("GET /access/permissions")]
    Api(#[source] Box<ApiError>),
    #[error(
        "the token {token} lacks privileges this deploy needs:\n{}\ngrant them (as root on the node):\n  pveum role add {ROLE} --privs '{}'\n{}",
        .missing.iter().map(|(p, v)| format!("  {p}: {}", v.join(", "))).collect::<Vec<_>>().join("\n"),
        .all.join(","),
        .missing.iter().map(|(p, _)| format!("  pveum acl modify {p} --tokens '{token}' --roles {ROLE}")).collect::<Vec<_>>().join("\n")
    )]
    Missing {
        token: String,
        missing: Vec<(String, Vec<String>)>,
        all: Vec<String>,
    },
}

/// Checks the token's privileges on every path of [`required`].
pub fn check(api: &Api, storage: &str, disk_storage: &str) -> Result<(), PermissionError> {
    let needed = required(storage, disk_storage);
    let mut missing = Vec::new();
    for (path, privs) in &needed {
        let v = api
            .get_query("/access/permissions", &[("path", path)])
            .map_err(|e| PermissionError::Api(Box::new(e)))?;
        // `{ "<path>": { "<privilege>": 1, ... } }`; an absent path has no privileges.
        let have = v.get(path).and_then(|p| p.as_object());
        let lacking: Vec<String> = privs
            .iter()
            .filter(|p| {
                !have.is_some_and(|h| {
                    h.get(**p)
                        .is_some_and(|x| x.as_u64() == Some(1) || x.as_bool() == Some(true))
                })
            })
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
    Err(PermissionError::Missing {
        token: api.token_id.clone(),
        missing,
        all: all.into_iter().collect(),
    })
}
