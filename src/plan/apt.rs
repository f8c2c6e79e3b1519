//! The apt steps of a plan: merged /usr on scratch, the recipe's sources left in the image,
//! the package layers in buckets, dpkg's database and `dpkg --configure`.

use serde_json::json;

use super::*;

/// A source's file name in `sources.list.d`: apt silently ignores names with characters other
/// than letters, digits, `_`, `-` and `.`.
fn sources_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Compiler {
    /// The apt steps: merged /usr on scratch, the sources left in the image, package layers in
    /// buckets, the dpkg database, `dpkg --configure`.
    pub(super) fn apt(&mut self, cx: &Inputs) -> Result<(), PlanError> {
        let Inputs {
            loaded,
            lock,
            configure,
            ..
        } = *cx;
        let packages: &[LockedPackage] = lock.map_or(&[], |l| &l.packages);
        if !packages.is_empty() {
            if loaded.base == crate::recipe::BaseRef::Scratch {
                // A bootstrap on scratch gets merged /usr first, as debootstrap and mmdebstrap
                // set it up for Debian 12 and Ubuntu 22.04 (usr-is-merged expects it).
                let links: Vec<(String, String)> = ["bin", "lib", "lib64", "sbin"]
                    .iter()
                    .map(|d| (format!("/{d}"), format!("usr/{d}")))
                    .collect();
                let def = json!({"kind": "merged-usr", "links": links});
                self.push(
                    StepKind::Symlinks(links),
                    "merged /usr: bin lib lib64 sbin -> usr/".into(),
                    def,
                );
            }
            // Before the packages, so a package update does not rebuild it.
            self.apt_sources(cx)?;
            let mut buckets: Vec<Vec<LockedPackage>> = vec![Vec::new(); APT_LAYERS];
            for p in packages {
                let h = Digest::of(p.source.as_bytes());
                let b = usize::from_str_radix(&h.hex()[..2], 16).unwrap_or(0) % APT_LAYERS;
                buckets[b].push(p.clone());
            }
            let apt_parent = push_parent(&self.steps, &self.root_key);
            let mut bucket_keys = Vec::new();
            for (i, mut b) in buckets
                .into_iter()
                .enumerate()
                .filter(|(_, b)| !b.is_empty())
            {
                b.sort_by(|x, y| x.name.cmp(&y.name));
                let def = json!({
                    "kind": "apt-packages",
                    "packages": b.iter().map(|p| json!([p.name, p.version, p.arch, p.sha256])).collect::<Vec<_>>(),
                });
                let shown: Vec<&str> = b.iter().take(6).map(|p| p.name.as_str()).collect();
                let more = if b.len() > 6 {
                    format!(" and {} more", b.len() - 6)
                } else {
                    String::new()
                };
                let name = format!(
                    "apt layer {}/{APT_LAYERS}: {}{more}",
                    i + 1,
                    shown.join(" ")
                );
                let k = self.push_under(apt_parent.clone(), StepKind::AptPackages(b), name, def);
                bucket_keys.push(k);
            }
            self.parent = Digest::of(&canonical::encode(
                &json!({"apt_parent": apt_parent, "layers": bucket_keys}),
            ));
            let all = json!(
                packages
                    .iter()
                    .map(|p| json!([p.name, p.version, p.arch, p.sha256]))
                    .collect::<Vec<_>>()
            );
            let n = packages.len();
            self.push(
                StepKind::DpkgDatabase(packages.to_vec()),
                format!("dpkg database: {n} packages unpacked"),
                json!({
                    "kind": "dpkg-database",
                    "arch": crate::lock::deb_arch(&loaded.recipe.image.platform),
                    "packages": all,
                    "auto": packages.iter().filter(|p| p.auto).map(|p| p.name.as_str()).collect::<Vec<_>>(),
                }),
            );
            if configure {
                self.push(
                    StepKind::Configure(packages.to_vec()),
                    format!("dpkg --configure -a ({n} packages)"),
                    json!({"kind": "configure", "command": "dpkg --force-confdef --force-confold --configure -a", "preinst": "install"}),
                );
            }
        }
        Ok(())
    }

    /// The recipe's apt sources left in the image (`[apt] keep_sources`, on by default): one
    /// deb822 file per source in `/etc/apt/sources.list.d/`, `Signed-By:` its key copied into
    /// `/etc/apt/keyrings/`. Only sources the lock used; one the base image already lists (same
    /// URI and suite) is left to the base's file, since apt refuses one source with two
    /// different `Signed-By` values.
    fn apt_sources(&mut self, cx: &Inputs) -> Result<(), PlanError> {
        let Inputs {
            loaded,
            cache,
            lock,
            ..
        } = *cx;
        let (Some(apt), Some(lock)) = (&loaded.recipe.apt, lock) else {
            return Ok(());
        };
        if !apt.keep_sources || lock.packages.is_empty() {
            return Ok(());
        }
        let same = |a: &crate::lock::LockedSource, b: &crate::lock::LockedSource| {
            a.uri.trim_end_matches('/') == b.uri.trim_end_matches('/') && a.suite == b.suite
        };
        let ours = |l: &crate::lock::LockedSource| apt.sources.iter().any(|s| s.name == l.name);
        let mut files = Vec::new();
        for (i, s) in apt.sources.iter().enumerate() {
            let field = FieldPath::root().key("apt").key("sources").index(i);
            let Some(locked) = lock.sources.iter().find(|l| l.name == s.name) else {
                continue; // not for this platform
            };
            if lock.sources.iter().any(|b| !ours(b) && same(b, locked)) {
                continue;
            }
            let file = sources_file_name(&s.name);
            let mut text = format!(
                "Types: deb\nURIs: {}\nSuites: {}\n",
                locked.uri, locked.suite
            );
            let components = if s.uri.starts_with("ppa:") {
                vec!["main".to_string()]
            } else {
                s.components.clone()
            };
            if !components.is_empty() {
                text.push_str(&format!("Components: {}\n", components.join(" ")));
            }
            if !s.arch.is_empty() {
                text.push_str(&format!("Architectures: {}\n", s.arch.join(" ")));
            }
            if let Some(k) = &s.key {
                let path = loaded.resolve(k);
                let (digest, size) =
                    cache.file_digest(&path).map_err(|source| PlanError::Read {
                        path: path.clone(),
                        field: field.key("key").to_string(),
                        source,
                    })?;
                let armored = std::fs::File::open(&path)
                    .and_then(|f| {
                        use std::io::Read;
                        let mut head = Vec::new();
                        f.take(64).read_to_end(&mut head)?;
                        Ok(head)
                    })
                    .is_ok_and(|h| {
                        String::from_utf8_lossy(&h)
                            .trim_start()
                            .starts_with("-----BEGIN PGP")
                    });
                // apt reads a keyring by its extension: `.asc` armored, `.gpg` binary.
                let dest = format!(
                    "/etc/apt/keyrings/{file}.{}",
                    if armored { "asc" } else { "gpg" }
                );
                text.push_str(&format!("Signed-By: {dest}\n"));
                files.push(PlannedFile {
                    dest,
                    source: FileSource::Path(path),
                    size,
                    digest,
                    mode: 0o644,
                    owner: None,
                    field: field.key("key"),
                    append: false,
                    mode_set: true,
                });
            }
            files.push(PlannedFile {
                dest: format!("/etc/apt/sources.list.d/{file}.sources"),
                digest: Digest::of(text.as_bytes()),
                size: text.len() as u64,
                source: FileSource::Inline(text.into_bytes()),
                mode: 0o644,
                owner: None,
                field,
                append: false,
                mode_set: true,
            });
        }
        if files.is_empty() {
            return Ok(());
        }
        files.sort_by(|a, b| a.dest.cmp(&b.dest));
        let def = json!({
            "kind": "apt-sources",
            "files": files.iter().map(|f| json!({"dest": f.dest, "sha256": f.digest})).collect::<Vec<_>>(),
        });
        let names: Vec<&str> = files
            .iter()
            .filter_map(|f| f.dest.strip_prefix("/etc/apt/sources.list.d/"))
            .collect();
        let name = format!("apt sources {}", names.join(" "));
        self.push(StepKind::Files(files), name, def);
        Ok(())
    }
}
