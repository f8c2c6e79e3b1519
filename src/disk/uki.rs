//! The unified kernel image: systemd-boot's EFI stub from the image itself, with the image's
//! os-release, the kernel command line, the kernel and its initrd added as PE sections by
//! `objcopy`, each placed after the previous one at the stub's section alignment (what
//! `ukify` does; systemd 252 in bookworm has no ukify yet).

use std::fs;
use std::path::Path;

use super::{DiskError, io_err, tool_err};
use crate::tool::{self, OBJCOPY, OBJDUMP};

const STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const ALIGN: u64 = 0x1000;

pub fn build(
    root: &crate::rootfs::Root,
    vmlinuz: &Path,
    initrd: &Path,
    cmdline: &str,
    out: &Path,
    mtime: u64,
) -> Result<(), DiskError> {
    // The stub and os-release are copied out of the image through the root-confined view.
    let work = out.parent().unwrap_or(Path::new("."));
    let stub = work.join("linuxx64.efi.stub");
    root.copy_out(STUB.as_bytes(), &stub)
        .map_err(|_| DiskError::NoStub(root.display(STUB.as_bytes())))?;
    let osrel = work.join("os-release");
    let found = ["usr/lib/os-release", "etc/os-release"]
        .iter()
        .any(|p| root.copy_out(p.as_bytes(), &osrel).is_ok());
    if !found {
        fs::write(&osrel, b"").map_err(io_err("writing", &osrel))?;
    }
    let cmdline_file = work.join("cmdline.txt");
    fs::write(&cmdline_file, format!("{cmdline}\0")).map_err(io_err("writing", &cmdline_file))?;

    let mut dump = OBJDUMP
        .command()
        .map_err(tool_err("reading the EFI stub"))?;
    dump.arg("-h").arg(&stub);
    let listing = tool::run(&mut dump).map_err(tool_err("reading the EFI stub"))?;
    let mut next = super::round_up(end_of_sections(&String::from_utf8_lossy(&listing)), ALIGN);

    let mut cmd = OBJCOPY.command().map_err(tool_err("making the UKI"))?;
    cmd.env("SOURCE_DATE_EPOCH", mtime.to_string());
    for (name, file) in [
        (".osrel", osrel.as_path()),
        (".cmdline", cmdline_file.as_path()),
        (".linux", vmlinuz),
        (".initrd", initrd),
    ] {
        let len = fs::metadata(file).map_err(io_err("reading", file))?.len();
        cmd.arg("--add-section")
            .arg(format!("{name}={}", file.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={next:#x}"));
        next = super::round_up(next + len, ALIGN);
    }
    let tmp = out.with_extension("tmp");
    cmd.arg(&stub).arg(&tmp);
    tool::run(&mut cmd).map_err(tool_err("making the UKI"))?;
    // objcopy stamps the PE header with the clock: put the stub's own stamp back.
    let stub_bytes = fs::read(&stub).map_err(io_err("reading", &stub))?;
    let mut pe = fs::read(&tmp).map_err(io_err("reading", &tmp))?;
    if let Some(stamp) = pe_timestamp(&stub_bytes) {
        set_pe_timestamp(&mut pe, stamp);
        fs::write(&tmp, &pe).map_err(io_err("writing", &tmp))?;
    }
    fs::rename(&tmp, out).map_err(io_err("renaming into", out))?;
    Ok(())
}

/// Offset of the PE header (`PE\0\0`), from the DOS header's `e_lfanew`.
fn pe_offset(b: &[u8]) -> Option<usize> {
    let off = u32::from_le_bytes(b.get(0x3c..0x40)?.try_into().ok()?) as usize;
    (b.get(off..off + 4)? == b"PE\0\0").then_some(off)
}

fn pe_timestamp(b: &[u8]) -> Option<u32> {
    let off = pe_offset(b)?;
    Some(u32::from_le_bytes(
        b.get(off + 8..off + 12)?.try_into().ok()?,
    ))
}

/// Sets the COFF header's TimeDateStamp and, if the image carries a checksum, recomputes it
/// (the PE checksum: 16-bit one's-complement-style sum of the file, less the field, plus the
/// length).
fn set_pe_timestamp(b: &mut [u8], stamp: u32) {
    let Some(off) = pe_offset(b) else { return };
    b[off + 8..off + 12].copy_from_slice(&stamp.to_le_bytes());
    let sum_at = off + 24 + 64;
    let Some(old) = b.get(sum_at..sum_at + 4) else {
        return;
    };
    if old == [0, 0, 0, 0] {
        return;
    }
    let mut sum: u64 = 0;
    for (i, chunk) in b.chunks(2).enumerate() {
        let at = i * 2;
        if at == sum_at || at == sum_at + 2 {
            continue;
        }
        let word = u64::from(chunk[0]) | u64::from(*chunk.get(1).unwrap_or(&0)) << 8;
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    let total = (sum as u32).wrapping_add(b.len() as u32);
    b[sum_at..sum_at + 4].copy_from_slice(&total.to_le_bytes());
}

/// The first address after the stub's sections, from `objdump -h`'s table
/// (`Idx Name Size VMA LMA File-off Algn`).
fn end_of_sections(listing: &str) -> u64 {
    listing
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() < 4 || w[0].parse::<u32>().is_err() {
                return None;
            }
            let size = u64::from_str_radix(w[2], 16).ok()?;
            let vma = u64::from_str_radix(w[3], 16).ok()?;
            Some(vma + size)
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_objdump_sections() {
        let listing = "\nlinuxx64.efi.stub:     file format pei-x86-64\n\nSections:\n\
Idx Name          Size      VMA               LMA               File off  Algn\n\
  0 .text         0000a8e2  0000000000003000  0000000000003000  00000400  2**4\n\
                  CONTENTS, ALLOC, LOAD, READONLY, CODE\n\
  1 .reloc        0000000c  000000000000e000  000000000000e000  0000ae00  2**2\n\
  2 .sdmagic      00000030  000000000000f000  000000000000f000  0000b000  2**2\n";
        assert_eq!(super::end_of_sections(listing), 0xf030);
    }
}
