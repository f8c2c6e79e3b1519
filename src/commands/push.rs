//! `imgbuild push LAYOUT REF` (and `build --push REF`): send an image layout to a registry.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use imgbuild::cache::Cache;
use imgbuild::registry::{self, ClientOptions, Reference};
use imgbuild::sigstore::SigningKey;

use super::progress::Progress;
use crate::cli::Global;

pub fn run(
    g: &Global,
    layout: &Path,
    reference: &str,
    tag: Option<&str>,
    sign_key: Option<&Path>,
) -> Result<()> {
    let dest = Reference::parse(reference).map_err(|e| super::UsageError(e.to_string()))?;
    let key = sign_key.map(super::signing_key).transpose()?;
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
        key.as_ref(),
    )?;
    outln!("{digest}");
    Ok(())
}

/// Pushes and reports (and signs, with `key`); returns the manifest digest.
#[allow(clippy::too_many_arguments)]
pub fn push_layout(
    progress: &Progress,
    reporter: &dyn imgbuild::report::Reporter,
    layout: &Path,
    tag: Option<&str>,
    dest: &Reference,
    opts: &ClientOptions,
    cache: Option<&Cache>,
    key: Option<&SigningKey>,
) -> Result<String> {
    let started = Instant::now();
    progress.line(&format!("==> pushing {} to {dest}", layout.display()));
    let o = registry::push::push(layout, tag, dest, opts, cache, reporter)
        .with_context(|| format!("pushing to {dest}"))?;
    let digest = o
        .manifest
        .clone()
        .map(|d| d.to_string())
        .unwrap_or_default();
    // Each image's SBOM goes with it, as a referrer (and is signed, with a key).
    let multi = o.media_type == imgbuild::oci::MEDIA_TYPE_INDEX;
    for image in &o.images {
        let file = match (&image.platform, multi) {
            (Some(p), true) => imgbuild::build::sbom_file(&format!("{}/{}", p.os, p.architecture)),
            _ => imgbuild::build::SBOM_FILE.to_string(),
        };
        let Ok(doc) = std::fs::read(layout.join(&file)) else {
            continue;
        };
        let subject = imgbuild::oci::layout::Desc {
            media_type: imgbuild::oci::MEDIA_TYPE_MANIFEST.into(),
            digest: image.digest.clone(),
            size: image.size,
            annotations: Default::default(),
            platform: None,
        };
        let r = registry::referrers::push(
            dest,
            &subject,
            imgbuild::sbom::MEDIA_TYPE,
            &doc,
            opts,
            cache,
            reporter,
        )
        .with_context(|| format!("pushing the SBOM of {dest} as a referrer"))?;
        progress.line(&format!(
            "==> SBOM pushed as {dest}@{} (referrer of {}, listed under tag {})",
            r.manifest, image.digest, r.tag
        ));
        if let Some(key) = key {
            // The referrer has no tag: its signature names the repository.
            let mut repo = dest.clone();
            repo.tag = None;
            sign(progress, &repo, &r.manifest, key, opts)?;
        }
    }
    if let (Some(key), Some(manifest)) = (key, &o.manifest) {
        // The index and each platform's manifest, as the container tools sign a multi-arch
        // image, so a pull of one platform by digest finds its signature too.
        sign(progress, dest, manifest, key, opts)?;
        if multi {
            for image in &o.images {
                sign(progress, dest, &image.digest, key, opts)?;
            }
        }
    }
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

fn sign(
    progress: &Progress,
    dest: &Reference,
    manifest: &imgbuild::digest::Digest,
    key: &SigningKey,
    opts: &ClientOptions,
) -> Result<()> {
    let sig = registry::signatures::attach(dest, manifest, key, opts)
        .with_context(|| format!("signing {manifest} in {dest}"))?;
    progress.line(&format!(
        "==> signed {manifest} as {} (tag {}, manifest {sig})",
        registry::signatures::identity(dest),
        registry::signatures::tag(manifest)
    ));
    Ok(())
}
