//! OCI image layouts: reading one as a base image, writing one as a build output.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ANNOTATION_REF_NAME, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, OciError};
use crate::canonical;
use crate::digest::{Digest, HashingReader, digest_reader};
use crate::fsutil;

/// A descriptor, as much of it as imgbuild reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Desc {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Desc>,
}

impl Index {
    /// The entry for `platform` (`os/arch`).
    pub fn for_platform(&self, platform: &str) -> Option<&Desc> {
        let (os, arch) = platform.split_once('/').unwrap_or(("linux", platform));
        self.manifests.iter().find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == arch)
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Desc,
    pub layers: Vec<Desc>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OciError + use<> {
    let path = path.to_path_buf();
    move |source| OciError::Io {
        action,
        path,
        source,
    }
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Opens an existing layout (it must have `oci-layout` and `index.json`).
    pub fn open(root: &Path) -> Result<Self, OciError> {
        let marker = root.join("oci-layout");
        fs::metadata(&marker).map_err(io_err("open OCI layout marker", &marker))?;
        Ok(Layout {
            root: root.to_path_buf(),
        })
    }

    /// Creates (or reuses) a layout directory for writing.
    pub fn create(root: &Path) -> Result<Self, OciError> {
        let blobs = root.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
        // Temp files of a write that was killed (`kill -9`, power loss) never become part of
        // the layout: the next writer removes them.
        for dir in [root, blobs.as_path()] {
            for e in fs::read_dir(dir).map_err(io_err("list", dir))?.flatten() {
                if e.file_name().as_encoded_bytes().starts_with(b".tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let marker = root.join("oci-layout");
        fsutil::write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io_err("write", &marker))?;
        Ok(Layout {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn index(&self) -> Result<Index, OciError> {
        let p = self.root.join("index.json");
        let bytes = fs::read(&p).map_err(io_err("read", &p))?;
        serde_json::from_slice(&bytes).map_err(|source| OciError::Parse {
            what: "image index",
            path: p,
            source,
        })
    }

    /// Reads a small blob (a manifest or config) and checks its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, OciError> {
        let p = self.blob_path(d);
        let bytes = fs::read(&p).map_err(io_err("read blob", &p))?;
        let found = Digest::of(&bytes);
        if &found != d {
            return Err(OciError::DigestMismatch {
                path: p,
                expected: d.clone(),
                found,
            });
        }
        Ok(bytes)
    }

    /// Finds the image manifest for `tag` (or the only one) and `platform` (`os/arch`).
    pub fn resolve(&self, tag: Option<&str>, platform: &str) -> Result<(Desc, Manifest), OciError> {
        let index = self.index()?;
        let fail = |message: String| OciError::Select {
            layout: self.root.clone(),
            message,
        };
        let candidates: Vec<&Desc> = match tag {
            Some(t) => index
                .manifests
                .iter()
                .filter(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(t))
                .collect(),
            None => index.manifests.iter().collect(),
        };
        let mut desc = match candidates.as_slice() {
            [] => return Err(fail(format!("no image tagged `{}`", tag.unwrap_or("")))),
            [one] => (*one).clone(),
            many => {
                let digests: BTreeSet<_> = many.iter().map(|d| &d.digest).collect();
                if digests.len() > 1 {
                    return Err(fail("several images and no tag: use oci:PATH:TAG".into()));
                }
                many[0].clone()
            }
        };
        // Follow nested indexes down to the manifest for our platform.
        for _ in 0..4 {
            let bytes = self.read_blob(&desc.digest)?;
            let path = self.blob_path(&desc.digest);
            if desc.media_type == MEDIA_TYPE_INDEX {
                let idx: Index =
                    serde_json::from_slice(&bytes).map_err(|source| OciError::Parse {
                        what: "image index",
                        path,
                        source,
                    })?;
                desc = idx
                    .for_platform(platform)
                    .cloned()
                    .ok_or_else(|| fail(format!("no manifest for platform {platform}")))?;
                continue;
            }
            if desc.media_type != MEDIA_TYPE_MANIFEST {
                return Err(fail(format!(
                    "unsupported manifest media type {}",
                    desc.media_type
                )));
            }
            let m: Manifest = serde_json::from_slice(&bytes).map_err(|source| OciError::Parse {
                what: "image manifest",
                path,
                source,
            })?;
            return Ok((desc, m));
        }
        Err(fail("image indexes nested too deeply".into()))
    }

    /// Writes a small blob (JSON documents) unless an identical one is there.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, OciError> {
        let d = Digest::of(bytes);
        let p = self.blob_path(&d);
        if fs::read(&p).map(|b| b == bytes).unwrap_or(false) {
            return Ok(d);
        }
        fsutil::write_atomic(&p, bytes).map_err(io_err("write blob", &p))?;
        Ok(d)
    }

    /// Writes a serializable document canonically and returns its descriptor.
    pub fn put_json<T: Serialize>(&self, media_type: &str, doc: &T) -> Result<Desc, OciError> {
        let bytes = canonical::to_vec(doc).map_err(|source| OciError::Parse {
            what: "document",
            path: self.root.clone(),
            source,
        })?;
        let digest = self.put_bytes(&bytes)?;
        Ok(Desc {
            media_type: media_type.into(),
            digest,
            size: bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        })
    }

    /// Copies the blob at `src` into the layout, verifying it against `digest` on the way.
    /// A blob already present is verified in place instead of copied.
    pub fn put_file(&self, src: &Path, digest: &Digest) -> Result<(), OciError> {
        let dest = self.blob_path(digest);
        if let Ok(f) = File::open(&dest) {
            let (found, _) = digest_reader(BufReader::with_capacity(1 << 20, f))
                .map_err(io_err("read blob", &dest))?;
            if &found == digest {
                return Ok(());
            }
        }
        let f = File::open(src).map_err(io_err("open blob", src))?;
        let mut reader = HashingReader::new(BufReader::with_capacity(1 << 20, f));
        let dir = self.root.join("blobs/sha256");
        let mut tmp = fsutil::temp_in(&dir).map_err(io_err("create temp file in", &dir))?;
        io::copy(&mut reader, &mut tmp).map_err(io_err("copy blob to", &dir))?;
        let (found, _) = reader.finish();
        if &found != digest {
            return Err(OciError::DigestMismatch {
                path: src.to_path_buf(),
                expected: digest.clone(),
                found,
            });
        }
        // Blobs are as readable as index.json (temp files start 0600).
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(io_err("set the mode of a blob in", &dir))?;
        tmp.as_file().sync_data().map_err(io_err("sync", &dir))?;
        tmp.persist(&dest).map_err(|e| OciError::Io {
            action: "store blob",
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Points `index.json` at `manifest` under each tag (atomically), then removes blobs that
    /// no longer belong to the image.
    pub fn finish(
        &self,
        manifest: &Desc,
        tags: &[String],
        keep: &BTreeSet<Digest>,
    ) -> Result<(), OciError> {
        let manifests = tags
            .iter()
            .map(|t| {
                let mut d = manifest.clone();
                d.annotations.insert(ANNOTATION_REF_NAME.into(), t.clone());
                d
            })
            .collect();
        let index = Index {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_INDEX.into()),
            manifests,
        };
        let bytes = canonical::to_vec(&index).map_err(|source| OciError::Parse {
            what: "index",
            path: self.root.clone(),
            source,
        })?;
        let p = self.root.join("index.json");
        fsutil::write_atomic(&p, &bytes).map_err(io_err("write", &p))?;
        let dir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&dir).map_err(io_err("list", &dir))?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if Digest::parse(&name).is_ok_and(|d| !keep.contains(&d)) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }
}
