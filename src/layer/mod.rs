//! Layers: deterministic tar streams, hashed (diff_id) and compressed (digest) in one pass.
//!
//! A [`LayerWriter`] takes entries in the order the caller gives them (callers sort), writes
//! ustar headers with the build's fixed mtime and numeric owners, adds a PAX header only when
//! a field does not fit ustar (long names and link targets, sizes of 8 GiB and more, large
//! ids) or when the entry has extended attributes (`SCHILY.xattr.*`), and streams the tar through sha256 (diff_id), the compressor, and sha256 again into a
//! cache [`BlobWriter`]. Nothing is buffered beyond the compressor's window.

mod compress;
pub mod pgzip;
pub mod walk;

#[cfg(test)]
mod proptests;

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tar::{EntryType, Header};

pub use compress::Compressor;

use crate::cache::{BlobWriter, Cache, CacheError, LayerRecord};
use crate::digest::HashingWriter;

pub const MEDIA_TYPE_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_TYPE_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// How a layer is compressed (`[target.oci] compression` in a recipe).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// The tar stream inside a layer blob of `media_type` (OCI and Docker gzip, zstd, plain).
pub fn decompressed<'a>(
    blob: impl std::io::Read + 'a,
    media_type: &str,
) -> std::io::Result<Box<dyn std::io::Read + 'a>> {
    let r = std::io::BufReader::with_capacity(1 << 20, blob);
    Ok(match media_type {
        MEDIA_TYPE_GZIP | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Box::new(flate2::read::MultiGzDecoder::new(r))
        }
        MEDIA_TYPE_ZSTD => Box::new(zstd::Decoder::with_buffer(r)?),
        MEDIA_TYPE_TAR | "application/vnd.docker.image.rootfs.diff.tar" => Box::new(r),
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unknown layer media type `{other}`"),
            ));
        }
    })
}

/// Ownership and permission bits of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

impl Meta {
    pub const DIR: Meta = Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
    pub const FILE: Meta = Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
    pub const LINK: Meta = Meta {
        mode: 0o777,
        uid: 0,
        gid: 0,
    };
}

/// How to compress layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CompressionSpec {
    pub algorithm: Compression,
    pub level: i32,
    /// How gzip chunks are framed (part of the key: it changes the bytes).
    pub gzip: pgzip::GzipMode,
    /// Worker threads. Not part of cache keys: the output is the same for any count.
    #[serde(skip)]
    pub threads: usize,
}

impl CompressionSpec {
    pub fn new(algorithm: Compression, level: Option<i32>) -> Self {
        let level = level.unwrap_or(match algorithm {
            Compression::Gzip => 6,
            Compression::Zstd => 3,
        });
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        CompressionSpec {
            algorithm,
            level,
            gzip: pgzip::GzipMode::default(),
            threads,
        }
    }

    pub fn with_threads(self, threads: usize) -> Self {
        CompressionSpec {
            threads: threads.max(1),
            ..self
        }
    }

    pub fn media_type(&self) -> &'static str {
        match self.algorithm {
            Compression::Gzip => MEDIA_TYPE_GZIP,
            Compression::Zstd => MEDIA_TYPE_ZSTD,
        }
    }
}

/// Writes one layer into a blob.
pub struct LayerWriter {
    tar: HashingWriter<Compressor>,
    mtime: u64,
    media_type: &'static str,
    buf: Vec<u8>,
    /// Extended attributes for the next entry (see [`LayerWriter::xattrs`]).
    xattrs: crate::rootfs::Xattrs,
}

/// Read size when copying file contents into the tar stream.
const COPY_BUF: usize = 256 * 1024;
const USTAR_MAX_SIZE: u64 = 0o77777777777;
const USTAR_MAX_ID: u64 = 0o7777777;

impl LayerWriter {
    /// A layer for the cache.
    pub fn new(cache: &Cache, spec: CompressionSpec, mtime: u64) -> Result<Self, CacheError> {
        Self::to_blob(cache.blob_writer()?, spec, mtime).map_err(|source| CacheError::Io {
            action: "start compressor for layer in",
            path: cache.root().to_path_buf(),
            source,
        })
    }

    /// A layer into any blob.
    pub fn to_blob(blob: BlobWriter, spec: CompressionSpec, mtime: u64) -> io::Result<Self> {
        let comp = Compressor::new(blob, spec)?;
        Ok(LayerWriter {
            tar: HashingWriter::new(comp),
            mtime,
            media_type: spec.media_type(),
            buf: vec![0u8; COPY_BUF],
            xattrs: Vec::new(),
        })
    }

    fn header(
        &mut self,
        path: &[u8],
        kind: EntryType,
        meta: Meta,
        size: u64,
        link: Option<&[u8]>,
    ) -> io::Result<()> {
        self.header_dev(path, kind, meta, size, link, (0, 0))
    }

    fn header_dev(
        &mut self,
        path: &[u8],
        kind: EntryType,
        meta: Meta,
        size: u64,
        link: Option<&[u8]>,
        dev: (u32, u32),
    ) -> io::Result<()> {
        let mut h = Header::new_ustar();
        if dev != (0, 0) {
            h.set_device_major(dev.0)?;
            h.set_device_minor(dev.1)?;
        }
        h.set_entry_type(kind);
        h.set_mode(meta.mode & 0o7777);
        h.set_mtime(self.mtime);
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        h.set_uid(meta.uid.min(USTAR_MAX_ID));
        h.set_gid(meta.gid.min(USTAR_MAX_ID));
        if meta.uid > USTAR_MAX_ID {
            pax.push((b"uid".to_vec(), meta.uid.to_string().into_bytes()));
        }
        if meta.gid > USTAR_MAX_ID {
            pax.push((b"gid".to_vec(), meta.gid.to_string().into_bytes()));
        }
        h.set_size(size);
        if size > USTAR_MAX_SIZE {
            pax.push((b"size".to_vec(), size.to_string().into_bytes()));
        }
        if h.set_path(Path::new(OsStr::from_bytes(path))).is_err() {
            if path.split(|b| *b == b'/').any(|c| c == b"..") || path.starts_with(b"/") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "unsafe path in layer",
                ));
            }
            pax.push((b"path".to_vec(), path.to_vec()));
            if let Some(u) = h.as_ustar_mut() {
                // A failed set_path may have left a partial name: start clean.
                u.name.fill(0);
                u.prefix.fill(0);
                let n = path.len().min(u.name.len());
                u.name[..n].copy_from_slice(&path[path.len() - n..]);
            }
        }
        if let Some(l) = link
            && h.set_link_name_literal(l).is_err()
        {
            pax.push((b"linkpath".to_vec(), l.to_vec()));
            if let Some(u) = h.as_ustar_mut() {
                let n = l.len().min(u.linkname.len());
                u.linkname[..n].copy_from_slice(&l[..n]);
            }
        }
        // Sorted by name by whoever read them, so the records' order is reproducible.
        for (name, value) in std::mem::take(&mut self.xattrs) {
            pax.push(([&b"SCHILY.xattr."[..], &name].concat(), value));
        }
        if !pax.is_empty() {
            self.pax(path, &pax)?;
        }
        h.set_cksum();
        self.tar.write_all(h.as_bytes())
    }

    /// A PAX extended header (typeflag `x`) for the entry that follows.
    fn pax(&mut self, path: &[u8], records: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
        let mut body = Vec::new();
        for (k, v) in records {
            // Each record is "LEN KEY=VALUE\n" where LEN counts its own digits too.
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} ").as_bytes());
            body.extend_from_slice(k);
            body.push(b'=');
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_mtime(self.mtime);
        h.set_size(body.len() as u64);
        let base = path
            .rsplit(|b| *b == b'/')
            .find(|c| !c.is_empty())
            .unwrap_or(b"x");
        let mut name = b"PaxHeaders/".to_vec();
        name.extend_from_slice(&base[..base.len().min(80)]);
        if let Some(u) = h.as_ustar_mut() {
            u.name[..name.len()].copy_from_slice(&name);
        }
        h.set_cksum();
        self.tar.write_all(h.as_bytes())?;
        self.tar.write_all(&body)?;
        self.pad(body.len() as u64)
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (512 - (len % 512)) % 512;
        self.tar.write_all(&[0u8; 512][..rem as usize])
    }

    /// Extended attributes (sorted by name, as [`crate::rootfs::xattr`] reads them) for the
    /// next entry, written as PAX `SCHILY.xattr.NAME` records.
    pub fn xattrs(&mut self, attrs: crate::rootfs::Xattrs) {
        self.xattrs = attrs;
    }

    /// A directory; `path` is relative to the image root, without a trailing slash.
    pub fn dir(&mut self, path: &[u8], meta: Meta) -> io::Result<()> {
        let mut p = path.to_vec();
        p.push(b'/');
        self.header(&p, EntryType::Directory, meta, 0, None)
    }

    /// A regular file of exactly `size` bytes read from `data`.
    pub fn file(&mut self, path: &[u8], meta: Meta, size: u64, data: impl Read) -> io::Result<()> {
        self.header(path, EntryType::Regular, meta, size, None)?;
        let mut data = data.take(size);
        let mut copied = 0u64;
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.tar.write_all(&self.buf[..n])?;
            copied += n as u64;
        }
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} changed size while being archived",
                    String::from_utf8_lossy(path)
                ),
            ));
        }
        self.pad(size)
    }

    pub fn symlink(&mut self, path: &[u8], target: &[u8], meta: Meta) -> io::Result<()> {
        self.header(
            path,
            EntryType::Symlink,
            Meta {
                mode: 0o777,
                ..meta
            },
            0,
            Some(target),
        )
    }

    /// A hard link to `target`, an earlier entry of this layer.
    pub fn hardlink(&mut self, path: &[u8], target: &[u8], meta: Meta) -> io::Result<()> {
        self.header(path, EntryType::Link, meta, 0, Some(target))
    }

    /// A FIFO, or a character or block device.
    pub fn special(
        &mut self,
        path: &[u8],
        kind: EntryType,
        meta: Meta,
        dev: (u32, u32),
    ) -> io::Result<()> {
        self.header_dev(path, kind, meta, 0, None, dev)
    }

    /// Removes `path` of the layers below (`.wh.NAME`).
    pub fn whiteout(&mut self, path: &[u8]) -> io::Result<()> {
        let (dir, name) = split_parent(path);
        let mut p = dir.to_vec();
        p.extend_from_slice(b".wh.");
        p.extend_from_slice(name);
        self.header(&p, EntryType::Regular, Meta::FILE, 0, None)
    }

    /// Hides everything the layers below have in directory `dir` (`.wh..wh..opq`).
    pub fn opaque(&mut self, dir: &[u8]) -> io::Result<()> {
        let mut p = dir.to_vec();
        p.extend_from_slice(b"/.wh..wh..opq");
        self.header(&p, EntryType::Regular, Meta::FILE, 0, None)
    }

    /// Ends the tar stream and the compressed blob, and stores it in the cache.
    pub fn finish(mut self, created_by: String) -> Result<LayerRecord, CacheError> {
        let io = |source| CacheError::Io {
            action: "finish layer",
            path: "<layer>".into(),
            source,
        };
        self.tar.write_all(&[0u8; 1024]).map_err(io)?;
        let (comp, diff_id, tar_size) = self.tar.finish();
        let blob: BlobWriter = comp.finish().map_err(io)?;
        let (digest, size) = blob.commit(None)?;
        Ok(LayerRecord {
            digest,
            diff_id,
            size,
            tar_size,
            media_type: self.media_type.to_string(),
            created_by,
        })
    }
}

/// Splits `a/b/c` into (`a/b/`, `c`).
fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => (&[], path),
    }
}
