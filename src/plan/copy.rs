//! `[[copy]]` steps: one per entry, keyed by the listing of the directory (each file's
//! content digest, never its mtime: [`crate::srctree`]) and the entry's settings.

use serde_json::json;

use super::*;
use crate::srctree::{self, Listing};

/// A `[[copy]]` entry with its directory listed.
#[derive(Debug, Clone)]
pub struct PlannedCopy {
    pub listing: Listing,
    /// The recipe's `src`, as written (for messages).
    pub src: String,
    pub dest: String,
    pub owner: Option<String>,
    pub mode: u32,
    pub dir_mode: u32,
    pub preserve_mode: bool,
    pub field: FieldPath,
}

impl PlannedCopy {
    /// A file's mode in the image: `mode`, plus `x` wherever it has `r` for a source file
    /// with an executable bit when `preserve_mode` is set (git's one bit).
    pub fn file_mode(&self, exec: bool) -> u32 {
        if self.preserve_mode && exec {
            self.mode | ((self.mode & 0o444) >> 2)
        } else {
            self.mode
        }
    }
}

impl Compiler {
    /// `[[copy]]`: one step each, after the files.
    pub(super) fn copies(&mut self, cx: &Inputs) -> Result<(), PlanError> {
        let Inputs { loaded, cache, .. } = *cx;
        for (i, c) in loaded.recipe.copy.iter().enumerate() {
            let field = FieldPath::root().key("copy").index(i);
            let dir = loaded.resolve(&c.src);
            let scan_err = |e: srctree::SrcTreeError| PlanError::Copy {
                field: field.to_string(),
                source: e,
            };
            let ignore = srctree::excludes(&dir, &c.exclude).map_err(scan_err)?;
            let listing = srctree::scan(cache, &dir, &ignore).map_err(scan_err)?;
            // Kept by digest so a later `plan --explain` can name the files that changed.
            cache
                .put_tree_listing(&listing.encoded)
                .map_err(|source| PlanError::Read {
                    path: dir.clone(),
                    field: field.key("src").to_string(),
                    source,
                })?;
            let planned = PlannedCopy {
                src: c.src.clone(),
                dest: c.dest.clone(),
                owner: c.owner.clone(),
                mode: c.mode.map_or(0o644, |m| m.0),
                dir_mode: c.dir_mode.map_or(0o755, |m| m.0),
                preserve_mode: c.preserve_mode,
                field,
                listing,
            };
            let def = json!({
                "kind": "copy",
                "dest": planned.dest,
                "owner": planned.owner,
                "mode": planned.mode,
                "dir_mode": planned.dir_mode,
                "preserve_mode": planned.preserve_mode,
                "tree": planned.listing.digest,
            });
            let files = planned
                .listing
                .entries
                .iter()
                .filter(|e| matches!(e.kind, srctree::Kind::File { .. }))
                .count();
            let name = format!("copy {} -> {} ({files} files)", c.src, c.dest);
            self.push(StepKind::Copy(Box::new(planned)), name, def);
        }
        Ok(())
    }
}
