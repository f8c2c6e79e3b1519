//! The bootable disk image of the proxmox target: a flattened rootfs made into a GPT disk with
//! an EFI system partition (FAT, holding a unified kernel image at `/EFI/BOOT/BOOTX64.EFI`) and
//! an ext4 root, then converted to qcow2. No loop devices, no mounts, no root-only kernel
//! features: `sgdisk` writes the partition table into a sparse file, `mkfs.fat` + `mtools`
//! build the ESP in a file, `mke2fs -d` writes the root straight into its partition's offset,
//! `debugfs` fixes the times it cannot be told, and `qemu-img convert` makes the qcow2.
//!
//! Reproducible: the disk, partition and filesystem UUIDs and the directory hash seed are
//! derived from the image name, every time stamp is `SOURCE_DATE_EPOCH`
//! (`E2FSPROGS_FAKE_TIME`, `mkfs.fat --invariant`, `mcopy -m`, `debugfs sif`), and the UKI
//! sections are laid out at computed addresses.

mod uki;

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::rootfs::{Attrs, Root};
use crate::tool::{self, DEBUGFS, MCOPY, MKE2FS, MKFS_FAT, MMD, QEMU_IMG, SGDISK, ToolError};

/// What a VM needs on top of the recipe: a kernel (the cloud flavour: virtio drivers, small),
/// systemd as init with udev, cloud-init with growpart, the guest agent, DHCP networking as
/// Debian's cloud images do it, ssh and sudo, and systemd-boot's EFI stub for the UKI.
pub const VM_PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "cloud-init",
    "cloud-guest-utils",
    "qemu-guest-agent",
    "ifupdown",
    "isc-dhcp-client",
    "openssh-server",
    "sudo",
    "systemd-boot-efi",
];

/// Default size of the disk when the recipe does not say.
pub const DEFAULT_SIZE: u64 = 4 << 30;

const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries.
const ALIGN: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "no kernel in the image's /boot: the proxmox target needs a linux-image package \
         (it is in the default VM packages unless the recipe's base lacks Debian's archive)"
    )]
    NoKernel,
    #[error("no initrd for kernel {version} in /boot (is initramfs-tools installed?)")]
    NoInitrd { version: String },
    #[error("no EFI stub at {0}: install systemd-boot-efi in the image")]
    NoStub(PathBuf),
    #[error("the image's files ({need} bytes) do not fit a {size}-byte disk: raise disk_size")]
    TooSmall { need: u64, size: u64 },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{step}")]
    Tool {
        step: &'static str,
        #[source]
        source: ToolError,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn tool_err(step: &'static str) -> impl FnOnce(ToolError) -> DiskError {
    move |source| DiskError::Tool { step, source }
}

/// Output format of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Qcow2,
    Raw,
}

impl Format {
    pub fn parse(s: Option<&str>) -> Format {
        match s {
            Some("raw") => Format::Raw,
            _ => Format::Qcow2,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }
}

/// How to make the disk.
#[derive(Debug, Clone)]
pub struct DiskOptions {
    /// Seeds the UUIDs.
    pub name: String,
    pub size: u64,
    pub format: Format,
    pub mtime: u64,
    /// Appended to the kernel command line.
    pub extra_cmdline: String,
}

/// What [`assemble`] made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskInfo {
    pub path: PathBuf,
    pub format: &'static str,
    pub size: u64,
    pub kernel: String,
    pub cmdline: String,
    pub disk_guid: String,
    pub esp_partuuid: String,
    pub root_partuuid: String,
    pub root_fs_uuid: String,
}

pub use crate::fsutil::parse_size;

/// A UUID (version 4 layout) derived from the image name and a purpose, so two builds of one
/// recipe give the same disk.
fn uuid(name: &str, purpose: &str) -> String {
    let h = Sha256::digest(format!("imgbuild-disk\0{name}\0{purpose}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// Makes the disk at `out` from the flattened image in `root` (which it edits: fstab, the
/// ESP mount point). `work` holds the intermediate files.
pub fn assemble(
    root: &Path,
    work: &Path,
    out: &Path,
    opts: &DiskOptions,
) -> Result<DiskInfo, DiskError> {
    // The tools read a time of 0 as "not set" and take the clock: start at 1 s instead.
    let opts = &DiskOptions {
        mtime: opts.mtime.max(1),
        ..opts.clone()
    };
    let disk_guid = uuid(&opts.name, "disk");
    let esp_partuuid = uuid(&opts.name, "esp-partition");
    let root_partuuid = uuid(&opts.name, "root-partition");
    let fs_uuid = uuid(&opts.name, "root-filesystem");
    let hash_seed = uuid(&opts.name, "root-hash-seed");

    // Every read and write inside the image goes through the root-confined view: the image
    // may hold `etc -> /etc` or `boot/vmlinuz-x -> /etc/shadow`, meant for the host.
    let confined = Root::open(root).map_err(io_err("opening", root))?;
    let r = &confined;

    // The kernel and its command line.
    let (version, vmlinuz, initrd) = kernel(r, work)?;
    let cmdline = format!(
        "root=PARTUUID={root_partuuid} rw net.ifnames=0 console=tty0 console=ttyS0,115200{}{}",
        if opts.extra_cmdline.is_empty() {
            ""
        } else {
            " "
        },
        opts.extra_cmdline
    );
    let fstab = format!(
        "# Written by imgbuild: partitions by PARTUUID.\n\
         PARTUUID={root_partuuid} / ext4 rw,discard,errors=remount-ro 0 1\n\
         PARTUUID={esp_partuuid} /boot/efi vfat umask=0077,nofail 0 2\n"
    );
    r.write(b"etc/fstab", Attrs::FILE, fstab.as_bytes())
        .map_err(io_err("writing", &r.display(b"etc/fstab")))?;
    r.write(
        b"etc/kernel/cmdline",
        Attrs::FILE,
        format!("{cmdline}\n").as_bytes(),
    )
    .map_err(io_err("writing", &r.display(b"etc/kernel/cmdline")))?;
    mask_networkd(r)?;
    r.dir(b"boot/efi", true)
        .map_err(io_err("creating", &r.display(b"boot/efi")))?;

    // The unified kernel image and the ESP that holds it.
    let uki_path = work.join("BOOTX64.EFI");
    uki::build(r, &vmlinuz, &initrd, &cmdline, &uki_path, opts.mtime)?;
    let uki_len = fs::metadata(&uki_path)
        .map_err(io_err("reading", &uki_path))?
        .len();
    let esp_size = round_up((uki_len + (uki_len / 4) + (16 << 20)).max(64 << 20), ALIGN);
    let esp_img = work.join("esp.img");
    make_esp(&esp_img, &uki_path, esp_size, &esp_partuuid, opts.mtime)?;

    // The partition table.
    let size = round_up(opts.size, ALIGN);
    let esp_start = ALIGN;
    let root_start = esp_start + esp_size;
    // The backup GPT takes the last 33 sectors; keep the root on whole MiBs below it.
    let root_end = (size - 34 * SECTOR) / ALIGN * ALIGN;
    if root_end <= root_start + (64 << 20) {
        return Err(DiskError::TooSmall {
            need: root_start + (64 << 20),
            size,
        });
    }
    let raw = work.join("disk.raw");
    partition(
        &raw,
        size,
        &disk_guid,
        (esp_start, root_start, &esp_partuuid),
        (root_end, &root_partuuid),
    )?;
    copy_into(&esp_img, &raw, esp_start)?;

    // The root filesystem, straight into its partition.
    make_root_fs(
        root,
        &raw,
        (root_start, root_end),
        size,
        &fs_uuid,
        &hash_seed,
        opts.mtime,
    )?;
    fix_times(root, &raw, root_start, work, opts.mtime)?;

    // The output, in place atomically.
    let tmp = out.with_extension("tmp");
    match opts.format {
        Format::Raw => fs::rename(&raw, &tmp).map_err(io_err("moving", &raw))?,
        Format::Qcow2 => {
            let mut q = QEMU_IMG
                .command()
                .map_err(tool_err("converting to qcow2"))?;
            q.args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&raw)
                .arg(&tmp);
            tool::run(&mut q).map_err(tool_err("converting to qcow2"))?;
            let _ = fs::remove_file(&raw);
        }
    }
    fs::rename(&tmp, out).map_err(io_err("renaming into", out))?;
    Ok(DiskInfo {
        path: out.to_path_buf(),
        format: opts.format.extension(),
        size,
        kernel: version,
        cmdline,
        disk_guid,
        esp_partuuid,
        root_partuuid,
        root_fs_uuid: fs_uuid,
    })
}

/// With ifupdown in the image (cloud-init's first choice of network renderer, and the default
/// VM packages), systemd-networkd would only add a `wait-online` job that waits two minutes for
/// links it does not manage: mask it, as `systemctl mask` would.
fn mask_networkd(r: &Root) -> Result<(), DiskError> {
    let has_ifupdown = [&b"usr/sbin/ifup"[..], b"sbin/ifup"]
        .iter()
        .any(|p| r.kind(p).ok().flatten().is_some());
    if !has_ifupdown {
        return Ok(());
    }
    for unit in [
        "systemd-networkd.service",
        "systemd-networkd.socket",
        "systemd-networkd-wait-online.service",
    ] {
        let link = format!("etc/systemd/system/{unit}");
        if r.kind(link.as_bytes()).ok().flatten().is_none() {
            r.symlink(link.as_bytes(), b"/dev/null", 0, 0)
                .map_err(io_err("masking", &r.display(link.as_bytes())))?;
        }
    }
    Ok(())
}

/// A sparse `raw` file of `size` bytes with the GPT: the ESP from `esp_start` to `root_start`,
/// the root from `root_start` to `root_end`, with the given GUIDs.
fn partition(
    raw: &Path,
    size: u64,
    disk_guid: &str,
    (esp_start, root_start, esp_partuuid): (u64, u64, &str),
    (root_end, root_partuuid): (u64, &str),
) -> Result<(), DiskError> {
    let f = File::create(raw).map_err(io_err("creating", raw))?;
    f.set_len(size).map_err(io_err("sizing", raw))?;
    drop(f);
    let mut sg = SGDISK
        .command()
        .map_err(tool_err("partitioning the disk"))?;
    sg.arg("--clear")
        .arg(format!("--disk-guid={disk_guid}"))
        .arg(format!(
            "--new=1:{}:{}",
            esp_start / SECTOR,
            root_start / SECTOR - 1
        ))
        .args(["--typecode=1:EF00", "--change-name=1:ESP"])
        .arg(format!("--partition-guid=1:{esp_partuuid}"))
        .arg(format!(
            "--new=2:{}:{}",
            root_start / SECTOR,
            root_end / SECTOR - 1
        ))
        .args(["--typecode=2:8304", "--change-name=2:root"])
        .arg(format!("--partition-guid=2:{root_partuuid}"))
        .arg(raw);
    tool::run(&mut sg).map_err(tool_err("partitioning the disk"))?;
    Ok(())
}

/// The ext4 root made by `mke2fs -d` from `root`, written at its partition's offset in `raw`.
fn make_root_fs(
    root: &Path,
    raw: &Path,
    (root_start, root_end): (u64, u64),
    size: u64,
    fs_uuid: &str,
    hash_seed: &str,
    mtime: u64,
) -> Result<(), DiskError> {
    let blocks = (root_end - root_start) / 4096;
    let mut mk = MKE2FS
        .command()
        .map_err(tool_err("making the root filesystem"))?;
    mk.env("E2FSPROGS_FAKE_TIME", mtime.to_string())
        .env("MKE2FS_DEVICE_SECTSIZE", "512")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "root"])
        .arg("-U")
        .arg(fs_uuid)
        .arg("-E")
        .arg(format!("offset={root_start},hash_seed={hash_seed}"))
        .arg("-d")
        .arg(root)
        .arg(raw)
        .arg(blocks.to_string());
    tool::run(&mut mk).map_err(|source| match &source {
        ToolError::Failed { stderr, .. } if stderr.contains("No space left") => {
            DiskError::TooSmall {
                need: dir_size(root),
                size,
            }
        }
        _ => DiskError::Tool {
            step: "making the root filesystem",
            source,
        },
    })?;
    Ok(())
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// The newest kernel in `/boot` and its initrd, copied out of the image into `work` (read
/// inside the root: the image's `/boot` may hold links meant for the host's files).
fn kernel(r: &Root, work: &Path) -> Result<(String, PathBuf, PathBuf), DiskError> {
    let mut versions: Vec<String> = r
        .read_dir(b"boot")
        .map_err(|_| DiskError::NoKernel)?
        .into_iter()
        .filter_map(|n| {
            String::from_utf8(n)
                .ok()?
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .collect();
    versions.sort_by(|a, b| {
        let va = a.parse::<debversion::Version>();
        let vb = b.parse::<debversion::Version>();
        match (va, vb) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.cmp(b),
        }
    });
    let version = versions.pop().ok_or(DiskError::NoKernel)?;
    let initrd = work.join("initrd.img");
    r.copy_out(format!("boot/initrd.img-{version}").as_bytes(), &initrd)
        .map_err(|_| DiskError::NoInitrd {
            version: version.clone(),
        })?;
    let vmlinuz = work.join("vmlinuz");
    let rel = format!("boot/vmlinuz-{version}");
    r.copy_out(rel.as_bytes(), &vmlinuz)
        .map_err(io_err("reading", &r.display(rel.as_bytes())))?;
    Ok((version, vmlinuz, initrd))
}

fn make_esp(
    img: &Path,
    uki: &Path,
    size: u64,
    partuuid: &str,
    mtime: u64,
) -> Result<(), DiskError> {
    let _ = fs::remove_file(img);
    let fat = if size < (256 << 20) { "16" } else { "32" };
    let volid = partuuid[..8].to_string();
    let mut mk = MKFS_FAT
        .command()
        .map_err(tool_err("making the EFI partition"))?;
    mk.args(["--invariant", "-F", fat, "-n", "ESP", "-i"])
        .arg(&volid)
        .arg("-C")
        .arg(img)
        .arg((size / 1024).to_string());
    tool::run(&mut mk).map_err(tool_err("making the EFI partition"))?;
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
    File::options()
        .write(true)
        .open(uki)
        .and_then(|f| f.set_modified(time))
        .map_err(io_err("setting the time of", uki))?;
    let mut md = MMD
        .command()
        .map_err(tool_err("making the EFI partition"))?;
    md.env("MTOOLS_SKIP_CHECK", "1")
        .env("SOURCE_DATE_EPOCH", mtime.to_string())
        .arg("-i")
        .arg(img)
        .args(["::/EFI", "::/EFI/BOOT"]);
    tool::run(&mut md).map_err(tool_err("making the EFI partition"))?;
    let mut cp = MCOPY.command().map_err(tool_err("copying the UKI"))?;
    cp.env("MTOOLS_SKIP_CHECK", "1")
        .env("SOURCE_DATE_EPOCH", mtime.to_string())
        .arg("-m")
        .arg("-i")
        .arg(img)
        .arg(uki)
        .arg("::/EFI/BOOT/BOOTX64.EFI");
    tool::run(&mut cp).map_err(tool_err("copying the UKI"))?;
    Ok(())
}

/// Copies `src` into `dest` at byte `offset`, leaving holes where `src` has zero blocks.
fn copy_into(src: &Path, dest: &Path, offset: u64) -> Result<(), DiskError> {
    let mut r = File::open(src).map_err(io_err("reading", src))?;
    let mut w = File::options()
        .write(true)
        .open(dest)
        .map_err(io_err("opening", dest))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = offset;
    loop {
        let n = read_full(&mut r, &mut buf).map_err(io_err("reading", src))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            w.seek(SeekFrom::Start(pos))
                .and_then(|_| w.write_all(&buf[..n]))
                .map_err(io_err("writing", dest))?;
        }
        pos += n as u64;
    }
    Ok(())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn dir_size(root: &Path) -> u64 {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// `mke2fs -d` copies each file's change time (which no one can set) and access time, and the
/// directories' times: set every inode's times to `mtime` with one `debugfs` run.
fn fix_times(
    root: &Path,
    raw: &Path,
    offset: u64,
    work: &Path,
    mtime: u64,
) -> Result<(), DiskError> {
    use std::os::unix::ffi::OsStrExt;
    let cmds = work.join("debugfs.cmds");
    let mut f = io::BufWriter::new(File::create(&cmds).map_err(io_err("writing", &cmds))?);
    let t = format!("@{mtime}");
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.map_err(|e| DiskError::Io {
            action: "walking",
            path: root.to_path_buf(),
            source: e.into(),
        })?;
        let rel = e.path().strip_prefix(root).unwrap_or(e.path());
        let bytes = rel.as_os_str().as_bytes();
        // debugfs reads quoted words (backslashes literally); a quote or newline cannot be
        // written in one, and leaving that file's times would break reproducibility.
        if bytes.iter().any(|&b| b == b'"' || b == b'\n') {
            return Err(DiskError::Io {
                action: "fixing the times of (a quote or newline in the name)",
                path: e.path().to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "unsupported file name"),
            });
        }
        let p = format!("\"/{}\"", String::from_utf8_lossy(bytes));
        for field in ["atime", "mtime", "ctime", "crtime"] {
            writeln!(f, "sif {p} {field} {t}").map_err(io_err("writing", &cmds))?;
        }
    }
    f.flush().map_err(io_err("writing", &cmds))?;
    drop(f);
    let mut d = DEBUGFS.command().map_err(tool_err("fixing file times"))?;
    d.env("E2FSPROGS_FAKE_TIME", mtime.to_string())
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(format!("{}?offset={offset}", raw.display()));
    let out = tool::run(&mut d).map_err(tool_err("fixing file times"))?;
    let _ = out;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("4X"), None);
        assert_eq!(parse_size("0"), None);
    }

    /// `mke2fs -d` copies extended attributes from the flattened root: a file capability
    /// there (restored by `rootfs::apply` from the layer's PAX records) is in the ext4 root.
    #[test]
    fn the_root_filesystem_keeps_file_capabilities() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        let ping = root.join("usr/bin/ping");
        std::fs::write(&ping, b"#!/bin/sh\n").unwrap();
        let st = std::process::Command::new("setcap")
            .args(["cap_net_raw+ep", ping.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success());
        let raw = t.path().join("disk.raw");
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let uuid = uuid("caps", "root");
        make_root_fs(&root, &raw, (1 << 20, 32 << 20), 32 << 20, &uuid, &uuid, 0).unwrap();
        let out = std::process::Command::new("debugfs")
            .args(["-R", "ea_list /usr/bin/ping"])
            .arg(format!("{}?offset={}", raw.display(), 1 << 20))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("security.capability"), "{text}");
    }

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let a = uuid("coderall", "disk");
        assert_eq!(a, uuid("coderall", "disk"));
        assert_ne!(a, uuid("coderall", "esp"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
