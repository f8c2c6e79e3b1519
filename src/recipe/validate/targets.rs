//! `[target.oci]` and `[target.proxmox]`: compression levels, tags, the Proxmox template's
//! settings (a DNS name, storages, keys as `ssh-keygen -l` checks them) and its cloud-init.

use super::Checker;
use crate::recipe::diag::FieldPath;

/// `[target.oci]` and `[target.proxmox]`.
pub(super) fn targets(c: &mut Checker, r: &crate::recipe::Recipe) {
    let root = FieldPath::root();
    let oci = root.key("target").key("oci");
    if r.target.oci.tags.is_empty() {
        c.error(&oci.key("tags"), "at least one tag is needed");
    }
    for (i, t) in r.target.oci.tags.iter().enumerate() {
        if !super::valid_tag(t) {
            c.error(
                &oci.key("tags").index(i),
                format!("`{t}` is not a valid OCI tag"),
            );
        }
    }
    if let Some(k) = &r.target.oci.sign_key {
        c.key_file(&oci.key("sign_key"), k, crate::sigstore::check_private_pem);
    }
    if let Some(l) = r.target.oci.level {
        let range = match r.target.oci.compression {
            crate::recipe::Compression::Gzip => 0..=9,
            crate::recipe::Compression::Zstd => 1..=22,
        };
        if !range.contains(&l) {
            c.error(
                &oci.key("level"),
                format!(
                    "level {l} is out of range {range:?} for {}",
                    r.target.oci.compression.name()
                ),
            );
        }
    }
    if let Some(px) = &r.target.proxmox {
        proxmox(c, r, px);
    }
}

/// `[target.proxmox]` and its cloud-init settings.
fn proxmox(c: &mut Checker, r: &crate::recipe::Recipe, px: &crate::recipe::ProxmoxTarget) {
    let root = FieldPath::root();
    let image = root.key("image");
    let p = root.key("target").key("proxmox");
    if let Some(f) = &px.format
        && !["qcow2", "raw"].contains(&f.as_str())
    {
        c.error(
            &p.key("format"),
            format!("format `{f}` is not qcow2 or raw"),
        );
    }
    // qemu-server's `name` has pve-common's `dns-name` format (JSONSchema.pm,
    // `pve_verify_dns_name`), and imgbuild adds `-building` and `-VMID` to it.
    let platforms = if r.image.platforms.is_empty() {
        vec![r.image.platform.clone()]
    } else {
        r.image.platforms.clone()
    };
    let field = if r.image.platforms.is_empty() {
        image.key("platform")
    } else {
        image.key("platforms")
    };
    if !platforms.iter().any(|p| p == "linux/amd64") {
        c.error(
            &field,
            "the proxmox target builds a linux/amd64 VM: add linux/amd64 to the platforms",
        );
    } else if platforms.len() > 1 {
        c.warn(
            &field,
            "the proxmox target builds linux/amd64 only; the other platforms go into the OCI \
             image index",
        );
    }
    let vm_name = px.name.clone().unwrap_or_else(|| r.image.name.clone());
    if !is_dns_name(&vm_name) {
        let field = if px.name.is_some() {
            p.key("name")
        } else {
            image.key("name")
        };
        c.error(
            &field,
            format!(
                "`{vm_name}` cannot name a Proxmox VM (letters, digits and `-`, dot-separated, \
                     no `-` at either end): set [target.proxmox] name"
            ),
        );
    }
    for (i, k) in px.cloud_init.ssh_authorized_keys.iter().enumerate() {
        if let Err(why) = ssh_public_key(k) {
            c.error(
                &p.key("cloud_init").key("ssh_authorized_keys").index(i),
                format!("not an SSH public key ({why}); Proxmox checks them with ssh-keygen -l"),
            );
        }
    }
    if px.keep == Some(0) {
        c.error(
            &p.key("keep"),
            "keep = 0 would remove the template just made: keep at least 1",
        );
    }
    if let Some(s) = &px.snippets_via
        && !["none", "ssh"].contains(&s.as_str())
    {
        c.error(
            &p.key("snippets_via"),
            format!(
                "snippets_via `{s}` is not none or ssh (the Proxmox API cannot upload snippets)"
            ),
        );
    }
    if let Some(size) = &px.disk_size
        && crate::fsutil::parse_size(size).is_none()
    {
        c.error(
            &p.key("disk_size"),
            format!("disk_size `{size}` is not a size such as 4G or 8192M"),
        );
    }
    let ci = p.key("cloud_init");
    if let Some(s) = &px.cloud_init.power_state
        && !["poweroff", "reboot"].contains(&s.as_str())
    {
        c.error(
            &ci.key("power_state"),
            format!("power_state `{s}` is not poweroff or reboot"),
        );
    }
    for (i, part) in px.cloud_init.parts.iter().enumerate() {
        let f = ci.key("parts").index(i);
        match (&part.content, &part.src) {
            (Some(_), Some(_)) | (None, None) => {
                c.error(&f, "a part needs exactly one of `content` and `src`")
            }
            (None, Some(src)) => c.recipe_file(&f.key("src"), src),
            _ => {}
        }
        if !crate::recipe::PART_TYPES.contains(&part.content_type.as_str()) {
            c.error(
                &f.key("content_type"),
                format!(
                    "content_type `{}` is not one cloud-init reads ({})",
                    part.content_type,
                    crate::recipe::PART_TYPES.join(", ")
                ),
            );
        }
    }
    for (k, _) in &px.cloud_init.vars {
        if k.is_empty() || !k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
            c.error(
                &ci.key("vars").key(k),
                format!("`{k}` is not a shell variable name"),
            );
        }
    }
}

/// pve-common's `dns-name`: labels of letters, digits and `-` (not at either end), joined by
/// dots.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Why a line is not an SSH public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

impl From<String> for KeyError {
    fn from(m: String) -> Self {
        KeyError(m)
    }
}

impl From<&str> for KeyError {
    fn from(m: &str) -> Self {
        KeyError(m.to_string())
    }
}

/// What `ssh-keygen -l` checks of an authorized-keys line: a known key type followed by
/// base64 whose decoded blob starts with that same type (SSH wire format: u32 length, name).
pub fn ssh_public_key(line: &str) -> Result<(), KeyError> {
    use base64::Engine as _;
    const TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| TYPES.contains(w))
        .ok_or("no key type such as ssh-ed25519")?;
    let b64 = words.get(i + 1).ok_or("no key after the type")?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "the key is not base64")?;
    let n = blob
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("the key is too short")?;
    match blob.get(4..4 + n) {
        Some(t) if t == words[i].as_bytes() && blob.len() > 4 + n => Ok(()),
        _ => Err("the key's data does not match its type".into()),
    }
}

#[cfg(test)]
mod proxmox_name_tests {
    use super::*;

    #[test]
    fn dns_names_and_keys() {
        assert!(is_dns_name("coderall-bookworm"));
        assert!(is_dns_name("a.b-c"));
        assert!(!is_dns_name("coder_all"));
        assert!(!is_dns_name("-x"));
        assert!(!is_dns_name(""));
        assert!(ssh_public_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ1kJ3n4Gd5BLVhBD5Cx0i0kqN8pq1C5G8c1bV0o3Y5b me").is_ok());
        assert!(ssh_public_key("ssh-ed25519 AAAA... me@laptop").is_err());
        assert!(
            ssh_public_key(
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIJ1kJ3n4Gd5BLVhBD5Cx0i0kqN8pq1C5G8c1bV0o3Y5b"
            )
            .is_err()
        );
    }
}
