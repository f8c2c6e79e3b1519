//! `imgbuild build RECIPE`: build the OCI image layout (the manifest digest on stdout) and/or
//! the proxmox target (the disk's path on stdout), then push or deploy them if asked.

use std::path::PathBuf;

use anyhow::{Context, Result};
use imgbuild::build::{self, BuildOutput};
use imgbuild::fsutil;
use imgbuild::proxmox::target;
use serde_json::json;

use super::UsageError;
use super::progress::Progress;
use super::shared_cache::Shared;
use crate::cli::{BuildArgs, Global, Target};

pub fn run(g: &Global, args: &BuildArgs) -> Result<()> {
    let oci = super::wants(args.target, Target::Oci);
    let proxmox = super::wants(args.target, Target::Proxmox);
    if args.deploy && !proxmox {
        return Err(UsageError("--deploy needs --target proxmox (or all)".into()).into());
    }
    if args.push.is_some() && !oci {
        return Err(UsageError("--push needs --target oci (or all)".into()).into());
    }
    let loaded = super::load(g, &args.recipe)?;
    let progress = Progress::new(g);
    for w in &loaded.warnings {
        progress.line(&w.to_string());
    }
    let cache = super::cache(g)?;
    let mtime = super::source_date_epoch()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("out").join(&loaded.recipe.image.name));
    let opts = super::client_options(g);
    let push_ref = args
        .push
        .as_deref()
        .map(imgbuild::registry::Reference::parse)
        .transpose()?;
    if args.sign_key.is_some() && push_ref.is_none() {
        return Err(
            UsageError("--sign-key signs what --push pushes: add --push REF".into()).into(),
        );
    }
    // Opened before the build: a wrong password fails now, not after an hour of building.
    let sign_key = match &push_ref {
        Some(_) => super::push_signing_key(args.sign_key.as_deref(), &loaded)?,
        None => None,
    };
    let shared = Shared::parse(args.cache_from.as_deref(), args.cache_to.as_deref())?;
    shared.import(&cache, &opts, &progress)?;
    let mut meta = serde_json::Map::new();
    if oci {
        let started = std::time::Instant::now();
        let result = build::build(
            &loaded,
            &cache,
            &out,
            mtime,
            &super::build_options(g, args),
            &progress,
        )
        .with_context(|| format!("building {}", args.recipe.display()))?;
        let hits = result.layers.iter().filter(|l| l.hit).count();
        progress.line(&format!(
            "==> {} in {:.2?}: {} layers ({hits} cached, {} built), tags {}",
            out.display(),
            started.elapsed(),
            result.layers.len(),
            result.layers.len() - hits,
            result.tags.join(", ")
        ));
        meta = metadata(&result);
        shared.export(&cache, &result, &opts, &progress)?;
        if let Some(dest) = &push_ref {
            let tag = result.tags.first().map(String::as_str);
            super::push::push_layout(
                &progress,
                &progress,
                &out,
                tag,
                dest,
                &opts,
                Some(&cache),
                sign_key.as_ref(),
            )?;
        }
        outln!("{}", result.manifest);
    }
    if proxmox {
        let started = std::time::Instant::now();
        let dir = out.join("proxmox");
        let result = target::build(
            &loaded,
            &cache,
            &dir,
            mtime,
            &super::build_options(g, args),
            &progress,
        )
        .with_context(|| format!("building the proxmox target of {}", args.recipe.display()))?;
        progress.line(&format!(
            "==> {} in {:.2?}: {} ({} bytes, kernel {}), seed.iso, user-data",
            dir.display(),
            started.elapsed(),
            result.manifest.disk.file,
            result.manifest.disk.size,
            result.manifest.kernel,
        ));
        meta.insert(
            "proxmox".into(),
            serde_json::to_value(&result.manifest).context("serializing the manifest")?,
        );
        outln!("{}", result.disk.path.display());
        if args.deploy {
            super::deploy::deploy_dir(g, &loaded, &dir, &args.proxmox, &progress)?;
        }
    }
    if let Some(path) = &args.metadata_file {
        let bytes = serde_json::to_vec_pretty(&serde_json::Value::Object(meta))
            .context("serializing build metadata")?;
        fsutil::write_atomic(path, &bytes)
            .with_context(|| format!("writing metadata file {}", path.display()))?;
    }
    Ok(())
}

fn metadata(r: &BuildOutput) -> serde_json::Map<String, serde_json::Value> {
    let hits = r.layers.iter().filter(|l| l.hit).count();
    let doc = json!({
        "manifest": r.manifest,
        "manifest_size": r.manifest_size,
        "config": r.config,
        "layout": r.out,
        "tags": r.tags,
        "base_layers": r.base_layers.iter().map(|l| json!({"digest": l.digest, "diff_id": l.diff_id, "size": l.size})).collect::<Vec<_>>(),
        "layers": r.layers.iter().map(|l| json!({
            "step": l.name,
            "key": l.key,
            "cache": if l.hit { "hit" } else { "miss" },
            "digest": l.record.digest,
            "diff_id": l.record.diff_id,
            "size": l.record.size,
            "media_type": l.record.media_type,
            "why": l.why.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "cache": { "hits": hits, "misses": r.layers.len() - hits },
        "packages": r.lock.as_ref().map(|l| l.packages.iter().map(|p| json!({"name": p.name, "version": p.version, "arch": p.arch, "sha256": p.sha256})).collect::<Vec<_>>()),
        "media_type": r.media_type,
        // Every platform's image (one for a single-platform recipe); `manifest` above is the
        // index when there are several, and `layers` lists every platform's steps.
        "platforms": r.platforms.iter().map(|p| json!({
            "platform": p.platform,
            "manifest": p.manifest,
            "config": p.config,
            "layers": p.layers.iter().map(|l| json!({
                "step": l.name,
                "key": l.key,
                "cache": if l.hit { "hit" } else { "miss" },
                "digest": l.record.digest,
                "why": l.why.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "packages": p.lock.as_ref().map(|l| l.packages.iter().map(|p| json!({"name": p.name, "version": p.version, "arch": p.arch})).collect::<Vec<_>>()),
        })).collect::<Vec<_>>(),
    });
    match doc {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}
