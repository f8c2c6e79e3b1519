//! Why a step misses the cache: its definition and parent compared with the same step of the
//! last build of this recipe (for this platform) in this cache.
//!
//! After each build the plan is recorded ([`Record`], in the cache's `plans/` bucket under
//! [`record_id`]). A later plan's steps are matched to the recorded ones by what they are (the
//! definition's `kind` and its place among steps of that kind; apt layers by their bucket),
//! and a step whose key changed is explained by the first of:
//! - its own definition: a package version (`fixture-lib 1.2 -> 1.3`), a download's sha256, a
//!   file's digest (its source path named), or another recipe field;
//! - its parent: the root (base image digest, platform, compression, `SOURCE_DATE_EPOCH`) or
//!   the earlier step it builds on;
//! - nothing changed but its layer is gone from the cache (`cache gc`/`prune`);
//! - no record, or no such step last time: never built.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

mod diff;

use super::{Plan, Step};
use crate::canonical;
use crate::digest::Digest;
use diff::{definition, short_digest, show};

/// Bump when the record's meaning changes; an old record is then ignored ("never built").
const RECORD_VERSION: u32 = 1;

/// A plan as recorded after a build: enough to explain the next build's misses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub version: u32,
    pub root: Value,
    pub root_key: Digest,
    pub steps: Vec<RecordedStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordedStep {
    pub id: String,
    pub name: String,
    pub key: Digest,
    pub parent: Digest,
    pub def: Value,
}

/// Where the plan of `recipe` (its canonical path) for `platform` is recorded in a cache.
pub fn record_id(recipe: &std::path::Path, platform: &str) -> Digest {
    Digest::of(&canonical::encode(&json!({
        "recipe": recipe.to_string_lossy(),
        "platform": platform,
    })))
}

/// The record of `plan`.
pub fn record(plan: &Plan) -> Record {
    let ids = ids(&plan.steps);
    Record {
        version: RECORD_VERSION,
        root: plan.root.clone(),
        root_key: plan.root_key.clone(),
        steps: plan
            .steps
            .iter()
            .zip(ids)
            .map(|(s, id)| RecordedStep {
                id,
                name: s.name.clone(),
                key: s.key.clone(),
                parent: s.parent.clone(),
                def: s.def.clone(),
            })
            .collect(),
    }
}

/// Reads a record; `None` when it is not one this version wrote.
pub fn parse_record(bytes: &[u8]) -> Option<Record> {
    serde_json::from_slice::<Record>(bytes)
        .ok()
        .filter(|r| r.version == RECORD_VERSION)
}

/// One reason a step is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No build of this recipe is recorded in this cache.
    NeverBuilt,
    /// The last build had no such step.
    NewStep,
    /// The base image's manifest digest (or `scratch`).
    Base { from: String, to: String },
    /// A build setting under every step: platform, compression, `SOURCE_DATE_EPOCH`,
    /// imgbuild's layer format.
    Setting {
        what: String,
        from: String,
        to: String,
    },
    /// A package in the step (apt, pip): `None` for added or removed.
    Package {
        name: String,
        from: Option<String>,
        to: Option<String>,
    },
    Download {
        url: String,
        from: String,
        to: String,
    },
    /// A file's content: the recipe's source path (or the image path of an inline file).
    File {
        path: String,
        from: String,
        to: String,
    },
    /// Another field of the step's recipe entry.
    Field {
        field: String,
        from: String,
        to: String,
    },
    /// The step builds on an earlier one that changed (1-based, as `plan` numbers them).
    Earlier { step: usize, name: String },
    /// Same inputs as the last build, but the layer is no longer in the cache.
    Evicted,
}

impl Reason {
    /// A short tag for the kind of reason (`--metadata-file`, the `rebuild` report).
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::NeverBuilt | Reason::NewStep => "never-built",
            Reason::Base { .. } => "base",
            Reason::Setting { .. } => "setting",
            Reason::Package { .. } => "package",
            Reason::Download { .. } => "download",
            Reason::File { .. } => "file",
            Reason::Field { .. } => "field",
            Reason::Earlier { .. } => "earlier-step",
            Reason::Evicted => "evicted",
        }
    }

    /// `{"kind": ..., "text": ...}`.
    pub fn to_json(&self) -> Value {
        json!({"kind": self.kind(), "text": self.to_string()})
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NeverBuilt => write!(
                f,
                "never built (no earlier build of this recipe in this cache)"
            ),
            Reason::NewStep => write!(f, "never built (not a step of the last build)"),
            Reason::Base { from, to } => write!(f, "base image {from} -> {to}"),
            Reason::Setting { what, from, to } => write!(f, "{what} {from} -> {to}"),
            Reason::Package { name, from, to } => match (from, to) {
                (Some(a), Some(b)) => write!(f, "package {name} {a} -> {b}"),
                (None, Some(b)) => write!(f, "package {name} {b} added"),
                (Some(a), None) => write!(f, "package {name} {a} removed"),
                (None, None) => write!(f, "package {name}"),
            },
            Reason::Download { url, from, to } => write!(f, "download {url} {from} -> {to}"),
            Reason::File { path, from, to } => write!(f, "file {path} {from} -> {to}"),
            Reason::Field { field, from, to } => write!(f, "recipe field {field}: {from} -> {to}"),
            Reason::Earlier { step, name } => {
                write!(f, "builds on step {step} ({name}), which changed")
            }
            Reason::Evicted => write!(
                f,
                "inputs unchanged, but the layer is no longer in the cache"
            ),
        }
    }
}

/// Each step's identity for matching across builds: its definition's kind and its place among
/// steps of that kind (`run#2`); apt layers by their bucket (`apt layer 3`).
fn ids(steps: &[Step]) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    steps
        .iter()
        .map(|s| {
            let kind = s.def["kind"].as_str().unwrap_or("step").to_string();
            if kind == "apt-packages"
                && let Some((bucket, _)) = s.name.split_once(':')
            {
                return bucket.split('/').next().unwrap_or(bucket).to_string();
            }
            let n = seen.entry(kind.clone()).or_default();
            *n += 1;
            format!("{kind}#{n}")
        })
        .collect()
}

/// Why each step of `plan` would be built: one list per step, empty for a step whose key the
/// last build had. `prev` is the last build's record; `cached` says whether a key's layer is
/// in the cache (a step with an unchanged key and no layer was evicted).
pub fn explain(
    prev: Option<&Record>,
    plan: &Plan,
    cached: impl Fn(&Digest) -> bool,
    trees: impl Fn(&Digest) -> Option<Vec<u8>>,
) -> Vec<Vec<Reason>> {
    let ids = ids(&plan.steps);
    let by_id: BTreeMap<&str, &RecordedStep> = prev
        .map(|r| r.steps.iter().map(|s| (s.id.as_str(), s)).collect())
        .unwrap_or_default();
    let mut out: Vec<Vec<Reason>> = Vec::with_capacity(plan.steps.len());
    for (i, (step, id)) in plan.steps.iter().zip(&ids).enumerate() {
        let Some(prev) = prev else {
            out.push(if cached(&step.key) {
                Vec::new()
            } else {
                vec![Reason::NeverBuilt]
            });
            continue;
        };
        let Some(old) = by_id.get(id.as_str()) else {
            out.push(vec![Reason::NewStep]);
            continue;
        };
        if old.key == step.key {
            out.push(if cached(&step.key) {
                Vec::new()
            } else {
                vec![Reason::Evicted]
            });
            continue;
        }
        let mut why = definition(id, step, &old.def, &trees);
        if old.parent != step.parent {
            why.extend(parent(prev, plan, i, &out));
        }
        if why.is_empty() {
            // The key changed, but neither the definition nor the parent did as far as can be
            // told (a record from another imgbuild): say what is certain.
            why.push(Reason::Field {
                field: id.clone(),
                from: short_digest(&old.key),
                to: short_digest(&step.key),
            });
        }
        out.push(why);
    }
    out
}

/// Why the parent of step `i` changed: the root, or the earlier step it builds on.
fn parent(prev: &Record, plan: &Plan, i: usize, so_far: &[Vec<Reason>]) -> Vec<Reason> {
    let step = &plan.steps[i];
    if step.parent == plan.root_key {
        return root(&prev.root, &plan.root);
    }
    let earlier = plan.steps[..i]
        .iter()
        .rposition(|s| s.key == step.parent)
        // The dpkg database builds on all package layers together: the last that changed.
        .or_else(|| so_far.iter().rposition(|w| !w.is_empty()));
    match earlier {
        Some(j) => vec![Reason::Earlier {
            step: j + 1,
            name: plan.steps[j].name.clone(),
        }],
        None => Vec::new(),
    }
}

/// What differs between two root documents.
fn root(old: &Value, new: &Value) -> Vec<Reason> {
    let mut out = Vec::new();
    for (key, what) in [
        ("base", "base"),
        ("platform", "platform"),
        ("compression", "layer compression"),
        ("mtime", "SOURCE_DATE_EPOCH"),
        ("format", "imgbuild's layer format"),
    ] {
        if old[key] != new[key] {
            let (from, to) = (show(&old[key]), show(&new[key]));
            out.push(if key == "base" {
                Reason::Base { from, to }
            } else {
                Reason::Setting {
                    what: what.into(),
                    from,
                    to,
                }
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{DownloadTarget, FileSource, PlannedDownload, StepKind};
    use crate::recipe::FieldPath;

    fn step(name: &str, parent: &Digest, def: Value) -> Step {
        Step {
            kind: StepKind::Symlinks(Vec::new()),
            name: name.into(),
            key: Digest::of(&canonical::encode(&json!({"p": parent, "d": def}))),
            parent: parent.clone(),
            def,
        }
    }

    fn plan(root: Value, defs: &[(&str, Value)]) -> Plan {
        let root_key = Digest::of(&canonical::encode(&root));
        let mut steps: Vec<Step> = Vec::new();
        for (name, def) in defs {
            let parent = steps.last().map_or(root_key.clone(), |s| s.key.clone());
            steps.push(step(name, &parent, def.clone()));
        }
        Plan {
            root_key,
            root,
            steps,
            compression: crate::layer::CompressionSpec::new(Default::default(), None),
            mtime: 0,
            pip_unpinned: false,
        }
    }

    fn no_trees(_: &Digest) -> Option<Vec<u8>> {
        None
    }

    fn root(base: &str, mtime: u64) -> Value {
        json!({"format": 3, "platform": "linux/amd64", "base": base, "compression": "gzip", "mtime": mtime})
    }

    #[test]
    fn each_kind_of_change_is_named() {
        let pkgs = |v: &str| json!({"kind": "apt-packages", "packages": [["fixture-lib", v, "amd64", "sha256:aa"], ["fixture-doc", "1", "all", "sha256:bb"]]});
        let run = |c: &str| json!({"kind": "run", "command": c, "user": null});
        let old = plan(
            root("scratch", 1),
            &[
                ("apt layer 1/4: fixture-lib", pkgs("1.2")),
                ("run a", run("a")),
                ("run b", run("b")),
            ],
        );
        let rec = record(&old);
        let all = |_: &Digest| false;

        // Nothing changed, nothing cached: evicted.
        let why = explain(Some(&rec), &old, all, no_trees);
        assert!(why.iter().all(|w| w == &vec![Reason::Evicted]), "{why:?}");
        // Nothing changed, all cached: nothing to say.
        assert!(
            explain(Some(&rec), &old, |_| true, no_trees)
                .iter()
                .all(Vec::is_empty)
        );

        let new = plan(
            root("scratch", 1),
            &[
                ("apt layer 1/4: fixture-lib", pkgs("1.3")),
                ("run a", run("a")),
                ("run b", run("c")),
            ],
        );
        let why = explain(Some(&rec), &new, all, no_trees);
        assert_eq!(
            why[0],
            vec![Reason::Package {
                name: "fixture-lib".into(),
                from: Some("1.2".into()),
                to: Some("1.3".into())
            }]
        );
        assert_eq!(why[0][0].to_string(), "package fixture-lib 1.2 -> 1.3");
        assert_eq!(
            why[1],
            vec![Reason::Earlier {
                step: 1,
                name: "apt layer 1/4: fixture-lib".into()
            }]
        );
        assert_eq!(why[2][0].to_string(), "recipe field run[1].command: b -> c");
        assert!(why[2].contains(&Reason::Earlier {
            step: 2,
            name: "run a".into()
        }));

        let rebased = plan(
            root(
                "sha256:0000000000000000000000000000000000000000000000000000000000000001",
                2,
            ),
            &[("apt layer 1/4: fixture-lib", pkgs("1.2"))],
        );
        let why = explain(Some(&rec), &rebased, all, no_trees);
        assert_eq!(
            why[0][0].to_string(),
            "base image scratch -> sha256:000000000000"
        );
        assert_eq!(why[0][1].to_string(), "SOURCE_DATE_EPOCH 1 -> 2");

        let more = plan(
            root("scratch", 1),
            &[
                ("apt layer 1/4: fixture-lib", pkgs("1.2")),
                ("run a", run("a")),
                ("run b", run("b")),
                ("run d", run("d")),
            ],
        );
        assert_eq!(
            explain(Some(&rec), &more, all, no_trees)[3],
            vec![Reason::NewStep]
        );
        assert_eq!(
            explain(None, &more, all, no_trees)[0],
            vec![Reason::NeverBuilt]
        );
    }

    #[test]
    fn downloads_and_files_name_the_url_and_the_source_path() {
        let mut old = plan(
            root("scratch", 1),
            &[(
                "download",
                json!({"kind": "download", "sha256": "sha256:1111", "dest": "/x"}),
            )],
        );
        let mut new = plan(
            root("scratch", 1),
            &[(
                "download",
                json!({"kind": "download", "sha256": "sha256:2222", "dest": "/x"}),
            )],
        );
        for p in [&mut old, &mut new] {
            p.steps[0].kind = StepKind::Download(PlannedDownload {
                url: "http://127.0.0.1/go.tgz".into(),
                sha256: Digest::of(b""),
                signature: None,
                target: DownloadTarget::File {
                    dest: "/x".into(),
                    mode: 0o644,
                },
                owner: None,
                field: FieldPath::root(),
            });
        }
        let why = explain(Some(&record(&old)), &new, |_| false, no_trees);
        assert_eq!(
            why[0][0].to_string(),
            "download http://127.0.0.1/go.tgz sha256:1111 -> sha256:2222"
        );

        let files = |sha: &str, mode: u32| json!({"kind": "files", "files": [{"dest": "/etc/motd", "sha256": sha, "mode": mode, "owner": null}]});
        let old = plan(root("scratch", 1), &[("files", files("sha256:aa", 420))]);
        let mut new = plan(root("scratch", 1), &[("files", files("sha256:bb", 384))]);
        new.steps[0].kind = StepKind::Files(vec![crate::plan::PlannedFile {
            dest: "/etc/motd".into(),
            source: FileSource::Path("recipes/files/motd".into()),
            size: 1,
            digest: Digest::of(b""),
            mode: 0o600,
            owner: None,
            field: FieldPath::root(),
            append: false,
            mode_set: true,
        }]);
        let why: Vec<String> = explain(Some(&record(&old)), &new, |_| false, no_trees)[0]
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            why,
            [
                "file recipes/files/motd (/etc/motd) sha256:aa -> sha256:bb",
                "recipe field file /etc/motd mode: 420 -> 384"
            ]
        );
    }

    #[test]
    fn records_round_trip_and_other_versions_are_ignored() {
        let p = plan(
            root("scratch", 1),
            &[("run a", json!({"kind": "run", "command": "a"}))],
        );
        let r = record(&p);
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(parse_record(&bytes), Some(r.clone()));
        let mut other = r;
        other.version = 99;
        assert_eq!(parse_record(&serde_json::to_vec(&other).unwrap()), None);
        assert_eq!(parse_record(b"\xff not json"), None);
    }
}
