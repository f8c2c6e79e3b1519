//! `imgbuild push LAYOUT REF` (and `build --push REF`): send an image layout to a registry.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use imgbuild::cache::Cache;
use imgbuild::registry::{self, ClientOptions, Reference};

use super::progress::Progress;
use crate::cli::Global;

pub fn run(g: &Global, layout: &Path, reference: &str, tag: Option<&str>) -> Result<()> {
    let dest = Reference::parse(reference).map_err(|e| super::UsageError(e.to_string()))?;
    let progress = Progress::new(g);
    let cache = super::cache(g)?;
    let digest = push_layout(
        &progress,
        &progress,
        layout,
        tag,
        &dest,
        &super::client_options(g),
        Some(&cache),
    )?;
    println!("{digest}");
    Ok(())
}

/// Pushes and reports; returns the manifest digest.
pub fn push_layout(
    progress: &Progress,
    reporter: &dyn imgbuild::report::Reporter,
    layout: &Path,
    tag: Option<&str>,
    dest: &Reference,
    opts: &ClientOptions,
    cache: Option<&Cache>,
) -> Result<String> {
    let started = Instant::now();
    progress.line(&format!("==> pushing {} to {dest}", layout.display()));
    let o = registry::push::push(layout, tag, dest, opts, cache, reporter)
        .with_context(|| format!("pushing to {dest}"))?;
    let digest = o.manifest.map(|d| d.to_string()).unwrap_or_default();
    progress.line(&format!(
        "==> pushed {dest}@{digest} in {:.2?}: {} uploaded ({:.1} MB), {} mounted, {} already there",
        started.elapsed(),
        o.uploaded,
        o.bytes as f64 / 1e6,
        o.mounted,
        o.existing
    ));
    Ok(digest)
}
