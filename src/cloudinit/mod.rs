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
        Flavor::Install => install_config(loaded, lock, &ci)?,
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

fn install_config(
    loaded: &Loaded,
    lock: Option<&Lock>,
    ci: &CloudInit,
) -> Result<Config, CloudInitError> {
    let r = &loaded.recipe;
    let mut c = Config {
        hostname: Some(hostname(loaded, ci)),
        groups: r.group.iter().map(|g| g.name.clone()).collect(),
        users: users(loaded, ci, true),
        power_state: power_state(ci),
        cloud_final_modules: final_modules(ci),
        ..Config::default()
    };
    if !r.env.is_empty() {
        let mut script = String::from("# Written by imgbuild from the recipe's [env].\n");
        // Values as the image's config has them: Docker ENV expansion, done here.
        let mut seen: Vec<(String, String)> = Vec::new();
        for (k, v) in &r.env {
            let value = interp::expand_env(v, &seen);
            script.push_str(&format!("export {k}={}\n", sh_quote(&value)));
            seen.push((k.clone(), value));
        }
        c.write_files.push(WriteFile {
            path: "/etc/profile.d/imgbuild-env.sh".into(),
            encoding: None,
            content: script,
            permissions: "0644".into(),
            owner: None,
            defer: false,
        });
    }
    for f in &r.file {
        let (encoding, content) = match (&f.content, &f.src) {
            (Some(text), _) => (None, text.clone()),
            (None, Some(src)) => {
                let path = loaded.resolve(src);
                let bytes =
                    std::fs::read(&path).map_err(|source| CloudInitError::Read { path, source })?;
                match String::from_utf8(bytes) {
                    Ok(text) => (None, text),
                    Err(e) => (Some("b64"), base64_encode(e.as_bytes())),
                }
            }
            (None, None) => (None, String::new()),
        };
        let owner = f.owner.clone().filter(|o| o != "root" && o != "root:root");
        c.write_files.push(WriteFile {
            path: f.dest.clone(),
            encoding,
            content,
            permissions: format!("0{:o}", f.mode.map_or(0o644, |m| m.0)),
            defer: owner.is_some(),
            owner,
        });
    }
    if let Some(apt) = &r.apt {
        let mut sources = std::collections::BTreeMap::new();
        for s in &apt.sources {
            let key = match &s.key {
                Some(k) => {
                    let path = loaded.resolve(k);
                    let bytes = std::fs::read(&path)
                        .map_err(|source| CloudInitError::Read { path, source })?;
                    Some(armor(&bytes))
                }
                None => None,
            };
            let signed = if key.is_some() {
                "signed-by=$KEY_FILE"
            } else {
                ""
            };
            let arch = if s.arch.is_empty() {
                String::new()
            } else {
                format!("arch={}", s.arch.join(","))
            };
            let opts: Vec<&str> = [signed, arch.as_str()]
                .into_iter()
                .filter(|o| !o.is_empty())
                .collect();
            let opts = if opts.is_empty() {
                String::new()
            } else {
                format!("[{}] ", opts.join(" "))
            };
            let uri = s.uri.strip_prefix("ppa:").map_or(s.uri.clone(), |ppa| {
                let base = apt.ppa_base.as_deref().unwrap_or("").trim_end_matches('/');
                format!("{base}/{ppa}/ubuntu")
            });
            let suite = s.suite.clone().unwrap_or_else(|| "$RELEASE".into());
            let comps = if s.components.is_empty() {
                "main".to_string()
            } else {
                s.components.join(" ")
            };
            sources.insert(
                format!("{}.list", s.name),
                AptSourceEntry {
                    source: format!("deb {opts}{uri} {suite} {comps}"),
                    key,
                },
            );
        }
        if !sources.is_empty() {
            c.apt = Some(AptConfig { sources });
        }
        c.packages = apt.packages.clone();
        c.package_update = true;
        c.package_upgrade = apt.upgrade;
    }
    let platform = &r.image.platform;
    let needs_curl = !r.download.is_empty();
    for d in &r.download {
        let url = interp::expand_platform(&d.url, platform).unwrap_or_else(|_| d.url.clone());
        let sha = d.sha256.clone().or_else(|| {
            lock.and_then(|l| l.download(&url))
                .map(|d| d.hex().to_string())
        });
        let tmp = format!("/var/tmp/imgbuild-{}", short_hash(&url));
        let mut cmd = format!("curl -fsSL --retry 3 -o {tmp} {}", sh_quote(&url));
        if let Some(sha) = &sha {
            cmd.push_str(&format!(" && echo '{sha}  {tmp}' | sha256sum -c -"));
        }
        if let Some(dir) = &d.extract {
            let strip = if d.strip_components > 0 {
                format!(" --strip-components={}", d.strip_components)
            } else {
                String::new()
            };
            let unpack = if url.ends_with(".zip") || d.format.as_deref() == Some("zip") {
                format!("unzip -o -q {tmp} -d {}", sh_quote(dir))
            } else {
                format!("tar -xf {tmp} -C {}{strip}", sh_quote(dir))
            };
            cmd.push_str(&format!(" && mkdir -p {} && {unpack}", sh_quote(dir)));
        } else if let Some(dest) = &d.dest {
            let mode = d.mode.map_or(0o644, |m| m.0);
            cmd.push_str(&format!(
                " && install -D -m {mode:o} {tmp} {}",
                sh_quote(dest)
            ));
        }
        cmd.push_str(&format!(" && rm -f {tmp}"));
        c.runcmd.push(cmd);
    }
    if needs_curl && !c.packages.iter().any(|p| p == "curl") {
        c.packages.push("curl".into());
    }
    if let Some(pip) = r.pip.as_ref().filter(|p| !p.packages.is_empty()) {
        if !c.packages.iter().any(|p| p == "python3-pip") {
            c.packages.push("python3-pip".into());
        }
        let pkgs: Vec<String> = pip.packages.iter().map(|p| sh_quote(p)).collect();
        c.runcmd.push(format!(
            "python3 -m pip install --break-system-packages {}",
            pkgs.join(" ")
        ));
    }
    for l in &r.symlink {
        c.runcmd.push(format!(
            "mkdir -p \"$(dirname {p})\" && ln -sfn {t} {p}",
            p = sh_quote(&l.path),
            t = sh_quote(&l.target)
        ));
    }
    for s in &r.services.enable {
        c.runcmd
            .push(format!("systemctl enable --now {}", sh_quote(s)));
    }
    let shell = r
        .image
        .shell
        .clone()
        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
    for run in &r.run {
        let mut words: Vec<String> = shell.iter().map(|w| sh_quote(w)).collect();
        words.push(sh_quote(&run.command));
        let cmd = words.join(" ");
        c.runcmd.push(match &run.user {
            Some(u) => format!("runuser -u {} -- {cmd}", sh_quote(u)),
            None => cmd,
        });
    }
    c.runcmd.extend(ci.runcmd.iter().cloned());
    Ok(c)
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..6])
}

/// Quotes a word for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

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
