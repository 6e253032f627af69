//! Row slicing of multi-branch CFG batches (see
//! [`BatchLayout`]): the rows of a branch, of a half, of
//! a branch in one half, and putting rows back. Contiguous runs are sliced on the device (no
//! index tensor is built on the host).

use std::ops::Range;

use burn::tensor::Tensor;
use layret_core::processor::{BatchLayout, Branch, Half};
use layret_core::{Error, Result};

/// Rows `rows` of `t` (any order, repeats allowed), as runs of contiguous slices.
///
/// # Shapes
/// `[B, …]` → `[rows.len(), …]`.
pub fn take_rows<const D: usize>(t: Tensor<D>, rows: &[usize]) -> Tensor<D> {
    let runs = runs(rows);
    if runs.len() == 1 && runs[0] == (0..t.dims()[0]) {
        return t;
    }
    let mut parts: Vec<Tensor<D>> = runs.into_iter().map(|r| t.clone().slice([r])).collect();
    if parts.len() == 1 {
        parts.pop().unwrap_or_else(|| unreachable!("one part"))
    } else {
        Tensor::cat(parts, 0)
    }
}

/// `rows` as maximal runs of consecutive indices.
fn runs(rows: &[usize]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for &r in rows {
        match out.last_mut() {
            Some(last) if last.end == r => last.end += 1,
            _ => out.push(r..r + 1),
        }
    }
    out
}

/// Check that `t` has the layout's batch size (`what` names it in the error).
pub fn check_batch<const D: usize>(t: &Tensor<D>, layout: &BatchLayout, what: &str) -> Result<()> {
    if t.dims()[0] != layout.batch_size() {
        return Err(Error::Shape {
            what: what.into(),
            expected: format!(
                "{} rows (the batch layout: {} halves × {} branches × {} samples)",
                layout.batch_size(),
                layout.halves(),
                layout.branches().len(),
                layout.samples()
            ),
            got: t.dims().to_vec(),
        });
    }
    Ok(())
}

/// The rows of `branch` over every CFG half (uncond first).
///
/// # Shapes
/// `[B, …]` → `[halves · samples, …]`.
pub fn branch<const D: usize>(
    t: Tensor<D>,
    layout: &BatchLayout,
    branch: Branch,
) -> Result<Tensor<D>> {
    check_batch(&t, layout, "batch")?;
    Ok(take_rows(t, &layout.branch_rows(branch)?))
}

/// The rows of `branch` in CFG half `half`.
///
/// # Shapes
/// `[B, …]` → `[samples, …]`.
pub fn half_branch<const D: usize>(
    t: Tensor<D>,
    layout: &BatchLayout,
    half: Half,
    branch: Branch,
) -> Result<Tensor<D>> {
    check_batch(&t, layout, "batch")?;
    Ok(t.slice([layout.rows(half, branch)?]))
}

/// The rows of CFG half `half` (every branch).
///
/// # Shapes
/// `[B, …]` → `[branches · samples, …]`.
pub fn half<const D: usize>(t: Tensor<D>, layout: &BatchLayout, half: Half) -> Result<Tensor<D>> {
    check_batch(&t, layout, "batch")?;
    Ok(t.slice([layout.half_rows(half)]))
}

/// `all` with rows `rows` replaced by `part`.
///
/// # Shapes
/// `all` `[B, …]`, `part` `[rows.len(), …]` → `[B, …]`.
pub fn put_rows<const D: usize>(all: Tensor<D>, rows: Range<usize>, part: Tensor<D>) -> Tensor<D> {
    all.slice_assign([rows], part)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t(n: usize) -> Tensor<2> {
        let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        Tensor::from_data(TensorData::new(v, [n, 1]), &Device::flex())
    }

    fn vals(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    #[test]
    fn rows_of_branches_and_halves() {
        let layout = BatchLayout::new(vec![Branch::Context, Branch::Target], 2, true).unwrap();
        let x = t(8);
        assert_eq!(
            vals(branch(x.clone(), &layout, Branch::Target).unwrap()),
            vec![2., 3., 6., 7.]
        );
        assert_eq!(
            vals(half_branch(x.clone(), &layout, Half::Cond, Branch::Context).unwrap()),
            vec![4., 5.]
        );
        assert_eq!(
            vals(half(x.clone(), &layout, Half::Uncond).unwrap()),
            vec![0., 1., 2., 3.]
        );
        assert_eq!(
            vals(take_rows(x.clone(), &[5, 6, 0, 0])),
            vec![5., 6., 0., 0.]
        );
        assert_eq!(
            vals(put_rows(x.clone(), 2..4, t(2))),
            vec![0., 1., 0., 1., 4., 5., 6., 7.]
        );
        assert!(matches!(
            branch(x.clone(), &layout, Branch::Reference),
            Err(Error::UnknownBranch { .. })
        ));
        assert!(matches!(
            branch(t(6), &layout, Branch::Target),
            Err(Error::Shape { .. })
        ));
    }
}
