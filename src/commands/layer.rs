//! `imgbuild layer DIR --out BLOBDIR`: one directory into one layer blob; prints its digests.

use std::time::Instant;

use anyhow::{Context, Result};
use imgbuild::cache::BlobWriter;
use imgbuild::layer::walk::{self, WalkOptions};
use imgbuild::layer::{CompressionSpec, LayerWriter};
use imgbuild::recipe::Compression;

use super::progress::Progress;
use crate::cli::{Global, LayerArgs, LayerCompression};

pub fn run(g: &Global, args: &LayerArgs) -> Result<()> {
    let algorithm = match args.compression {
        LayerCompression::Gzip => Compression::Gzip,
        LayerCompression::Zstd => Compression::Zstd,
    };
    let mut spec = CompressionSpec::new(algorithm, args.level);
    if let Some(t) = args.threads {
        spec = spec.with_threads(t);
    }
    if !args.dir.is_dir() {
        return Err(super::UsageError(format!("{} is not a directory", args.dir.display())).into());
    }
    let blobs = args.out.join("sha256");
    let started = Instant::now();
    let blob = BlobWriter::create(&blobs, &blobs).context("creating the blob")?;
    let mut w = LayerWriter::to_blob(blob, spec, super::source_date_epoch()?)
        .context("starting the layer")?;
    let stats = walk::append_tree(&mut w, &args.dir, WalkOptions { owner: args.owner })
        .with_context(|| format!("archiving {}", args.dir.display()))?;
    let rec = w
        .finish(format!("layer {}", args.dir.display()))
        .context("finishing the layer")?;
    let secs = started.elapsed().as_secs_f64();
    outln!("diff_id    {}", rec.diff_id);
    outln!("digest     {}", rec.digest);
    outln!("media_type {}", rec.media_type);
    outln!("tar_size   {}", rec.tar_size);
    outln!("size       {}", rec.size);
    Progress::new(g).line(&format!(
        "{} entries, {:.1} MB tar -> {:.1} MB in {secs:.2}s ({:.0} MB/s, {} threads)",
        stats.entries,
        rec.tar_size as f64 / 1e6,
        rec.size as f64 / 1e6,
        rec.tar_size as f64 / 1e6 / secs.max(1e-9),
        spec.threads
    ));
    Ok(())
}
