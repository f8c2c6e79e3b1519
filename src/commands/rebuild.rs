//! `imgbuild rebuild RECIPE --push REF`: the nightly job. Re-resolves the lock (apt indexes,
//! pip, downloads, the base image), shows what changed, builds (only steps whose keys changed
//! are built), pushes only when the manifest digest differs from the one the registry has,
//! optionally under a date tag too, and writes a JSON report. The new manifest digest (or the
//! unchanged one) on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use imgbuild::registry::{self, Reference};
use imgbuild::report::Counting;
use imgbuild::{build, fsutil, lock};
use serde_json::json;

use super::UsageError;
use super::progress::Progress;
use super::shared_cache::Shared;
use crate::cli::{Global, RebuildArgs};

/// `--exit-code`: an update was pushed.
const EXIT_PUSHED: u8 = 3;

pub fn run(g: &Global, args: &RebuildArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let dest = Reference::parse(&args.push).map_err(|e| UsageError(e.to_string()))?;
    let loaded = super::load(g, &args.recipe)?;
    let progress = Progress::new(g);
    for w in &loaded.warnings {
        progress.line(&w.to_string());
    }
    let counting = Counting::new(&progress);
    let cache = super::cache(g)?;
    let mtime = super::source_date_epoch()?;
    let client = super::client_options(g);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("out").join(&loaded.recipe.image.name));
    let context = || format!("rebuilding {}", args.recipe.display());
    let sign_key = super::push_signing_key(args.sign_key.as_deref(), &loaded)?;
    let shared = Shared::parse(args.cache_from.as_deref(), args.cache_to.as_deref())?;
    shared.import(&cache, &client, &progress)?;

    // 1. What the recipe resolves to today. The new lock is written next to the old one
    //    under another name and only replaces it once the image is built and pushed: a failed
    //    night keeps the lock of the last pushed image, so the next report lists every change.
    let (changes, pending, staged) =
        stage_lock(&loaded, &cache, &client, mtime, &counting).with_context(context)?;
    for c in &changes {
        progress.line(&format!("==> changed: {c}"));
    }
    let resolved_in = started.elapsed();
    let write_report = |report: serde_json::Value| -> Result<()> {
        if let Some(path) = &args.report {
            let bytes = serde_json::to_vec_pretty(&report).context("serializing the report")?;
            fsutil::write_atomic(path, &bytes)
                .with_context(|| format!("writing the report {}", path.display()))?;
        }
        Ok(())
    };

    let night = || -> Result<_> {
        // 2. The build: unchanged steps come from the cache.
        let opts = build::Options {
            client: client.clone(),
            locked: true,
            configure: true,
        };
        let result =
            build::build(&staged, &cache, &out, mtime, &opts, &counting).with_context(context)?;
        shared.export(&cache, &result, &client, &progress)?;
        let built_in = started.elapsed() - resolved_in;
        for l in result.layers.iter().filter(|l| !l.hit) {
            let why: Vec<String> = l.why.iter().map(ToString::to_string).collect();
            progress.line(&format!("==> built {}: {}", l.name, why.join("; ")));
        }

        // 3. Push only what the registry does not have yet.
        let previous = registry::pull::remote_digest(&dest, &client)
            .with_context(|| format!("looking up {dest}"))?;
        let changed = previous.as_ref() != Some(&result.manifest);
        let tags = if changed {
            let tag = result.tags.first().map(String::as_str);
            push_tags(
                &progress,
                &counting,
                &out,
                tag,
                &dest,
                args.tag_date,
                &client,
                &cache,
                sign_key.as_ref(),
            )?
        } else {
            if let Some(key) = &sign_key {
                // Unchanged, but signed with this key? (Adding a key to a recipe signs the
                // image already pushed; signing again is a no-op: signatures are deterministic.)
                registry::signatures::attach(&dest, &result.manifest, key, &client)
                    .with_context(|| format!("signing {} in {dest}", result.manifest))?;
            }
            Vec::new()
        };
        Ok((result, previous, changed, tags, built_in))
    };
    let (result, previous, changed, tags, built_in) = match night() {
        Ok(v) => v,
        Err(e) => {
            if let Some((tmp, _)) = &pending {
                let _ = std::fs::remove_file(tmp);
            }
            let (down, up, _) = counting.totals();
            write_report(json!({
                "recipe": args.recipe,
                "reference": dest.to_string(),
                "status": "failed",
                "error": format!("{e:#}"),
                "changes": changes,
                "timings_s": { "total": started.elapsed().as_secs_f64() },
                "bytes": { "downloaded": down, "uploaded": up },
            }))?;
            return Err(e);
        }
    };
    // Built and pushed: the new lock is now the recipe's.
    if let Some((tmp, fresh)) = &pending {
        for (view, l) in fresh {
            lock::write_for(view, l)?;
        }
        let _ = std::fs::remove_file(tmp);
    }
    let pushed_in = started.elapsed() - resolved_in - built_in;
    let night = Night {
        result: &result,
        previous: previous.as_ref(),
        changed,
        tags: &tags,
        changes: &changes,
        timings: [resolved_in, built_in, pushed_in, started.elapsed()],
        bytes: counting.totals(),
    };
    progress.line(&night.summary());
    write_report(night.report(&args.recipe, &dest))?;
    outln!("{}", result.manifest);
    Ok(if changed && args.exit_code {
        ExitCode::from(EXIT_PUSHED)
    } else {
        ExitCode::SUCCESS
    })
}

/// What a successful night did, for its summary line and its report.
struct Night<'a> {
    result: &'a build::BuildOutput,
    previous: Option<&'a imgbuild::digest::Digest>,
    changed: bool,
    tags: &'a [String],
    changes: &'a [String],
    /// resolve, build, push, total
    timings: [std::time::Duration; 4],
    /// down, up, (files)
    bytes: (u64, u64, u64),
}

impl Night<'_> {
    fn status(&self) -> &'static str {
        if self.changed { "pushed" } else { "unchanged" }
    }

    fn built(&self) -> Vec<&str> {
        self.result
            .layers
            .iter()
            .filter(|l| !l.hit)
            .map(|l| l.name.as_str())
            .collect()
    }

    fn summary(&self) -> String {
        let (down, up, _) = self.bytes;
        format!(
            "==> {}: {} ({} of {} steps built, {} changes) in {:.1?}; {:.1} MB down, {:.1} MB up",
            self.status(),
            self.result.manifest,
            self.built().len(),
            self.result.layers.len(),
            self.changes.len(),
            self.timings[3],
            down as f64 / 1e6,
            up as f64 / 1e6
        )
    }

    fn report(&self, recipe: &std::path::Path, dest: &Reference) -> serde_json::Value {
        let (down, up, _) = self.bytes;
        let built = self.built();
        let [resolve, build, push, total] = self.timings;
        json!({
            "recipe": recipe,
            "reference": dest.to_string(),
            "status": self.status(),
            "changes": self.changes,
            "previous_digest": self.previous.map(|d| d.to_string()),
            "digest": self.result.manifest.to_string(),
            "platforms": self.result.platforms.iter().map(|p| json!({
                "platform": p.platform,
                "manifest": p.manifest,
            })).collect::<Vec<_>>(),
            "pushed_tags": self.tags,
            "steps": {
                "total": self.result.layers.len(),
                "built": built,
                "cached": self.result.layers.len() - built.len(),
                // Why each built step was built (`plan --explain`'s reasons).
                "why": self.result.layers.iter().filter(|l| !l.hit).map(|l| json!({
                    "step": l.name,
                    "why": l.why.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            },
            "timings_s": {
                "resolve": resolve.as_secs_f64(),
                "build": build.as_secs_f64(),
                "push": push.as_secs_f64(),
                "total": total.as_secs_f64(),
            },
            "bytes": { "downloaded": down, "uploaded": up },
        })
    }
}

/// Pushes the layout under `dest` (and its date tag with `--tag-date`); the tags pushed.
#[allow(clippy::too_many_arguments)]
fn push_tags(
    progress: &Progress,
    counting: &Counting,
    out: &std::path::Path,
    tag: Option<&str>,
    dest: &Reference,
    tag_date: bool,
    client: &registry::ClientOptions,
    cache: &imgbuild::cache::Cache,
    key: Option<&imgbuild::sigstore::SigningKey>,
) -> Result<Vec<String>> {
    let mut dests = vec![dest.clone()];
    if tag_date {
        dests.push(date_tagged(dest));
    }
    let mut tags = Vec::new();
    for d in dests {
        super::push::push_layout(progress, counting, out, tag, &d, client, Some(cache), key)?;
        tags.push(d.to_string());
    }
    Ok(tags)
}

/// The lock as the recipe resolves today (each platform's section for a multi-platform
/// recipe), written beside the recipe's lock (`NAME.lock.rebuild`) and a copy of the recipe
/// pointing at it; the changes since the lock of the last pushed image.
#[allow(clippy::type_complexity)]
fn stage_lock(
    loaded: &imgbuild::recipe::Loaded,
    cache: &imgbuild::cache::Cache,
    client: &registry::ClientOptions,
    mtime: u64,
    reporter: &dyn imgbuild::report::Reporter,
) -> Result<(
    Vec<String>,
    Option<(PathBuf, Vec<(imgbuild::recipe::Loaded, lock::Lock)>)>,
    imgbuild::recipe::Loaded,
)> {
    let mut staged = loaded.clone();
    if !lock::needed(loaded) {
        // The base is still pulled (and its signature checked) before the build.
        build::resolve_base(loaded, cache, client, reporter)?;
        return Ok((Vec::new(), None, staged));
    }
    let tmp = loaded.lock_path.with_extension("lock.rebuild");
    let _ = std::fs::remove_file(&tmp);
    let mut changes = Vec::new();
    let mut fresh_all = Vec::new();
    for view in loaded.per_platform() {
        let base = build::resolve_base(&view, cache, client, reporter)?;
        let prefix = view
            .lock_section
            .as_ref()
            .map(|p| format!("{p}: "))
            .unwrap_or_default();
        let old = lock::read_for(&view).ok().flatten();
        let fresh = build::resolve_lock(
            &view,
            &base,
            cache,
            mtime,
            true,
            &mut build::LiveRoot::default(),
            reporter,
        )?;
        let mut these = match &old {
            Some(o) => o.diff(&fresh),
            None => vec!["(no lock before: everything is new)".to_string()],
        };
        changes.extend(these.drain(..).map(|c| format!("{prefix}{c}")));
        lock::write_section(&tmp, view.lock_section.as_deref(), &fresh)?;
        fresh_all.push((view, fresh));
    }
    staged.lock_path = tmp.clone();
    Ok((changes, Some((tmp, fresh_all)), staged))
}

/// `HOST/REPO:TAG` -> `HOST/REPO:TAG-YYYYMMDD` (today, UTC).
fn date_tagged(dest: &Reference) -> Reference {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day: String = imgbuild::oci::image::rfc3339(now)[..10]
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let mut d = dest.clone();
    let base = d.tag.clone().unwrap_or_else(|| "latest".into());
    d.tag = Some(format!("{base}-{day}"));
    d
}
