//! The third spill tier: chunks that do not fit in memory go to local disk, and once the disk limit is
//! reached to S3, one object per frame under the run's scratch prefix. Frames are the self-describing chunk
//! frames of [`crate::frame`] (magic, type, shape, crc32c), so a corrupt or truncated object is refused when
//! read back; an object is deleted as soon as its chunk is consumed.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use tracing::warn;

use super::objects::{Bucket, block};
use crate::data::DataKey;
use crate::store::{FileSpill, SpillBackend};

/// Where the S3 tier writes: a bucket, a key prefix (ending in `/`) and how much may go to disk first.
#[derive(Debug, Clone)]
pub struct SpillTier {
    /// The job's bucket.
    pub bucket: Bucket,
    /// Prefix of the spilled objects.
    pub prefix: String,
    /// Bytes spilled to local disk before S3 is used.
    pub disk_limit: u64,
    /// Fault injection for recovery tests (`ARRAYJOB_FAULT_DAMAGE_SPILL`): the first object read back from S3
    /// comes with one byte flipped, as a storage fault would give it.
    pub damage_first: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Disk,
    S3,
}

/// A spill backend over local disk up to a limit, then S3.
#[derive(Debug)]
pub struct TieredSpill {
    disk: FileSpill,
    s3: SpillTier,
    state: Mutex<TierState>,
    damaged: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct TierState {
    /// Bytes of the frames on disk now.
    on_disk: u64,
    /// Where each spilled key is, and its frame's length.
    tier: HashMap<DataKey, (Tier, u64)>,
    /// Bytes ever written to S3.
    s3_bytes: u64,
}

impl TieredSpill {
    /// Spills to `disk`, then to `s3` beyond `s3.disk_limit` bytes on disk.
    pub fn new(disk: FileSpill, s3: SpillTier) -> TieredSpill {
        TieredSpill {
            disk,
            s3,
            state: Mutex::default(),
            damaged: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TierState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self, key: DataKey) -> String {
        format!(
            "{}{}",
            self.s3.prefix,
            key.to_string().replace([' ', '/'], "_")
        )
    }
}

fn io(e: super::S3Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl SpillBackend for TieredSpill {
    fn write(&self, key: DataKey, frame: &[u8]) -> std::io::Result<()> {
        let len = frame.len() as u64;
        let previous = {
            let mut g = self.lock();
            let tier = if g.on_disk + len <= self.s3.disk_limit {
                g.on_disk += len;
                Tier::Disk
            } else {
                Tier::S3
            };
            g.tier.insert(key, (tier, len))
        };
        if let Some(old) = previous {
            self.forget(key, old)?;
        }
        let tier = self.lock().tier.get(&key).map(|t| t.0);
        match tier {
            Some(Tier::Disk) => self.disk.write(key, frame),
            _ => {
                let (bucket, k, body) = (
                    self.s3.bucket.clone(),
                    self.key(key),
                    Bytes::copy_from_slice(frame),
                );
                block(async move { bucket.put(&k, body).await }).map_err(io)?;
                self.lock().s3_bytes += len;
                Ok(())
            }
        }
    }

    fn read(&self, key: DataKey) -> std::io::Result<Vec<u8>> {
        let tier = self.lock().tier.get(&key).map(|t| t.0);
        match tier {
            Some(Tier::Disk) => self.disk.read(key),
            Some(Tier::S3) => {
                let (bucket, k) = (self.s3.bucket.clone(), self.key(key));
                let uri = format!("s3://{}/{k}", bucket.name());
                match block(async move { bucket.get(&k).await }).map_err(io)? {
                    Some((bytes, _)) => {
                        let mut frame = bytes.to_vec();
                        let damage = self.s3.damage_first
                            && !self.damaged.swap(true, std::sync::atomic::Ordering::SeqCst);
                        if damage && let Some(b) = frame.get_mut(bytes.len() / 2) {
                            *b ^= 0x10;
                        }
                        Ok(frame)
                    }
                    None => Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("the spilled frame of {key} is gone from {uri}"),
                    )),
                }
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no spilled frame for {key}"),
            )),
        }
    }

    fn delete(&self, key: DataKey) -> std::io::Result<()> {
        let found = self.lock().tier.remove(&key);
        match found {
            Some(old) => self.forget(key, old),
            None => Ok(()),
        }
    }

    fn s3_bytes(&self) -> u64 {
        self.lock().s3_bytes
    }
}

impl TieredSpill {
    /// Frees the frame of `key` that was at `tier`: the disk's at once; an S3 object in the background (a
    /// failure leaves an object the scratch cleanup removes).
    fn forget(&self, key: DataKey, (tier, len): (Tier, u64)) -> std::io::Result<()> {
        match tier {
            Tier::Disk => {
                self.lock().on_disk -= len;
                self.disk.delete(key)
            }
            Tier::S3 => {
                let (bucket, k) = (self.s3.bucket.clone(), self.key(key));
                let runtime = super::runtime().map_err(io)?;
                runtime.spawn(async move {
                    if let Err(e) = bucket.delete(std::slice::from_ref(&k)).await {
                        warn!(key = %k, error = %e, "cannot delete a spilled object");
                    }
                });
                Ok(())
            }
        }
    }
}

pub use arrayjob_s3::scratch::{Scratch, job_scratch};

/// The spill tier of one process of the run `scratch` belongs to (`who`: `local` or `w{id}`), with
/// `disk_limit` bytes on disk before chunks go to S3.
pub fn spill_tier(scratch: &Scratch, who: &str, disk_limit: u64) -> SpillTier {
    SpillTier {
        bucket: scratch.bucket.clone(),
        prefix: scratch.spill_prefix(who),
        disk_limit,
        damage_first: false,
    }
}
