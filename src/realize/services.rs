//! The services step: `systemctl enable` without systemd. Reads each unit's `[Install]`
//! section from the image and creates the symlinks systemctl would: `WantedBy=` and
//! `RequiredBy=` as `.wants/` and `.requires/` links, `Alias=` links, and `Also=` units.

use super::tree::{NodeKind, Tree};
use crate::layer::Meta;
use crate::lower::{Kind, LowerFs};

/// A unit to enable that the image does not have, or has masked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ServiceError(pub String);

impl From<String> for ServiceError {
    fn from(m: String) -> Self {
        ServiceError(m)
    }
}

impl From<&str> for ServiceError {
    fn from(m: &str) -> Self {
        ServiceError(m.to_string())
    }
}

fn fail<T>(m: String) -> Result<T, ServiceError> {
    Err(ServiceError(m))
}

/// Where systemctl looks for unit files, in order.
const UNIT_DIRS: [&str; 3] = [
    "etc/systemd/system",
    "lib/systemd/system",
    "usr/lib/systemd/system",
];

/// `[Install]` of a unit file.
#[derive(Debug, Default, PartialEq)]
pub struct Install {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    pub alias: Vec<String>,
    pub also: Vec<String>,
    pub default_instance: Option<String>,
}

pub fn parse_install(text: &str) -> Install {
    let mut inst = Install::default();
    let mut in_install = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install || line.starts_with(['#', ';']) {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let vals = v.split_whitespace().map(str::to_string);
        match k.trim() {
            "WantedBy" => inst.wanted_by.extend(vals),
            "RequiredBy" => inst.required_by.extend(vals),
            "Alias" => inst.alias.extend(vals),
            "Also" => inst.also.extend(vals),
            "DefaultInstance" => inst.default_instance = Some(v.trim().to_string()),
            _ => {}
        }
    }
    inst
}

/// Finds a unit file; returns its path as systemctl would link to it (`/lib/systemd/...`).
fn find_unit(lower: &LowerFs, name: &str) -> Result<(String, String), ServiceError> {
    for dir in UNIT_DIRS {
        let path = format!("{dir}/{name}");
        if let Some(e) = lower.get(path.as_bytes())
            && let Kind::Symlink(t) = &e.kind
            && t == b"/dev/null"
        {
            return fail(format!("unit `{name}` is masked (/{path} -> /dev/null)"));
        }
        if let Some(text) = lower.read(path.as_bytes()) {
            return Ok((
                format!("/{path}"),
                String::from_utf8_lossy(text).into_owned(),
            ));
        }
    }
    fail(format!(
        "unit `{name}` not found in the image (looked in /etc/systemd/system, /lib/systemd/system, /usr/lib/systemd/system)"
    ))
}

/// Builds the enablement symlinks for `units`; an error names the unit.
pub fn build(lower: &LowerFs, units: &[String]) -> Result<Tree, ServiceError> {
    let mut tree = Tree::default();
    let mut todo: Vec<String> = units.iter().rev().cloned().collect();
    let mut done: Vec<String> = Vec::new();
    while let Some(unit) = todo.pop() {
        if done.contains(&unit) {
            continue;
        }
        done.push(unit.clone());
        // Template instances (`getty@tty1.service`) use the template's file.
        let (file_name, instance) = match unit.split_once('@') {
            Some((prefix, rest)) if !rest.starts_with('.') => {
                let suffix = rest.rsplit_once('.').map_or("", |(_, s)| s);
                (format!("{prefix}@.{suffix}"), Some(unit.clone()))
            }
            _ => (unit.clone(), None),
        };
        let (path, text) = find_unit(lower, &file_name)?;
        let inst = parse_install(&text);
        if inst.wanted_by.is_empty()
            && inst.required_by.is_empty()
            && inst.alias.is_empty()
            && inst.also.is_empty()
        {
            return fail(format!(
                "unit `{unit}` has no [Install] section: it cannot be enabled"
            ));
        }
        let link_name = match (&instance, &inst.default_instance) {
            (Some(i), _) => i.clone(),
            (None, Some(di)) if file_name.contains("@.") => {
                file_name.replacen("@.", &format!("@{di}."), 1)
            }
            _ => file_name.clone(),
        };
        let link = |tree: &mut Tree, at: String| {
            tree.add(
                lower,
                &at,
                NodeKind::Symlink(path.clone().into_bytes()),
                Meta::LINK,
            );
        };
        for t in &inst.wanted_by {
            link(
                &mut tree,
                format!("/etc/systemd/system/{t}.wants/{link_name}"),
            );
        }
        for t in &inst.required_by {
            link(
                &mut tree,
                format!("/etc/systemd/system/{t}.requires/{link_name}"),
            );
        }
        for a in &inst.alias {
            link(&mut tree, format!("/etc/systemd/system/{a}"));
        }
        todo.extend(inst.also.iter().rev().cloned());
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_section_is_parsed() {
        let i = parse_install(
            "[Unit]\nWantedBy=x\n[Install]\nWantedBy=multi-user.target  b.target\nAlias=d.service\nAlso=docker.socket\n",
        );
        assert_eq!(i.wanted_by, vec!["multi-user.target", "b.target"]);
        assert_eq!(i.alias, vec!["d.service"]);
        assert_eq!(i.also, vec!["docker.socket"]);
    }
}
