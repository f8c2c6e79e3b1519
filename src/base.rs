//! Base images: resolving `[image] base` to a manifest digest, its layers (imported into the
//! cache, verified) and its config.

use oci_spec::image::ImageConfiguration;

use crate::cache::{Cache, LayerRecord};
use crate::digest::Digest;
use crate::oci::OciError;
use crate::oci::layout::Layout;
use crate::recipe::BaseRef;

/// A resolved base image.
#[derive(Debug, Clone, Default)]
pub struct BaseImage {
    /// The manifest digest; `None` for `scratch`.
    pub digest: Option<Digest>,
    pub layers: Vec<LayerRecord>,
    pub config: Option<ImageConfiguration>,
}

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("cannot use base image {layout}")]
    Layout { layout: String, source: OciError },
    #[error("base image {layout}: config has {diff_ids} diff_ids for {layers} layers")]
    Mismatch {
        layout: String,
        diff_ids: usize,
        layers: usize,
    },
}

/// Resolves the base. Layout bases have their blobs copied into the cache (verified) so that
/// the output can reuse them byte for byte. Registry bases are refused by the caller.
pub fn resolve(base: &BaseRef, platform: &str, cache: &Cache) -> Result<BaseImage, BaseError> {
    let BaseRef::Layout { path, tag } = base else {
        return Ok(BaseImage::default());
    };
    let name = format!(
        "oci:{}{}",
        path.display(),
        tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default()
    );
    let wrap = |source: OciError| BaseError::Layout {
        layout: name.clone(),
        source,
    };
    let layout = Layout::open(path).map_err(wrap)?;
    let (desc, manifest) = layout.resolve(tag.as_deref(), platform).map_err(wrap)?;
    let config_bytes = layout.read_blob(&manifest.config.digest).map_err(wrap)?;
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|source| {
        wrap(OciError::Parse {
            what: "image config",
            path: layout.blob_path(&manifest.config.digest),
            source,
        })
    })?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers.len() {
        return Err(BaseError::Mismatch {
            layout: name,
            diff_ids: diff_ids.len(),
            layers: manifest.layers.len(),
        });
    }
    let mut layers = Vec::new();
    for (l, diff_id) in manifest.layers.iter().zip(diff_ids) {
        cache
            .import_file(&layout.blob_path(&l.digest), &l.digest)
            .map_err(|e| wrap(e.into()))?;
        let diff_id = Digest::parse(diff_id).map_err(|e| {
            wrap(OciError::Select {
                layout: path.clone(),
                message: e.to_string(),
            })
        })?;
        layers.push(LayerRecord {
            digest: l.digest.clone(),
            diff_id,
            size: l.size,
            tar_size: 0,
            media_type: l.media_type.clone(),
            created_by: "base".into(),
        });
    }
    Ok(BaseImage {
        digest: Some(desc.digest),
        layers,
        config: Some(config),
    })
}
