//! `build --target proxmox`: the recipe's VM variant (the recipe plus the VM packages) built
//! like the OCI image, its layers flattened into a root, the disk made from it ([`crate::disk`]),
//! the clone snippet and NoCloud seed beside it ([`crate::cloudinit`]), and a manifest that
//! `deploy` reads. Everything lands in `out/NAME/proxmox/`; nothing needs a VM or the network
//! beyond the package archives.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::build::{self, BuildError, Options};
use crate::cache::{Cache, LayerRecord};
use crate::cloudinit::{self, CloudInitError, Flavor, seed::SeedError};
use crate::digest::Digest;
use crate::disk::{self, DiskError, DiskInfo, DiskOptions, Format};
use crate::realize;
use crate::recipe::Loaded;
use crate::report::{Event, Reporter};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("flattening the image for the disk")]
    Flatten(#[source] realize::RealizeError),
    #[error("making the disk image")]
    Disk(#[from] DiskError),
    #[error("writing the cloud-init user-data")]
    CloudInit(#[from] CloudInitError),
    #[error(transparent)]
    Seed(#[from] SeedError),
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `out/NAME/proxmox/manifest.json`: what was built, for `deploy` and for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub disk: ManifestFile,
    pub disk_format: String,
    pub disk_size: u64,
    pub kernel: String,
    pub cmdline: String,
    pub root_partuuid: String,
    pub esp_partuuid: String,
    pub seed: ManifestFile,
    pub user_data: ManifestFile,
    pub vm_packages: Vec<String>,
    pub layers: Vec<Digest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestFile {
    /// The file name inside the proxmox output directory.
    pub file: String,
    pub sha256: String,
    pub size: u64,
}

/// What the proxmox target made.
#[derive(Debug, Clone)]
pub struct Output {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub disk: DiskInfo,
}

/// The packages the VM variant adds: [`disk::VM_PACKAGES`] and the recipe's own.
pub fn vm_packages(loaded: &Loaded) -> Vec<String> {
    let mut v: Vec<String> = disk::VM_PACKAGES.iter().map(|s| s.to_string()).collect();
    if let Some(px) = &loaded.recipe.target.proxmox {
        for p in &px.packages {
            if !v.contains(p) {
                v.push(p.clone());
            }
        }
    }
    v
}

/// Builds the proxmox target of `loaded` into `dir`.
pub fn build(
    loaded: &Loaded,
    cache: &Cache,
    dir: &Path,
    mtime: u64,
    opts: &Options,
    reporter: &dyn Reporter,
) -> Result<Output, TargetError> {
    // The VM is amd64 (check refuses a multi-platform recipe without it).
    let loaded = &loaded.for_platform("linux/amd64");
    let packages = vm_packages(loaded);
    let vm = loaded.vm_variant(&packages);
    let px = loaded.recipe.target.proxmox.clone().unwrap_or_default();
    reporter.report(Event::Stage("resolving base image (VM variant)"));
    let mut live = realize::LiveRoot::default();
    let (base, plan, lock) = build::prepare(&vm, cache, mtime, opts, &mut live, reporter)?;
    let outcomes = realize::realize(&vm, &plan, &base, cache, &mut live, reporter)
        .map_err(BuildError::from)?;
    let layers: Vec<LayerRecord> = base
        .layers
        .iter()
        .cloned()
        .chain(outcomes.iter().map(|o| o.record.clone()))
        .collect();
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| TargetError::Io {
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(dir).map_err(io("creating", dir))?;

    // The root the build carried forward, brought to the last layer (a recipe whose steps
    // ran no program has none yet: the image is unpacked here, once).
    reporter.report(Event::Stage("flattening the image for the disk"));
    let root = live
        .flatten(cache, &layers, mtime)
        .map_err(TargetError::Flatten)?;
    let work = tempfile::Builder::new()
        .prefix("imgbuild-disk-")
        .tempdir_in(realize::sandbox::work_dir(cache))
        .map_err(io(
            "creating a work directory in",
            &realize::sandbox::work_dir(cache),
        ))?;

    let name = px
        .name
        .clone()
        .unwrap_or_else(|| loaded.recipe.image.name.clone());
    let format = Format::parse(px.format.as_deref());
    let disk_file = format!("{name}.{}", format.extension());
    reporter.report(Event::Stage("making the disk image"));
    let info = disk::assemble(
        root.path(),
        work.path(),
        &dir.join(&disk_file),
        &DiskOptions {
            name: name.clone(),
            size: px
                .disk_size
                .as_deref()
                .and_then(disk::parse_size)
                .unwrap_or(disk::DEFAULT_SIZE),
            format,
            mtime,
            extra_cmdline: String::new(),
        },
    )?;
    drop(work);
    drop(root);

    reporter.report(Event::Stage("writing the cloud-init seed"));
    let snippets = cloudinit::compile(loaded, lock.as_ref(), Flavor::Clone)?;
    cloudinit::seed::write(&snippets, dir, &dir.join("seed.iso"), mtime)?;
    if let Some(l) = &lock {
        crate::lock::write(&dir.join("imgbuild.vm.lock"), l).map_err(BuildError::from)?;
    }
    let manifest = Manifest {
        name,
        disk: describe(dir, &disk_file)?,
        disk_format: format.extension().into(),
        disk_size: info.size,
        kernel: info.kernel.clone(),
        cmdline: info.cmdline.clone(),
        root_partuuid: info.root_partuuid.clone(),
        esp_partuuid: info.esp_partuuid.clone(),
        seed: describe(dir, "seed.iso")?,
        user_data: describe(dir, "user-data")?,
        vm_packages: packages,
        layers: layers.iter().map(|l| l.digest.clone()).collect(),
    };
    let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    crate::fsutil::write_atomic(&dir.join("manifest.json"), &json)
        .map_err(io("writing", &dir.join("manifest.json")))?;
    Ok(Output {
        dir: dir.to_path_buf(),
        manifest,
        disk: info,
    })
}

fn describe(dir: &Path, file: &str) -> Result<ManifestFile, TargetError> {
    let path = dir.join(file);
    let mut f = fs::File::open(&path).map_err(|source| TargetError::Io {
        action: "reading",
        path: path.clone(),
        source,
    })?;
    let mut w = crate::digest::HashingWriter::new(std::io::sink());
    std::io::copy(&mut f, &mut w).map_err(|source| TargetError::Io {
        action: "hashing",
        path: path.clone(),
        source,
    })?;
    let (_, digest, size) = w.finish();
    Ok(ManifestFile {
        file: file.to_string(),
        sha256: digest.hex().to_string(),
        size,
    })
}

/// Reads `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, TargetError> {
    let path = dir.join("manifest.json");
    let bytes = fs::read(&path).map_err(|source| TargetError::Io {
        action: "reading (build the proxmox target first)",
        path: path.clone(),
        source,
    })?;
    let bad = |path: &Path, msg: String| TargetError::Io {
        action: "parsing",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
    };
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(&path, e.to_string()))?;
    // A hand-edited manifest must not name files outside the directory or carry a digest
    // the deploy would slice or send as is.
    for (field, f) in [
        ("disk", &m.disk),
        ("seed", &m.seed),
        ("user_data", &m.user_data),
    ] {
        let plain =
            !f.file.is_empty() && f.file != "." && f.file != ".." && !f.file.contains(['/', '\0']);
        if !plain {
            return Err(bad(
                &path,
                format!(
                    "`{field}.file` = `{}` is not a file name in this directory",
                    f.file
                ),
            ));
        }
        if f.sha256.len() != 64
            || !f
                .sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(bad(
                &path,
                format!(
                    "`{field}.sha256` = `{}` is not 64 lowercase hex digits",
                    f.sha256
                ),
            ));
        }
    }
    Ok(m)
}
