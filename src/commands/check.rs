//! `imgbuild check RECIPE`: validate only; warnings on stderr, a summary on stdout.

use std::path::Path;

use anyhow::Result;

use super::progress::Progress;
use crate::cli::Global;

pub fn run(g: &Global, recipe: &Path) -> Result<()> {
    let loaded = super::load(g, recipe)?;
    let progress = Progress::new(g);
    for w in &loaded.warnings {
        progress.line(&w.to_string());
    }
    // The machine, not the recipe: another platform's programs need emulation here.
    if imgbuild::build::recipe_runs_programs(&loaded.recipe) {
        for p in &loaded.platforms {
            imgbuild::build::emulation::require(p)?;
        }
    }
    let warnings = match loaded.warnings.len() {
        0 => String::new(),
        n => format!(" ({n} warning{})", if n == 1 { "" } else { "s" }),
    };
    outln!("{}: ok{warnings}", recipe.display());
    Ok(())
}
