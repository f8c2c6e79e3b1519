//! Atomic file writes: everything imgbuild leaves on disk goes through a temp file and a rename.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsynced, renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    // Temp files are created 0600; what we write is for reading (0644).
    write_atomic_mode(path, bytes, 0o644)
}

/// [`write_atomic`] with the file's mode: the temp file is created 0600 and given `mode`
/// before it is renamed, so a secret (0600) is never readable by others, not even briefly.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Creates a temp file in `dir` (created if missing) for a later atomic rename.
pub fn temp_in(dir: &Path) -> io::Result<NamedTempFile<File>> {
    fs::create_dir_all(dir)?;
    NamedTempFile::new_in(dir)
}

/// Reads at most `limit` bytes of `path`; a longer file is an error (`InvalidData`), so a
/// hostile or mistaken path (`/dev/zero`) cannot exhaust memory.
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    File::open(path)?.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(out)
}

/// Why a text file could not be read: I/O (or over the limit), or not UTF-8 at `line` (byte
/// `offset`).
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("not UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { line: usize, offset: usize },
}

/// Reads a UTF-8 text file of at most `limit` bytes ([`read_bounded`]).
pub fn read_text(path: &Path, limit: u64) -> Result<String, TextError> {
    String::from_utf8(read_bounded(path, limit)?).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..offset]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        TextError::NotUtf8 { line, offset }
    })
}

/// `$HOME`, or the current directory when it is unset.
pub fn home_dir() -> std::path::PathBuf {
    crate::settings::get()
        .home
        .clone()
        .unwrap_or_else(|| ".".into())
}

/// Parses `4G`, `512M`, `2GiB`, `1T` or a number of bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok()?;
    let unit = s[digits..]
        .trim()
        .trim_end_matches("iB")
        .trim_end_matches('B');
    let mult: u64 = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&b| b > 0)
}

/// Whether `rel`, read lexically from its starting directory, climbs above it once cleaned
/// (`a/../../x`); a leading `/` and `.` stay where they are.
pub fn climbs_above(rel: &Path) -> bool {
    let mut depth = 0i32;
    for c in rel.components() {
        match c {
            std::path::Component::ParentDir => depth -= 1,
            std::path::Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// The relative path that leads from directory `from` to `to`, both absolute and
/// canonical (`/a/b`, `/a/c/d` -> `../c/d`); `.` when they are the same.
pub fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let (f, t): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_path_walks_up_then_down() {
        let r = |a: &str, b: &str| relative_path(Path::new(a), Path::new(b));
        assert_eq!(r("/a/b", "/a/c/d"), PathBuf::from("../c/d"));
        assert_eq!(r("/a", "/a/ctx"), PathBuf::from("ctx"));
        assert_eq!(r("/a/ctx", "/a/ctx"), PathBuf::from("."));
        assert_eq!(r("/a/b/c", "/a"), PathBuf::from("../.."));
    }

    #[test]
    fn climbs_above_reads_the_path_lexically() {
        let c = |p: &str| climbs_above(Path::new(p));
        assert!(c("../x") && c("a/../../x") && c("/../x"));
        assert!(!c("a/../x") && !c("./a/b") && !c("/a") && !c("a/b/.."));
    }
}
