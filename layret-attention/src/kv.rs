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
    /// Keep them in f32 (exact replay).
    #[default]
    KeepF32,
    /// Keep them in f16 (half the memory; replay is approximate).
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

    /// Keep `k`, `v` for `path` at `step` (nothing under [`KvPolicy::Recompute`]).
    pub fn insert(&mut self, path: &str, step: usize, k: Tensor<4>, v: Tensor<4>) {
        let (k, v) = match self.policy {
            KvPolicy::Recompute => return,
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
