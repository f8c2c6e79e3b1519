//! Realization: each planned step becomes one layer, from the cache when its key hits, or
//! built (no daemon, no root) from its inputs. Downloads of the steps that miss are fetched
//! first, in parallel.

pub mod apt;
mod chrootless;
pub mod emulation;
mod extract;
mod live;
mod run;
pub mod sandbox;
mod services;
pub mod tree;
mod users;

use std::collections::BTreeMap;
use std::io;

pub use crate::http::{HttpError as DownloadError, redact};
pub use extract::ExtractError;
pub use live::LiveRoot;
pub use run::pip_report;

use self::tree::{NodeKind, Tree};
use crate::base::BaseImage;
use crate::cache::{Cache, CacheError, LayerRecord};
use crate::digest::Digest;
use crate::layer::{LayerWriter, Meta};
use crate::lower::LowerFs;
use crate::plan::{DownloadTarget, FileSource, Plan, PlannedDownload, Step, StepKind};
use crate::recipe::{FieldPath, Loaded, RecipeError};
use crate::report::{Event, Reporter};

/// How many files (downloads, .debs, wheels) are fetched at once: enough to keep a link busy
/// through per-request latency, few enough not to be throttled as a crawler by a mirror.
const PARALLEL_FETCHES: usize = 6;

/// What a step produced.
#[derive(Debug, Clone)]
pub struct LayerOutcome {
    pub name: String,
    pub key: Digest,
    pub record: LayerRecord,
    pub hit: bool,
    /// Why a missed step was built ([`crate::plan::explain`]; filled in by the build).
    pub why: Vec<crate::plan::explain::Reason>,
}

#[derive(Debug, thiserror::Error)]
pub enum RealizeError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Emulation(#[from] emulation::EmulationError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot write the layer of step `{step}`")]
    Layer { step: String, source: io::Error },
    #[error("cannot read the layers below step `{step}`")]
    Lower { step: String, source: io::Error },
    #[error("cannot create an HTTP client")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    Deb(#[from] crate::apt::deb::DebError),
    #[error("cannot write dpkg's database: {0}")]
    Dpkg(#[from] crate::apt::dpkg::StatusError),
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error(transparent)]
    Chrootless(#[from] chrootless::ChrootlessError),
    /// A download whose signature does not check out.
    #[error(transparent)]
    Signature(#[from] crate::lock::LockError),
}

/// Realizes every step of `plan` on top of `base`. `live` is the build's root (see
/// [`LiveRoot`]): what an earlier realization left there is used when it fits, and this one
/// leaves its root there for what comes next (pip's resolution, the next realization).
pub fn realize(
    loaded: &Loaded,
    plan: &Plan,
    base: &BaseImage,
    cache: &Cache,
    live: &mut LiveRoot,
    reporter: &dyn Reporter,
) -> Result<Vec<LayerOutcome>, RealizeError> {
    let hits = cache_hits(plan, cache, reporter);
    prefetch_missing(plan, &hits, cache, reporter)?;
    let mut r = Realizer {
        loaded,
        plan,
        base,
        cache,
        reporter,
        first_apt: plan
            .steps
            .iter()
            .position(|s| matches!(s.kind, StepKind::AptPackages(_))),
        apt_todo: plan
            .steps
            .iter()
            .zip(&hits)
            .enumerate()
            .filter(|(_, (s, h))| h.is_none() && matches!(s.kind, StepKind::AptPackages(_)))
            .map(|(i, _)| i)
            .collect(),
        apt_lower: None,
        apt_built: BTreeMap::new(),
        lower: LowerFs::default(),
        layers: base.layers.clone(),
        below_runs: base.layers.clone(),
        live: std::mem::take(live),
    };
    // `[[file]] append` reads the image's file.
    for s in &plan.steps {
        if let StepKind::Files(files) = &s.kind {
            for f in files.iter().filter(|f| f.append) {
                r.lower.keep(&f.dest);
            }
        }
    }
    // A step to build that runs the image's programs needs them to run here: natively, or
    // under emulation for another platform (checked before the first step, not midway).
    if plan
        .steps
        .iter()
        .zip(&hits)
        .any(|(s, h)| h.is_none() && runs_programs(&s.kind))
    {
        emulation::require(&loaded.recipe.image.platform)?;
    }
    let mut out = Vec::new();
    let total = plan.steps.len();
    for (index, (step, hit)) in plan.steps.iter().zip(hits).enumerate() {
        reporter.report(Event::StepStart {
            index,
            total,
            name: &step.name,
        });
        let (record, was_hit) = match hit {
            Some(rec) => (rec, true),
            None => {
                let rec = r.build(index, step)?;
                cache.put_key(&step.key, &rec)?;
                (rec, false)
            }
        };
        reporter.report(Event::StepDone {
            index,
            name: &step.name,
            hit: was_hit,
            digest: &record.digest,
            size: record.size,
        });
        r.below_runs.push(record.clone());
        // A transient layer (build packages) is below the later steps' sandboxes only.
        if step.kind.transient() {
            continue;
        }
        r.layers.push(record.clone());
        if !was_hit && step.kind.records_lower() && r.lower.scanned() + 1 == r.layers.len() {
            r.lower.mark_scanned(r.layers.len());
        }
        out.push(LayerOutcome {
            name: step.name.clone(),
            key: step.key.clone(),
            record,
            hit: was_hit,
            why: Vec::new(),
        });
    }
    *live = std::mem::take(&mut r.live);
    Ok(out)
}

/// Each step's cached layer, if its key is known and its blob still verifies.
fn cache_hits(plan: &Plan, cache: &Cache, reporter: &dyn Reporter) -> Vec<Option<LayerRecord>> {
    plan.steps
        .iter()
        .map(|s| {
            let rec = cache.get_key(&s.key)?;
            match cache.check_blob(&rec.digest) {
                Ok(_) => Some(rec),
                Err(e) => {
                    reporter.report(Event::Warning(&format!(
                        "{e}; rebuilding step `{}`",
                        s.name
                    )));
                    cache.remove_key(&s.key);
                    None
                }
            }
        })
        .collect()
}

/// What the steps to build fetch (downloads, .debs, pinned wheels), fetched in one parallel
/// batch before any is built: the network stays busy across kinds instead of one kind after
/// another, and wheels no longer wait for the pip step. The .debs of package layers to build
/// are left to [`package_layers`], which builds while they arrive. This is where every file
/// a step reads from the cache is checked (its stamp, or hashed; a wrong one is fetched
/// again): the steps then use them as they are.
fn prefetch_missing(
    plan: &Plan,
    hits: &[Option<LayerRecord>],
    cache: &Cache,
    reporter: &dyn Reporter,
) -> Result<(), RealizeError> {
    let todo = || plan.steps.iter().zip(hits).filter(|(_, h)| h.is_none());
    let downloads: Vec<&PlannedDownload> = todo()
        .filter_map(|(s, _)| match &s.kind {
            StepKind::Download(d) => Some(d),
            _ => None,
        })
        .collect();
    let mut items: Vec<(&str, &crate::digest::Digest)> = downloads
        .iter()
        .map(|d| (d.url.as_str(), &d.sha256))
        .collect();
    let layered: std::collections::HashSet<&crate::digest::Digest> = todo()
        .filter_map(|(s, _)| match &s.kind {
            StepKind::AptPackages(p) => Some(p.iter().map(|p| &p.sha256)),
            _ => None,
        })
        .flatten()
        .collect();
    for (s, _) in todo() {
        match &s.kind {
            StepKind::DpkgDatabase(p) | StepKind::BuildPackages(p) => items.extend(
                p.iter()
                    .filter(|p| !layered.contains(&p.sha256))
                    .map(|p| (p.url.as_str(), &p.sha256)),
            ),
            StepKind::Pip(pins) => items.extend(pins.iter().map(|p| (p.url.as_str(), &p.sha256))),
            _ => {}
        }
    }
    crate::http::fetch_all(cache, &items, PARALLEL_FETCHES, reporter)?;
    // A signed download is checked once it is in the cache, before any step uses it.
    if downloads.iter().any(|d| d.signature.is_some()) {
        let client = crate::http::client().map_err(|source| {
            RealizeError::from(crate::http::HttpError::Http {
                url: "(client)".into(),
                source,
            })
        })?;
        for d in &downloads {
            if let Some(check) = &d.signature {
                crate::lock::verify_signature(&client, check, &d.url, &cache.blob_path(&d.sha256))?;
            }
        }
    }
    Ok(())
}

/// The state of a realize run: the layers so far, the view below them, and the package
/// layers (built together, each seeing only what is below the first of them, so each one's
/// content depends on its own packages alone).
struct Realizer<'a> {
    loaded: &'a Loaded,
    plan: &'a Plan,
    base: &'a BaseImage,
    cache: &'a Cache,
    reporter: &'a dyn Reporter,
    first_apt: Option<usize>,
    apt_todo: Vec<usize>,
    apt_lower: Option<LowerFs>,
    apt_built: BTreeMap<usize, LayerRecord>,
    lower: LowerFs,
    /// The image's layers so far.
    layers: Vec<LayerRecord>,
    /// Every layer so far, in step order, with those not in the image (build packages): what
    /// the steps that run programs run on.
    below_runs: Vec<LayerRecord>,
    live: live::LiveRoot,
}

impl Realizer<'_> {
    /// The view of the image below the package layers (read once).
    fn apt_view(&mut self, index: usize, step: &Step) -> Result<&LowerFs, RealizeError> {
        if self.apt_lower.is_none() {
            let below = self.base.layers.len() + self.first_apt.unwrap_or(index);
            let mut v = LowerFs::default();
            v.advance(self.cache, &self.layers[..below])
                .map_err(|source| RealizeError::Lower {
                    step: step.name.clone(),
                    source,
                })?;
            self.apt_lower = Some(v);
        }
        Ok(self.apt_lower.get_or_insert_with(LowerFs::default))
    }

    /// Builds step `index`'s layer.
    fn build(&mut self, index: usize, step: &Step) -> Result<LayerRecord, RealizeError> {
        let (plan, cache, reporter) = (self.plan, self.cache, self.reporter);
        Ok(match &step.kind {
            StepKind::AptPackages(_) => {
                if self.apt_built.is_empty() && self.apt_lower.is_none() {
                    let todo = self.apt_todo.clone();
                    let view = self.apt_view(index, step)?;
                    let built = package_layers(plan, &todo, view, cache, reporter)?;
                    self.apt_built = built;
                }
                self.apt_built
                    .remove(&index)
                    .ok_or_else(|| RealizeError::Layer {
                        step: step.name.clone(),
                        source: io::Error::other("package layer was not built"),
                    })?
            }
            StepKind::Configure(pkgs) => {
                let n = plan
                    .steps
                    .iter()
                    .filter(|s| matches!(s.kind, StepKind::AptPackages(_)))
                    .count();
                let start = self.base.layers.len() + self.first_apt.unwrap_or(index);
                run::configure(
                    plan,
                    step,
                    pkgs,
                    cache,
                    &mut self.live,
                    &self.below_runs,
                    start..start + n,
                )?
            }
            StepKind::Pip(pins) => {
                run::pip(plan, step, pins, cache, &mut self.live, &self.below_runs)?
            }
            StepKind::Run {
                command,
                shell,
                user,
                network,
                env,
            } => {
                let base_env = self
                    .base
                    .config
                    .as_ref()
                    .and_then(|c| c.config().as_ref())
                    .and_then(|c| c.env().clone())
                    .unwrap_or_default();
                let env = crate::recipe::interp::merged_env(&base_env, env);
                let how = run::How {
                    shell,
                    user: user.as_deref(),
                    network: *network,
                    env: &env,
                };
                run::command(
                    plan,
                    step,
                    command,
                    &how,
                    cache,
                    &mut self.live,
                    &self.below_runs,
                )?
            }
            StepKind::BuildPackages(pkgs) => {
                run::build_packages(plan, step, pkgs, cache, &mut self.live, &self.below_runs)?
            }
            StepKind::DpkgDatabase(pkgs) => {
                // Only the base's dpkg files are read: the view below the package layers has
                // them, without scanning the package layers.
                let native = crate::lock::deb_arch(&self.loaded.recipe.image.platform);
                let view = self.apt_view(index, step)?;
                let mut w = LayerWriter::new(cache, plan.compression, plan.mtime)?;
                apt::database(&mut w, view, cache, pkgs, &native)?;
                w.finish(step.name.clone())?
            }
            _ => {
                // After a step that ran programs the view is behind; the root they ran on
                // holds the image so far, and is read instead of the layers.
                if self.lower.scanned() < self.layers.len()
                    && let Some(root) = self.live.holding(&self.layers)
                {
                    self.lower
                        .load_root(root)
                        .map_err(|source| RealizeError::Lower {
                            step: step.name.clone(),
                            source,
                        })?;
                    self.lower.mark_scanned(self.layers.len());
                }
                self.lower
                    .advance(cache, &self.layers)
                    .map_err(|source| RealizeError::Lower {
                        step: step.name.clone(),
                        source,
                    })?;
                build_step(self.loaded, plan, step, cache, &mut self.lower)?
            }
        })
    }
}

/// Builds the package layers of steps `todo`, several at once: each one's .deb decompression
/// (xz is single-threaded) overlaps another's compression. Their .debs are fetched meanwhile,
/// the layers' first packages first (one from each layer in turn), and each layer takes its
/// packages as they arrive.
fn package_layers(
    plan: &Plan,
    todo: &[usize],
    view: &LowerFs,
    cache: &Cache,
    reporter: &dyn Reporter,
) -> Result<BTreeMap<usize, LayerRecord>, RealizeError> {
    let lists: Vec<&[crate::lock::LockedPackage]> = todo
        .iter()
        .filter_map(|i| match &plan.steps[*i].kind {
            StepKind::AptPackages(pkgs) => Some(pkgs.as_slice()),
            _ => None,
        })
        .collect();
    let longest = lists.iter().map(|l| l.len()).max().unwrap_or(0);
    let debs: Vec<(&str, &crate::digest::Digest)> = (0..longest)
        .flat_map(|k| lists.iter().filter_map(move |l| l.get(k)))
        .map(|p| (p.url.as_str(), &p.sha256))
        .collect();
    let arrivals = apt::Arrivals::default();
    let done = std::sync::Mutex::new(BTreeMap::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (fetched, built) = std::thread::scope(|s| {
        let fetcher = s.spawn(|| {
            let r = crate::http::fetch_each(cache, &debs, PARALLEL_FETCHES, reporter, &|d| {
                arrivals.arrived(d)
            });
            if r.is_err() {
                arrivals.failed();
            }
            r
        });
        let built = crate::parallel::try_for_each(todo, workers, |i| -> Result<(), RealizeError> {
            let step = &plan.steps[*i];
            let StepKind::AptPackages(pkgs) = &step.kind else {
                return Ok(());
            };
            let mut w = LayerWriter::new(cache, plan.compression, plan.mtime)?;
            apt::packages(&mut w, view, cache, pkgs, &arrivals)?;
            let rec = w.finish(step.name.clone())?;
            if let Ok(mut d) = done.lock() {
                d.insert(*i, rec);
            }
            Ok(())
        });
        // A layer that failed leaves the rest of the .debs to arrive: they are cached for
        // the next build.
        let fetched = fetcher
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (fetched, built)
    });
    // The download's own error is the cause when both failed.
    fetched?;
    built?;
    Ok(done.into_inner().unwrap_or_default())
}

fn owner(
    loaded: &Loaded,
    lower: &LowerFs,
    owner: Option<&str>,
    field: &FieldPath,
) -> Result<(u64, u64), RecipeError> {
    match owner {
        None => Ok((0, 0)),
        Some(o) => {
            users::resolve_owner(lower, o).map_err(|m| loaded.error_at(&field.key("owner"), m.0))
        }
    }
}

/// `[[file]] append`: the path it writes (the image's file, through its symlinks), the image's
/// contents followed by the recipe's bytes, and the existing file's metadata if there is one.
fn appended(
    lower: &LowerFs,
    f: &crate::plan::PlannedFile,
) -> io::Result<(String, Vec<u8>, Option<Meta>)> {
    let path = crate::lower::norm(f.dest.as_bytes());
    let resolved = lower.resolve(&path);
    let (mut bytes, kept) = match lower.get(&resolved) {
        Some(e) if e.kind == crate::lower::Kind::File => match lower.read(&path) {
            Some(d) => (d.to_vec(), Some(e.meta)),
            None => {
                return Err(io::Error::other(format!(
                    "cannot append to /{}: its contents are not at hand (larger than 32 MiB, or \
                     `dest` names it through a symlink: give its real path)",
                    String::from_utf8_lossy(&resolved)
                )));
            }
        },
        Some(_) => {
            return Err(io::Error::other(format!(
                "cannot append to /{}: it is not a regular file",
                String::from_utf8_lossy(&resolved)
            )));
        }
        None => (Vec::new(), None),
    };
    match &f.source {
        FileSource::Inline(b) => bytes.extend_from_slice(b.as_slice()),
        FileSource::Path(p) => bytes.extend(std::fs::read(p)?),
    }
    // `>>` writes through a symlink to the file it names.
    let dest = format!("/{}", String::from_utf8_lossy(&resolved));
    Ok((dest, bytes, kept))
}

fn build_step(
    loaded: &Loaded,
    plan: &Plan,
    step: &Step,
    cache: &Cache,
    lower: &mut LowerFs,
) -> Result<LayerRecord, RealizeError> {
    let layer_err = |source| RealizeError::Layer {
        step: step.name.clone(),
        source,
    };
    let mut w = LayerWriter::new(cache, plan.compression, plan.mtime)?;
    let tree = match &step.kind {
        StepKind::Download(d) => {
            let (uid, gid) = owner(loaded, lower, d.owner.as_deref(), &d.field)?;
            let blob = cache.blob_path(&d.sha256);
            match &d.target {
                DownloadTarget::File { dest, mode } => {
                    let size = std::fs::metadata(&blob).map_err(layer_err)?.len();
                    let mut t = Tree::default();
                    let kind = NodeKind::File {
                        source: FileSource::Path(blob),
                        size,
                    };
                    t.add(
                        lower,
                        dest,
                        kind,
                        Meta {
                            mode: *mode,
                            uid,
                            gid,
                        },
                    );
                    Some(t)
                }
                DownloadTarget::Extract {
                    dir,
                    strip_components,
                    format,
                } => {
                    let url = redact(&d.url);
                    extract::Extractor::new(
                        &mut w,
                        lower,
                        &url,
                        dir,
                        *strip_components,
                        (uid, gid),
                    )
                    .run(&blob, format)?;
                    None
                }
            }
        }
        StepKind::Users { groups, users: us } => Some(
            users::build(lower, groups, us).map_err(|e| loaded.error_at(&e.field, e.message))?,
        ),
        StepKind::Directories(dirs) => {
            let mut t = Tree::default();
            for d in dirs {
                let (uid, gid) = owner(loaded, lower, d.owner.as_deref(), &d.field)?;
                // `mkdir -p` then `chown`: the parents it makes are root's.
                let p = crate::lower::norm(d.path.as_bytes());
                let parent = p
                    .iter()
                    .rposition(|b| *b == b'/')
                    .map_or(&p[..0], |i| &p[..i]);
                t.parents(lower, &lower.resolve(parent), Meta::DIR);
                t.add(
                    lower,
                    &d.path,
                    NodeKind::Dir,
                    Meta {
                        mode: d.mode,
                        uid,
                        gid,
                    },
                );
            }
            Some(t)
        }
        StepKind::Files(files) => {
            let mut t = Tree::default();
            for f in files {
                let (uid, gid) = owner(loaded, lower, f.owner.as_deref(), &f.field)?;
                let mut meta = Meta {
                    mode: f.mode,
                    uid,
                    gid,
                };
                let mut dest = f.dest.clone();
                let kind = if f.append {
                    let (resolved, bytes, kept) = appended(lower, f).map_err(layer_err)?;
                    dest = resolved;
                    if let Some(k) = kept {
                        meta.mode = if f.mode_set { f.mode } else { k.mode };
                        if f.owner.is_none() {
                            (meta.uid, meta.gid) = (k.uid, k.gid);
                        }
                    }
                    NodeKind::File {
                        size: bytes.len() as u64,
                        source: FileSource::Inline(bytes),
                    }
                } else {
                    NodeKind::File {
                        source: f.source.clone(),
                        size: f.size,
                    }
                };
                t.add(lower, &dest, kind, meta);
            }
            Some(t)
        }
        StepKind::Copy(cp) => Some(copy_tree(loaded, lower, cp)?),
        StepKind::Symlinks(links) => {
            let mut t = Tree::default();
            for (path, target) in links {
                t.add(
                    lower,
                    path,
                    NodeKind::Symlink(target.clone().into_bytes()),
                    Meta::LINK,
                );
            }
            Some(t)
        }
        StepKind::Services(units) => {
            let field = FieldPath::root().key("services").key("enable");
            Some(services::build(lower, units).map_err(|m| loaded.error_at(&field, m.0))?)
        }
        StepKind::DpkgDatabase(_)
        | StepKind::BuildPackages(_)
        | StepKind::AptPackages(_)
        | StepKind::Configure(_)
        | StepKind::Pip(_)
        | StepKind::Run { .. } => None,
    };
    if let Some(t) = tree {
        t.write(&mut w, lower).map_err(layer_err)?;
    }
    Ok(w.finish(step.name.clone())?)
}

/// A `[[copy]]` step's entries: the destination (resolved through the image's symlinks once)
/// and the listed directory under it, with the entry's owner and modes.
fn copy_tree(
    loaded: &Loaded,
    lower: &LowerFs,
    cp: &crate::plan::PlannedCopy,
) -> Result<Tree, RealizeError> {
    use crate::srctree::Kind as K;
    use std::os::unix::ffi::OsStrExt;
    let (uid, gid) = owner(loaded, lower, cp.owner.as_deref(), &cp.field.key("owner"))?;
    let dir = Meta {
        mode: cp.dir_mode,
        uid,
        gid,
    };
    let mut t = Tree::default();
    let top = if cp.dest.split('/').all(|c| c.is_empty() || c == ".") {
        Vec::new()
    } else {
        t.add(lower, &cp.dest, NodeKind::Dir, dir)
    };
    for e in &cp.listing.entries {
        let mut path = top.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&e.rel);
        let (kind, meta) = match &e.kind {
            K::Dir => (NodeKind::Dir, dir),
            K::File { size, digest } => (
                NodeKind::Checked {
                    path: cp.listing.root.join(std::ffi::OsStr::from_bytes(&e.rel)),
                    size: *size,
                    digest: digest.clone(),
                },
                Meta {
                    mode: cp.file_mode(e.exec),
                    uid,
                    gid,
                },
            ),
            K::Symlink(target) => (
                NodeKind::Symlink(target.clone()),
                Meta {
                    uid,
                    gid,
                    ..Meta::LINK
                },
            ),
        };
        t.insert_resolved(path, kind, meta);
    }
    Ok(t)
}

/// Steps that run the image's own programs (in the sandbox).
fn runs_programs(kind: &StepKind) -> bool {
    matches!(
        kind,
        StepKind::Configure(_)
            | StepKind::Pip(_)
            | StepKind::BuildPackages(_)
            | StepKind::Run { .. }
    )
}

/// Whether a build of `recipe` runs the image's own programs (package scripts, pip,
/// `[[run]]`): what needs emulation for another platform.
pub fn recipe_runs_programs(recipe: &crate::recipe::Recipe) -> bool {
    recipe.apt.as_ref().is_some_and(|a| {
        !a.packages.is_empty() || !a.build_packages.is_empty() || a.bootstrap.is_some()
    }) || recipe.pip.as_ref().is_some_and(|p| !p.packages.is_empty())
        || !recipe.run.is_empty()
}
