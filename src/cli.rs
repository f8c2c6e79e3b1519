//! Command-line definition (clap). Global options apply to every subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "imgbuild",
    version,
    about = "Build machine images from a declarative recipe, without a container daemon",
    long_about = "Build machine images from a declarative recipe, without a container daemon.\n\n\
                  `imgbuild NAME` is a shortcut for `imgbuild build recipes/NAME.toml`.",
    allow_external_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Cache directory [default: $XDG_CACHE_HOME/imgbuild]
    #[arg(long, global = true, env = "IMGBUILD_CACHE", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Set a recipe variable (repeatable): --var user=eric
    #[arg(long = "var", global = true, value_name = "KEY=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// How to show progress on stderr
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Show nothing but results and errors
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Extra CA certificate (PEM) for registries (repeatable); /etc/docker/certs.d/HOST/ca.crt is also read
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Vec<PathBuf>,
    /// Reach this registry over plain HTTP (repeatable); localhost is plain unless a CA is given
    #[arg(long, global = true, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// Give up on a server that sends nothing for this long: connect, answer, each read
    #[arg(
        long,
        global = true,
        env = "IMGBUILD_NETWORK_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=86400)
    )]
    pub network_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise
    Auto,
    /// Progress bars
    Tty,
    /// One line per event, for logs and cron
    Plain,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("`{s}` has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a recipe into an OCI image layout
    Build(BuildArgs),
    /// Write the recipe's cloud-init user-data, meta-data, network-config and NoCloud seed.iso
    CloudInit {
        /// The recipe file
        recipe: PathBuf,
        /// Output directory [default: out/NAME/cloud-init]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The small snippet for VMs cloned from imgbuild's disk, not the install-at-boot one
        #[arg(long)]
        clone: bool,
    },
    /// Make the built proxmox target (out/NAME/proxmox) a VM template over the Proxmox API
    Deploy {
        /// The recipe file
        recipe: PathBuf,
        /// The proxmox output directory [default: out/NAME/proxmox]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        #[command(flatten)]
        proxmox: ProxmoxArgs,
    },
    /// Nightly job: re-resolve the lock, rebuild what changed, push if the image changed, report
    Rebuild(RebuildArgs),
    /// Boot the proxmox target's disk under QEMU with its cloud-init seed (a look, or with
    /// --expect a smoke test)
    Boot(BootArgs),
    /// Show the cache, or shrink it: ls | gc --max-size SIZE | prune --older-than DUR
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Validate a recipe without building
    Check {
        /// The recipe file
        recipe: PathBuf,
    },
    /// Convert a Dockerfile into a recipe (stdout, or -o FILE)
    Import {
        /// The Dockerfile
        dockerfile: PathBuf,
        /// Write the recipe here instead of stdout
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Resolve apt packages and pin downloads into NAME.lock next to the recipe
    Lock {
        /// The recipe file
        recipe: PathBuf,
    },
    /// Show the steps, their cache keys, and whether each would come from the cache
    Plan {
        /// The recipe file
        recipe: PathBuf,
        /// For each step that would be built, say which input changed since the last build of
        /// this recipe in this cache (a package version, a download or file digest, a recipe
        /// field, the base image), or that it was never built
        #[arg(long)]
        explain: bool,
    },
    /// Turn a directory into one OCI layer blob (the layer core, as a tool)
    Layer(LayerArgs),
    /// Push an OCI image layout to a registry
    Push {
        /// The layout directory (as written by build)
        layout: PathBuf,
        /// Where to: HOST[:PORT]/REPO[:TAG]
        reference: String,
        /// Which image of the layout, by tag [default: the only one]
        #[arg(long)]
        tag: Option<String>,
        /// Sign the pushed image and its SBOM with this cosign-format private key (password in
        /// IMGBUILD_KEY_PASSWORD)
        #[arg(long, value_name = "FILE")]
        sign_key: Option<PathBuf>,
    },
    /// Signing keys: `key generate --out DIR`
    #[command(subcommand)]
    Key(KeyCommand),
    /// Store registry credentials in ~/.docker/config.json
    Login {
        /// The registry, as HOST[:PORT]
        registry: String,
        #[arg(long, short)]
        username: String,
        /// Read the password from stdin (the only way: never on the command line)
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    #[command(external_subcommand)]
    Shortcut(Vec<String>),
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeyCommand {
    /// Write a new key pair for sigstore signatures: DIR/imgbuild.key (encrypted with the
    /// password in IMGBUILD_KEY_PASSWORD) and DIR/imgbuild.pub, in the cosign format
    Generate {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub struct LayerArgs {
    /// The directory whose contents become the layer
    pub dir: PathBuf,
    /// Where the blob goes, as BLOBDIR/sha256/HEX
    #[arg(long, value_name = "BLOBDIR")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = LayerCompression::Gzip)]
    pub compression: LayerCompression,
    /// Compression level [default: 6 for gzip, 3 for zstd]
    #[arg(long)]
    pub level: Option<i32>,
    /// Compression threads [default: all cores]; the output is the same for any count
    #[arg(long)]
    pub threads: Option<usize>,
    /// Owner of every entry, as UID:GID [default: the files' own]
    #[arg(long, value_name = "UID:GID", value_parser = parse_owner)]
    pub owner: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayerCompression {
    Gzip,
    Zstd,
}

fn parse_owner(s: &str) -> Result<(u64, u64), String> {
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not UID:GID"))?;
    let num = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("`{v}` is not a number"))
    };
    Ok((num(u)?, num(g)?))
}

#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// The recipe file
    pub recipe: PathBuf,
    /// Output directory for the OCI image layout [default: out/NAME]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write JSON with the manifest, config and layer digests and the cache hits and misses
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// What to build
    #[arg(long, value_enum, default_value_t = Target::Oci)]
    pub target: Target,
    /// Push the image to this reference (HOST[:PORT]/REPO[:TAG]) after building
    #[arg(long, value_name = "REF")]
    pub push: Option<String>,
    /// Sign what --push pushes with this cosign-format private key [default: the recipe's
    /// [target.oci] sign_key]; the password in IMGBUILD_KEY_PASSWORD
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Use only the lock file (NAME.lock): fail if it is missing or out of date
    #[arg(long)]
    pub locked: bool,
    /// Leave apt packages unpacked: do not run `dpkg --configure -a` in a sandbox
    #[arg(long)]
    pub no_configure: bool,
    /// After building the proxmox target, make it a template over the Proxmox API
    #[arg(long)]
    pub deploy: bool,
    /// Before building, import step results from this registry cache artifact
    /// (HOST[:PORT]/REPO:TAG, as written by --cache-to)
    #[arg(long, value_name = "REF")]
    pub cache_from: Option<String>,
    /// After building, store this build's step results (keys and layers) as a registry
    /// artifact that --cache-from on another machine reuses
    #[arg(long, value_name = "REF")]
    pub cache_to: Option<String>,
    #[command(flatten)]
    pub proxmox: ProxmoxArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CacheCommand {
    /// List step keys and blobs, least recently used first, and the total size
    Ls {
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Hash every cached blob (builds trust a blob whose inode, size and times are unchanged
    /// since it was hashed); corrupt ones are removed and reported, exit 1
    Verify,
    /// Remove least recently used keys and blobs until the cache is at most SIZE (e.g. 20G);
    /// waits for running builds, never removes a blob a kept key needs
    Gc {
        #[arg(long, value_name = "SIZE")]
        max_size: String,
    },
    /// Remove what was not used for DUR (e.g. 30d, 12h); waits for running builds
    Prune {
        #[arg(long, value_name = "DUR")]
        older_than: String,
    },
}

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["recipe", "dir"])))]
pub struct BootArgs {
    /// The recipe whose proxmox target to boot (from out/NAME/proxmox)
    pub recipe: Option<PathBuf>,
    /// The proxmox output directory instead (what `build --target proxmox` wrote)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Another NoCloud seed ISO (label `cidata`) instead of the one built
    #[arg(long, value_name = "ISO")]
    pub seed: Option<PathBuf>,
    /// Wait for TEXT on the serial console (repeatable: all of them); exit 0 once seen, 1 if
    /// the VM stops or the timeout passes first. The console goes to stdout
    #[arg(long, value_name = "TEXT")]
    pub expect: Vec<String>,
    /// Stop the VM after this long (e.g. 300s, 10m)
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Host port for the guest's SSH (default: a free one, printed at start)
    #[arg(long, value_name = "PORT")]
    pub ssh_port: Option<u16>,
    /// Memory in MiB
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    /// Virtual CPUs
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// UEFI firmware
    #[arg(long, value_name = "FILE", default_value = imgbuild::proxmox::boot::OVMF)]
    pub firmware: PathBuf,
    /// How QEMU runs the guest: auto (KVM when /dev/kvm opens, TCG otherwise or when KVM
    /// fails), kvm, or tcg (emulation)
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RebuildArgs {
    /// The recipe file
    pub recipe: PathBuf,
    /// Where the image lives: HOST[:PORT]/REPO:TAG (compared, and pushed when it changed)
    #[arg(long, value_name = "REF")]
    pub push: String,
    /// Output directory for the OCI image layout [default: out/NAME]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Also tag a pushed image with today's date (UTC), as TAG-YYYYMMDD
    #[arg(long)]
    pub tag_date: bool,
    /// Sign what is pushed with this cosign-format private key [default: the recipe's
    /// [target.oci] sign_key]; the password in IMGBUILD_KEY_PASSWORD
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Write a JSON report: changes, digests, steps, timings, bytes moved
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Exit 3 when an update was pushed (0 when nothing changed), like `git diff --exit-code`
    #[arg(long)]
    pub exit_code: bool,
    /// Before building, import step results from this registry cache artifact
    #[arg(long, value_name = "REF")]
    pub cache_from: Option<String>,
    /// After building, store this build's step results as a registry cache artifact
    #[arg(long, value_name = "REF")]
    pub cache_to: Option<String>,
}

/// Where and how to reach the Proxmox VE API.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxmoxArgs {
    /// The node's API address, e.g. https://pve.lan:8006
    #[arg(long, env = "PROXMOX_URL", value_name = "URL")]
    pub proxmox_url: Option<String>,
    /// The API token, USER@REALM!TOKENID=SECRET (prefer the environment variable)
    #[arg(
        long,
        env = "PROXMOX_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub proxmox_token: Option<String>,
    /// The node's CA certificate (/etc/pve/pve-root-ca.pem on the node)
    #[arg(long, value_name = "PEM")]
    pub proxmox_ca: Option<PathBuf>,
    /// Accept any certificate from the node (its default one is self-signed)
    #[arg(long)]
    pub proxmox_insecure: bool,
    /// user@host for `snippets_via = "ssh"` [default: root@ the API's host]
    #[arg(long, value_name = "USER@HOST")]
    pub ssh: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Oci,
    Proxmox,
    All,
}
