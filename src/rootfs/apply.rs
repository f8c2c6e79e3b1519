//! Applying a layer (an uncompressed tar stream with OCI whiteouts) to a root, every entry
//! written through [`Root`]: the one applier that the sandbox, `[pip]`, `[[run]]` and the
//! disk flatten all use.

use std::io::{self, Read};

use tar::EntryType;

use super::{Attrs, Root, Xattrs};

/// `path` relative, with empty and `.` components dropped.
fn norm(path: &[u8]) -> Vec<u8> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect::<Vec<_>>()
        .join(&b'/')
}

/// The `SCHILY.xattr.NAME` records of the entry's PAX header (how GNU tar, containerd,
/// buildah and umoci carry extended attributes), only the names an image keeps.
fn pax_xattrs<R: Read>(e: &mut tar::Entry<'_, R>) -> io::Result<Xattrs> {
    let mut out = Vec::new();
    if let Some(exts) = e.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.")
                && super::xattr::kept(name)
            {
                out.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

/// Applies the tar stream `layer` to `root`: whiteouts remove, opaque whiteouts empty a
/// directory, other entries replace what is there. Parents are resolved inside the root (a
/// symlink on the way is followed as the image would follow it, never to the host); entries
/// with `..` are skipped. Files and directories get the extended attributes an image keeps
/// (see [`super::xattr`]), set after their owner. Regular files get `mtime`; device nodes and FIFOs are skipped (not
/// needed to run maintainer scripts or build a disk's files).
pub fn apply(root: &Root, layer: impl Read, mtime: u64) -> io::Result<()> {
    let mut ar = tar::Archive::new(layer);
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
    for entry in ar.entries()? {
        let mut e = entry?;
        let path = norm(&e.path_bytes());
        if path.is_empty() || path.split(|b| *b == b'/').any(|c| c == b"..") {
            continue;
        }
        let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], &path[..]),
        };
        if name == b".wh..wh..opq" {
            root.clear(dir)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            let mut p = dir.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(hidden);
            root.remove(&p)?;
            continue;
        }
        let xattrs = pax_xattrs(&mut e)?;
        let h = e.header();
        let attrs = Attrs {
            mode: h.mode()? & 0o7777,
            uid: u32::try_from(h.uid()?).unwrap_or(u32::MAX),
            gid: u32::try_from(h.gid()?).unwrap_or(u32::MAX),
        };
        match h.entry_type() {
            EntryType::Directory => {
                root.mkdir(&path, attrs)?;
                root.set_xattrs(&path, &xattrs)?;
            }
            EntryType::Regular | EntryType::Continuous => {
                root.write_file(&path, attrs, Some(time), &mut e)?;
                root.set_xattrs(&path, &xattrs)?;
            }
            EntryType::Symlink => {
                let t = e.link_name_bytes().unwrap_or_default();
                root.symlink(&path, &t, attrs.uid, attrs.gid)?;
            }
            EntryType::Link => {
                let t = norm(&e.link_name_bytes().unwrap_or_default());
                root.hard_link(&t, &path)?;
            }
            _ => {}
        }
    }
    Ok(())
}
