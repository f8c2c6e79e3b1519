//! Account commands of a RUN line: `useradd`/`adduser`, `groupadd`/`addgroup` and
//! `usermod -aG`, read option by option into [`Fragment::User`], [`Fragment::Group`] and
//! [`Fragment::AddToGroups`].

use super::commands::Fragment;

/// `useradd` and Debian's `adduser`, read option by option. Only what a `[[user]]` states
/// exactly is mapped: a name, `--uid`, `--home`, `--shell`, supplementary groups, with a home
/// made (`useradd -m`; adduser's default) and a group of the user's name. Any other option
/// (`--system`, `--no-create-home`, a primary `--gid`, a comment, a password...) leaves the
/// command as it is, a `[[run]]` step, rather than a different user.
pub(super) fn useradd(args: &[String], adduser: bool) -> Fragment {
    let mut name = None;
    let mut shell = None;
    let mut home = None;
    let mut uid = None;
    let mut groups = Vec::new();
    let mut create_home = adduser;
    let mut system = false;
    let mut primary = None;
    // adduser's default shell (DSHELL in adduser.conf); useradd's is /bin/sh, as [[user]]'s.
    if adduser {
        shell = Some("/bin/bash".to_string());
    }
    // (option, value) pairs, short options split (`-md /x` is `-m` and `-d /x`).
    let mut opts: Vec<(String, Option<String>)> = Vec::new();
    let mut operands = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let mut next = || {
            i += 1;
            args.get(i).cloned()
        };
        if a == "--" {
            operands.extend(args[i + 1..].iter().cloned());
            break;
        } else if let Some(long) = a.strip_prefix("--") {
            match long.split_once('=') {
                Some((k, v)) => opts.push((k.to_string(), Some(v.to_string()))),
                None if long_takes_value(long, adduser) => {
                    let v = next();
                    opts.push((long.to_string(), v));
                }
                None => opts.push((long.to_string(), None)),
            }
        } else if let Some(short) = a.strip_prefix('-').filter(|s| !s.is_empty()) {
            let chars: Vec<char> = short.chars().collect();
            for (j, c) in chars.iter().enumerate() {
                if "cdefgGkKpsubRPZ".contains(*c) {
                    let rest: String = chars[j + 1..].iter().collect();
                    let v = if rest.is_empty() { next() } else { Some(rest) };
                    opts.push((c.to_string(), v));
                    break;
                }
                opts.push((c.to_string(), None));
            }
        } else {
            operands.push(a.clone());
        }
        i += 1;
    }
    for (k, v) in opts {
        match (k.as_str(), v) {
            ("s" | "shell", Some(v)) => shell = Some(v),
            ("d" | "home-dir" | "home", Some(v)) => home = Some(v),
            ("u" | "uid", Some(v)) if is_id(&v) => uid = Some(v),
            ("G" | "groups", Some(v)) => groups.extend(v.split(',').map(str::to_string)),
            ("m" | "create-home", None) => create_home = true,
            ("M" | "no-create-home", None) => create_home = false,
            // adduser --system means other defaults (home, shell, primary group): a run.
            ("r" | "system", None) if !adduser => system = true,
            ("g" | "gid", Some(v)) => primary = Some(v),
            // The group of the user's name: what [[user]] makes anyway.
            ("U" | "user-group", None) => {}
            ("q" | "quiet", None) if adduser => {}
            ("disabled-password" | "disabled-login", None) if adduser => {}
            ("gecos" | "comment", Some(v)) if v.is_empty() => {}
            _ => return Fragment::Unknown,
        }
    }
    if let [n] = operands.as_slice() {
        name = Some(n.clone());
    }
    match name {
        Some(name) => Fragment::User {
            name,
            shell,
            groups: groups.into_iter().filter(|g| !g.is_empty()).collect(),
            uid,
            home,
            system,
            create_home,
            primary,
        },
        _ => Fragment::Unknown,
    }
}

/// A uid or gid as a recipe can hold it: a number, or one variable (`$UID`, `${UID}`).
fn is_id(v: &str) -> bool {
    let var = |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    v.parse::<u32>().is_ok()
        || v.strip_prefix("${")
            .and_then(|r| r.strip_suffix('}'))
            .is_some_and(var)
        || v.strip_prefix('$').is_some_and(var)
}

/// `groupadd` and Debian's `addgroup`: a name, `-g`/`--gid`, `-r`/`--system`, `-f` (nothing
/// to do when it exists, which [[group]] does anyway).
pub(super) fn groupadd(args: &[String]) -> Fragment {
    let mut gid = None;
    let mut system = false;
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (k, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        match k {
            "-g" | "--gid" => match inline.or_else(|| it.next().cloned()) {
                Some(v) if is_id(&v) => gid = Some(v),
                _ => return Fragment::Unknown,
            },
            "-r" | "--system" => system = true,
            "-f" | "--force" | "--quiet" | "-q" => {}
            o if o.starts_with('-') => return Fragment::Unknown,
            n => names.push(n.to_string()),
        }
    }
    match names.as_slice() {
        [name] => Fragment::Group {
            name: name.clone(),
            gid,
            system,
        },
        _ => Fragment::Unknown,
    }
}

/// `usermod -aG GROUPS USER` (`-a -G`, `--append --groups`); anything else stays a run.
pub(super) fn usermod(args: &[String]) -> Fragment {
    let mut append = false;
    let mut groups = None;
    let mut users = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-a" | "--append" => append = true,
            "-aG" | "-G" | "--groups" => {
                append |= a == "-aG";
                groups = it.next().cloned();
            }
            o if o.starts_with('-') => return Fragment::Unknown,
            u => users.push(u.to_string()),
        }
    }
    match (append, groups, users.as_slice()) {
        (true, Some(g), [user]) => Fragment::AddToGroups {
            user: user.clone(),
            groups: g
                .split(',')
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect(),
        },
        _ => Fragment::Unknown,
    }
}

/// Long options of useradd and adduser whose value is the next word.
fn long_takes_value(a: &str, adduser: bool) -> bool {
    if adduser {
        matches!(
            a,
            "home"
                | "shell"
                | "uid"
                | "gid"
                | "ingroup"
                | "gecos"
                | "comment"
                | "firstuid"
                | "lastuid"
                | "firstgid"
                | "lastgid"
                | "conf"
        )
    } else {
        matches!(
            a,
            "base-dir"
                | "comment"
                | "home-dir"
                | "expiredate"
                | "inactive"
                | "gid"
                | "groups"
                | "skel"
                | "key"
                | "password"
                | "shell"
                | "uid"
                | "root"
                | "prefix"
                | "selinux-user"
                | "selinux-range"
        )
    }
}
