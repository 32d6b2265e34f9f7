//! A gzip writer that compresses on several threads and still produces one ordinary gzip member.
//!
//! Why: compressing is nearly all the work of `bosh logs` and most of the agent's share of a compile
//! (packing the install target), and the release build is optimised for size
//! (`opt-level = "z"`), which makes the pure-Rust deflate noticeably slower per core than the system's
//! `gzip`. Splitting the stream into fixed-size chunks and deflating them on worker threads (the
//! technique `pigz` made popular) recovers the difference on any VM with more than one core, while
//! memory stays bounded: at most `2 × workers` chunks are in flight, whatever the archive size.
//!
//! How the output stays one standard gzip stream: each chunk is raw-deflated independently and ended
//! with a *sync flush* (an empty stored block that byte-aligns the output), so the compressed chunks can
//! be concatenated as they are; only the last chunk ends with a final block. The CRC-32 and length in
//! the trailer are computed over the uncompressed bytes on the caller's thread as they arrive. Any
//! gzip reader (GNU gzip, Go, Ruby, flate2's `GzDecoder`) reads the result as a single member. The
//! cost is that back-references cannot cross a chunk boundary, which with 256 KiB chunks loses well
//! under 1% of compression.

use crate::sync::lock;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Uncompressed bytes per chunk: large enough that the lost cross-chunk matches do not matter, small
/// enough that the chunks in flight stay a few megabytes.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Worker stack: the deflate state is built on the stack before it is boxed in unoptimised builds;
/// only the pages actually touched count towards the agent's memory.
const WORKER_STACK: usize = 1024 * 1024;
/// The fixed gzip header: magic, deflate, no flags, no mtime, no extra flags, OS = Unix.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];

/// The number of compression threads: every core, capped at 4 (beyond that the disk is the limit
/// and the VM's jobs deserve the rest).
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4)
}

/// One chunk to compress, with a recycled output buffer.
struct Job {
    seq: u64,
    input: Vec<u8>,
    output: Vec<u8>,
    last: bool,
}

/// One compressed chunk, with its input buffer handed back for reuse.
struct Done {
    seq: u64,
    input: Vec<u8>,
    output: io::Result<Vec<u8>>,
}

/// Parallel gzip compression into `W`; call [`ParallelGz::finish`] to write the trailer.
pub struct ParallelGz<W: Write> {
    out: Option<W>,
    chunk: Vec<u8>,
    crc: Crc,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    next_seq: u64,
    next_write: u64,
    ready: BTreeMap<u64, Vec<u8>>,
    in_flight: usize,
    max_in_flight: usize,
    spare_inputs: Vec<Vec<u8>>,
    spare_outputs: Vec<Vec<u8>>,
    written: u64,
}

impl<W: Write> ParallelGz<W> {
    /// Starts `workers` compression threads (at least one) at `level` and writes the gzip header.
    pub fn new(mut out: W, level: Compression, workers: usize) -> io::Result<ParallelGz<W>> {
        out.write_all(&HEADER)?;
        let workers = workers.max(1);
        let max_in_flight = 2 * workers;
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(max_in_flight);
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let rx = Arc::clone(&job_rx);
            let tx = done_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("gzip-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || worker(level, &rx, &tx))?;
            handles.push(handle);
        }
        Ok(ParallelGz {
            out: Some(out),
            chunk: Vec::with_capacity(CHUNK_BYTES),
            crc: Crc::new(),
            jobs: Some(job_tx),
            done: done_rx,
            workers: handles,
            next_seq: 0,
            next_write: 0,
            ready: BTreeMap::new(),
            in_flight: 0,
            max_in_flight,
            spare_inputs: Vec::new(),
            spare_outputs: Vec::new(),
            written: HEADER.len() as u64,
        })
    }

    /// Sends the current chunk to the workers, first waiting for a result if too many are in flight.
    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        while self.in_flight >= self.max_in_flight {
            self.collect_one()?;
        }
        let fresh = self.spare_inputs.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK_BYTES));
        let input = std::mem::replace(&mut self.chunk, fresh);
        let output = self.spare_outputs.pop().unwrap_or_default();
        let job = Job { seq: self.next_seq, input, output, last };
        let jobs = self.jobs.as_ref().ok_or_else(|| io::Error::other("gzip writer already finished"))?;
        jobs.send(job).map_err(|_| io::Error::other("gzip workers stopped"))?;
        self.next_seq += 1;
        self.in_flight += 1;
        Ok(())
    }

    /// Waits for one compressed chunk and writes every chunk that is now next in order.
    fn collect_one(&mut self) -> io::Result<()> {
        let done = self.done.recv().map_err(|_| io::Error::other("gzip workers stopped"))?;
        self.in_flight -= 1;
        let mut input = done.input;
        input.clear();
        self.spare_inputs.push(input);
        self.ready.insert(done.seq, done.output?);
        let out = self.out.as_mut().ok_or_else(|| io::Error::other("gzip writer already finished"))?;
        while let Some(mut data) = self.ready.remove(&self.next_write) {
            out.write_all(&data)?;
            self.written += data.len() as u64;
            self.next_write += 1;
            data.clear();
            self.spare_outputs.push(data);
        }
        Ok(())
    }

    /// Compresses what is buffered, writes the trailer and returns the inner writer and the number
    /// of compressed bytes written.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.dispatch(true)?;
        while self.in_flight > 0 {
            self.collect_one()?;
        }
        self.stop_workers();
        let mut out = self.out.take().ok_or_else(|| io::Error::other("gzip writer already finished"))?;
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
        trailer[4..].copy_from_slice(&self.crc.amount().to_le_bytes());
        out.write_all(&trailer)?;
        out.flush()?;
        Ok((out, self.written + 8))
    }

    /// Closes the job queue and waits for the workers; they exit once the queue is empty.
    fn stop_workers(&mut self) {
        self.jobs = None;
        for h in self.workers.drain(..) {
            if h.join().is_err() {
                log::error!("a gzip worker panicked");
            }
        }
    }
}

impl<W: Write> Write for ParallelGz<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK_BYTES - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        if self.chunk.len() == CHUNK_BYTES {
            self.dispatch(false)?;
        }
        Ok(n)
    }

    /// Nothing to do: chunks are written as soon as they are compressed and in order.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for ParallelGz<W> {
    /// An unfinished writer (an error path) still stops its threads.
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// Takes chunks off the shared queue until it closes; one deflate state per thread, reset per chunk.
fn worker(level: Compression, jobs: &Mutex<Receiver<Job>>, done: &Sender<Done>) {
    let mut deflate = Compress::new(level, false);
    let mut store = Compress::new(Compression::none(), false);
    loop {
        let job = {
            let rx = lock(jobs);
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let Job { seq, input, mut output, last } = job;
        // Already-compressed data (vendored tarballs, jars, images) only costs time to deflate:
        // such chunks go out as stored blocks, still inside the same single gzip member.
        let encoder = if incompressible(&input) { &mut store } else { &mut deflate };
        encoder.reset();
        let result = compress(encoder, &input, &mut output, last).map(|()| output);
        if done.send(Done { seq, input, output: result }).is_err() {
            return;
        }
    }
}

/// A sample deflating to more than this fraction of its size marks a chunk as incompressible.
const INCOMPRESSIBLE: f64 = 0.97;
/// Bytes sampled (at the start and the middle of a chunk) to decide.
const SAMPLE: usize = 16 * 1024;

/// Whether samples from the start and the middle of `data` both fail to compress at the fastest level.
fn incompressible(data: &[u8]) -> bool {
    if data.len() < 4 * SAMPLE {
        return false;
    }
    let mut probe = Compress::new(Compression::fast(), false);
    let mut out = Vec::with_capacity(SAMPLE + 1024);
    [0, data.len() / 2].iter().all(|&at| {
        probe.reset();
        compress(&mut probe, &data[at..at + SAMPLE], &mut out, true)
            .is_ok_and(|()| out.len() as f64 > SAMPLE as f64 * INCOMPRESSIBLE)
    })
}

/// Raw-deflates `input` into `output`, ending with a sync flush (or the final block when `last`).
fn compress(deflate: &mut Compress, input: &[u8], output: &mut Vec<u8>, last: bool) -> io::Result<()> {
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    output.clear();
    output.reserve(input.len() + input.len() / 16 + 1024);
    let start = deflate.total_in();
    loop {
        let consumed = (deflate.total_in() - start) as usize;
        let status = deflate
            .compress_vec(&input[consumed..], output, flush)
            .map_err(|e| io::Error::other(format!("deflate: {e}")))?;
        let all_in = (deflate.total_in() - start) as usize == input.len();
        // zlib's rule: the flush is complete once all input is taken and output space was left over
        // (or, when finishing, once the stream reports its end).
        let complete =
            if last { status == Status::StreamEnd } else { all_in && output.len() < output.capacity() };
        if complete {
            return Ok(());
        }
        output.reserve(64 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn roundtrip(data: &[u8], workers: usize, writes: usize) {
        let mut gz = ParallelGz::new(Vec::new(), Compression::new(6), workers).unwrap();
        for piece in data.chunks(writes.max(1)) {
            gz.write_all(piece).unwrap();
        }
        let (out, n) = gz.finish().unwrap();
        assert_eq!(n, out.len() as u64);
        let mut back = Vec::new();
        // A single-member reader: proves the chunks form one gzip member.
        GzDecoder::new(&out[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data, "round trip differs");
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut x = 0x9e3779b97f4a7c15u64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 3 == 0 {
                    b"log line "[i % 9]
                } else {
                    (x % 40) as u8 + b'0'
                }
            })
            .collect()
    }

    #[test]
    fn one_member_whatever_the_size_and_workers() {
        roundtrip(b"", 2, 1);
        roundtrip(b"hello", 1, 1);
        let big = sample(3 * CHUNK_BYTES + 12345);
        roundtrip(&big, 1, 7777);
        roundtrip(&big, 3, 100_000);
        roundtrip(&sample(CHUNK_BYTES), 2, CHUNK_BYTES);
    }

    #[test]
    fn incompressible_chunks_are_stored_inside_the_same_member() {
        let mut x = 7u64;
        let random: Vec<u8> = (0..2 * CHUNK_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(incompressible(&random[..CHUNK_BYTES]) && !incompressible(&sample(CHUNK_BYTES)));
        let mut mixed = random.clone();
        mixed.extend(sample(CHUNK_BYTES));
        roundtrip(&mixed, 2, 65_536);
        let mut gz = ParallelGz::new(Vec::new(), Compression::fast(), 2).unwrap();
        gz.write_all(&random).unwrap();
        let (out, _) = gz.finish().unwrap();
        assert!(out.len() < random.len() + random.len() / 100, "stored blocks add little: {}", out.len());
    }

    #[test]
    fn system_gzip_reads_it() {
        let data = sample(2 * CHUNK_BYTES + 99);
        let mut gz = ParallelGz::new(Vec::new(), Compression::new(6), 2).unwrap();
        gz.write_all(&data).unwrap();
        let (out, _) = gz.finish().unwrap();
        let mut child = match std::process::Command::new("gzip")
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("gzip not available, skipping the cross-check: {e}");
                return;
            }
        };
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&out));
        let result = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(result.status.success());
        assert!(result.stdout == data);
    }
}
