//! Dependency resolution, the way apt does it: requested packages are marked first, then each
//! one's `Pre-Depends` and `Depends` are satisfied depth first, taking the first alternative
//! that can be installed (backtracking to the next when it cannot), highest version first.
//!
//! Written here rather than mapped onto a SAT solver (resolvo): for a bootstrap to list the
//! same packages as `mmdebstrap`/apt, the choice among alternatives must be apt's ("first
//! one that works"), not a solver's minimal or arbitrary model.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::relation::{Dep, Relation};
use super::universe::{Package, Universe};

#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `name` or `name=version`.
    pub packages: Vec<String>,
    /// Also every `Essential: yes` and `Priority: required` package, and apt (minbase).
    pub minbase: bool,
    pub recommends: bool,
    /// Upgrade what the base image has installed when a newer version is available.
    pub upgrade: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ResolveError(pub String);

struct State<'u> {
    u: &'u Universe,
    installed: HashMap<&'u str, &'u Package>,
    selected: BTreeMap<&'u str, &'u Package>,
    recommends: bool,
}

/// What `dep` is satisfied by among `pkgs`, by name or by a matching `Provides`.
fn satisfies(p: &Package, dep: &Dep) -> bool {
    if p.name == dep.name && dep.allows(&p.version) {
        return true;
    }
    p.provides.iter().any(|pr| {
        pr.name == dep.name
            && match (&dep.constraint, &pr.constraint) {
                (None, _) => true,
                // An unversioned Provides never satisfies a versioned dependency.
                (Some(_), None) => false,
                (Some(_), Some((_, v))) => dep.allows(v),
            }
    })
}

impl<'u> State<'u> {
    /// The package that will be on the system under `name`: selected, else installed.
    fn current(&self, name: &str) -> Option<&'u Package> {
        self.selected
            .get(name)
            .or_else(|| self.installed.get(name))
            .copied()
    }

    fn present(&self) -> impl Iterator<Item = &'u Package> + '_ {
        self.selected.values().copied().chain(
            self.installed
                .values()
                .copied()
                .filter(|p| !self.selected.contains_key(p.name.as_str())),
        )
    }

    fn have(&self, dep: &Dep) -> bool {
        self.present().any(|p| satisfies(p, dep))
    }

    fn candidates(&self, dep: &Dep) -> Vec<&'u Package> {
        let mut c: Vec<&Package> = self
            .u
            .versions(&dep.name)
            .into_iter()
            .filter(|p| dep.allows(&p.version))
            .collect();
        let mut providers: Vec<&Package> = self
            .u
            .providers(&dep.name)
            .into_iter()
            .filter(|p| satisfies(p, dep))
            .collect();
        providers.sort_by_key(|p| self.provider_rank(p));
        c.extend(providers);
        c
    }

    /// How apt orders the providers of a virtual package (`CompareProviders` in
    /// apt-pkg/depcache.cc), best first: one already installed, then `Essential`, then the
    /// native architecture, then the higher `Priority` (required before important, standard,
    /// optional, extra; a package without the field counts as optional), then the higher package
    /// ID (see [`Universe::id`]). The sort is stable, so a provider's versions stay in
    /// candidate order.
    fn provider_rank(&self, p: &Package) -> (bool, bool, bool, u8, std::cmp::Reverse<usize>) {
        let priority = match p.priority.as_str() {
            "required" => 1,
            "important" => 2,
            "standard" => 3,
            "optional" => 4,
            _ => 5,
        };
        (
            !self.installed.contains_key(p.name.as_str()),
            !p.essential,
            p.arch != self.u.arch && p.arch != "all",
            priority,
            std::cmp::Reverse(self.u.id(&p.name)),
        )
    }

    fn conflict(&self, pkg: &Package) -> Option<String> {
        for other in self.present() {
            if other.name == pkg.name {
                continue;
            }
            for (kind, deps, a, b) in [
                ("conflicts with", &pkg.conflicts, pkg, other),
                ("breaks", &pkg.breaks, pkg, other),
                ("conflicts with", &other.conflicts, other, pkg),
                ("breaks", &other.breaks, other, pkg),
            ] {
                if let Some(d) = deps.iter().find(|d| satisfies(b, d)) {
                    return Some(format!(
                        "{} {} {kind} {d} (provided by {} {})",
                        a.name, a.version, b.name, b.version
                    ));
                }
            }
        }
        None
    }

    /// Marks `pkg` without its dependencies.
    fn mark(&mut self, pkg: &'u Package) -> Result<bool, ResolveError> {
        if let Some(cur) = self.current(&pkg.name)
            && cur.version == pkg.version
        {
            return Ok(false);
        }
        if let Some(cur) = self.selected.get(pkg.name.as_str()) {
            return Err(ResolveError(format!(
                "{} is wanted both at {} and at {}",
                pkg.name, cur.version, pkg.version
            )));
        }
        if let Some(c) = self.conflict(pkg) {
            return Err(ResolveError(c));
        }
        self.selected.insert(&pkg.name, pkg);
        Ok(true)
    }

    fn install(&mut self, pkg: &'u Package, depth: usize) -> Result<(), ResolveError> {
        if self.mark(pkg)? {
            self.depends(pkg, depth)?;
        }
        Ok(())
    }

    fn depends(&mut self, pkg: &'u Package, depth: usize) -> Result<(), ResolveError> {
        if depth > 200 {
            return Err(ResolveError(format!(
                "dependency chain too deep at {}",
                pkg.name
            )));
        }
        for rel in pkg.pre_depends.iter().chain(&pkg.depends) {
            self.satisfy(pkg, rel, depth)?;
        }
        if self.recommends {
            for rel in &pkg.recommends {
                let saved = self.selected.clone();
                if self.satisfy(pkg, rel, depth).is_err() {
                    self.selected = saved;
                }
            }
        }
        Ok(())
    }

    fn satisfy(
        &mut self,
        from: &Package,
        rel: &Relation,
        depth: usize,
    ) -> Result<(), ResolveError> {
        if rel.0.iter().any(|d| self.have(d)) {
            return Ok(());
        }
        let mut why = Vec::new();
        for dep in &rel.0 {
            let cands = self.candidates(dep);
            if cands.is_empty() {
                let have: Vec<String> = self
                    .u
                    .versions(&dep.name)
                    .iter()
                    .map(|p| p.version.to_string())
                    .collect();
                why.push(if have.is_empty() {
                    format!("no source has {}", dep.name)
                } else {
                    format!("{} is available only as {}", dep.name, have.join(", "))
                });
                continue;
            }
            for cand in cands {
                let saved = self.selected.clone();
                match self.install(cand, depth + 1) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        self.selected = saved;
                        why.push(e.0);
                    }
                }
            }
        }
        Err(ResolveError(format!(
            "{} {} depends on {rel}, which cannot be installed: {}",
            from.name,
            from.version,
            why.join("; ")
        )))
    }
}

/// Resolves `req` against `universe` on top of the `installed` packages. Returns the packages
/// to install (new, or newer than installed), sorted by name, and the names of the packages
/// installed because they were asked for (the request, a bootstrap's set), which apt marks
/// manually installed; the rest were pulled in as dependencies (apt's `Auto-Installed: 1`).
/// A base package only upgraded keeps its mark.
pub fn resolve_marked<'u>(
    universe: &'u Universe,
    installed: &'u [Package],
    req: &Request,
) -> Result<(Vec<&'u Package>, BTreeSet<String>), ResolveError> {
    let mut st = State {
        u: universe,
        installed: installed.iter().map(|p| (p.name.as_str(), p)).collect(),
        selected: BTreeMap::new(),
        recommends: req.recommends,
    };
    let mut roots: Vec<&Package> = Vec::new();
    let mut wanted: Vec<(String, Option<String>)> = req
        .packages
        .iter()
        .map(|s| match s.split_once('=') {
            Some((n, v)) => (n.trim().to_string(), Some(v.trim().to_string())),
            None => (s.trim().to_string(), None),
        })
        .collect();
    if req.minbase {
        let mut names: Vec<&String> = universe
            .names()
            .filter(|n| {
                universe
                    .versions(n)
                    .first()
                    .is_some_and(|p| p.essential || p.priority == "required")
            })
            .collect();
        names.sort();
        wanted.extend(names.into_iter().map(|n| (n.clone(), None)));
        wanted.push(("apt".into(), None));
    }
    let asked: BTreeSet<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
    if req.upgrade {
        for p in installed {
            if let Some(best) = universe.versions(&p.name).first()
                && best.version > p.version
            {
                wanted.push((p.name.clone(), None));
            }
        }
    }
    let mut manual = BTreeSet::new();
    wanted.sort();
    wanted.dedup();
    for (name, version) in &wanted {
        let versions = universe.versions(name);
        let pick = match version {
            Some(v) => versions.iter().find(|p| p.version.to_string() == *v),
            None => versions.first(),
        };
        let pkg = match pick {
            Some(p) => *p,
            None if version.is_none() => {
                // A virtual package with exactly one provider is fine, as with apt.
                let prov = universe.providers(name);
                match prov.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(ResolveError(format!("package {name} is not in any source")));
                    }
                    many => {
                        let names: Vec<&str> = many.iter().map(|p| p.name.as_str()).collect();
                        return Err(ResolveError(format!(
                            "package {name} is virtual, provided by {}: name one of them",
                            names.join(", ")
                        )));
                    }
                }
            }
            None => {
                let have: Vec<String> = versions.iter().map(|p| p.version.to_string()).collect();
                return Err(ResolveError(format!(
                    "package {name} has no version {}; available: {}",
                    version.as_deref().unwrap_or_default(),
                    if have.is_empty() {
                        "none".into()
                    } else {
                        have.join(", ")
                    }
                )));
            }
        };
        // A requested package already installed is kept unless a version was asked for.
        if version.is_none() && !req.upgrade && st.installed.contains_key(pkg.name.as_str()) {
            continue;
        }
        st.mark(pkg)
            .map_err(|e| ResolveError(format!("cannot install {name}: {e}")))?;
        if asked.contains(name) {
            manual.insert(pkg.name.clone());
        }
        roots.push(pkg);
    }
    for pkg in roots {
        st.depends(pkg, 0)?;
    }
    Ok((st.selected.into_values().collect(), manual))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve<'u>(
        universe: &'u Universe,
        installed: &'u [Package],
        req: &Request,
    ) -> Result<Vec<&'u Package>, ResolveError> {
        resolve_marked(universe, installed, req).map(|(picked, _)| picked)
    }

    fn universe(text: &str) -> Universe {
        let mut u = Universe::new("amd64");
        u.add_index(text, 0, "test").unwrap();
        u
    }

    fn names(r: &[&Package]) -> Vec<String> {
        r.iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect()
    }

    const IDX: &str = "\
Package: app
Version: 1.0
Architecture: amd64
Depends: libx (>= 2), awk | mawk, mail-transport-agent
Filename: a

Package: libx
Version: 1.5
Architecture: amd64
Filename: b

Package: libx
Version: 2.1
Architecture: amd64
Filename: c

Package: libx
Version: 3.0
Architecture: arm64
Filename: arm

Package: mawk
Version: 1.3
Architecture: amd64
Provides: awk
Filename: d

Package: gawk
Version: 5
Architecture: amd64
Provides: awk
Filename: e

Package: postfix
Version: 3
Architecture: amd64
Provides: mail-transport-agent
Conflicts: mail-transport-agent
Depends: missing-lib
Filename: f

Package: exim4
Version: 4
Architecture: all
Provides: mail-transport-agent
Conflicts: mail-transport-agent
Filename: g

Package: old
Version: 1
Architecture: amd64
Conflicts: libx (>= 2)
Filename: h
";

    #[test]
    fn alternatives_provides_versions_and_backtracking() {
        let u = universe(IDX);
        let r = resolve(
            &u,
            &[],
            &Request {
                packages: vec!["app".into()],
                ..Default::default()
            },
        )
        .unwrap();
        // libx at the newest amd64 version; awk by apt's provider ranking (equal priorities:
        // gawk, which apt's cache met after mawk, named in app's Depends); postfix fails on a
        // missing dependency so exim4 is taken (its self-conflict via Provides is ignored).
        assert_eq!(names(&r), ["app=1.0", "exim4=4", "gawk=5", "libx=2.1"]);
    }

    #[test]
    fn a_providers_newest_version_is_preferred() {
        let idx = "Package: want\nVersion: 1\nArchitecture: all\nDepends: virt\nFilename: a\n\n\
Package: prov\nVersion: 3\nArchitecture: all\nProvides: virt\nFilename: b\n\n\
Package: prov\nVersion: 4\nArchitecture: all\nProvides: virt\nFilename: c\n";
        let u = universe(idx);
        let r = resolve(
            &u,
            &[],
            &Request {
                packages: vec!["want".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(names(&r), ["prov=4", "want=1"]);
    }

    #[test]
    fn explicit_alternative_wins_when_requested() {
        let u = universe(IDX);
        let r = resolve(
            &u,
            &[],
            &Request {
                packages: vec!["app".into(), "gawk".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert!(names(&r).contains(&"gawk=5".to_string()));
        assert!(!names(&r).contains(&"mawk=1.3".to_string()));
    }

    #[test]
    fn conflicts_in_the_input_are_explained() {
        let u = universe(IDX);
        let e = resolve(
            &u,
            &[],
            &Request {
                packages: vec!["app".into(), "old".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.0.contains("old 1 conflicts with libx (>= 2)"), "{e}");
    }

    #[test]
    fn unsatisfiable_names_the_chain() {
        let u = universe(IDX);
        let e = resolve(
            &u,
            &[],
            &Request {
                packages: vec!["postfix".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.0.contains("postfix 3 depends on missing-lib"), "{e}");
        assert!(e.0.contains("no source has missing-lib"), "{e}");
        let e = resolve(
            &u,
            &[],
            &Request {
                packages: vec!["nope".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.0, "package nope is not in any source");
        let e = resolve(
            &u,
            &[],
            &Request {
                packages: vec!["awk".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.0.contains("virtual, provided by mawk, gawk"), "{e}");
        let e = resolve(
            &u,
            &[],
            &Request {
                packages: vec!["libx=9".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.0.contains("available: 2.1, 1.5"), "{e}");
    }

    #[test]
    fn installed_packages_satisfy_and_upgrade() {
        let u = universe(IDX);
        let base = super::super::universe::installed(
            "Package: libx\nStatus: install ok installed\nVersion: 2.0\nArchitecture: amd64\n\nPackage: mawk\nStatus: install ok installed\nVersion: 1.3\nArchitecture: amd64\nProvides: awk\n",
        )
        .unwrap();
        let req = Request {
            packages: vec!["app".into()],
            ..Default::default()
        };
        let r = resolve(&u, &base, &req).unwrap();
        assert_eq!(names(&r), ["app=1.0", "exim4=4"]);
        let r = resolve(
            &u,
            &base,
            &Request {
                upgrade: true,
                ..req
            },
        )
        .unwrap();
        assert_eq!(names(&r), ["app=1.0", "exim4=4", "libx=2.1"]);
    }

    #[test]
    fn not_automatic_sources_only_when_needed() {
        let mut u = Universe::new("amd64");
        u.add_index("Package: tool\nVersion: 1\nArchitecture: amd64\nFilename: a\n\nPackage: lib\nVersion: 1\nArchitecture: amd64\nFilename: b\n", 0, "main").unwrap();
        u.add_index("Package: tool\nVersion: 2\nArchitecture: amd64\nFilename: c\n\nPackage: lib\nVersion: 2\nArchitecture: amd64\nFilename: d\n\nPackage: new\nVersion: 1\nArchitecture: amd64\nDepends: lib (>= 2)\nFilename: e\n", 1, "backports").unwrap();
        u.set_priority(1, 1);
        let r = resolve(
            &u,
            &[],
            &Request {
                packages: vec!["tool".into(), "new".into()],
                ..Default::default()
            },
        )
        .unwrap();
        // tool stays at the main version; new only exists in backports and pulls lib 2.
        assert_eq!(names(&r), ["lib=2", "new=1", "tool=1"]);
    }

    #[test]
    fn pinned_version_and_minbase() {
        let u = universe(
            "Package: base\nVersion: 1\nArchitecture: amd64\nEssential: yes\nDepends: libc\nFilename: a\n\n\
             Package: libc\nVersion: 2\nArchitecture: amd64\nPriority: required\nFilename: b\n\n\
             Package: apt\nVersion: 2.6\nArchitecture: amd64\nPriority: important\nFilename: c\n\n\
             Package: extra\nVersion: 1\nArchitecture: amd64\nPriority: optional\nFilename: d\n",
        );
        let r = resolve(
            &u,
            &[],
            &Request {
                minbase: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(names(&r), ["apt=2.6", "base=1", "libc=2"]);
        // A bootstrap's set is asked for (manual); a dependency of a request is not.
        let (_, manual) = resolve_marked(
            &u,
            &[],
            &Request {
                packages: vec!["extra=1".into()],
                minbase: true,
                ..Default::default()
            },
        )
        .unwrap();
        let manual: Vec<&str> = manual.iter().map(String::as_str).collect();
        assert_eq!(manual, ["apt", "base", "extra", "libc"]);
        let u = universe(IDX);
        let (picked, manual) = resolve_marked(
            &u,
            &[],
            &Request {
                packages: vec!["libx".into(), "mawk".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(names(&picked), ["libx=2.1", "mawk=1.3"]);
        assert_eq!(manual.into_iter().collect::<Vec<_>>(), ["libx", "mawk"]);
    }

    /// apt's CompareProviders: Essential, then Priority, then the name apt met last.
    #[test]
    fn providers_are_ranked_as_apt_ranks_them() {
        let pick = |idx: &str| {
            let u = universe(idx);
            let r = resolve(
                &u,
                &[],
                &Request {
                    packages: vec!["app".into()],
                    ..Default::default()
                },
            )
            .unwrap();
            names(&r)
        };
        let app = "Package: app\nVersion: 1\nArchitecture: amd64\nDepends: virt\nFilename: a\n\n";
        let p = |name: &str, extra: &str| {
            format!(
                "Package: {name}\nVersion: 1\nArchitecture: all\nProvides: virt\n{extra}Filename: {name}\n\n"
            )
        };
        // Index order alone used to decide: first-a would have won.
        let idx = format!(
            "{app}{}{}{}",
            p("first-a", "Priority: optional\n"),
            p("std-b", "Priority: standard\n"),
            p("last-c", "Priority: optional\n")
        );
        assert_eq!(pick(&idx), ["app=1", "std-b=1"]);
        let idx = format!(
            "{app}{}{}",
            p("first-a", "Priority: optional\n"),
            p("ess-b", "Priority: optional\nEssential: yes\n")
        );
        assert_eq!(pick(&idx), ["app=1", "ess-b=1"]);
        // Equal: the higher package ID, i.e. the name apt's cache met last (a relation
        // target counts as met).
        let idx = format!(
            "{app}{}{}",
            p("late-a", "Priority: optional\n"),
            p("early-b", "Priority: optional\n")
        );
        assert_eq!(pick(&idx), ["app=1", "early-b=1"]);
        let idx = format!(
            "Package: app\nVersion: 1\nArchitecture: amd64\nDepends: virt\nSuggests: late-a\nFilename: a\n\n{}{}",
            p("early-b", "Priority: optional\n"),
            p("late-a", "Priority: optional\n")
        );
        assert_eq!(
            pick(&idx),
            ["app=1", "early-b=1"],
            "late-a was met first, in a Suggests"
        );
    }
}
