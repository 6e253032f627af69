//! Recording keys/values of a pass and replaying them into a later one.

use std::collections::HashMap;

use burn::tensor::{DType, Tensor};
use layret_core::Result;
use layret_core::processor::{AttentionSite, Branch, StepContext};

use crate::observer::{AttentionCall, AttentionObserver};
use crate::rows::take_rows;

/// How recorded keys/values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvPolicy {
    /// Keep them as computed: f32 for an f32 model, the model's dtype for a half one (exact
    /// replay).
    #[default]
    KeepF32,
    /// Keep f32 keys/values in f16 (half the memory; replay is approximate); a half-precision
    /// model's are kept as computed.
    KeepF16,
    /// Keep nothing: consumers recompute the source branch instead.
    Recompute,
}

impl KvPolicy {
    /// The name the command line and metadata use: `f32`, `f16` or `recompute`.
    pub fn name(self) -> &'static str {
        match self {
            KvPolicy::KeepF32 => "f32",
            KvPolicy::KeepF16 => "f16",
            KvPolicy::Recompute => "recompute",
        }
    }
}

impl std::fmt::Display for KvPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvPolicy {
    type Err = layret_core::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(KvPolicy::KeepF32),
            "f16" => Ok(KvPolicy::KeepF16),
            "recompute" | "none" => Ok(KvPolicy::Recompute),
            other => Err(layret_core::Error::invalid(
                "kv",
                format!("{other:?}; expected f32, f16 or recompute"),
            )),
        }
    }
}

/// Keys and values per (site path, step), as `[rows, heads, L, d]`.
#[derive(Debug, Clone, Default)]
pub struct KvStore {
    policy: KvPolicy,
    entries: HashMap<(String, usize), (Tensor<4>, Tensor<4>)>,
    /// The dtype the recorded tensors were computed in (what replay hands back).
    computed: Option<DType>,
}

impl KvStore {
    /// An empty store with `policy`.
    pub fn new(policy: KvPolicy) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
            computed: None,
        }
    }

    /// The memory policy.
    pub fn policy(&self) -> KvPolicy {
        self.policy
    }

    /// Keep `k`, `v` for `path` at `step` (nothing under [`KvPolicy::Recompute`]).
    pub fn insert(&mut self, path: &str, step: usize, k: Tensor<4>, v: Tensor<4>) {
        self.computed = Some(k.dtype());
        let (k, v) = match self.policy {
            KvPolicy::Recompute => return,
            KvPolicy::KeepF16 if k.dtype() == DType::F32 => {
                (k.cast(DType::F16), v.cast(DType::F16))
            }
            _ => (k, v),
        };
        self.entries.insert((path.to_string(), step), (k, v));
    }

    /// The keys and values of `path` at `step`, in the dtype they were computed in.
    pub fn get(&self, path: &str, step: usize) -> Option<(Tensor<4>, Tensor<4>)> {
        let dtype = self.computed.unwrap_or(DType::F32);
        self.entries.get(&(path.to_string(), step)).map(|(k, v)| {
            if k.dtype() == dtype {
                (k.clone(), v.clone())
            } else {
                (k.clone().cast(dtype), v.clone().cast(dtype))
            }
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
            computed: self.computed,
        }
    }

    /// Move every entry of `other` into this store.
    pub fn extend(&mut self, other: KvStore) {
        self.computed = self.computed.or(other.computed);
        self.entries.extend(other.entries);
    }

    /// Say the entries were computed in `dtype` (a store read back from disk, whose files
    /// may hold them in another): replay hands them back in it.
    pub fn set_computed_dtype(&mut self, dtype: DType) {
        self.computed = Some(dtype);
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

/// Records the keys/values of the sites it observes (the rows of one branch, or all rows)
/// into a [`KvStore`] — an [observer](AttentionObserver), so it can share a site with the
/// processor that computes it.
pub struct KvRecorder<'s> {
    store: &'s mut KvStore,
    branch: Option<Branch>,
}

impl<'s> KvRecorder<'s> {
    /// Record all rows into `store`.
    pub fn new(store: &'s mut KvStore) -> Self {
        Self {
            store,
            branch: None,
        }
    }

    /// Record only the rows of `branch` (both CFG halves, uncond first); a batch without it
    /// is an [`Error::UnknownBranch`](layret_core::Error::UnknownBranch).
    pub fn branch(mut self, branch: Branch) -> Self {
        self.branch = Some(branch);
        self
    }
}

impl AttentionObserver for KvRecorder<'_> {
    fn observe(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        call: AttentionCall,
    ) -> Result<()> {
        if self.store.policy() == KvPolicy::Recompute {
            return Ok(());
        }
        let (k, v) = match self.branch {
            Some(b) => {
                let rows = ctx.layout.branch_rows(b)?;
                (
                    take_rows(call.k.clone(), &rows),
                    take_rows(call.v.clone(), &rows),
                )
            }
            None => (call.k.clone(), call.v.clone()),
        };
        self.store.insert(site.path, ctx.step, k, v);
        Ok(())
    }
}
