//! The layer core's pieces, in memory: sha256, gzip (members and single stream) and zstd at
//! 1 and 2 threads, and the whole tar -> sha256 -> compress -> sha256 -> blob pipeline over
//! a generated tree. `benches/compare.sh` races the whole thing against pigz and zstd.
//!
//! Run: `cargo bench --bench layer`

use std::io::Write;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use imgbuild::cache::BlobWriter;
use imgbuild::digest::HashingWriter;
use imgbuild::layer::pgzip::{GzipMode, ParallelGzip};
use imgbuild::layer::walk::{WalkOptions, append_tree};
use imgbuild::layer::{CompressionSpec, LayerWriter};
use imgbuild::recipe::Compression;

/// 16 MiB of text-and-binary-like data: compressible, not trivially.
fn sample() -> Vec<u8> {
    let mut out = Vec::with_capacity(16 << 20);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while out.len() < 16 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(3) {
            out.extend_from_slice(format!("word{} ", x % 5000).as_bytes());
        } else {
            out.extend_from_slice(&x.to_le_bytes()[..(x % 5) as usize]);
        }
    }
    out
}

fn pieces(c: &mut Criterion) {
    let data = sample();
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("sha256", |b| {
        b.iter(|| {
            let mut w = HashingWriter::new(std::io::sink());
            w.write_all(&data).unwrap();
            w.finish()
        })
    });
    for threads in [1, 2] {
        for (name, mode) in [
            ("gzip6_members", GzipMode::Members),
            ("gzip6_stream", GzipMode::Stream),
        ] {
            g.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &t| {
                b.iter(|| {
                    let mut w = ParallelGzip::new(Vec::new(), 6, t, mode).unwrap();
                    w.write_all(&data).unwrap();
                    w.finish().unwrap().len()
                })
            });
        }
        g.bench_with_input(BenchmarkId::new("zstd3", threads), &threads, |b, &t| {
            b.iter(|| {
                let mut e = zstd::Encoder::new(Vec::new(), 3).unwrap();
                e.multithread(t as u32).unwrap();
                e.write_all(&data).unwrap();
                e.finish().unwrap().len()
            })
        });
    }
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    let data = sample();
    for i in 0..64 {
        let d = root.join(format!("d{}", i % 8));
        std::fs::create_dir_all(&d).unwrap();
        let n = (i * 7919) % (data.len() / 2);
        std::fs::write(d.join(format!("f{i}")), &data[n..n + 256 * 1024]).unwrap();
    }
    let blobs = dir.path().join("blobs");
    let mut g = c.benchmark_group("layer");
    g.throughput(Throughput::Bytes(64 * 256 * 1024));
    g.sample_size(10);
    for algorithm in [Compression::Gzip, Compression::Zstd] {
        g.bench_function(format!("tree_16MiB_{}", algorithm.name()), |b| {
            b.iter(|| {
                let spec = CompressionSpec::new(algorithm, None);
                let blob = BlobWriter::create(&blobs, &blobs).unwrap();
                let mut w = LayerWriter::to_blob(blob, spec, 0).unwrap();
                append_tree(&mut w, &root, WalkOptions::default()).unwrap();
                w.finish(String::new()).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, pieces, pipeline);
criterion_main!(benches);
