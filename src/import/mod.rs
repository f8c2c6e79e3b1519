//! Dockerfile import: an existing Dockerfile becomes a recipe. The syntax is read by the
//! `dockerfile-parser` crate; RUN lines are split into commands ([`shell`]) and each command
//! is mapped to its declarative form ([`commands`]). What has no declarative form becomes a
//! `[[run]]` step, with a warning naming the Dockerfile line: nothing is dropped silently.
//!
//! ```
//! let r = imgbuild::import::import("FROM ubuntu:22.04\nRUN apt-get update && apt-get install -y curl\n", "Dockerfile", None).unwrap();
//! assert!(r.recipe.contains("packages = [\"curl\"]"));
//! ```

mod accounts;
pub mod commands;
mod draft;
mod emit;
mod preprocess;
pub mod shell;
mod vars;

use std::path::Path;

use dockerfile_parser::{Dockerfile, Instruction, ShellOrExecExpr};

use self::commands::{Fragment, recognize};
use self::draft::Draft;
use self::preprocess::{heredoc_index, heredocs, normalize};
use self::vars::{
    arg_definitions, declare, expand_env, expand_env_in_script, has_operator_form, subst,
    subst_args,
};

/// A converted Dockerfile.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The recipe, as TOML.
    pub recipe: String,
    /// What could not be mapped, each naming its Dockerfile line.
    pub warnings: Vec<String>,
    /// The build context's files the recipe reads (`[[file]] src`, source keys), as the
    /// Dockerfile names them (before any rebasing); empty without a context.
    pub context_paths: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ImportError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Converts `text` (the Dockerfile called `file`, for messages) into a recipe. `context` is
/// the build context: apt `.list` files the Dockerfile copies are read from it. The recipe's
/// `src` and key paths are relative to the context, i.e. for a recipe written next to it.
pub fn import(text: &str, file: &str, context: Option<&Path>) -> Result<Imported, ImportError> {
    import_to(text, file, context, None)
}

/// [`import`] for a recipe written elsewhere: `to_context` is the path from the recipe's
/// directory to the build context, and prefixes every context-relative `src` and key path.
pub fn import_to(
    text: &str,
    file: &str,
    context: Option<&Path>,
    to_context: Option<&Path>,
) -> Result<Imported, ImportError> {
    let err = |line: usize, message: String| ImportError {
        file: file.to_string(),
        line,
        message,
    };
    let (text, heredocs) = heredocs(text).map_err(|(line, m)| err(line, m))?;
    let (text, more_args) = normalize(&text);
    let text = text.as_str();
    let df = Dockerfile::parse(text).map_err(|e| {
        let msg = e.to_string();
        let line = msg
            .split("--> ")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(1);
        // pest's message: "... --> L:C", the offending line, then "= expected ...".
        let why = msg
            .lines()
            .find_map(|l| l.trim().strip_prefix("= "))
            .unwrap_or("not valid Dockerfile syntax");
        err(line, format!("cannot parse the Dockerfile: {why}"))
    })?;
    let mut d = Draft::default();
    let mut warnings = Vec::new();
    let mut args: Vec<(String, String)> = Vec::new();
    for a in &df.global_args {
        let value = a.value.as_ref().map(|v| v.content.clone());
        declare(&mut args, &[], &a.name.content, value);
        for (name, value) in more_args
            .get(&line_of(text, a.span.start))
            .into_iter()
            .flatten()
        {
            declare(&mut args, &[], name, value.clone());
        }
    }
    let globals = args.clone();
    let stages: Vec<_> = df.iter_stages().collect();
    let Some(last) = stages.last() else {
        return Err(err(1, "no FROM instruction".into()));
    };
    for s in &stages[..stages.len() - 1] {
        let line = s
            .instructions
            .first()
            .map(|i| line_of(text, span(i).start))
            .unwrap_or(1);
        warnings.push(format!(
            "{file}:{line}: build stage {} is not imported (only the last stage becomes the image)",
            s.index
        ));
    }
    for ins in &last.instructions {
        let at = At {
            file,
            line: line_of(text, span(ins).start),
        };
        match ins {
            Instruction::From(f) => d.base = subst(&f.image.content, &args),
            Instruction::Arg(a) => {
                let value = a.value.as_ref().map(|v| v.content.clone());
                declare(&mut args, &globals, &a.name.content, value);
                for (name, value) in more_args.get(&at.line).into_iter().flatten() {
                    declare(&mut args, &globals, name, value.clone());
                }
            }
            Instruction::Env(e) => {
                for v in &e.vars {
                    let value = subst(&v.value.to_string(), &args);
                    let known = expand_env(&value, &d.known_env);
                    d.known_env.insert(v.key.content.clone(), known);
                    d.env.push((v.key.content.clone(), value));
                }
            }
            Instruction::Label(l) => {
                // Docker expands ENV and ARG references in label values.
                for lab in &l.labels {
                    let value = expand_env(&subst_args(&lab.value.content, &args), &d.known_env);
                    d.labels.retain(|(k, _)| *k != lab.name.content);
                    d.labels.push((lab.name.content.clone(), value));
                }
            }
            Instruction::Run(r) => match &r.expr {
                ShellOrExecExpr::Shell(sh) => {
                    // A heredoc's body is read as the script it is.
                    let raw = sh.to_string();
                    let script = match heredoc_index(&raw) {
                        Some(i) => heredocs.get(i).cloned().unwrap_or_default(),
                        None => raw,
                    };
                    run_shell(&mut d, &mut warnings, &at, &script, &args)?;
                }
                ShellOrExecExpr::Exec(a) => {
                    let cmd = a.as_str_vec().join(" ");
                    warnings.push(at.here(format!("exec-form RUN kept as a [[run]] step: {cmd}")));
                    d.push_run(cmd);
                }
            },
            Instruction::Copy(c) => copy(&mut d, &mut warnings, &at, c, context)?,
            Instruction::Entrypoint(e) => {
                d.entrypoint = Some(exec_or_shell(&e.expr));
            }
            Instruction::Cmd(c) => {
                d.cmd = Some(exec_or_shell(&c.expr));
            }
            Instruction::Misc(m) => misc(&mut d, &mut warnings, &at, m, &args)?,
        }
    }
    for (name, value) in &args {
        d.vars.push((name.clone(), value.clone()));
    }
    closing_warnings(&mut d, &mut warnings, file, text);
    let context_paths = context.map(|c| d.context_paths(c)).unwrap_or_default();
    if let Some(prefix) = to_context {
        d.rebase_paths(prefix, &context_paths);
    }
    Ok(Imported {
        recipe: d.to_toml(),
        warnings,
        context_paths,
    })
}

/// Where an instruction is, for its warnings and errors.
struct At<'a> {
    file: &'a str,
    line: usize,
}

impl At<'_> {
    fn here(&self, m: String) -> String {
        format!("{}:{}: {m}", self.file, self.line)
    }

    fn err(&self, message: String) -> ImportError {
        ImportError {
            file: self.file.to_string(),
            line: self.line,
            message,
        }
    }
}

/// A shell-form RUN. A plain list of simple commands is read command by command: the
/// recognized commands before the first unrecognized one become recipe fields, and from
/// there on the rest stays one `[[run]]` step in its order (for a `&&` chain; a list joined
/// by `;` or lines, where later commands run even when earlier ones fail, stays whole unless
/// every command is recognized). Anything else (`||`, `if`/`case`/`for`, braces, subshells,
/// bare variable assignments) stays one `[[run]]` step whole, as does every RUN after the
/// first `[[run]]`: the recipe's declarative steps are built before all runs, so lifting a
/// later command would move it ahead of a run it came after (a user before the `groupadd` it
/// needs, a symlink before the `rm` of what it replaces).
fn run_shell(
    d: &mut Draft,
    warnings: &mut Vec<String>,
    at: &At,
    script: &str,
    args: &[(String, String)],
) -> Result<(), ImportError> {
    let cmds = shell::split(script).map_err(|e| at.err(e.0))?;
    let whole = |d: &mut Draft, warnings: &mut Vec<String>| {
        let cmd = subst_args(script.trim(), args);
        if !cmd.is_empty() {
            let cmd = format!("{}{cmd}", arg_definitions(script, args));
            warnings.push(at.here(format!("kept whole as a [[run]] step: {cmd}")));
            d.push_run(cmd);
        }
    };
    if !d.runs.is_empty() || !shell::is_plain_list(&cmds) {
        whole(d, warnings);
        return Ok(());
    }
    // The ENV set so far is in the RUN's environment: commands lifted into recipe fields
    // (package names, URLs, link targets) get its values, as the shell would give them.
    let expanded = expand_env_in_script(script, &d.known_env);
    let cmds = match shell::split(&expanded) {
        Ok(c) if c.len() == cmds.len() && shell::is_plain_list(&c) => c,
        _ => cmds,
    };
    // A `${X%%pattern}` left unexpanded (a build argument's, the base image's) can only be
    // read by a shell: such a command stays in a run.
    let fragments: Vec<Fragment> = cmds
        .iter()
        .map(|c| {
            if has_operator_form(&c.text) {
                Fragment::Unknown
            } else {
                recognize(c)
            }
        })
        .collect();
    // A downloaded archive is unpacked declaratively only when the RUN then removes it (an
    // `[[download]] extract` leaves no archive behind), and only archives may be removed.
    let unpacked: Vec<&String> = fragments
        .iter()
        .filter_map(|f| match f {
            Fragment::ExtractFile { file, .. } => Some(file),
            _ => None,
        })
        .collect();
    let fragments: Vec<Fragment> = fragments
        .iter()
        .enumerate()
        .map(|(i, f)| match f {
            // The removal must follow with only lifted commands between: a run left between
            // them would look for the archive.
            Fragment::ExtractFile { file, .. } => {
                let removed = fragments[i + 1..]
                    .iter()
                    .take_while(|g| **g != Fragment::Unknown)
                    .any(|g| matches!(g, Fragment::Remove(p) if p.contains(file) && p.iter().all(|x| unpacked.contains(&x))));
                if removed { f.clone() } else { Fragment::Unknown }
            }
            Fragment::Remove(p) if !p.iter().all(|x| unpacked.contains(&x)) => Fragment::Unknown,
            f => f.clone(),
        })
        .collect();
    // Packages installed and then purged by the same RUN are build packages: present for the
    // runs, never in the image; the purge goes with them.
    let purged: Vec<String> = fragments
        .iter()
        .filter_map(|f| match f {
            Fragment::AptPurge(p) => Some(p.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let installed: Vec<String> = fragments
        .iter()
        .filter_map(|f| match f {
            Fragment::AptInstall(p) => Some(p.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let is_build = |p: &String| purged.contains(p) && installed.contains(p);
    // Those this RUN's lifted installs made build packages; a purge of only those goes.
    let mut this_build: Vec<String> = Vec::new();
    if !shell::is_and_chain(&cmds) && fragments.contains(&Fragment::Unknown) {
        whole(d, warnings);
        return Ok(());
    }
    let mut rest: Vec<String> = Vec::new();
    for (c, f) in cmds.iter().zip(fragments) {
        let f = match f {
            Fragment::AptInstall(p) if rest.is_empty() => {
                let (build, keep): (Vec<String>, Vec<String>) = p.into_iter().partition(is_build);
                for b in build {
                    if !d.build_packages.contains(&b) {
                        d.build_packages.push(b.clone());
                    }
                    this_build.push(b);
                }
                Fragment::AptInstall(keep)
            }
            Fragment::AptPurge(p) if p.iter().all(|x| this_build.contains(x)) => {
                warnings.push(at.here(format!(
                    "{} installed and purged by this RUN: build_packages, for the runs only",
                    p.join(" ")
                )));
                continue;
            }
            Fragment::AptPurge(_) => Fragment::Unknown,
            f => f,
        };
        if !rest.is_empty() || f == Fragment::Unknown {
            rest.push(subst_args(&c.text, args));
        } else if let Err(m) = d.apply(f, args) {
            rest.push(subst_args(&c.text, args));
            warnings.push(at.here(m.0));
        }
    }
    if !rest.is_empty() {
        let joined = rest.join(" && ");
        let cmd = format!("{}{joined}", arg_definitions(&joined, args));
        warnings.push(at.here(format!("kept as a [[run]] step: {cmd}")));
        d.push_run(cmd);
    }
    Ok(())
}

/// The label an imported HEALTHCHECK becomes.
pub const HEALTHCHECK_LABEL: &str = "imgbuild.healthcheck";

/// Directories every Debian or Ubuntu base has: `COPY f /usr/local/bin` copies into them, as
/// Docker does when the destination exists as a directory (which import cannot see).
const BASE_DIRS: &[&str] = &[
    "/bin",
    "/sbin",
    "/etc",
    "/opt",
    "/root",
    "/srv",
    "/tmp",
    "/var",
    "/home",
    "/usr",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/share",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/local/lib",
    "/usr/local/share",
    "/usr/local/etc",
];

/// A COPY destination as Docker reads it: ENV expanded, relative to the WORKDIR (`.` is the
/// WORKDIR itself), and with a trailing `/` when it names a directory (it ends with `/` or
/// `/.`, several sources are copied, or it is one of [`BASE_DIRS`]).
fn copy_dest(d: &Draft, raw: &str, sources: usize) -> String {
    let mut dest = expand_env(raw, &d.known_env);
    if !dest.starts_with('/') && !dest.starts_with('$') {
        let wd = d.workdir.as_deref().unwrap_or("/").trim_end_matches('/');
        dest = format!("{wd}/{dest}");
    }
    let dir = dest.ends_with('/')
        || dest.ends_with("/.")
        || sources > 1
        || BASE_DIRS.contains(&dest.as_str())
        || d.is_dir(&dest);
    let mut dest = dest
        .trim_end_matches("/.")
        .trim_end_matches('/')
        .replace("/./", "/");
    if dir {
        dest.push('/');
    }
    if dest.is_empty() {
        dest.push('/');
    }
    dest
}

/// COPY: an apt sources list from the context becomes apt sources, a directory one file entry
/// per file, anything else a `[[file]]`.
fn copy(
    d: &mut Draft,
    warnings: &mut Vec<String>,
    at: &At,
    c: &dockerfile_parser::CopyInstruction,
    context: Option<&Path>,
) -> Result<(), ImportError> {
    if c.flags.iter().any(|f| f.name.content == "from") {
        warnings.push(at.here("COPY --from another stage is not imported".into()));
        return Ok(());
    }
    // `--chown` names the files' owner; `--chmod` their mode; otherwise Docker keeps each
    // source file's own permission bits.
    let flag = |name: &str| {
        c.flags
            .iter()
            .find(|f| f.name.content == name)
            .map(|f| f.value.content.clone())
    };
    let owner = flag("chown");
    let chmod = match flag("chmod") {
        Some(m) => Some(
            u32::from_str_radix(&m, 8)
                .map_err(|_| at.err(format!("COPY --chmod={m} is not an octal mode")))?,
        ),
        None => None,
    };
    let record = |d: &mut Draft, src: String, dest: String| {
        use std::os::unix::fs::PermissionsExt;
        let own_mode = context
            .and_then(|c| std::fs::metadata(c.join(&src)).ok())
            .map(|m| m.permissions().mode() & 0o7777);
        let mode = chmod.or(own_mode).filter(|m| *m != 0o644);
        if mode.is_some() || owner.is_some() {
            d.file_attrs.insert(dest.clone(), (mode, owner.clone()));
        }
        d.files.push((src, dest));
    };
    for src in &c.sources {
        // Docker refuses sources outside the build context ("forbidden path outside the
        // build context"): so does the import.
        // Read lexically, a leading `/` being the context's root, as Docker reads it.
        if crate::fsutil::climbs_above(Path::new(&src.content)) {
            return Err(at.err(format!(
                "COPY source `{}` is outside the build context",
                src.content
            )));
        }
        let dest = &copy_dest(d, &c.destination.content, c.sources.len());
        // A sources list from the context becomes apt sources.
        if dest.starts_with("/etc/apt/sources.list.d")
            && src.content.ends_with(".list")
            && let Some(list) =
                context.and_then(|c| std::fs::read_to_string(c.join(&src.content)).ok())
        {
            let name = src.content.rsplit('/').next().unwrap_or(&src.content);
            let name = name.trim_end_matches(".list");
            for l in list
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("deb "))
            {
                let mut s = d.deb_line(name, l).map_err(|m| at.err(m.0))?;
                // The key is a file the Dockerfile copied from the context.
                if let Some(k) = &s.key {
                    let keyname = k.trim_start_matches("keys/");
                    if let Some(pos) = d
                        .files
                        .iter()
                        .position(|(_, dst)| dst.rsplit('/').next() == Some(keyname))
                    {
                        s.key = Some(d.files.remove(pos).0);
                    }
                }
                d.sources.push(s);
            }
            continue;
        }
        // A directory of the context: one `[[copy]]` (its contents go into DEST, as Docker
        // copies them), without what the context's .dockerignore leaves out of it.
        if let Some(ctx) = context
            && ctx.join(&src.content).is_dir()
        {
            let src_dir = src.content.trim_start_matches('/').trim_end_matches('/');
            let src_dir = if src_dir.is_empty() { "." } else { src_dir };
            d.copies.push(draft::CopyDir {
                src: src_dir.to_string(),
                dest: dest.trim_end_matches('/').to_string().replace("//", "/"),
                owner: owner.clone(),
                mode: chmod,
                exclude: dockerignore_for(ctx, src_dir),
            });
            continue;
        }
        let dest = if dest.ends_with('/') {
            format!(
                "{dest}{}",
                src.content.rsplit('/').next().unwrap_or(&src.content)
            )
        } else {
            dest.clone()
        };
        record(d, src.content.clone(), dest);
    }
    Ok(())
}

/// The build context's `.dockerignore` patterns that reach into the copied directory `dir`,
/// as gitignore patterns relative to it. Docker matches a pattern against the whole path from
/// the context's root, so `*.log` only names files at the root; `**/` patterns apply at any
/// depth; `dir/x` names `x` in `dir`.
fn dockerignore_for(ctx: &Path, dir: &str) -> Vec<String> {
    let Ok(text) = crate::fsutil::read_text(&ctx.join(".dockerignore"), 1 << 20) else {
        return Vec::new();
    };
    let prefix = if dir == "." {
        String::new()
    } else {
        format!("{}/", dir.trim_start_matches("./"))
    };
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (neg, pat) = match line.strip_prefix('!') {
            Some(p) => ("!", p.trim()),
            None => ("", line),
        };
        let pat = pat.trim_start_matches('/').trim_start_matches("./");
        let inside = if pat.starts_with("**/") {
            Some(pat.to_string())
        } else if prefix.is_empty() {
            Some(format!("/{pat}"))
        } else {
            pat.strip_prefix(&prefix).map(|rest| format!("/{rest}"))
        };
        if let Some(p) = inside.filter(|p| p != "/") {
            out.push(format!("{neg}{p}"));
        }
    }
    out
}

/// The instructions the parser leaves raw: USER, WORKDIR, SHELL, ADD; others are warned about.
fn misc(
    d: &mut Draft,
    warnings: &mut Vec<String>,
    at: &At,
    m: &dockerfile_parser::MiscInstruction,
    args: &[(String, String)],
) -> Result<(), ImportError> {
    let args_text = subst(m.arguments.to_string().trim(), args);
    match m.instruction.content.to_ascii_uppercase().as_str() {
        "USER" => d.user = Some(expand_env(&args_text, &d.known_env)),
        "WORKDIR" => {
            // Docker resolves a relative WORKDIR against the previous one.
            let w = expand_env(&args_text, &d.known_env);
            let w = if w.starts_with('/') || w.starts_with("${") {
                w
            } else {
                format!(
                    "{}/{w}",
                    d.workdir.as_deref().unwrap_or("").trim_end_matches('/')
                )
            };
            d.dirs.insert(w.trim_end_matches('/').to_string());
            d.workdir = Some(w);
        }
        // Docker expands ENV in these; each of them also sets image configuration only.
        "EXPOSE" => {
            let text = expand_env(&args_text, &d.known_env);
            for p in text.split_whitespace() {
                if !d.expose.iter().any(|e| e == p) {
                    d.expose.push(p.to_string());
                }
            }
        }
        "VOLUME" => {
            let text = expand_env(&args_text, &d.known_env);
            let dirs = serde_json::from_str::<Vec<String>>(&text)
                .unwrap_or_else(|_| text.split_whitespace().map(str::to_string).collect());
            for v in dirs {
                if !d.volumes.contains(&v) {
                    d.volumes.push(v);
                }
            }
        }
        // The OCI configuration has no health check (buildah and podman drop it from OCI
        // images): the command is kept as the label `imgbuild.healthcheck`, options and all,
        // for a runtime or an orchestrator to read; `HEALTHCHECK NONE` removes it.
        "HEALTHCHECK" => {
            d.labels.retain(|(k, _)| k != HEALTHCHECK_LABEL);
            if !args_text.eq_ignore_ascii_case("none") {
                d.labels.push((
                    HEALTHCHECK_LABEL.into(),
                    expand_env(&args_text, &d.known_env),
                ));
            }
        }
        "STOPSIGNAL" => d.stop_signal = Some(expand_env(&args_text, &d.known_env)),
        "SHELL" => match serde_json::from_str::<Vec<String>>(&args_text) {
            Ok(v) => d.shell = Some(v),
            Err(_) => return Err(at.err("SHELL needs a JSON array".into())),
        },
        "ADD" => {
            let parts: Vec<&str> = args_text.split_whitespace().collect();
            match parts.as_slice() {
                [src, dest] if src.starts_with("http") => d.downloads.push(draft::Download {
                    url: src.to_string(),
                    dest: Some(dest.to_string()),
                    ..Default::default()
                }),
                [src, dest] => d.files.push((src.to_string(), dest.to_string())),
                _ => warnings.push(at.here(format!("ADD {args_text} is not imported"))),
            }
        }
        other => warnings.push(at.here(format!("{other} is not imported"))),
    }
    Ok(())
}

/// Warnings about the whole import: `$(uname -s)`, the codename, keys to save.
fn closing_warnings(d: &mut Draft, warnings: &mut Vec<String>, file: &str, text: &str) {
    for (i, l) in text.lines().enumerate() {
        if l.contains("$(uname -s)") {
            warnings.push(format!(
                "{file}:{}: $(uname -s) became ${{os}}, which is lowercase (`linux`, not `Linux`): check the URL",
                i + 1
            ));
        }
    }
    if d.sources
        .iter()
        .any(|s| s.suite.contains("${var.codename}"))
    {
        let c = d.codename().unwrap_or_default();
        d.vars.push(("codename".into(), c.to_string()));
        if c.is_empty() {
            warnings.push(format!(
                "{file}: set [vars] codename to the base image's release ($(lsb_release -cs))"
            ));
        }
    }
    for (path, url) in &d.keys {
        let name = path.rsplit('/').next().unwrap_or(path);
        if d.sources
            .iter()
            .any(|s| s.key.as_deref() == Some(&format!("keys/{name}")))
        {
            warnings.push(format!(
                "{file}: the key the Dockerfile fetches from {url} must be saved as keys/{name} next to the recipe (curl -fsSL {url} | gpg --dearmor > keys/{name}); check its fingerprint"
            ));
        }
    }
}

fn exec_or_shell(e: &ShellOrExecExpr) -> Vec<String> {
    match e {
        ShellOrExecExpr::Exec(a) => a.as_str_vec().iter().map(|s| s.to_string()).collect(),
        ShellOrExecExpr::Shell(s) => vec![
            "/bin/sh".into(),
            "-c".into(),
            s.to_string().trim().to_string(),
        ],
    }
}

fn span(i: &Instruction) -> dockerfile_parser::Span {
    match i {
        Instruction::From(x) => x.span,
        Instruction::Arg(x) => x.span,
        Instruction::Label(x) => x.span,
        Instruction::Run(x) => x.span,
        Instruction::Entrypoint(x) => x.span,
        Instruction::Cmd(x) => x.span,
        Instruction::Copy(x) => x.span,
        Instruction::Env(x) => x.span,
        Instruction::Misc(x) => x.span,
    }
}
