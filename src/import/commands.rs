//! What a simple command of a RUN line means declaratively: `apt-get install` becomes
//! packages, `curl -o` a download, `useradd` a user, and so on. A command that is not
//! recognized is [`Fragment::Unknown`] and becomes a `[[run]]` step.

use super::accounts::{groupadd, useradd, usermod};
use super::shell::Command;

/// The declarative meaning of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fragment {
    /// Nothing to do in a recipe; the reason is shown in the import report.
    Drop(&'static str),
    AptInstall(Vec<String>),
    /// `apt-get purge|remove [--auto-remove] PKGS`.
    AptPurge(Vec<String>),
    AptUpgrade,
    /// `ppa:OWNER/NAME`.
    Ppa(String),
    Download {
        url: String,
        dest: String,
    },
    Extract {
        url: String,
        dir: String,
        strip: u32,
    },
    Symlink {
        target: String,
        path: String,
    },
    User {
        name: String,
        shell: Option<String>,
        groups: Vec<String>,
        /// As written: a number or a build argument.
        uid: Option<String>,
        home: Option<String>,
        /// `-r`: a system account.
        system: bool,
        /// `-m` (adduser's default).
        create_home: bool,
        /// `-g GROUP`: the primary group, by name or gid.
        primary: Option<String>,
    },
    /// `groupadd [-r] [-g GID] NAME`, `addgroup [--system] [--gid GID] NAME`.
    Group {
        name: String,
        /// As written: a number or a build argument.
        gid: Option<String>,
        system: bool,
    },
    /// `usermod -aG GROUPS USER`.
    AddToGroups {
        user: String,
        groups: Vec<String>,
    },
    /// `echo "NAME ALL=(ALL) NOPASSWD:ALL" >> /etc/sudoers.d/F`.
    Sudo {
        user: String,
    },
    Enable(Vec<String>),
    Pip {
        packages: Vec<String>,
        upgrade_pip: bool,
    },
    /// `curl URL | gpg --dearmor -o DEST`: a repository key fetched at build time.
    Key {
        url: String,
        dest: String,
    },
    /// `echo "deb ..." | tee /etc/apt/sources.list.d/F.list` (or `>` into it).
    SourceLine {
        line: String,
        file: String,
    },
    /// `chmod +x PATH` (or an octal mode).
    Chmod {
        mode: u32,
        path: String,
    },
    /// `echo "SHA256  FILE" | sha256sum -c -`: the checksum of a file a download wrote.
    Checksum {
        sha256: String,
        file: String,
    },
    /// `tar -xf FILE [-C DIR] [--strip-components=N]`: a downloaded archive unpacked (`dir`
    /// `None`: into the working directory).
    ExtractFile {
        file: String,
        dir: Option<String>,
        strip: u32,
    },
    /// `rm [-f] [-r] PATH...` of paths other than apt's lists.
    Remove(Vec<String>),
    /// `echo WORDS >> PATH`: a line added to a file.
    Append {
        path: String,
        content: String,
    },
    /// `mkdir [-p] [-m MODE] DIR...`.
    Mkdir {
        paths: Vec<String>,
        mode: Option<u32>,
    },
    /// `chown [-R] OWNER PATH...`.
    Chown {
        owner: String,
        paths: Vec<String>,
        recursive: bool,
    },
    Unknown,
}

/// Drops leading `VAR=value` assignments (`DEBIAN_FRONTEND=noninteractive apt-get ...`) and
/// a leading `sudo`.
fn program(words: &[String]) -> &[String] {
    let mut w = words;
    while let Some(first) = w.first() {
        let is_assign = first.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if is_assign || first == "sudo" {
            w = &w[1..];
        } else {
            break;
        }
    }
    w
}

fn operands(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| !a.starts_with('-'))
        .cloned()
        .collect()
}

/// The value of `-o X`, `-oX`, `--output X`, `--output=X` style options.
fn opt_value(args: &[String], short: &str, long: &str) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == short || a == long {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            return Some(v.to_string());
        }
        if short.len() == 2 && a.starts_with(short) && a.len() > 2 && !a.starts_with("--") {
            return Some(a[2..].to_string());
        }
    }
    None
}

/// The URL among `args`: `http(s)://...`, or one starting with a variable (`$BASE_URL/x`,
/// which the draft accepts only for a build argument).
fn url_in(args: &[String]) -> Option<String> {
    args.iter()
        .find(|a| a.starts_with("http://") || a.starts_with("https://"))
        .or_else(|| {
            args.iter()
                .find(|a| a.starts_with('$') && !a.starts_with("$(") && a.contains('/'))
        })
        .cloned()
}

fn apt(args: &[String]) -> Fragment {
    // Operands, without the values of `-o NAME=VALUE`, `-t RELEASE`, `-c FILE`.
    let mut ops = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" | "--option" | "-t" | "--target-release" | "-c" | "--config-file" => {
                it.next();
            }
            a if a.starts_with('-') => {}
            a => ops.push(a.to_string()),
        }
    }
    match ops.first().map(String::as_str) {
        Some("update") => Fragment::Drop("the package indexes are read at lock time"),
        Some("clean" | "autoclean" | "autoremove") => {
            Fragment::Drop("imgbuild keeps no apt cache in the image")
        }
        Some("upgrade" | "dist-upgrade" | "full-upgrade") => Fragment::AptUpgrade,
        Some("install") if ops.len() > 1 => Fragment::AptInstall(ops[1..].to_vec()),
        Some("purge" | "remove") if ops.len() > 1 => Fragment::AptPurge(ops[1..].to_vec()),
        _ => Fragment::Unknown,
    }
}

fn curl_or_wget(stage: &[String], is_wget: bool) -> Option<(String, Option<String>)> {
    let args = &stage[1..];
    let url = url_in(args)?;
    let dest = if is_wget {
        opt_value(args, "-O", "--output-document")
    } else {
        opt_value(args, "-o", "--output")
    };
    Some((url, dest.filter(|d| d != "-")))
}

fn tar_extract(stage: &[String]) -> Option<(String, u32)> {
    let args = &stage[1..];
    let extracting = args.iter().any(|a| {
        a == "--extract"
            || (a.starts_with('-') && !a.starts_with("--") && a.contains('x'))
            || (!a.starts_with('-') && a.contains('x') && a.chars().all(|c| "xzvfJj".contains(c)))
    });
    if !extracting {
        return None;
    }
    let dir = opt_value(args, "-C", "--directory").unwrap_or_else(|| "/".into());
    let strip = args
        .iter()
        .find_map(|a| a.strip_prefix("--strip-components="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Some((dir, strip))
}

/// `echo WORDS >> PATH` (or `>>PATH`): the line echo writes. Only what prints the same in
/// every shell's echo: no option, no backslash (dash's echo reads escapes), and nothing left
/// for the shell to expand.
fn echo_append(args: &[String]) -> Fragment {
    let Some(at) = args.iter().position(|a| a.starts_with(">>")) else {
        return Fragment::Unknown;
    };
    let (words, redirect) = args.split_at(at);
    let path = match redirect {
        [op, path] if op == ">>" => path.clone(),
        [glued] if glued.len() > 2 => glued[2..].to_string(),
        _ => return Fragment::Unknown,
    };
    let plain = |w: &String| !w.contains(['\\', '$', '`']);
    if words.first().is_some_and(|w| w.starts_with('-'))
        || !words.iter().all(plain)
        || path.contains(['$', '`', '*', '?'])
    {
        return Fragment::Unknown;
    }
    Fragment::Append {
        path,
        content: format!("{}\n", words.join(" ")),
    }
}

/// The archive `tar` reads: `-f FILE`, `--file[=]FILE`, `-xzf FILE`, or `xzf FILE`.
fn tar_file(args: &[String]) -> Option<String> {
    let mut it = args.iter().enumerate();
    while let Some((i, a)) = it.next() {
        if let Some(v) = a.strip_prefix("--file=") {
            return Some(v.to_string());
        }
        let bundle = (a.starts_with('-') && !a.starts_with("--"))
            || (i == 0 && !a.starts_with('-') && a.chars().all(|c| c.is_ascii_alphabetic()));
        if a == "--file" || (bundle && a.ends_with('f')) {
            return it.next().map(|(_, v)| v.clone());
        }
    }
    None
}

/// `mkdir` with `-p`, `-m MODE` (octal) and `-v`; any other option stays a run.
fn mkdir(args: &[String]) -> Fragment {
    let mut paths = Vec::new();
    let mut mode = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-p" | "--parents" | "-v" | "--verbose" | "-pv" | "-vp" => {}
            "-m" | "--mode" => match it.next().and_then(|m| u32::from_str_radix(m, 8).ok()) {
                Some(m) if m <= 0o7777 => mode = Some(m),
                _ => return Fragment::Unknown,
            },
            o if o.starts_with('-') => return Fragment::Unknown,
            p => paths.push(p.to_string()),
        }
    }
    if paths.is_empty() {
        return Fragment::Unknown;
    }
    Fragment::Mkdir { paths, mode }
}

/// `chown [-R] USER[:GROUP] PATH...` (a numeric or named owner; `USER:` and `:GROUP` stay runs).
fn chown(args: &[String]) -> Fragment {
    let mut recursive = false;
    let mut words = Vec::new();
    for a in args {
        match a.as_str() {
            "-R" | "--recursive" => recursive = true,
            o if o.starts_with('-') => return Fragment::Unknown,
            w => words.push(w.to_string()),
        }
    }
    let Some((owner, paths)) = words.split_first() else {
        return Fragment::Unknown;
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    };
    if paths.is_empty() || !owner.split(':').all(name_ok) || owner.split(':').count() > 2 {
        return Fragment::Unknown;
    }
    Fragment::Chown {
        owner: owner.clone(),
        paths: paths.to_vec(),
        recursive,
    }
}

fn pip(args: &[String]) -> Fragment {
    let ops = operands(args);
    if ops.first().map(String::as_str) != Some("install") {
        return Fragment::Unknown;
    }
    let upgrade = args.iter().any(|a| a == "--upgrade" || a == "-U");
    let pkgs: Vec<String> = ops[1..].to_vec();
    if upgrade && pkgs == ["pip"] {
        return Fragment::Pip {
            packages: Vec::new(),
            upgrade_pip: true,
        };
    }
    Fragment::Pip {
        packages: pkgs,
        upgrade_pip: false,
    }
}

fn sudo_line(line: &str) -> Fragment {
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        [user, "ALL=(ALL)", "NOPASSWD:ALL"] | [user, "ALL=(ALL:ALL)", "NOPASSWD:ALL"] => {
            Fragment::Sudo {
                user: (*user).to_string(),
            }
        }
        _ => Fragment::Unknown,
    }
}

/// Recognizes one command.
pub fn recognize(cmd: &Command) -> Fragment {
    if let [a, b] = cmd.stages.as_slice() {
        // `curl URL | tar -C DIR -x...` and `wget -O- URL | tar ...`
        let (pa, pb) = (program(a), program(b));
        if let (Some(p), Some(t)) = (pa.first(), pb.first())
            && (p == "curl" || p == "wget")
            && t == "tar"
            && let (Some((url, None)), Some((dir, strip))) =
                (curl_or_wget(pa, p == "wget"), tar_extract(pb))
        {
            return Fragment::Extract { url, dir, strip };
        }
        if let (Some(p), Some(g)) = (pa.first(), pb.first())
            && (p == "curl" || p == "wget")
            && g == "gpg"
            && pb.iter().any(|a| a == "--dearmor")
            && let (Some((url, None)), Some(dest)) = (
                curl_or_wget(pa, p == "wget"),
                opt_value(&pb[1..], "-o", "--output"),
            )
        {
            return Fragment::Key { url, dest };
        }
        // `echo "HASH  FILE" | sha256sum -c -` (`*FILE` in binary mode; `--strict`, `-s`).
        if let (Some(e), Some(c)) = (pa.first(), pb.first())
            && e == "echo"
            && c == "sha256sum"
            && pb[1..].iter().any(|a| a == "-c" || a == "--check")
            && pb[1..].iter().all(|a| {
                matches!(
                    a.as_str(),
                    "-c" | "--check"
                        | "-"
                        | "--strict"
                        | "-s"
                        | "--status"
                        | "-w"
                        | "--warn"
                        | "--quiet"
                )
            })
            && let [line] = &pa[1..]
            && let Some((hash, file)) = line.split_once(char::is_whitespace)
        {
            let file = file.trim_start().trim_start_matches('*');
            let hex = hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit());
            let var = hash.starts_with('$') && !hash[1..].contains('$');
            if (hex || var) && !file.is_empty() && !file.contains(char::is_whitespace) {
                return Fragment::Checksum {
                    sha256: hash.to_string(),
                    file: file.to_string(),
                };
            }
        }
        if let (Some(e), Some(t)) = (pa.first(), pb.first())
            && e == "echo"
            && t == "tee"
            && let ([line], [file]) = (&pa[1..], operands(&pb[1..]).as_slice())
            && line.starts_with("deb ")
            && file.starts_with("/etc/apt/sources.list.d/")
        {
            return Fragment::SourceLine {
                line: line.clone(),
                file: file.clone(),
            };
        }
        return Fragment::Unknown;
    }
    let [stage] = cmd.stages.as_slice() else {
        return Fragment::Unknown;
    };
    let words = program(stage);
    let Some(prog) = words.first() else {
        return Fragment::Drop("only variable assignments");
    };
    let args = &words[1..];
    match prog.as_str() {
        "apt-get" | "apt" => apt(args),
        "add-apt-repository" => match operands(args).as_slice() {
            [ppa] if ppa.starts_with("ppa:") => Fragment::Ppa(ppa.clone()),
            _ => Fragment::Unknown,
        },
        "rm" if operands(args)
            .iter()
            .all(|p| p.starts_with("/var/lib/apt/lists")) =>
        {
            Fragment::Drop("imgbuild keeps no apt lists in the image")
        }
        "rm" if args.iter().all(|a| {
            !a.starts_with('-')
                || matches!(
                    a.as_str(),
                    "-f" | "-r" | "-rf" | "-fr" | "-R" | "-Rf" | "-fR"
                )
        }) =>
        {
            Fragment::Remove(operands(args))
        }
        "tar" => match (tar_file(args), tar_extract(words)) {
            (Some(file), Some((_, strip))) => Fragment::ExtractFile {
                file,
                dir: opt_value(args, "-C", "--directory"),
                strip,
            },
            _ => Fragment::Unknown,
        },
        "curl" | "wget" => match curl_or_wget(words, prog == "wget") {
            Some((url, Some(dest))) => Fragment::Download { url, dest },
            _ => Fragment::Unknown,
        },
        "ln" if args
            .iter()
            .any(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('s')) =>
        {
            match operands(args).as_slice() {
                [target, path] => Fragment::Symlink {
                    target: target.clone(),
                    path: path.clone(),
                },
                _ => Fragment::Unknown,
            }
        }
        "groupadd" | "addgroup" => groupadd(args),
        "usermod" => usermod(args),
        "useradd" => useradd(args, false),
        "adduser" => useradd(args, true),
        // A passwordless rule for a user, in any sudoers file, is `[[user]] sudo` (which
        // writes it as `/etc/sudoers.d/USER`, 0440); other lines are lines added to the file.
        "echo" => {
            let target = match args {
                [line, op, path] if op == ">>" || op == ">" => Some((line, path.as_str())),
                [line, redirect] => redirect
                    .strip_prefix(">>")
                    .or_else(|| redirect.strip_prefix('>'))
                    .map(|p| (line, p)),
                _ => None,
            };
            match target.map(|(line, path)| (sudo_line(line), path)) {
                Some((Fragment::Sudo { user }, path)) if path.starts_with("/etc/sudoers") => {
                    Fragment::Sudo { user }
                }
                _ => echo_append(args),
            }
        }
        "systemctl" => match operands(args).split_first() {
            Some((verb, units)) if verb == "enable" && !units.is_empty() => {
                Fragment::Enable(units.to_vec())
            }
            _ => Fragment::Unknown,
        },
        "pip" | "pip3" => pip(args),
        "python3" | "python"
            if args.first().map(String::as_str) == Some("-m")
                && args.get(1).map(String::as_str) == Some("pip") =>
        {
            pip(&args[2..])
        }
        "mkdir" => mkdir(args),
        "chown" => chown(args),
        "chmod" => match args {
            [mode, path] => {
                let m = if mode == "+x" || mode == "a+x" || mode == "755" {
                    Some(0o755)
                } else {
                    u32::from_str_radix(mode, 8).ok()
                };
                match m {
                    Some(mode) => Fragment::Chmod {
                        mode,
                        path: path.clone(),
                    },
                    None => Fragment::Unknown,
                }
            }
            _ => Fragment::Unknown,
        },
        _ => Fragment::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::super::shell::split;
    use super::*;

    fn one(s: &str) -> Fragment {
        let c = split(s).unwrap();
        assert_eq!(c.len(), 1, "{s}");
        recognize(&c[0])
    }

    #[test]
    fn apt_commands() {
        assert!(matches!(one("apt-get update"), Fragment::Drop(_)));
        assert_eq!(
            one("DEBIAN_FRONTEND=\"noninteractive\" apt-get install --yes bash curl"),
            Fragment::AptInstall(vec!["bash".into(), "curl".into()])
        );
        assert_eq!(one("apt-get upgrade --yes"), Fragment::AptUpgrade);
        assert_eq!(
            one("add-apt-repository -y ppa:git-core/ppa"),
            Fragment::Ppa("ppa:git-core/ppa".into())
        );
        assert!(matches!(
            one("rm -rf /var/lib/apt/lists/*"),
            Fragment::Drop(_)
        ));
        // A removal is lifted only with the archive an unpack consumed (see run_shell).
        assert_eq!(
            one("rm -rf /tmp/x"),
            Fragment::Remove(vec!["/tmp/x".into()])
        );
        assert_eq!(one("rm -i /tmp/x"), Fragment::Unknown);
        assert_eq!(
            one("tar -xzf go.tgz -C /usr/local --strip-components=1"),
            Fragment::ExtractFile {
                file: "go.tgz".into(),
                dir: Some("/usr/local".into()),
                strip: 1
            }
        );
        assert_eq!(
            one("echo \"abc123  go.tgz\" | sha256sum -c -"),
            Fragment::Unknown,
            "not a sha256"
        );
        let h = "a".repeat(64);
        assert_eq!(
            one(&format!("echo \"{h} *go.tgz\" | sha256sum --strict -c -")),
            Fragment::Checksum {
                sha256: h,
                file: "go.tgz".into()
            }
        );
    }

    #[test]
    fn downloads() {
        assert_eq!(
            one(
                "curl -L \"https://x/compose-$(uname -s)-$(uname -m)\" -o /usr/local/bin/docker-compose"
            ),
            Fragment::Download {
                url: "https://x/compose-$(uname -s)-$(uname -m)".into(),
                dest: "/usr/local/bin/docker-compose".into()
            }
        );
        assert_eq!(
            one("wget -O /usr/bin/x https://x/y"),
            Fragment::Download {
                url: "https://x/y".into(),
                dest: "/usr/bin/x".into()
            }
        );
        assert_eq!(
            one("curl -L \"https://go.example/go.tar.gz\" | tar -C /usr/local -xzvf -"),
            Fragment::Extract {
                url: "https://go.example/go.tar.gz".into(),
                dir: "/usr/local".into(),
                strip: 0
            }
        );
        assert_eq!(
            one("curl -fsSL https://x/k.tgz | tar xz --strip-components=1 -C /opt/k"),
            Fragment::Extract {
                url: "https://x/k.tgz".into(),
                dir: "/opt/k".into(),
                strip: 1
            }
        );
        assert_eq!(one("curl https://x/install.sh | sh"), Fragment::Unknown);
    }

    #[test]
    fn users_links_services_pip() {
        assert_eq!(
            one("useradd coder --create-home --shell=/bin/bash --groups=docker,sudo --user-group"),
            Fragment::User {
                name: "coder".into(),
                shell: Some("/bin/bash".into()),
                groups: vec!["docker".into(), "sudo".into()],
                uid: None,
                home: None,
                system: false,
                create_home: true,
                primary: None,
            }
        );
        assert_eq!(
            one("adduser --disabled-password --gecos '' dev"),
            Fragment::User {
                name: "dev".into(),
                shell: Some("/bin/bash".into()),
                groups: vec![],
                uid: None,
                home: None,
                system: false,
                create_home: true,
                primary: None,
            }
        );
        assert_eq!(
            one("groupadd -r --gid=120 svc"),
            Fragment::Group {
                name: "svc".into(),
                gid: Some("120".into()),
                system: true
            }
        );
        assert_eq!(
            one("usermod -aG docker,sudo dev"),
            Fragment::AddToGroups {
                user: "dev".into(),
                groups: vec!["docker".into(), "sudo".into()]
            }
        );
        assert_eq!(one("usermod -G docker dev"), Fragment::Unknown);
        assert_eq!(one("groupadd -o -g 5 x"), Fragment::Unknown);
        assert_eq!(
            one("echo \"coder ALL=(ALL) NOPASSWD:ALL\" >>/etc/sudoers.d/nopasswd"),
            Fragment::Sudo {
                user: "coder".into()
            }
        );
        assert_eq!(
            one("ln -s /usr/bin/batcat /usr/bin/bat"),
            Fragment::Symlink {
                target: "/usr/bin/batcat".into(),
                path: "/usr/bin/bat".into()
            }
        );
        assert_eq!(
            one("systemctl enable docker"),
            Fragment::Enable(vec!["docker".into()])
        );
        assert_eq!(
            one("pip3 install --upgrade pip"),
            Fragment::Pip {
                packages: vec![],
                upgrade_pip: true
            }
        );
        assert_eq!(
            one("python3 -m pip install ansible"),
            Fragment::Pip {
                packages: vec!["ansible".into()],
                upgrade_pip: false
            }
        );
        assert_eq!(
            one("chmod +x /usr/local/bin/docker-compose"),
            Fragment::Chmod {
                mode: 0o755,
                path: "/usr/local/bin/docker-compose".into()
            }
        );
        assert_eq!(one("make -j4"), Fragment::Unknown);
    }
}
