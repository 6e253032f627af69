//! Recording keys/values of a pass and replaying them into a later one.

use std::collections::HashMap;

use burn::tensor::{DType, Int, Tensor, TensorData};
use layret_core::attention::{AttentionProcessor, AttentionSite, StepContext, default_attention};

/// How recorded keys/values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvPolicy {
    /// Keep them in f32 (exact replay).
    #[default]
    KeepF32,
    /// Keep them in f16 (half the memory; replay is approximate).
    KeepF16,
    /// Keep nothing: consumers recompute the source branch instead.
    DontKeep,
}

/// Keys and values per (site path, step), as `[rows, heads, L, d]`.
#[derive(Debug, Clone, Default)]
pub struct KvStore {
    policy: KvPolicy,
    entries: HashMap<(String, usize), (Tensor<4>, Tensor<4>)>,
}

impl KvStore {
    /// An empty store with `policy`.
    pub fn new(policy: KvPolicy) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
        }
    }

    /// The memory policy.
    pub fn policy(&self) -> KvPolicy {
        self.policy
    }

    /// Keep `k`, `v` for `path` at `step` (nothing under [`KvPolicy::DontKeep`]).
    pub fn insert(&mut self, path: &str, step: usize, k: Tensor<4>, v: Tensor<4>) {
        let (k, v) = match self.policy {
            KvPolicy::DontKeep => return,
            KvPolicy::KeepF32 => (k, v),
            KvPolicy::KeepF16 => (k.cast(DType::F16), v.cast(DType::F16)),
        };
        self.entries.insert((path.to_string(), step), (k, v));
    }

    /// The keys and values of `path` at `step`, as f32.
    pub fn get(&self, path: &str, step: usize) -> Option<(Tensor<4>, Tensor<4>)> {
        self.entries
            .get(&(path.to_string(), step))
            .map(|(k, v)| match self.policy {
                KvPolicy::KeepF16 => (k.clone().cast(DType::F32), v.clone().cast(DType::F32)),
                _ => (k.clone(), v.clone()),
            })
    }

    /// The entries of `step` only (sharing their tensors), as a store of its own.
    pub fn at_step(&self, step: usize) -> KvStore {
        KvStore {
            policy: self.policy,
            entries: self
                .entries
                .iter()
                .filter(|((_, s), _)| *s == step)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Move every entry of `other` into this store.
    pub fn extend(&mut self, other: KvStore) {
        self.entries.extend(other.entries);
    }

    /// Every entry as (site path, step, keys, values), in no particular order (keys/values as
    /// stored: f16 under [`KvPolicy::KeepF16`]).
    pub fn entries(&self) -> impl Iterator<Item = (&str, usize, &Tensor<4>, &Tensor<4>)> {
        self.entries
            .iter()
            .map(|((p, s), (k, v))| (p.as_str(), *s, k, v))
    }

    /// Number of (site, step) entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held (by element count and policy).
    pub fn bytes(&self) -> usize {
        let per = match self.policy {
            KvPolicy::KeepF16 => 2,
            _ => 4,
        };
        self.entries
            .values()
            .map(|(k, v)| {
                (k.dims().iter().product::<usize>() + v.dims().iter().product::<usize>()) * per
            })
            .sum()
    }
}

/// Records the keys/values of the sites routed to it (the rows of one branch, or all rows) into
/// a [`KvStore`], and computes the default attention.
pub struct KvRecorder<'s> {
    store: &'s mut KvStore,
    branch: Option<String>,
}

impl<'s> KvRecorder<'s> {
    /// Record all rows into `store`.
    pub fn new(store: &'s mut KvStore) -> Self {
        Self {
            store,
            branch: None,
        }
    }

    /// Record only the rows of `branch` (both CFG halves, uncond first).
    pub fn branch(mut self, branch: &str) -> Self {
        self.branch = Some(branch.to_string());
        self
    }
}

/// Row indices of `branch` over every CFG half, in order.
pub(crate) fn branch_rows(ctx: &StepContext, branch: usize) -> Vec<usize> {
    (0..ctx.layout.halves())
        .flat_map(|h| ctx.layout.rows(h, branch))
        .collect()
}

/// `t.select(0, rows)`.
pub(crate) fn take_rows(t: Tensor<4>, rows: &[usize]) -> Tensor<4> {
    let device = t.device();
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    t.select(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device),
    )
}

impl AttentionProcessor for KvRecorder<'_> {
    fn attend(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> Tensor<4> {
        if self.store.policy() != KvPolicy::DontKeep {
            let rows = self.branch.as_deref().and_then(|b| ctx.layout.branch(b));
            let (rk, rv) = match rows {
                Some(b) => {
                    let rows = branch_rows(ctx, b);
                    (take_rows(k.clone(), &rows), take_rows(v.clone(), &rows))
                }
                None => (k.clone(), v.clone()),
            };
            self.store.insert(site.path, ctx.step, rk, rv);
        }
        default_attention(q, k, v)
    }
}
