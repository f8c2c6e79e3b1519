//! Running another platform's programs (maintainer scripts, pip, `[[run]]` of an arm64 image on
//! an amd64 machine): the kernel hands them to qemu-user through binfmt_misc, as mmdebstrap
//! and BuildKit rely on. imgbuild does not register anything; it checks that an interpreter is
//! registered for the platform's ELF machine, enabled, and usable from inside the sandbox.
//!
//! An interpreter registered with the `F` (fix-binary) flag is opened by the kernel when it is
//! registered, so it works inside the sandbox's root without being in it (Debian's
//! `qemu-user-static` registers so). Without `F` the kernel opens the path inside the root at
//! each exec: imgbuild refuses that rather than put the host's qemu into the image's layer.

use std::path::{Path, PathBuf};

/// Where the kernel lists binfmt_misc registrations.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmulationError {
    #[error(
        "building {platform} on this {host} machine runs {platform} programs (package scripts, pip, [[run]]) under emulation, and none is set up: {why}. Install it with `apt-get install qemu-user-static binfmt-support` (Debian/Ubuntu; binfmt_misc must be mounted on {BINFMT_DIR})"
    )]
    Missing {
        platform: String,
        host: String,
        why: String,
    },
    #[error(
        "the binfmt_misc entry {entry} for {platform} is registered without the F (fix-binary) flag, so its interpreter {interpreter} would have to be inside the image; register it with F (Debian's qemu-user-static does: `update-binfmts --enable`)"
    )]
    NotFixed {
        platform: String,
        entry: String,
        interpreter: String,
    },
}

/// The Debian architecture of the machine imgbuild runs on.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Whether `platform` (`os/arch[/variant]`) runs natively here.
pub fn native(platform: &str) -> bool {
    arch_of(platform) == host_arch()
}

fn arch_of(platform: &str) -> &str {
    platform.split('/').nth(1).unwrap_or(platform)
}

/// The ELF `e_machine` of a Debian architecture's programs (64-bit little-endian ones).
fn elf_machine(arch: &str) -> Option<u16> {
    match arch {
        "amd64" => Some(0x3e),
        "arm64" => Some(0xb7),
        _ => None,
    }
}

/// A binfmt_misc registration, as its file under [`BINFMT_DIR`] describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub enabled: bool,
    pub interpreter: String,
    pub flags: String,
    pub offset: usize,
    pub magic: Vec<u8>,
    pub mask: Vec<u8>,
}

/// Parses one registration file (`enabled`, `interpreter X`, `flags: PF`, `offset 0`,
/// `magic HEX`, `mask HEX`). `None` for an extension-based or unreadable entry.
pub fn parse_entry(name: &str, text: &str) -> Option<Entry> {
    let mut e = Entry {
        name: name.to_string(),
        enabled: false,
        interpreter: String::new(),
        flags: String::new(),
        offset: 0,
        magic: Vec::new(),
        mask: Vec::new(),
    };
    for line in text.lines() {
        let line = line.trim();
        if line == "enabled" {
            e.enabled = true;
        } else if let Some(v) = line.strip_prefix("interpreter ") {
            e.interpreter = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("flags:") {
            e.flags = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("offset ") {
            e.offset = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("magic ") {
            e.magic = hex::decode(v.trim()).ok()?;
        } else if let Some(v) = line.strip_prefix("mask ") {
            e.mask = hex::decode(v.trim()).ok()?;
        }
    }
    (!e.magic.is_empty()).then_some(e)
}

impl Entry {
    /// Whether this entry takes an ELF64 little-endian executable of `machine` (an `ET_EXEC`
    /// and an `ET_DYN` header both, as a registration for the architecture does).
    fn takes(&self, machine: u16) -> bool {
        let mut header = [0u8; 20];
        header[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
        header[18..20].copy_from_slice(&machine.to_le_bytes());
        [2u16, 3].iter().all(|kind| {
            header[16..18].copy_from_slice(&kind.to_le_bytes());
            self.matches(&header)
        })
    }

    fn matches(&self, file: &[u8]) -> bool {
        self.magic.iter().enumerate().all(|(i, m)| {
            let mask = self.mask.get(i).copied().unwrap_or(0xff);
            file.get(self.offset + i)
                .is_some_and(|b| b & mask == m & mask)
        })
    }
}

/// Checks that programs of `platform` can run here: natively, or through an enabled
/// binfmt_misc interpreter registered with `F`. Returns the interpreter used, if any.
pub fn require(platform: &str) -> Result<Option<PathBuf>, EmulationError> {
    require_in(Path::new(BINFMT_DIR), platform)
}

/// [`require`] over a binfmt_misc directory `dir` (tests give their own).
pub fn require_in(dir: &Path, platform: &str) -> Result<Option<PathBuf>, EmulationError> {
    if native(platform) {
        return Ok(None);
    }
    let missing = |why: String| EmulationError::Missing {
        platform: platform.to_string(),
        host: host_arch().to_string(),
        why,
    };
    let Some(machine) = elf_machine(arch_of(platform)) else {
        return Err(missing(format!(
            "imgbuild knows no ELF machine for {platform}"
        )));
    };
    let status = std::fs::read_to_string(dir.join("status"))
        .map_err(|_| missing(format!("{} is not mounted", dir.display())))?;
    if status.trim() != "enabled" {
        return Err(missing("binfmt_misc is disabled".into()));
    }
    let mut entries: Vec<Entry> = std::fs::read_dir(dir)
        .map_err(|e| missing(format!("cannot list {}: {e}", dir.display())))?
        .flatten()
        .filter_map(|f| {
            let name = f.file_name().to_string_lossy().into_owned();
            if name == "status" || name == "register" {
                return None;
            }
            parse_entry(&name, &std::fs::read_to_string(f.path()).ok()?)
        })
        .filter(|e| e.takes(machine))
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let Some(entry) = entries.iter().find(|e| e.enabled) else {
        return Err(missing(match entries.first() {
            Some(e) => format!("the binfmt_misc entry {} is disabled", e.name),
            None => format!("no binfmt_misc entry takes {} programs", arch_of(platform)),
        }));
    };
    if !entry.flags.contains('F') {
        return Err(EmulationError::NotFixed {
            platform: platform.to_string(),
            entry: entry.name.clone(),
            interpreter: entry.interpreter.clone(),
        });
    }
    Ok(Some(PathBuf::from(&entry.interpreter)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    fn dir(entries: &[(&str, &str)], status: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("status"), status).unwrap();
        for (name, text) in entries {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn an_enabled_fixed_entry_for_the_machine_is_found() {
        let d = dir(
            &[
                ("qemu-aarch64", AARCH64),
                (
                    "python3.11",
                    "enabled\ninterpreter /usr/bin/python3.11\nflags: \noffset 0\nmagic a70d0d0a\n",
                ),
            ],
            "enabled\n",
        );
        let platform = if host_arch() == "arm64" {
            "linux/amd64"
        } else {
            "linux/arm64"
        };
        if platform == "linux/arm64" {
            assert_eq!(
                require_in(d.path(), platform).unwrap(),
                Some(PathBuf::from("/usr/libexec/qemu-binfmt/aarch64-binfmt-P"))
            );
        }
        // Native: nothing needed, whatever is registered.
        assert_eq!(
            require_in(d.path(), &format!("linux/{}", host_arch())).unwrap(),
            None
        );
    }

    #[test]
    fn what_is_missing_is_named() {
        if host_arch() == "arm64" {
            return;
        }
        let e = require_in(&dir(&[], "enabled\n").path().join("nope"), "linux/arm64").unwrap_err();
        assert!(e.to_string().contains("is not mounted"), "{e}");
        assert!(
            e.to_string()
                .contains("apt-get install qemu-user-static binfmt-support"),
            "{e}"
        );
        let e = require_in(dir(&[], "enabled\n").path(), "linux/arm64").unwrap_err();
        assert!(
            e.to_string().contains("no binfmt_misc entry takes arm64"),
            "{e}"
        );
        let disabled = AARCH64.replacen("enabled", "disabled", 1);
        let e = require_in(
            dir(&[("qemu-aarch64", &disabled)], "enabled\n").path(),
            "linux/arm64",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("entry qemu-aarch64 is disabled"),
            "{e}"
        );
        let not_fixed = AARCH64.replace("flags: PF", "flags: P");
        let e = require_in(
            dir(&[("qemu-aarch64", &not_fixed)], "enabled\n").path(),
            "linux/arm64",
        )
        .unwrap_err();
        assert!(matches!(e, EmulationError::NotFixed { .. }), "{e}");
        let e = require_in(
            dir(&[("qemu-aarch64", AARCH64)], "disabled\n").path(),
            "linux/arm64",
        )
        .unwrap_err();
        assert!(e.to_string().contains("binfmt_misc is disabled"), "{e}");
    }

    #[test]
    fn entries_match_by_magic_and_mask() {
        let e = parse_entry("qemu-aarch64", AARCH64).unwrap();
        assert!(e.takes(0xb7));
        assert!(!e.takes(0x3e));
        assert!(
            parse_entry(
                "jar",
                "enabled\ninterpreter /usr/bin/jexec\nflags: \nextension .jar\n"
            )
            .is_none()
        );
        assert!(parse_entry("bad", "magic zz\n").is_none());
    }
}
