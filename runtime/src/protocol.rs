//! What the coordinator and the workers say to each other over HTTP.
//!
//! Control messages are small JSON documents; data (chunks, pieces, partials, gathered blocks) always travels
//! as binary bodies of self-describing frames ([`arrayjob_engine::frame`]), never as JSON. Every request is
//! signed with the job's token and every answer proven ([`crate::auth`]: `Authorization:
//! ArrayJob-HMAC-SHA256 ...`, `x-arrayjob-proof`), except the health and metrics endpoints, which say nothing
//! about the data.
//!
//! Coordinator endpoints:
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/job` | - | [`JobDescription`] |
//! | `POST /v1/register` | [`RegisterRequest`] | [`RegisterResponse`]; 409 when the plan hashes differ |
//! | `POST /v1/sync` | [`SyncRequest`] | [`SyncResponse`] (waits up to `waitMs` for work when nothing is reported) |
//! | `POST /v1/gather?node=&start=&pixel=` | a frame | 204 |
//! | `GET /v1/progress` | - | the progress snapshot (JSON) |
//!
//! Worker endpoints: `POST /v1/fetch` ([`FetchRequest`] in, the frames of the keys in order out, each
//! preceded by its length as a u64 little-endian: [`answer_parts`] writes them, [`FrameReader`] reads them) and `GET /v1/probe?bytes=N` (N bytes, to time a link).
//! Peers ask `/v1/fetch` for an upgrade to [`FRAMES_PROTOCOL`]: the same frames then follow the `101` answer
//! on the bare connection ([`write_frames`], [`read_frames`]), so chunks are read from the socket straight
//! into their buffers.

use std::sync::Arc;

use arrayjob_engine::data::{Data, DataKey};
use arrayjob_engine::exec::NodeSnapshot;
use arrayjob_engine::graph::TaskId;
use arrayjob_engine::schedule::WorkerId;
use arrayjob_engine::store::StoreStats;
use arrayjob_engine::tracker::Attempt;

/// Everything a worker needs to build the job's plan itself.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobDescription {
    /// The manifest, as the user wrote it (YAML).
    pub manifest: String,
    /// Where relative source paths are resolved.
    pub base_dir: String,
    /// Where the outputs are staged (a directory every worker can write to).
    pub staging_dir: String,
    /// Where the Zarr arrays are staged when it is not `staging_dir`: the run's `s3://bucket/prefix/`, where each
    /// worker writes the chunks it computes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zarr_root: Option<String>,
    /// The run's scratch prefix on S3 (`s3://bucket/prefix/`), when the job has `spec.storage.s3`: workers
    /// spill there beyond their disk limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<String>,
    /// The coordinator's plan hash (hex).
    pub plan_hash: String,
    /// How often a worker must be heard from, in milliseconds (it is declared lost after
    /// [`JobDescription::worker_timeout_ms`] without a request).
    pub heartbeat_ms: u64,
    /// Silence after which a worker is declared lost, in milliseconds.
    pub worker_timeout_ms: u64,
}

/// A worker joining the job.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    /// Where peers fetch data from it (`host:port`).
    pub address: String,
    /// Threads it runs tasks on.
    pub cores: usize,
    /// Bytes of data it keeps in memory before spilling to its disk.
    pub memory_budget: u64,
    /// The plan hash it computed from the [`JobDescription`] (hex).
    pub plan_hash: String,
    /// Its version.
    pub version: String,
    /// The id its coordinator gave it when it started it as a local process (`--workers N`): how the
    /// coordinator knows which worker a process that exited was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_id: Option<String>,
}

/// The coordinator's answer to a [`RegisterRequest`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    /// The worker's number in this job.
    pub worker: WorkerId,
}

/// Something a worker tells the coordinator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Report {
    /// A task finished; its outputs are in the worker's store (and its output files written).
    Done {
        /// The task.
        task: TaskId,
        /// Which run.
        attempt: Attempt,
        /// Keys written, with their sizes in bytes.
        outputs: Vec<(DataKey, u64)>,
        /// Seconds it took on the worker, fetching its inputs included.
        seconds: f64,
        /// The worker thread that ran it (for the timeline).
        thread: u32,
    },
    /// A task could not run.
    Failed {
        /// The task.
        task: TaskId,
        /// Which run.
        attempt: Attempt,
        /// True when an input could not be fetched from its holder (which may have died): the task is
        /// placed again. Otherwise the error is the job's.
        input_unavailable: bool,
        /// What went wrong, naming stage and chunk.
        error: String,
        /// Inputs read from the job's object store that were damaged or missing there: they are rebuilt.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unreadable: Vec<DataKey>,
    },
    /// Keys uploaded to the job's object store on a [`Command::Ship`], as one object.
    Shipped {
        /// The object's key in the scratch bucket.
        object: String,
        /// The keys whose frames it holds, in order, with their sizes in memory.
        keys: Vec<(DataKey, u64)>,
        /// Its length.
        bytes: u64,
        /// crc32c of its bytes.
        crc32c: u32,
        /// Seconds the upload took.
        seconds: f64,
    },
    /// Keys of this worker's store found damaged (a spilled frame that failed its checks) while serving them:
    /// dropped here, to be rebuilt.
    Damaged {
        /// The keys.
        keys: Vec<DataKey>,
    },
    /// An upload of [`Command::Ship`] failed for good (after the S3 retries and outage budget): the job fails.
    ShipFailed {
        /// What went wrong, naming the object.
        error: String,
    },
    /// Keys copied from a peer on a [`Command::Move`] and now in this worker's store (also a measure of the
    /// link).
    Moved {
        /// The sender.
        from: WorkerId,
        /// The keys.
        keys: Vec<DataKey>,
        /// Bytes received.
        bytes: u64,
        /// Seconds it took.
        seconds: f64,
    },
    /// Bytes received from a peer (a task's inputs or a probe), to measure the link.
    Transfer {
        /// The sender.
        from: WorkerId,
        /// Bytes received.
        bytes: u64,
        /// Seconds it took.
        seconds: f64,
    },
}

/// A worker's periodic message: what happened since the last one, and how it is doing.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRequest {
    /// Who.
    pub worker: WorkerId,
    /// Events since the last sync.
    pub reports: Vec<Report>,
    /// Its chunk store counters.
    pub store: StoreStats,
    /// Bytes resident in its store now.
    pub resident_bytes: u64,
    /// Its S3 requests and bytes so far (cumulative).
    #[serde(default)]
    pub s3: arrayjob_engine::s3::objects::S3Counters,
    /// Its per-stage counters (cumulative).
    pub stages: Vec<NodeSnapshot>,
    /// When its last load task ended, seconds after it joined.
    pub load_end_seconds: f64,
    /// How long the coordinator may hold the request when there is nothing to send (milliseconds).
    pub wait_ms: u64,
    /// Whether the answer carries the worker's commands. Exactly one of a worker's loops takes them, so
    /// they arrive in the order they were decided.
    pub take_commands: bool,
}

/// A holder of an input, as a task's recipient needs to reach it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InputLocation {
    /// The key.
    pub key: DataKey,
    /// Its holder.
    pub worker: WorkerId,
    /// The holder's data address; for [`WorkerId::STORE`], the key of the object in the scratch bucket.
    pub address: String,
    /// For [`WorkerId::STORE`]: the position of the key's frame in the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
}

/// What the coordinator tells a worker to do.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Command {
    /// Run a task.
    Run {
        /// The task.
        task: TaskId,
        /// Which run.
        attempt: Attempt,
        /// Where its inputs are.
        inputs: Vec<InputLocation>,
    },
    /// Time the link from a peer.
    Probe {
        /// The peer.
        from: WorkerId,
        /// Its data address.
        address: String,
        /// Bytes to fetch.
        bytes: u64,
    },
    /// Copy keys from a peer now, ahead of the merge that will read them here (one request per batch, one
    /// batch at a time per peer), and report them [`Report::Moved`].
    Move {
        /// The peer.
        from: WorkerId,
        /// Its data address.
        address: String,
        /// The keys, with their sizes in bytes.
        keys: Vec<(DataKey, u64)>,
    },
    /// Upload keys of this worker's store to the job's object store as one object at `object` (the frames in
    /// order, as a fetch answer), and report it [`Report::Shipped`].
    Ship {
        /// The object's key in the scratch bucket.
        object: String,
        /// The keys.
        keys: Vec<DataKey>,
    },
    /// Forget data nobody will read.
    Release {
        /// The keys.
        keys: Vec<DataKey>,
    },
}

/// The coordinator's answer to a [`SyncRequest`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncResponse {
    /// What to do.
    pub commands: Vec<Command>,
    /// The job is over (finished or failed): the worker exits.
    pub finished: bool,
}

/// A batch of keys to fetch from one peer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchRequest {
    /// The keys, answered in this order.
    pub keys: Vec<DataKey>,
}

/// The pieces of a fetch answer for one value: the frame's length (u64 little-endian) and header, the
/// elements (lent from `data` itself when they lie contiguously: no copy), the checksum.
pub fn answer_parts(data: &Arc<Data>) -> [bytes::Bytes; 3] {
    let (header, payload, crc) = arrayjob_engine::frame::encode_parts(data);
    let len = header.len() + payload.len() + 4;
    let mut head = Vec::with_capacity(8 + header.len());
    head.extend_from_slice(&(len as u64).to_le_bytes());
    head.extend_from_slice(&header);
    let payload = match payload {
        std::borrow::Cow::Owned(v) => bytes::Bytes::from(v),
        std::borrow::Cow::Borrowed(_) => bytes::Bytes::from_owner(SharedPayload(data.clone())),
    };
    [
        bytes::Bytes::from(head),
        payload,
        bytes::Bytes::copy_from_slice(&crc),
    ]
}

/// A stored chunk's elements, lent to a response body without a copy.
struct SharedPayload(Arc<Data>);

impl AsRef<[u8]> for SharedPayload {
    fn as_ref(&self) -> &[u8] {
        // Only made for chunks whose bytes are borrowed (`encode_parts` answered `Cow::Borrowed`).
        match &*self.0 {
            Data::Chunk(c) => c.le_bytes_slice().unwrap_or_default(),
            Data::Partial(_) => &[],
        }
    }
}

/// The `Upgrade` protocol a fetch asks for: the server answers `101 Switching Protocols` and sends the same
/// length-prefixed frames as a `/v1/fetch` body on the bare connection, then closes it. The receiver reads
/// each chunk's elements from the socket straight into the chunk ([`read_frames`]): no copy through an HTTP
/// client's buffers. The request's signature is checked before the switch, as for any other, and the `101`
/// carries the server's proof: the client reads no frame before checking it.
pub const FRAMES_PROTOCOL: &str = "arrayjob-frames";

/// Writes the answer for `data` (the frames of [`answer_parts`], in order) to an upgraded connection. The
/// elements go out from the values' own buffers, a step at a time, each step checksummed just before the
/// kernel copies it (one pass over the elements in memory, not two). Returns the bytes written.
///
/// # Errors
/// When the connection fails.
pub async fn write_frames<W>(w: W, data: &[Arc<Data>]) -> std::io::Result<u64>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    // Small frames (and every frame's length prefix, header and checksum) are gathered; steps of the elements
    // are larger than the buffer, so they go straight to the socket.
    let mut w = tokio::io::BufWriter::with_capacity(64 << 10, w);
    let mut sent = 0;
    for d in data {
        let (header, payload) = arrayjob_engine::frame::encode_unchecked(d);
        let len = header.len() + payload.len() + 4;
        w.write_all(&(len as u64).to_le_bytes()).await?;
        w.write_all(&header).await?;
        let mut crc = crc32c::crc32c(&header);
        for step in payload.chunks(STEP) {
            crc = crc32c::crc32c_append(crc, step);
            w.write_all(step).await?;
        }
        w.write_all(&crc.to_le_bytes()).await?;
        sent += 8 + len as u64;
    }
    w.flush().await?;
    w.into_inner().shutdown().await?;
    Ok(sent)
}

/// Why a fetch answer's frames could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The answer ended inside a frame.
    #[error("the fetch answer ended inside a frame")]
    Truncated,
    /// The connection failed.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// A length prefix past the limit of a frame.
    #[error("a frame announced as {len} bytes is more than the limit of {most} bytes")]
    TooLong {
        /// The length announced.
        len: u64,
        /// The longest frame taken.
        most: u64,
    },
    /// A length prefix this machine cannot address.
    #[error("a frame of {0} bytes does not fit this machine")]
    Unaddressable(u64),
    /// A length prefix that disagrees with the frame's header.
    #[error("a frame announced as {len} bytes has the header of a {header}-byte frame")]
    LengthMismatch {
        /// The length announced.
        len: usize,
        /// The length the header says.
        header: usize,
    },
    /// A header whose fixed part is complete but says no payload length follows.
    #[error("a frame header without its payload length")]
    NoPayloadLength,
    /// An invalid header or payload.
    #[error(transparent)]
    Frame(#[from] arrayjob_engine::frame::FrameError),
    /// A chunk whose elements do not match their checksum.
    #[error("chunk frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The checksum sent.
        stored: u32,
        /// The checksum of the bytes received.
        computed: u32,
    },
    /// More frames than asked for.
    #[error("the answer holds more than the {0} frame(s) asked for")]
    TooMany(usize),
    /// Which frame of the answer failed.
    #[error("frame {index} of {count}: {source}")]
    InFrame {
        /// The frame, from 1.
        index: usize,
        /// Frames expected.
        count: usize,
        /// What failed.
        source: Box<ReadError>,
    },
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ReadError::Truncated,
            _ => ReadError::Io(e),
        }
    }
}

/// A list of indices that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{item}' in '{list}' is not an index")]
pub struct IndexError {
    /// The item that is not a number.
    pub item: String,
    /// The whole list.
    pub list: String,
}

/// Bytes of a chunk's elements written to or read from the socket at a time: each step is checksummed right
/// before the kernel copies it out (sender) or right after the kernel copied it in (receiver), while it is in
/// the CPU's cache.
const STEP: usize = 256 << 10;

/// Reads `n` frames of an upgraded fetch answer (as [`write_frames`] sends them) and decodes them: a chunk's
/// elements are read into the new chunk itself, checksummed piece by piece. Returns the values and the bytes
/// read.
///
/// # Errors
/// When the connection fails or ends early, or a frame is invalid (header, checksum, length prefix).
pub async fn read_frames<R>(r: &mut R, n: usize) -> Result<(Vec<Data>, u64), ReadError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut out = Vec::with_capacity(n.min(1024));
    let mut bytes = 0;
    for i in 0..n {
        let frame = read_frame(r).await.map_err(|e| ReadError::InFrame {
            index: i + 1,
            count: n,
            source: Box::new(e),
        })?;
        bytes += frame.1;
        out.push(frame.0);
    }
    Ok((out, bytes))
}

/// The bytes of a length prefix, checked before anything is read or sized from it: at most a frame of the
/// longest header, the largest payload and the checksum.
fn frame_length(prefix: [u8; 8]) -> Result<usize, ReadError> {
    use arrayjob_engine::frame::{MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES};
    let len = u64::from_le_bytes(prefix);
    let most = MAX_PAYLOAD_BYTES + MAX_HEADER_BYTES as u64 + 4;
    if len > most {
        return Err(ReadError::TooLong { len, most });
    }
    usize::try_from(len).map_err(|_| ReadError::Unaddressable(len))
}

/// Checks a frame's length prefix against its header.
fn check_length(len: usize, h: &arrayjob_engine::frame::FrameHeader) -> Result<(), ReadError> {
    if h.frame_len() != len {
        return Err(ReadError::LengthMismatch {
            len,
            header: h.frame_len(),
        });
    }
    Ok(())
}

/// One frame of [`read_frames`], with the bytes it took.
async fn read_frame<R>(r: &mut R) -> Result<(Data, u64), ReadError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use arrayjob_engine::frame::{FrameError, PayloadFill, parse_header};
    use tokio::io::AsyncReadExt;
    let mut prefix = [0u8; 8];
    r.read_exact(&mut prefix).await?;
    let len = frame_length(prefix)?;
    // The header's fixed part says how many dimensions follow (at most `MAX_DIMS`, checked before reading
    // them), then the shape and payload length.
    let mut header = vec![0u8; 8];
    r.read_exact(&mut header).await?;
    match parse_header(&header) {
        Err(FrameError::Truncated(_)) => {}
        Err(e) => return Err(e.into()),
        Ok(_) => return Err(ReadError::NoPayloadLength),
    }
    header.resize(8 + 8 * usize::from(header[6]) + 8, 0);
    r.read_exact(&mut header[8..]).await?;
    let h = parse_header(&header)?;
    check_length(len, &h)?;
    let Some(mut fill) = PayloadFill::new(&h) else {
        // A reduction partial: decoded whole, read as it comes rather than allocated from the header.
        let mut frame = header;
        // `len` is the header's frame length (checked above), so at least the header's.
        (&mut *r)
            .take((len - h.header_len) as u64)
            .read_to_end(&mut frame)
            .await?;
        if frame.len() != len {
            return Err(ReadError::Truncated);
        }
        let d = arrayjob_engine::frame::decode(&frame)?;
        return Ok((d, 8 + len as u64));
    };
    let mut crc = crc32c::crc32c(&header);
    while fill.remaining() > 0 {
        let room = fill.room();
        let n = room.len().min(STEP);
        let piece = &mut room[..n];
        let got = r.read(piece).await?;
        if got == 0 {
            return Err(ReadError::Truncated);
        }
        crc = crc32c::crc32c_append(crc, &piece[..got]);
        fill.advance(got);
    }
    let mut stored = [0u8; 4];
    r.read_exact(&mut stored).await?;
    let stored = u32::from_le_bytes(stored);
    if stored != crc {
        return Err(ReadError::Checksum {
            stored,
            computed: crc,
        });
    }
    let chunk = fill.finish()?;
    Ok((Data::Chunk(chunk), 8 + len as u64))
}

/// Decodes a fetch answer as its pieces arrive (length-prefixed frames, split anywhere): a chunk's elements
/// are copied once, from the network buffer straight into the chunk, with the checksum computed on the way;
/// reduction partials (small) are decoded whole. Every length and header is checked before it sizes anything
/// (see [`arrayjob_engine::frame`]), and with [`FrameReader::expecting`] a frame past the count is refused, so
/// an answer that does not end holds at most the frames asked for.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Bytes not consumed yet: a length prefix and header, a whole partial, or a chunk's checksum.
    pending: Vec<u8>,
    stage: Stage,
    done: Vec<Data>,
    /// Most frames accepted (`None`: any number).
    expected: Option<usize>,
}

#[derive(Debug, Default)]
enum Stage {
    /// Reading length prefixes and headers.
    #[default]
    Head,
    /// Copying a chunk's payload into it.
    Payload(Filling),
    /// Waiting for the 4 bytes of a filled chunk's checksum.
    Checksum(Filling),
}

#[derive(Debug)]
struct Filling {
    fill: arrayjob_engine::frame::PayloadFill,
    crc: u32,
}

impl FrameReader {
    /// A reader of an answer holding `n` frames: one more is an error.
    pub fn expecting(n: usize) -> FrameReader {
        FrameReader {
            expected: Some(n),
            ..FrameReader::default()
        }
    }

    /// Takes the next piece of the answer.
    ///
    /// # Errors
    /// When a frame is invalid (header, checksum, a length past the limits), its length prefix disagrees with
    /// its header, or it is one more than expected.
    pub fn push(&mut self, piece: &[u8]) -> Result<(), ReadError> {
        let mut input = std::borrow::Cow::Borrowed(piece);
        let mut at = 0;
        while at < input.len() {
            match std::mem::take(&mut self.stage) {
                Stage::Payload(mut f) => {
                    let room = f.fill.room();
                    let n = room.len().min(input.len() - at);
                    let part = &input[at..at + n];
                    room[..n].copy_from_slice(part);
                    f.crc = crc32c::crc32c_append(f.crc, part);
                    f.fill.advance(n);
                    at += n;
                    self.stage = if f.fill.remaining() == 0 {
                        Stage::Checksum(f)
                    } else {
                        Stage::Payload(f)
                    };
                }
                Stage::Checksum(f) => {
                    let n = (4 - self.pending.len()).min(input.len() - at);
                    self.pending.extend_from_slice(&input[at..at + n]);
                    at += n;
                    self.check_chunk(f)?;
                }
                Stage::Head => {
                    self.pending.extend_from_slice(&input[at..]);
                    at = input.len();
                    if let Some(rest) = self.read_heads()? {
                        input = std::borrow::Cow::Owned(rest);
                        at = 0;
                    }
                }
            }
        }
        Ok(())
    }

    /// With the checksum's 4 bytes in `pending`, checks a filled chunk and keeps it; else waits for them.
    fn check_chunk(&mut self, f: Filling) -> Result<(), ReadError> {
        let Some(stored) = self
            .pending
            .first_chunk::<4>()
            .map(|b| u32::from_le_bytes(*b))
        else {
            self.stage = Stage::Checksum(f);
            return Ok(());
        };
        self.pending.clear();
        if stored != f.crc {
            return Err(ReadError::Checksum {
                stored,
                computed: f.crc,
            });
        }
        let chunk = f.fill.finish()?;
        self.done.push(Data::Chunk(chunk));
        Ok(())
    }

    /// Refuses a frame past the expected count.
    fn check_count(&self) -> Result<(), ReadError> {
        match self.expected {
            Some(n) if self.done.len() >= n => Err(ReadError::TooMany(n)),
            _ => Ok(()),
        }
    }

    /// Decodes the partials at the start of `pending`; at a chunk's header, starts filling the chunk and
    /// returns the bytes after the header (to copy into it). None: more bytes are needed.
    fn read_heads(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        loop {
            let Some((len, rest)) = self.pending.split_first_chunk::<8>() else {
                return Ok(None);
            };
            self.check_count()?;
            let len = frame_length(*len)?;
            let h = match arrayjob_engine::frame::parse_header(rest) {
                Err(arrayjob_engine::frame::FrameError::Truncated(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
                Ok(h) => h,
            };
            check_length(len, &h)?;
            let Some(fill) = arrayjob_engine::frame::PayloadFill::new(&h) else {
                // A reduction partial: decoded whole, once all its bytes are in (they arrive as pieces of at
                // most the frame's checked length).
                if rest.len() < len {
                    return Ok(None);
                }
                let d = arrayjob_engine::frame::decode(&rest[..len])?;
                self.done.push(d);
                self.pending.drain(..8 + len);
                continue;
            };
            let crc = crc32c::crc32c(&rest[..h.header_len]);
            let after = self.pending.split_off(8 + h.header_len);
            self.pending.clear();
            let f = Filling { fill, crc };
            self.stage = if f.fill.remaining() == 0 {
                Stage::Checksum(f)
            } else {
                Stage::Payload(f)
            };
            return Ok(Some(after));
        }
    }

    /// The values decoded, in order.
    ///
    /// # Errors
    /// When the answer ended inside a frame.
    pub fn finish(self) -> Result<Vec<Data>, ReadError> {
        if !self.pending.is_empty() || !matches!(self.stage, Stage::Head) {
            return Err(ReadError::Truncated);
        }
        Ok(self.done)
    }
}

/// Parses a comma-separated index list (`"0,40,80"`).
///
/// # Errors
/// When an item is not a number.
pub fn parse_index(s: &str) -> Result<Vec<usize>, IndexError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|v| {
            v.parse().map_err(|_| IndexError {
                item: v.to_owned(),
                list: s.to_owned(),
            })
        })
        .collect()
}

/// Formats an index list for [`parse_index`].
pub fn format_index(idx: &[usize]) -> String {
    idx.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_reader_decodes_answers_split_anywhere_and_refuses_corruption() {
        use arrayjob_engine::array::Chunk;
        use arrayjob_engine::kernels::reduce;
        use arrayjob_engine::spec::ReduceKind;
        let a = Data::Chunk(Chunk::F32(ndarray::ArrayD::from_shape_fn(
            ndarray::IxDyn(&[3, 5, 7]),
            |ix| (ix[0] * 100 + ix[1] * 10 + ix[2]) as f32,
        )));
        let b = Data::Chunk(Chunk::U8(ndarray::ArrayD::from_elem(
            ndarray::IxDyn(&[0, 4]),
            1,
        )));
        let src = Chunk::U16(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[2, 3]), 9));
        let p = Data::Partial(reduce::partial(&src, &[0], ReduceKind::Mean).expect("partial"));
        let want = vec![a, p, b.clone(), b];
        let mut body = Vec::new();
        for d in &want {
            for part in answer_parts(&Arc::new(d.clone())) {
                body.extend_from_slice(&part);
            }
        }
        for step in [1, 3, 7, 64, body.len()] {
            let mut r = FrameReader::default();
            for piece in body.chunks(step) {
                r.push(piece).expect("push");
            }
            assert_eq!(r.finish().expect("finish"), want, "pieces of {step} bytes");
        }
        let mut short = FrameReader::default();
        short.push(&body[..body.len() - 2]).expect("push");
        assert!(
            short
                .finish()
                .expect_err("cut")
                .to_string()
                .contains("ended inside a frame")
        );
        let mut bad = body.clone();
        bad[8 + 40] ^= 1;
        let mut r = FrameReader::default();
        let err = r.push(&bad).expect_err("corrupt").to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
    }

    /// A chunk of every type, a partial and an empty chunk, with the frames a fetch answer holds for them.
    fn values_and_answer() -> (Vec<Data>, Vec<u8>) {
        use arrayjob_engine::array::Chunk;
        use arrayjob_engine::kernels::reduce;
        use arrayjob_engine::spec::ReduceKind;
        let big = Data::Chunk(Chunk::F32(ndarray::ArrayD::from_shape_fn(
            ndarray::IxDyn(&[300, 1000]),
            |ix| (ix[0] * 1000 + ix[1]) as f32,
        )));
        let src = Chunk::U16(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[2, 3]), 9));
        let p = Data::Partial(reduce::partial(&src, &[0], ReduceKind::Mean).expect("partial"));
        let values = vec![
            big,
            p,
            Data::Chunk(Chunk::U8(ndarray::ArrayD::from_elem(
                ndarray::IxDyn(&[0, 4]),
                1,
            ))),
            Data::Chunk(Chunk::F64(ndarray::ArrayD::from_elem(
                ndarray::IxDyn(&[3]),
                0.5,
            ))),
        ];
        let mut answer = Vec::new();
        for d in &values {
            for part in answer_parts(&Arc::new(d.clone())) {
                answer.extend_from_slice(&part);
            }
        }
        (values, answer)
    }

    #[test]
    fn frames_on_a_bare_connection_are_those_of_a_fetch_body_and_are_checked() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (values, answer) = values_and_answer();
        let shared: Vec<Arc<Data>> = values.iter().cloned().map(Arc::new).collect();
        let mut written = Vec::new();
        let sent = rt
            .block_on(write_frames(&mut written, &shared))
            .expect("write");
        assert_eq!(written, answer, "the same bytes as a /v1/fetch body");
        assert_eq!(sent, answer.len() as u64);
        let (got, read) = rt
            .block_on(read_frames(&mut answer.as_slice(), values.len()))
            .expect("read");
        assert_eq!(got, values);
        assert_eq!(read, sent);
        // A flipped bit in the big chunk's elements, a cut answer, a length prefix that lies.
        let mut bad = answer.clone();
        bad[8 + 40 + 500_000] ^= 1;
        let err = rt
            .block_on(read_frames(&mut bad.as_slice(), values.len()))
            .expect_err("corrupt")
            .to_string();
        assert!(
            err.contains("frame 1 of 4: chunk frame checksum mismatch"),
            "{err}"
        );
        let err = rt
            .block_on(read_frames(&mut &answer[..answer.len() - 2], values.len()))
            .expect_err("cut")
            .to_string();
        assert!(
            err.contains("frame 4 of 4: the fetch answer ended inside a frame"),
            "{err}"
        );
        let mut lying = answer.clone();
        lying[0] ^= 1;
        let err = rt
            .block_on(read_frames(&mut lying.as_slice(), values.len()))
            .expect_err("prefix")
            .to_string();
        assert!(err.contains("has the header of a"), "{err}");
        let mut magic = answer;
        magic[8] = b'X';
        let err = rt
            .block_on(read_frames(&mut magic.as_slice(), values.len()))
            .expect_err("magic")
            .to_string();
        assert!(err.contains("bad magic"), "{err}");
    }

    #[test]
    fn index_lists_round_trip() {
        assert_eq!(parse_index(&format_index(&[0, 40, 7])), Ok(vec![0, 40, 7]));
        assert_eq!(parse_index(""), Ok(vec![]));
        assert!(
            parse_index("1,x")
                .expect_err("bad")
                .to_string()
                .contains("'x'")
        );
    }
}
