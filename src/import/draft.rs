//! The recipe being assembled from a Dockerfile, and its TOML form.

use super::commands::Fragment;
use super::subst;

/// A recognized command that does not fit the recipe being drafted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DraftError(pub String);

impl From<String> for DraftError {
    fn from(m: String) -> Self {
        DraftError(m)
    }
}

impl From<&str> for DraftError {
    fn from(m: &str) -> Self {
        DraftError(m.to_string())
    }
}

fn fail<T>(m: String) -> Result<T, DraftError> {
    Err(DraftError(m))
}

#[derive(Debug, Clone, Default)]
pub struct Download {
    pub url: String,
    pub sha256: Option<String>,
    /// The file the Dockerfile downloaded to and then unpacked (and removed).
    pub unpacked_from: Option<String>,
    pub dest: Option<String>,
    pub extract: Option<String>,
    pub strip: u32,
    pub mode: Option<u32>,
}

/// A `[[directory]]`.
#[derive(Debug, Clone, Default)]
pub struct Dir {
    pub path: String,
    pub mode: Option<u32>,
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct User {
    pub name: String,
    /// A number, or `${var.X}`.
    pub uid: Option<String>,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub groups: Vec<String>,
    pub sudo: bool,
    pub system: bool,
    pub create_home: bool,
}

/// A `[[group]]`.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub name: String,
    /// A number, or `${var.X}`.
    pub gid: Option<String>,
    pub system: bool,
}

/// A `[[run]]` step as Docker would run it: as the USER then in effect, with the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub command: String,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub base: String,
    pub vars: Vec<(String, String)>,
    pub env: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    pub expose: Vec<String>,
    pub volumes: Vec<String>,
    pub stop_signal: Option<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub shell: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub packages: Vec<String>,
    /// Packages a RUN installs and later purges in the same RUN: `[apt] build_packages`.
    pub build_packages: Vec<String>,
    pub upgrade: bool,
    pub ppas: Vec<String>,
    pub downloads: Vec<Download>,
    pub pip: Vec<String>,
    pub upgrade_pip: bool,
    pub groups: Vec<Group>,
    pub users: Vec<User>,
    pub symlinks: Vec<(String, String)>,
    pub services: Vec<String>,
    pub directories: Vec<Dir>,
    /// Lines added to files (`echo ... >> PATH`): (path, content), one entry per path.
    pub appends: Vec<(String, String)>,
    pub files: Vec<(String, String)>,
    /// Directories of the build context copied whole (`COPY dir DEST`).
    pub copies: Vec<CopyDir>,
    /// A copied file's mode (when not 0644) and owner, by destination.
    pub file_attrs: std::collections::BTreeMap<String, (Option<u32>, Option<String>)>,
    pub runs: Vec<Run>,
    /// Keys fetched by the Dockerfile: image path -> URL.
    pub keys: Vec<(String, String)>,
    pub sources: Vec<Source>,
    /// Each ENV's value so far, expanded as Docker would at this point of the Dockerfile (for
    /// WORKDIR, USER...); not written out.
    pub known_env: std::collections::BTreeMap<String, String>,
    /// Directories the Dockerfile made so far (WORKDIR, `mkdir`), for COPY destinations.
    pub dirs: std::collections::BTreeSet<String>,
}

/// `COPY dir DEST`: one `[[copy]]`.
#[derive(Debug, Clone, Default)]
pub struct CopyDir {
    pub src: String,
    pub dest: String,
    pub owner: Option<String>,
    /// `--chmod`, for files and directories alike (as Docker applies it); without it the
    /// source's executable bits are kept.
    pub mode: Option<u32>,
    /// The build context's `.dockerignore` patterns that reach into `src`, as gitignore
    /// patterns relative to it.
    pub exclude: Vec<String>,
}

/// An apt source from a `deb` line; `key` is a file next to the recipe.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub name: String,
    pub uri: String,
    pub suite: String,
    pub components: Vec<String>,
    pub key: Option<String>,
}

impl Draft {
    /// `path` as a RUN in the current WORKDIR (`/` without one) names it.
    fn in_workdir(&self, path: String) -> String {
        if path.starts_with('/') || path.starts_with('$') {
            return path;
        }
        let dir = self.workdir.as_deref().unwrap_or("/").trim_end_matches('/');
        format!("{dir}/{}", path.trim_start_matches("./"))
    }

    /// Whether `path` (absolute, no trailing `/`) is a directory at this point of the
    /// Dockerfile: one it made, or the parent of a file it copied or downloaded.
    pub fn is_dir(&self, path: &str) -> bool {
        let under = |p: &str| {
            p.strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
        };
        self.dirs.iter().any(|d| d == path || under(d))
            || self.files.iter().any(|(_, dest)| under(dest))
            || self
                .copies
                .iter()
                .any(|c| c.dest.trim_end_matches('/') == path || under(&c.dest))
            || self.downloads.iter().any(|d| {
                d.extract.as_deref() == Some(path)
                    || d.extract.as_deref().is_some_and(under)
                    || d.dest.as_deref().is_some_and(under)
            })
    }

    /// Whether the recipe writes anything under the directory `path`.
    fn has_content(&self, path: &str) -> bool {
        let inside = |p: &str| p.strip_prefix(path).is_some_and(|r| r.starts_with('/'));
        self.directories.iter().any(|d| inside(&d.path))
            || self.files.iter().any(|(_, d)| inside(d))
            || self
                .copies
                .iter()
                .any(|c| c.dest.trim_end_matches('/') == path || inside(&c.dest))
            || self.downloads.iter().any(|d| {
                d.extract.as_deref() == Some(path)
                    || d.dest
                        .as_deref()
                        .or(d.extract.as_deref())
                        .is_some_and(inside)
            })
    }

    /// Appends `command` as a `[[run]]` step in the Dockerfile's current USER and WORKDIR
    /// (Docker makes the WORKDIR if it is missing).
    pub fn push_run(&mut self, command: String) {
        let command = match &self.workdir {
            Some(w) if w != "/" => {
                // A `$` is left for the shell (a base image's variable): double quotes.
                let w = if w.contains('$') {
                    format!("\"{w}\"")
                } else {
                    crate::tool::sh_quote(w)
                };
                format!("mkdir -p {w} && cd {w} || exit 1\n{command}")
            }
            _ => command,
        };
        let user = self
            .user
            .clone()
            .filter(|u| u != "root" && u != "0" && u != "0:0");
        self.runs.push(Run { command, user });
    }

    /// Adds what `f` declares; `Err` (with why) when it cannot be placed, such as a `chmod`
    /// of a path no download writes.
    pub fn apply(&mut self, f: Fragment, args: &[(String, String)]) -> Result<(), DraftError> {
        match f {
            Fragment::Drop(_) | Fragment::Unknown => {}
            // Only purges of this RUN's build packages get here (see run_shell): they are
            // never in the image.
            Fragment::AptPurge(_) => {}
            Fragment::Key { url, dest } => self.keys.push((dest, url)),
            Fragment::SourceLine { line, file } => {
                let name = file
                    .rsplit('/')
                    .next()
                    .unwrap_or(&file)
                    .trim_end_matches(".list")
                    .to_string();
                let src = self.deb_line(&name, &line)?;
                self.sources.push(src);
            }
            Fragment::AptInstall(p) => {
                for p in p {
                    if !self.packages.contains(&p) {
                        self.packages.push(p);
                    }
                }
            }
            Fragment::AptUpgrade => self.upgrade = true,
            Fragment::Ppa(p) => {
                if !self.ppas.contains(&p) {
                    self.ppas.push(p);
                }
            }
            // A RUN's relative paths are relative to the WORKDIR it runs in.
            Fragment::Download { url, .. } | Fragment::Extract { url, .. }
                if !(url.starts_with("http") || subst(&url, args).starts_with("${var.")) =>
            {
                return fail(format!(
                    "download from {url}, which no build argument names"
                ));
            }
            Fragment::Checksum { sha256, file } => {
                let file = self.in_workdir(subst(&file, args));
                match self
                    .downloads
                    .iter_mut()
                    .find(|d| d.dest.as_deref() == Some(file.as_str()))
                {
                    Some(d) => d.sha256 = Some(subst(&sha256, args)),
                    None => return fail(format!("checksum of {file}, which no download writes")),
                }
            }
            Fragment::ExtractFile { file, dir, strip } => {
                let file = self.in_workdir(subst(&file, args));
                let dir = match dir {
                    Some(d) => self.in_workdir(subst(&d, args)),
                    None => self.workdir.clone().unwrap_or_else(|| "/".into()),
                };
                match self
                    .downloads
                    .iter_mut()
                    .find(|d| d.dest.as_deref() == Some(file.as_str()))
                {
                    Some(d) => {
                        d.dest = None;
                        d.extract = Some(dir);
                        d.strip = strip;
                        d.unpacked_from = Some(file);
                    }
                    None => return fail(format!("tar of {file}, which no download writes")),
                }
            }
            // Only the archive a download wrote and an unpack consumed (see run_shell).
            Fragment::Remove(paths) => {
                for p in paths {
                    let p = self.in_workdir(subst(&p, args));
                    if !self
                        .downloads
                        .iter()
                        .any(|d| d.unpacked_from.as_deref() == Some(p.as_str()))
                    {
                        return fail(format!("rm of {p}"));
                    }
                }
            }
            Fragment::Download { url, dest } => {
                let dest = self.in_workdir(subst(&dest, args));
                self.downloads.push(Download {
                    url: subst(&url, args),
                    dest: Some(dest),
                    ..Default::default()
                })
            }
            Fragment::Extract { url, dir, strip } => {
                let dir = self.in_workdir(subst(&dir, args));
                self.downloads.push(Download {
                    url: subst(&url, args),
                    extract: Some(dir),
                    strip,
                    ..Default::default()
                })
            }
            Fragment::Symlink { target, path } => {
                let path = self.in_workdir(subst(&path, args));
                self.symlinks.push((path, subst(&target, args)))
            }
            Fragment::User {
                name,
                shell,
                groups,
                uid,
                home,
                system,
                create_home,
                primary,
            } => {
                let name = subst(&name, args);
                // A primary group is what [[user]] gives: the group of the user's name, when
                // the Dockerfile made it just before.
                if let Some(p) = primary.map(|p| subst(&p, args)) {
                    let own = self.groups.iter().find(|g| g.name == name);
                    let same = own.is_some_and(|g| p == g.name || g.gid.as_ref() == Some(&p));
                    if !same {
                        return fail(format!(
                            "useradd -g {p}: a primary group other than a group named {name} made before it"
                        ));
                    }
                }
                self.users.push(User {
                    name,
                    uid: uid.map(|u| subst(&u, args)),
                    home: home.map(|h| subst(&h, args)),
                    shell,
                    groups,
                    sudo: false,
                    system,
                    create_home,
                })
            }
            Fragment::Group { name, gid, system } => {
                // [[group]]s are made before [[user]]s: a group added after a user without a
                // gid would get another id than groupadd gives it there.
                if gid.is_none() && !self.users.is_empty() {
                    return fail(format!("groupadd {name} after a useradd, without a gid"));
                }
                self.groups.push(Group {
                    name: subst(&name, args),
                    gid: gid.map(|g| subst(&g, args)),
                    system,
                });
            }
            Fragment::AddToGroups { user, groups } => {
                let user = subst(&user, args);
                match self.users.iter_mut().find(|u| u.name == user) {
                    Some(u) => {
                        for g in groups {
                            if !u.groups.contains(&g) {
                                u.groups.push(g);
                            }
                        }
                    }
                    None => return fail(format!("usermod of {user}, who is not created here")),
                }
            }
            Fragment::Sudo { user } => {
                let user = subst(&user, args);
                match self.users.iter_mut().find(|u| u.name == user) {
                    Some(u) => u.sudo = true,
                    None => return fail(format!("sudo rule for {user}, who is not created here")),
                }
            }
            Fragment::Enable(units) => self.services.extend(units),
            Fragment::Pip {
                packages,
                upgrade_pip,
            } => {
                self.pip.extend(packages);
                self.upgrade_pip |= upgrade_pip;
            }
            Fragment::Append { path, content } => {
                let path = self.in_workdir(subst(&path, args));
                let content = subst(&content, args);
                // [[user]]s are made before [[file]]s: a line added to the account files
                // would land after users it preceded. A copied file is one entry already.
                if path.starts_with("/etc/passwd")
                    || path.starts_with("/etc/group")
                    || path.starts_with("/etc/shadow")
                    || path.starts_with("/etc/gshadow")
                    || self.files.iter().any(|(_, d)| *d == path)
                {
                    return fail(format!("a line added to {path}"));
                }
                match self.appends.iter_mut().find(|(p, _)| *p == path) {
                    Some((_, c)) => c.push_str(&content),
                    None => self.appends.push((path, content)),
                }
            }
            Fragment::Mkdir { paths, mode } => {
                for p in paths {
                    let path = self.in_workdir(subst(&p, args));
                    let path = path.trim_end_matches('/').to_string();
                    if self.directories.iter().any(|d| d.path == path) {
                        continue;
                    }
                    self.dirs.insert(path.clone());
                    self.directories.push(Dir {
                        path,
                        mode,
                        owner: None,
                    });
                }
            }
            Fragment::Chown {
                owner,
                paths,
                recursive,
            } => {
                let owner = subst(&owner, args);
                let paths: Vec<String> = paths
                    .iter()
                    .map(|p| {
                        let p = self.in_workdir(subst(p, args));
                        p.trim_end_matches('/').to_string()
                    })
                    .collect();
                // All or nothing: a command that stays a run must not have changed the draft.
                for path in &paths {
                    // `-R` over a directory made here is the directory alone while nothing
                    // the recipe writes is under it.
                    if recursive && self.has_content(path) {
                        return fail(format!("chown -R of {path}, which has content"));
                    }
                    if !self.directories.iter().any(|d| d.path == *path) {
                        return fail(format!(
                            "chown of {path}, which is not a directory made here"
                        ));
                    }
                }
                for d in &mut self.directories {
                    if paths.contains(&d.path) {
                        d.owner = Some(owner.clone());
                    }
                }
            }
            Fragment::Chmod { mode, path } => {
                let path = self.in_workdir(subst(&path, args));
                // The sudoers drop-in of a user with `sudo`: 0440 already.
                if mode == 0o440
                    && self
                        .users
                        .iter()
                        .any(|u| u.sudo && path == format!("/etc/sudoers.d/{}", u.name))
                {
                    return Ok(());
                }
                if let Some(d) = self
                    .directories
                    .iter_mut()
                    .find(|d| d.path == path.trim_end_matches('/'))
                {
                    d.mode = Some(mode);
                    return Ok(());
                }
                match self
                    .downloads
                    .iter_mut()
                    .find(|d| d.dest.as_deref() == Some(path.as_str()))
                {
                    Some(d) => d.mode = Some(mode),
                    None => return fail(format!("chmod of {path}, which no download writes")),
                }
            }
        }
        Ok(())
    }

    /// Reads `deb [opts] URI SUITE COMPONENTS...`; a `signed-by` key the Dockerfile fetched
    /// becomes `keys/NAME` next to the recipe (the report says where to get it).
    pub fn deb_line(&self, name: &str, line: &str) -> Result<Source, DraftError> {
        let line = line.replace("$(lsb_release -cs)", "${var.codename}");
        let mut rest = line
            .trim()
            .strip_prefix("deb")
            .ok_or("not a deb line")?
            .trim();
        let mut key = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let (opts, tail) = opts.split_once(']').ok_or("unclosed [ in a deb line")?;
            for o in opts.split_whitespace() {
                if let Some(k) = o.strip_prefix("signed-by=") {
                    let file = k.rsplit('/').next().unwrap_or(k);
                    key = Some(format!("keys/{file}"));
                }
            }
            rest = tail.trim();
        }
        let mut words = rest.split_whitespace();
        let uri = words.next().ok_or("no URI in a deb line")?.to_string();
        let suite = words.next().ok_or("no suite in a deb line")?;
        Ok(Source {
            name: name.to_string(),
            uri,
            suite: suite.to_string(),
            components: words.map(str::to_string).collect(),
            key,
        })
    }

    /// The release codename a base tag means, for `$(lsb_release -cs)`.
    pub fn codename(&self) -> Option<&'static str> {
        let tag = self.base.rsplit(':').next()?;
        Some(match (self.base.split(':').next()?, tag) {
            ("ubuntu", "22.04" | "jammy") => "jammy",
            ("ubuntu", "24.04" | "noble") => "noble",
            ("ubuntu", "20.04" | "focal") => "focal",
            ("debian", "12" | "bookworm") => "bookworm",
            ("debian", "11" | "bullseye") => "bullseye",
            ("debian", "13" | "trixie") => "trixie",
            _ => return None,
        })
    }

    /// The files of the build context `ctx` the recipe reads: `[[file]] src` and source
    /// keys (a key the user still has to fetch is not one).
    pub fn context_paths(&self, ctx: &std::path::Path) -> Vec<String> {
        let files = self.files.iter().map(|(src, _)| src);
        let dirs = self.copies.iter().map(|c| &c.src);
        let keys = self.sources.iter().filter_map(|s| s.key.as_ref());
        files
            .chain(dirs)
            .chain(keys)
            .filter(|p| !p.starts_with('/') && !p.contains("://") && ctx.join(p).exists())
            .cloned()
            .collect()
    }

    /// Prefixes `paths` (from [`Draft::context_paths`]) with `prefix`, for a recipe written
    /// in a directory above the build context.
    pub fn rebase_paths(&mut self, prefix: &std::path::Path, paths: &[String]) {
        let rebase = |p: &mut String| {
            if paths.contains(p) {
                *p = prefix.join(p.as_str()).to_string_lossy().into_owned();
            }
        };
        for (src, _) in &mut self.files {
            rebase(src);
        }
        for c in &mut self.copies {
            rebase(&mut c.src);
        }
        for s in &mut self.sources {
            if let Some(k) = &mut s.key {
                rebase(k);
            }
        }
    }
}
