//! The users step: `[[group]]` and `[[user]]` written into `/etc/passwd`, `/etc/group`,
//! `/etc/shadow` and `/etc/gshadow` (starting from the image's own), home directories seeded
//! from `/etc/skel` with the image's `login.defs` home mode, subordinate id ranges in
//! `/etc/subuid` and `/etc/subgid` when the image has them, and sudoers drop-ins, as
//! `groupadd`, `useradd -m -U` and a `/etc/sudoers.d` file would leave them.

use super::tree::{NodeKind, Tree};
use crate::layer::Meta;
use crate::lower::{Kind, LowerFs};
use crate::plan::FileSource;
use crate::recipe::{FieldPath, Group, User};

/// An `owner` naming a user or group the image does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OwnerError(pub String);

impl From<String> for OwnerError {
    fn from(m: String) -> Self {
        OwnerError(m)
    }
}

impl From<&str> for OwnerError {
    fn from(m: &str) -> Self {
        OwnerError(m.to_string())
    }
}

/// First id handed out to users and groups without one, as `/etc/login.defs` UID_MIN.
const ID_MIN: u32 = 1000;
/// UID_MAX / GID_MAX of Debian's `/etc/login.defs`.
const ID_MAX: u32 = 60000;

/// A failure naming the recipe field at fault.
#[derive(Debug)]
pub struct FieldError {
    pub field: FieldPath,
    pub message: String,
}

fn lines(lower: &LowerFs, path: &str) -> Vec<Vec<String>> {
    let text = lower
        .read(path.as_bytes())
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

fn join(rows: &[Vec<String>]) -> Vec<u8> {
    let mut s = String::new();
    for r in rows {
        s.push_str(&r.join(":"));
        s.push('\n');
    }
    s.into_bytes()
}

fn id_of(row: &[String]) -> Option<u32> {
    row.get(2)?.parse().ok()
}

/// SYS_UID_MIN..=SYS_UID_MAX (and the GID pair): shadow's defaults, which Debian's
/// `/etc/login.defs` leaves commented out (101, and UID_MIN - 1).
const SYS_MIN: u32 = 101;
const SYS_MAX: u32 = 999;

/// The id `useradd -r`/`groupadd -r` hand out (shadow's `find_new_uid`/`find_new_gid`):
/// the first free one below the lowest system id in use, so a deleted account's id is not
/// reused; from the top of the range down when none is in use or the lowest is SYS_MIN; the
/// highest free one anywhere in the range when that finds nothing.
fn next_free_system(used: &[Vec<String>]) -> Option<u32> {
    let taken = |id: u32| used.iter().any(|r| id_of(r) == Some(id));
    let lowest = used
        .iter()
        .filter_map(|r| id_of(r))
        .filter(|id| (SYS_MIN..=SYS_MAX).contains(id))
        .min();
    let start = match lowest {
        Some(l) if l > SYS_MIN => l - 1,
        _ => SYS_MAX,
    };
    (SYS_MIN..=start)
        .rev()
        .find(|id| !taken(*id))
        .or_else(|| (SYS_MIN..=SYS_MAX).rev().find(|id| !taken(*id)))
}

/// A new id for a user or group: system or regular.
fn new_id(used: &[Vec<String>], system: bool) -> Result<u32, String> {
    if system {
        next_free_system(used).ok_or_else(|| {
            format!("no free system id left in {SYS_MIN}..{SYS_MAX}: give one explicitly")
        })
    } else {
        Ok(next_free(used))
    }
}

/// The id useradd/groupadd hand out: one above the highest in use between UID_MIN and
/// UID_MAX (1000..=60000), or UID_MIN when none is; only when that passes UID_MAX, the lowest
/// free one.
fn next_free(used: &[Vec<String>]) -> u32 {
    let in_range = |id: &u32| (ID_MIN..=ID_MAX).contains(id);
    match used.iter().filter_map(|r| id_of(r)).filter(in_range).max() {
        Some(top) if top < ID_MAX => top + 1,
        Some(_) => {
            let mut id = ID_MIN;
            while used.iter().any(|r| id_of(r) == Some(id)) {
                id += 1;
            }
            id
        }
        None => ID_MIN,
    }
}

/// A new group with no members, in `/etc/group` and `/etc/gshadow`.
fn add_group(group: &mut Vec<Vec<String>>, gshadow: &mut Vec<Vec<String>>, name: &str, gid: u32) {
    group.push(vec![
        name.to_string(),
        "x".into(),
        gid.to_string(),
        String::new(),
    ]);
    gshadow.push(vec![
        name.to_string(),
        "!".into(),
        String::new(),
        String::new(),
    ]);
}

/// Looks up `name` (or a number) in `/etc/passwd` of the image: (uid, primary gid).
pub fn lookup_user(lower: &LowerFs, name: &str) -> Option<(u32, u32)> {
    if let Ok(n) = name.parse() {
        return Some((n, n));
    }
    let row = lines(lower, "etc/passwd")
        .into_iter()
        .find(|r| r[0] == name)?;
    Some((id_of(&row)?, row.get(3)?.parse().ok()?))
}

/// Looks up a group name (or number) in `/etc/group` of the image.
pub fn lookup_group(lower: &LowerFs, name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    lines(lower, "etc/group")
        .into_iter()
        .find(|r| r[0] == name)
        .and_then(|r| id_of(&r))
}

/// Resolves an `owner` (`user`, `user:group`, `uid:gid`) to numeric ids.
pub fn resolve_owner(lower: &LowerFs, owner: &str) -> Result<(u64, u64), OwnerError> {
    let (u, g) = owner
        .split_once(':')
        .map_or((owner, None), |(u, g)| (u, Some(g)));
    let (uid, primary) =
        lookup_user(lower, u).ok_or_else(|| format!("user `{u}` does not exist in the image"))?;
    let gid = match g {
        Some(g) => lookup_group(lower, g)
            .ok_or_else(|| format!("group `{g}` does not exist in the image"))?,
        None => primary,
    };
    Ok((uid as u64, gid as u64))
}

fn file(tree: &mut Tree, lower: &LowerFs, path: &str, bytes: Vec<u8>, meta: Meta) {
    let size = bytes.len() as u64;
    tree.add(
        lower,
        path,
        NodeKind::File {
            source: FileSource::Inline(bytes),
            size,
        },
        meta,
    );
}

/// The account files being edited: rows of `:`-separated fields.
struct Accounts {
    passwd: Vec<Vec<String>>,
    group: Vec<Vec<String>>,
    shadow: Vec<Vec<String>>,
    gshadow: Vec<Vec<String>>,
    had_gshadow: bool,
}

impl Accounts {
    /// The image's own files; root's lines on an image without them (scratch).
    fn read(lower: &LowerFs) -> Accounts {
        let mut passwd = lines(lower, "etc/passwd");
        let mut group = lines(lower, "etc/group");
        let mut shadow = lines(lower, "etc/shadow");
        let had_gshadow = lower.get(b"etc/gshadow").is_some();
        let mut gshadow = lines(lower, "etc/gshadow");
        // An image without account files (scratch) still needs root.
        if passwd.is_empty() {
            passwd.push(
                ["root", "x", "0", "0", "root", "/root", "/bin/sh"]
                    .map(String::from)
                    .to_vec(),
            );
            shadow.push(
                ["root", "*", "", "0", "99999", "7", "", "", ""]
                    .map(String::from)
                    .to_vec(),
            );
        }
        if group.is_empty() {
            group.push(["root", "x", "0", ""].map(String::from).to_vec());
            gshadow.push(["root", "*", "", ""].map(String::from).to_vec());
        }
        Accounts {
            passwd,
            group,
            shadow,
            gshadow,
            had_gshadow,
        }
    }

    /// `[[group]]`: added unless present (with the same gid, when one is asked for).
    fn add_groups(&mut self, groups: &[Group]) -> Result<(), FieldError> {
        let root = FieldPath::root();
        let (group, gshadow) = (&mut self.group, &mut self.gshadow);
        for (i, g) in groups.iter().enumerate() {
            let field = root.key("group").index(i);
            if let Some(row) = group.iter().find(|r| r[0] == g.name) {
                if let Some(want) = g.gid
                    && id_of(row) != Some(want)
                {
                    return Err(FieldError {
                        field: field.key("gid"),
                        message: format!("group `{}` already exists with gid {}", g.name, row[2]),
                    });
                }
                continue;
            }
            let gid = match g.gid {
                Some(id) => id,
                None => new_id(group, g.system).map_err(|message| FieldError {
                    field: field.key("gid"),
                    message,
                })?,
            };
            if group.iter().any(|r| id_of(r) == Some(gid)) {
                return Err(FieldError {
                    field: field.key("gid"),
                    message: format!("gid {gid} is already taken"),
                });
            }
            add_group(group, gshadow, &g.name, gid);
        }
        Ok(())
    }

    /// User `i` (`useradd -U`): its passwd and shadow lines, its own group, its memberships.
    /// Returns its uid, gid and home.
    fn add_user(&mut self, i: usize, u: &User) -> Result<(u32, u32, String), FieldError> {
        let root = FieldPath::root();
        let (passwd, group, shadow, gshadow) = (
            &mut self.passwd,
            &mut self.group,
            &mut self.shadow,
            &mut self.gshadow,
        );
        let field = root.key("user").index(i);
        let existing = passwd.iter().position(|r| r[0] == u.name);
        let uid = match (u.uid, existing) {
            (Some(id), _) => id,
            (None, Some(pos)) => id_of(&passwd[pos]).unwrap_or(ID_MIN),
            (None, None) => new_id(passwd, u.system).map_err(|message| FieldError {
                field: field.key("uid"),
                message,
            })?,
        };
        if passwd
            .iter()
            .any(|r| r[0] != u.name && id_of(r) == Some(uid))
        {
            return Err(FieldError {
                field: field.key("uid"),
                message: format!("uid {uid} is already taken"),
            });
        }
        // The user's own group (useradd --user-group), with gid = uid when free.
        let gid = match group.iter().find(|r| r[0] == u.name) {
            Some(r) => id_of(r).unwrap_or(uid),
            None => {
                let gid = if group.iter().any(|r| id_of(r) == Some(uid)) {
                    new_id(group, u.system).map_err(|message| FieldError {
                        field: field.key("uid"),
                        message,
                    })?
                } else {
                    uid
                };
                add_group(group, gshadow, &u.name, gid);
                gid
            }
        };
        for (j, g) in u.groups.iter().enumerate() {
            let add = |rows: &mut Vec<Vec<String>>, idx: usize| {
                let Some(row) = rows.iter_mut().find(|r| r[0] == *g) else {
                    return false;
                };
                while row.len() <= idx {
                    row.push(String::new());
                }
                let mut members: Vec<&str> =
                    row[idx].split(',').filter(|m| !m.is_empty()).collect();
                if !members.contains(&u.name.as_str()) {
                    members.push(&u.name);
                }
                row[idx] = members.join(",");
                true
            };
            if !add(group, 3) {
                return Err(FieldError {
                    field: field.key("groups").index(j),
                    message: format!(
                        "group `{g}` does not exist in the image: declare it with [[group]]"
                    ),
                });
            }
            add(gshadow, 3);
        }
        let home = u
            .home
            .clone()
            .unwrap_or_else(|| format!("/home/{}", u.name));
        let shell = u.shell.clone().unwrap_or_else(|| "/bin/sh".into());
        let row = vec![
            u.name.clone(),
            "x".into(),
            uid.to_string(),
            gid.to_string(),
            String::new(),
            home.clone(),
            shell,
        ];
        match existing {
            Some(pos) => passwd[pos] = row,
            None => passwd.push(row),
        }
        if !shadow.iter().any(|r| r[0] == u.name) {
            // Locked password, no last-change day: the same line on every build. useradd
            // gives a system account no aging fields.
            let aging = if u.system {
                ["", "", ""]
            } else {
                ["0", "99999", "7"]
            };
            let [min, max, warn] = aging;
            shadow.push(
                [u.name.as_str(), "!", "", min, max, warn, "", "", ""]
                    .map(String::from)
                    .to_vec(),
            );
        }
        Ok((uid, gid, home))
    }
}

/// The mode `useradd -m` gives a home in this image: `HOME_MODE` of `/etc/login.defs`, else
/// what its `UMASK` leaves of 0777 (Debian: 022, so 0755; Ubuntu sets HOME_MODE 0750).
fn home_mode(lower: &LowerFs) -> u32 {
    let defs = lower
        .read(b"etc/login.defs")
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let value = |key: &str| {
        defs.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(key)).then(|| w.next()).flatten()
            })
            .and_then(|v| u32::from_str_radix(v.trim_start_matches("0o"), 8).ok())
    };
    match value("HOME_MODE") {
        Some(m) => m & 0o7777,
        None => 0o777 & !value("UMASK").unwrap_or(0o022),
    }
}

/// `/etc/subuid` or `/etc/subgid` with a range for each new user, as useradd adds one when
/// the file exists: 65536 ids from 100000 or after the last range (SUB_UID_MIN/COUNT).
fn subordinate(lower: &LowerFs, file: &str, users: &[(String, bool)]) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(lower.read(file.as_bytes())?).into_owned();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut next = lines
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(f.get(1)?.parse::<u64>().ok()? + f.get(2)?.parse::<u64>().ok()?)
        })
        .max()
        .unwrap_or(100_000)
        .max(100_000);
    let mut changed = false;
    for (name, new) in users {
        if *new && !lines.iter().any(|l| l.split(':').next() == Some(name)) {
            lines.push(format!("{name}:{next}:65536"));
            next += 65536;
            changed = true;
        }
    }
    changed.then(|| {
        let mut out = lines.join("\n");
        out.push('\n');
        out.into_bytes()
    })
}

/// A user's home (its parents root's), seeded from `/etc/skel` as `useradd -m` does.
fn home(tree: &mut Tree, lower: &LowerFs, uid: u32, gid: u32, home: &str) {
    let owner = Meta {
        mode: home_mode(lower),
        uid: uid as u64,
        gid: gid as u64,
    };
    // The home's parents (`/home`) belong to root; only the home itself to the user.
    let home_parent = home.rsplit_once('/').map_or("", |(p, _)| p);
    tree.parents(lower, &lower.resolve(home_parent.as_bytes()), Meta::DIR);
    let home_path = tree.add(lower, home, NodeKind::Dir, owner);
    // Seed the home from /etc/skel, as `useradd -m` does.
    for (path, e) in lower.children(b"etc/skel") {
        let rel = String::from_utf8_lossy(&path[b"etc/skel/".len()..]).into_owned();
        let dest = format!("/{}/{rel}", String::from_utf8_lossy(&home_path));
        let meta = Meta {
            mode: e.meta.mode,
            uid: uid as u64,
            gid: gid as u64,
        };
        match (&e.kind, &e.data) {
            (Kind::Dir, _) => {
                tree.add(lower, &dest, NodeKind::Dir, meta);
            }
            (Kind::File, Some(d)) => file(tree, lower, &dest, d.clone(), meta),
            (Kind::Symlink(t), _) => {
                tree.add(lower, &dest, NodeKind::Symlink(t.clone()), meta);
            }
            _ => {}
        }
    }
}

/// The user's sudoers drop-in, for `sudo = "nopasswd"`.
fn sudo_rule(tree: &mut Tree, lower: &LowerFs, u: &User) {
    if u.sudo.as_deref() == Some("nopasswd") {
        let rule = format!("{} ALL=(ALL) NOPASSWD:ALL\n", u.name);
        file(
            tree,
            lower,
            &format!("/etc/sudoers.d/{}", u.name),
            rule.into_bytes(),
            Meta {
                mode: 0o440,
                uid: 0,
                gid: 0,
            },
        );
    }
}

pub fn build(lower: &LowerFs, groups: &[Group], users: &[User]) -> Result<Tree, FieldError> {
    let mut acc = Accounts::read(lower);
    acc.add_groups(groups)?;
    let mut tree = Tree::default();
    let mut created = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let new = !acc.passwd.iter().any(|r| r[0] == u.name);
        let (uid, gid, home_dir) = acc.add_user(i, u)?;
        if u.create_home.unwrap_or(!u.system) {
            home(&mut tree, lower, uid, gid, &home_dir);
        }
        sudo_rule(&mut tree, lower, u);
        // useradd gives system accounts no subordinate ids.
        created.push((u.name.clone(), new && !u.system));
    }
    for f in ["etc/subuid", "etc/subgid"] {
        if let Some(body) = subordinate(lower, f, &created) {
            file(&mut tree, lower, &format!("/{f}"), body, Meta::FILE);
        }
    }
    let Accounts {
        passwd,
        group,
        shadow,
        gshadow,
        had_gshadow,
    } = acc;
    let shadow_gid = lookup_group(lower, "shadow").or_else(|| {
        group
            .iter()
            .find(|r| r[0] == "shadow")
            .and_then(|r| id_of(r))
    });
    let secret = Meta {
        mode: 0o640,
        uid: 0,
        gid: shadow_gid.unwrap_or(0) as u64,
    };
    file(&mut tree, lower, "/etc/passwd", join(&passwd), Meta::FILE);
    file(&mut tree, lower, "/etc/group", join(&group), Meta::FILE);
    file(&mut tree, lower, "/etc/shadow", join(&shadow), secret);
    if had_gshadow || !groups.is_empty() {
        file(&mut tree, lower, "/etc/gshadow", join(&gshadow), secret);
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(ids: &[u32]) -> Vec<Vec<String>> {
        ids.iter()
            .map(|i| vec![format!("g{i}"), "x".into(), i.to_string()])
            .collect()
    }

    #[test]
    fn system_ids_are_allocated_as_shadow_does() {
        // None in the range (users = 100 is below SYS_MIN): from the top.
        assert_eq!(next_free_system(&rows(&[0, 100, 1000])), Some(999));
        // Below the lowest in use, not in a gap above it.
        assert_eq!(next_free_system(&rows(&[999, 450])), Some(449));
        // The lowest in use is SYS_MIN: from the top down.
        assert_eq!(next_free_system(&rows(&[101, 999])), Some(998));
        let all: Vec<u32> = (SYS_MIN..=SYS_MAX).collect();
        assert_eq!(next_free_system(&rows(&all)), None);
    }
}
