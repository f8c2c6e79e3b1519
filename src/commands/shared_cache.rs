//! `--cache-from REF` / `--cache-to REF` for `build` and `rebuild`: the registry-backed build
//! cache ([`imgbuild::registry::build_cache`]) around a build, with progress lines.

use anyhow::{Context, Result};
use imgbuild::build::BuildOutput;
use imgbuild::cache::Cache;
use imgbuild::registry::build_cache;
use imgbuild::registry::{ClientOptions, Reference};

use super::UsageError;
use super::progress::Progress;

/// The two references, parsed (a bad one is a usage error).
pub struct Shared {
    from: Option<Reference>,
    to: Option<Reference>,
}

impl Shared {
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Shared> {
        let parse = |r: Option<&str>| -> Result<Option<Reference>> {
            Ok(r.map(Reference::parse)
                .transpose()
                .map_err(|e| UsageError(e.to_string()))?)
        };
        Ok(Shared {
            from: parse(from)?,
            to: parse(to)?,
        })
    }

    /// Before the build: import what `--cache-from` has that this cache lacks.
    pub fn import(&self, cache: &Cache, opts: &ClientOptions, progress: &Progress) -> Result<()> {
        if let Some(src) = &self.from {
            let n = build_cache::import(cache, src, opts, progress)
                .with_context(|| format!("importing the build cache from {src}"))?;
            progress.line(&format!("==> imported {n} cached steps from {src}"));
        }
        Ok(())
    }

    /// After the build: store its steps at `--cache-to`.
    pub fn export(
        &self,
        cache: &Cache,
        result: &BuildOutput,
        opts: &ClientOptions,
        progress: &Progress,
    ) -> Result<()> {
        if let Some(dest) = &self.to {
            let keys: Vec<_> = result
                .layers
                .iter()
                .map(|l| (l.key.clone(), l.record.clone()))
                .collect();
            let d = build_cache::export(cache, &keys, dest, opts, progress)
                .with_context(|| format!("exporting the build cache to {dest}"))?;
            progress.line(&format!(
                "==> exported {} cached steps to {dest}@{d}",
                keys.len()
            ));
        }
        Ok(())
    }
}
