//! Semantic checks of a parsed recipe: paths, names, digests, references between fields.

mod copy;
mod targets;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::diag::{Diagnostic, FieldPath, Severity};
use super::{BaseRef, Loaded};
use crate::digest::Digest;

struct Checker<'a> {
    loaded: &'a Loaded,
    diags: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, p: &FieldPath, msg: impl Into<String>) {
        let d = self.loaded.diagnostic(Severity::Error, p, msg);
        self.diags.push(d);
    }

    fn warn(&mut self, p: &FieldPath, msg: impl Into<String>) {
        let d = self.loaded.diagnostic(Severity::Warning, p, msg);
        self.diags.push(d);
    }

    /// An absolute path inside the image, without `..`.
    fn image_path(&mut self, p: &FieldPath, v: &str) {
        if !v.starts_with('/') {
            self.error(p, format!("`{v}` must be an absolute path in the image"));
        } else if v.split('/').any(|c| c == "..") {
            self.error(p, format!("`{v}` must not contain `..`"));
        } else if v.contains('\0') {
            self.error(p, "path contains a NUL byte");
        } else if v.len() > 4096 {
            self.error(
                p,
                format!("the path is {} bytes long; Linux allows 4096", v.len()),
            );
        } else if let Some(c) = v.split('/').find(|c| c.len() > 255) {
            self.error(
                p,
                format!(
                    "the name `{}...` is {} bytes long; Linux allows 255",
                    c.chars().take(16).collect::<String>(),
                    c.len()
                ),
            );
        }
    }

    /// A path that names one entry (a file or a symlink): an image path, not the root.
    fn entry_path(&mut self, p: &FieldPath, v: &str) {
        self.image_path(p, v);
        if v.split('/').all(|c| c.is_empty() || c == ".") {
            self.error(
                p,
                "`/` is the image's root directory, not a file or symlink",
            );
        }
    }

    /// A file next to the recipe: relative, inside the recipe's directory, existing.
    fn recipe_file(&mut self, p: &FieldPath, v: &str) {
        let rel = Path::new(v);
        if rel.is_absolute() {
            self.error(
                p,
                format!("`{v}` must be relative to the recipe's directory"),
            );
            return;
        }
        if crate::fsutil::climbs_above(rel) {
            self.error(p, format!("`{v}` is outside the recipe's directory"));
            return;
        }
        let full = self.loaded.resolve(v);
        match (full.canonicalize(), self.loaded.dir.canonicalize()) {
            (Ok(f), Ok(d)) if !f.starts_with(&d) => self.error(
                p,
                format!("`{v}` resolves outside the recipe's directory (through a symlink)"),
            ),
            (Ok(f), _) if !f.is_file() => self.error(p, format!("`{v}` is not a regular file")),
            (Err(e), _) => self.error(p, format!("cannot read `{}`: {e}", full.display())),
            _ => {}
        }
    }

    /// A key file (absolute, or relative to the recipe's directory: keys often live outside
    /// the project) that `check` accepts.
    fn key_file(
        &mut self,
        p: &FieldPath,
        v: &str,
        check: impl Fn(&[u8]) -> Result<(), crate::sigstore::SigstoreError>,
    ) {
        let full = self.loaded.resolve(v);
        match crate::fsutil::read_bounded(&full, 64 << 10) {
            Err(e) => self.error(p, format!("cannot read `{}`: {e}", full.display())),
            Ok(bytes) => {
                if let Err(e) = check(&bytes) {
                    self.error(p, format!("`{}`: {e}", full.display()));
                }
            }
        }
    }

    fn name(&mut self, p: &FieldPath, v: &str, what: &str) {
        let ok = !v.is_empty()
            && v.len() <= 32
            && v.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !ok {
            self.error(
                p,
                format!("`{v}` is not a valid {what} name (lowercase letters, digits, `_`, `-`)"),
            );
        }
    }

    fn owner(&mut self, p: &FieldPath, v: &str) {
        let ok = v.split(':').count() <= 2
            && v.split(':')
                .all(|s| !s.is_empty() && !s.contains(char::is_whitespace));
        if !ok {
            self.error(
                p,
                format!("owner `{v}` must be `user`, `user:group`, or numeric `uid:gid`"),
            );
        }
    }
}

/// Why `[image] base` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BaseError(pub String);

impl From<String> for BaseError {
    fn from(m: String) -> Self {
        BaseError(m)
    }
}

impl From<&str> for BaseError {
    fn from(m: &str) -> Self {
        BaseError(m.to_string())
    }
}

fn parse_base(v: &str, dir: &Path) -> Result<BaseRef, BaseError> {
    if v == "scratch" {
        return Ok(BaseRef::Scratch);
    }
    if let Some(rest) = v.strip_prefix("oci:") {
        if rest.is_empty() {
            return Err("`oci:` needs a layout path: `oci:PATH[:TAG]`".into());
        }
        let (path, tag) = match rest.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') && !p.is_empty() => (p, Some(t.to_string())),
            _ => (rest, None),
        };
        let path = PathBuf::from(path);
        let path = if path.is_absolute() {
            path
        } else {
            dir.join(path)
        };
        return Ok(BaseRef::Layout { path, tag });
    }
    let ok = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
        && !v.starts_with(['/', ':', '@', '.', '-']);
    if ok {
        Ok(BaseRef::Registry(v.to_string()))
    } else {
        Err(BaseError(format!(
            "`{v}` is not `scratch`, `oci:PATH[:TAG]` or an image reference"
        )))
    }
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Archive format of a download: explicit `format`, else from the URL's extension.
pub fn archive_format(url: &str, format: Option<&str>) -> Option<&'static str> {
    let known = ["tar", "tar.gz", "tar.xz", "zip"];
    if let Some(f) = format {
        return known.iter().find(|k| **k == f).copied();
    }
    let path = url.split(['?', '#']).next().unwrap_or(url);
    if path.ends_with(".tar.gz") || path.ends_with(".tgz") {
        Some("tar.gz")
    } else if path.ends_with(".tar.xz") || path.ends_with(".txz") {
        Some("tar.xz")
    } else if path.ends_with(".tar") {
        Some("tar")
    } else if path.ends_with(".zip") {
        Some("zip")
    } else {
        None
    }
}

/// Why a URL with `user:password@` is refused, and where credentials go instead.
const CREDENTIALS: &str = "the URL holds credentials (`user:password@`), which would be \
    published with the image (its history, SBOM, lock and logs); remove them and put them in \
    ~/.netrc (or the file $IMGBUILD_NETRC names) as `machine HOST login USER password PASS`: \
    imgbuild sends them to that host only";

pub(super) fn validate(loaded: &Loaded) -> (BaseRef, Vec<Diagnostic>) {
    let r = &loaded.recipe;
    let mut c = Checker {
        loaded,
        diags: Vec::new(),
    };
    let base = image(&mut c, loaded);
    entries(&mut c, r);
    copy::copies(&mut c, r);
    users(&mut c, r);
    packages(&mut c, r);
    targets::targets(&mut c, r);
    (base, c.diags)
}

/// `[image]` and `[env]`; returns the parsed base.
fn image(c: &mut Checker, loaded: &Loaded) -> BaseRef {
    let r = &loaded.recipe;
    let root = FieldPath::root();
    let image = root.key("image");
    let name = &r.image.name;
    if name.is_empty()
        || !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    {
        c.error(
            &image.key("name"),
            format!(
                "`{name}` is not a valid image name (lowercase letters, digits, `.`, `_`, `-`)"
            ),
        );
    }
    let supported = ["linux/amd64", "linux/arm64"];
    if r.image.platforms.is_empty() && !supported.contains(&r.image.platform.as_str()) {
        c.error(
            &image.key("platform"),
            format!(
                "platform `{}` is not supported (linux/amd64, linux/arm64)",
                r.image.platform
            ),
        );
    }
    for (i, p) in r.image.platforms.iter().enumerate() {
        let field = image.key("platforms").index(i);
        if !supported.contains(&p.as_str()) {
            c.error(
                &field,
                format!("platform `{p}` is not supported (linux/amd64, linux/arm64)"),
            );
        } else if r.image.platforms[..i].contains(p) {
            c.error(&field, format!("`{p}` is listed twice"));
        }
    }
    // One pinned sha256 cannot match a file that differs per platform.
    if loaded.multi_platform() {
        for (i, d) in r.download.iter().enumerate() {
            let per_platform = ["${arch}", "${uname_m}"].iter().any(|v| d.url.contains(v));
            let pinned_per_arch = d.arch.values().any(|a| a.sha256.is_some());
            if per_platform && d.sha256.is_some() && !pinned_per_arch {
                c.error(
                    &root.key("download").index(i).key("sha256"),
                    "the URL differs per platform but this sha256 is one file's: give each \
                     platform its own in [download.arch.ARCH] (sha256 = ...), or leave sha256 \
                     out and let `imgbuild lock` pin each",
                );
            }
        }
    }
    // Every platform's downloads: each needs its `[download.arch]` entry and a valid URL.
    for other in loaded.platforms.iter().skip(1) {
        let view = loaded.for_platform(other);
        for (i, d) in view.recipe.download.iter().enumerate() {
            download_source(c, &root.key("download").index(i), d, other);
        }
    }
    let base = match parse_base(&r.image.base, &loaded.dir) {
        Ok(b) => b,
        Err(e) => {
            c.error(&image.key("base"), e.0);
            BaseRef::Scratch
        }
    };
    if let Some(k) = &r.image.base_key {
        let p = image.key("base_key");
        if !matches!(base, BaseRef::Registry(_)) {
            c.error(
                &p,
                "base_key checks the signature a registry holds for the base image; \
                 `oci:` and `scratch` bases have none",
            );
        } else {
            c.key_file(&p, k, |bytes| {
                crate::sigstore::PublicKey::from_pem(bytes).map(drop)
            });
        }
    }
    for (i, port) in r.image.expose.iter().enumerate() {
        let (num, proto) = port.split_once('/').unwrap_or((port.as_str(), "tcp"));
        if !matches!(num.parse::<u32>(), Ok(1..=65535)) || !matches!(proto, "tcp" | "udp" | "sctp")
        {
            c.error(
                &image.key("expose").index(i),
                format!("`{port}` is not a port: write NUMBER or NUMBER/tcp|udp|sctp (1 to 65535)"),
            );
        }
    }
    for (i, v) in r.image.volumes.iter().enumerate() {
        c.image_path(&image.key("volumes").index(i), v);
    }
    if let Some(sig) = &r.image.stop_signal {
        let name_ok = sig.strip_prefix("SIG").is_some_and(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '+')
        });
        if !name_ok && !matches!(sig.parse::<u32>(), Ok(1..=64)) {
            c.error(
                &image.key("stop_signal"),
                format!("`{sig}` is not a signal: write a name such as SIGTERM or a number"),
            );
        }
    }
    if let Some(w) = &r.image.workdir {
        c.image_path(&image.key("workdir"), w);
    }
    for (k, _) in &r.env {
        if !k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            c.error(
                &root.key("env").key(k),
                format!("`{k}` is not a valid environment variable name"),
            );
        }
    }
    base
}

/// `[[directory]]`, `[[file]]`, `[[download]]`, `[[symlink]]`: paths, sources, and no entry
/// under another.
fn entries(c: &mut Checker, r: &super::Recipe) {
    let root = FieldPath::root();
    let mut dests: BTreeSet<String> = BTreeSet::new();
    // Every file or symlink the recipe makes, to find one made under another.
    let mut leaves: Vec<(String, FieldPath)> = Vec::new();
    let mut claim = |c: &mut Checker, p: &FieldPath, dest: &str| {
        let norm: String = dest
            .split('/')
            .filter(|x| !x.is_empty() && *x != ".")
            .collect::<Vec<_>>()
            .join("/");
        leaves.push((norm, p.clone()));
        if !dests.insert(dest.trim_end_matches('/').to_string()) {
            c.error(p, format!("`{dest}` is written by more than one entry"));
        }
    };

    let mut dirs: Vec<(String, FieldPath)> = Vec::new();
    for (i, d) in r.directory.iter().enumerate() {
        let p = root.key("directory").index(i);
        c.entry_path(&p.key("path"), &d.path);
        let norm: String = d
            .path
            .split('/')
            .filter(|x| !x.is_empty() && *x != ".")
            .collect::<Vec<_>>()
            .join("/");
        if dirs.iter().any(|(n, _)| *n == norm) {
            c.error(&p.key("path"), format!("`{}` is declared twice", d.path));
        }
        dirs.push((norm, p.key("path")));
        if let Some(o) = &d.owner {
            c.owner(&p.key("owner"), o);
        }
    }

    for (i, f) in r.file.iter().enumerate() {
        let p = root.key("file").index(i);
        c.entry_path(&p.key("dest"), &f.dest);
        claim(c, &p.key("dest"), &f.dest);
        match (&f.content, &f.src) {
            (Some(_), Some(_)) => {
                c.error(&p.key("src"), "give either `content` or `src`, not both")
            }
            (None, None) => c.error(&p, "a file needs `content` or `src`"),
            (None, Some(src)) => c.recipe_file(&p.key("src"), src),
            _ => {}
        }
        if let Some(o) = &f.owner {
            c.owner(&p.key("owner"), o);
        }
    }

    for (i, d) in r.download.iter().enumerate() {
        let p = root.key("download").index(i);
        download_source(c, &p, d, &r.image.platform);
        match (&d.dest, &d.extract) {
            (Some(_), Some(_)) => c.error(
                &p.key("extract"),
                "give either `dest` or `extract`, not both",
            ),
            (None, None) => c.error(
                &p,
                "a download needs `dest` (a file) or `extract` (a directory)",
            ),
            (Some(dest), None) => {
                c.entry_path(&p.key("dest"), dest);
                claim(c, &p.key("dest"), dest);
                if d.strip_components > 0 {
                    c.error(
                        &p.key("strip_components"),
                        "`strip_components` applies only to `extract`",
                    );
                }
            }
            (None, Some(dir)) => {
                c.image_path(&p.key("extract"), dir);
                if d.mode.is_some() {
                    c.error(
                        &p.key("mode"),
                        "`mode` applies only to `dest`; archive entries keep their own modes",
                    );
                }
                if archive_format(&d.url, d.format.as_deref()).is_none() {
                    let field = if d.format.is_some() { "format" } else { "url" };
                    c.error(&p.key(field), "cannot tell the archive format: set `format` to tar, tar.gz, tar.xz or zip");
                }
            }
        }
        if let Some(o) = &d.owner {
            c.owner(&p.key("owner"), o);
        }
    }

    for (i, s) in r.symlink.iter().enumerate() {
        let p = root.key("symlink").index(i);
        c.entry_path(&p.key("path"), &s.path);
        claim(c, &p.key("path"), &s.path);
        if s.target.is_empty() {
            c.error(&p.key("target"), "symlink target is empty");
        }
    }
    // A file or symlink cannot also be a directory of another entry (`/etc/a` and `/etc/a/b`):
    // the layer would hold both and tools would reject or silently white one out.
    let mut under: Vec<(String, FieldPath)> = leaves.clone();
    for (dir, dp) in &dirs {
        if let Some((_, lp)) = leaves.iter().find(|(l, _)| l == dir) {
            c.error(
                dp,
                format!("`/{dir}` is a directory here and a file or symlink at `{lp}`"),
            );
        }
        under.push((dir.clone(), dp.clone()));
    }
    for (i, d) in r.download.iter().enumerate() {
        if let Some(dir) = &d.extract {
            let norm: String = dir
                .split('/')
                .filter(|x| !x.is_empty() && *x != ".")
                .collect::<Vec<_>>()
                .join("/");
            under.push((norm, root.key("download").index(i).key("extract")));
        }
    }
    for (leaf, lp) in &leaves {
        if leaf.is_empty() {
            continue;
        }
        let prefix = format!("{leaf}/");
        for (other, op) in &under {
            if other.starts_with(&prefix) {
                c.error(
                    op,
                    format!("`/{other}` is under `/{leaf}`, which `{lp}` makes a file or symlink"),
                );
            }
        }
    }
}

/// A download's URL (platform variables, scheme, no credentials) and its sha256.
fn download_source(c: &mut Checker, p: &FieldPath, d: &super::Download, platform: &str) {
    match (&d.signature, &d.signature_key) {
        (Some(sig), Some(key)) => {
            c.recipe_file(&p.key("signature_key"), key);
            match super::interp::expand_platform(sig, platform) {
                Err(e) => c.error(&p.key("signature"), e.0),
                Ok(u) if !(u.starts_with("http://") || u.starts_with("https://")) => c.error(
                    &p.key("signature"),
                    format!("`{u}` must be an http:// or https:// URL"),
                ),
                Ok(_) => {}
            }
            if d.signer.is_none() {
                c.warn(
                    &p.key("signature_key"),
                    "no `signer`: any key in the file may have signed; pin one by its fingerprint",
                );
            }
        }
        (Some(_), None) => c.error(
            &p.key("signature"),
            "a signature needs `signature_key`, the signer's public key file",
        ),
        (None, Some(_)) => c.error(
            &p.key("signature_key"),
            "`signature_key` without `signature` (the signature's URL)",
        ),
        (None, None) if d.signer.is_some() => {
            c.error(&p.key("signer"), "`signer` without `signature`")
        }
        (None, None) => {}
    }
    if let Some(f) = &d.signer {
        let n = crate::openpgp::normalize_fingerprint(f);
        if !(n.len() == 40 || n.len() == 64) || !n.chars().all(|c| c.is_ascii_hexdigit()) {
            c.error(
                &p.key("signer"),
                format!("`{f}` is not an OpenPGP fingerprint (40 or 64 hex digits)"),
            );
        }
    }
    if !d.arch.is_empty() {
        let vars = super::interp::platform_vars(platform);
        let arch = vars.get("arch").map(String::as_str).unwrap_or_default();
        if !d.arch.contains_key(arch) {
            let have: Vec<&str> = d.arch.keys().map(String::as_str).collect();
            c.error(
                &p.key("arch"),
                format!(
                    "no entry for {arch} (the platform is {platform}); there are: {}",
                    have.join(", ")
                ),
            );
        }
    }
    match super::interp::expand_platform(&d.url, platform) {
        Err(e) => c.error(&p.key("url"), e.0),
        Ok(u) if crate::http::has_userinfo(&u) => c.error(&p.key("url"), CREDENTIALS),
        Ok(u) if !(u.starts_with("http://") || u.starts_with("https://")) => c.error(
            &p.key("url"),
            format!("`{u}` must be an http:// or https:// URL"),
        ),
        Ok(_) => {}
    }
    match &d.sha256 {
        Some(s) => {
            if let Err(e) = Digest::parse(s) {
                c.error(&p.key("sha256"), e.to_string());
            }
        }
        None => c.warn(
            &p.key("url"),
            "download has no sha256: it is unpinned; run `imgbuild lock` to pin it",
        ),
    }
}

/// `[[group]]`, `[[user]]`, `[services]`.
fn users(c: &mut Checker, r: &super::Recipe) {
    let root = FieldPath::root();
    let mut groups = BTreeSet::new();
    for (i, g) in r.group.iter().enumerate() {
        let p = root.key("group").index(i);
        c.name(&p.key("name"), &g.name, "group");
        if !groups.insert(g.name.clone()) {
            c.error(
                &p.key("name"),
                format!("group `{}` is declared twice", g.name),
            );
        }
    }
    let mut users = BTreeSet::new();
    for (i, u) in r.user.iter().enumerate() {
        let p = root.key("user").index(i);
        c.name(&p.key("name"), &u.name, "user");
        if !users.insert(u.name.clone()) {
            c.error(
                &p.key("name"),
                format!("user `{}` is declared twice", u.name),
            );
        }
        if let Some(s) = &u.shell {
            c.image_path(&p.key("shell"), s);
        }
        if let Some(h) = &u.home {
            c.image_path(&p.key("home"), h);
        }
        if let Some(s) = &u.sudo
            && s != "nopasswd"
        {
            c.error(
                &p.key("sudo"),
                format!("sudo = `{s}` is not supported (only \"nopasswd\")"),
            );
        }
        for (j, g) in u.groups.iter().enumerate() {
            c.name(&p.key("groups").index(j), g, "group");
        }
    }

    for (i, s) in r.services.enable.iter().enumerate() {
        if s.is_empty() || s.contains('/') {
            c.error(
                &root.key("services").key("enable").index(i),
                format!("`{s}` is not a systemd unit name"),
            );
        }
    }
}

/// `[apt]`, `[pip]`, `[[run]]`.
fn packages(c: &mut Checker, r: &super::Recipe) {
    let root = FieldPath::root();
    if let Some(apt) = &r.apt {
        let p = root.key("apt");
        if apt
            .ppa_base
            .as_deref()
            .is_some_and(crate::http::has_userinfo)
        {
            c.error(&p.key("ppa_base"), CREDENTIALS);
        }
        for (i, s) in apt.sources.iter().enumerate() {
            let sp = p.key("sources").index(i);
            if let Some(ppa) = s.uri.strip_prefix("ppa:") {
                if ppa.split('/').count() != 2 || ppa.split('/').any(str::is_empty) {
                    c.error(
                        &sp.key("uri"),
                        format!("`{}` is not `ppa:OWNER/NAME`", s.uri),
                    );
                }
                if apt.ppa_base.is_none() {
                    c.warn(
                        &sp.key("uri"),
                        "a `ppa:` source needs `[apt] ppa_base` (the PPA archive's URL) to be locked",
                    );
                }
            } else if crate::http::has_userinfo(&s.uri) {
                c.error(&sp.key("uri"), CREDENTIALS);
            } else {
                if !(s.uri.starts_with("http://") || s.uri.starts_with("https://")) {
                    c.error(
                        &sp.key("uri"),
                        format!("`{}` must be an http(s) URL or `ppa:OWNER/NAME`", s.uri),
                    );
                }
                if s.suite.is_none() {
                    c.error(&sp, "an apt source needs `suite`");
                }
            }
            match &s.key {
                Some(k) => c.recipe_file(&sp.key("key"), k),
                None => c.warn(
                    &sp,
                    "no `key`: its InRelease cannot be verified, so `lock` will refuse it",
                ),
            }
        }
        if !apt.build_packages.is_empty() && r.run.is_empty() {
            c.warn(
                &p.key("build_packages"),
                "build packages are installed for the [[run]] steps only, and there are none",
            );
        }
        let named = apt
            .packages
            .iter()
            .enumerate()
            .map(|(i, n)| (p.key("packages").index(i), n))
            .chain(
                apt.build_packages
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (p.key("build_packages").index(i), n)),
            );
        for (field, pkg) in named {
            let name = pkg.split(['=', ':']).next().unwrap_or("");
            let ok = name.len() >= 2
                && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if !ok {
                c.error(&field, format!("`{pkg}` is not a Debian package name"));
            }
        }
        if let Some(b) = &apt.bootstrap
            && b != "minbase"
        {
            c.error(
                &p.key("bootstrap"),
                format!("bootstrap `{b}` is not supported (only \"minbase\")"),
            );
        }
    }
    if let Some(pip) = &r.pip {
        if let Some(u) = &pip.index_url {
            let p = root.key("pip").key("index_url");
            if crate::http::has_userinfo(u) {
                c.error(
                    &p,
                    "the index URL holds credentials (`user:password@`), which would be \
                     published with the image (the lock names the files' URLs) and pip would \
                     log them; an index that needs a login is not supported",
                );
            } else if !(u.starts_with("http://") || u.starts_with("https://")) {
                c.error(&p, format!("`{u}` must be an http:// or https:// URL"));
            }
        }
        for (i, pkg) in pip.packages.iter().enumerate() {
            if pkg.trim().is_empty() {
                c.error(
                    &root.key("pip").key("packages").index(i),
                    "empty pip requirement",
                );
            }
        }
    }
    for (i, run) in r.run.iter().enumerate() {
        if run.command.trim().is_empty() {
            c.error(&root.key("run").index(i).key("command"), "empty command");
        }
    }
}
