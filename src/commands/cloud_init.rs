//! `imgbuild cloud-init RECIPE --out DIR`: the NoCloud files alone (user-data, meta-data,
//! network-config, seed.iso), for VMs that install the toolset at first boot (or, with
//! `--clone`, the snippet for VMs cloned from imgbuild's disk). Their paths on stdout.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use imgbuild::cloudinit::{self, Flavor};

use super::progress::Progress;
use crate::cli::Global;

pub fn run(g: &Global, recipe: &Path, out: Option<&Path>, clone: bool) -> Result<()> {
    let loaded = super::load(g, recipe)?;
    let progress = Progress::new(g);
    for w in &loaded.warnings {
        progress.line(&w.to_string());
    }
    let dir = out.map(Path::to_path_buf).unwrap_or_else(|| {
        PathBuf::from("out")
            .join(&loaded.recipe.image.name)
            .join("cloud-init")
    });
    // The VM is amd64: a multi-platform recipe's amd64 view (and lock section).
    let loaded = if loaded.multi_platform() {
        loaded.for_platform("linux/amd64")
    } else {
        loaded
    };
    // Download digests the recipe leaves to the lock come from it when there is one.
    let lock = imgbuild::lock::read_for(&loaded)
        .with_context(|| format!("reading {}", loaded.lock_path.display()))?;
    let flavor = if clone {
        Flavor::Clone
    } else {
        Flavor::Install
    };
    let snippets = cloudinit::compile(&loaded, lock.as_ref(), flavor)
        .with_context(|| format!("compiling {} to cloud-init", recipe.display()))?;
    let iso = dir.join("seed.iso");
    cloudinit::seed::write(&snippets, &dir, &iso, super::source_date_epoch()?)
        .with_context(|| format!("writing the NoCloud seed in {}", dir.display()))?;
    for (name, _) in snippets.files() {
        outln!("{}", dir.join(name).display());
    }
    outln!("{}", iso.display());
    Ok(())
}
