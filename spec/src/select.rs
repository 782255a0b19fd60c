//! Resolving a `select` stage's entries against its input's axis lengths: NumPy-style indices, index lists and
//! ranges checked (in range, strictly increasing, not empty) and turned into explicit index lists. Validation
//! calls it with the lengths it knows, the planner with all of them, so both refuse the same selections.

use crate::limits;
use crate::spec::AxisSelection;

/// A resolved selection: the kept indices of every input axis (all of them for axes not selected) and which
/// axes are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Per input axis, strictly increasing indices.
    pub indices: Vec<Vec<usize>>,
    /// Per input axis, whether it is dropped from the result (picked with `index`).
    pub dropped: Vec<bool>,
}

/// A problem with a selection: the field path and what is wrong.
pub type SelectProblem = (String, String);

/// Checks `s` (at field path `at`) against an axis of length `len` (`None` when not known yet) and returns its
/// indices, or `None` when they depend on the unknown length.
///
/// # Errors
/// Not exactly one form set, a step of 0, an empty range, indices not strictly increasing, an index out of
/// range (naming the bound).
pub fn resolve_axis(
    s: &AxisSelection,
    len: Option<usize>,
    at: &str,
) -> Result<Option<Vec<usize>>, SelectProblem> {
    if let Some(n) = len.filter(|&n| n as u64 > limits::MAX_SLICES) {
        return Err((
            at.to_owned(),
            format!(
                "the axis has length {n}, more than the limit of {} a selection indexes",
                limits::MAX_SLICES
            ),
        ));
    }
    let is_range = s.start.is_some() || s.stop.is_some() || s.step.is_some();
    let forms =
        usize::from(s.index.is_some()) + usize::from(s.indices.is_some()) + usize::from(is_range);
    if forms != 1 {
        return Err((
            at.to_string(),
            format!(
                "exactly one of 'index', 'indices' or a range ('start'/'stop'/'step') must be set, found {forms}"
            ),
        ));
    }
    if let Some(i) = s.index {
        check_bound(i, len, &format!("{at}.index"))?;
        return Ok(Some(vec![i]));
    }
    if let Some(list) = &s.indices {
        return check_list(list, len, at).map(Some);
    }
    range_indices(s, len, at)
}

fn check_bound(i: usize, len: Option<usize>, at: &str) -> Result<(), SelectProblem> {
    match len {
        Some(n) if i >= n => Err((
            at.to_string(),
            format!(
                "index {i} out of range: the axis has length {n} (indices 0 to {})",
                n.saturating_sub(1)
            ),
        )),
        _ => Ok(()),
    }
}

fn check_list(list: &[usize], len: Option<usize>, at: &str) -> Result<Vec<usize>, SelectProblem> {
    if list.is_empty() {
        return Err((
            format!("{at}.indices"),
            "selects nothing: list at least one index".into(),
        ));
    }
    for (k, &i) in list.iter().enumerate() {
        if k > 0 && i <= list[k - 1] {
            return Err((
                format!("{at}.indices[{k}]"),
                format!(
                    "indices must be strictly increasing, but {i} follows {}",
                    list[k - 1]
                ),
            ));
        }
        check_bound(i, len, &format!("{at}.indices[{k}]"))?;
    }
    Ok(list.to_vec())
}

fn range_indices(
    s: &AxisSelection,
    len: Option<usize>,
    at: &str,
) -> Result<Option<Vec<usize>>, SelectProblem> {
    let step = s.step.unwrap_or(1);
    if step == 0 {
        return Err((format!("{at}.step"), "must be positive, found 0".into()));
    }
    let start = s.start.unwrap_or(0);
    if let Some(stop) = s.stop
        && stop <= start
    {
        return Err((
            format!("{at}.stop"),
            format!("selects nothing: stop {stop} is not after start {start}"),
        ));
    }
    let Some(n) = len else { return Ok(None) };
    if start >= n {
        return Err((
            format!("{at}.start"),
            format!("selects nothing: start {start} is out of range, the axis has length {n}"),
        ));
    }
    let stop = s.stop.unwrap_or(n).min(n);
    Ok(Some((start..stop).step_by(step).collect()))
}

/// Checks the axes of a selection (in range of an `ndim`-D input, each at most once) and resolves every entry
/// against the input's lengths (`None` where unknown). Returns the selection when every length is known.
///
/// # Errors
/// Every problem found, each with its field path (`{at}.select[k]...`).
pub fn resolve(
    sel: &[AxisSelection],
    dims: &[Option<usize>],
    at: &str,
) -> Result<Option<Resolved>, Vec<SelectProblem>> {
    let mut problems = Vec::new();
    if sel.is_empty() {
        problems.push((
            format!("{at}.select"),
            "list at least one axis to select".into(),
        ));
    }
    // The index lists are explicit: an axis longer than any source may be (a length validation has already
    // refused, or an overflow) is not listed.
    for (a, n) in dims.iter().enumerate() {
        if let Some(n) = n.filter(|&n| n as u64 > limits::MAX_SLICES) {
            problems.push((
                format!("{at}.select"),
                format!(
                    "the input's axis {a} has length {n}, more than the limit of {} a selection indexes",
                    limits::MAX_SLICES
                ),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut picked: Vec<Option<Vec<usize>>> =
        dims.iter().map(|d| d.map(|n| (0..n).collect())).collect();
    let mut dropped = vec![false; dims.len()];
    let mut seen = vec![false; dims.len()];
    for (k, s) in sel.iter().enumerate() {
        let path = format!("{at}.select[{k}]");
        if s.axis >= dims.len() {
            problems.push((
                format!("{path}.axis"),
                format!(
                    "axis {} out of range: the input is {}-D",
                    s.axis,
                    dims.len()
                ),
            ));
            continue;
        }
        if std::mem::replace(&mut seen[s.axis], true) {
            problems.push((
                format!("{path}.axis"),
                format!("axis {} is selected twice", s.axis),
            ));
            continue;
        }
        match resolve_axis(s, dims[s.axis], &path) {
            Ok(v) => picked[s.axis] = v,
            Err(p) => problems.push(p),
        }
        dropped[s.axis] = s.index.is_some();
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(picked
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .map(|indices| Resolved { indices, dropped }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(axis: usize) -> AxisSelection {
        AxisSelection {
            axis,
            index: None,
            indices: None,
            start: None,
            stop: None,
            step: None,
        }
    }

    #[test]
    fn every_problem_is_named_by_its_path() {
        let twice = [
            AxisSelection {
                index: Some(9),
                ..axis(0)
            },
            AxisSelection {
                indices: Some(vec![1, 1]),
                ..axis(0)
            },
            AxisSelection {
                step: Some(0),
                ..axis(3)
            },
        ];
        assert_eq!(
            resolve(&twice, &[Some(5), None], "spec.stages[2]"),
            Err(vec![
                (
                    "spec.stages[2].select[0].index".to_string(),
                    "index 9 out of range: the axis has length 5 (indices 0 to 4)".to_string()
                ),
                (
                    "spec.stages[2].select[1].axis".to_string(),
                    "axis 0 is selected twice".to_string()
                ),
                (
                    "spec.stages[2].select[2].axis".to_string(),
                    "axis 3 out of range: the input is 2-D".to_string()
                ),
            ])
        );
        let list = AxisSelection {
            indices: Some(vec![1, 1]),
            ..axis(1)
        };
        assert_eq!(
            resolve_axis(&list, None, "at"),
            Err((
                "at.indices[1]".to_string(),
                "indices must be strictly increasing, but 1 follows 1".to_string()
            ))
        );
    }

    #[test]
    fn a_known_selection_resolves_every_axis() {
        let sel = [AxisSelection {
            index: Some(2),
            ..axis(1)
        }];
        assert_eq!(
            resolve(&sel, &[Some(3), Some(4)], "at"),
            Ok(Some(Resolved {
                indices: vec![vec![0, 1, 2], vec![2]],
                dropped: vec![false, true],
            }))
        );
        assert_eq!(resolve(&sel, &[None, Some(4)], "at"), Ok(None));
    }
}
