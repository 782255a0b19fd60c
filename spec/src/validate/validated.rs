//! What validation hands on: the stages in dependency order, each with its op resolved and its result's
//! shape ([`ValidatedSpec`]); and the same walk again once the source's real lengths are known
//! ([`ValidatedSpec::bind`]), which the planner turns into chunk grids and tasks.

use std::collections::{BTreeMap, HashMap};

use crate::spec::{ArrayJobSpec, SOURCE_INPUT};

use super::outputs::check_output;
use super::problem::{AxisChunks, Grid, Problem, ShapeInfo};
use super::stages::{ResolvedOp, stage_shape};

/// A spec that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedSpec {
    /// What the source's array is known to be.
    pub source: ShapeInfo,
    /// The stages, every input before its consumers.
    pub stages: Vec<ValidatedStage>,
}

/// One stage of a [`ValidatedSpec`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedStage {
    /// Its index in `spec.stages`.
    pub index: usize,
    /// The position in [`ValidatedSpec::stages`] of the stage it reads; `None` for the source.
    pub input: Option<usize>,
    /// Its op, resolved.
    pub op: ResolvedOp,
    /// Its result.
    pub shape: ShapeInfo,
}

impl ValidatedSpec {
    /// Indices into `spec.stages`, every input before its consumers.
    pub fn order(&self) -> Vec<usize> {
        self.stages.iter().map(|s| s.index).collect()
    }

    /// The same rules again with the source's real grid (`slices x height x width` in chunks of some slices,
    /// its element type): `spec` must be the spec this was validated from. The declared slice shape and type
    /// must match the data; every stage's lengths are then known, so its [`ShapeInfo::grid`] is its grid.
    ///
    /// # Errors
    /// Every problem the real lengths reveal (a window or a selected index past the real slice size, a plot
    /// pixel out of range, a declared shape or type the data contradicts), each with its field path.
    pub fn bind(&self, spec: &ArrayJobSpec, source: &Grid) -> Result<ValidatedSpec, Vec<Problem>> {
        let mut p = Vec::new();
        let [slices, height, width] = source.shape[..] else {
            return Err(vec![Problem {
                path: "spec.source".into(),
                message: format!(
                    "expected a 3-D array of slices, found shape {:?}",
                    source.shape
                ),
            }]);
        };
        if let Some(s) = &spec.source.slice_shape
            && s.as_slice() != [height, width]
        {
            p.push(Problem {
                path: "spec.source.sliceShape".into(),
                message: format!("declared {s:?}, but slice 0 is {height}x{width}"),
            });
        }
        if let Some(d) = spec.source.dtype
            && d != source.dtype
        {
            p.push(Problem {
                path: "spec.source.dtype".into(),
                message: format!("declared {d}, but slice 0 is {}", source.dtype),
            });
        }
        if slices == 0 {
            p.push(Problem {
                path: "spec.source".into(),
                message: "the source has no slices".into(),
            });
        }
        if !p.is_empty() {
            return Err(p);
        }
        let shape = ShapeInfo {
            dims: source.shape.iter().map(|&n| Some(n)).collect(),
            chunks: vec![
                AxisChunks::Len(source.chunks[0]),
                AxisChunks::Whole,
                AxisChunks::Whole,
            ],
            dtype: Some(source.dtype),
        };
        let stages = walk(spec, Some(&shape), &self.order(), &mut p);
        if p.is_empty() {
            Ok(ValidatedSpec {
                source: shape,
                stages,
            })
        } else {
            Err(p)
        }
    }
}

/// Checks the stages of `spec` in `order` from the `source`'s shape (stages whose input could not be shaped
/// are skipped: their input's problems are reported), with their outputs.
pub(super) fn walk(
    spec: &ArrayJobSpec,
    source: Option<&ShapeInfo>,
    order: &[usize],
    p: &mut Vec<Problem>,
) -> Vec<ValidatedStage> {
    let mut shapes: HashMap<&str, (Option<usize>, ShapeInfo)> = HashMap::new();
    if let Some(s) = source {
        shapes.insert(SOURCE_INPUT, (None, s.clone()));
    }
    let mut outputs_seen: BTreeMap<String, String> = BTreeMap::new();
    let mut stages = Vec::with_capacity(order.len());
    for &i in order {
        let st = &spec.stages[i];
        let at = format!("spec.stages[{i}]");
        let Some((input, input_shape)) = shapes.get(st.input.as_str()).cloned() else {
            continue;
        };
        let Some((op, shape)) = stage_shape(st, &at, &input_shape, p) else {
            continue;
        };
        if let Some(o) = &st.output {
            check_output(o, &at, &st.name, &shape, &mut outputs_seen, p);
        }
        shapes.insert(st.name.as_str(), (Some(stages.len()), shape.clone()));
        stages.push(ValidatedStage {
            index: i,
            input,
            op,
            shape,
        });
    }
    stages
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::validate::{parse_manifest, validate};

    /// A job over `source` with these `stages:` lines.
    fn spec(source: &str, stages: &str) -> ArrayJobSpec {
        parse_manifest(
            &format!(
                "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: t}}\nspec:\n  source: \
                 {source}\n  stages:\n{stages}"
            ),
            "t.yaml",
        )
        .expect("valid manifest")
        .spec
    }

    fn grid(slices: usize, per_chunk: usize, side: usize, dtype: DType) -> Grid {
        Grid {
            shape: vec![slices, side, side],
            chunks: vec![per_chunk, side, side],
            dtype,
        }
    }

    const STAGES: &str = "  - {name: r, input: source, recenter: {}}\n  \
        - {name: s, input: r, rechunk: {chunks: [-1, 7, 7]}}\n  \
        - {name: p, input: s, fft: {axis: 0}, output: {plot: {file: p.png, pixels: [[0, 0]]}}}\n  \
        - {name: pick, input: source, select: [{axis: 0, indices: [3, 9]}, {axis: 2, index: 5}]}\n  \
        - {name: m, input: pick, reduce: {op: max, axes: [0]}}\n";

    #[test]
    fn stages_carry_their_op_and_shape_as_far_as_the_spec_tells() {
        let s = spec("{zarr: {path: z.zarr}, slicesPerChunk: 4}", STAGES);
        let v = validate(&s).expect("valid");
        assert_eq!(v.order(), vec![0, 1, 2, 3, 4]);
        let by = |name: &str| {
            let st = v
                .stages
                .iter()
                .find(|st| s.stages[st.index].name == name)
                .expect("stage");
            (st.op.clone(), st.shape.clone())
        };
        // Nothing of a Zarr source is known before it is read: the window waits for the slice size.
        assert_eq!(by("r").0, ResolvedOp::Recenter([None, None]));
        assert_eq!(by("r").1.dims, vec![None, None, None]);
        assert_eq!(
            by("s").1.chunks,
            vec![AxisChunks::Whole, AxisChunks::Len(7), AxisChunks::Len(7)]
        );
        assert_eq!(by("p").1.dtype, Some(DType::Float32));
        assert_eq!(by("pick").1.dims, vec![Some(2), None]);
        assert_eq!(
            by("m").1.dtype,
            None,
            "max keeps the source's type, unknown yet"
        );
        assert_eq!(v.stages[4].input, Some(3), "m reads pick");
    }

    #[test]
    fn binding_to_the_data_gives_every_grid() {
        let s = spec("{zarr: {path: z.zarr}, slicesPerChunk: 4}", STAGES);
        let v = validate(&s).expect("valid");
        let b = v.bind(&s, &grid(10, 4, 40, DType::Uint16)).expect("fits");
        let grids: Vec<Grid> = b
            .stages
            .iter()
            .map(|st| st.shape.grid().expect("known"))
            .collect();
        let g = |shape: &[usize], chunks: &[usize], dtype| Grid {
            shape: shape.to_vec(),
            chunks: chunks.to_vec(),
            dtype,
        };
        assert_eq!(
            grids,
            vec![
                g(&[10, 20, 20], &[4, 20, 20], DType::Uint16),
                g(&[10, 20, 20], &[10, 7, 7], DType::Uint16),
                g(&[10, 20, 20], &[10, 7, 7], DType::Float32),
                // Indices 3 and 9 of chunks of 4: chunks of 2 (one chunk), axis 2 dropped.
                g(&[2, 40], &[2, 40], DType::Uint16),
                g(&[40], &[40], DType::Uint16),
            ]
        );
        assert_eq!(b.stages[0].op, ResolvedOp::Recenter([Some(20), Some(20)]));
        let ResolvedOp::Select(Some(r)) = &b.stages[3].op else {
            panic!("{:?}", b.stages[3].op)
        };
        assert_eq!(r.indices[0], vec![3, 9]);
    }

    #[test]
    fn binding_refuses_what_the_real_lengths_reveal_with_the_validation_messages() {
        let s = spec(
            "{zarr: {path: z.zarr}}",
            "  - {name: r, input: source, recenter: {window: [30, 30]}}\n  \
             - {name: pick, input: source, select: [{axis: 0, index: 12}]}\n  \
             - {name: c, input: source, recenter: {}}\n  \
             - {name: p, input: c, rechunk: {chunks: [-1, 1, 1]}, output: {plot: {file: p.png, pixels: [[19, 20]]}}}\n",
        );
        let v = validate(&s).expect("valid on its own");
        let problems = |s: &ArrayJobSpec, g: Grid| {
            v.bind(s, &g)
                .expect_err("refused")
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            problems(&s, grid(10, 10, 20, DType::Uint16)),
            vec![
                "spec.stages[0].recenter.window[0]: 30 rows do not fit in slices of 20 rows",
                "spec.stages[0].recenter.window[1]: 30 cols do not fit in slices of 20 cols",
                "spec.stages[1].select[0].index: index 12 out of range: the axis has length 10 (indices 0 to 9)",
                // The default window of 20x20 slices is 10x10.
                "spec.stages[3].output.plot.pixels[0][0]: 19 out of range: axis 1 of stage 'p' has length 10",
                "spec.stages[3].output.plot.pixels[0][1]: 20 out of range: axis 2 of stage 'p' has length 10",
            ]
        );
        assert_eq!(
            problems(&s, grid(20, 10, 40, DType::Uint16)),
            vec![
                "spec.stages[3].output.plot.pixels[0][1]: 20 out of range: axis 2 of stage 'p' has length 20"
            ]
        );
        let mut declared = s.clone();
        declared.source.slice_shape = Some(vec![40, 40]);
        declared.source.dtype = Some(DType::Uint16);
        assert_eq!(
            problems(&declared, grid(20, 10, 20, DType::Uint8)),
            vec![
                "spec.source.sliceShape: declared [40, 40], but slice 0 is 20x20",
                "spec.source.dtype: declared uint16, but slice 0 is uint8",
            ]
        );
        let s = spec(
            "{zarr: {path: z.zarr}}",
            "  - {name: r, input: source, recenter: {}}\n",
        );
        let v = validate(&s).expect("valid");
        let e = v.bind(&s, &grid(3, 3, 3, DType::Uint8)).expect_err("tiny");
        assert_eq!(e[0].path, "spec.stages[0].recenter");
        assert!(
            e[0].message.contains("too small for the default window"),
            "{e:?}"
        );
    }

    /// When the spec itself fixes every length, validation already knows the bound result: the two walks are
    /// one.
    #[test]
    fn a_spec_that_fixes_every_length_binds_to_itself() {
        let s = spec(
            "{synthetic: {slices: 30, height: 40, width: 40}, slicesPerChunk: 4}",
            STAGES,
        );
        let v = validate(&s).expect("valid");
        assert!(v.stages.iter().all(|st| st.shape.grid().is_some()));
        let b = v.bind(&s, &grid(30, 4, 40, DType::Uint8)).expect("fits");
        assert_eq!(b, v);
    }
}
