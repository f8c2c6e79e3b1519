//! One module per subcommand, plus what they share: the reporter and error exit codes.

/// Writes a result line to stdout: `outln!(...)` is `println!` that returns an error instead of
/// panicking when stdout is closed (`| head -0`) or full (`> /dev/full`).
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::commands::out(&format!("{}\n", format_args!($($t)*)))?
    };
}

/// A chatter line to stderr; a closed stderr is ignored rather than a panic.
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

mod boot;
mod build;
mod cache_cmd;
mod check;
mod cloud_init;
mod deploy;
mod import;
mod key;
mod layer;
mod lock;
mod login;
mod plan;
mod progress;
mod push;
mod rebuild;
mod shared_cache;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use imgbuild::cache::Cache;
use imgbuild::fsutil;
use imgbuild::recipe::{self, Loaded, RecipeError};

use crate::cli::{BuildArgs, Cli, Command, Global, Target};

/// Runs the command; most exit 0 on success, `rebuild --exit-code` tells more.
pub fn run(cli: Cli) -> Result<ExitCode> {
    imgbuild::http::set_timeout(std::time::Duration::from_secs(cli.global.network_timeout));
    imgbuild::settings::set(settings_from_env());
    match &cli.command {
        _ if let Some(code) = rootless(&cli)? => Ok(code),
        Command::Rebuild(args) => rebuild::run(&cli.global, args),
        Command::Boot(args) => boot::run(&cli.global, args),
        _ => run_simple(cli).map(|()| ExitCode::SUCCESS),
    }
}

fn run_simple(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Rebuild(args) => rebuild::run(g, &args).map(drop),
        Command::Boot(args) => boot::run(g, &args).map(drop),
        Command::Build(args) => build::run(g, &args),
        Command::Cache(c) => cache_cmd::run(g, &c),
        Command::Check { recipe } => check::run(g, &recipe),
        Command::CloudInit { recipe, out, clone } => {
            cloud_init::run(g, &recipe, out.as_deref(), clone)
        }
        Command::Deploy {
            recipe,
            dir,
            proxmox,
        } => deploy::run(g, &recipe, dir.as_deref(), &proxmox),
        Command::Plan { recipe, explain } => plan::run(g, &recipe, explain),
        Command::Lock { recipe } => lock::run(g, &recipe),
        Command::Import { dockerfile, output } => import::run(g, &dockerfile, output.as_deref()),
        Command::Layer(args) => layer::run(g, &args),
        Command::Push {
            layout,
            reference,
            tag,
            sign_key,
        } => push::run(g, &layout, &reference, tag.as_deref(), sign_key.as_deref()),
        Command::Key(k) => key::run(g, &k),
        Command::Login {
            registry, username, ..
        } => login::run(g, &registry, &username),
        Command::Shortcut(argv) => {
            let name = &argv[0];
            let recipe = PathBuf::from("recipes").join(format!("{name}.toml"));
            if !recipe.is_file() {
                return Err(UsageError(format!(
                    "unknown command `{name}`, and there is no recipe {} (see `imgbuild --help`)",
                    recipe.display()
                ))
                .into());
            }
            // `imgbuild [global flags] NAME [build and global flags]` is `imgbuild [global
            // flags] build recipes/NAME.toml [...]`: parsed again whole, so global flags may
            // come after NAME too.
            let all: Vec<std::ffi::OsString> = std::env::args_os().collect();
            let prefix = &all[..all.len().saturating_sub(argv.len())];
            let mut full: Vec<std::ffi::OsString> = prefix.to_vec();
            full.push("build".into());
            full.push(recipe.into_os_string());
            full.extend(argv[1..].iter().map(Into::into));
            let cli = <Cli as clap::Parser>::try_parse_from(full).unwrap_or_else(|e| e.exit());
            imgbuild::http::set_timeout(std::time::Duration::from_secs(cli.global.network_timeout));
            run_simple(cli)
        }
    }
}

/// Not root, and the command may run the image's programs (apt, pip, `[[run]]`, the proxmox
/// target's VM packages): runs this same command line again as root of a user namespace over
/// the user's subordinate ids ([`imgbuild::rootless`]) and gives its exit code. `None`: run
/// here (root already, inside the namespace already, or nothing that needs it).
fn rootless(cli: &Cli) -> Result<Option<ExitCode>> {
    use imgbuild::rootless;
    let euid = rustix::process::geteuid();
    if euid.is_root() || std::env::var_os(rootless::INSIDE_ENV).is_some() {
        return Ok(None);
    }
    let (recipe, vm) = match &cli.command {
        Command::Build(a) => (a.recipe.clone(), a.target == Target::Proxmox),
        Command::Rebuild(a) => (a.recipe.clone(), false),
        Command::Lock { recipe } | Command::Plan { recipe, .. } => (recipe.clone(), false),
        Command::Shortcut(argv) => (
            PathBuf::from("recipes").join(format!("{}.toml", argv[0])),
            false,
        ),
        _ => return Ok(None),
    };
    // A recipe that does not load is the command's to report.
    let Ok(loaded) = load(&cli.global, &recipe) else {
        return Ok(None);
    };
    let needed = vm
        || loaded
            .per_platform()
            .iter()
            .any(|v| imgbuild::build::recipe_runs_programs(&v.recipe));
    if !needed {
        return Ok(None);
    }
    let m = rootless::check(&rootless::System::default(), euid.as_raw())
        .map_err(|e| UsageError(format!("{}: {e}", recipe.display())))?;
    if !cli.global.quiet {
        eprintln!(
            "==> not root: building as root of a user namespace (uid 0 = {}, 1-{} = {}'s subordinate ids from {})",
            m.user, m.uids.count, m.user, m.uids.start
        );
    }
    let exe = std::env::current_exe().context("finding imgbuild's own executable")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let status = rootless::command(&m, &exe, &args)
        .status()
        .context("running `unshare` for the user namespace")?;
    Ok(Some(match status.code() {
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }))
}

/// What the library needs from the environment, read here once (the library reads none).
fn settings_from_env() -> imgbuild::settings::Settings {
    let path = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    imgbuild::settings::Settings {
        home: path("HOME"),
        xdg_cache_home: path("XDG_CACHE_HOME"),
        netrc: path("IMGBUILD_NETRC"),
        docker_config_dir: path("DOCKER_CONFIG"),
        registry_credentials: match (
            std::env::var("IMGBUILD_REGISTRY_USER"),
            std::env::var("IMGBUILD_REGISTRY_PASSWORD"),
        ) {
            (Ok(u), Ok(p)) => Some((u, p)),
            _ => None,
        },
        sandbox_dir: path("IMGBUILD_SANDBOX_DIR"),
        keep_roots: std::env::var_os("IMGBUILD_KEEP_ROOTFS").is_some(),
        path: std::env::var_os("PATH"),
    }
}

/// Stdout could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing to stdout")]
pub struct StdoutError(#[source] pub std::io::Error);

/// Writes `text` to stdout and flushes it.
pub fn out(text: &str) -> std::result::Result<(), StdoutError> {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())
        .and_then(|()| o.flush())
        .map_err(StdoutError)
}

/// A command-line mistake: exit code 2, like clap's own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Prints an error chain; bad input (recipes, usage) exits 2, everything else 1.
pub fn report_error(e: &anyhow::Error) -> ExitCode {
    // A reader that went away (`imgbuild plan R | head -1`) is not an error worth a message.
    if let Some(StdoutError(io)) = e.chain().find_map(|c| c.downcast_ref::<StdoutError>())
        && io.kind() == std::io::ErrorKind::BrokenPipe
    {
        return ExitCode::SUCCESS;
    }
    let recipe = e.chain().find_map(|c| {
        c.downcast_ref::<RecipeError>()
            .or_else(|| build_error(c).and_then(|b| b.recipe()))
    });
    if let Some(r) = recipe
        && matches!(r, RecipeError::Invalid(_))
    {
        errln!("{r}");
        return ExitCode::from(2);
    }
    // One line: the context chain, outermost first (greppable in cron logs).
    errln!("error: {e:#}");
    let stale_lock = |c: &(dyn std::error::Error + 'static)| {
        matches!(
            build_error(c),
            Some(imgbuild::build::BuildError::Locked { .. })
        )
    };
    let bad_reference = |c: &(dyn std::error::Error + 'static)| {
        c.is::<imgbuild::registry::reference::BadReference>()
            || matches!(
                c.downcast_ref::<imgbuild::registry::RegistryError>(),
                Some(imgbuild::registry::RegistryError::Reference(_))
            )
    };
    if e.chain()
        .any(|c| c.is::<UsageError>() || c.is::<RecipeError>() || stale_lock(c) || bad_reference(c))
    {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

fn cache(g: &Global) -> Result<Cache> {
    let root = g.cache_dir.clone().unwrap_or_else(Cache::default_root);
    Cache::open(&root).with_context(|| format!("cannot open the cache at {}", root.display()))
}

fn build_options(g: &Global, args: &BuildArgs) -> imgbuild::build::Options {
    imgbuild::build::Options {
        client: client_options(g),
        locked: args.locked,
        configure: !args.no_configure,
    }
}

fn client_options(g: &Global) -> imgbuild::registry::ClientOptions {
    imgbuild::registry::ClientOptions {
        ca_certs: g.ca_cert.clone(),
        insecure: g.insecure_registry.clone(),
        certs_d: std::env::var_os("IMGBUILD_CERTS_D").map(PathBuf::from),
    }
}

/// The password of signing keys, from `IMGBUILD_KEY_PASSWORD` (never a flag: it would be in
/// the shell history and the process list).
fn key_password() -> Result<String> {
    match std::env::var("IMGBUILD_KEY_PASSWORD") {
        Ok(p) => Ok(p),
        Err(_) => Err(UsageError(
            "set IMGBUILD_KEY_PASSWORD to the signing key's password (an empty value for a key \
             without one)"
                .into(),
        )
        .into()),
    }
}

/// Opens the signing key at `path` (exit 2 when it is not one, or the password is wrong).
fn signing_key(path: &std::path::Path) -> Result<imgbuild::sigstore::SigningKey> {
    let password = key_password()?;
    let bytes = fsutil::read_bounded(path, 64 << 10)
        .with_context(|| format!("reading the signing key {}", path.display()))?;
    imgbuild::sigstore::SigningKey::from_pem(&bytes, password.as_bytes())
        .map_err(|e| UsageError(format!("signing key {}: {e}", path.display())).into())
}

/// The key to sign pushes with: `--sign-key`, else the recipe's `[target.oci] sign_key`.
fn push_signing_key(
    flag: Option<&std::path::Path>,
    loaded: &Loaded,
) -> Result<Option<imgbuild::sigstore::SigningKey>> {
    let path = match (flag, &loaded.recipe.target.oci.sign_key) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(k)) => loaded.resolve(k),
        (None, None) => return Ok(None),
    };
    signing_key(&path).map(Some)
}

fn load(g: &Global, path: &std::path::Path) -> Result<Loaded> {
    Ok(recipe::load(path, &g.vars)?)
}

/// `SOURCE_DATE_EPOCH`, or 0.
fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.trim().parse().map_err(|_| {
            UsageError(format!(
                "SOURCE_DATE_EPOCH=`{v}` is not a number of seconds"
            ))
            .into()
        }),
        _ => Ok(0),
    }
}

/// The build error inside an error chain link, also when a proxmox target error wraps it
/// (transparently, so it is not a link of its own).
fn build_error<'a>(
    c: &'a (dyn std::error::Error + 'static),
) -> Option<&'a imgbuild::build::BuildError> {
    c.downcast_ref::<imgbuild::build::BuildError>().or_else(|| {
        match c.downcast_ref::<imgbuild::proxmox::target::TargetError>() {
            Some(imgbuild::proxmox::target::TargetError::Build(b)) => Some(b),
            _ => None,
        }
    })
}

fn wants(target: Target, which: Target) -> bool {
    target == which || target == Target::All
}
