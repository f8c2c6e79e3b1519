//! Cloud-init output: the recipe as `#cloud-config` user-data, multipart MIME with the
//! recipe's extra parts, meta-data, network-config, and the NoCloud seed ISO ([`seed`]).
//!
//! Two flavours of user-data come from one recipe:
//! - [`Flavor::Install`]: for a stock cloud image that installs the toolset at first boot
//!   (apt sources with their keys, packages, users, files, env, and `runcmd` for downloads,
//!   pip, symlinks, services and `[[run]]` steps, in the order the image build uses).
//! - [`Flavor::Clone`]: the small snippet for VMs cloned from imgbuild's prebuilt disk, where
//!   everything is already installed: hostname, ssh keys for the recipe's users, the recipe's
//!   `[target.proxmox.cloud_init]` commands and parts (the Coder agent script, say).
//!
//! Output is deterministic: fields in a fixed order, the MIME boundary derived from the
//! parts' content, the instance id from the user-data's digest.

mod install;
pub mod seed;

use std::path::PathBuf;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::lock::Lock;
use crate::recipe::{CloudInit, Loaded, interp};

pub use crate::recipe::PART_TYPES;

#[derive(Debug, thiserror::Error)]
pub enum CloudInitError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the cloud-config as YAML: {0}")]
    Yaml(String),
    #[error("{path} is not text: cloud-init parts must be UTF-8")]
    NotText { path: PathBuf },
}

/// Which user-data to write; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Install,
    Clone,
}

/// The NoCloud files of one VM.
#[derive(Debug, Clone)]
pub struct Snippets {
    /// `#cloud-config`, or multipart MIME when the recipe adds parts.
    pub user_data: String,
    /// The cloud-config part alone (what `cloud-init schema` checks).
    pub cloud_config: String,
    pub meta_data: String,
    pub network_config: String,
}

impl Snippets {
    /// `(file name, content)` in the order a NoCloud seed lists them.
    pub fn files(&self) -> [(&'static str, &str); 3] {
        [
            ("user-data", &self.user_data),
            ("meta-data", &self.meta_data),
            ("network-config", &self.network_config),
        ]
    }
}

/// Compiles the recipe into NoCloud files. `lock` pins download digests when the recipe
/// leaves them to the lock.
pub fn compile(
    loaded: &Loaded,
    lock: Option<&Lock>,
    flavor: Flavor,
) -> Result<Snippets, CloudInitError> {
    let ci = loaded
        .recipe
        .target
        .proxmox
        .as_ref()
        .map(|p| p.cloud_init.clone())
        .unwrap_or_default();
    let config = match flavor {
        Flavor::Install => install::install_config(loaded, lock, &ci)?,
        Flavor::Clone => clone_config(loaded, &ci),
    };
    // Plain scalars for one-line strings (no folding of long commands), literal blocks for
    // file contents.
    let mut yaml = serde_saphyr::SerializerOptions::default();
    yaml.min_fold_chars = usize::MAX;
    let body = serde_saphyr::to_string_with_options(&config, yaml)
        .map_err(|e| CloudInitError::Yaml(e.to_string()))?;
    let cloud_config = format!("#cloud-config\n{body}");
    let mut parts = vec![Part {
        filename: "cloud-config.yaml".into(),
        content_type: "text/cloud-config".into(),
        content: cloud_config.clone(),
    }];
    for p in &ci.parts {
        let content = match (&p.content, &p.src) {
            (Some(c), _) => c.clone(),
            (None, Some(src)) => {
                let path = loaded.resolve(src);
                let bytes = std::fs::read(&path).map_err(|source| CloudInitError::Read {
                    path: path.clone(),
                    source,
                })?;
                String::from_utf8(bytes).map_err(|_| CloudInitError::NotText { path })?
            }
            (None, None) => String::new(),
        };
        let content = if p.content_type == "text/x-shellscript" {
            with_exports(&content, &ci.vars)
        } else {
            content
        };
        parts.push(Part {
            filename: p.filename.clone(),
            content_type: p.content_type.clone(),
            content,
        });
    }
    let user_data = if parts.len() == 1 {
        cloud_config.clone()
    } else {
        multipart(&parts)
    };
    let hostname = hostname(loaded, &ci);
    let id = hex::encode(&Sha256::digest(user_data.as_bytes())[..8]);
    let meta_data = format!("instance-id: imgbuild-{id}\nlocal-hostname: {hostname}\n");
    Ok(Snippets {
        user_data,
        cloud_config,
        meta_data,
        network_config: match flavor {
            Flavor::Install => NETWORK_CONFIG_ANY.into(),
            Flavor::Clone => NETWORK_CONFIG_ETH0.into(),
        },
    })
}

/// DHCP on every ethernet NIC (network config version 2), for stock images: netplan reads the
/// name pattern; cloud-init's own ENI and networkd renderers (22.4) would take `nics` for a
/// device name, so images without netplan should be seeded without a network-config (cloud-init
/// then configures DHCP on the first NIC by itself).
const NETWORK_CONFIG_ANY: &str = "\
version: 2
ethernets:
  nics:
    match:
      name: \"e*\"
    dhcp4: true
";

/// DHCP on `eth0`, for imgbuild's disk: its kernel command line has `net.ifnames=0`, so the
/// first NIC has that name whatever bus it sits on (`ens18` on Proxmox otherwise).
const NETWORK_CONFIG_ETH0: &str = "\
version: 2
ethernets:
  eth0:
    dhcp4: true
";

fn hostname(loaded: &Loaded, ci: &CloudInit) -> String {
    ci.hostname
        .clone()
        .unwrap_or_else(|| loaded.recipe.image.name.clone())
}

/// One `#cloud-config` document. Field order is the order cloud-init's modules run in,
/// which is also the order a reader expects.
#[derive(Debug, Default, Serialize)]
struct Config {
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    users: Vec<UserEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    write_files: Vec<WriteFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apt: Option<AptConfig>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    package_update: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    package_upgrade: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    packages: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    runcmd: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    power_state: Option<PowerState>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cloud_final_modules: Vec<FinalModule>,
}

/// A `cloud_final_modules` entry: a name, or `[name, frequency]`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum FinalModule {
    Name(&'static str),
    WithFrequency(&'static str, &'static str),
}

/// The final stage's modules (Debian's list, less those for other clouds) with user scripts
/// run at every boot. Setting the key replaces the whole list, hence all of it here.
fn final_modules(ci: &CloudInit) -> Vec<FinalModule> {
    if !ci.scripts_every_boot {
        return Vec::new();
    }
    use FinalModule::{Name, WithFrequency};
    vec![
        Name("package-update-upgrade-install"),
        Name("write-files-deferred"),
        Name("scripts-vendor"),
        Name("scripts-per-once"),
        Name("scripts-per-boot"),
        Name("scripts-per-instance"),
        WithFrequency("scripts-user", "always"),
        Name("ssh-authkey-fingerprints"),
        Name("keys-to-console"),
        Name("install-hotplug"),
        Name("phone-home"),
        Name("final-message"),
        Name("power-state-change"),
    ]
}

#[derive(Debug, Serialize)]
struct UserEntry {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shell: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    homedir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sudo: Option<String>,
    lock_passwd: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    system: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    no_create_home: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Serialize)]
struct WriteFile {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    content: String,
    permissions: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    /// Written after users exist (an owner other than root needs them).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    defer: bool,
}

#[derive(Debug, Serialize)]
struct AptConfig {
    sources: std::collections::BTreeMap<String, AptSourceEntry>,
}

#[derive(Debug, Serialize)]
struct AptSourceEntry {
    source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

#[derive(Debug, Serialize)]
struct PowerState {
    mode: String,
    condition: bool,
}

fn users(loaded: &Loaded, ci: &CloudInit, full: bool) -> Vec<UserEntry> {
    loaded
        .recipe
        .user
        .iter()
        .map(|u| UserEntry {
            name: u.name.clone(),
            uid: u.uid.filter(|_| full),
            groups: Some(u.groups.join(",")).filter(|g| full && !g.is_empty()),
            shell: u.shell.clone().filter(|_| full),
            homedir: u.home.clone().filter(|_| full),
            // `sudo = "nopasswd"` is the only rule recipes know (see realize::users).
            sudo: u
                .sudo
                .as_ref()
                .filter(|s| full && s.as_str() == "nopasswd")
                .map(|_| "ALL=(ALL) NOPASSWD:ALL".to_string()),
            lock_passwd: true,
            system: full && u.system,
            no_create_home: full && !u.create_home.unwrap_or(!u.system),
            ssh_authorized_keys: ci.ssh_authorized_keys.clone(),
        })
        .collect()
}

fn power_state(ci: &CloudInit) -> Option<PowerState> {
    ci.power_state.as_ref().map(|m| PowerState {
        mode: m.clone(),
        condition: true,
    })
}

fn clone_config(loaded: &Loaded, ci: &CloudInit) -> Config {
    Config {
        hostname: Some(hostname(loaded, ci)),
        users: users(loaded, ci, false),
        runcmd: ci.runcmd.clone(),
        power_state: power_state(ci),
        cloud_final_modules: final_modules(ci),
        ..Config::default()
    }
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..6])
}

pub use crate::tool::sh_quote;

/// A shell-script part with the recipe's variables exported after its `#!` line.
fn with_exports(script: &str, vars: &[(String, String)]) -> String {
    if vars.is_empty() {
        return script.to_string();
    }
    let exports: String = vars
        .iter()
        .map(|(k, v)| format!("export {k}={}\n", sh_quote(v)))
        .collect();
    match script.split_once('\n') {
        Some((first, rest)) if first.starts_with("#!") => format!("{first}\n{exports}{rest}"),
        _ => format!("#!/bin/sh\n{exports}{script}"),
    }
}

struct Part {
    filename: String,
    content_type: String,
    content: String,
}

/// Multipart MIME user-data, as `cloud-init devel make-mime` writes it.
///
/// Written by hand: the format is a dozen lines, and mail crates pick a random boundary,
/// which would make the snippets differ from build to build. This boundary is derived from
/// the parts, so it cannot occur inside them.
fn multipart(parts: &[Part]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.content.as_bytes());
    }
    let boundary = format!("==imgbuild-{}==", hex::encode(&h.finalize()[..12]));
    let mut out =
        format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n");
    for p in parts {
        let ascii = p.content.is_ascii();
        out.push_str(&format!("--{boundary}\n"));
        out.push_str(&format!(
            "Content-Type: {}; charset=\"{}\"\n",
            p.content_type,
            if ascii { "us-ascii" } else { "utf-8" }
        ));
        out.push_str("MIME-Version: 1.0\n");
        if ascii {
            out.push_str("Content-Transfer-Encoding: 7bit\n");
        } else {
            out.push_str("Content-Transfer-Encoding: base64\n");
        }
        out.push_str(&format!(
            "Content-Disposition: attachment; filename=\"{}\"\n\n",
            p.filename
        ));
        if ascii {
            out.push_str(&p.content);
            if !p.content.ends_with('\n') {
                out.push('\n');
            }
        } else {
            for line in base64_encode(p.content.as_bytes()).as_bytes().chunks(76) {
                out.push_str(&String::from_utf8_lossy(line));
                out.push('\n');
            }
        }
    }
    out.push_str(&format!("--{boundary}--\n"));
    out
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A key for cloud-init's `apt.sources.*.key`, which must be ASCII-armored: an armored file is
/// passed on as it is; a binary keyring (`gpg --dearmor` output) is armored here.
///
/// Written by hand rather than through `pgp`'s armor writer: that one re-serializes a parsed
/// key, while this keeps the keyring's bytes (every key in it) exactly.
fn armor(bytes: &[u8]) -> String {
    if let Ok(text) = std::str::from_utf8(bytes)
        && text.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    {
        return text.to_string();
    }
    let mut out = String::from("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n");
    for line in base64_encode(bytes).as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    let crc = crc24(bytes).to_be_bytes();
    out.push_str(&format!("={}\n", base64_encode(&crc[1..])));
    out.push_str("-----END PGP PUBLIC KEY BLOCK-----\n");
    out
}

/// The OpenPGP armor checksum (RFC 4880, section 6.1).
fn crc24(bytes: &[u8]) -> u32 {
    let mut crc: u32 = 0x00B7_04CE;
    for &b in bytes {
        crc ^= u32::from(b) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x0100_0000 != 0 {
                crc ^= 0x0186_4CFB;
            }
        }
    }
    crc & 0x00FF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc24_matches_rfc4880() {
        // gpg --enarmor of the three bytes "abc" ends with "=upLc" ... checked below through
        // the reference value of the algorithm for an empty input and a known string.
        assert_eq!(crc24(b""), 0x00B7_04CE);
        assert_eq!(crc24(b"123456789"), 0x0021_CF02);
    }

    #[test]
    fn quoting_and_exports() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote("/usr/bin"), "/usr/bin");
        let s = with_exports("#!/bin/bash\necho hi\n", &[("A".into(), "x y".into())]);
        assert_eq!(s, "#!/bin/bash\nexport A='x y'\necho hi\n");
    }
}
