//! Lock files on disk: `NAME.lock` read and written atomically, plain (one platform) or in
//! sections (one per platform of a multi-platform recipe), its version checked.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{LOCK_VERSION, Lock, LockError};
use crate::recipe::Loaded;

pub fn read(path: &Path) -> Result<Option<Lock>, LockError> {
    let Some(text) = read_text(path)? else {
        return Ok(None);
    };
    let lock: Lock = parse(path, &text)?;
    check_version(path, lock.version)?;
    Ok(Some(lock))
}

/// The lock file at `path`; `None` when there is none.
fn read_text(path: &Path) -> Result<Option<String>, LockError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LockError::Read {
            path: path.into(),
            message: e.to_string(),
        }),
    }
}

/// Parses TOML text (errors keep toml's line and column).
fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, LockError> {
    toml::from_str(text).map_err(|e| LockError::Read {
        path: path.into(),
        message: e.to_string(),
    })
}

fn check_version(path: &Path, version: u32) -> Result<(), LockError> {
    if version == LOCK_VERSION {
        return Ok(());
    }
    Err(LockError::Read {
        path: path.into(),
        message: format!(
            "version {version} (this imgbuild writes {LOCK_VERSION}): run `imgbuild lock`"
        ),
    })
}

/// The lock file of a recipe that builds several platforms: a section per platform.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sections {
    pub version: u32,
    #[serde(default)]
    pub platform: BTreeMap<String, Lock>,
}

/// The lock `loaded` reads: its file, or its platform's section of it.
pub fn read_for(loaded: &Loaded) -> Result<Option<Lock>, LockError> {
    read_section(&loaded.lock_path, loaded.lock_section.as_deref())
}

/// Writes `lock` where `loaded` reads it (other platforms' sections are kept).
pub fn write_for(loaded: &Loaded, lock: &Lock) -> Result<(), LockError> {
    write_section(&loaded.lock_path, loaded.lock_section.as_deref(), lock)
}

/// The lock at `path`, or the `section` (a platform) of it. A file without sections does
/// not answer for a section (the recipe became multi-platform): `None`.
pub fn read_section(path: &Path, section: Option<&str>) -> Result<Option<Lock>, LockError> {
    let Some(platform) = section else {
        return read(path);
    };
    Ok(read_sections(path)?.and_then(|mut s| s.platform.remove(platform)))
}

/// Every section of the lock at `path`; `None` when it is missing or has no sections.
pub fn read_sections(path: &Path) -> Result<Option<Sections>, LockError> {
    let Some(text) = read_text(path)? else {
        return Ok(None);
    };
    let value: toml::Value = parse(path, &text)?;
    if value.get("platform").is_none() {
        return Ok(None);
    }
    let sections: Sections = parse(path, &text)?;
    check_version(path, sections.version)?;
    Ok(Some(sections))
}

/// Writes `lock` to `path`, or as its `section` there, keeping the other sections.
pub fn write_section(path: &Path, section: Option<&str>, lock: &Lock) -> Result<(), LockError> {
    let Some(platform) = section else {
        return write(path, lock);
    };
    // A file that is not a sectioned lock (or unreadable) is replaced.
    let mut sections = read_sections(path).ok().flatten().unwrap_or_default();
    sections.version = LOCK_VERSION;
    sections.platform.insert(platform.to_string(), lock.clone());
    write_sections(path, &sections)
}

/// Writes a sectioned lock file.
pub fn write_sections(path: &Path, sections: &Sections) -> Result<(), LockError> {
    write_toml(path, "what this recipe resolved to, per platform", sections)
}

pub fn write(path: &Path, lock: &Lock) -> Result<(), LockError> {
    write_toml(path, "what this recipe resolved to", lock)
}

fn write_toml<T: Serialize>(path: &Path, what: &str, value: &T) -> Result<(), LockError> {
    let body = toml::to_string(value).map_err(|e| LockError::Write {
        path: path.into(),
        source: std::io::Error::other(e),
    })?;
    let text = format!("# Written by `imgbuild lock`: {what}. Do not edit.\n\n{body}");
    crate::fsutil::write_atomic(path, text.as_bytes()).map_err(|source| LockError::Write {
        path: path.into(),
        source,
    })
}
