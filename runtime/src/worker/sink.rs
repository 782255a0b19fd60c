//! Where a worker's finished blocks go: Zarr chunks into the arrays the coordinator created (written here,
//! by the worker that made them); blocks of small outputs (images, plots, CSVs) to the coordinator.

use arrayjob_engine::array::Chunk;
use arrayjob_engine::data::Data;
use arrayjob_engine::exec::{ChunkSink, ExecError};
use arrayjob_engine::job::Prepared;
use arrayjob_engine::output::sink::{BlockOutputs, Gather};
use arrayjob_engine::output::zarr::ArrayPlace;
use arrayjob_engine::s3::objects::S3Location;

use super::error::WorkerError;
use super::join::Http;
use crate::protocol::{self, JobDescription};

/// Where the coordinator created the job's Zarr arrays: the shared staging directory, or the run's prefix on
/// S3 (reached with the job's own S3 settings).
pub(super) fn zarr_root(job: &Prepared, desc: &JobDescription) -> Result<ArrayPlace, WorkerError> {
    let Some(uri) = &desc.zarr_root else {
        return Ok(ArrayPlace::Dir(desc.staging_dir.clone().into()));
    };
    let location = S3Location::parse("zarrRoot", uri)?;
    let storage = job.manifest.spec.s3_storage();
    Ok(ArrayPlace::S3 {
        bucket: arrayjob_engine::s3::bucket(storage, &location.bucket)?,
        prefix: location.prefix,
    })
}

/// Where a worker's finished blocks go: Zarr chunks into the arrays the coordinator created (written here,
/// by the worker that made them, through the engine's [`BlockOutputs`], the same as a local run's); blocks of
/// small outputs (images, plots, CSVs) to the coordinator.
pub(super) struct WorkerSink {
    pub(super) blocks: BlockOutputs,
    pub(super) http: Http,
}

impl WorkerSink {
    /// Opens the job's Zarr arrays (created by the coordinator) for the stages that write one.
    pub(super) fn open(
        job: &Prepared,
        desc: &JobDescription,
        http: Http,
    ) -> Result<WorkerSink, WorkerError> {
        let root = zarr_root(job, desc)?;
        Ok(WorkerSink {
            blocks: BlockOutputs::open(job, &root)?,
            http,
        })
    }

    /// Marks of the Zarr writes submitted so far, one per node.
    pub(super) fn write_marks(&self) -> Vec<u64> {
        self.blocks.write_marks()
    }

    /// Waits until the writes before `marks` are in their files.
    pub(super) fn wait_written(&self, marks: &[u64]) -> Result<(), ExecError> {
        self.blocks.wait_written(marks)
    }

    /// Sends one block (or one pixel's series) to the coordinator.
    fn send(
        &self,
        node: usize,
        start: &[usize],
        pixel: Option<usize>,
        chunk: Chunk,
    ) -> Result<(), ExecError> {
        let frame = arrayjob_engine::frame::encode(&Data::Chunk(chunk));
        let mut url = format!(
            "{}/v1/gather?node={node}&start={}",
            self.http.coordinator,
            protocol::format_index(start)
        );
        if let Some(k) = pixel {
            url.push_str(&format!("&pixel={k}"));
        }
        let sent = self.http.rt.block_on(async {
            let r = self
                .http
                .send(self.http.client.post(url).body(frame))
                .await
                .map_err(|e| e.to_string())?;
            r.error_for_status().map(|_| ()).map_err(|e| e.to_string())
        });
        sent.map_err(|e| ExecError::Output {
            stage: self.blocks.stage(node).to_owned(),
            target: "coordinator".into(),
            message: format!("sending a block to the coordinator failed: {e}"),
        })
    }
}

impl Gather for WorkerSink {
    fn gather_dense(&self, node: usize, start: &[usize], chunk: &Chunk) -> Result<(), ExecError> {
        self.send(node, start, None, chunk.clone())
    }

    fn gather_series(
        &self,
        node: usize,
        k: usize,
        t0: usize,
        values: Vec<f64>,
    ) -> Result<(), ExecError> {
        let series = Chunk::F64(
            ndarray::ArrayD::from_shape_vec(vec![values.len()], values)
                .map_err(|e| ExecError::Internal(format!("pixel series: {e}")))?,
        );
        self.send(node, &[t0], Some(k), series)
    }
}

impl ChunkSink for WorkerSink {
    fn tile_shape(&self, node: usize) -> Option<Vec<usize>> {
        self.blocks.tile_shape(node)
    }

    fn deliver_tiles(
        &self,
        node: usize,
        start: &[usize],
        _shape: &[usize],
        tiles: &[Chunk],
    ) -> Result<(), ExecError> {
        self.blocks.deliver_tiles(node, start, tiles)
    }

    fn deliver(&self, node: usize, start: &[usize], block: &Chunk) -> Result<(), ExecError> {
        self.blocks.deliver(node, start, block, self)
    }
}
