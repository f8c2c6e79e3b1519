//! Layer compressors: parallel gzip (see `pgzip`) and multithreaded zstd, writing into a blob.

use std::io::{self, Write};

use super::Compression;
use super::CompressionSpec;
use super::pgzip::ParallelGzip;
use crate::cache::BlobWriter;

/// The compressed half of the layer pipeline: compressor -> blob (which hashes).
pub enum Compressor {
    Gzip(ParallelGzip<BlobWriter>),
    Zstd(zstd::Encoder<'static, BlobWriter>),
}

impl Compressor {
    pub fn new(blob: BlobWriter, spec: CompressionSpec) -> io::Result<Self> {
        Ok(match spec.algorithm {
            // One gzip stream, the same bytes at any thread count.
            Compression::Gzip => Compressor::Gzip(ParallelGzip::new(
                blob,
                spec.level as u32,
                spec.threads,
                spec.gzip,
            )?),
            Compression::Zstd => {
                let mut enc = zstd::Encoder::new(blob, spec.level)?;
                // zstd's multithreaded mode gives the same frame for any worker count >= 1
                // (never 0, the single-threaded mode, which frames differently).
                enc.multithread(spec.threads.max(1) as u32)?;
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
