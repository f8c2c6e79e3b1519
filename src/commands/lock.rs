//! `imgbuild lock RECIPE`: resolve apt packages and pin downloads into `NAME.lock`; what
//! changed since the previous lock on stdout.

use std::path::Path;

use anyhow::{Context, Result};
use imgbuild::{build, lock};

use crate::cli::Global;

pub fn run(g: &Global, recipe: &Path) -> Result<()> {
    let all = super::load(g, recipe)?;
    let cache = super::cache(g)?;
    let progress = super::progress::Progress::new(g);
    for loaded in all.per_platform() {
        // Each platform resolves on its own (its base image, its architecture's packages);
        // a multi-platform recipe's changes name their platform.
        let prefix = match &loaded.lock_section {
            Some(p) => format!("{p}: "),
            None => String::new(),
        };
        let base = build::resolve_base(&loaded, &cache, &super::client_options(g), &progress)
            .with_context(|| format!("locking {}", recipe.display()))?;
        let path = loaded.lock_path.clone();
        let old = lock::read_for(&loaded).ok().flatten();
        let fresh = build::resolve_lock(
            &loaded,
            &base,
            &cache,
            super::source_date_epoch()?,
            true,
            &mut build::LiveRoot::default(),
            &progress,
        )
        .with_context(|| format!("locking {}", recipe.display()))?;
        lock::write_for(&loaded, &fresh)?;
        let changes = match &old {
            Some(o) => o.diff(&fresh),
            None => fresh
                .downloads
                .iter()
                .map(|d| format!("{}: pinned {}", d.url, d.sha256))
                .collect(),
        };
        for c in &changes {
            outln!("{prefix}{c}");
        }
        progress.line(&format!(
            "==> {}: {prefix}{} packages from {} sources, {} downloads and {} pip files pinned, {} changes",
            path.display(),
            fresh.packages.len(),
            fresh.sources.len(),
            fresh.downloads.len(),
            fresh.pip.len(),
            changes.len()
        ));
    }
    Ok(())
}
