//! A job made ready to run: its manifest, its source opened and its plan built. Local and distributed runs
//! (the coordinator and every worker) start from one.

use std::path::Path;

use crate::error::RunError;
use crate::plan::Plan;
use crate::source::SliceSource;
use crate::spec::ArrayJobManifest;
use crate::validate::ValidatedSpec;

/// A job with its source opened and its plan built, ready to run.
#[derive(Debug)]
pub struct Prepared {
    /// The manifest.
    pub manifest: ArrayJobManifest,
    /// The opened source.
    pub source: Box<dyn SliceSource>,
    /// The plan.
    pub plan: Plan,
}

/// Opens the source of a validated manifest and builds the plan. `base_dir` resolves relative file paths
/// (the manifest's directory). The slice shape and type come from the spec when declared (so a plan can be
/// made offline; every slice read is checked against them), otherwise from reading slice 0.
///
/// # Errors
/// When the source cannot be opened or read, or the spec does not fit the data.
pub fn prepare(
    mut manifest: ArrayJobManifest,
    validated: &ValidatedSpec,
    base_dir: &Path,
) -> Result<Prepared, RunError> {
    let source = crate::source::open_job(&manifest.spec, base_dir)?;
    let per_chunk = &mut manifest.spec.source.slices_per_chunk;
    if per_chunk.is_none() {
        *per_chunk = source.chunk_depth();
    }
    let info = source.slice_info()?;
    let plan = Plan::build(&manifest.spec, validated, source.len(), info)?;
    Ok(Prepared {
        manifest,
        source,
        plan,
    })
}
