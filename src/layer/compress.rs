//! Layer compressors: gzip (flate2 on zlib-rs) and zstd (multithreaded), writing into a blob.

use std::io::{self, Write};

use flate2::{Compression as GzLevel, GzBuilder};

use super::CompressionSpec;
use crate::cache::BlobWriter;
use crate::recipe::Compression;

/// The compressed half of the layer pipeline: compressor -> cache blob (which hashes).
pub enum Compressor {
    Gzip(flate2::write::GzEncoder<BlobWriter>),
    Zstd(zstd::Encoder<'static, BlobWriter>),
}

impl Compressor {
    pub fn new(blob: BlobWriter, spec: CompressionSpec) -> io::Result<Self> {
        let sink = blob;
        Ok(match spec.algorithm {
            // GzBuilder writes mtime 0 and no file name: the header is the same on every build.
            Compression::Gzip => {
                Compressor::Gzip(GzBuilder::new().write(sink, GzLevel::new(spec.level as u32)))
            }
            Compression::Zstd => {
                let mut enc = zstd::Encoder::new(sink, spec.level)?;
                // zstd's multithreaded output does not depend on the worker count (>= 1),
                // so the digest is the same on any machine.
                let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
                enc.multithread(workers.max(1))?;
                enc.include_checksum(true)?;
                Compressor::Zstd(enc)
            }
        })
    }

    /// Flushes the compressor and returns the blob, which hashed everything written to it.
    pub fn finish(self) -> io::Result<BlobWriter> {
        match self {
            Compressor::Gzip(e) => e.finish(),
            Compressor::Zstd(e) => e.finish(),
        }
    }
}

impl Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(e) => e.write(buf),
            Compressor::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(e) => e.flush(),
            Compressor::Zstd(e) => e.flush(),
        }
    }
}
