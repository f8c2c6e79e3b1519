//! Parallel gzip, compressed on all cores, identical whatever the thread count.
//!
//! Written here rather than taken from `gzp` because the output must not depend on the
//! number of threads and must stream with bounded memory into a hashing writer; the scheme
//! is about 200 lines. The input is cut into fixed 1 MiB chunks, compressed by a pool of
//! workers and written back in order. Two encodings ([`GzipMode`]):
//!
//! - `Members` (default): each chunk is a complete gzip member made by libdeflate, the
//!   fastest deflate there is (~1.5x zlib at level 6, with slightly smaller output). A gzip
//!   file is by definition a series of members: `gzip -d`, Go's `compress/gzip` (containerd,
//!   Docker, podman, skopeo, umoci), Python and Java read it whole. Readers that stop after
//!   the first member (Rust's `flate2::GzDecoder`, as opposed to `MultiGzDecoder`) do not.
//! - `Stream`: pigz's scheme, a single member: each chunk is deflated (zlib-rs) with the
//!   previous chunk's last 32 KiB as preset dictionary and ended with a sync flush (so it ends
//!   on a byte boundary and the next chunk's blocks follow on), the last chunk finishes the
//!   stream, and the chunks' CRC-32s are combined for the trailer.
//!
//! Chunk boundaries and dictionaries depend only on the input, so 1 or N threads give the
//! same bytes. At most `2 * threads + 2` chunks are in flight.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, FlushCompress, Status};

/// Bytes of input per chunk.
pub const CHUNK: usize = 1 << 20;
/// Deflate's window: the dictionary carried from one chunk to the next.
const DICT: usize = 32 * 1024;
/// gzip header: no name, mtime 0, no extra flags, OS unknown (255).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// How chunks become gzip (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GzipMode {
    #[default]
    Members,
    Stream,
}

struct Job {
    seq: u64,
    data: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
}

struct Done {
    seq: u64,
    out: io::Result<Vec<u8>>,
    crc: u32,
    len: u64,
}

/// Recycled chunk buffers: fresh 1 MiB allocations per chunk cost page faults (seen as
/// seconds of system time on a 2 GB layer).
#[derive(Clone, Default)]
struct Pool(Arc<Mutex<Vec<Vec<u8>>>>);

impl Pool {
    fn get(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default()
    }

    fn put(&self, mut v: Vec<u8>) {
        v.clear();
        if let Ok(mut p) = self.0.lock()
            && p.len() < 64
        {
            p.push(v);
        }
    }
}

/// A worker's compressor state: libdeflate's compressor is a pure function of its input
/// (it keeps only scratch space between calls), so one per worker is reused.
struct Encoder {
    mode: GzipMode,
    level: u32,
    deflater: Option<libdeflater::Compressor>,
}

impl Encoder {
    fn new(mode: GzipMode, level: u32) -> io::Result<Self> {
        let deflater = match mode {
            GzipMode::Members => Some(libdeflater::Compressor::new(
                libdeflater::CompressionLvl::new(level as i32)
                    .map_err(|e| io::Error::other(format!("gzip level {level}: {e:?}")))?,
            )),
            GzipMode::Stream => None,
        };
        Ok(Encoder {
            mode,
            level,
            deflater,
        })
    }

    /// Encodes one chunk into `out` (a recycled buffer).
    fn encode(&mut self, job: &Job, mut out: Vec<u8>) -> io::Result<Vec<u8>> {
        match &mut self.deflater {
            None => deflate_chunk(self.level, job, out),
            Some(c) => {
                out.resize(c.gzip_compress_bound(job.data.len()), 0);
                let n = c
                    .gzip_compress(&job.data, &mut out)
                    .map_err(|e| io::Error::other(format!("{e:?}")))?;
                out.truncate(n);
                Ok(out)
            }
        }
    }

    fn crc(&self, data: &[u8]) -> u32 {
        if self.mode == GzipMode::Stream {
            crc32(data)
        } else {
            0
        }
    }
}

/// Deflates one chunk: dictionary primed, sync-flushed (or finished if last).
///
/// A fresh compressor per chunk: a reused one after `reset()` was seen to give different
/// bytes depending on which chunks it had compressed before, which breaks determinism.
fn deflate_chunk(level: u32, job: &Job, mut out: Vec<u8>) -> io::Result<Vec<u8>> {
    let z = &mut Compress::new(Compression::new(level), false);
    if !job.dict.is_empty() {
        z.set_dictionary(&job.dict).map_err(io::Error::other)?;
    }
    let flush = if job.last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    out.reserve(job.data.len() / 2 + 1024);
    let start_in = z.total_in();
    loop {
        let consumed = (z.total_in() - start_in) as usize;
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let status = z
            .compress_vec(&job.data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = (z.total_in() - start_in) as usize == job.data.len();
        match status {
            Status::StreamEnd => break,
            // A sync flush is complete when all input is consumed and the output had room.
            _ if !job.last && all_in && out.len() < out.capacity() => break,
            _ => {}
        }
    }
    Ok(out)
}

/// A `Write` that gzips into `inner` using `threads` workers.
pub struct ParallelGzip<W: Write> {
    inner: W,
    mode: GzipMode,
    buf: Vec<u8>,
    dict: Vec<u8>,
    seq: u64,
    next_write: u64,
    in_flight: usize,
    max_in_flight: usize,
    pending: BTreeMap<u64, Done>,
    crc: u32,
    total: u64,
    jobs: Option<SyncSender<Job>>,
    results: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    /// With one thread, chunks are compressed inline (same bytes, no thread hop).
    inline: Option<Encoder>,
    pool: Pool,
    /// Input seen, for `Members` mode to write at least one member.
    any_input: bool,
    inline_done: Option<Done>,
}

impl<W: Write> ParallelGzip<W> {
    pub fn new(mut inner: W, level: u32, threads: usize, mode: GzipMode) -> io::Result<Self> {
        if mode == GzipMode::Stream {
            inner.write_all(&HEADER)?;
        }
        let threads = threads.max(1);
        let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
        let (done_tx, done_rx) = sync_channel::<Done>(threads * 2 + 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let pool = Pool::default();
        let mut workers = Vec::new();
        let inline = if threads == 1 {
            Some(Encoder::new(mode, level)?)
        } else {
            for _ in 0..threads {
                let rx = job_rx.clone();
                let tx = done_tx.clone();
                let pool = pool.clone();
                let mut enc = Encoder::new(mode, level)?;
                workers.push(std::thread::spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let crc = enc.crc(&job.data);
                        let out = enc.encode(&job, pool.get());
                        let len = job.data.len() as u64;
                        pool.put(job.data);
                        if tx
                            .send(Done {
                                seq: job.seq,
                                out,
                                crc,
                                len,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                }));
            }
            None
        };
        Ok(ParallelGzip {
            inner,
            mode,
            any_input: false,
            buf: Vec::with_capacity(CHUNK),
            dict: Vec::new(),
            seq: 0,
            next_write: 0,
            in_flight: 0,
            max_in_flight: threads * 2 + 2,
            pending: BTreeMap::new(),
            crc: 0,
            total: 0,
            jobs: Some(job_tx),
            results: done_rx,
            workers,
            inline,
            pool,
            inline_done: None,
        })
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let mut next = self.pool.get();
        next.reserve(if last { 0 } else { CHUNK });
        let data = std::mem::replace(&mut self.buf, next);
        let dict = std::mem::take(&mut self.dict);
        self.dict = data[data.len().saturating_sub(DICT)..].to_vec();
        let job = Job {
            seq: self.seq,
            data,
            dict,
            last,
        };
        self.seq += 1;
        if let Some(enc) = &mut self.inline {
            let out = enc.encode(&job, self.pool.get());
            let done = Done {
                seq: job.seq,
                out,
                crc: enc.crc(&job.data),
                len: job.data.len() as u64,
            };
            self.pool.put(job.data);
            self.inline_done = Some(done);
            self.in_flight += 1;
            return self.collect(true);
        }
        let tx = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))?;
        tx.send(job)
            .map_err(|_| io::Error::other("gzip worker stopped"))?;
        self.in_flight += 1;
        self.collect(self.in_flight >= self.max_in_flight)
    }

    /// Writes finished chunks in order; with `block`, waits for at least one result.
    fn collect(&mut self, mut block: bool) -> io::Result<()> {
        loop {
            let next = match self.inline_done.take() {
                Some(d) => Some(d),
                None if block => Some(
                    self.results
                        .recv()
                        .map_err(|_| io::Error::other("gzip worker died"))?,
                ),
                None => self.results.try_recv().ok(),
            };
            let Some(done) = next else { return Ok(()) };
            block = false;
            self.pending.insert(done.seq, done);
            while let Some(done) = self.pending.remove(&self.next_write) {
                let out = done.out?;
                self.inner.write_all(&out)?;
                self.pool.put(out);
                self.crc = crc32_combine(self.crc, done.crc, done.len);
                self.total += done.len;
                self.next_write += 1;
                self.in_flight -= 1;
            }
        }
    }

    /// Ends the stream (last chunk, CRC and length trailer) and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        // Members: the last chunk is an ordinary member (an empty one only for empty input).
        if self.mode == GzipMode::Stream || !self.buf.is_empty() || !self.any_input {
            self.submit(true)?;
        }
        while self.in_flight > 0 {
            self.collect(true)?;
        }
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if self.mode == GzipMode::Stream {
            self.inner.write_all(&self.crc.to_le_bytes())?;
            self.inner.write_all(&(self.total as u32).to_le_bytes())?;
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        self.any_input |= n > 0;
        while !data.is_empty() {
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK {
                self.submit(false)?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}

/// CRC-32 of A followed by B, from crc(A), crc(B) and len(B) (crc of nothing is 0).
fn crc32_combine(a: u32, b: u32, len_b: u64) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial_len(a, 0);
    h.combine(&crc32fast::Hasher::new_with_initial_len(b, len_b));
    h.finalize()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn gz(data: &[u8], threads: usize) -> Vec<u8> {
        gz_mode(data, threads, GzipMode::Stream)
    }

    fn gz_mode(data: &[u8], threads: usize, mode: GzipMode) -> Vec<u8> {
        let mut w = ParallelGzip::new(Vec::new(), 6, threads, mode).unwrap();
        // Odd write sizes, to cross chunk boundaries mid-write.
        for part in data.chunks(77_777) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trips_and_is_identical_at_any_thread_count() {
        let mut data = Vec::new();
        let mut x: u64 = 1;
        while data.len() < 3 * CHUNK + 12345 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let word = format!("{} ", x >> 50);
            data.extend_from_slice(word.as_bytes());
        }
        let one = gz(&data, 1);
        assert_eq!(one, gz(&data, 2));
        assert_eq!(one, gz(&data, 3));
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data, "a single gzip member holds everything");
    }

    #[test]
    fn members_round_trip_and_are_identical_at_any_thread_count() {
        let data: Vec<u8> = (0..(2 * CHUNK + 999))
            .map(|i| (i % 251) as u8 ^ (i / 7) as u8)
            .collect();
        let one = gz_mode(&data, 1, GzipMode::Members);
        assert_eq!(one, gz_mode(&data, 2, GzipMode::Members));
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn empty_input_is_a_valid_gzip_stream() {
        for mode in [GzipMode::Stream, GzipMode::Members] {
            let z = gz_mode(b"", 2, mode);
            let mut back = Vec::new();
            flate2::read::MultiGzDecoder::new(&z[..])
                .read_to_end(&mut back)
                .unwrap();
            assert!(back.is_empty());
        }
    }
}
