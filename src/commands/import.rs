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
    let context = dockerfile
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A recipe written elsewhere (`-o other/dir/r.toml`) reaches the context's files
    // through the path from its directory to the context.
    let to_context = match output {
        Some(out) => {
            let out_dir = out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let canon = |p: &Path| {
                std::fs::canonicalize(p).with_context(|| format!("cannot resolve {}", p.display()))
            };
            let rel = fsutil::relative_path(&canon(out_dir)?, &canon(context)?);
            (rel != Path::new(".")).then_some(rel)
        }
        None => None,
    };
    let imported = import::import_to(
        &text,
        &dockerfile.display().to_string(),
        Some(context),
        to_context.as_deref(),
    )
    .map_err(|e| UsageError(e.to_string()))?;
    // A recipe reads files under its own directory only (see README, "Security model"): one
    // written beside or below the context could not reach the files the Dockerfile copies.
    if let (Some(out), Some(rel), Some(first)) =
        (output, &to_context, imported.context_paths.first())
        && rel
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(UsageError(format!(
            "{}: the recipe would read `{first}` from the build context {}, outside its own \
             directory; write it (-o) in the context or a directory above it",
            out.display(),
            context.display(),
        ))
        .into());
    }
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
