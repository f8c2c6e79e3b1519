//! Building without root: imgbuild runs itself again as root of a user namespace in which
//! the user's subordinate ids (`/etc/subuid`, `/etc/subgid`) are mapped, as podman and
//! mmdebstrap's `unshare` mode do. Inside, uid 0 is the user and uids 1..=N are the user's
//! range, so packages can own files as `_apt` or `root:shadow`, the sandbox works as for root,
//! and the layers record the ids as seen inside: the image is the one a root build makes.
//!
//! The namespace is made by util-linux's `unshare` (`--map-users`/`--map-groups`), which
//! writes the maps with shadow's setuid `newuidmap`/`newgidmap`, the only programs allowed to
//! map ranges the user does not own outright. Before that, [`check`] names what is missing:
//! the `uidmap` package, a range for the user, or user namespaces the kernel refuses.
//! imgbuild writes nothing in the user's name outside the namespace: its cache and outputs
//! belong to the user (uid 0 inside is the user outside).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set in the environment of the imgbuild running inside the namespace.
pub const INSIDE_ENV: &str = "IMGBUILD_ROOTLESS";

/// The ids an image uses reach 65534 (`nobody`): a smaller range cannot hold them.
pub const MIN_RANGE: u64 = 65536;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootlessError {
    #[error(
        "building as a normal user needs `{0}` (setuid, from the Debian package `uidmap`) to map the user's subordinate ids"
    )]
    NoIdMapper(&'static str),
    #[error("`unshare` was not found: install the Debian package `util-linux`")]
    NoUnshare,
    #[error(
        "no subordinate {what} range of at least {MIN_RANGE} for `{user}` in {file}: add one as root, e.g. `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}`"
    )]
    NoRange {
        what: &'static str,
        user: String,
        file: PathBuf,
    },
    #[error("unprivileged user namespaces are disabled: {0}")]
    Disabled(String),
}

/// A subordinate id range: `count` ids from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub count: u64,
}

/// The first range of at least [`MIN_RANGE`] ids for the user (by name or uid) in the text of
/// `/etc/subuid` or `/etc/subgid` (`NAME:START:COUNT` lines).
pub fn range_for(text: &str, name: &str, uid: u32) -> Option<Range> {
    let uid = uid.to_string();
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if f.next().is_some() || (who != name && who != uid) {
            return None;
        }
        let r = Range {
            start: start.parse().ok()?,
            count: count.parse().ok()?,
        };
        (r.count >= MIN_RANGE).then_some(r)
    })
}

/// The name of `uid` in the text of `/etc/passwd`.
pub fn user_name(passwd: &str, uid: u32) -> Option<String> {
    let uid = uid.to_string();
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2] == uid).then(|| f[0].to_string())
    })
}

/// Where the system's files are (the tests' fixtures use another root).
#[derive(Debug, Clone)]
pub struct System {
    pub etc: PathBuf,
    pub proc_sys: PathBuf,
}

impl Default for System {
    fn default() -> Self {
        System {
            etc: PathBuf::from("/etc"),
            proc_sys: PathBuf::from("/proc/sys"),
        }
    }
}

/// What the namespace maps: the user's id to 0, its ranges from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub user: String,
    pub uids: Range,
    pub gids: Range,
}

/// Checks that user `uid` can have the namespace, and what it maps.
pub fn check(sys: &System, uid: u32) -> Result<Mapping, RootlessError> {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let sysctl = |name: &str| -> Option<i64> {
        read(&sys.proc_sys.join(name.replace('.', "/")))
            .trim()
            .parse()
            .ok()
    };
    if sysctl("user.max_user_namespaces") == Some(0) {
        return Err(RootlessError::Disabled(
            "user.max_user_namespaces is 0 (sysctl -w user.max_user_namespaces=15000)".into(),
        ));
    }
    if sysctl("kernel.unprivileged_userns_clone") == Some(0) {
        return Err(RootlessError::Disabled(
            "kernel.unprivileged_userns_clone is 0 (sysctl -w kernel.unprivileged_userns_clone=1)"
                .into(),
        ));
    }
    if sysctl("kernel.apparmor_restrict_unprivileged_userns") == Some(1) {
        return Err(RootlessError::Disabled(
            "kernel.apparmor_restrict_unprivileged_userns is 1 (AppArmor gives new user namespaces no capabilities; sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile allowing `userns` for imgbuild)"
                .into(),
        ));
    }
    for tool in ["newuidmap", "newgidmap"] {
        if crate::tool::find(tool).is_none() {
            return Err(RootlessError::NoIdMapper(tool));
        }
    }
    if crate::tool::find("unshare").is_none() {
        return Err(RootlessError::NoUnshare);
    }
    let user = user_name(&read(&sys.etc.join("passwd")), uid).unwrap_or_else(|| uid.to_string());
    let range = |file: &str, what: &'static str| {
        let path = sys.etc.join(file);
        range_for(&read(&path), &user, uid).ok_or_else(|| RootlessError::NoRange {
            what,
            user: user.clone(),
            file: path,
        })
    };
    Ok(Mapping {
        uids: range("subuid", "uid")?,
        gids: range("subgid", "gid")?,
        user: user.clone(),
    })
}

/// The command that runs `exe args` as root of a new user namespace with `m`'s mapping
/// (`unshare` maps the user to 0 and the ranges from 1, through newuidmap and newgidmap).
pub fn command(m: &Mapping, exe: &Path, args: &[OsString]) -> Command {
    let unshare = crate::tool::find("unshare").unwrap_or_else(|| PathBuf::from("unshare"));
    let mut c = Command::new(unshare);
    c.arg("--map-root-user")
        .arg(format!("--map-users={},1,{}", m.uids.start, m.uids.count))
        .arg(format!("--map-groups={},1,{}", m.gids.start, m.gids.count))
        .args(["--setgroups", "allow", "--"])
        .arg(exe)
        .args(args)
        .env(INSIDE_ENV, "1");
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_found_by_name_or_uid_and_must_be_big_enough() {
        let text = "other:100000:65536\nbuilder:200000:1000\nbuilder:300000:65536\n";
        assert_eq!(
            range_for(text, "builder", 1001),
            Some(Range {
                start: 300000,
                count: 65536
            })
        );
        assert_eq!(
            range_for("1001:400000:70000\n", "builder", 1001),
            Some(Range {
                start: 400000,
                count: 70000
            })
        );
        assert_eq!(range_for(text, "nobody", 1002), None);
        assert_eq!(
            range_for("builder:x:65536\nbuilder:1:2:3\n", "builder", 1),
            None
        );
        assert_eq!(
            user_name(
                "root:x:0:0::/root:/bin/sh\nbuilder:x:1001:1001::/home/b:/bin/sh\n",
                1001
            ),
            Some("builder".into())
        );
    }

    #[test]
    fn each_missing_piece_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System {
            etc: dir.path().join("etc"),
            proc_sys: dir.path().join("sys"),
        };
        std::fs::create_dir_all(sys.etc.clone()).unwrap();
        std::fs::create_dir_all(sys.proc_sys.join("user")).unwrap();
        std::fs::create_dir_all(sys.proc_sys.join("kernel")).unwrap();
        std::fs::write(sys.etc.join("passwd"), "builder:x:1001:1001::/h:/bin/sh\n").unwrap();
        std::fs::write(sys.proc_sys.join("user/max_user_namespaces"), "0\n").unwrap();
        assert!(
            matches!(check(&sys, 1001), Err(RootlessError::Disabled(m)) if m.contains("max_user_namespaces"))
        );
        std::fs::write(sys.proc_sys.join("user/max_user_namespaces"), "100\n").unwrap();
        std::fs::write(sys.proc_sys.join("kernel/unprivileged_userns_clone"), "0\n").unwrap();
        assert!(
            matches!(check(&sys, 1001), Err(RootlessError::Disabled(m)) if m.contains("unprivileged_userns_clone"))
        );
        std::fs::write(sys.proc_sys.join("kernel/unprivileged_userns_clone"), "1\n").unwrap();
        if crate::tool::find("newuidmap").is_some() && crate::tool::find("unshare").is_some() {
            let e = check(&sys, 1001).unwrap_err();
            assert!(
                e.to_string().contains("no subordinate uid range")
                    && e.to_string().contains("`builder`"),
                "{e}"
            );
            std::fs::write(sys.etc.join("subuid"), "builder:300000:65536\n").unwrap();
            let e = check(&sys, 1001).unwrap_err();
            assert!(e.to_string().contains("subordinate gid range"), "{e}");
            std::fs::write(sys.etc.join("subgid"), "1001:400000:65536\n").unwrap();
            let m = check(&sys, 1001).unwrap();
            assert_eq!((m.uids.start, m.gids.start), (300000, 400000));
        }
    }
}
