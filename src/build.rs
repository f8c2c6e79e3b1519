//! The build pipeline, end to end: recipe -> base -> plan -> realize -> OCI image layout.
//!
//! ```no_run
//! use imgbuild::{build, cache::Cache, recipe, report::Silent};
//! let loaded = recipe::load("recipes/hello.toml".as_ref(), &[]).unwrap();
//! let cache = Cache::open(&Cache::default_root()).unwrap();
//! let out = build::build(&loaded, &cache, "out/hello".as_ref(), 0, &Default::default(), &Silent).unwrap();
//! println!("{}", out.manifest);
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::base::{self, BaseError, BaseImage};
use crate::cache::{Cache, LayerRecord};
use crate::digest::Digest;
use crate::lock::{self, Lock, LockError};
use crate::oci::image::{self, RuntimeSpec};
use crate::oci::layout::{Desc, Layout};
use crate::oci::{MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, OciError};
/// Why a step misses the cache.
pub use crate::plan::explain;
use crate::plan::{self, Plan, PlanError};
/// The build's one materialized root, carried from the lock's pip resolution into the steps.
pub use crate::realize::LiveRoot;
use crate::realize::{self, LayerOutcome, RealizeError};
/// Running another platform's programs under emulation, and which recipes need it.
pub use crate::realize::{emulation, recipe_runs_programs};
use crate::recipe::{BaseRef, FieldPath, Loaded, RecipeError};
use crate::registry::{self, ClientOptions, Reference, RegistryError};
use crate::report::{Event, Reporter};
use crate::sbom;

/// The SPDX document of the image, next to its layout's `index.json`.
pub const SBOM_FILE: &str = "sbom.spdx.json";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error(transparent)]
    Realize(#[from] RealizeError),
    #[error("cannot pull the base image {reference}")]
    Pull {
        reference: String,
        source: RegistryError,
    },
    #[error("cannot write the image layout {path}")]
    Output { path: PathBuf, source: OciError },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{path} {why}: run `imgbuild lock` (or build without --locked)")]
    Locked { path: PathBuf, why: &'static str },
}

/// How to build.
#[derive(Debug, Clone)]
pub struct Options {
    pub client: ClientOptions,
    /// Use only the lock file: fail if it is missing or does not answer the recipe.
    pub locked: bool,
    /// Run `dpkg --configure -a` after unpacking packages (`--no-configure` turns it off).
    pub configure: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            client: ClientOptions::default(),
            locked: false,
            configure: true,
        }
    }
}

impl BuildError {
    /// The recipe diagnostic inside this error, if it is one (bad input: exit code 2).
    pub fn recipe(&self) -> Option<&RecipeError> {
        match self {
            BuildError::Recipe(r)
            | BuildError::Plan(PlanError::Recipe(r))
            | BuildError::Realize(RealizeError::Recipe(r))
            | BuildError::Lock(LockError::Recipe(r)) => Some(r),
            _ => None,
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// What the tags point at: the image manifest, or the image index of a multi-platform
    /// build.
    pub manifest: Digest,
    pub manifest_size: u64,
    /// `MEDIA_TYPE_MANIFEST` or `MEDIA_TYPE_INDEX`.
    pub media_type: String,
    /// The first platform's config (and base layers and lock, below); `platforms` has each.
    pub config: Digest,
    pub base_layers: Vec<LayerRecord>,
    pub layers: Vec<LayerOutcome>,
    pub tags: Vec<String>,
    pub out: PathBuf,
    /// What the build resolved to (apt packages, pinned downloads), when it needed a lock.
    pub lock: Option<Lock>,
    /// Each platform's image.
    pub platforms: Vec<PlatformOutput>,
}

/// One platform's image of a build.
#[derive(Debug, Clone)]
pub struct PlatformOutput {
    pub platform: String,
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<LayerOutcome>,
    pub lock: Option<Lock>,
}

/// Resolves the base (pulling it if it is a registry reference) and compiles the plan.
pub fn prepare(
    loaded: &Loaded,
    cache: &Cache,
    mtime: u64,
    opts: &Options,
    live: &mut LiveRoot,
    reporter: &dyn Reporter,
) -> Result<(BaseImage, Plan, Option<Lock>), BuildError> {
    let base = resolve_base(loaded, cache, &opts.client, reporter)?;
    let lock = obtain_lock(loaded, &base, cache, mtime, opts, live, reporter)?;
    let plan = plan::compile(
        loaded,
        base.digest.as_ref(),
        mtime,
        cache,
        lock.as_ref(),
        opts.configure,
    )?;
    // A plan that stops before `[pip]` is only for pip's own resolution (`resolve_lock`):
    // building it would silently drop every later step.
    if plan.pip_unpinned {
        return Err(BuildError::Locked {
            path: loaded.lock_path.clone(),
            why: "has no pins for `[pip]` packages",
        });
    }
    Ok((base, plan, lock))
}

/// The lock the build uses: the recipe's lock file when it answers the recipe; otherwise
/// (unless `locked`) a fresh resolution, written to the lock file as cargo does.
pub fn obtain_lock(
    loaded: &Loaded,
    base: &BaseImage,
    cache: &Cache,
    mtime: u64,
    opts: &Options,
    live: &mut LiveRoot,
    reporter: &dyn Reporter,
) -> Result<Option<Lock>, BuildError> {
    let locked = opts.locked;
    if !lock::needed(loaded) {
        return Ok(None);
    }
    let path = loaded.lock_path.clone();
    let existing = lock::read_for(loaded)?;
    let inputs = lock::inputs(loaded, base)?;
    match existing {
        Some(l) if l.inputs == inputs => return Ok(Some(l)),
        Some(_) if locked => {
            return Err(BuildError::Locked {
                path,
                why: "does not match the recipe and its base image any more",
            });
        }
        None if locked => {
            return Err(BuildError::Locked {
                path,
                why: "does not exist",
            });
        }
        _ => {}
    }
    let fresh = resolve_lock(loaded, base, cache, mtime, opts.configure, live, reporter)?;
    lock::write_for(loaded, &fresh)?;
    reporter.report(Event::Stage(&format!("wrote {}", path.display())));
    Ok(Some(fresh))
}

/// A fresh lock: apt packages resolved and downloads pinned ([`lock::resolve`]), then `[pip]`
/// packages pinned by running the image's own pip resolver over the image built so far (on
/// `live`, which the build then carries on with).
pub fn resolve_lock(
    loaded: &Loaded,
    base: &BaseImage,
    cache: &Cache,
    mtime: u64,
    configure: bool,
    live: &mut LiveRoot,
    reporter: &dyn Reporter,
) -> Result<Lock, BuildError> {
    let mut fresh = lock::resolve(loaded, base, cache, reporter)?;
    let Some(pip) = loaded
        .recipe
        .pip
        .as_ref()
        .filter(|p| !p.packages.is_empty())
    else {
        return Ok(fresh);
    };
    let plan = plan::compile(
        loaded,
        base.digest.as_ref(),
        mtime,
        cache,
        Some(&fresh),
        configure,
    )?;
    let outcomes = realize::realize(loaded, &plan, base, cache, live, reporter)?;
    let layers: Vec<LayerRecord> = base
        .layers
        .iter()
        .cloned()
        .chain(outcomes.into_iter().map(|o| o.record))
        .collect();
    reporter.report(Event::Stage("resolving pip packages with the image's pip"));
    let report = realize::pip_report(
        cache,
        live,
        &layers,
        &pip_requests(pip),
        pip.index_url.as_deref(),
        mtime,
    )?;
    fresh.pip = lock::parse_pip_report(&report).map_err(|e| LockError::Resolve(e.0))?;
    Ok(fresh)
}

/// What pip is asked to resolve: the recipe's packages, and pip itself first with
/// `upgrade_pip` (so the newest pip is pinned in the lock and installed with the rest).
fn pip_requests(pip: &crate::recipe::Pip) -> Vec<String> {
    let mut out = pip.packages.clone();
    let names_pip = |p: &String| {
        let name: String = p
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .collect();
        name.eq_ignore_ascii_case("pip")
    };
    if pip.upgrade_pip && !out.iter().any(names_pip) {
        out.insert(0, "pip".into());
    }
    out
}

/// Resolves the base image, pulling it if it is a registry reference.
pub fn resolve_base(
    loaded: &Loaded,
    cache: &Cache,
    opts: &ClientOptions,
    reporter: &dyn Reporter,
) -> Result<BaseImage, BuildError> {
    let base = match &loaded.base {
        BaseRef::Registry(r) => {
            let field = FieldPath::root().key("image").key("base");
            let reference =
                Reference::parse(r).map_err(|e| loaded.error_at(&field, e.to_string()))?;
            let key = match &loaded.recipe.image.base_key {
                None => None,
                Some(k) => {
                    let field = FieldPath::root().key("image").key("base_key");
                    let bytes = crate::fsutil::read_bounded(&loaded.resolve(k), 64 << 10)
                        .map_err(|e| loaded.error_at(&field, e.to_string()))?;
                    Some(
                        crate::sigstore::PublicKey::from_pem(&bytes)
                            .map_err(|e| loaded.error_at(&field, e.to_string()))?,
                    )
                }
            };
            registry::pull::pull(
                &reference,
                &loaded.recipe.image.platform,
                key.as_ref(),
                cache,
                opts,
                reporter,
            )
            .map_err(|source| BuildError::Pull {
                reference: r.clone(),
                source,
            })?
        }
        other => base::resolve(other, &loaded.recipe.image.platform, cache)?,
    };
    Ok(base)
}

/// Builds `loaded` into an OCI image layout at `out`. `mtime` is `SOURCE_DATE_EPOCH`. A
/// recipe with several platforms builds one image per platform, one after the other, and tags
/// an image index listing them.
pub fn build(
    loaded: &Loaded,
    cache: &Cache,
    out: &Path,
    mtime: u64,
    opts: &Options,
    reporter: &dyn Reporter,
) -> Result<BuildOutput, BuildError> {
    let output_err = |source| BuildError::Output {
        path: out.to_path_buf(),
        source,
    };
    // Every platform built first (layers into the cache); the layout is touched only then,
    // so a failed build leaves the previous layout (or none) as it was.
    let mut realized = Vec::new();
    for view in loaded.per_platform() {
        if loaded.multi_platform() {
            reporter.report(Event::Stage(&format!(
                "building for {}",
                view.recipe.image.platform
            )));
        }
        let r = realize_image(&view, cache, mtime, opts, reporter)?;
        realized.push((view, r));
    }
    let layout = Layout::create(out).map_err(output_err)?;
    let mut keep = BTreeSet::new();
    let mut images = Vec::new();
    for (view, (base, layers, lock)) in realized {
        images.push(image_output(
            &view, cache, &layout, mtime, base, layers, lock, &mut keep, reporter,
        )?);
    }
    reporter.report(Event::Stage("writing image layout"));
    let r = &loaded.recipe;
    let (top, media_type) = if let [one] = images.as_slice() {
        (one.manifest.clone(), MEDIA_TYPE_MANIFEST)
    } else {
        let manifests: Vec<Desc> = images
            .iter()
            .map(|i| {
                let mut d = i.manifest.clone();
                d.platform = Some(image::platform(&i.platform));
                d
            })
            .collect();
        let index = crate::oci::layout::Index {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_INDEX.into()),
            manifests,
        };
        let d = layout
            .put_json(MEDIA_TYPE_INDEX, &index)
            .map_err(output_err)?;
        keep.insert(d.digest.clone());
        (d, MEDIA_TYPE_INDEX)
    };
    layout
        .finish(&top, &r.target.oci.tags, &keep)
        .map_err(output_err)?;

    // What the build used and what the images hold, next to the layout: the lock and the SPDX
    // documents (one per platform, `sbom.OS-ARCH.spdx.json`, when there are several).
    let mut sections = lock::Sections {
        version: lock::LOCK_VERSION,
        ..Default::default()
    };
    let mut written = BTreeSet::new();
    for i in &images {
        let name = if images.len() == 1 {
            SBOM_FILE.to_string()
        } else {
            sbom_file(&i.platform)
        };
        write_file(
            &out.join(&name),
            &serde_json::to_vec_pretty(&i.sbom).unwrap_or_default(),
        )?;
        written.insert(name);
        if let Some(l) = &i.lock {
            sections.platform.insert(i.platform.clone(), l.clone());
        }
    }
    let lock_file = out.join("imgbuild.lock");
    match images.as_slice() {
        [one] => match &one.lock {
            Some(l) => lock::write(&lock_file, l)?,
            None => remove_stale(&lock_file),
        },
        _ if !sections.platform.is_empty() => lock::write_sections(&lock_file, &sections)?,
        _ => remove_stale(&lock_file),
    }
    // SBOMs an earlier build of this layout wrote for other platforms would be pushed with it.
    if let Ok(entries) = std::fs::read_dir(out) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("sbom.") && name.ends_with(".spdx.json") && !written.contains(&name)
            {
                remove_stale(&e.path());
            }
        }
    }
    let first = &images[0];
    Ok(BuildOutput {
        manifest: top.digest,
        manifest_size: top.size,
        media_type: media_type.into(),
        config: first.config.clone(),
        base_layers: first.base_layers.clone(),
        layers: images.iter().flat_map(|i| i.layers.clone()).collect(),
        tags: r.target.oci.tags.clone(),
        out: out.to_path_buf(),
        lock: first.lock.clone(),
        platforms: images
            .into_iter()
            .map(|i| PlatformOutput {
                platform: i.platform,
                manifest: i.manifest.digest,
                config: i.config,
                layers: i.layers,
                lock: i.lock,
            })
            .collect(),
    })
}

/// Removes what an earlier build left in the layout directory and this one does not write.
fn remove_stale(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// The SBOM file of one platform's image in a multi-platform layout.
pub fn sbom_file(platform: &str) -> String {
    format!("sbom.{}.spdx.json", platform.replace('/', "-"))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    crate::fsutil::write_atomic(path, bytes).map_err(|source| BuildError::Output {
        path: path.to_path_buf(),
        source: OciError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        },
    })
}

/// One platform's image, written into the layout (not tagged yet).
struct PlatformImage {
    platform: String,
    manifest: Desc,
    config: Digest,
    base_layers: Vec<LayerRecord>,
    layers: Vec<LayerOutcome>,
    lock: Option<Lock>,
    sbom: serde_json::Value,
}

/// One platform's steps, realized into the cache: its base, its layers, its lock.
fn realize_image(
    loaded: &Loaded,
    cache: &Cache,
    mtime: u64,
    opts: &Options,
    reporter: &dyn Reporter,
) -> Result<(BaseImage, Vec<LayerOutcome>, Option<Lock>), BuildError> {
    reporter.report(Event::Stage("resolving base image"));
    // One root for the whole build: pip's resolution (when the lock is made) and the steps.
    let mut live = LiveRoot::default();
    let (base, plan, lock) = prepare(loaded, cache, mtime, opts, &mut live, reporter)?;
    // Why each step will be built, against the last build of this recipe here (before this
    // build replaces that record).
    let id = plan_record_id(loaded);
    let why = explain_plan(loaded, cache, &plan);
    let mut layers = realize::realize(loaded, &plan, &base, cache, &mut live, reporter)?;
    drop(live);
    // By key: a transient step (build packages) has no layer in the image.
    let mut why: std::collections::BTreeMap<Digest, Vec<explain::Reason>> =
        plan.steps.iter().map(|s| s.key.clone()).zip(why).collect();
    for layer in layers.iter_mut() {
        if !layer.hit {
            let step_why = why.remove(&layer.key).unwrap_or_default();
            layer.why = if step_why.is_empty() {
                // Its key was there when planned; its layer was not (removed since).
                vec![explain::Reason::Evicted]
            } else {
                step_why
            };
        }
    }
    if let Ok(bytes) = serde_json::to_vec(&explain::record(&plan)) {
        // Only for explaining the next build's misses: a failure to record loses nothing.
        if let Err(e) = cache.put_plan_record(&id, &bytes) {
            reporter.report(Event::Warning(&format!("cannot record the plan: {e}")));
        }
    }
    Ok((base, layers, lock))
}

/// Where the plan of this recipe (and variant) for this platform is recorded in the cache.
fn plan_record_id(loaded: &Loaded) -> Digest {
    let path = std::fs::canonicalize(&loaded.path).unwrap_or_else(|_| loaded.path.clone());
    let platform = &loaded.recipe.image.platform;
    let id = if loaded.variant.is_empty() {
        platform.clone()
    } else {
        format!("{platform} {}", loaded.variant)
    };
    explain::record_id(&path, &id)
}

/// Why each step of `plan` would be built (one list per step; empty for a cache hit), against
/// the last build of this recipe and platform in `cache`.
pub fn explain_plan(loaded: &Loaded, cache: &Cache, plan: &Plan) -> Vec<Vec<explain::Reason>> {
    let prev = cache
        .plan_record(&plan_record_id(loaded))
        .and_then(|b| explain::parse_record(&b));
    explain::explain(
        prev.as_ref(),
        plan,
        |k| cache.has_key(k),
        |d| cache.tree_listing(d),
    )
}

/// One platform's image written into the layout (config, manifest, blobs) and its SBOM.
#[allow(clippy::too_many_arguments)]
fn image_output(
    loaded: &Loaded,
    cache: &Cache,
    layout: &Layout,
    mtime: u64,
    base: BaseImage,
    layers: Vec<LayerOutcome>,
    lock: Option<Lock>,
    keep: &mut BTreeSet<Digest>,
    reporter: &dyn Reporter,
) -> Result<PlatformImage, BuildError> {
    let (manifest, config) = write_image(loaded, cache, layout, mtime, &base, &layers, keep)
        .map_err(|source| BuildError::Output {
            path: layout.root().to_path_buf(),
            source,
        })?;
    let sbom = sbom::document(
        &loaded.recipe.image.name,
        &manifest.digest,
        &image::rfc3339(mtime),
        lock.as_ref(),
        &sbom::base_packages(cache, &base).unwrap_or_else(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            reporter.report(Event::Warning(&format!(
                "SBOM: {msg}; the base image's packages are not listed"
            )));
            Vec::new()
        }),
        &downloads(loaded, lock.as_ref()),
    );
    Ok(PlatformImage {
        platform: loaded.recipe.image.platform.clone(),
        manifest,
        config,
        base_layers: base.layers.clone(),
        layers,
        lock,
        sbom,
    })
}

/// The recipe's downloads as fetched: URL (platform expanded) and sha256 (the recipe's, else
/// the lock's).
fn downloads(loaded: &Loaded, lock: Option<&Lock>) -> Vec<(String, Digest)> {
    let r = &loaded.recipe;
    r.download
        .iter()
        .filter_map(|d| {
            let url = crate::recipe::interp::expand_platform(&d.url, &r.image.platform).ok()?;
            let sha = match &d.sha256 {
                Some(h) => Digest::parse(h)
                    .or_else(|_| Digest::parse(&format!("sha256:{h}")))
                    .ok(),
                None => lock.and_then(|l| l.download(&url)).cloned(),
            }?;
            Some((url, sha))
        })
        .collect()
}

/// Writes one image's blobs, config and manifest into `layout`; the manifest's descriptor and
/// the config digest. Every blob it needs goes into `keep`.
fn write_image(
    loaded: &Loaded,
    cache: &Cache,
    layout: &Layout,
    mtime: u64,
    base: &BaseImage,
    layers: &[LayerOutcome],
    keep: &mut BTreeSet<Digest>,
) -> Result<(Desc, Digest), OciError> {
    let r = &loaded.recipe;
    let all: Vec<&LayerRecord> = base
        .layers
        .iter()
        .chain(layers.iter().map(|l| &l.record))
        .collect();
    for l in &all {
        // A blob the layout already has is not read again while its stat is the one it had
        // when last hashed (the cache's input-file memo: path, inode, size, mtime, ctime), so
        // a build that changes nothing does no work in the size of the image.
        let dest = layout.blob_path(&l.digest);
        let present = cache
            .file_digest(&dest)
            .is_ok_and(|(d, n)| d == l.digest && n == l.size);
        if !present {
            layout.put_file(&cache.blob_path(&l.digest), &l.digest)?;
            // Hashed while copied: the next build trusts it without reading it again. (Only
            // a shortcut: without the memo, that build hashes the blob once.)
            let _ = cache.remember_file_digest(&dest, &l.digest);
        }
        keep.insert(l.digest.clone());
    }
    let created = image::rfc3339(mtime);
    let spec = RuntimeSpec {
        platform: r.image.platform.clone(),
        env: r.env.clone(),
        user: r.image.user.clone(),
        workdir: r.image.workdir.clone(),
        entrypoint: r.image.entrypoint.clone(),
        cmd: r.image.cmd.clone(),
        labels: r.image.labels.clone(),
        expose: r.image.expose.clone(),
        volumes: r.image.volumes.clone(),
        stop_signal: r.image.stop_signal.clone(),
    };
    let history = layers
        .iter()
        .map(|l| image::history(&created, &l.name))
        .collect::<Result<Vec<_>, _>>()?;
    let diff_ids: Vec<Digest> = all.iter().map(|l| l.diff_id.clone()).collect();
    let config = image::config(base.config.as_ref(), &spec, &diff_ids, history, &created)?;
    let config_desc = layout.put_json(MEDIA_TYPE_CONFIG, &config)?;
    let layer_descs = all
        .iter()
        .map(|l| Desc {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: l.size,
            annotations: Default::default(),
            platform: None,
        })
        .collect();
    let manifest = image::manifest(config_desc.clone(), layer_descs);
    let manifest_desc = layout.put_json(MEDIA_TYPE_MANIFEST, &manifest)?;
    keep.insert(config_desc.digest.clone());
    keep.insert(manifest_desc.digest.clone());
    Ok((manifest_desc, config_desc.digest))
}

#[cfg(test)]
mod tests {
    #[test]
    fn upgrade_pip_asks_for_pip_first() {
        let pip = |packages: &[&str], upgrade_pip| crate::recipe::Pip {
            packages: packages.iter().map(|p| p.to_string()).collect(),
            upgrade_pip,
            index_url: None,
        };
        assert_eq!(
            super::pip_requests(&pip(&["ansible"], true)),
            ["pip", "ansible"]
        );
        assert_eq!(super::pip_requests(&pip(&["ansible"], false)), ["ansible"]);
        assert_eq!(
            super::pip_requests(&pip(&["pip==24.0", "ansible"], true)),
            ["pip==24.0", "ansible"]
        );
    }
}
