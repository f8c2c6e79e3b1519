//! imgbuild builds machine images from a declarative TOML recipe, without a container daemon.
//!
//! The pipeline, one module per stage:
//! [`recipe`] (load, interpolate, validate) -> `plan` (steps and cache keys) ->
//! `realize` (downloads, files, users, services, each into a layer via [`layer`]) ->
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

// Shared utilities, below every stage (ARCHITECTURE.md has the full layer table that
// tests/layers.rs enforces).
/// What the executable read from its environment, handed to the library once.
pub mod settings;
/// SHA-256 digests and hashing readers and writers.
pub mod digest;
/// Atomic writes, bounded reads, sizes, the home directory.
pub mod fsutil;
/// Canonical JSON, for cache keys.
pub(crate) mod canonical;
/// A bounded parallel for-each.
pub(crate) mod parallel;
/// External tools, found on PATH, run with their errors captured.
pub(crate) mod tool;
/// Root-confined filesystem access and the one layer applier.
pub(crate) mod rootfs;
/// OpenPGP keyrings and detached signatures.
pub(crate) mod openpgp;
/// Sigstore image signatures: cosign-format keys, payloads, sign and verify.
pub mod sigstore;
/// Progress events; library code reports, commands display.
pub mod report;
/// The content-addressed cache.
pub mod cache;
/// HTTP: one client, timeouts, retries, netrc credentials, verified downloads.
pub mod http;
/// Building as a normal user: a user namespace over the user's subordinate ids.
pub mod rootless;
/// A project directory as `[[copy]]` reads it: excludes, stat cache, listing digest.
pub mod srctree;
/// The layer core: deterministic tar, compression, diff_id and digest in one pass.
pub mod layer;
/// The image below a step, read from its layers.
pub(crate) mod lower;

// The pipeline, in order.
/// Stage 1: the recipe (load, interpolate, validate).
pub mod recipe;
/// A Dockerfile converted to a recipe.
pub mod import;
/// OCI image config, manifest and layout.
pub mod oci;
/// The base image.
pub mod base;
/// Registries: pull, push, referrers, the build cache.
pub mod registry;
/// Debian packages: indexes, resolver, .debs, dpkg's database.
pub(crate) mod apt;
/// Stage 2: the lock (apt, downloads, pip resolved).
pub mod lock;
/// Stage 3: steps and their cache keys.
pub(crate) mod plan;
/// Stage 4: each step made into a layer; the sandbox.
pub(crate) mod realize;
/// Outputs: the SBOM, cloud-init user-data, the bootable disk.
pub mod sbom;
pub mod cloudinit;
pub(crate) mod disk;
/// The driver: plan, realize, layout, SBOM.
pub mod build;
/// The proxmox target and the Proxmox API.
pub mod proxmox;

#[cfg(test)]
mod input_proptests;
