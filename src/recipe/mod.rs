//! Recipes: loading a TOML recipe, interpolating variables, and validating it into a [`Loaded`]
//! recipe whose every error points at file:line:column and the field.
//!
//! ```no_run
//! let loaded = imgbuild::recipe::load(std::path::Path::new("recipes/hello.toml"), &[]).unwrap();
//! println!("{} from {}", loaded.recipe.image.name, loaded.recipe.image.base);
//! ```

pub mod diag;
pub mod interp;
pub mod model;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use diag::{Diagnostic, FieldPath, Severity, SpanIndex};
pub use model::*;
pub use validate::archive_format as validate_archive_format;

/// A recipe read from disk, interpolated and validated.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    /// Where its resolved inputs are locked (`NAME.lock` next to it; `NAME.vm.lock` for the
    /// proxmox target's variant, see [`Loaded::vm_variant`]).
    pub lock_path: PathBuf,
    /// The recipe's directory: `src` and `key` paths are relative to it.
    pub dir: PathBuf,
    pub source: String,
    pub recipe: Recipe,
    pub base: BaseRef,
    pub warnings: Vec<Diagnostic>,
    /// Every platform the recipe builds, in order (one unless `[image] platforms` lists more);
    /// `recipe` is the first one's view.
    pub platforms: Vec<String>,
    /// The section of the lock file this recipe's view reads and writes: its platform, when
    /// the recipe builds several (one lock file, a section per platform).
    pub lock_section: Option<String>,
    /// Which build of the recipe this is: `""` for the image, `"vm"` for the proxmox target's
    /// variant ([`Loaded::vm_variant`]). Names the variant's record of its last plan.
    pub variant: &'static str,
    /// The recipe before `[download.arch]` entries were applied for a platform.
    generic: Recipe,
    spans: SpanIndex,
}

/// Where the image starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseRef {
    Scratch,
    /// `oci:PATH[:TAG]`: an OCI image layout on disk (PATH relative to the recipe).
    Layout {
        path: PathBuf,
        tag: Option<String>,
    },
    /// A registry reference such as `ubuntu:22.04`.
    Registry(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("recipe {path}:{line}: not UTF-8 (invalid byte at offset {offset}); TOML is UTF-8")]
    NotUtf8 {
        path: PathBuf,
        offset: usize,
        line: usize,
    },
    #[error("{}", Diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

struct Diagnostics<'a>(&'a [Diagnostic]);

impl fmt::Display for Diagnostics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl Loaded {
    /// A diagnostic about `field` of this recipe, located in its source.
    pub fn diagnostic(
        &self,
        severity: Severity,
        field: &FieldPath,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic::new(
            severity,
            &self.path,
            &self.source,
            self.spans.span_of(field),
            field.to_string(),
            message.into(),
        )
    }

    /// An error about `field`, as a [`RecipeError`] (exit code 2 at the command line).
    pub fn error_at(&self, field: &FieldPath, message: impl Into<String>) -> RecipeError {
        RecipeError::Invalid(vec![self.diagnostic(Severity::Error, field, message)])
    }

    /// The recipe as the proxmox target builds it: the same, plus `packages` (a kernel,
    /// systemd, cloud-init... ) in `[apt]`, locked in its own `NAME.vm.lock`.
    pub fn vm_variant(&self, packages: &[String]) -> Loaded {
        let mut v = self.clone();
        let apt = v.recipe.apt.get_or_insert_with(|| Apt {
            sources: Vec::new(),
            packages: Vec::new(),
            build_packages: Vec::new(),
            upgrade: false,
            bootstrap: None,
            install_recommends: false,
            ppa_base: None,
            keep_sources: true,
        });
        for p in packages {
            if !apt.packages.contains(p) {
                apt.packages.push(p.clone());
            }
        }
        v.lock_path = self.path.with_extension("vm.lock");
        v.variant = "vm";
        v.lock_section = None;
        v
    }

    /// Whether the recipe builds more than one platform (an image index).
    pub fn multi_platform(&self) -> bool {
        self.platforms.len() > 1
    }

    /// The recipe as it builds for `platform`: its downloads' `[download.arch]` entries for
    /// that platform applied, its own section of the lock file.
    pub fn for_platform(&self, platform: &str) -> Loaded {
        let mut v = self.clone();
        v.recipe = self.generic.clone();
        v.recipe.image.platform = platform.to_string();
        v.recipe.for_platform();
        v.lock_section = self.multi_platform().then(|| platform.to_string());
        v.platforms = vec![platform.to_string()];
        v
    }

    /// One view per platform ([`Loaded::for_platform`]); the recipe itself when it has one.
    pub fn per_platform(&self) -> Vec<Loaded> {
        if self.multi_platform() {
            self.platforms
                .iter()
                .map(|p| self.for_platform(p))
                .collect()
        } else {
            vec![self.clone()]
        }
    }

    /// Resolves a recipe-relative path.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

/// Where a recipe's lock lives: `recipes/NAME.toml` -> `recipes/NAME.lock`.
pub fn lock_path_for(recipe: &Path) -> PathBuf {
    recipe.with_extension("lock")
}

/// The largest recipe file read (a recipe is text written by hand; lockfiles are separate).
pub const MAX_RECIPE: u64 = 16 << 20;

/// Reads, interpolates and validates the recipe at `path`. `overrides` are `--var` values.
pub fn load(path: &Path, overrides: &[(String, String)]) -> Result<Loaded, RecipeError> {
    // Bounded: `imgbuild check /dev/zero` must not read until memory runs out.
    let source = crate::fsutil::read_text(path, MAX_RECIPE).map_err(|e| match e {
        crate::fsutil::TextError::Io(source) => RecipeError::Read {
            path: path.to_path_buf(),
            source,
        },
        crate::fsutil::TextError::NotUtf8 { line, offset } => RecipeError::NotUtf8 {
            path: path.to_path_buf(),
            offset,
            line,
        },
    })?;
    parse(path, source, overrides)
}

/// Like [`load`], for a recipe already in memory (`path` names it in messages).
pub fn parse(
    path: &Path,
    source: String,
    overrides: &[(String, String)],
) -> Result<Loaded, RecipeError> {
    let spans = SpanIndex::new(&source);
    let err = |span, field: String, msg: String| {
        RecipeError::Invalid(vec![Diagnostic::new(
            Severity::Error,
            path,
            &source,
            span,
            field,
            msg,
        )])
    };

    // Pass 1: the typed structure, straight from the text, so syntax, type and unknown-key
    // errors carry the parser's own span.
    if let Err(e) = toml::from_str::<Recipe>(&source) {
        let span = e.span();
        // A table header's span starts at `[`: look just inside it too.
        let field = span
            .as_ref()
            .and_then(|s| {
                spans
                    .path_at(s.start)
                    .filter(|p| !p.0.is_empty())
                    .or_else(|| spans.path_at(s.start + 1))
            })
            .map(|p| p.to_string())
            .unwrap_or_default();
        return Err(err(span, field, e.message().trim().to_string()));
    }

    // Pass 2: interpolate `${var.X}` over the value tree, then type it again.
    let mut value: toml::Value = toml::from_str(&source)
        .map_err(|e| err(e.span(), String::new(), e.message().to_string()))?;
    let mut vars: std::collections::BTreeMap<String, String> = value
        .get("vars")
        .and_then(|v| v.as_table())
        .map(|t| {
            t.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let mut diags = Vec::new();
    let mut warnings = Vec::new();
    for (k, v) in overrides {
        // A variable the recipe uses without declaring it is a required one (`--var` only).
        if !vars.contains_key(k) && !source.contains(&format!("${{var.{k}}}")) {
            // A warning, not an error: one cron line may pass the same --var to many recipes.
            warnings.push(Diagnostic::new(
                Severity::Warning,
                path,
                &source,
                spans.span_of(&FieldPath::parse("vars")),
                format!("vars.{k}"),
                format!("--var {k}=...: no such variable in [vars]; it is not used"),
            ));
        }
        vars.insert(k.clone(), v.clone());
    }
    let mut ierrs = interp::resolve_vars(&mut vars);
    if let toml::Value::Table(t) = &mut value {
        for (k, v) in t.iter_mut().filter(|(k, _)| k.as_str() != "vars") {
            interp::vars_in_value(v, &vars, &FieldPath::root().key(k), &mut ierrs);
        }
    }
    for e in ierrs {
        diags.push(Diagnostic::new(
            Severity::Error,
            path,
            &source,
            spans.span_of(&e.path),
            e.path.to_string(),
            e.message,
        ));
    }
    if !diags.is_empty() {
        return Err(RecipeError::Invalid(diags));
    }
    // A value that became wrong by interpolation (`uid = "${var.UID}"` with UID not a
    // number): the path of the field names where it is in the source.
    let mut recipe: Recipe = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = FieldPath::parse(&e.path().to_string());
        let span = spans.span_of(&field);
        err(span, field.to_string(), e.inner().message().to_string())
    })?;
    let platforms = if recipe.image.platforms.is_empty() {
        vec![recipe.image.platform.clone()]
    } else {
        recipe.image.platforms.clone()
    };
    let explicit_platform = value_has_platform(&source);
    recipe.image.platform = platforms[0].clone();
    let generic = recipe.clone();
    recipe.for_platform();

    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let mut loaded = Loaded {
        path: path.to_path_buf(),
        lock_path: lock_path_for(path),
        dir,
        source,
        base: BaseRef::Scratch,
        recipe,
        warnings: Vec::new(),
        platforms,
        lock_section: None,
        variant: "",
        generic,
        spans,
    };
    let (base, mut diags) = validate::validate(&loaded);
    if explicit_platform && !loaded.recipe.image.platforms.is_empty() {
        diags.push(loaded.diagnostic(
            Severity::Error,
            &FieldPath::root().key("image").key("platforms"),
            "give `platform` (one) or `platforms` (several), not both",
        ));
    }
    let (errors, more): (Vec<_>, Vec<_>) = diags
        .into_iter()
        .partition(|d| d.severity == Severity::Error);
    if !errors.is_empty() {
        return Err(RecipeError::Invalid(errors));
    }
    warnings.extend(more);
    loaded.base = base;
    loaded.warnings = warnings;
    Ok(loaded)
}

/// Whether the recipe's `[image]` table sets `platform` itself (not the default).
fn value_has_platform(source: &str) -> bool {
    toml::from_str::<toml::Value>(source)
        .ok()
        .and_then(|v| v.get("image")?.get("platform").cloned())
        .is_some()
}
