//! `imgbuild cache ls | verify | gc --max-size SIZE | prune --older-than DUR`: what the cache
//! holds, that it is intact, and keeping it small. Listings and what was removed on stdout.

use anyhow::{Context, Result};
use imgbuild::cache::{Cache, gc};

use super::UsageError;
use crate::cli::{CacheCommand, Global};

pub fn run(g: &Global, cmd: &CacheCommand) -> Result<()> {
    let root = g.cache_dir.clone().unwrap_or_else(Cache::default_root);
    match cmd {
        CacheCommand::Ls { json } => {
            let cache = super::cache(g)?;
            let inv = gc::inventory(&cache).context("listing the cache")?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&inv)?);
                return Ok(());
            }
            for k in &inv.keys {
                outln!(
                    "key {}  layer {}  {:>10}  used {} ago",
                    &k.key[..12.min(k.key.len())],
                    k.record.digest.short(),
                    k.record.size,
                    ago(k.age_secs)
                );
            }
            let loose: Vec<_> = inv.blobs.iter().filter(|b| !b.layer).collect();
            outln!(
                "{}: {} keys, {} blobs ({} not layers: downloads, packages, base images), {}",
                root.display(),
                inv.keys.len(),
                inv.blobs.len(),
                loose.len(),
                human(inv.size)
            );
        }
        CacheCommand::Verify => {
            let cache = super::cache(g)?;
            let (n, bad) = cache.verify_all().context("verifying the cache")?;
            for e in &bad {
                outln!("corrupt (removed): {e}");
            }
            outln!(
                "{}: {n} blobs hashed, {} corrupt",
                root.display(),
                bad.len()
            );
            if !bad.is_empty() {
                anyhow::bail!(
                    "{} cached blob(s) did not match their digest; they were removed and will be fetched or rebuilt",
                    bad.len()
                );
            }
        }
        CacheCommand::Gc { max_size } => {
            let max = imgbuild::fsutil::parse_size(max_size)
                .or_else(|| (max_size.trim() == "0").then_some(0))
                .ok_or_else(|| {
                    UsageError(format!("--max-size `{max_size}` is not a size such as 20G"))
                })?;
            let cache = open_exclusive(g, &root)?;
            let r = gc::gc(&cache, max).context("collecting the cache")?;
            report("gc", &r)?;
        }
        CacheCommand::Prune { older_than } => {
            let dur = humantime::parse_duration(older_than).map_err(|e| {
                UsageError(format!(
                    "--older-than `{older_than}` is not a duration such as 30d or 12h: {e}"
                ))
            })?;
            let cache = open_exclusive(g, &root)?;
            let r = gc::prune(&cache, dur).context("pruning the cache")?;
            report("prune", &r)?;
        }
    }
    Ok(())
}

/// The cache, locked exclusively; says on stderr (unless --quiet) when a build holds it.
fn open_exclusive(g: &Global, root: &std::path::Path) -> Result<Cache> {
    let quiet = g.quiet;
    Cache::open_exclusive_with(root, &|| {
        if !quiet {
            errln!(
                "==> waiting for running builds to release the cache lock {}",
                root.join("lock").display()
            );
        }
    })
    .with_context(|| format!("locking the cache at {}", root.display()))
}

fn report(what: &str, r: &gc::Removed) -> Result<()> {
    outln!(
        "{what}: removed {} keys and {} blobs ({}); {} -> {}",
        r.keys,
        r.blobs,
        human(r.bytes),
        human(r.size_before),
        human(r.size_after)
    );
    Ok(())
}

fn human(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn ago(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}
