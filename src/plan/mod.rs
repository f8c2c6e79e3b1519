//! The recipe compiler: a validated recipe becomes ordered steps, each with a cache key.
//!
//! A key is the sha256 of the canonical JSON of `{format, parent, step}`, where `step` is the
//! step's normalized definition with every input replaced by its digest (file contents,
//! download sha256s). The first parent is the root key, which covers the platform, the base
//! image's manifest digest, the layer compression and `SOURCE_DATE_EPOCH`. So a key never
//! depends on timestamps, build-machine paths or command strings, and changing one step
//! changes its key and every key after it, and none before.
//!
//! Steps come in a fixed order: apt packages (a few layers, then dpkg's database, then the
//! configure step run in a sandbox), downloads (one layer each), users and groups,
//! directories, files, symlinks, services, runs.
//!
//! Apt packages are spread over [`APT_LAYERS`] layers by a hash of their source package
//! name. Those layers do not chain to each other: each one's key covers only what comes
//! before the apt steps and its own packages, so a security update to one package rebuilds
//! one package layer (plus the small database and configure layers), not all of them.

mod apt;
mod copy;
pub mod explain;

pub use copy::PlannedCopy;

use std::path::PathBuf;

use serde_json::json;

use crate::cache::{Cache, CacheError};
use crate::canonical;
use crate::digest::Digest;
use crate::layer::CompressionSpec;
use crate::lock::{Lock, LockedPackage, LockedPip};
use crate::recipe::interp::expand_platform;
use crate::recipe::validate_archive_format;
use crate::recipe::{FieldPath, Group, Loaded, RecipeError, User};

/// Bump when the layer format, key encoding or what a step writes changes, to invalidate every
/// old key. 3: extended attributes in layers; dpkg's `info/format`, lock mode and no
/// `available`; Essential packages configured first, preinsts run from `tmp.ci`.
pub const FORMAT_VERSION: u32 = 3;

/// How many layers apt packages are spread over.
pub const APT_LAYERS: usize = 4;

/// Where a step's content comes from.
#[derive(Debug, Clone)]
pub enum FileSource {
    Inline(Vec<u8>),
    Path(PathBuf),
}

#[derive(Debug, Clone)]
pub struct PlannedFile {
    pub dest: String,
    pub source: FileSource,
    pub size: u64,
    pub digest: Digest,
    pub mode: u32,
    pub owner: Option<String>,
    pub field: FieldPath,
    /// Appended to the image's file, whose mode and owner it keeps unless given (`mode_set`,
    /// `owner`); a new file when there is none.
    pub append: bool,
    pub mode_set: bool,
}

#[derive(Debug, Clone)]
pub enum DownloadTarget {
    File {
        dest: String,
        mode: u32,
    },
    Extract {
        dir: String,
        strip_components: u32,
        format: &'static str,
    },
}

#[derive(Debug, Clone)]
pub struct PlannedDir {
    pub path: String,
    pub mode: u32,
    pub owner: Option<String>,
    pub field: FieldPath,
}

#[derive(Debug, Clone)]
pub struct PlannedDownload {
    pub url: String,
    pub sha256: Digest,
    /// Checked when the file is fetched into the cache (not part of the key: the sha256
    /// already names the content).
    pub signature: Option<crate::lock::SignatureCheck>,
    pub target: DownloadTarget,
    pub owner: Option<String>,
    pub field: FieldPath,
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Download(PlannedDownload),
    Users {
        groups: Vec<Group>,
        users: Vec<User>,
    },
    /// `[[directory]]`: (path, mode, owner, field).
    Directories(Vec<PlannedDir>),
    Files(Vec<PlannedFile>),
    /// `[[copy]]`: a directory next to the recipe.
    Copy(Box<PlannedCopy>),
    Symlinks(Vec<(String, String)>),
    Services(Vec<String>),
    /// Packages unpacked into one layer, with their dpkg `info/` files.
    AptPackages(Vec<LockedPackage>),
    /// dpkg's `status` and trigger registry for all the packages.
    DpkgDatabase(Vec<LockedPackage>),
    /// `dpkg --configure -a` in a sandbox over the assembled root; the layer is the diff.
    Configure(Vec<LockedPackage>),
    /// `pip install` of pinned, hash-checked wheels (downloaded into the cache), offline in
    /// the sandbox with the image's own python.
    Pip(Vec<LockedPip>),
    /// `[apt] build_packages`, installed with dpkg over the image for the runs after it. Its
    /// layer is not part of the image: the runs see it below them (see
    /// [`StepKind::transient`]).
    BuildPackages(Vec<LockedPackage>),
    /// A command run in the sandbox; the layer is what it changed.
    Run {
        command: String,
        /// The program and flags the command is given to (`[image] shell`, else `/bin/sh -c`).
        shell: Vec<String>,
        user: Option<String>,
        network: bool,
        /// The recipe's `[env]`, applied over the base image's for the command.
        env: Vec<(String, String)>,
    },
}

impl StepKind {
    /// Whether the step's layer stays out of the image: it is only below the steps after it
    /// while they are built.
    pub fn transient(&self) -> bool {
        matches!(self, StepKind::BuildPackages(_))
    }

    /// Whether realizing the step records its entries in the lower view itself (otherwise
    /// the view reads the step's layer back before the next step that needs it).
    pub fn records_lower(&self) -> bool {
        !matches!(
            self,
            StepKind::AptPackages(_)
                | StepKind::DpkgDatabase(_)
                | StepKind::Configure(_)
                | StepKind::Pip(_)
                | StepKind::BuildPackages(_)
                | StepKind::Run { .. }
        )
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub kind: StepKind,
    /// Human description, also the layer's `created_by` history.
    pub name: String,
    pub key: Digest,
    /// The key this one is chained to (the root key, an earlier step's key, or for the dpkg
    /// database, the digest of the package layers' keys).
    pub parent: Digest,
    /// The step's normalized definition the key hashes (see the module doc); kept so
    /// [`explain`] can say which input changed.
    pub def: serde_json::Value,
}

/// The compiled recipe.
#[derive(Debug, Clone)]
pub struct Plan {
    pub root_key: Digest,
    /// What the root key hashes: platform, base image, compression, `SOURCE_DATE_EPOCH`.
    pub root: serde_json::Value,
    pub steps: Vec<Step>,
    pub compression: CompressionSpec,
    pub mtime: u64,
    /// The recipe has `[pip]` packages but the lock pins none yet: the plan stops before the
    /// pip step (the lock pins them by running pip's resolver on the image so far).
    pub pip_unpinned: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("{field}")]
    Copy {
        field: String,
        source: crate::srctree::SrcTreeError,
    },
    #[error("cannot read {path} (for {field})")]
    Read {
        path: PathBuf,
        field: String,
        source: CacheError,
    },
}

/// The key the steps so far end on.
fn push_parent(steps: &[Step], root: &Digest) -> Digest {
    steps.last().map_or_else(|| root.clone(), |s| s.key.clone())
}

fn key(parent: &Digest, step: serde_json::Value) -> Digest {
    let doc = json!({ "format": FORMAT_VERSION, "parent": parent, "step": step });
    Digest::of(&canonical::encode(&doc))
}

/// Compiles `loaded` on top of the base with manifest digest `base` (`None`: scratch).
/// `lock` holds what the recipe resolved to (apt packages, pinned downloads); `configure`
/// is false for `--no-configure`.
pub fn compile(
    loaded: &Loaded,
    base: Option<&Digest>,
    mtime: u64,
    cache: &Cache,
    lock: Option<&Lock>,
    configure: bool,
) -> Result<Plan, PlanError> {
    let r = &loaded.recipe;
    let root = FieldPath::root();
    let compression = CompressionSpec::new(r.target.oci.compression, r.target.oci.level);
    let root_doc = json!({
        "format": FORMAT_VERSION,
        "platform": r.image.platform,
        "base": base.map(|d| d.to_string()).unwrap_or_else(|| "scratch".into()),
        "compression": compression,
        "mtime": mtime,
    });
    let root_key = Digest::of(&canonical::encode(&root_doc));
    if r.apt.is_some() && lock.is_none() && crate::lock::needed(loaded) {
        return Err(loaded
            .error_at(&root.key("apt"), "no lock: run `imgbuild lock`")
            .into());
    }
    let mut c = Compiler {
        steps: Vec::new(),
        parent: root_key.clone(),
        root_key: root_key.clone(),
    };
    let cx = Inputs {
        loaded,
        cache,
        lock,
        configure,
    };
    c.apt(&cx)?;
    c.downloads(&cx)?;
    if c.pip(&cx)? {
        return Ok(Plan {
            root_key,
            root: root_doc,
            steps: c.steps,
            compression,
            mtime,
            pip_unpinned: true,
        });
    }
    c.users(&cx)?;
    c.directories(&cx);
    c.files(&cx)?;
    c.copies(&cx)?;
    c.symlinks(&cx)?;
    c.services(&cx)?;
    c.runs(&cx)?;
    Ok(Plan {
        root_key,
        root: root_doc,
        steps: c.steps,
        compression,
        mtime,
        pip_unpinned: false,
    })
}

/// What a plan is compiled from.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    loaded: &'a Loaded,
    cache: &'a Cache,
    lock: Option<&'a Lock>,
    configure: bool,
}

/// The steps so far and the key of the last one (the next one's parent).
struct Compiler {
    steps: Vec<Step>,
    parent: Digest,
    root_key: Digest,
}

impl Compiler {
    /// Appends a step keyed by `def` under the previous step.
    fn push(&mut self, kind: StepKind, name: String, def: serde_json::Value) {
        let parent = self.parent.clone();
        self.push_under(parent, kind, name, def);
    }

    /// Appends a step keyed by `def` under `parent`; the next step chains to it.
    fn push_under(
        &mut self,
        parent: Digest,
        kind: StepKind,
        name: String,
        def: serde_json::Value,
    ) -> Digest {
        let k = key(&parent, def.clone());
        self.parent = k.clone();
        self.steps.push(Step {
            kind,
            name,
            key: k.clone(),
            parent,
            def,
        });
        k
    }

    /// `[[download]]`: one step each, keyed by the pinned sha256.
    fn downloads(&mut self, cx: &Inputs) -> Result<(), PlanError> {
        let Inputs { loaded, lock, .. } = *cx;
        let r = &loaded.recipe;
        let root = FieldPath::root();
        for (i, d) in r.download.iter().enumerate() {
            let field = root.key("download").index(i);
            let url = expand_platform(&d.url, &r.image.platform)
                .map_err(|m| loaded.error_at(&field.key("url"), m.0))?;
            let sha256 = match (&d.sha256, lock.and_then(|l| l.download(&url))) {
                (Some(sha), _) => Digest::parse(sha)
                    .map_err(|e| loaded.error_at(&field.key("sha256"), e.to_string()))?,
                (None, Some(pinned)) => pinned.clone(),
                (None, None) => {
                    return Err(loaded
                        .error_at(
                            &field.key("url"),
                            "unpinned: run `imgbuild lock` (or add `sha256`)",
                        )
                        .into());
                }
            };
            let (target, def, name) = match (&d.dest, &d.extract) {
                (Some(dest), _) => {
                    let mode = d.mode.map_or(0o644, |m| m.0);
                    let def = json!({"kind": "download", "sha256": sha256, "dest": dest, "mode": mode, "owner": d.owner});
                    (
                        DownloadTarget::File {
                            dest: dest.clone(),
                            mode,
                        },
                        def,
                        format!("download {url} -> {dest}"),
                    )
                }
                (None, Some(dir)) => {
                    let format =
                        validate_archive_format(&url, d.format.as_deref()).ok_or_else(|| {
                            loaded.error_at(&field.key("url"), "cannot tell the archive format")
                        })?;
                    let def = json!({"kind": "extract", "sha256": sha256, "dir": dir, "strip": d.strip_components, "format": format, "owner": d.owner});
                    (
                        DownloadTarget::Extract {
                            dir: dir.clone(),
                            strip_components: d.strip_components,
                            format,
                        },
                        def,
                        format!("extract {url} -> {dir}"),
                    )
                }
                (None, None) => {
                    return Err(loaded
                        .error_at(&field, "a download needs `dest` or `extract`")
                        .into());
                }
            };
            self.push(
                StepKind::Download(PlannedDownload {
                    signature: crate::lock::signature_check(loaded, d),
                    url,
                    sha256,
                    target,
                    owner: d.owner.clone(),
                    field,
                }),
                name,
                def,
            );
        }
        Ok(())
    }

    /// `[pip]`: the pinned wheels; `true` when they are not pinned yet (the plan stops here,
    /// for pip's own resolution in the image so far).
    fn pip(&mut self, cx: &Inputs) -> Result<bool, PlanError> {
        let Inputs { loaded, lock, .. } = *cx;
        let r = &loaded.recipe;
        let pins: &[LockedPip] = lock.map_or(&[], |l| &l.pip);
        let pip_wanted = r.pip.as_ref().is_some_and(|p| !p.packages.is_empty());
        if pip_wanted && pins.is_empty() {
            // Only what pip's own resolution needs: the image so far.
            return Ok(true);
        }
        if pip_wanted {
            let def = json!({
                "kind": "pip",
                "wheels": pins.iter().map(|p| json!([p.name, p.version, p.sha256])).collect::<Vec<_>>(),
            });
            let names: Vec<String> = pins
                .iter()
                .map(|p| format!("{}=={}", p.name, p.version))
                .collect();
            let shown = if names.len() > 4 {
                format!("{} and {} more", names[..4].join(" "), names.len() - 4)
            } else {
                names.join(" ")
            };
            self.push(
                StepKind::Pip(pins.to_vec()),
                format!("pip install {shown}"),
                def,
            );
        }
        Ok(false)
    }

    /// `[[group]]` and `[[user]]`: one step.
    fn users(&mut self, cx: &Inputs) -> Result<(), PlanError> {
        let Inputs { loaded, .. } = *cx;
        let r = &loaded.recipe;
        if !r.user.is_empty() || !r.group.is_empty() {
            let def = json!({
                "kind": "users",
                "groups": r.group.iter().map(|g| json!({"name": g.name, "gid": g.gid, "system": g.system})).collect::<Vec<_>>(),
                "users": r.user.iter().map(|u| json!({
                    "name": u.name, "uid": u.uid, "groups": u.groups, "shell": u.shell, "home": u.home, "sudo": u.sudo,
                    "system": u.system, "create_home": u.create_home,
                })).collect::<Vec<_>>(),
            });
            let names: Vec<&str> = r
                .group
                .iter()
                .map(|g| g.name.as_str())
                .chain(r.user.iter().map(|u| u.name.as_str()))
                .collect();
            self.push(
                StepKind::Users {
                    groups: r.group.clone(),
                    users: r.user.clone(),
                },
                format!("users {}", names.join(" ")),
                def,
            );
        }
        Ok(())
    }

    /// `[[directory]]`: one step, after the users (a directory may be theirs).
    fn directories(&mut self, cx: &Inputs) {
        let r = &cx.loaded.recipe;
        if r.directory.is_empty() {
            return;
        }
        let dirs: Vec<PlannedDir> = r
            .directory
            .iter()
            .enumerate()
            .map(|(i, d)| PlannedDir {
                path: d.path.clone(),
                mode: d.mode.map_or(0o755, |m| m.0),
                owner: d.owner.clone(),
                field: FieldPath::root().key("directory").index(i),
            })
            .collect();
        let def = json!({
            "kind": "directories",
            "dirs": dirs.iter().map(|d| json!({"path": d.path, "mode": d.mode, "owner": d.owner})).collect::<Vec<_>>(),
        });
        let name = format!(
            "directories {}",
            dirs.iter()
                .map(|d| d.path.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
        self.push(StepKind::Directories(dirs), name, def);
    }

    /// `[[file]]`: one step, keyed by content digests.
    fn files(&mut self, cx: &Inputs) -> Result<(), PlanError> {
        let Inputs { loaded, cache, .. } = *cx;
        let r = &loaded.recipe;
        let root = FieldPath::root();
        if !r.file.is_empty() {
            let mut files = Vec::new();
            for (i, f) in r.file.iter().enumerate() {
                let field = root.key("file").index(i);
                let (source, digest, size) = match (&f.content, &f.src) {
                    (Some(c), _) => (
                        FileSource::Inline(c.as_bytes().to_vec()),
                        Digest::of(c.as_bytes()),
                        c.len() as u64,
                    ),
                    (None, Some(src)) => {
                        let path = loaded.resolve(src);
                        let read_err = |source: CacheError| PlanError::Read {
                            path: path.clone(),
                            field: field.key("src").to_string(),
                            source,
                        };
                        let (digest, size) = cache.file_digest(&path).map_err(read_err)?;
                        (FileSource::Path(path), digest, size)
                    }
                    (None, None) => {
                        return Err(loaded
                            .error_at(&field, "a file needs `content` or `src`")
                            .into());
                    }
                };
                files.push(PlannedFile {
                    dest: f.dest.clone(),
                    source,
                    size,
                    digest,
                    mode: f.mode.map_or(0o644, |m| m.0),
                    owner: f.owner.clone(),
                    field,
                    append: f.append,
                    mode_set: f.mode.is_some(),
                });
            }
            let def = json!({
                "kind": "files",
                "files": files.iter().map(|f| {
                    let mut v = json!({"dest": f.dest, "sha256": f.digest, "mode": f.mode, "owner": f.owner});
                    if f.append {
                        v["append"] = json!({"mode_set": f.mode_set});
                    }
                    v
                }).collect::<Vec<_>>(),
            });
            let name = format!(
                "files {}",
                files
                    .iter()
                    .map(|f| f.dest.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            self.push(StepKind::Files(files), name, def);
        }
        Ok(())
    }

    /// `[[symlink]]`: one step.
    fn symlinks(&mut self, cx: &Inputs) -> Result<(), PlanError> {
        let Inputs { loaded, .. } = *cx;
        let r = &loaded.recipe;
        if !r.symlink.is_empty() {
            let links: Vec<(String, String)> = r
                .symlink
                .iter()
                .map(|s| (s.path.clone(), s.target.clone()))
                .collect();
            let def = json!({"kind": "symlinks", "links": links});
            let name = format!(
                "symlinks {}",
                links
                    .iter()
                    .map(|(p, t)| format!("{p} -> {t}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            self.push(StepKind::Symlinks(links), name, def);
        }
        Ok(())
    }

    /// `[services] enable`: one step.
    fn services(&mut self, cx: &Inputs) -> Result<(), PlanError> {
        let Inputs { loaded, .. } = *cx;
        let r = &loaded.recipe;
        if !r.services.enable.is_empty() {
            let units: Vec<String> = r
                .services
                .enable
                .iter()
                .map(|s| {
                    if s.contains('.') {
                        s.clone()
                    } else {
                        format!("{s}.service")
                    }
                })
                .collect();
            let def = json!({"kind": "services", "enable": units});
            self.push(
                StepKind::Services(units.clone()),
                format!("systemctl enable {}", units.join(" ")),
                def,
            );
        }
        Ok(())
    }

    /// `[[run]]`: one step each, after the build packages (when there are any).
    fn runs(&mut self, cx: &Inputs) -> Result<(), PlanError> {
        let Inputs { loaded, lock, .. } = *cx;
        let r = &loaded.recipe;
        let build: &[LockedPackage] = lock.map_or(&[], |l| &l.build_packages);
        if !build.is_empty() && !r.run.is_empty() {
            let def = json!({
                "kind": "build-packages",
                "packages": build.iter().map(|p| json!({"name": p.name, "version": p.version, "arch": p.arch, "sha256": p.sha256})).collect::<Vec<_>>(),
            });
            let asked: Vec<&str> = r
                .apt
                .iter()
                .flat_map(|a| a.build_packages.iter().map(String::as_str))
                .collect();
            self.push(
                StepKind::BuildPackages(build.to_vec()),
                format!(
                    "build packages {} (for the runs, not in the image)",
                    asked.join(" ")
                ),
                def,
            );
        }
        for run in &r.run {
            // A command is its own definition: there is nothing else to key it on. With
            // `network = true` its output can change without its key changing (like `RUN`).
            let shell = r
                .image
                .shell
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
            // A run sees the image's environment, as Docker's RUN sees the ENV set before it.
            let def = json!({"kind": "run", "command": run.command, "shell": shell, "user": run.user, "network": run.network, "env": r.env});
            let first = run.command.lines().next().unwrap_or_default();
            self.push(
                StepKind::Run {
                    command: run.command.clone(),
                    shell,
                    user: run.user.clone(),
                    network: run.network,
                    env: r.env.clone(),
                },
                format!("run {first}"),
                def,
            );
        }
        Ok(())
    }
}
