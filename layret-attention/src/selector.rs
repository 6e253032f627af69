//! Which attention sites a processor applies to.

use std::ops::Range;

use layret_core::processor::{
    AttentionKind, AttentionSite, BlockPosition, Branch, ModelRole, Pass, StepContext,
};

/// A conjunction of conditions on a site (and the step); an empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteSelector {
    path: Option<String>,
    kind: Option<AttentionKind>,
    index: Option<Range<usize>>,
    size: Option<(usize, usize)>,
    decoder_min_divisor: Option<usize>,
    steps: Option<Range<usize>>,
    pass: Option<Pass>,
    model: Option<ModelRole>,
    branch: Option<Branch>,
}

impl SiteSelector {
    /// Matches every site.
    pub fn new() -> Self {
        Self::default()
    }

    /// Path glob: `*` matches any run of characters (dots included), e.g. `up_blocks.*.attn1`.
    pub fn path(mut self, glob: &str) -> Self {
        self.path = Some(glob.to_string());
        self
    }

    /// Only self- or only cross-attention.
    pub fn kind(mut self, kind: AttentionKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Execution indices within a pass.
    pub fn index(mut self, range: Range<usize>) -> Self {
        self.index = Some(range);
        self
    }

    /// Feature maps of exactly `height × width`.
    pub fn size(mut self, height: usize, width: usize) -> Self {
        self.size = Some((height, width));
        self
    }

    /// Up (decoder) blocks whose map is at least `latent / divisor` on both axes (docs/method.md's
    /// swapped layers: divisor 2).
    pub fn decoder_at_least(mut self, divisor: usize) -> Self {
        self.decoder_min_divisor = Some(divisor.max(1));
        self
    }

    /// Sampling steps `k` in `range`.
    pub fn steps(mut self, range: Range<usize>) -> Self {
        self.steps = Some(range);
        self
    }

    /// Passes of kind `pass` only (sample, invert, reference).
    pub fn pass(mut self, pass: Pass) -> Self {
        self.pass = Some(pass);
        self
    }

    /// Passes of `model` only (vanilla or personalized).
    pub fn model(mut self, model: ModelRole) -> Self {
        self.model = Some(model);
        self
    }

    /// Passes whose batch has `branch` only.
    pub fn branch(mut self, branch: Branch) -> Self {
        self.branch = Some(branch);
        self
    }

    /// Whether `site` at `ctx` satisfies every condition.
    pub fn matches(&self, site: &AttentionSite, ctx: &StepContext) -> bool {
        if let Some(g) = &self.path
            && !glob_match(g, site.path)
        {
            return false;
        }
        if self.kind.is_some_and(|k| k != site.kind) {
            return false;
        }
        if self
            .index
            .as_ref()
            .is_some_and(|r| !r.contains(&site.index))
        {
            return false;
        }
        if self.size.is_some_and(|s| s != (site.height, site.width)) {
            return false;
        }
        if let Some(div) = self.decoder_min_divisor {
            let up = matches!(site.block(), Some(BlockPosition::Up(_)));
            // h ≥ H/div  ⇔  div·h ≥ H (no rounding).
            if !up || div * site.height < site.latent_height || div * site.width < site.latent_width
            {
                return false;
            }
        }
        if self.steps.as_ref().is_some_and(|r| !r.contains(&ctx.step)) {
            return false;
        }
        if self.pass.is_some_and(|p| p != ctx.pass) || self.model.is_some_and(|m| m != ctx.model) {
            return false;
        }
        if self.branch.is_some_and(|b| !ctx.layout.has(b)) {
            return false;
        }
        true
    }
}

impl std::fmt::Display for SiteSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(p) = &self.path {
            parts.push(format!("path {p}"));
        }
        if let Some(k) = self.kind {
            parts.push(match k {
                AttentionKind::SelfAttention => "self-attention".to_string(),
                AttentionKind::CrossAttention => "cross-attention".to_string(),
            });
        }
        if let Some(r) = &self.index {
            parts.push(format!("index {}..{}", r.start, r.end));
        }
        if let Some((h, w)) = self.size {
            parts.push(format!("size {h}×{w}"));
        }
        if let Some(d) = self.decoder_min_divisor {
            parts.push(format!("decoder at ≥ latent/{d}"));
        }
        if let Some(r) = &self.steps {
            parts.push(format!("steps {}..{}", r.start, r.end));
        }
        if let Some(p) = self.pass {
            parts.push(format!("{p} passes"));
        }
        if let Some(m) = self.model {
            parts.push(format!("{m:?} model"));
        }
        if let Some(b) = self.branch {
            parts.push(format!("batches with branch {b}"));
        }
        if parts.is_empty() {
            f.write_str("[every site]")
        } else {
            write!(f, "[{}]", parts.join(", "))
        }
    }
}

/// Glob match where `*` matches any (possibly empty) run of characters.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use layret_core::processor::{AttentionKind::*, StepContext};

    fn site(path: &str, kind: AttentionKind, h: usize) -> AttentionSite<'_> {
        AttentionSite {
            path,
            kind,
            index: 3,
            height: h,
            width: h,
            heads: 8,
            head_dim: 40,
            latent_height: 64,
            latent_width: 64,
            upcast: false,
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match(
            "up_blocks.*.attn1",
            "up_blocks.3.attentions.1.transformer_blocks.0.attn1"
        ));
        assert!(!glob_match(
            "up_blocks.*.attn1",
            "up_blocks.3.attentions.1.transformer_blocks.0.attn2"
        ));
        assert!(glob_match("*", ""));
        assert!(glob_match(
            "*attn2",
            "mid_block.attentions.0.transformer_blocks.0.attn2"
        ));
        assert!(!glob_match("down_blocks.*", "mid_block.x"));
        assert!(glob_match("a*b*c", "a--b--b--c"));
    }

    #[test]
    fn selectors() {
        let ctx = StepContext::plain(5, 500.0, 1);
        let up64 = site(
            "up_blocks.3.attentions.0.transformer_blocks.0.attn1",
            SelfAttention,
            64,
        );
        let up32 = site(
            "up_blocks.2.attentions.0.transformer_blocks.0.attn1",
            SelfAttention,
            32,
        );
        let up16 = site(
            "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
            SelfAttention,
            16,
        );
        let down64 = site(
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
            SelfAttention,
            64,
        );
        let swapped = SiteSelector::new().kind(SelfAttention).decoder_at_least(2);
        assert!(swapped.matches(&up64, &ctx) && swapped.matches(&up32, &ctx));
        assert!(!swapped.matches(&up16, &ctx) && !swapped.matches(&down64, &ctx));
        assert!(SiteSelector::new().size(32, 32).matches(&up32, &ctx));
        assert!(
            !SiteSelector::new()
                .kind(CrossAttention)
                .matches(&up32, &ctx)
        );
        assert!(SiteSelector::new().steps(2..10).matches(&up32, &ctx));
        assert!(!SiteSelector::new().steps(0..5).matches(&up32, &ctx));
        assert!(SiteSelector::new().index(0..4).matches(&up32, &ctx));
        assert!(!SiteSelector::new().index(4..9).matches(&up32, &ctx));
        assert!(SiteSelector::new().matches(&down64, &ctx));
        assert!(!SiteSelector::new().pass(Pass::Invert).matches(&up32, &ctx));
        let inv = ctx
            .clone()
            .with_pass(Pass::Invert)
            .with_model(ModelRole::Personalized);
        assert!(
            SiteSelector::new()
                .pass(Pass::Invert)
                .model(ModelRole::Personalized)
                .matches(&up32, &inv)
        );
        assert!(
            !SiteSelector::new()
                .model(ModelRole::Vanilla)
                .matches(&up32, &inv)
        );
        assert!(
            SiteSelector::new()
                .branch(Branch::Main)
                .matches(&up32, &ctx)
        );
        assert!(
            !SiteSelector::new()
                .branch(Branch::Target)
                .matches(&up32, &ctx)
        );
        assert_eq!(
            swapped.to_string(),
            "[self-attention, decoder at ≥ latent/2]"
        );
    }
}
