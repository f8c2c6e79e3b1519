//! Upload bodies that hash the blob as it is sent and refuse to finish a blob whose bytes do
//! not match its digest, so a blob corrupted in the layout is never published under its name.
//!
//! A blob goes out in one body (monolithic PUT) or several (PATCH chunks), and any of them may
//! be sent again: a retried request, or a resume from the registry's `Range` after a failure.
//! One [`Verifier`] per blob keeps the hash of the longest prefix read so far; a body that
//! re-reads bytes already hashed skips them, and the body that reads the last byte compares
//! the digest before handing that byte over. On a mismatch the body fails (the registry sees a
//! cut request and never completes the upload) and every later body fails at once.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use reqwest::blocking::Body;
use sha2::{Digest as _, Sha256};

use super::RegistryError;
use crate::digest::Digest;

/// The running hash of one blob's upload.
pub struct Verifier {
    path: PathBuf,
    expected: Digest,
    size: u64,
    state: Mutex<State>,
}

struct State {
    hasher: Sha256,
    /// Bytes `[0, hashed)` of the blob are in `hasher`.
    hashed: u64,
    /// What the whole blob hashed to, when that is not `expected`.
    found: Option<Digest>,
}

impl Verifier {
    pub fn new(path: &Path, expected: &Digest, size: u64) -> Arc<Self> {
        Arc::new(Verifier {
            path: path.to_path_buf(),
            expected: expected.clone(),
            size,
            state: Mutex::new(State {
                hasher: Sha256::new(),
                hashed: 0,
                found: None,
            }),
        })
    }

    /// The mismatch, once the whole blob was read and did not hash to its digest.
    pub fn check(&self) -> Result<(), RegistryError> {
        let found = self.state.lock().ok().and_then(|s| s.found.clone());
        match found {
            Some(found) => Err(self.mismatch(found)),
            None => Ok(()),
        }
    }

    fn mismatch(&self, found: Digest) -> RegistryError {
        RegistryError::DigestMismatch {
            what: format!("blob {} (not uploaded)", self.path.display()),
            expected: self.expected.clone(),
            found,
        }
    }

    /// A body of bytes `[offset, offset + len)` of the blob, read from a fresh open of its
    /// file (a retry re-reads it).
    pub fn body(self: &Arc<Self>, offset: u64, len: u64) -> Result<Body, RegistryError> {
        self.check()?;
        let file = File::open(&self.path).map_err(|source| RegistryError::Io {
            action: "open blob",
            path: self.path.clone(),
            source,
        })?;
        let reader = Range {
            file,
            pos: offset,
            end: offset.saturating_add(len).min(self.size),
            verifier: Arc::clone(self),
        };
        Ok(Body::sized(reader, len))
    }

    /// Takes `buf`, the bytes at `pos`, into the hash (the part not hashed yet); a gap before
    /// `pos` is read from `file` first. Fails when the blob is complete and wrong.
    fn take(&self, file: &File, pos: u64, buf: &[u8]) -> io::Result<()> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| io::Error::other("blob verifier poisoned"))?;
        if let Some(found) = &s.found {
            return Err(io::Error::other(self.mismatch(found.clone()).to_string()));
        }
        let end = pos + buf.len() as u64;
        if s.hashed < pos {
            // Not reached by the upload's order (a resume starts at or before what was sent),
            // but kept correct: hash the gap from the file.
            let mut gap = vec![0u8; (pos - s.hashed).min(1 << 20) as usize];
            while s.hashed < pos {
                let n = gap.len().min((pos - s.hashed) as usize);
                file.read_exact_at(&mut gap[..n], s.hashed)?;
                s.hasher.update(&gap[..n]);
                s.hashed += n as u64;
            }
        }
        if s.hashed < end {
            let skip = (s.hashed - pos) as usize;
            s.hasher.update(&buf[skip..]);
            s.hashed = end;
            if s.hashed == self.size {
                let found = Digest::from_hasher(s.hasher.clone());
                if found != self.expected {
                    let err = self.mismatch(found.clone()).to_string();
                    s.found = Some(found);
                    return Err(io::Error::other(err));
                }
            }
        }
        Ok(())
    }
}

/// One body: a byte range of the blob's file, read with positioned reads.
struct Range {
    file: File,
    pos: u64,
    end: u64,
    verifier: Arc<Verifier>,
}

impl Read for Range {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} ends at {} bytes, before the {} its descriptor names",
                    self.verifier.path.display(),
                    self.pos,
                    self.verifier.size
                ),
            ));
        }
        self.verifier.take(&self.file, self.pos, &buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(data: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("blob");
        std::fs::write(&p, data).unwrap();
        (d, p)
    }

    /// Reads `[offset, offset + len)` through a body reader, in small pieces.
    fn send(v: &Arc<Verifier>, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut r = Range {
            file: File::open(&v.path).unwrap(),
            pos: offset,
            end: offset + len,
            verifier: Arc::clone(v),
        };
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn chunks_resends_and_gaps_hash_the_blob_once() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (_d, p) = blob(&data);
        let v = Verifier::new(&p, &Digest::of(&data), 1000);
        assert_eq!(send(&v, 0, 300).unwrap(), &data[..300]);
        // A resume from the registry's Range (200: less than was sent), then a gap.
        assert_eq!(send(&v, 200, 300).unwrap(), &data[200..500]);
        assert_eq!(send(&v, 600, 400).unwrap(), &data[600..]);
        v.check().unwrap();
        assert_eq!(v.state.lock().unwrap().hashed, 1000);
    }

    #[test]
    fn a_changed_byte_fails_the_last_body_and_every_later_one() {
        let mut data = vec![5u8; 500];
        let expected = Digest::of(&data);
        data[250] = 6;
        let (_d, p) = blob(&data);
        let v = Verifier::new(&p, &expected, 500);
        send(&v, 0, 400).unwrap();
        let e = send(&v, 400, 100).unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        assert!(matches!(
            v.check(),
            Err(RegistryError::DigestMismatch { .. })
        ));
        assert!(send(&v, 0, 10).is_err());
        assert!(v.body(0, 10).is_err());
    }

    #[test]
    fn a_truncated_file_fails_instead_of_sending_short() {
        let (_d, p) = blob(&[1u8; 100]);
        let v = Verifier::new(&p, &Digest::of(&[1u8; 200]), 200);
        let e = send(&v, 0, 200).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
