//! The drafted recipe written out as TOML, sections in the reference's order.

use super::draft::Draft;
use super::vars::substitute;

/// A TOML string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A uid or gid: a TOML integer, or a string for a variable (the recipe reads both).
fn id(v: &str) -> String {
    if v.parse::<u32>().is_ok() {
        v.to_string()
    } else {
        q(v)
    }
}

fn arr(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
    )
}

impl Draft {
    /// The recipe text, sections in the reference's order.
    pub fn to_toml(&self) -> String {
        let mut o = String::from("# Imported from a Dockerfile by `imgbuild import`.\n\n[image]\n");
        self.image_toml(&mut o);
        table(&mut o, "vars", &self.vars);
        table(&mut o, "env", &self.env);
        self.apt_toml(&mut o);
        self.steps_toml(&mut o);
        o
    }

    /// `[image]`'s fields.
    fn image_toml(&self, o: &mut String) {
        let name = self
            .base
            .rsplit('/')
            .next()
            .unwrap_or("imported")
            .split([':', '@'])
            .next()
            .unwrap_or("imported");
        // A base given by a build argument names nothing yet: the name must not depend on it.
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        let name = if valid {
            format!("{name}-imported")
        } else {
            "imported".to_string()
        };
        o.push_str(&format!("name = {}\n", q(&name)));
        o.push_str(&format!("base = {}\n", q(&self.base)));
        if let Some(u) = &self.user {
            o.push_str(&format!("user = {}\n", q(u)));
        }
        if let Some(w) = &self.workdir {
            o.push_str(&format!("workdir = {}\n", q(w)));
        }
        if let Some(s) = &self.shell {
            o.push_str(&format!("shell = {}\n", arr(s)));
        }
        if let Some(e) = &self.entrypoint {
            o.push_str(&format!("entrypoint = {}\n", arr(e)));
        }
        if let Some(c) = &self.cmd {
            o.push_str(&format!("cmd = {}\n", arr(c)));
        }
        if !self.expose.is_empty() {
            o.push_str(&format!("expose = {}\n", arr(&self.expose)));
        }
        if !self.volumes.is_empty() {
            o.push_str(&format!("volumes = {}\n", arr(&self.volumes)));
        }
        if let Some(s) = &self.stop_signal {
            o.push_str(&format!("stop_signal = {}\n", q(s)));
        }
        if !self.labels.is_empty() {
            let l: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{} = {}", q(k), q(v)))
                .collect();
            o.push_str(&format!("labels = {{ {} }}\n", l.join(", ")));
        }
    }

    /// `[apt]` and its sources.
    fn apt_toml(&self, o: &mut String) {
        if !self.packages.is_empty()
            || !self.build_packages.is_empty()
            || self.upgrade
            || !self.ppas.is_empty()
            || !self.sources.is_empty()
        {
            o.push_str("\n[apt]\n");
            if self.upgrade {
                o.push_str("upgrade = true\n");
            }
            o.push_str(&format!("packages = {}\n", arr(&self.packages)));
            if !self.build_packages.is_empty() {
                o.push_str(&format!("build_packages = {}\n", arr(&self.build_packages)));
            }
            for src in &self.sources {
                o.push_str(&format!(
                    "\n[[apt.sources]]\nname = {}\nuri = {}\nsuite = {}\ncomponents = {}\n",
                    q(&src.name),
                    q(&src.uri),
                    q(&src.suite),
                    arr(&src.components)
                ));
                if let Some(k) = &src.key {
                    o.push_str(&format!("key = {}\n", q(k)));
                }
            }
            for p in &self.ppas {
                let name = p.trim_start_matches("ppa:").replace('/', "-");
                o.push_str(&format!(
                    "\n[[apt.sources]]\nname = {}\nuri = {}\n",
                    q(&name),
                    q(p)
                ));
            }
        }
    }

    /// Downloads, pip, users, files, symlinks, services and run steps.
    fn steps_toml(&self, o: &mut String) {
        for d in &self.downloads {
            o.push_str(&format!("\n[[download]]\nurl = {}\n", q(&d.url)));
            if let Some(h) = &d.sha256 {
                o.push_str(&format!("sha256 = {}\n", q(h)));
            }
            if let Some(dest) = &d.dest {
                o.push_str(&format!("dest = {}\n", q(dest)));
            }
            if let Some(m) = d.mode {
                o.push_str(&format!("mode = 0o{m:o}\n"));
            }
            if let Some(x) = &d.extract {
                o.push_str(&format!("extract = {}\n", q(x)));
                if d.strip > 0 {
                    o.push_str(&format!("strip_components = {}\n", d.strip));
                }
            }
        }
        if !self.pip.is_empty() {
            o.push_str("\n[pip]\n");
            if self.upgrade_pip {
                o.push_str("upgrade_pip = true\n");
            }
            o.push_str(&format!("packages = {}\n", arr(&self.pip)));
        }
        for g in &self.groups {
            o.push_str(&format!("\n[[group]]\nname = {}\n", q(&g.name)));
            if let Some(gid) = &g.gid {
                o.push_str(&format!("gid = {}\n", id(gid)));
            }
            if g.system {
                o.push_str("system = true\n");
            }
        }
        for u in &self.users {
            o.push_str(&format!("\n[[user]]\nname = {}\n", q(&u.name)));
            if u.system {
                o.push_str("system = true\n");
            }
            if u.create_home == u.system {
                o.push_str(&format!("create_home = {}\n", u.create_home));
            }
            if let Some(uid) = &u.uid {
                o.push_str(&format!("uid = {}\n", id(uid)));
            }
            if let Some(h) = &u.home {
                o.push_str(&format!("home = {}\n", q(h)));
            }
            if let Some(s) = &u.shell {
                o.push_str(&format!("shell = {}\n", q(s)));
            }
            if !u.groups.is_empty() {
                o.push_str(&format!("groups = {}\n", arr(&u.groups)));
            }
            if u.sudo {
                o.push_str("sudo = \"nopasswd\"\n");
            }
        }
        for d in &self.directories {
            o.push_str(&format!("\n[[directory]]\npath = {}\n", q(&d.path)));
            if let Some(m) = d.mode {
                o.push_str(&format!("mode = 0o{m:o}\n"));
            }
            if let Some(w) = &d.owner {
                o.push_str(&format!("owner = {}\n", q(w)));
            }
        }
        for (src, dest) in &self.files {
            o.push_str(&format!(
                "\n[[file]]\nsrc = {}\ndest = {}\n",
                q(src),
                q(dest)
            ));
            if let Some((mode, owner)) = self.file_attrs.get(dest) {
                if let Some(m) = mode {
                    o.push_str(&format!("mode = 0o{m:o}\n"));
                }
                if let Some(w) = owner {
                    o.push_str(&format!("owner = {}\n", q(w)));
                }
            }
        }
        for c in &self.copies {
            o.push_str(&format!(
                "\n[[copy]]\nsrc = {}\ndest = {}\n",
                q(&c.src),
                q(&c.dest)
            ));
            if !c.exclude.is_empty() {
                let list: Vec<String> = c.exclude.iter().map(|e| q(e)).collect();
                o.push_str(&format!("exclude = [{}]\n", list.join(", ")));
            }
            if let Some(w) = &c.owner {
                o.push_str(&format!("owner = {}\n", q(w)));
            }
            match c.mode {
                Some(m) => o.push_str(&format!("mode = 0o{m:o}\ndir_mode = 0o{m:o}\n")),
                None => o.push_str("preserve_mode = true\n"),
            }
        }
        for (path, content) in &self.appends {
            o.push_str(&format!(
                "\n[[file]]\ndest = {}\ncontent = {}\nappend = true\n",
                q(path),
                q(content)
            ));
        }
        for (path, target) in &self.symlinks {
            o.push_str(&format!(
                "\n[[symlink]]\npath = {}\ntarget = {}\n",
                q(path),
                q(target)
            ));
        }
        if !self.services.is_empty() {
            o.push_str(&format!("\n[services]\nenable = {}\n", arr(&self.services)));
        }
        // Docker gives every RUN the network.
        for r in &self.runs {
            o.push_str(&format!("\n[[run]]\ncommand = {}\n", q(&r.command)));
            if let Some(u) = &r.user {
                o.push_str(&format!("user = {}\n", q(u)));
            }
            o.push_str("network = true\n");
        }
    }
}

/// A `[name]` table of `key = "value"` lines. TOML keys are unique, so a key set several times
/// (`ENV PATH $PATH:a` ... `ENV PATH $PATH:b`) becomes one entry at its *last* place, with each
/// earlier value folded into the later `$KEY`: every variable it refers to is then defined
/// above it, so expanding the table in order gives what Docker's ENV gave.
fn table(o: &mut String, name: &str, kv: &[(String, String)]) {
    if kv.is_empty() {
        return;
    }
    o.push_str(&format!("\n[{name}]\n"));
    for (i, (k, v)) in kv.iter().enumerate() {
        if kv[i + 1..].iter().any(|(k2, _)| k2 == k) {
            continue;
        }
        let folded =
            kv[..i]
                .iter()
                .filter(|(k2, _)| k2 == k)
                .fold(None::<String>, |acc, (_, earlier)| {
                    Some(match acc {
                        None => earlier.clone(),
                        Some(prev) => substitute(earlier, k, &prev),
                    })
                });
        let value = match folded {
            Some(prev) => substitute(v, k, &prev),
            None => v.clone(),
        };
        o.push_str(&format!("{} = {}\n", q(k), q(&value)));
    }
}
