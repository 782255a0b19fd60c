//! Where a run's finished blocks go.
//!
//! [`BlockOutputs`] is what every sink shares: per node of the plan, its Zarr array (written by whoever holds
//! the block) and whether its small outputs (images, plots, CSVs) gather its whole result or pixel series.
//! [`Outputs`] is a run's sink in its staging directory: it gathers into memory and writes the small outputs
//! when the run ends. The distributed worker's sink writes the same Zarr arrays and sends what is gathered to
//! the coordinator, whose [`Outputs`] takes it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::array::Chunk;
use crate::error::{RunError, io_err};
use crate::exec::{ChunkSink, ExecError};
use crate::job::Prepared;
use crate::output::OutputError;
use crate::output::commit::Fingerprint;
use crate::output::plot::PlotSpec;
use crate::output::zarr::{ArrayPlace, ZarrOptions, ZarrWriter};
use crate::plan::Plan;
use crate::s3::spill::Scratch;

/// One output file of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputRecord {
    /// Stage that produced it.
    pub stage: String,
    /// `zarr`, `image`, `montage`, `plot` or `csv`.
    pub kind: String,
    /// Path relative to the output directory.
    pub path: String,
    /// What it holds (names and sizes), so that a later run can tell it is as this run wrote it before it
    /// removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
}

/// Per node of a plan, what its finished blocks feed: its Zarr array, and which of its blocks the small outputs
/// gather ([`Gather`]).
pub struct BlockOutputs {
    stages: Vec<String>,
    zarr: Vec<Option<ZarrWriter>>,
    dense: Vec<bool>,
    pixels: Vec<Option<Vec<[usize; 2]>>>,
}

impl std::fmt::Debug for BlockOutputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockOutputs")
            .field("stages", &self.stages)
            .field("dense", &self.dense)
            .field("pixels", &self.pixels)
            .finish_non_exhaustive()
    }
}

/// Where a sink's gathered blocks go: a run's in-memory assemblies ([`Outputs`]), or the coordinator.
pub trait Gather {
    /// Takes the block of `node` at `start`, for a node whose small outputs need its whole result.
    ///
    /// # Errors
    /// When the block cannot be taken (it does not fit, or cannot be sent).
    fn gather_dense(&self, node: usize, start: &[usize], chunk: &Chunk) -> Result<(), ExecError>;

    /// Takes `values` of plotted pixel `k` of `node`, from index `t0` along axis 0.
    ///
    /// # Errors
    /// When the series cannot be taken.
    fn gather_series(
        &self,
        node: usize,
        k: usize,
        t0: usize,
        values: Vec<f64>,
    ) -> Result<(), ExecError>;
}

impl BlockOutputs {
    /// Creates the Zarr arrays of every node of `job`'s plan (with their `zarr.json`) under `root`; returns
    /// them with a record per array.
    ///
    /// # Errors
    /// When an array cannot be created.
    pub fn create(
        job: &Prepared,
        root: &ArrayPlace,
    ) -> Result<(BlockOutputs, Vec<OutputRecord>), OutputError> {
        let mut zarr = Vec::new();
        let mut records = Vec::new();
        for n in &job.plan.nodes {
            let Some((o, z)) = n
                .output
                .as_ref()
                .and_then(|o| o.zarr.as_ref().map(|z| (o, z)))
            else {
                zarr.push(None);
                continue;
            };
            let mut attrs = serde_json::Map::new();
            attrs.insert(
                "arrayjob".into(),
                serde_json::json!({"job": job.manifest.metadata.name, "stage": n.name}),
            );
            zarr.push(Some(ZarrWriter::create_with(
                &root.join(z),
                &n.meta,
                &zarr_options(n, o),
                attrs,
            )?));
            records.push(OutputRecord {
                stage: n.name.clone(),
                kind: "zarr".into(),
                path: z.clone(),
                fingerprint: None,
            });
        }
        Ok((BlockOutputs::of(&job.plan, zarr), records))
    }

    /// Opens the Zarr arrays of every node of `job`'s plan, made under `root` by [`BlockOutputs::create`]
    /// (a distributed worker writing into the arrays its coordinator created).
    ///
    /// # Errors
    /// When an array cannot be opened.
    pub fn open(job: &Prepared, root: &ArrayPlace) -> Result<BlockOutputs, OutputError> {
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
                    &zarr_options(n, o),
                )?),
                None => None,
            };
            zarr.push(z);
        }
        Ok(BlockOutputs::of(&job.plan, zarr))
    }

    fn of(plan: &Plan, zarr: Vec<Option<ZarrWriter>>) -> BlockOutputs {
        BlockOutputs {
            stages: plan.nodes.iter().map(|n| n.name.clone()).collect(),
            zarr,
            dense: plan.nodes.iter().map(dense_output).collect(),
            pixels: plan.nodes.iter().map(plotted_pixels).collect(),
        }
    }

    /// The stage name of `node`.
    pub fn stage(&self, node: usize) -> &str {
        self.stages.get(node).map_or("", String::as_str)
    }

    /// Whether `node` assembles its whole result (images, CSVs, plots of 1-D results).
    pub fn dense(&self, node: usize) -> bool {
        self.dense.get(node).copied().unwrap_or(false)
    }

    /// The plotted pixels of `node`, if it plots pixel series of a 3-D result.
    pub fn pixels(&self, node: usize) -> Option<&[[usize; 2]]> {
        self.pixels.get(node)?.as_deref()
    }

    /// The shape of the inner chunks `node`'s blocks may be delivered as ([`ChunkSink::tile_shape`]): its
    /// Zarr array's, when it is sharded and nothing gathers the node's blocks.
    pub fn tile_shape(&self, node: usize) -> Option<Vec<usize>> {
        if self.dense(node) || self.pixels(node).is_some() {
            return None;
        }
        self.zarr
            .get(node)?
            .as_ref()?
            .tile_shape()
            .map(<[usize]>::to_vec)
    }

    /// Writes the block of `node` at `start`, given as its inner chunks, into its Zarr array.
    ///
    /// # Errors
    /// When the node has no sharded Zarr array, or the write fails.
    pub fn deliver_tiles(
        &self,
        node: usize,
        start: &[usize],
        tiles: &[Chunk],
    ) -> Result<(), ExecError> {
        match self.zarr.get(node).and_then(Option::as_ref) {
            Some(z) => write_zarr_tiles(z, self.stage(node), start, tiles),
            None => Err(ExecError::Internal(format!(
                "node {node} has no sharded Zarr output to take pieces"
            ))),
        }
    }

    /// Writes the block of `node` at `start` into its Zarr array (if any), and hands what the small outputs
    /// gather of it to `to`.
    ///
    /// # Errors
    /// The first write or gather that fails.
    pub fn deliver(
        &self,
        node: usize,
        start: &[usize],
        chunk: &Chunk,
        to: &dyn Gather,
    ) -> Result<(), ExecError> {
        if let Some(z) = self.zarr.get(node).and_then(Option::as_ref) {
            write_zarr_block(z, self.stage(node), start, chunk)?;
        }
        self.gather(node, start, chunk, to)
    }

    /// Hands what the small outputs gather of the block of `node` at `start` to `to` (not the Zarr array).
    ///
    /// # Errors
    /// The first gather that fails.
    pub fn gather(
        &self,
        node: usize,
        start: &[usize],
        chunk: &Chunk,
        to: &dyn Gather,
    ) -> Result<(), ExecError> {
        if self.dense(node) {
            to.gather_dense(node, start, chunk)?;
        }
        if let Some(pixels) = self.pixels(node) {
            for (k, t0, values) in series_in_block(pixels, start, chunk) {
                to.gather_series(node, k, t0, values)?;
            }
        }
        Ok(())
    }

    /// Marks of the Zarr writes submitted so far, one per node.
    pub fn write_marks(&self) -> Vec<u64> {
        self.zarr
            .iter()
            .map(|z| z.as_ref().map_or(0, ZarrWriter::write_mark))
            .collect()
    }

    /// Waits until the writes before `marks` are in their files.
    ///
    /// # Errors
    /// [`ExecError::Output`] naming the stage whose write failed.
    pub fn wait_written(&self, marks: &[u64]) -> Result<(), ExecError> {
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

    /// Waits for the Zarr writes of `node` and closes its array.
    ///
    /// # Errors
    /// When a write failed.
    pub fn finish_node(&mut self, node: usize) -> Result<(), OutputError> {
        match self.zarr.get_mut(node).and_then(Option::take) {
            Some(z) => z.finish(),
            None => Ok(()),
        }
    }
}

/// `[row, col]` pixels' values along axis 0, one series per plotted pixel.
type PixelSeries = Mutex<Vec<Vec<f64>>>;

/// The outputs of a run being written in its staging directory: Zarr arrays written chunk by chunk as blocks
/// arrive, and the small outputs (images, plots, CSVs) assembled in memory and written by
/// [`Outputs::finish`].
pub struct Outputs {
    blocks: BlockOutputs,
    /// Per node, the whole result as f64, for images, plots and CSVs of small results.
    dense: Vec<Option<Mutex<Chunk>>>,
    /// Per node, the series of its plotted pixels, for plots of 3-D results.
    series: Vec<Option<PixelSeries>>,
    records: Vec<OutputRecord>,
    /// Where the small outputs are written.
    staging: PathBuf,
    /// Where the Zarr arrays are: `staging`, or the run's staging prefix on S3.
    zarr_root: ArrayPlace,
    /// The run's scratch prefix on S3 (with `spec.storage.s3`).
    scratch: Option<Scratch>,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outputs")
            .field("staging", &self.staging)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl ChunkSink for Outputs {
    fn deliver(&self, node: usize, start: &[usize], chunk: &Chunk) -> Result<(), ExecError> {
        self.blocks.deliver(node, start, chunk, self)
    }

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
}

impl Gather for Outputs {
    fn gather_dense(&self, node: usize, start: &[usize], chunk: &Chunk) -> Result<(), ExecError> {
        self.deliver_dense(node, start, chunk)
    }

    fn gather_series(
        &self,
        node: usize,
        k: usize,
        t0: usize,
        values: Vec<f64>,
    ) -> Result<(), ExecError> {
        self.deliver_series(node, k, t0, &values)
    }
}

/// The index in `z`'s write grid of the unit whose first element is at `start`.
fn unit_index(z: &ZarrWriter, start: &[usize]) -> Vec<usize> {
    start
        .iter()
        .zip(z.write_unit())
        .map(|(s, u)| s / u)
        .collect()
}

/// Writes the block of a node at `start` (one shard of `z`), given as its inner chunks, into its Zarr array.
///
/// # Errors
/// [`ExecError::Output`] naming the stage.
pub fn write_zarr_tiles(
    z: &ZarrWriter,
    stage: &str,
    start: &[usize],
    tiles: &[Chunk],
) -> Result<(), ExecError> {
    z.write_tiles(&unit_index(z, start), tiles)
        .map_err(|e| ExecError::Output {
            stage: stage.to_string(),
            target: "zarr".into(),
            message: e.to_string(),
        })
}

/// Writes the block of a node at `start` (one unit of `z`'s write grid) into its Zarr array.
///
/// # Errors
/// [`ExecError::Output`] naming the stage.
pub fn write_zarr_block(
    z: &ZarrWriter,
    stage: &str,
    start: &[usize],
    chunk: &Chunk,
) -> Result<(), ExecError> {
    z.write_chunk(&unit_index(z, start), chunk)
        .map_err(|e| ExecError::Output {
            stage: stage.to_string(),
            target: "zarr".into(),
            message: e.to_string(),
        })
}

impl Outputs {
    /// Creates the outputs of every node of `job`'s plan: Zarr arrays (with their `zarr.json`) under
    /// `zarr_root`, and the in-memory assemblies of the small outputs, written into `staging` by
    /// [`Outputs::finish`].
    ///
    /// # Errors
    /// When an array cannot be created.
    pub fn create(
        job: &Prepared,
        zarr_root: ArrayPlace,
        staging: &Path,
        scratch: Option<Scratch>,
    ) -> Result<Outputs, RunError> {
        let (blocks, records) = BlockOutputs::create(job, &zarr_root)?;
        let nodes = &job.plan.nodes;
        let dense = nodes
            .iter()
            .map(|n| {
                dense_output(n)
                    .then(|| Mutex::new(Chunk::zeros(crate::array::DType::Float64, &n.meta.shape)))
            })
            .collect();
        let series = nodes
            .iter()
            .map(|n| {
                plotted_pixels(n)
                    .map(|pixels| Mutex::new(vec![vec![f64::NAN; n.meta.shape[0]]; pixels.len()]))
            })
            .collect();
        Ok(Outputs {
            blocks,
            dense,
            series,
            records,
            staging: staging.to_path_buf(),
            zarr_root,
            scratch,
        })
    }

    /// Takes a block of `node` into the small outputs assembled in memory (not the Zarr array).
    ///
    /// # Errors
    /// When the block does not fit the node's shape.
    pub fn deliver_gathered(
        &self,
        node: usize,
        start: &[usize],
        chunk: &Chunk,
    ) -> Result<(), ExecError> {
        self.blocks.gather(node, start, chunk, self)
    }

    /// Whether `node` assembles its whole result in memory (images, CSVs, plots of 1-D results).
    pub fn wants_dense(&self, node: usize) -> bool {
        self.blocks.dense(node)
    }

    /// Pastes a block of `node` at `start` into its in-memory result.
    ///
    /// # Errors
    /// When the block does not fit the node's shape.
    pub fn deliver_dense(
        &self,
        node: usize,
        start: &[usize],
        chunk: &Chunk,
    ) -> Result<(), ExecError> {
        let Some(d) = self.dense.get(node).and_then(Option::as_ref) else {
            return Ok(());
        };
        let mut full = d.lock().unwrap_or_else(|e| e.into_inner());
        full.paste(start, &Chunk::F64(chunk.to_f64()))
            .map_err(|m| ExecError::Output {
                stage: self.blocks.stage(node).to_owned(),
                target: "assembly".into(),
                message: m,
            })
    }

    /// Stores `values` of plotted pixel `k` of `node`, from index `t0` along axis 0.
    ///
    /// # Errors
    /// When the pixel or the range is outside the node's result.
    pub fn deliver_series(
        &self,
        node: usize,
        k: usize,
        t0: usize,
        values: &[f64],
    ) -> Result<(), ExecError> {
        let Some(series) = self.series.get(node).and_then(Option::as_ref) else {
            return Ok(());
        };
        let mut out = series.lock().unwrap_or_else(|e| e.into_inner());
        match out
            .get_mut(k)
            .and_then(|v| v.get_mut(t0..t0 + values.len()))
        {
            Some(slot) => {
                slot.copy_from_slice(values);
                Ok(())
            }
            None => Err(ExecError::Output {
                stage: self.blocks.stage(node).to_owned(),
                target: "plot".into(),
                message: format!(
                    "series of pixel {k} from {t0} ({} values) is outside the result",
                    values.len()
                ),
            }),
        }
    }

    /// The run's scratch prefix on S3, when the job has `spec.storage.s3`.
    pub fn scratch(&self) -> Option<&Scratch> {
        self.scratch.as_ref()
    }

    /// Where the Zarr arrays are written (workers open them there).
    pub fn zarr_root(&self) -> &ArrayPlace {
        &self.zarr_root
    }

    /// Waits for the Zarr writes and writes the small outputs, once every block has arrived; returns every
    /// output file, and the number of every stage with a `value` output.
    ///
    /// # Errors
    /// The first output that cannot be written.
    pub fn finish(self, plan: &Plan) -> Result<(Vec<OutputRecord>, StageValues), RunError> {
        let Outputs {
            mut blocks,
            dense,
            series,
            mut records,
            staging,
            ..
        } = self;
        let mut values = Vec::new();
        let gathered = dense.into_iter().zip(series);
        for (node, (n, (dense, series))) in plan.nodes.iter().zip(gathered).enumerate() {
            let Some(o) = &n.output else {
                continue;
            };
            blocks.finish_node(node)?;
            let dense = dense.map(|d| d.into_inner().unwrap_or_else(|e| e.into_inner()).to_f64());
            if let (Some(f), Some(d)) = (&o.image, &dense) {
                let d2 = d
                    .view()
                    .into_dimensionality::<ndarray::Ix2>()
                    .map_err(|e| OutputError::invalid(Path::new(f), "data", e.to_string()))?;
                crate::output::image::write_image_png(&staging_file(&staging, f)?, d2)?;
                records.push(OutputRecord {
                    stage: n.name.clone(),
                    kind: "image".into(),
                    path: f.clone(),
                    fingerprint: None,
                });
            }
            if let (Some(m), Some(d)) = (&o.montage, &dense) {
                records.push(write_montage(plan, node, m, d, &staging)?);
            }
            if let (Some(true), Some(d)) = (o.value, &dense)
                && let Some(v) = d.iter().next()
            {
                values.push((n.name.clone(), *v));
            }
            if let (Some(f), Some(d)) = (&o.csv, &dense) {
                crate::output::csv::write_csv(&staging_file(&staging, f)?, d.view())?;
                records.push(OutputRecord {
                    stage: n.name.clone(),
                    kind: "csv".into(),
                    path: f.clone(),
                    fingerprint: None,
                });
            }
            if let Some(p) = &o.plot
                && let Some(spec) = plot_spec(
                    n,
                    p,
                    blocks.pixels(node).zip(series.as_ref()),
                    dense.as_ref(),
                )
            {
                crate::output::plot::write_plot_png(&staging_file(&staging, &p.file)?, &spec)?;
                records.push(OutputRecord {
                    stage: n.name.clone(),
                    kind: "plot".into(),
                    path: p.file.clone(),
                    fingerprint: None,
                });
            }
        }
        Ok((records, values))
    }
}

/// The stage name and number of every `value` output.
pub type StageValues = Vec<(String, f64)>;

/// Writes the montage output `m` of node `node` (whole result `d`), labelled with the source's indices along axis
/// 0 when they are known, else the positions.
fn write_montage(
    plan: &Plan,
    node: usize,
    m: &crate::spec::MontageOutput,
    d: &ndarray::ArrayD<f64>,
    staging: &Path,
) -> Result<OutputRecord, RunError> {
    let d3 = d
        .view()
        .into_dimensionality::<ndarray::Ix3>()
        .map_err(|e| OutputError::invalid(Path::new(&m.file), "data", e.to_string()))?;
    let labels = plan
        .source_indices(node)
        .unwrap_or_else(|| (0..d3.dim().0).collect());
    let columns = m.columns.unwrap_or(d3.dim().0);
    crate::output::montage::write_montage_png(
        &staging_file(staging, &m.file)?,
        d3,
        &labels,
        columns,
    )?;
    Ok(OutputRecord {
        stage: plan.nodes[node].name.clone(),
        kind: "montage".into(),
        path: m.file.clone(),
        fingerprint: None,
    })
}

/// What a plot output of node `n` draws: the chosen pixels' series, or the whole (1-D) result.
fn plot_spec(
    n: &crate::plan::Node,
    p: &crate::spec::PlotOutput,
    series: Option<(&[[usize; 2]], &PixelSeries)>,
    dense: Option<&ndarray::ArrayD<f64>>,
) -> Option<PlotSpec> {
    let (series, x_label) = match (series, dense) {
        (Some((pixels, vals)), _) => {
            let vals = vals.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let named = pixels
                .iter()
                .zip(vals)
                .map(|(px, v)| (format!("pixel ({}, {})", px[0], px[1]), v))
                .collect();
            (
                named,
                if matches!(n.op, crate::plan::NodeOp::Fft(_)) {
                    "frequency bin"
                } else {
                    "index along axis 0"
                },
            )
        }
        (None, Some(d)) => (vec![(n.name.clone(), d.iter().copied().collect())], "index"),
        (None, None) => return None,
    };
    Some(PlotSpec {
        title: p.title.clone().unwrap_or_else(|| n.name.clone()),
        x_label: x_label.to_string(),
        y_label: n.name.clone(),
        series,
        log_y: p.log_y,
    })
}

/// Layout and compression of node `n`'s Zarr output: sharded by the blocks the executor produces when they hold
/// several chunks, compressed as `zarrCompression` says.
pub fn zarr_options(n: &crate::plan::Node, o: &crate::spec::OutputSpec) -> ZarrOptions {
    use crate::spec::CompressionCodec;
    let default = ZarrOptions::default();
    ZarrOptions {
        shard: (n.block != n.meta.chunks).then(|| n.block.clone()),
        zstd_level: match &o.zarr_compression {
            None => default.zstd_level,
            Some(c) if c.codec == CompressionCodec::None => None,
            Some(c) => c.level.or(default.zstd_level),
        },
    }
}

/// Path of `rel` inside the staging directory, with its parent directories created.
fn staging_file(staging: &Path, rel: &str) -> Result<PathBuf, RunError> {
    let p = staging.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    Ok(p)
}

/// Whether node `node`'s outputs need its whole result in one place (an image, a CSV, a plot of a 1-D
/// result).
pub fn dense_output(node: &crate::plan::Node) -> bool {
    node.output.as_ref().is_some_and(|o| {
        o.image.is_some()
            || o.csv.is_some()
            || o.montage.is_some()
            || o.value == Some(true)
            || o.plot.as_ref().is_some_and(|p| p.pixels.is_none())
    })
}

/// The plotted pixels of node `node` (`[row, col]`), if it plots pixel series of a 3-D result.
pub fn plotted_pixels(node: &crate::plan::Node) -> Option<Vec<[usize; 2]>> {
    let px = node.output.as_ref()?.plot.as_ref()?.pixels.as_ref()?;
    Some(px.iter().map(|rc| [rc[0], rc[1]]).collect())
}

/// The parts of the series of `pixels` (`[row, col]`) inside a 3-D block at `start`: (pixel number, first
/// index along axis 0, values).
pub fn series_in_block(
    pixels: &[[usize; 2]],
    start: &[usize],
    chunk: &Chunk,
) -> Vec<(usize, usize, Vec<f64>)> {
    let shape = chunk.shape();
    if shape.len() != 3 || start.len() != 3 {
        return Vec::new();
    }
    let inside: Vec<(usize, [usize; 2])> = pixels
        .iter()
        .enumerate()
        .filter(|(_, [r, c])| {
            (start[1]..start[1] + shape[1]).contains(r)
                && (start[2]..start[2] + shape[2]).contains(c)
        })
        .map(|(k, &px)| (k, px))
        .collect();
    if inside.is_empty() {
        return Vec::new();
    }
    let vals = chunk.to_f64();
    inside
        .into_iter()
        .map(|(k, [r, c])| {
            let v = (0..shape[0])
                .map(|t| vals[[t, r - start[1], c - start[2]]])
                .collect();
            (k, start[0], v)
        })
        .collect()
}
