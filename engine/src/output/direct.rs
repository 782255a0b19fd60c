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
}
