//! The reference branch: DDIM inversion of the subject photo and its per-step keys/values and
//! maps, cached per (model, image, `y_r`, N).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Device, Tensor};
use layret_attention::{AttentionStore, KvPolicy, KvRecorder, KvStore, Router};
use layret_core::Result;
use layret_core::attention::{BatchLayout, DefaultAttention, StepContext};
use layret_core::scheduler::Scheduler;
use layret_core::stable_diffusion::{Progress, check_finite};

use crate::models::{
    Conditioning, ModelPair, Which, cfg_pass, mask_sites, subject_map, swapped_sites,
};
use crate::settings::MethodSettings;

/// Everything stage 2 needs of the reference branch.
#[derive(Debug, Clone)]
pub struct ReferenceData {
    /// `z^r(t_k)` in sampling order (k = 0 is the noisiest), each `[1, 4, h, w]`.
    pub latents: Vec<Tensor<4>>,
    /// Keys/values of the swapped sites per step (`[2, H, L, d]`: uncond, cond).
    pub kv: KvStore,
    /// Subject maps per step, `[1, hm·wm]`.
    pub maps: Vec<Tensor<2>>,
}

/// The cache key of a reference: everything its result depends on, serialized field by field
/// into a versioned text (so renaming a Rust field never silently changes it), and the hash
/// of that text naming the file on disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReferenceKey {
    text: String,
}

/// The version line of [`ReferenceKey`]'s text; bump it when the data or its meaning changes.
const KEY_VERSION: &str = "layret-reference-v2";

impl ReferenceKey {
    /// The key of `image` (`[1, 3, H, W]`) under `models`, prompt `y_r` and the settings the
    /// reference branch depends on (N, guidance, negative prompt, mask factor, swap divisor).
    /// Reads the models' files once to fingerprint their content.
    pub fn new(
        models: &ModelPair,
        image: &Tensor<4>,
        reference_prompt: &str,
        settings: &MethodSettings,
    ) -> Result<Self> {
        let dims = image.dims();
        let text = format!(
            "{KEY_VERSION}\nmodel {:016x}\nimage {:016x} {}x{}x{}x{}\nprompt {reference_prompt:?}\nnegative {:?}\nsteps {}\nguidance {:016x}\nmask_factor {}\nswap_divisor {}\n",
            models.fingerprint()?,
            layret_core::fingerprint::of_tensor(image)?,
            dims[0],
            dims[1],
            dims[2],
            dims[3],
            settings.negative_prompt,
            settings.steps,
            settings.guidance.to_bits(),
            settings.mask_factor,
            settings.swap_divisor,
        );
        Ok(Self { text })
    }

    /// The serialized key (what the cache file's metadata holds).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The file name of this key in a cache folder.
    pub fn file_name(&self) -> String {
        format!(
            "reference-{:016x}.safetensors",
            layret_core::fingerprint::of_bytes(self.text.as_bytes())
        )
    }
}

/// A cache of references (reused across prompts and seeds): in memory, and optionally in a
/// folder of safetensors files that later runs reuse. Entries on disk are loaded onto the
/// device of the models that ask for them; an entry that cannot be read (corrupt, truncated,
/// from another version) is recomputed, with a [warning](Self::take_warnings).
#[derive(Debug, Default)]
pub struct ReferenceCache {
    entries: HashMap<ReferenceKey, Arc<ReferenceData>>,
    dir: Option<PathBuf>,
    warnings: Vec<String>,
    /// Hits so far (memory or disk).
    pub hits: usize,
    /// Of the hits, those read from disk.
    pub disk_hits: usize,
    /// Misses so far (computed).
    pub misses: usize,
}

impl ReferenceCache {
    /// An empty in-memory cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache that also reads and writes `dir/reference-<hash>.safetensors`.
    pub fn with_disk(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
            ..Self::default()
        }
    }

    /// The file of `key` in the cache folder, if the cache has one.
    pub fn file(&self, key: &ReferenceKey) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(key.file_name()))
    }

    /// Messages about entries that could not be used (and were recomputed), oldest first;
    /// the list is emptied.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// The cached data for `key`: from memory, else from disk (onto `device`), else computed
    /// with `make` (and written to disk, atomically, when a folder is set).
    pub fn get_or_insert(
        &mut self,
        key: ReferenceKey,
        device: &Device,
        make: impl FnOnce() -> Result<ReferenceData>,
    ) -> Result<Arc<ReferenceData>> {
        if let Some(v) = self.entries.get(&key) {
            self.hits += 1;
            return Ok(v.clone());
        }
        let file = self.file(&key);
        let cached = match file.as_ref().filter(|f| f.exists()) {
            Some(f) => match load_reference_data(f, &key, device) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.warnings.push(format!(
                        "reference cache entry {} is unusable ({e}); recomputing it",
                        f.display()
                    ));
                    None
                }
            },
            None => None,
        };
        let v = match cached {
            Some(d) => {
                self.hits += 1;
                self.disk_hits += 1;
                Arc::new(d)
            }
            None => {
                self.misses += 1;
                let data = make()?;
                if let Some(f) = &file {
                    if let Some(dir) = f.parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| layret_core::Error::io("creating", dir, e))?;
                    }
                    save_reference_data(&data, &key, f)?;
                }
                Arc::new(data)
            }
        };
        self.entries.insert(key, v.clone());
        Ok(v)
    }
}

/// The metadata entry holding the [`ReferenceKey`] text in a cache file.
const KEY_METADATA: &str = "layret_reference_key";

/// Write reference data as one safetensors file (f32, atomically): `latents/<k>`, `map/<k>`
/// (as `[1, 1, n, L]`) and `kv/<step>/<site>/k|v`, with `key`'s text in the metadata.
pub fn save_reference_data(data: &ReferenceData, key: &ReferenceKey, path: &Path) -> Result<()> {
    let mut items: Vec<(String, Tensor<4>)> = Vec::new();
    for (k, z) in data.latents.iter().enumerate() {
        items.push((format!("latents/{k}"), z.clone()));
    }
    for (k, m) in data.maps.iter().enumerate() {
        let [n, l] = m.dims();
        items.push((format!("map/{k}"), m.clone().reshape([1, 1, n, l])));
    }
    for (site, step, k, v) in data.kv.entries() {
        items.push((
            format!("kv/{step}/{site}/k"),
            k.clone().cast(burn::tensor::DType::F32),
        ));
        items.push((
            format!("kv/{step}/{site}/v"),
            v.clone().cast(burn::tensor::DType::F32),
        ));
    }
    let refs: Vec<(&str, Tensor<4>)> = items.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    layret_core::noise::save_tensors_with_metadata(
        path,
        &refs,
        &[(KEY_METADATA, key.as_str().to_string())],
    )
}

/// Read what [`save_reference_data`] wrote for `key`, onto `device`. A file written for
/// another key (or by another version) is an error, as is any entry it does not expect.
pub fn load_reference_data(
    path: &Path,
    key: &ReferenceKey,
    device: &Device,
) -> Result<ReferenceData> {
    let w = layret_core::weights::Weights::open(path, device)?;
    let bad = |k: &str| {
        layret_core::Error::invalid(
            "reference cache",
            format!("{}: unexpected entry `{k}`", path.display()),
        )
    };
    if w.metadata().get(KEY_METADATA).map(String::as_str) != Some(key.as_str()) {
        return Err(layret_core::Error::invalid(
            "reference cache",
            format!(
                "{}: written for another model, image or settings (or by another layret version)",
                path.display()
            ),
        ));
    }
    let mut latents = Vec::new();
    let mut maps = Vec::new();
    let mut kv = KvStore::new(KvPolicy::KeepF32);
    let mut pending: HashMap<(usize, String), (Option<Tensor<4>>, Option<Tensor<4>>)> =
        HashMap::new();
    for key in w.keys() {
        let s = w.shape_of(&key).map(<[usize]>::to_vec).unwrap_or_default();
        let [a, b, c, d] = s[..] else {
            return Err(bad(&key));
        };
        let t: Tensor<4> = w.tensor(&key, [a, b, c, d])?;
        let parts: Vec<&str> = key.splitn(3, '/').collect();
        match parts.as_slice() {
            ["latents", k] => latents.push((k.parse::<usize>().map_err(|_| bad(&key))?, t)),
            ["map", k] => maps.push((
                k.parse::<usize>().map_err(|_| bad(&key))?,
                t.reshape([c, d]),
            )),
            ["kv", step, rest] => {
                let (site, kind) = rest.rsplit_once('/').ok_or_else(|| bad(&key))?;
                let e = pending
                    .entry((step.parse().map_err(|_| bad(&key))?, site.to_string()))
                    .or_default();
                match kind {
                    "k" => e.0 = Some(t),
                    "v" => e.1 = Some(t),
                    _ => return Err(bad(&key)),
                }
            }
            _ => return Err(bad(&key)),
        }
    }
    for ((step, site), (k, v)) in pending {
        match (k, v) {
            (Some(k), Some(v)) => kv.insert(&site, step, k, v),
            _ => return Err(bad(&site)),
        }
    }
    latents.sort_by_key(|(k, _)| *k);
    maps.sort_by_key(|(k, _)| *k);
    Ok(ReferenceData {
        latents: latents.into_iter().map(|(_, t)| t).collect(),
        kv,
        maps: maps.into_iter().map(|(_, t)| t).collect(),
    })
}

/// Compute the reference branch (METHOD.md): `x = VAE.encode(I_r).mean · s`; DDIM inversion
/// with ε* on `y_r` without CFG; then, per step k, ε* on `z^r(t_k)` with `y_r` under CFG
/// batching, recording the swapped sites' keys/values and the subject maps.
pub fn compute_reference(
    models: &ModelPair,
    image: &Tensor<4>,
    prompts: &crate::prompts::SubjectPrompts,
    settings: &MethodSettings,
    mask: (usize, usize),
    progress: &mut dyn FnMut(Progress),
) -> Result<ReferenceData> {
    let sched = models.base.ddim(settings.steps, 0.0)?;
    let cond = Conditioning::new(
        models,
        Which::Personal,
        &prompts.reference,
        &settings.negative_prompt,
        &prompts.phrase,
    )?;
    let unet = models.unet(Which::Personal);
    let mut x = models.base.encode_image(image.clone())?;
    unet.check_inputs(&x, &cond.cond)?;
    // Inversion, ascending timesteps.
    let inv_ts = sched.inversion_timesteps();
    let n = inv_ts.len();
    let mut by_t = HashMap::new();
    for (j, &t) in inv_ts.iter().enumerate() {
        let ctx = StepContext {
            step: n - 1 - j,
            timestep: t as f64,
            layout: BatchLayout::single("reference", 1, false),
        };
        let eps = unet.forward(x.clone(), t as f64, &cond.cond, &mut DefaultAttention, &ctx);
        x = sched.inversion_step(eps, t, x);
        check_finite(&x, "inverted reference latents", j)?;
        by_t.insert(t, x.clone());
        progress(Progress {
            stage: "invert",
            step: j + 1,
            total: n,
        });
    }
    let mut latents = Vec::with_capacity(n);
    let mut kv = KvStore::new(KvPolicy::KeepF32);
    let mut maps = Vec::with_capacity(n);
    for (k, &t) in sched.timesteps().iter().enumerate() {
        let z = by_t.get(&t).cloned().ok_or_else(|| {
            layret_core::Error::invalid("reference", format!("no inverted latent at t = {t}"))
        })?;
        let mut store = AttentionStore::new(true);
        {
            let mut recorder = KvRecorder::new(&mut kv);
            let mut router = Router::new();
            router.route(swapped_sites(settings.swap_divisor), &mut recorder);
            router.route(mask_sites(mask.0, mask.1), &mut store);
            cfg_pass(
                models,
                &cond,
                z.clone(),
                t as f64,
                k,
                settings.guidance,
                "reference",
                &mut router,
            )?;
        }
        maps.push(subject_map(&store, k, mask, &cond.tokens)?);
        latents.push(z);
        progress(Progress {
            stage: "reference",
            step: k + 1,
            total: n,
        });
    }
    Ok(ReferenceData { latents, kv, maps })
}
