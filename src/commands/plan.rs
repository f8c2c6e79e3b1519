//! `imgbuild plan RECIPE [--explain]`: the compiled steps, their cache keys, hit or miss, and
//! with `--explain` why each miss misses.

use std::path::Path;

use anyhow::Result;
use imgbuild::build;

use crate::cli::Global;

pub fn run(g: &Global, recipe: &Path, explain: bool) -> Result<()> {
    let all = super::load(g, recipe)?;
    let cache = super::cache(g)?;
    let progress = super::progress::Progress::new(g);
    let opts = build::Options {
        client: super::client_options(g),
        ..Default::default()
    };
    for view in all.per_platform() {
        if all.multi_platform() {
            outln!("platform  {}", view.recipe.image.platform);
        }
        let (base, plan, _) = build::prepare(
            &view,
            &cache,
            super::source_date_epoch()?,
            &opts,
            &mut build::LiveRoot::default(),
            &progress,
        )?;
        match &base.digest {
            Some(d) => outln!("base  {d} ({} layers)", base.layers.len()),
            None => outln!("base  scratch"),
        }
        outln!("root  {}", plan.root_key);
        let why = if explain {
            build::explain_plan(&view, &cache, &plan)
        } else {
            Vec::new()
        };
        for (i, step) in plan.steps.iter().enumerate() {
            let hit = cache.has_key(&step.key);
            let state = if hit { "hit " } else { "miss" };
            outln!("{:>4}  {}  {state}  {}", i + 1, step.key, step.name);
            if let Some(reasons) = why.get(i).filter(|_| !hit) {
                for r in reasons {
                    outln!("            why: {r}");
                }
            }
        }
    }
    Ok(())
}
