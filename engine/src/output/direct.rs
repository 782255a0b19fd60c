//! Writing large output files with direct I/O (`O_DIRECT`), past the page cache.
//!
//! Why: a shard of the power spectrum is ~10-20 MB written once and not read again by this process. Through the
//! page cache, the kernel copies every byte into freshly allocated cache pages (on the VMs we measured, first
//! touch of guest memory makes that copy run at ~0.25 GB/s and cost a core); with `O_DIRECT` the device reads
//! our buffer itself (~1 GB/s here, with next to no CPU). `O_DIRECT` wants a page-aligned buffer and a length
//! in whole blocks, hence [`PageBuf`]: the file is written padded to whole pages, then truncated to its length.
//! Filesystems that refuse `O_DIRECT` (the open or the first write fails with `EINVAL`) get a buffered write.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Alignment and granularity of direct writes (the page size; a multiple of every usual logical block size).
pub const PAGE: usize = 4096;

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(4096))]
struct Page([u8; PAGE]);

/// A growable byte buffer that starts on a page boundary and spans whole pages.
///
/// Pages beyond the length are allocated lazily and never shrink, so one buffer reused from file to file costs
/// its memory once.
#[derive(Default)]
pub struct PageBuf {
    pages: Vec<Page>,
    len: usize,
}

impl std::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBuf")
            .field("len", &self.len)
            .field("pages", &self.pages.len())
            .finish()
    }
}

impl PageBuf {
    /// Empties the buffer (keeps its pages).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.pages)[..self.len]
    }

    /// Makes room for `extra` more bytes and returns them (uninitialised content: whatever was there).
    pub fn spare(&mut self, extra: usize) -> &mut [u8] {
        let need = (self.len + extra).div_ceil(PAGE);
        if need > self.pages.len() {
            self.pages.resize(need, Page([0; PAGE]));
        }
        let len = self.len;
        &mut bytemuck::cast_slice_mut(&mut self.pages)[len..len + extra]
    }

    /// Marks `n` more bytes (at the start of the last [`PageBuf::spare`]) as written.
    pub fn commit(&mut self, n: usize) {
        assert!(
            (self.len + n).div_ceil(PAGE) <= self.pages.len(),
            "commit past the spare bytes"
        );
        self.len += n;
    }

    /// Appends `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.spare(bytes.len()).copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// The bytes written so far followed by the rest of the last page (whole pages, for a direct write).
    fn padded(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.pages)[..self.len.div_ceil(PAGE) * PAGE]
    }
}

/// Writes `buf` as the new file `path` (created or truncated) with direct I/O where the filesystem allows it,
/// else buffered. The file has exactly `buf.len()` bytes.
///
/// # Errors
/// The I/O error of the open, write or truncate.
pub fn write_file(path: &Path, buf: &PageBuf) -> std::io::Result<()> {
    if !buf.is_empty() {
        match write_direct(path, buf) {
            Err(e) if e.kind() == ErrorKind::InvalidInput => {}
            other => return other,
        }
    }
    std::fs::write(path, buf.as_bytes())
}

fn write_direct(path: &Path, buf: &PageBuf) -> std::io::Result<()> {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    file.write_all(buf.padded())?;
    file.set_len(buf.len() as u64)
}

/// Most buffers a [`FileWriter`] lends at once: one being filled per executor thread of a 2-core machine and two
/// queued or being written. A thread asking for more waits for one to come back (back-pressure).
const MAX_BUFFERS: usize = 4;

/// Writes files with [`write_file`] on a thread of its own, so that the threads that compute go on while the
/// device reads the previous buffer. Buffers are lent with [`FileWriter::buffer`], filled, and handed back with
/// [`FileWriter::submit`]; they are reused from file to file.
///
/// The first error is kept: later submits are refused with it and [`FileWriter::finish`] returns it. Dropping
/// the writer waits for the files already submitted.
#[derive(Debug)]
pub struct FileWriter {
    jobs: Option<std::sync::mpsc::SyncSender<(std::path::PathBuf, PageBuf)>>,
    free: std::sync::Mutex<std::sync::mpsc::Receiver<PageBuf>>,
    /// Where [`FileWriter::recycle`] puts back a buffer that was not submitted.
    unused: std::sync::mpsc::SyncSender<PageBuf>,
    lent: std::sync::atomic::AtomicUsize,
    failed: std::sync::Arc<std::sync::Mutex<Option<(std::path::PathBuf, std::io::Error)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Files submitted so far.
    submitted: std::sync::atomic::AtomicU64,
    /// Files written (or failed) so far, in submission order, and a signal when it grows.
    written: std::sync::Arc<(std::sync::Mutex<u64>, std::sync::Condvar)>,
}

type Failure = std::sync::Arc<std::sync::Mutex<Option<(std::path::PathBuf, std::io::Error)>>>;

impl FileWriter {
    /// Starts the writing thread.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn new() -> std::io::Result<FileWriter> {
        let (jobs, rx) =
            std::sync::mpsc::sync_channel::<(std::path::PathBuf, PageBuf)>(MAX_BUFFERS);
        let (back, free) = std::sync::mpsc::sync_channel(MAX_BUFFERS);
        let unused = back.clone();
        let failed: Failure = Default::default();
        let seen = failed.clone();
        let written = std::sync::Arc::new((std::sync::Mutex::new(0u64), std::sync::Condvar::new()));
        let count = written.clone();
        let thread = std::thread::Builder::new()
            .name("arrayjob-file-writer".into())
            .spawn(move || {
                for (path, buf) in rx {
                    let mut f = seen.lock().unwrap_or_else(|e| e.into_inner());
                    if f.is_none() {
                        drop(f);
                        if let Err(e) = write_file(&path, &buf) {
                            f = seen.lock().unwrap_or_else(|e| e.into_inner());
                            *f = Some((path, e));
                        }
                    }
                    // Never blocks: at most MAX_BUFFERS exist.
                    let _ = back.try_send(buf);
                    *count.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    count.1.notify_all();
                }
            })?;
        Ok(FileWriter {
            jobs: Some(jobs),
            free: std::sync::Mutex::new(free),
            unused,
            lent: std::sync::atomic::AtomicUsize::new(0),
            failed,
            thread: Some(thread),
            submitted: std::sync::atomic::AtomicU64::new(0),
            written,
        })
    }

    /// An empty buffer: one that came back from the writing thread, a new one, or (when
    /// [`MAX_BUFFERS`] are out) the next to come back.
    pub fn buffer(&self) -> PageBuf {
        use std::sync::atomic::Ordering;
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = match free.try_recv() {
            Ok(b) => b,
            Err(_) if self.lent.fetch_add(1, Ordering::Relaxed) < MAX_BUFFERS => PageBuf::default(),
            Err(_) => {
                self.lent.fetch_sub(1, Ordering::Relaxed);
                free.recv().unwrap_or_default()
            }
        };
        buf.clear();
        buf
    }

    /// Gives back a buffer from [`FileWriter::buffer`] that is not to be written (e.g. nothing to store):
    /// every lent buffer must come back, by this or by [`FileWriter::submit`], or later callers of
    /// [`FileWriter::buffer`] wait for it forever.
    pub fn recycle(&self, buf: PageBuf) {
        // Never blocks: at most MAX_BUFFERS exist.
        let _ = self.unused.try_send(buf);
    }

    /// Queues `buf` to be written as the file `path` (whose directory must exist).
    ///
    /// # Errors
    /// The error of an earlier write (path and cause); nothing more is written after one.
    pub fn submit(
        &self,
        path: std::path::PathBuf,
        buf: PageBuf,
    ) -> Result<(), (std::path::PathBuf, std::io::Error)> {
        self.check()?;
        let Some(jobs) = &self.jobs else {
            return Err((path, std::io::Error::other("the writer is finished")));
        };
        self.submitted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        jobs.send((path, buf))
            .map_err(|e| (e.0.0, std::io::Error::other("the writing thread stopped")))
    }

    /// Files submitted so far: a mark to pass to [`FileWriter::wait_written`].
    pub fn submitted(&self) -> u64 {
        self.submitted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until the first `mark` submitted files are written (files are written in submission order).
    ///
    /// # Errors
    /// The first failed write (path and cause).
    pub fn wait_written(&self, mark: u64) -> Result<(), (std::path::PathBuf, std::io::Error)> {
        let (count, grew) = &*self.written;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        while *n < mark && self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            n = grew
                .wait_timeout(n, std::time::Duration::from_millis(100))
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
        drop(n);
        self.check()
    }

    /// Waits until every submitted file is written.
    ///
    /// # Errors
    /// The first failed write (path and cause).
    pub fn finish(mut self) -> Result<(), (std::path::PathBuf, std::io::Error)> {
        self.stop();
        self.check()
    }

    fn check(&self) -> Result<(), (std::path::PathBuf, std::io::Error)> {
        let f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        match f.as_ref() {
            Some((p, e)) => Err((p.clone(), std::io::Error::new(e.kind(), e.to_string()))),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_is_page_aligned_and_grows_by_pages() {
        let mut b = PageBuf::default();
        assert!(b.is_empty());
        b.extend_from_slice(b"abc");
        assert_eq!(b.as_bytes(), b"abc");
        assert_eq!(b.as_bytes().as_ptr() as usize % PAGE, 0);
        assert_eq!(b.padded().len(), PAGE);
        let big = vec![7u8; PAGE + 10];
        b.extend_from_slice(&big);
        assert_eq!(b.len(), PAGE + 13);
        assert_eq!(b.padded().len(), 2 * PAGE);
        assert_eq!(&b.as_bytes()[3..], &big[..]);
        b.clear();
        assert!(b.is_empty());
        b.extend_from_slice(b"z");
        assert_eq!(b.as_bytes(), b"z");
    }

    #[test]
    fn spare_then_commit_appends_what_was_written() {
        let mut b = PageBuf::default();
        b.extend_from_slice(b"head:");
        let s = b.spare(100);
        s[..4].copy_from_slice(b"body");
        b.commit(4);
        assert_eq!(b.as_bytes(), b"head:body");
    }

    #[test]
    fn files_have_exactly_the_bytes_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in [1usize, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE + 17] {
            let mut b = PageBuf::default();
            let data: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
            b.extend_from_slice(&data);
            let path = dir.path().join(format!("f{n}"));
            // Write twice: the second write truncates the first.
            std::fs::write(&path, vec![9u8; 5 * PAGE]).expect("prefill");
            write_file(&path, &b).expect("write");
            assert_eq!(std::fs::read(&path).expect("read"), data, "n = {n}");
        }
        let empty = dir.path().join("empty");
        write_file(&empty, &PageBuf::default()).expect("write empty");
        assert_eq!(std::fs::metadata(&empty).expect("stat").len(), 0);
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = PageBuf::default();
        b.extend_from_slice(b"x");
        let err = write_file(&dir.path().join("no/such/dir/f"), &b).expect_err("must fail");
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn background_writer_writes_every_file_and_reports_the_first_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = FileWriter::new().expect("writer");
        for i in 0..20usize {
            let mut b = w.buffer();
            assert!(b.is_empty(), "lent buffers are empty");
            b.extend_from_slice(&vec![i as u8; 1000 + i * 977]);
            w.submit(dir.path().join(format!("f{i}")), b)
                .expect("submit");
        }
        w.finish().expect("finish");
        for i in 0..20usize {
            let got = std::fs::read(dir.path().join(format!("f{i}"))).expect("read");
            assert_eq!(got, vec![i as u8; 1000 + i * 977], "file {i}");
        }
        let w = FileWriter::new().expect("writer");
        let mut b = w.buffer();
        b.extend_from_slice(b"x");
        let bad = dir.path().join("missing/f");
        w.submit(bad.clone(), b).expect("queued");
        let (path, err) = w.finish().expect_err("the write fails");
        assert_eq!(path, bad);
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }
}
