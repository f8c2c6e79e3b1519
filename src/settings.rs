//! Process-wide settings: what the executable reads from its environment (`HOME`,
//! `XDG_CACHE_HOME`, `DOCKER_CONFIG`, `IMGBUILD_*`) and hands to the library once, at start.
//! The library reads no environment variable itself; without `set`, it uses the defaults
//! (no home: the current directory).

use std::path::PathBuf;
use std::sync::OnceLock;

/// The settings. No `Debug`: it holds registry credentials.
#[derive(Clone, Default)]
pub struct Settings {
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$XDG_CACHE_HOME`.
    pub xdg_cache_home: Option<PathBuf>,
    /// `$IMGBUILD_NETRC`: the netrc file for download credentials (default `~/.netrc`).
    pub netrc: Option<PathBuf>,
    /// `$DOCKER_CONFIG`: the directory of the Docker config (default `~/.docker`).
    pub docker_config_dir: Option<PathBuf>,
    /// `$IMGBUILD_REGISTRY_USER` and `$IMGBUILD_REGISTRY_PASSWORD`, when both are set.
    pub registry_credentials: Option<(String, String)>,
    /// `$IMGBUILD_SANDBOX_DIR`: where sandbox roots are unpacked.
    pub sandbox_dir: Option<PathBuf>,
    /// `$IMGBUILD_KEEP_ROOTFS`: leave sandbox roots behind for debugging.
    pub keep_roots: bool,
    /// `$PATH`, where external tools are looked up (then the standard directories).
    pub path: Option<std::ffi::OsString>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Sets the settings for this process (the first call wins).
pub fn set(s: Settings) {
    let _ = SETTINGS.set(s);
}

/// The settings, or the defaults when none were set.
pub fn get() -> &'static Settings {
    SETTINGS.get_or_init(Settings::default)
}
