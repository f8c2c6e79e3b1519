//! imgbuild builds machine images from a declarative TOML recipe, without a container daemon.
//!
//! The pipeline, one module per stage:
//! [`recipe`] (load, interpolate, validate) -> [`plan`] (steps and cache keys) ->
//! [`realize`] (downloads, files, users, services, each into a layer via [`layer`]) ->
//! [`oci`] (config, manifest, image layout) -> [`registry`] (push; it also pulls bases).
//! [`build`] drives it; [`cache`] stores blobs and step records; [`report`] carries progress
//! to whoever displays it.
//!
//! ```no_run
//! let loaded = imgbuild::recipe::load("recipes/hello.toml".as_ref(), &[]).unwrap();
//! let cache = imgbuild::cache::Cache::open("/tmp/imgbuild-cache".as_ref()).unwrap();
//! let out = imgbuild::build::build(&loaded, &cache, "out/hello".as_ref(), 0, &Default::default(), &imgbuild::report::Silent).unwrap();
//! println!("{}", out.manifest);
//! ```

pub mod apt;
pub mod base;
pub mod build;
pub mod cache;
pub mod canonical;
pub mod cloudinit;
pub mod digest;
pub mod disk;
pub mod fsutil;
pub mod http;
pub mod import;
#[cfg(test)]
mod input_proptests;
pub mod layer;
pub mod lock;
pub mod lower;
pub mod oci;
pub mod parallel;
pub mod plan;
pub mod proxmox;
pub mod realize;
pub mod recipe;
pub mod registry;
pub mod report;
pub mod rootfs;
pub mod sbom;
pub mod tool;
