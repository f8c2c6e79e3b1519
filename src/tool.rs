//! Running the host tools imgbuild leans on (`xorriso`, `mke2fs`, `sgdisk`, `mtools`,
//! `objcopy`, `qemu-img`): one place that finds them, runs them, and turns a failure into an
//! error naming the command, its exit status, its stderr and the Debian package to install.

use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("`{tool}` was not found on PATH: install the Debian package `{package}`")]
    Missing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("running `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// A host tool and the Debian package that ships it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub name: &'static str,
    pub package: &'static str,
}

pub const XORRISO: Tool = Tool {
    name: "xorriso",
    package: "xorriso",
};
pub const MKE2FS: Tool = Tool {
    name: "mke2fs",
    package: "e2fsprogs",
};
pub const DEBUGFS: Tool = Tool {
    name: "debugfs",
    package: "e2fsprogs",
};
pub const SGDISK: Tool = Tool {
    name: "sgdisk",
    package: "gdisk",
};
pub const MKFS_FAT: Tool = Tool {
    name: "mkfs.fat",
    package: "dosfstools",
};
pub const MMD: Tool = Tool {
    name: "mmd",
    package: "mtools",
};
pub const MCOPY: Tool = Tool {
    name: "mcopy",
    package: "mtools",
};
pub const OBJCOPY: Tool = Tool {
    name: "objcopy",
    package: "binutils",
};
pub const OBJDUMP: Tool = Tool {
    name: "objdump",
    package: "binutils",
};
pub const SCP: Tool = Tool {
    name: "scp",
    package: "openssh-client",
};
pub const QEMU_IMG: Tool = Tool {
    name: "qemu-img",
    package: "qemu-utils",
};

impl Tool {
    /// A command for the tool, found on PATH (or in /usr/sbin, which a non-root PATH lacks).
    pub fn command(&self) -> Result<Command, ToolError> {
        let found = find(self.name).ok_or(ToolError::Missing {
            tool: self.name,
            package: self.package,
        })?;
        let mut c = Command::new(found);
        // Tools print localized messages and dates otherwise.
        c.env("LC_ALL", "C.UTF-8");
        Ok(c)
    }
}

/// Quotes a word for a POSIX shell: as it is when it holds only characters no shell treats
/// specially, else in single quotes.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `name` on PATH (then the standard directories: /usr/sbin and /sbin are not on a non-root
/// PATH).
pub fn find(name: &str) -> Option<std::path::PathBuf> {
    let path = crate::settings::get().path.clone().unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
                .iter()
                .map(Into::into),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd` to the end; stdout is returned, stderr goes into the error.
pub fn run(cmd: &mut Command) -> Result<Vec<u8>, ToolError> {
    let command = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ToolError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

fn describe(cmd: &Command) -> String {
    let prog = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::iter::once(prog)
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}
