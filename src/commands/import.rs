//! `imgbuild import DOCKERFILE [-o FILE]`: a Dockerfile converted into a recipe; what could
//! not be mapped is reported on stderr with its Dockerfile line.

use std::path::Path;

use anyhow::{Context, Result};
use imgbuild::{fsutil, import};

use super::UsageError;
use crate::cli::Global;

pub fn run(g: &Global, dockerfile: &Path, output: Option<&Path>) -> Result<()> {
    // Not UTF-8 is bad input (exit 2) with the place of the first invalid byte.
    let text = match fsutil::read_text(dockerfile, imgbuild::recipe::MAX_RECIPE) {
        Ok(t) => t,
        Err(e @ fsutil::TextError::NotUtf8 { line, .. }) => {
            return Err(UsageError(format!("{}:{line}: {e}", dockerfile.display())).into());
        }
        Err(fsutil::TextError::Io(e)) => {
            return Err(e).with_context(|| format!("cannot read {}", dockerfile.display()));
        }
    };
    // The build context is the Dockerfile's directory (`.` for a bare file name).
    let context = Some(
        dockerfile
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    );
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
