//! docs/method.md stage 2: multi-source attention swapping at the swapped layers.

use std::collections::HashMap;

use burn::tensor::{Bool, Int, Tensor};
use layret_core::nn::{AttentionMask, nearest_index_tensor, scaled_dot_product_attention};
use layret_core::processor::{
    AttentionProcessor, AttentionSite, Branch, StepContext, default_attention, default_attention_at,
};
use layret_core::{Error, Result};

use crate::kv::KvStore;
use crate::rows::{check_batch, put_rows};

/// How the two sources are combined from `swap_start` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SwapMode {
    /// Two masked softmaxes (reference subject, context background) blended by `M_t`.
    #[default]
    Split,
    /// One softmax over `[K_t; K_c; K_r]` with context subject and reference background
    /// tokens masked out.
    Concat,
}

impl SwapMode {
    /// The name the command line and metadata use: `split` or `concat`.
    pub fn name(self) -> &'static str {
        match self {
            SwapMode::Split => "split",
            SwapMode::Concat => "concat",
        }
    }
}

impl std::fmt::Display for SwapMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SwapMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "split" => Ok(SwapMode::Split),
            "concat" => Ok(SwapMode::Concat),
            other => Err(Error::invalid(
                "swap mode",
                format!("{other:?}; expected split or concat"),
            )),
        }
    }
}

/// Binary masks (0/1) over the tokens of one map size, one row per target sample.
#[derive(Debug, Clone)]
pub struct SwapMasks {
    /// Map height.
    pub height: usize,
    /// Map width.
    pub width: usize,
    /// `M_r`: the reference's subject, `[n, h·w]`.
    pub reference: Tensor<2>,
    /// `M_c`: the context's subject, `[n, h·w]`.
    pub context: Tensor<2>,
    /// `M_t`: the target's subject, `[n, h·w]`.
    pub target: Tensor<2>,
}

impl SwapMasks {
    /// Nearest-neighbour resize (`src = ⌊dst·in/out⌋` per axis) of all three masks.
    pub fn resize(&self, height: usize, width: usize) -> SwapMasks {
        if (height, width) == (self.height, self.width) {
            return self.clone();
        }
        // Flat source index `y·W + x` of each output token, computed on the masks' device.
        let device = self.reference.device();
        let ys = nearest_index_tensor(self.height, height, &device)
            .mul_scalar(self.width as i64)
            .reshape([height, 1])
            .expand([height, width]);
        let xs = nearest_index_tensor(self.width, width, &device)
            .reshape([1, width])
            .expand([height, width]);
        let idx: Tensor<1, Int> = (ys + xs).reshape([height * width]);
        SwapMasks {
            height,
            width,
            reference: self.reference.clone().select(1, idx.clone()),
            context: self.context.clone().select(1, idx.clone()),
            target: self.target.clone().select(1, idx),
        }
    }
}

/// Exclusion mask `[n, L]` (true = masked out) for the tokens where `allowed` is 0, except
/// rows where nothing is allowed, which get no restriction (docs/method.md's empty-set rule).
fn exclude_unless_empty(allowed: Tensor<2>) -> Tensor<2, Bool> {
    let [n, l] = allowed.dims();
    let empty = allowed.clone().sum_dim(1).equal_elem(0.0); // [n, 1]
    allowed
        .equal_elem(0.0)
        .bool_and(empty.bool_not().expand([n, l]))
}

/// Attention with per-sample key exclusion `[n, Lk]`.
fn masked_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    exclude: Tensor<2, Bool>,
) -> Tensor<4> {
    scaled_dot_product_attention(q, k, v, AttentionMask::ExcludeKeys(exclude))
}

/// Which rule [`swap_attention`] applies at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwapRule {
    /// The sampling step `k`.
    pub step: usize,
    /// The structure-lock length `S` (steps before it read the context only).
    pub swap_start: usize,
    /// Split or concat.
    pub mode: SwapMode,
}

/// The keys/values of the three sources at one site, each `(K, V)` of `[n, H, L, d]`.
#[derive(Debug, Clone)]
pub struct SwapSources {
    /// The target's own keys/values (used by [`SwapMode::Concat`]).
    pub target: (Tensor<4>, Tensor<4>),
    /// The context's (`K_c`, `V_c`).
    pub context: (Tensor<4>, Tensor<4>),
    /// The reference's (`K_r`, `V_r`).
    pub reference: (Tensor<4>, Tensor<4>),
}

/// The attention output of the target rows at a swapped layer (docs/method.md):
///
/// - `step < swap_start`: `softmax(Q_t K_cᵀ/√d) V_c` (structure lock);
/// - [`SwapMode::Split`]: `M_t ⊙ softmax(Q_t K_rᵀ/√d + log 1[M_r]) V_r +
///   (1 − M_t) ⊙ softmax(Q_t K_cᵀ/√d + log 1[¬M_c]) V_c`, an empty allowed set meaning no
///   restriction (per sample and per softmax);
/// - [`SwapMode::Concat`]: one softmax over `[K_t; K_c; K_r]`, context tokens allowed only in
///   `¬M_c`, reference tokens only in `M_r`, target tokens always.
///
/// `masks = None` is step 0's rule: `M_t = M_r = ¬M_c = 1`.
///
/// # Shapes
/// `q_t`, target K/V: `[n, H, L, d]`; context and reference K/V: `[n, H, L', d]`; masks
/// `[n, L']` (`L' = L` at the swapped self-attention layers) → `[n, H, L, d]`.
pub fn swap_attention(
    rule: SwapRule,
    q_t: Tensor<4>,
    sources: SwapSources,
    masks: Option<&SwapMasks>,
) -> Tensor<4> {
    let SwapSources {
        target: (k_t, v_t),
        context: (k_c, v_c),
        reference: (k_r, v_r),
    } = sources;
    // Sources replayed from a store or a cache file may be held in another precision than
    // the model computes in (f16 under `KvPolicy::KeepF16`, f32 read from disk): all in the
    // queries' dtype. Masks follow it too.
    let dtype = q_t.dtype();
    let same = |t: Tensor<4>| if t.dtype() == dtype { t } else { t.cast(dtype) };
    let (k_t, v_t, k_c, v_c, k_r, v_r) = (
        same(k_t),
        same(v_t),
        same(k_c),
        same(v_c),
        same(k_r),
        same(v_r),
    );
    if rule.step < rule.swap_start {
        return default_attention(q_t, k_c, v_c);
    }
    let [n, _, lq, _] = q_t.dims();
    let (lc, lr) = (k_c.dims()[2], k_r.dims()[2]);
    let device = q_t.device();
    let (m_r, m_c, m_t) = match masks {
        Some(m) => (m.reference.clone(), m.context.clone(), m.target.clone()),
        None => (
            Tensor::<2>::ones([n, lr], &device),
            Tensor::<2>::zeros([n, lc], &device),
            Tensor::<2>::ones([n, lq], &device),
        ),
    };
    match rule.mode {
        SwapMode::Split => {
            let fg = masked_attention(q_t.clone(), k_r, v_r, exclude_unless_empty(m_r));
            let bg = masked_attention(
                q_t,
                k_c,
                v_c,
                exclude_unless_empty(m_c.neg().add_scalar(1.0)),
            );
            let mt = m_t.reshape([n, 1, lq, 1]).cast(dtype);
            fg * mt.clone() + bg * mt.neg().add_scalar(1.0)
        }
        SwapMode::Concat => {
            let lt = k_t.dims()[2];
            let k = Tensor::cat(vec![k_t, k_c, k_r], 2);
            let v = Tensor::cat(vec![v_t, v_c, v_r], 2);
            let exclude = Tensor::cat(
                vec![
                    Tensor::<2>::zeros([n, lt], &device),
                    m_c,                       // context subject: out
                    m_r.neg().add_scalar(1.0), // reference background: out
                ],
                1,
            )
            .equal_elem(1.0);
            masked_attention(q_t, k, v, exclude)
        }
    }
}

/// Where the context and reference keys/values come from.
pub enum KvSource<'a> {
    /// Rows of the same batch, by branch (the "recompute" path).
    InBatch {
        /// The context branch.
        context: Branch,
        /// The reference branch.
        reference: Branch,
    },
    /// Recorded passes (the "replay" path): `[2m, H, L, d]` per (site, step), uncond rows
    /// first; `m` is the number of samples (1 for a shared reference, broadcast to all).
    Replay {
        /// Stage 1's context keys/values.
        context: &'a KvStore,
        /// The reference branch's keys/values.
        reference: &'a KvStore,
    },
}

/// The stage-2 processor: at the sites routed to it, the target branch's output follows
/// [`swap_attention`] with keys/values of the context and reference branches (in the batch or
/// replayed); every other row gets plain attention. Set the masks of each step with
/// [`set_masks`](Self::set_masks) (at the mask level; they are resized per layer). A missing
/// branch is an [`Error::UnknownBranch`], missing replayed keys/values an
/// [`Error::MissingKv`], replayed keys/values of the wrong shape for the site an
/// [`Error::Shape`] — never a silent fallback to plain attention.
pub struct MultiSourceSwap<'a> {
    rule: (usize, SwapMode),
    target: Branch,
    source: KvSource<'a>,
    masks: Option<SwapMasks>,
    resized: HashMap<(usize, usize), SwapMasks>,
}

impl<'a> MultiSourceSwap<'a> {
    /// A processor for branch `target` reading from `source`, with structure lock
    /// `swap_start` and `mode`.
    pub fn new(target: Branch, source: KvSource<'a>, swap_start: usize, mode: SwapMode) -> Self {
        Self {
            rule: (swap_start, mode),
            target,
            source,
            masks: None,
            resized: HashMap::new(),
        }
    }

    /// The masks for the coming step (`None`: step 0's all-ones rule).
    pub fn set_masks(&mut self, masks: Option<SwapMasks>) {
        self.masks = masks;
        self.resized.clear();
    }

    fn masks_at(&mut self, h: usize, w: usize) -> Option<SwapMasks> {
        let m = self.masks.as_ref()?;
        Some(
            self.resized
                .entry((h, w))
                .or_insert_with(|| m.resize(h, w))
                .clone(),
        )
    }
}

/// Rows of CFG half `half` of a replayed `[halves·m, …]` tensor, repeated to `n` rows if
/// m = 1.
fn replay_half(t: Tensor<4>, half: usize, halves: usize, n: usize) -> Tensor<4> {
    let m = t.dims()[0] / halves.max(1);
    let rows = t.slice([half * m..(half + 1) * m]);
    if m == 1 && n > 1 {
        rows.repeat_dim(0, n)
    } else {
        rows
    }
}

/// Check replayed keys or values against the site: `[halves·m, heads, tokens, head_dim]`
/// with m = 1 or the number of samples.
fn check_replayed(
    t: &Tensor<4>,
    site: &AttentionSite,
    halves: usize,
    samples: usize,
    what: &str,
) -> Result<()> {
    let [r, h, l, d] = t.dims();
    let rows_ok = r == halves || r == halves * samples;
    if !rows_ok || h != site.heads || l != site.tokens() || d != site.head_dim {
        return Err(Error::Shape {
            what: format!("replayed {what} at {} (step's recording)", site.path),
            expected: format!(
                "[{halves} or {}, {}, {}, {}] (CFG halves × 1 or {samples} samples, the site's heads, tokens, head dim)",
                halves * samples,
                site.heads,
                site.tokens(),
                site.head_dim
            ),
            got: t.dims().to_vec(),
        });
    }
    Ok(())
}

impl AttentionProcessor for MultiSourceSwap<'_> {
    fn attend(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> Result<Tensor<4>> {
        let layout = &ctx.layout;
        check_batch(&q, layout, "queries")?;
        layout.branch_index(self.target)?;
        let masks = self.masks_at(site.height, site.width);
        let halves = layout.halves();
        let n = layout.samples();
        let rule = SwapRule {
            step: ctx.step,
            swap_start: self.rule.0,
            mode: self.rule.1,
        };
        let only_target = layout.branches().len() == 1;
        let mut parts = Vec::with_capacity(halves);
        for (hi, half) in layout.half_list().into_iter().enumerate() {
            let rows = layout.rows(half, self.target)?;
            let slice = |t: &Tensor<4>, r: std::ops::Range<usize>| t.clone().slice([r]);
            let (q_t, k_t, v_t) = (
                slice(&q, rows.clone()),
                slice(&k, rows.clone()),
                slice(&v, rows.clone()),
            );
            let (context, reference) = match &self.source {
                KvSource::InBatch { context, reference } => {
                    let (rc, rr) = (layout.rows(half, *context)?, layout.rows(half, *reference)?);
                    (
                        (slice(&k, rc.clone()), slice(&v, rc)),
                        (slice(&k, rr.clone()), slice(&v, rr)),
                    )
                }
                KvSource::Replay { context, reference } => {
                    let get = |store: &KvStore, what: &str| -> Result<(Tensor<4>, Tensor<4>)> {
                        let (kk, vv) = store.get(site.path, ctx.step).ok_or_else(|| {
                            Error::MissingKv {
                                branch: what.into(),
                                site: site.path.into(),
                                step: ctx.step,
                                hint: "record them (stage 1 / the reference pass) for every swapped site and step, or recompute".into(),
                            }
                        })?;
                        check_replayed(&kk, site, halves, n, &format!("{what} keys"))?;
                        check_replayed(&vv, site, halves, n, &format!("{what} values"))?;
                        Ok((
                            replay_half(kk, hi, halves, n),
                            replay_half(vv, hi, halves, n),
                        ))
                    };
                    (get(context, "context")?, get(reference, "reference")?)
                }
            };
            let o_t = swap_attention(
                rule,
                q_t,
                SwapSources {
                    target: (k_t, v_t),
                    context,
                    reference,
                },
                masks.as_ref(),
            );
            parts.push((rows, o_t));
        }
        if only_target {
            return Ok(Tensor::cat(parts.into_iter().map(|(_, o)| o).collect(), 0));
        }
        let mut all = default_attention_at(site, q, k, v);
        for (rows, o_t) in parts {
            all = put_rows(all, rows, o_t);
        }
        Ok(all)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// `[1, 1, L, 1]` from literal values.
    fn col(v: &[f32]) -> Tensor<4> {
        Tensor::from_data(
            TensorData::new(v.to_vec(), [1, 1, v.len(), 1]),
            &Device::flex(),
        )
    }

    fn row(v: &[f32]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [1, v.len()]), &Device::flex())
    }

    fn vals(t: Tensor<4>) -> Vec<f64> {
        t.into_data()
            .try_into_vec_as::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    /// Σ softmax(q·k)·v over the listed (k, v) pairs, d = 1 (scale 1).
    fn attend(q: f64, kv: &[(f64, f64)]) -> f64 {
        let z: f64 = kv.iter().map(|(k, _)| (q * k).exp()).sum();
        kv.iter().map(|(k, v)| (q * k).exp() / z * v).sum()
    }

    // Queries 1 and 2; context keys (0, 1) values (10, 20); reference keys (1, 0) values
    // (30, 40); target keys (0.5, 0.5) values (0, 5).
    const Q: [f64; 2] = [1.0, 2.0];
    const C: [(f64, f64); 2] = [(0.0, 10.0), (1.0, 20.0)];
    const R: [(f64, f64); 2] = [(1.0, 30.0), (0.0, 40.0)];
    const T: [(f64, f64); 2] = [(0.5, 0.0), (0.5, 5.0)];

    fn run(step: usize, mode: SwapMode, masks: Option<(&[f32], &[f32], &[f32])>) -> Vec<f64> {
        let m = masks.map(|(r, c, t)| SwapMasks {
            height: 1,
            width: 2,
            reference: row(r),
            context: row(c),
            target: row(t),
        });
        let out = swap_attention(
            SwapRule {
                step,
                swap_start: 4,
                mode,
            },
            col(&[1.0, 2.0]),
            SwapSources {
                target: (col(&[0.5, 0.5]), col(&[0.0, 5.0])),
                context: (col(&[0.0, 1.0]), col(&[10.0, 20.0])),
                reference: (col(&[1.0, 0.0]), col(&[30.0, 40.0])),
            },
            m.as_ref(),
        );
        vals(out)
    }

    fn close(got: Vec<f64>, want: [f64; 2]) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn structure_lock_before_swap_start() {
        let masks: (&[f32], &[f32], &[f32]) = (&[1.0, 0.0], &[1.0, 0.0], &[1.0, 0.0]);
        for mode in [SwapMode::Split, SwapMode::Concat] {
            close(
                run(3, mode, Some(masks)),
                [attend(Q[0], &C), attend(Q[1], &C)],
            );
        }
    }

    #[test]
    fn split_without_masks_reads_the_whole_reference() {
        // Step 0's rule: M_t = M_r = ¬M_c = 1.
        close(
            run(4, SwapMode::Split, None),
            [attend(Q[0], &R), attend(Q[1], &R)],
        );
    }

    #[test]
    fn split_with_masks() {
        // M_r = {r0}, ¬M_c = {c1}, M_t = {query 0}: query 0 reads r0 only, query 1 c1 only.
        let out = run(
            4,
            SwapMode::Split,
            Some((&[1.0, 0.0], &[1.0, 0.0], &[1.0, 0.0])),
        );
        close(out, [30.0, 20.0]);
    }

    #[test]
    fn split_empty_sets_mean_no_restriction() {
        // M_r empty and ¬M_c empty (M_c all ones): both softmaxes unrestricted;
        // M_t = {query 1}.
        let out = run(
            4,
            SwapMode::Split,
            Some((&[0.0, 0.0], &[1.0, 1.0], &[0.0, 1.0])),
        );
        close(out, [attend(Q[0], &C), attend(Q[1], &R)]);
    }

    #[test]
    fn concat_masks_context_subject_and_reference_background() {
        // Allowed: t0, t1, c1 (¬M_c), r0 (M_r).
        let out = run(
            4,
            SwapMode::Concat,
            Some((&[1.0, 0.0], &[1.0, 0.0], &[1.0, 1.0])),
        );
        let allowed = [T[0], T[1], C[1], R[0]];
        close(out, [attend(Q[0], &allowed), attend(Q[1], &allowed)]);
        // No masks: every context token is in ¬M_c (M_c = 0) and every reference token in M_r.
        let all = [T[0], T[1], C[0], C[1], R[0], R[1]];
        close(
            run(5, SwapMode::Concat, None),
            [attend(Q[0], &all), attend(Q[1], &all)],
        );
        // Concat has no empty-set rule: with M_r empty and M_c full only the target remains.
        let out = run(
            4,
            SwapMode::Concat,
            Some((&[0.0, 0.0], &[1.0, 1.0], &[1.0, 1.0])),
        );
        close(out, [attend(Q[0], &T), attend(Q[1], &T)]);
    }

    #[test]
    fn masks_resize_by_the_nearest_rule() {
        let m = SwapMasks {
            height: 2,
            width: 2,
            reference: row(&[1.0, 2.0, 3.0, 4.0]),
            context: row(&[1.0, 2.0, 3.0, 4.0]),
            target: row(&[1.0, 2.0, 3.0, 4.0]),
        };
        let r = m.resize(4, 4);
        let v: Vec<f32> = r.target.into_data().try_into_vec_as::<f32>().unwrap();
        assert_eq!(
            v,
            vec![
                1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.
            ]
        );
    }
}
