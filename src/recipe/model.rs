//! The recipe's data model: what a `recipes/NAME.toml` may contain, as serde types.
//!
//! Unknown keys are refused everywhere (`deny_unknown_fields`), so a typo is an error that
//! names the file, line and key rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer};

pub use crate::layer::Compression;

/// The part types cloud-init's user-data handlers read (`[[target.proxmox.cloud_init.parts]]
/// content_type`).
pub const PART_TYPES: &[&str] = &[
    "text/x-shellscript",
    "text/cloud-config",
    "text/cloud-boothook",
    "text/jinja2",
    "text/x-include-url",
    "text/part-handler",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub image: Image,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "ordered_map")]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub directory: Vec<Directory>,
    #[serde(default)]
    pub file: Vec<FileSpec>,
    #[serde(default)]
    pub copy: Vec<CopySpec>,
    #[serde(default)]
    pub download: Vec<Download>,
    #[serde(default)]
    pub symlink: Vec<Symlink>,
    #[serde(default)]
    pub group: Vec<Group>,
    #[serde(default)]
    pub user: Vec<User>,
    #[serde(default)]
    pub services: Services,
    #[serde(default)]
    pub apt: Option<Apt>,
    #[serde(default)]
    pub pip: Option<Pip>,
    #[serde(default)]
    pub run: Vec<Run>,
    #[serde(default)]
    pub target: Targets,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub name: String,
    #[serde(default = "default_base")]
    pub base: String,
    #[serde(default = "default_platform")]
    pub platform: String,
    /// Several platforms (`["linux/amd64", "linux/arm64"]`): one image each, in an image
    /// index. Loading sets `platform` to the first; [`crate::recipe::Loaded::for_platform`]
    /// gives the recipe for each.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// A sigstore public key (PEM; relative to the recipe or absolute): the registry base
    /// must carry a signature by it (`registry::signatures`).
    pub base_key: Option<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub shell: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Ports the image listens on (`80`, `80/tcp`, `53/udp`): the config's ExposedPorts.
    #[serde(default)]
    pub expose: Vec<String>,
    /// Directories the runtime should mount a volume on: the config's Volumes.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// The signal that stops the container (`SIGTERM`, `SIGQUIT`, `9`).
    pub stop_signal: Option<String>,
}

fn default_base() -> String {
    "scratch".into()
}

fn default_platform() -> String {
    "linux/amd64".into()
}

/// A file mode, written as a TOML integer (`0o755`) or an octal string (`"0755"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        let v = match Raw::deserialize(d)? {
            Raw::Int(i) => {
                u32::try_from(i).map_err(|_| serde::de::Error::custom("mode must be positive"))?
            }
            Raw::Str(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| {
                serde::de::Error::custom(format!("mode `{s}` is not an octal number"))
            })?,
        };
        if v > 0o7777 {
            return Err(serde::de::Error::custom(format!(
                "mode {v:o} is larger than 0o7777"
            )));
        }
        Ok(Mode(v))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// `[[directory]]`: a directory made (or given this mode and owner) as `mkdir -p` + `chown` +
/// `chmod` would; parents it makes are root's, 0755.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub path: String,
    pub mode: Option<Mode>,
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub dest: String,
    pub content: Option<String>,
    pub src: Option<String>,
    pub mode: Option<Mode>,
    pub owner: Option<String>,
    /// Add to the end of the image's file (`>>`), which keeps its mode and owner unless
    /// given; made as a new file when there is none.
    #[serde(default)]
    pub append: bool,
}

/// `[[copy]]`: a directory next to the recipe copied into the image (one layer each), its
/// entries keyed by content ([`crate::srctree`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopySpec {
    /// The directory, relative to the recipe's.
    pub src: String,
    /// Where its contents go in the image.
    pub dest: String,
    /// gitignore-style patterns left out (with the directory's `.imgbuildignore`).
    #[serde(default)]
    pub exclude: Vec<String>,
    pub owner: Option<String>,
    /// The files' mode (0644 unless given).
    pub mode: Option<Mode>,
    /// The directories' mode (0755 unless given).
    pub dir_mode: Option<Mode>,
    /// Keep the source's executable bit (as git does): a file with any `x` bit gets `x`
    /// wherever its mode has `r`.
    #[serde(default)]
    pub preserve_mode: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Download {
    pub url: String,
    pub sha256: Option<String>,
    pub dest: Option<String>,
    pub mode: Option<Mode>,
    pub owner: Option<String>,
    pub extract: Option<String>,
    #[serde(default)]
    pub strip_components: u32,
    /// Archive format when the URL does not tell: `tar`, `tar.gz`, `tar.xz`, `zip`.
    pub format: Option<String>,
    /// Per Debian architecture (`amd64`, `arm64`...): the URL and sha256 for that platform,
    /// over `url` and `sha256` (see [`Recipe::for_platform`]).
    #[serde(default)]
    pub arch: BTreeMap<String, ArchDownload>,
    /// A detached OpenPGP signature of the file (`.asc`, `.sig`), checked with
    /// `signature_key` when the file is fetched.
    pub signature: Option<String>,
    /// The signer's public key, a file next to the recipe.
    pub signature_key: Option<String>,
    /// The signer's primary key fingerprint: only that key of `signature_key` may have signed.
    pub signer: Option<String>,
}

/// `[download.arch.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchDownload {
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub signature: Option<String>,
}

impl Recipe {
    /// Applies the `[download.arch.ARCH]` entries of the image's platform, so every later
    /// stage reads one `url` and `sha256` per download. A download without an entry for the
    /// platform keeps its own (validation says it is missing).
    pub fn for_platform(&mut self) {
        let vars = crate::recipe::interp::platform_vars(&self.image.platform);
        let Some(arch) = vars.get("arch") else {
            return;
        };
        for d in &mut self.download {
            if let Some(a) = d.arch.get(arch) {
                if let Some(u) = &a.url {
                    d.url = u.clone();
                }
                if let Some(s) = &a.sha256 {
                    d.sha256 = Some(s.clone());
                }
                if let Some(s) = &a.signature {
                    d.signature = Some(s.clone());
                }
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    pub path: String,
    pub target: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    #[serde(default, deserialize_with = "opt_id")]
    pub gid: Option<u32>,
    /// A system group (`groupadd -r`): its gid, when not given, from the top of
    /// SYS_GID_MIN..SYS_GID_MAX down.
    #[serde(default)]
    pub system: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default, deserialize_with = "opt_id")]
    pub uid: Option<u32>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub shell: Option<String>,
    pub home: Option<String>,
    pub sudo: Option<String>,
    /// A system account (`useradd -r`): uid and group from the system range (from its top
    /// down), no password aging, no subordinate ids, and no home made unless `create_home`.
    #[serde(default)]
    pub system: bool,
    /// Make the home from `/etc/skel` (`useradd -m`); default: yes, except for system users.
    pub create_home: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Services {
    #[serde(default)]
    pub enable: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apt {
    #[serde(default)]
    pub sources: Vec<AptSource>,
    #[serde(default)]
    pub packages: Vec<String>,
    /// Packages present for the `[[run]]` steps only (compilers, `-dev` headers): installed
    /// over the image before the first run and absent from the image, as a Dockerfile's
    /// `apt-get purge --auto-remove` of its build dependencies intends.
    #[serde(default)]
    pub build_packages: Vec<String>,
    #[serde(default)]
    pub upgrade: bool,
    pub bootstrap: Option<String>,
    #[serde(default)]
    pub install_recommends: bool,
    /// Where `ppa:OWNER/NAME` sources live (`BASE/OWNER/NAME/ubuntu`); required with PPAs.
    pub ppa_base: Option<String>,
    /// Leave the recipe's sources (deb822 `.sources` with their keys) in the image, so
    /// `apt-get install` works there; `false` for a mirror reachable only at build time.
    #[serde(default = "keep_sources_default")]
    pub keep_sources: bool,
}

fn keep_sources_default() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptSource {
    pub name: String,
    pub uri: String,
    pub suite: Option<String>,
    #[serde(default)]
    pub components: Vec<String>,
    pub key: Option<String>,
    #[serde(default)]
    pub arch: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pip {
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub upgrade_pip: bool,
    /// A PEP 503 simple index to resolve from instead of pip's default (a mirror, a
    /// private index). pip gets it as `--index-url`; the files it picks are pinned by URL and
    /// sha256 in the lock like any.
    #[serde(default)]
    pub index_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    pub command: String,
    pub user: Option<String>,
    #[serde(default)]
    pub network: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(default)]
    pub oci: OciTarget,
    pub proxmox: Option<ProxmoxTarget>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciTarget {
    #[serde(default = "default_tags")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub compression: Compression,
    pub level: Option<i32>,
    /// A cosign-format private key (relative to the recipe or absolute): pushes sign the image
    /// and its SBOM with it (the password from `IMGBUILD_KEY_PASSWORD`).
    pub sign_key: Option<String>,
}

impl Default for OciTarget {
    fn default() -> Self {
        OciTarget {
            tags: default_tags(),
            compression: Compression::default(),
            level: None,
            sign_key: None,
        }
    }
}

fn default_tags() -> Vec<String> {
    vec!["latest".into()]
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxmoxTarget {
    pub node: Option<String>,
    /// A file storage with `import`, `iso` (and `snippets`) content (default `local`).
    pub storage: Option<String>,
    /// Where the template's disks live (default: `storage`; `local-lvm` on a stock node).
    pub disk_storage: Option<String>,
    pub vmid: Option<u32>,
    pub disk_size: Option<String>,
    pub format: Option<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    pub memory: Option<u32>,
    pub cores: Option<u32>,
    pub snippets_via: Option<String>,
    /// The name of the template VM on the node (default: the image name).
    pub name: Option<String>,
    /// The network bridge of the template's NIC (default `vmbr0`).
    pub bridge: Option<String>,
    /// How many templates of this image to keep, newest first (default 2; at least 1).
    pub keep: Option<u32>,
    #[serde(default)]
    pub cloud_init: CloudInit,
}

/// `[target.proxmox.cloud_init]`: what the cloud-init user-data adds to the recipe.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    pub hostname: Option<String>,
    /// Keys installed for every user of the recipe (and in Proxmox's `sshkeys`).
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// Commands run at the end of first boot, after everything the recipe declares.
    #[serde(default)]
    pub runcmd: Vec<String>,
    /// `poweroff` or `reboot` once cloud-init has finished.
    pub power_state: Option<String>,
    /// Run the shell-script parts at every boot, not only the first (the seed's
    /// `cloud_final_modules: [[scripts-user, always]]`, for an agent that must start each time).
    #[serde(default)]
    pub scripts_every_boot: bool,
    /// Variables exported at the top of every shell-script part (`export NAME='value'`).
    #[serde(default, deserialize_with = "ordered_map")]
    pub vars: Vec<(String, String)>,
    /// Extra MIME parts of the user-data, after the cloud-config.
    #[serde(default)]
    pub parts: Vec<CloudInitPart>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudInitPart {
    pub filename: String,
    /// A MIME type cloud-init reads: `text/x-shellscript`, `text/cloud-config`,
    /// `text/cloud-boothook`, `text/jinja2`, `text/x-include-url`, `text/part-handler`.
    #[serde(default = "default_part_type")]
    pub content_type: String,
    pub content: Option<String>,
    pub src: Option<String>,
}

fn default_part_type() -> String {
    "text/x-shellscript".into()
}

/// A uid or gid: an integer, or a string of digits (what `"${var.UID}"` gives).
fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Str(String),
    }
    let id = match Raw::deserialize(d)? {
        Raw::Int(i) => u32::try_from(i).ok(),
        // The first, uninterpolated reading of the recipe (see `recipe::load`) sees the
        // variable itself; the second reads its value.
        Raw::Str(s) if s.contains("${var.") => return Ok(None),
        Raw::Str(s) => s.trim().parse::<u32>().ok(),
    };
    match id {
        Some(id) => Ok(Some(id)),
        None => Err(serde::de::Error::custom(
            "an id must be a whole number from 0 to 4294967295",
        )),
    }
}

/// Deserializes a TOML table into `(key, string value)` pairs in document order.
fn ordered_map<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a table of strings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = m.next_entry::<String, String>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}
