//! dpkg's database as dpkg itself leaves it after unpacking packages: `status` paragraphs
//! (fields in dpkg's order, `Status: install ok unpacked`, new conffiles marked
//! `newconffile`), and the trigger interest registry (`triggers/File`, `triggers/NAME`).
//! `dpkg --configure -a` then takes it from there.

use std::collections::BTreeMap;

use super::control::{self, Paragraph};

/// Dpkg's status cannot be written from these packages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StatusError(pub String);

impl From<String> for StatusError {
    fn from(m: String) -> Self {
        StatusError(m)
    }
}

impl From<&str> for StatusError {
    fn from(m: &str) -> Self {
        StatusError(m.to_string())
    }
}

/// Field order of dpkg's `status` file (dpkg's `fieldinfos`); other fields follow in the
/// order the package has them.
const ORDER: &[&str] = &[
    "Package",
    "Essential",
    "Protected",
    "Status",
    "Priority",
    "Section",
    "Installed-Size",
    "Origin",
    "Maintainer",
    "Bugs",
    "Architecture",
    "Multi-Arch",
    "Source",
    "Version",
    "Config-Version",
    "Replaces",
    "Provides",
    "Depends",
    "Pre-Depends",
    "Recommends",
    "Suggests",
    "Breaks",
    "Conflicts",
    "Enhances",
    "Conffiles",
    "Description",
    "Triggers-Pending",
    "Triggers-Awaited",
];

/// A package newly unpacked: its control file and conffiles.
pub struct Unpacked<'a> {
    pub control: &'a str,
    pub conffiles: Vec<String>,
}

fn render(fields: &[(String, String)]) -> String {
    let mut out = String::new();
    let rank = |k: &str| {
        ORDER
            .iter()
            .position(|o| o.eq_ignore_ascii_case(k))
            .unwrap_or(ORDER.len())
    };
    let mut sorted: Vec<&(String, String)> = fields.iter().collect();
    sorted.sort_by_key(|(k, _)| rank(k));
    for (k, v) in sorted {
        if v.starts_with('\n') {
            out.push_str(&format!("{k}:{v}\n"));
        } else {
            out.push_str(&format!("{k}: {v}\n"));
        }
    }
    out
}

fn owned(p: &Paragraph<'_>) -> Vec<(String, String)> {
    p.fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn id(p: &[(String, String)]) -> (String, String) {
    let get = |f: &str| {
        p.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(f))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let arch = if get("Multi-Arch") == "same" {
        get("Architecture")
    } else {
        String::new()
    };
    (get("Package"), arch)
}

/// The `status` file: the base image's entries (minus those replaced) and the new packages.
pub fn status(base: Option<&str>, new: &[Unpacked<'_>]) -> Result<String, StatusError> {
    let mut all: BTreeMap<(String, String), String> = BTreeMap::new();
    if let Some(b) = base {
        for p in control::parse(b).map_err(|e| format!("base image dpkg status: {e}"))? {
            let f = owned(&p);
            all.insert(id(&f), render(&f));
        }
    }
    for u in new {
        let ps = control::parse(u.control).map_err(|e| format!("control file: {e}"))?;
        let p = ps.first().ok_or("empty control file")?;
        let mut f = owned(p);
        f.retain(|(k, _)| !k.eq_ignore_ascii_case("Status"));
        f.push(("Status".into(), "install ok unpacked".into()));
        if !u.conffiles.is_empty() {
            let lines: String = u
                .conffiles
                .iter()
                .map(|c| format!("\n {c} newconffile"))
                .collect();
            f.push(("Conffiles".into(), lines));
        }
        all.insert(id(&f), render(&f));
    }
    Ok(all.into_values().collect::<Vec<_>>().join("\n"))
}

/// Trigger interests declared by packages (`triggers` control files): the contents of
/// `triggers/File` and of each `triggers/NAME`, merged with what the base image had.
pub fn trigger_registry(
    base_file: Option<&str>,
    base_named: &dyn Fn(&str) -> Option<String>,
    packages: &[(String, String)],
) -> BTreeMap<String, String> {
    let mut file: Vec<String> = base_file
        .map(|f| f.lines().map(str::to_string).collect())
        .unwrap_or_default();
    let mut named: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (pkg, triggers) in packages {
        for line in triggers.lines() {
            let mut it = line.split_whitespace();
            let (Some(kw), Some(name)) = (it.next(), it.next()) else {
                continue;
            };
            let who = match kw {
                "interest" | "interest-await" => pkg.clone(),
                "interest-noawait" => format!("{pkg}/noawait"),
                _ => continue,
            };
            if name.starts_with('/') {
                file.push(format!("{name} {who}"));
            } else {
                named.entry(name.to_string()).or_default().push(who);
            }
        }
    }
    file.sort();
    file.dedup();
    let mut out = BTreeMap::new();
    if !file.is_empty() {
        out.insert("File".to_string(), file.join("\n") + "\n");
    }
    for (name, mut who) in named {
        if let Some(b) = base_named(&name) {
            who.extend(b.lines().map(str::to_string));
        }
        who.sort();
        who.dedup();
        out.insert(name, who.join("\n") + "\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_merges_orders_and_marks_unpacked() {
        let base = "Package: zlib\nStatus: install ok installed\nVersion: 1\n\nPackage: old\nStatus: install ok installed\nVersion: 1\n";
        let new = [Unpacked {
            control: "Package: old\nVersion: 2\nArchitecture: amd64\nMaintainer: m\nDescription: d\n more\nHomepage: h\n",
            conffiles: vec!["/etc/old.conf".into()],
        }];
        let s = status(Some(base), &new).unwrap();
        assert_eq!(
            s,
            "Package: old\nStatus: install ok unpacked\nMaintainer: m\nArchitecture: amd64\nVersion: 2\nConffiles:\n /etc/old.conf newconffile\nDescription: d\n more\nHomepage: h\n\nPackage: zlib\nStatus: install ok installed\nVersion: 1\n"
        );
        // What dpkg writes parses back.
        assert_eq!(control::parse(&s).unwrap().len(), 2);
    }

    #[test]
    fn triggers_registry() {
        let r = trigger_registry(
            Some("/usr/lib/x base"),
            &|n| (n == "ldconfig").then(|| "libc-bin\n".to_string()),
            &[
                ("man-db".into(), "interest-noawait /usr/share/man\n".into()),
                ("libc-bin".into(), "interest-noawait ldconfig\n".into()),
            ],
        );
        assert_eq!(
            r["File"],
            "/usr/lib/x base\n/usr/share/man man-db/noawait\n"
        );
        assert_eq!(r["ldconfig"], "libc-bin\nlibc-bin/noawait\n");
    }
}
