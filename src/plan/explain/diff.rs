//! What differs between a step's definition and the recorded one: packages, downloads, files
//! (named by their source paths), copied directories' files, other recipe fields.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Reason;
use crate::digest::Digest;
use crate::plan::{FileSource, Step, StepKind};

/// What differs in a step's own definition.
pub(super) fn definition(
    id: &str,
    step: &Step,
    old: &Value,
    trees: &impl Fn(&Digest) -> Option<Vec<u8>>,
) -> Vec<Reason> {
    let new = &step.def;
    if new == old {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut handled = vec!["kind"];
    // A copied directory: the files that changed, when the last listing is still cached.
    if let StepKind::Copy(cp) = &step.kind
        && old["tree"] != new["tree"]
        && let Some(before) = old["tree"]
            .as_str()
            .and_then(|d| Digest::parse(d).ok())
            .and_then(|d| trees(&d))
            .and_then(|b| crate::srctree::decode_listing(&b))
    {
        handled.push("tree");
        out.extend(copied_files(&cp.src, &before, &cp.listing.entries));
    }
    if new.get("packages").is_some() || new.get("wheels").is_some() {
        let key = if new.get("wheels").is_some() {
            "wheels"
        } else {
            "packages"
        };
        handled.push(key);
        out.extend(packages(&old[key], &new[key]));
    }
    if let (StepKind::Download(d), Some(sha)) = (&step.kind, new.get("sha256")) {
        handled.push("sha256");
        if old["sha256"] != *sha {
            out.push(Reason::Download {
                url: d.url.clone(),
                from: show(&old["sha256"]),
                to: show(sha),
            });
        }
    }
    if let Some(files) = new["files"].as_array() {
        handled.push("files");
        out.extend(file_changes(id, step, old["files"].as_array(), files));
    }
    // Every other field, compared as a whole.
    if let (Some(n), Some(o)) = (new.as_object(), old.as_object()) {
        let keys: std::collections::BTreeSet<&String> = n.keys().chain(o.keys()).collect();
        for k in keys {
            if handled.contains(&k.as_str()) {
                continue;
            }
            let (a, b) = (
                o.get(k).unwrap_or(&Value::Null),
                n.get(k).unwrap_or(&Value::Null),
            );
            if a != b {
                out.push(Reason::Field {
                    field: field_name(id, k),
                    from: show(a),
                    to: show(b),
                });
            }
        }
    }
    out
}

/// A field of a step as the recipe spells it where it can (`run[1].command`: runs are one
/// step each), else the step's kind and the key (`users.users`).
fn field_name(id: &str, key: &str) -> String {
    match id.split_once('#') {
        Some(("run", n)) => {
            let i = n.parse::<usize>().unwrap_or(1).saturating_sub(1);
            format!("run[{i}].{key}")
        }
        Some((kind, _)) => format!("{kind}.{key}"),
        None => format!("{id}.{key}"),
    }
}

/// Package changes between two lists: `[name, version, ...]` arrays (apt, pip) or
/// `{"name", "version", ...}` objects (build packages). A package whose version stayed but whose
/// file changed (a rebuild) shows its digests.
fn packages(old: &Value, new: &Value) -> Vec<Reason> {
    fn map(v: &Value) -> BTreeMap<String, (String, String)> {
        let mut m = BTreeMap::new();
        for p in v.as_array().into_iter().flatten() {
            let (name, version, arch, sha) = match p {
                Value::Array(a) => (
                    show_plain(a.first()),
                    show_plain(a.get(1)),
                    if a.len() > 3 {
                        show_plain(a.get(2))
                    } else {
                        String::new()
                    },
                    show_plain(a.last()),
                ),
                Value::Object(_) => (
                    show_plain(p.get("name")),
                    show_plain(p.get("version")),
                    show_plain(p.get("arch")),
                    show_plain(p.get("sha256")),
                ),
                _ => continue,
            };
            let key = if arch.is_empty() || arch == "all" {
                name
            } else {
                format!("{name}:{arch}")
            };
            m.insert(key, (version, sha));
        }
        m
    }
    let (a, b) = (map(old), map(new));
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        let shown = name.strip_suffix(":amd64").unwrap_or(name).to_string();
        match (a.get(name), b.get(name)) {
            (Some((va, _)), Some((vb, _))) if va != vb => out.push(Reason::Package {
                name: shown,
                from: Some(va.clone()),
                to: Some(vb.clone()),
            }),
            (Some((va, sa)), Some((_, sb))) if sa != sb => out.push(Reason::Package {
                name: shown,
                from: Some(format!("{va} ({})", short(sa))),
                to: Some(format!("{va} ({})", short(sb))),
            }),
            (None, Some((vb, _))) => out.push(Reason::Package {
                name: shown,
                from: None,
                to: Some(vb.clone()),
            }),
            (Some((va, _)), None) => out.push(Reason::Package {
                name: shown,
                from: Some(va.clone()),
                to: None,
            }),
            _ => {}
        }
    }
    out
}

/// At most this many changed files are named per copied directory.
const COPY_SHOWN: usize = 20;

/// The files (and symlinks, directories) that differ between two listings of `src`.
fn copied_files(
    src: &str,
    before: &[crate::srctree::Entry],
    after: &[crate::srctree::Entry],
) -> Vec<Reason> {
    use crate::srctree::Kind;
    let show_kind = |k: &Kind| match k {
        Kind::Dir => "directory".to_string(),
        Kind::File { digest, .. } => short_digest(digest),
        Kind::Symlink(t) => format!("-> {}", String::from_utf8_lossy(t)),
    };
    let a: BTreeMap<&[u8], &crate::srctree::Entry> =
        before.iter().map(|e| (e.rel.as_slice(), e)).collect();
    let b: BTreeMap<&[u8], &crate::srctree::Entry> =
        after.iter().map(|e| (e.rel.as_slice(), e)).collect();
    let names: std::collections::BTreeSet<&[u8]> = a.keys().chain(b.keys()).copied().collect();
    let mut out = Vec::new();
    let mut more = 0usize;
    for rel in names {
        let path = format!(
            "{}/{}",
            src.trim_end_matches('/'),
            String::from_utf8_lossy(rel)
        );
        let reason = match (a.get(rel), b.get(rel)) {
            (Some(x), Some(y)) if x.kind != y.kind => Reason::File {
                path,
                from: show_kind(&x.kind),
                to: show_kind(&y.kind),
            },
            (Some(x), Some(y)) if x.exec != y.exec => Reason::Field {
                field: format!("{path} executable"),
                from: x.exec.to_string(),
                to: y.exec.to_string(),
            },
            (None, Some(y)) => Reason::File {
                path,
                from: "absent".into(),
                to: show_kind(&y.kind),
            },
            (Some(x), None) => Reason::File {
                path,
                from: show_kind(&x.kind),
                to: "removed".into(),
            },
            _ => continue,
        };
        if out.len() < COPY_SHOWN {
            out.push(reason);
        } else {
            more += 1;
        }
    }
    if more > 0 {
        out.push(Reason::Field {
            field: format!("{src}: {more} more entries"),
            from: "...".into(),
            to: "changed".into(),
        });
    }
    out
}

/// File changes between two `files` lists (by destination): content digests named by the
/// recipe's source path, other fields as recipe fields.
fn file_changes(id: &str, step: &Step, old: Option<&Vec<Value>>, new: &[Value]) -> Vec<Reason> {
    let olds: BTreeMap<String, &Value> = old
        .into_iter()
        .flatten()
        .map(|f| (show_plain(f.get("dest")), f))
        .collect();
    let news: BTreeMap<String, &Value> =
        new.iter().map(|f| (show_plain(f.get("dest")), f)).collect();
    // The recipe's source path of each destination, when the step knows it.
    let source = |dest: &str| -> String {
        if let StepKind::Files(files) = &step.kind
            && let Some(f) = files.iter().find(|f| f.dest == dest)
            && let FileSource::Path(p) = &f.source
        {
            return format!("{} ({dest})", p.display());
        }
        dest.to_string()
    };
    let what = match id.split('#').next().unwrap_or(id) {
        "files" => "file",
        "apt-sources" => "apt.sources",
        other => other,
    };
    let mut out = Vec::new();
    let dests: std::collections::BTreeSet<&String> = olds.keys().chain(news.keys()).collect();
    for dest in dests {
        match (olds.get(dest), news.get(dest)) {
            (Some(a), Some(b)) => {
                if a.get("sha256") != b.get("sha256") {
                    out.push(Reason::File {
                        path: source(dest),
                        from: show(&a["sha256"]),
                        to: show(&b["sha256"]),
                    });
                }
                for (k, v) in b.as_object().into_iter().flatten() {
                    if k != "sha256" && k != "dest" && a.get(k) != Some(v) {
                        out.push(Reason::Field {
                            field: format!("{what} {dest} {k}"),
                            from: show(a.get(k).unwrap_or(&Value::Null)),
                            to: show(v),
                        });
                    }
                }
            }
            (None, Some(_)) => out.push(Reason::Field {
                field: format!("{what} {dest}"),
                from: "absent".into(),
                to: "added".into(),
            }),
            (Some(_), None) => out.push(Reason::Field {
                field: format!("{what} {dest}"),
                from: "present".into(),
                to: "removed".into(),
            }),
            (None, None) => {}
        }
    }
    out
}

/// A value as shown in a reason: strings bare (digests shortened), other JSON compact, long
/// values cut.
pub(super) fn show(v: &Value) -> String {
    let s = match v {
        Value::String(s) => short(s),
        Value::Null => "none".into(),
        other => other.to_string(),
    };
    if s.chars().count() > 80 {
        let cut: String = s.chars().take(77).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn show_plain(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// `sha256:` digests cut to 12 hex digits; anything else as it is.
fn short(s: &str) -> String {
    match s.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 => format!("sha256:{}", &hex[..12]),
        _ => s.to_string(),
    }
}

pub(super) fn short_digest(d: &Digest) -> String {
    short(&d.to_string())
}
