//! The packages a build can choose from: every paragraph of the sources' `Packages` indexes,
//! plus what the base image has installed (its dpkg `status`).

use std::collections::HashMap;

use super::control::{self, ControlError, Paragraph};
use super::relation::{Dep, Relation, Version, parse_relations};

/// A package paragraph of an index that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParagraphError(pub String);

impl From<String> for ParagraphError {
    fn from(m: String) -> Self {
        ParagraphError(m)
    }
}

impl From<&str> for ParagraphError {
    fn from(m: &str) -> Self {
        ParagraphError(m.to_string())
    }
}

/// One binary package of an index.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: Version,
    pub arch: String,
    /// Parsed, not used yet: resolving for a foreign architecture will need it.
    #[allow(dead_code)]
    pub multi_arch: Option<String>,
    pub source: String,
    pub essential: bool,
    pub priority: String,
    pub depends: Vec<Relation>,
    pub pre_depends: Vec<Relation>,
    pub recommends: Vec<Relation>,
    pub conflicts: Vec<Dep>,
    pub breaks: Vec<Dep>,
    pub provides: Vec<Dep>,
    /// Path below the source's URI.
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// Index of the source (repository) it came from; the base image's packages have none.
    pub repo: Option<usize>,
}

impl Package {
    /// The source package name, without its version.
    pub fn source_name(&self) -> &str {
        self.source.split_whitespace().next().unwrap_or(&self.name)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct IndexError {
    pub what: String,
    pub message: String,
}

fn relations(p: &Paragraph<'_>, field: &str) -> Result<Vec<Relation>, ParagraphError> {
    p.get(field)
        .map(parse_relations)
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|e| ParagraphError(format!("{field}: {e}")))
}

fn flat(p: &Paragraph<'_>, field: &str) -> Result<Vec<Dep>, ParagraphError> {
    Ok(relations(p, field)?.into_iter().flat_map(|r| r.0).collect())
}

/// Reads one package paragraph. `index` says whether download fields are required.
pub fn package(p: &Paragraph<'_>, repo: Option<usize>) -> Result<Package, ParagraphError> {
    let get = |f: &str| p.require(f).map_err(|e: ControlError| e.message);
    let name = get("Package")?.to_string();
    let vs = get("Version")?;
    let version: Version = vs
        .parse()
        .map_err(|e| format!("package {name}: bad version `{vs}`: {e}"))?;
    let with = |e: ParagraphError| format!("package {name}: {e}");
    Ok(Package {
        arch: p.get("Architecture").unwrap_or("all").to_string(),
        multi_arch: p.get("Multi-Arch").map(str::to_string),
        source: p.get("Source").unwrap_or(&name).to_string(),
        essential: p.get("Essential") == Some("yes"),
        priority: p.get("Priority").unwrap_or("optional").to_string(),
        depends: relations(p, "Depends").map_err(with)?,
        pre_depends: relations(p, "Pre-Depends").map_err(with)?,
        recommends: relations(p, "Recommends").map_err(with)?,
        conflicts: flat(p, "Conflicts").map_err(with)?,
        breaks: flat(p, "Breaks").map_err(with)?,
        provides: flat(p, "Provides").map_err(with)?,
        filename: if repo.is_some() {
            get("Filename")?.to_string()
        } else {
            String::new()
        },
        size: p.get("Size").and_then(|s| s.parse().ok()).unwrap_or(0),
        sha256: p.get("SHA256").unwrap_or_default().to_string(),
        repo,
        version,
        name,
    })
}

/// All candidate packages, by name, and the names each virtual package is provided by.
#[derive(Debug, Default)]
pub struct Universe {
    pub packages: Vec<Package>,
    by_name: HashMap<String, Vec<usize>>,
    providers: HashMap<String, Vec<usize>>,
    /// The native architecture (`amd64`).
    pub arch: String,
    /// apt's pin priority of each repository: 500, or 1 for a `NotAutomatic` release such as
    /// backports (used only when asked for, or when nothing else satisfies a dependency).
    priority: HashMap<usize, i32>,
    /// apt's package IDs: the order in which its cache generator first meets each name, as
    /// a package or as the target of a relation or `Provides` (the last tie-breaker between
    /// providers of a virtual package: the higher ID wins).
    ids: HashMap<String, usize>,
}

/// The relation fields in the order apt's list parser reads them, then `Provides`.
const MENTION_FIELDS: [&str; 9] = [
    "Pre-Depends",
    "Depends",
    "Conflicts",
    "Breaks",
    "Recommends",
    "Suggests",
    "Replaces",
    "Enhances",
    "Provides",
];

impl Universe {
    pub fn new(arch: &str) -> Self {
        Universe {
            arch: arch.to_string(),
            ..Default::default()
        }
    }

    /// Adds the packages of a `Packages` index (only this architecture and `all`).
    pub fn add_index(&mut self, text: &str, repo: usize, what: &str) -> Result<(), IndexError> {
        let err = |message: String| IndexError {
            what: what.to_string(),
            message,
        };
        for p in control::parse(text).map_err(|e| err(e.to_string()))? {
            let arch = p.get("Architecture").unwrap_or("all");
            if arch != self.arch && arch != "all" {
                continue;
            }
            let pkg = package(&p, Some(repo)).map_err(|m| err(format!("line {}: {m}", p.line)))?;
            self.mention(&pkg.name);
            for field in MENTION_FIELDS {
                for atom in p.get(field).unwrap_or_default().split([',', '|']) {
                    // `name:any (>= 1) [arch] <profile>`: the name is the first word.
                    if let Some(name) = atom
                        .split([' ', '(', '[', '<', ':'])
                        .find(|w| !w.is_empty())
                    {
                        self.mention(name.trim());
                    }
                }
            }
            self.add(pkg);
        }
        Ok(())
    }

    pub fn add(&mut self, pkg: Package) {
        let i = self.packages.len();
        self.by_name.entry(pkg.name.clone()).or_default().push(i);
        for p in &pkg.provides {
            self.providers.entry(p.name.clone()).or_default().push(i);
        }
        self.packages.push(pkg);
    }

    fn mention(&mut self, name: &str) {
        let next = self.ids.len();
        self.ids.entry(name.to_string()).or_insert(next);
    }

    /// apt's package ID of `name`; a name no index mentions (only the base image's dpkg
    /// status has it, which apt reads last) ranks after all of them.
    pub fn id(&self, name: &str) -> usize {
        self.ids.get(name).copied().unwrap_or(usize::MAX)
    }

    /// Sets the pin priority of repository `repo`.
    pub fn set_priority(&mut self, repo: usize, priority: i32) {
        self.priority.insert(repo, priority);
    }

    fn prio(&self, p: &Package) -> i32 {
        p.repo
            .and_then(|r| self.priority.get(&r).copied())
            .unwrap_or(500)
    }

    /// Versions of `name`, best first, as apt picks its candidate: highest pin priority, then
    /// highest version, then the earlier source.
    pub fn versions(&self, name: &str) -> Vec<&Package> {
        let mut v: Vec<&Package> = self
            .by_name
            .get(name)
            .map(|ix| ix.iter().map(|i| &self.packages[*i]).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| {
            self.prio(b)
                .cmp(&self.prio(a))
                .then(b.version.cmp(&a.version))
                .then(a.repo.cmp(&b.repo))
        });
        v
    }

    /// Packages that provide `name` (virtual): providing packages in index order of their
    /// first appearance, each one's versions in candidate order (as [`Universe::versions`]),
    /// so a newer version of a provider is preferred as apt prefers its candidate.
    pub fn providers(&self, name: &str) -> Vec<&Package> {
        let all: Vec<&Package> = self
            .providers
            .get(name)
            .map(|ix| ix.iter().map(|i| &self.packages[*i]).collect())
            .unwrap_or_default();
        let mut names: Vec<&str> = Vec::new();
        for p in &all {
            if !names.contains(&p.name.as_str()) {
                names.push(&p.name);
            }
        }
        names
            .into_iter()
            .flat_map(|n| {
                self.versions(n)
                    .into_iter()
                    .filter(|v| all.iter().any(|a| std::ptr::eq(*a, *v)))
            })
            .collect()
    }

    /// Names of all packages, sorted.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        let mut v: Vec<&String> = self.by_name.keys().collect();
        v.sort();
        v.into_iter()
    }
}

/// Parses a dpkg `status` file: packages in state `installed` (or unpacked, half-configured...),
/// as the base image has them.
pub fn installed(status: &str) -> Result<Vec<Package>, ParagraphError> {
    let mut out = Vec::new();
    for p in control::parse(status).map_err(|e| e.to_string())? {
        let st = p.get("Status").unwrap_or_default();
        if st.ends_with(" not-installed") || st.ends_with(" config-files") || st.is_empty() {
            continue;
        }
        out.push(package(&p, None).map_err(|m| format!("line {}: {m}", p.line))?);
    }
    Ok(out)
}
