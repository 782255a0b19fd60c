//! Where a worker's finished blocks go: Zarr chunks into the arrays the coordinator created (written here,
//! by the worker that made them); blocks of small outputs (images, plots, CSVs) to the coordinator.

use arrayjob_engine::array::Chunk;
use arrayjob_engine::data::Data;
use arrayjob_engine::exec::{ChunkSink, ExecError};
use arrayjob_engine::output::zarr::{ArrayPlace, ZarrWriter};
use arrayjob_engine::runner::{self, Prepared};
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
/// by the worker that made them); blocks of small outputs (images, plots, CSVs) to the coordinator.
pub(super) struct WorkerSink {
    pub(super) stages: Vec<String>,
    pub(super) zarr: Vec<Option<ZarrWriter>>,
    pub(super) dense: Vec<bool>,
    pub(super) pixels: Vec<Option<Vec<[usize; 2]>>>,
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
        let mut zarr = Vec::new();
        for n in &job.plan.nodes {
            let z = match n
                .output
                .as_ref()
                .and_then(|o| o.zarr.as_ref().map(|z| (o, z)))
            {
                Some((o, z)) => Some(ZarrWriter::open_existing(
                    &root.join(z),
                    &n.meta,
                    &runner::zarr_options(n, o),
                )?),
                None => None,
            };
            zarr.push(z);
        }
        Ok(WorkerSink {
            stages: job.plan.nodes.iter().map(|n| n.name.clone()).collect(),
            zarr,
            dense: job.plan.nodes.iter().map(runner::dense_output).collect(),
            pixels: job.plan.nodes.iter().map(runner::plotted_pixels).collect(),
            http,
        })
    }

    /// Marks of the Zarr writes submitted so far, one per node.
    pub(super) fn write_marks(&self) -> Vec<u64> {
        self.zarr
            .iter()
            .map(|z| z.as_ref().map_or(0, ZarrWriter::write_mark))
            .collect()
    }

    /// Waits until the writes before `marks` are in their files.
    pub(super) fn wait_written(&self, marks: &[u64]) -> Result<(), ExecError> {
        for ((z, &mark), stage) in self.zarr.iter().zip(marks).zip(&self.stages) {
            if let Some(z) = z
                && mark > 0
            {
                z.wait_written(mark).map_err(|e| ExecError::Output {
                    stage: stage.clone(),
                    target: "zarr".into(),
                    message: e.to_string(),
                })?;
            }
        }
        Ok(())
    }

    /// Sends one block (or one pixel's series) to the coordinator.
    pub(super) fn gather(
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
            stage: self.stages[node].clone(),
            target: "coordinator".into(),
            message: format!("sending a block to the coordinator failed: {e}"),
        })
    }
}

impl ChunkSink for WorkerSink {
    fn tile_shape(&self, node: usize) -> Option<Vec<usize>> {
        if self.dense[node] || self.pixels[node].is_some() {
            return None;
        }
        self.zarr[node]
            .as_ref()?
            .tile_shape()
            .map(<[usize]>::to_vec)
    }

    fn deliver_tiles(
        &self,
        node: usize,
        start: &[usize],
        _shape: &[usize],
        tiles: &[Chunk],
    ) -> Result<(), ExecError> {
        let Some(z) = &self.zarr[node] else {
            return Err(ExecError::Internal(format!(
                "node {node} has no sharded Zarr output to take pieces"
            )));
        };
        runner::write_zarr_tiles(z, &self.stages[node], start, tiles)
    }

    fn deliver(&self, node: usize, start: &[usize], block: &Chunk) -> Result<(), ExecError> {
        if let Some(z) = &self.zarr[node] {
            runner::write_zarr_block(z, &self.stages[node], start, block)?;
        }
        if self.dense[node] {
            self.gather(node, start, None, block.clone())?;
        }
        if let Some(px) = &self.pixels[node] {
            for (k, t0, values) in runner::series_in_block(px, start, block) {
                let series = Chunk::F64(
                    ndarray::ArrayD::from_shape_vec(vec![values.len()], values)
                        .map_err(|e| ExecError::Internal(format!("pixel series: {e}")))?,
                );
                self.gather(node, &[t0], Some(k), series)?;
            }
        }
        Ok(())
    }
}
