//! `imgbuild import DOCKERFILE [-o FILE]`: a Dockerfile converted into a recipe; what could
//! not be mapped is reported on stderr with its Dockerfile line.

use std::path::Path;

use anyhow::{Context, Result};
use imgbuild::{fsutil, import};

use super::UsageError;
use crate::cli::Global;

pub fn run(g: &Global, dockerfile: &Path, output: Option<&Path>) -> Result<()> {
    let bytes = fsutil::read_bounded(dockerfile, imgbuild::recipe::MAX_RECIPE)
        .with_context(|| format!("cannot read {}", dockerfile.display()))?;
    // Bad input, not a failure: exit 2 with the place of the first invalid byte.
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..offset]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        UsageError(format!(
            "{}:{line}: not UTF-8 (invalid byte at offset {offset})",
            dockerfile.display()
        ))
    })?;
    let context = dockerfile.parent().filter(|p| !p.as_os_str().is_empty());
    let imported = import::import(&text, &dockerfile.display().to_string(), context)
        .map_err(|e| UsageError(e.to_string()))?;
    let progress = super::progress::Progress::new(g);
    for w in &imported.warnings {
        progress.line(&format!("warning: {w}"));
    }
    match output {
        Some(path) => {
            fsutil::write_atomic(path, imported.recipe.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            progress.line(&format!(
                "==> {}: {} warnings",
                path.display(),
                imported.warnings.len()
            ));
        }
        None => super::out(&imported.recipe)?,
    }
    Ok(())
}
