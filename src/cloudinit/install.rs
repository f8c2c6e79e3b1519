//! The install flavour of user-data: a stock cloud image installs the recipe's toolset at
//! first boot (users, env, files, apt, downloads checked against their sha256, pip, symlinks,
//! services, run steps).

use super::*;

pub(super) fn install_config(
    loaded: &Loaded,
    lock: Option<&Lock>,
    ci: &CloudInit,
) -> Result<Config, CloudInitError> {
    let r = &loaded.recipe;
    let mut c = Config {
        hostname: Some(hostname(loaded, ci)),
        groups: r.group.iter().map(|g| g.name.clone()).collect(),
        users: users(loaded, ci, true),
        power_state: power_state(ci),
        cloud_final_modules: final_modules(ci),
        ..Config::default()
    };
    env(&mut c, loaded)?;
    files(&mut c, loaded)?;
    apt(&mut c, loaded)?;
    downloads(&mut c, loaded, lock)?;
    steps(&mut c, loaded)?;
    c.runcmd.extend(ci.runcmd.iter().cloned());
    Ok(c)
}

/// `[env]` as `/etc/profile.d/imgbuild-env.sh`.
fn env(c: &mut Config, loaded: &Loaded) -> Result<(), CloudInitError> {
    let r = &loaded.recipe;
    if !r.env.is_empty() {
        let mut script = String::from("# Written by imgbuild from the recipe's [env].\n");
        // Values as the image's config has them: Docker ENV expansion, done here.
        let mut seen: Vec<(String, String)> = Vec::new();
        for (k, v) in &r.env {
            let value = interp::expand_env(v, &seen);
            script.push_str(&format!("export {k}={}\n", sh_quote(&value)));
            seen.push((k.clone(), value));
        }
        c.write_files.push(WriteFile {
            path: "/etc/profile.d/imgbuild-env.sh".into(),
            encoding: None,
            content: script,
            permissions: "0644".into(),
            owner: None,
            defer: false,
        });
    }
    Ok(())
}

/// `[[file]]` as `write_files` (owned ones deferred until users exist).
fn files(c: &mut Config, loaded: &Loaded) -> Result<(), CloudInitError> {
    let r = &loaded.recipe;
    for f in &r.file {
        let (encoding, content) = match (&f.content, &f.src) {
            (Some(text), _) => (None, text.clone()),
            (None, Some(src)) => {
                let path = loaded.resolve(src);
                let bytes =
                    std::fs::read(&path).map_err(|source| CloudInitError::Read { path, source })?;
                match String::from_utf8(bytes) {
                    Ok(text) => (None, text),
                    Err(e) => (Some("b64"), base64_encode(e.as_bytes())),
                }
            }
            (None, None) => (None, String::new()),
        };
        let owner = f.owner.clone().filter(|o| o != "root" && o != "root:root");
        c.write_files.push(WriteFile {
            path: f.dest.clone(),
            encoding,
            content,
            permissions: format!("0{:o}", f.mode.map_or(0o644, |m| m.0)),
            defer: owner.is_some(),
            owner,
        });
    }
    Ok(())
}

/// `[apt]`: sources with their keys armored, packages.
fn apt(c: &mut Config, loaded: &Loaded) -> Result<(), CloudInitError> {
    let r = &loaded.recipe;
    if let Some(apt) = &r.apt {
        let mut sources = std::collections::BTreeMap::new();
        for s in &apt.sources {
            let key = match &s.key {
                Some(k) => {
                    let path = loaded.resolve(k);
                    let bytes = std::fs::read(&path)
                        .map_err(|source| CloudInitError::Read { path, source })?;
                    Some(armor(&bytes))
                }
                None => None,
            };
            let signed = if key.is_some() {
                "signed-by=$KEY_FILE"
            } else {
                ""
            };
            let arch = if s.arch.is_empty() {
                String::new()
            } else {
                format!("arch={}", s.arch.join(","))
            };
            let opts: Vec<&str> = [signed, arch.as_str()]
                .into_iter()
                .filter(|o| !o.is_empty())
                .collect();
            let opts = if opts.is_empty() {
                String::new()
            } else {
                format!("[{}] ", opts.join(" "))
            };
            let uri = s.uri.strip_prefix("ppa:").map_or(s.uri.clone(), |ppa| {
                let base = apt.ppa_base.as_deref().unwrap_or("").trim_end_matches('/');
                format!("{base}/{ppa}/ubuntu")
            });
            let suite = s.suite.clone().unwrap_or_else(|| "$RELEASE".into());
            let comps = if s.components.is_empty() {
                "main".to_string()
            } else {
                s.components.join(" ")
            };
            sources.insert(
                format!("{}.list", s.name),
                AptSourceEntry {
                    source: format!("deb {opts}{uri} {suite} {comps}"),
                    key,
                },
            );
        }
        if !sources.is_empty() {
            c.apt = Some(AptConfig { sources });
        }
        c.packages = apt.packages.clone();
        c.package_update = true;
        c.package_upgrade = apt.upgrade;
    }
    Ok(())
}

/// `[[download]]` as `runcmd` commands that check their sha256.
fn downloads(c: &mut Config, loaded: &Loaded, lock: Option<&Lock>) -> Result<(), CloudInitError> {
    let r = &loaded.recipe;
    let platform = &r.image.platform;
    let needs_curl = !r.download.is_empty();
    for d in &r.download {
        let url = interp::expand_platform(&d.url, platform).unwrap_or_else(|_| d.url.clone());
        let sha = d.sha256.clone().or_else(|| {
            lock.and_then(|l| l.download(&url))
                .map(|d| d.hex().to_string())
        });
        let tmp = format!("/var/tmp/imgbuild-{}", short_hash(&url));
        let mut cmd = format!("curl -fsSL --retry 3 -o {tmp} {}", sh_quote(&url));
        if let Some(sha) = &sha {
            cmd.push_str(&format!(" && echo '{sha}  {tmp}' | sha256sum -c -"));
        }
        if let Some(dir) = &d.extract {
            let strip = if d.strip_components > 0 {
                format!(" --strip-components={}", d.strip_components)
            } else {
                String::new()
            };
            let unpack = if url.ends_with(".zip") || d.format.as_deref() == Some("zip") {
                format!("unzip -o -q {tmp} -d {}", sh_quote(dir))
            } else {
                format!("tar -xf {tmp} -C {}{strip}", sh_quote(dir))
            };
            cmd.push_str(&format!(" && mkdir -p {} && {unpack}", sh_quote(dir)));
        } else if let Some(dest) = &d.dest {
            let mode = d.mode.map_or(0o644, |m| m.0);
            cmd.push_str(&format!(
                " && install -D -m {mode:o} {tmp} {}",
                sh_quote(dest)
            ));
        }
        cmd.push_str(&format!(" && rm -f {tmp}"));
        c.runcmd.push(cmd);
    }
    if needs_curl && !c.packages.iter().any(|p| p == "curl") {
        c.packages.push("curl".into());
    }
    Ok(())
}

/// `[pip]`, `[[symlink]]`, `[services]` and `[[run]]` as `runcmd`.
fn steps(c: &mut Config, loaded: &Loaded) -> Result<(), CloudInitError> {
    let r = &loaded.recipe;
    if let Some(pip) = r.pip.as_ref().filter(|p| !p.packages.is_empty()) {
        if !c.packages.iter().any(|p| p == "python3-pip") {
            c.packages.push("python3-pip".into());
        }
        let pkgs: Vec<String> = pip.packages.iter().map(|p| sh_quote(p)).collect();
        c.runcmd.push(format!(
            "python3 -m pip install --break-system-packages {}",
            pkgs.join(" ")
        ));
    }
    for l in &r.symlink {
        c.runcmd.push(format!(
            "mkdir -p \"$(dirname {p})\" && ln -sfn {t} {p}",
            p = sh_quote(&l.path),
            t = sh_quote(&l.target)
        ));
    }
    for s in &r.services.enable {
        c.runcmd
            .push(format!("systemctl enable --now {}", sh_quote(s)));
    }
    let shell = r
        .image
        .shell
        .clone()
        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
    for run in &r.run {
        let mut words: Vec<String> = shell.iter().map(|w| sh_quote(w)).collect();
        words.push(sh_quote(&run.command));
        let cmd = words.join(" ");
        c.runcmd.push(match &run.user {
            Some(u) => format!("runuser -u {} -- {cmd}", sh_quote(u)),
            None => cmd,
        });
    }
    Ok(())
}
