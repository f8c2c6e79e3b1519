//! `[[copy]]`: a directory next to the recipe, an image path, excludes that compile, owners.

use super::Checker;
use crate::recipe::diag::FieldPath;

pub(super) fn copies(c: &mut Checker, r: &crate::recipe::Recipe) {
    for (i, cp) in r.copy.iter().enumerate() {
        let p = FieldPath::root().key("copy").index(i);
        c.image_path(&p.key("dest"), &cp.dest);
        let src_ok = recipe_dir(c, &p.key("src"), &cp.src);
        if let Some(o) = &cp.owner {
            c.owner(&p.key("owner"), o);
        }
        for (j, pattern) in cp.exclude.iter().enumerate() {
            let field = p.key("exclude").index(j);
            if pattern.contains('\0') || pattern.contains('\n') {
                c.error(&field, "a pattern is one line without NUL bytes");
            }
        }
        // The patterns (and the directory's ignore file) compile as gitignore does.
        if src_ok && let Err(e) = crate::srctree::excludes(&c.loaded.resolve(&cp.src), &cp.exclude)
        {
            c.error(&p.key("exclude"), e.to_string());
        }
    }
}

/// A directory next to the recipe: relative, inside the recipe's directory, existing.
fn recipe_dir(c: &mut Checker, p: &FieldPath, v: &str) -> bool {
    let rel = std::path::Path::new(v);
    if rel.is_absolute() {
        c.error(
            p,
            format!("`{v}` must be relative to the recipe's directory"),
        );
        return false;
    }
    if crate::fsutil::climbs_above(rel) {
        c.error(p, format!("`{v}` is outside the recipe's directory"));
        return false;
    }
    let full = c.loaded.resolve(v);
    match (full.canonicalize(), c.loaded.dir.canonicalize()) {
        (Ok(f), Ok(d)) if !f.starts_with(&d) => c.error(
            p,
            format!("`{v}` resolves outside the recipe's directory (through a symlink)"),
        ),
        (Ok(f), _) if !f.is_dir() => c.error(
            p,
            format!("`{v}` is not a directory (a single file is a `[[file]]` with `src`)"),
        ),
        (Err(e), _) => c.error(p, format!("cannot read `{}`: {e}", full.display())),
        _ => return true,
    }
    false
}
