//! Lock files: `NAME.lock` next to `NAME.toml` pins what a recipe resolved to, so a build
//! can be repeated exactly (`build --locked`) and a nightly job can show what changed.
//!
//! It records every apt package (version, architecture, source package, URL, size, sha256),
//! the snapshot of each repository it came from (the sha256 and `Date` of its signed
//! `InRelease`), and the sha256 of each `[[download]]` the recipe left unpinned. `inputs` is
//! the digest of everything the resolution read from the recipe and the base image, so a lock
//! that no longer answers the recipe is noticed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::apt::repo::{self, RepoError, Source};
use crate::apt::resolve::{self, Request};
use crate::apt::universe::{self, Universe};
use crate::base::BaseImage;
use crate::cache::{Cache, CacheError};
use crate::canonical;
use crate::digest::Digest;
use crate::http::{HttpError as DownloadError, redact};
use crate::lower::LowerFs;
use crate::recipe::interp::expand_platform;
use crate::recipe::{FieldPath, Loaded, RecipeError};
use crate::report::{Dir, Event, Reporter};

/// pip's `--report` JSON that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PipReportError(pub String);

impl From<String> for PipReportError {
    fn from(m: String) -> Self {
        PipReportError(m)
    }
}

impl From<&str> for PipReportError {
    fn from(m: &str) -> Self {
        PipReportError(m.to_string())
    }
}

mod file;
pub use file::{
    Sections, read, read_for, read_section, read_sections, write, write_for, write_section,
    write_sections,
};

pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lock {
    pub version: u32,
    pub inputs: Digest,
    #[serde(default, rename = "source")]
    pub sources: Vec<LockedSource>,
    #[serde(default, rename = "package")]
    pub packages: Vec<LockedPackage>,
    /// `[apt] build_packages` and what they need beyond `packages`.
    #[serde(
        default,
        rename = "build_package",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub build_packages: Vec<LockedPackage>,
    #[serde(default, rename = "download")]
    pub downloads: Vec<LockedDownload>,
    #[serde(default)]
    pub pip: Vec<LockedPip>,
}

/// A Python distribution pip resolved for `[pip]`, pinned by the sha256 of its file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockedPip {
    pub name: String,
    pub version: String,
    pub url: String,
    pub sha256: Digest,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockedSource {
    pub name: String,
    pub uri: String,
    pub suite: String,
    pub inrelease: Digest,
    pub date: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// The source package.
    pub source: String,
    /// The repository (`[[apt.sources]]` name) it comes from.
    pub repo: String,
    pub url: String,
    pub size: u64,
    pub sha256: Digest,
    /// Installed only as a dependency of what the recipe asked for (apt's `Auto-Installed`,
    /// written to the image's `extended_states` so `apt autoremove` is right).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockedDownload {
    pub url: String,
    pub sha256: Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot resolve the apt packages: {0}")]
    Resolve(String),
    #[error("cannot read the base image's layers")]
    Base(#[source] std::io::Error),
    #[error("cannot read lock file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write lock file {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{url}: signature {signature} (key {key}): {source}")]
    Signature {
        url: String,
        signature: String,
        key: PathBuf,
        source: crate::openpgp::SignatureError,
    },
}

/// A download's detached signature to check: its URL, the signer's key file, and the
/// fingerprint the key must have.
#[derive(Debug, Clone)]
pub struct SignatureCheck {
    pub url: String,
    pub key: PathBuf,
    pub signer: Option<String>,
}

/// Checks the file `blob` (the download of `url`, in the cache) against its signature.
pub fn verify_signature(
    client: &reqwest::blocking::Client,
    check: &SignatureCheck,
    url: &str,
    blob: &Path,
) -> Result<(), LockError> {
    let fail = |source| LockError::Signature {
        url: redact(url),
        signature: redact(&check.url),
        key: check.key.clone(),
        source,
    };
    let sig = crate::http::get_small(client, &check.url, 1 << 20)?;
    let key = crate::fsutil::read_bounded(&check.key, 16 << 20)
        .map_err(|e| fail(crate::openpgp::SignatureError::Io(e)))?;
    let keys = crate::openpgp::keyring(&key).map_err(fail)?;
    let data = std::fs::File::open(blob).map_err(|e| fail(e.into()))?;
    crate::openpgp::verify_detached(
        &keys,
        check.signer.as_deref(),
        &sig,
        std::io::BufReader::new(data),
    )
    .map_err(fail)?;
    Ok(())
}

/// The signature check `[[download]]` asks for, URLs expanded for the platform.
pub fn signature_check(loaded: &Loaded, d: &crate::recipe::Download) -> Option<SignatureCheck> {
    let url = expand_platform(d.signature.as_ref()?, &loaded.recipe.image.platform).ok()?;
    Some(SignatureCheck {
        url,
        key: loaded.resolve(d.signature_key.as_ref()?),
        signer: d.signer.clone(),
    })
}

impl Lock {
    pub fn download(&self, url: &str) -> Option<&Digest> {
        self.downloads
            .iter()
            .find(|d| d.url == url)
            .map(|d| &d.sha256)
    }

    /// `name: old -> new` lines for what differs between two locks.
    pub fn diff(&self, new: &Lock) -> Vec<String> {
        let old: BTreeMap<&str, &LockedPackage> =
            self.packages.iter().map(|p| (p.name.as_str(), p)).collect();
        let newm: BTreeMap<&str, &LockedPackage> =
            new.packages.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut out = Vec::new();
        for (n, p) in &newm {
            match old.get(n) {
                None => out.push(format!("{n}: (new) -> {}", p.version)),
                Some(o) if o.version != p.version || o.sha256 != p.sha256 => {
                    out.push(format!("{n}: {} -> {}", o.version, p.version))
                }
                _ => {}
            }
        }
        for n in old.keys().filter(|n| !newm.contains_key(*n)) {
            out.push(format!("{n}: {} -> (removed)", old[n].version));
        }
        let pairs = |v: &[LockedPackage]| -> Vec<(String, String)> {
            v.iter()
                .map(|p| (p.name.clone(), p.version.clone()))
                .collect()
        };
        versions_diff(
            &mut out,
            "build ",
            &pairs(&self.build_packages),
            &pairs(&new.build_packages),
        );
        let pip = |v: &[LockedPip]| -> Vec<(String, String)> {
            v.iter()
                .map(|p| (p.name.clone(), p.version.clone()))
                .collect()
        };
        versions_diff(&mut out, "pip ", &pip(&self.pip), &pip(&new.pip));
        for d in &new.downloads {
            if self.download(&d.url) != Some(&d.sha256) {
                out.push(format!("{}: pinned {}", redact(&d.url), d.sha256));
            }
        }
        out
    }
}

/// `PREFIXname: old -> new` (or `(new) -> v`) for each name of `new` whose version changed.
fn versions_diff(
    out: &mut Vec<String>,
    prefix: &str,
    old: &[(String, String)],
    new: &[(String, String)],
) {
    let old: BTreeMap<&str, &str> = old.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    for (n, v) in new {
        match old.get(n.as_str()) {
            Some(o) if o == v => {}
            Some(o) => out.push(format!("{prefix}{n}: {o} -> {v}")),
            None => out.push(format!("{prefix}{n}: (new) -> {v}")),
        }
    }
}

/// The Debian architecture of an OCI platform (`linux/arm64/v8` -> `arm64`).
pub fn deb_arch(platform: &str) -> String {
    let arch = platform.split('/').nth(1).unwrap_or("amd64");
    match arch {
        "386" => "i386".into(),
        "arm" => "armhf".into(),
        other => other.into(),
    }
}

/// The sources of the recipe, keys read from files next to it.
pub fn recipe_sources(loaded: &Loaded, codename: Option<&str>) -> Result<Vec<Source>, LockError> {
    let Some(apt) = &loaded.recipe.apt else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let platform_arch = loaded
        .recipe
        .image
        .platform
        .split('/')
        .nth(1)
        .unwrap_or("amd64");
    for (i, s) in apt.sources.iter().enumerate() {
        let field = FieldPath::root().key("apt").key("sources").index(i);
        // `arch = [...]` is apt's `[arch=...]`: the source serves only those architectures.
        if !s.arch.is_empty() && !s.arch.iter().any(|a| a == platform_arch) {
            continue;
        }
        let (uri, suite, components) = match s.uri.strip_prefix("ppa:") {
            Some(ppa) => {
                let Some(base) = &apt.ppa_base else {
                    return Err(loaded
                        .error_at(
                            &field.key("uri"),
                            "a `ppa:` source needs `[apt] ppa_base` (the PPA archive's URL)",
                        )
                        .into());
                };
                let suite = s
                    .suite
                    .clone()
                    .or(codename.map(str::to_string))
                    .ok_or_else(|| {
                        loaded.error_at(
                            &field.key("suite"),
                            "the base image names no release codename: set `suite`",
                        )
                    })?;
                (
                    format!("{}/{ppa}/ubuntu", base.trim_end_matches('/')),
                    suite,
                    vec!["main".to_string()],
                )
            }
            None => (
                s.uri.clone(),
                s.suite.clone().unwrap_or_default(),
                s.components.clone(),
            ),
        };
        let (keyring, key_origin) = match &s.key {
            Some(k) => {
                let path = loaded.resolve(k);
                let bytes = std::fs::read(&path).map_err(|e| {
                    loaded.error_at(
                        &field.key("key"),
                        format!("cannot read key {}: {e}", path.display()),
                    )
                })?;
                (Some(bytes), path.display().to_string())
            }
            None => (None, format!("{} (no `key` given)", loaded.path.display())),
        };
        out.push(Source {
            name: s.name.clone(),
            uri,
            suite,
            components,
            keyring,
            key_origin,
        });
    }
    Ok(out)
}

/// The base image's own apt sources, keys looked up in the image.
pub fn base_sources(lower: &LowerFs) -> Vec<Source> {
    let read_key = |p: &str| -> Option<Vec<u8>> {
        if !p.is_empty() {
            return lower.read(p.as_bytes()).map(<[u8]>::to_vec);
        }
        // No Signed-By: apt trusts every key in trusted.gpg(.d).
        let mut all = Vec::new();
        if let Some(k) = lower.read(b"etc/apt/trusted.gpg") {
            all.extend_from_slice(k);
        }
        for (path, e) in lower.children(b"etc/apt/trusted.gpg.d") {
            if path.ends_with(b".gpg")
                && let Some(d) = &e.data
            {
                all.extend_from_slice(d);
            }
        }
        (!all.is_empty()).then_some(all)
    };
    let mut out = Vec::new();
    if let Some(t) = lower.read(b"etc/apt/sources.list") {
        out.extend(repo::parse_sources_file(
            "sources.list",
            &String::from_utf8_lossy(t),
            &read_key,
        ));
    }
    for (path, e) in lower.children(b"etc/apt/sources.list.d") {
        let name = String::from_utf8_lossy(path).into_owned();
        if let Some(d) = &e.data
            && (name.ends_with(".list") || name.ends_with(".sources"))
        {
            let short = name.rsplit('/').next().unwrap_or(&name).to_string();
            out.extend(repo::parse_sources_file(
                &short,
                &String::from_utf8_lossy(d),
                &read_key,
            ));
        }
    }
    out
}

/// `VERSION_CODENAME` of the image's os-release.
pub fn codename(lower: &LowerFs) -> Option<String> {
    let t = lower
        .read(b"etc/os-release")
        .or_else(|| lower.read(b"usr/lib/os-release"))?;
    String::from_utf8_lossy(t).lines().find_map(|l| {
        l.strip_prefix("VERSION_CODENAME=")
            .map(|v| v.trim_matches('"').to_string())
    })
}

/// The digest of what resolution reads from the recipe and base: a lock with other `inputs`
/// does not answer this recipe.
pub fn inputs(loaded: &Loaded, base: &BaseImage) -> Result<Digest, LockError> {
    let r = &loaded.recipe;
    let mut keys = Vec::new();
    if let Some(apt) = &r.apt {
        for s in &apt.sources {
            keys.push(match &s.key {
                Some(k) => std::fs::read(loaded.resolve(k))
                    .map(|b| Digest::of(&b).to_string())
                    .unwrap_or_default(),
                None => String::new(),
            });
        }
    }
    let apt = r.apt.as_ref().map(|a| {
        json!({
            "sources": a.sources.iter().zip(&keys).map(|(s, k)| json!({
                "name": s.name, "uri": s.uri, "suite": s.suite, "components": s.components, "key": k,
            })).collect::<Vec<_>>(),
            "packages": a.packages, "build_packages": a.build_packages, "upgrade": a.upgrade, "bootstrap": a.bootstrap,
            "recommends": a.install_recommends, "ppa_base": a.ppa_base,
        })
    });
    let unpinned: Vec<String> = r
        .download
        .iter()
        .filter(|d| d.sha256.is_none())
        .filter_map(|d| expand_platform(&d.url, &r.image.platform).ok())
        .collect();
    let mut request = json!({
        "lock": LOCK_VERSION,
        "platform": r.image.platform,
        "base": base.digest.as_ref().map(|d| d.to_string()),
        "apt": apt,
        "downloads": unpinned,
        "pip": r.pip.as_ref().map(|p| &p.packages),
    });
    // Only when set, so the locks of recipes without them keep their request digest.
    if let Some(index) = r.pip.as_ref().and_then(|p| p.index_url.as_ref()) {
        request["pip_index"] = json!(index);
    }
    if r.pip.as_ref().is_some_and(|p| p.upgrade_pip) {
        request["pip_upgrade"] = json!(true);
    }
    Ok(Digest::of(&canonical::encode(&request)))
}

/// Whether the recipe needs a lock at all (apt packages or unpinned downloads).
pub fn needed(loaded: &Loaded) -> bool {
    let r = &loaded.recipe;
    r.apt.as_ref().is_some_and(|a| {
        !a.packages.is_empty() || !a.build_packages.is_empty() || a.bootstrap.is_some() || a.upgrade
    }) || r.download.iter().any(|d| d.sha256.is_none())
        || r.pip.as_ref().is_some_and(|p| !p.packages.is_empty())
}

/// Resolves the recipe against the repositories and pins its downloads: a fresh lock.
pub fn resolve(
    loaded: &Loaded,
    base: &BaseImage,
    cache: &Cache,
    reporter: &dyn Reporter,
) -> Result<Lock, LockError> {
    let r = &loaded.recipe;
    let client = crate::http::client().map_err(|source| DownloadError::Http {
        url: "(client)".into(),
        source,
    })?;
    let mut lock = Lock {
        version: LOCK_VERSION,
        inputs: inputs(loaded, base)?,
        sources: Vec::new(),
        packages: Vec::new(),
        build_packages: Vec::new(),
        downloads: Vec::new(),
        pip: Vec::new(),
    };
    if let Some(apt) = &r.apt {
        let mut lower = LowerFs::default();
        lower
            .advance(cache, &base.layers)
            .map_err(LockError::Base)?;
        let code = codename(&lower);
        let mut sources = base_sources(&lower);
        sources.extend(recipe_sources(loaded, code.as_deref())?);
        let arch = deb_arch(&r.image.platform);
        let mut u = Universe::new(&arch);
        for (i, s) in sources.iter().enumerate() {
            let snap = repo::fetch(&client, cache, s, i, &mut u, reporter)?;
            lock.sources.push(LockedSource {
                name: s.name.clone(),
                uri: redact(&s.uri),
                suite: s.suite.clone(),
                inrelease: snap.inrelease,
                date: snap.date,
            });
        }
        let status = lower
            .read(b"var/lib/dpkg/status")
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_default();
        let installed = universe::installed(&status)
            .map_err(|e| LockError::Resolve(format!("base image dpkg status: {e}")))?;
        reporter.report(Event::Stage("resolving apt packages"));
        let req = Request {
            packages: apt.packages.clone(),
            minbase: apt.bootstrap.is_some(),
            recommends: apt.install_recommends,
            upgrade: apt.upgrade,
        };
        let (picked, manual) =
            resolve::resolve_marked(&u, &installed, &req).map_err(|e| LockError::Resolve(e.0))?;
        let locked = |p: &universe::Package,
                      manual: &std::collections::BTreeSet<String>|
         -> Result<LockedPackage, LockError> {
            let repo = p.repo.map(|i| &sources[i]);
            let sha256 = Digest::parse(&format!("sha256:{}", p.sha256)).map_err(|_| {
                LockError::Resolve(format!(
                    "package {} {} has no SHA256 in its index",
                    p.name, p.version
                ))
            })?;
            Ok(LockedPackage {
                name: p.name.clone(),
                version: p.version.to_string(),
                arch: p.arch.clone(),
                source: p.source_name().to_string(),
                repo: repo.map(|s| s.name.clone()).unwrap_or_default(),
                url: repo.map(|s| s.file_url(&p.filename)).unwrap_or_default(),
                size: p.size,
                sha256,
                auto: !manual.contains(&p.name),
            })
        };
        for p in &picked {
            lock.packages.push(locked(p, &manual)?);
        }
        // Build packages: the image's request and theirs resolved together (so they agree on
        // every shared package); what that adds is installed for the runs only.
        if !apt.build_packages.is_empty() {
            let both = Request {
                packages: apt
                    .packages
                    .iter()
                    .chain(&apt.build_packages)
                    .cloned()
                    .collect(),
                ..req
            };
            let (all, manual) = resolve::resolve_marked(&u, &installed, &both)
                .map_err(|e| LockError::Resolve(format!("build packages: {}", e.0)))?;
            for p in &all {
                match lock
                    .packages
                    .iter()
                    .find(|l| l.name == p.name && l.arch == p.arch)
                {
                    Some(l) if l.version == p.version.to_string() => {}
                    Some(l) => {
                        return Err(LockError::Resolve(format!(
                            "build packages need {} {}, the image has {}: add it to packages",
                            p.name, p.version, l.version
                        )));
                    }
                    None => lock.build_packages.push(locked(p, &manual)?),
                }
            }
        }
    }
    for d in r.download.iter().filter(|d| d.sha256.is_none()) {
        let Ok(url) = expand_platform(&d.url, &r.image.platform) else {
            continue;
        };
        let sha256 = pin(&client, cache, &url, reporter)?;
        // Trust on first use, unless the file is signed: then only what its signer signed.
        if let Some(check) = signature_check(loaded, d) {
            verify_signature(&client, &check, &url, &cache.blob_path(&sha256))?;
        }
        lock.downloads.push(LockedDownload { url, sha256 });
    }
    Ok(lock)
}

/// Downloads `url` into the cache and returns its sha256 (trust on first use, recorded).
fn pin(
    client: &reqwest::blocking::Client,
    cache: &Cache,
    url: &str,
    reporter: &dyn Reporter,
) -> Result<Digest, LockError> {
    let shown = redact(url);
    let mut resp = crate::http::get(client, url)?;
    reporter.report(Event::TransferStart {
        dir: Dir::Down,
        url: &shown,
        total: resp.content_length(),
    });
    let mut w = cache.blob_writer()?;
    let n = std::io::copy(&mut resp, &mut w).map_err(|source| CacheError::Io {
        action: "download",
        path: PathBuf::from(&shown),
        source,
    })?;
    let (digest, _) = w.commit(None)?;
    reporter.report(Event::TransferDone {
        dir: Dir::Down,
        url: &shown,
        bytes: n,
    });
    Ok(digest)
}

/// Reads pip's `--report` JSON: what it would install, with URLs and sha256s.
pub fn parse_pip_report(json: &str) -> Result<Vec<LockedPip>, PipReportError> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("pip report is not JSON: {e}"))?;
    let mut out = Vec::new();
    for item in v["install"]
        .as_array()
        .ok_or("pip report has no `install` list")?
    {
        let name = item["metadata"]["name"]
            .as_str()
            .ok_or("pip report: no name")?;
        let version = item["metadata"]["version"]
            .as_str()
            .ok_or("pip report: no version")?;
        let url = item["download_info"]["url"]
            .as_str()
            .ok_or_else(|| format!("pip report: {name} has no download URL"))?;
        let info = &item["download_info"]["archive_info"];
        let sha = info["hashes"]["sha256"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                info["hash"]
                    .as_str()
                    .and_then(|h| h.strip_prefix("sha256="))
                    .map(str::to_string)
            })
            .ok_or_else(|| format!("pip report: {name} has no sha256"))?;
        out.push(LockedPip {
            name: name.to_string(),
            version: version.to_string(),
            url: url.to_string(),
            sha256: Digest::parse(&format!("sha256:{sha}")).map_err(|e| e.to_string())?,
        });
    }
    out.sort_by_key(|p| p.name.to_lowercase());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pip settings that change what pip is asked are part of a lock's inputs; a recipe
    /// without them keeps the digest it had before they existed.
    #[test]
    fn pip_settings_are_lock_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let digest = |pip: &str| {
            let p = dir.path().join("r.toml");
            std::fs::write(
                &p,
                format!("[image]\nname = \"r\"\n[pip]\npackages = [\"x\"]\n{pip}"),
            )
            .unwrap();
            let loaded = crate::recipe::load(&p, &[]).unwrap();
            inputs(&loaded, &BaseImage::default()).unwrap()
        };
        let plain = digest("");
        assert_eq!(plain, digest("upgrade_pip = false\n"));
        let upgrade = digest("upgrade_pip = true\n");
        let index = digest("index_url = \"https://pypi.internal/simple\"\n");
        assert_ne!(plain, upgrade);
        assert_ne!(plain, index);
        assert_ne!(upgrade, index);
    }

    #[test]
    fn pip_report() {
        let r = parse_pip_report(r#"{"version":"1","install":[
            {"metadata":{"name":"b","version":"2"},"download_info":{"url":"http://x/b.whl","archive_info":{"hash":"sha256=0000000000000000000000000000000000000000000000000000000000000000"}}},
            {"metadata":{"name":"A","version":"1"},"download_info":{"url":"http://x/a.whl","archive_info":{"hashes":{"sha256":"1111111111111111111111111111111111111111111111111111111111111111"}}}}]}"#).unwrap();
        assert_eq!(r[0].name, "A");
        assert_eq!(r[1].url, "http://x/b.whl");
        assert!(parse_pip_report("{}").is_err());
    }

    #[test]
    fn arch_names() {
        assert_eq!(deb_arch("linux/amd64"), "amd64");
        assert_eq!(deb_arch("linux/arm64/v8"), "arm64");
        assert_eq!(deb_arch("linux/arm/v7"), "armhf");
    }
}
