//! The reference branch: DDIM inversion of the subject photo and its per-step keys/values and
//! maps, cached per (model, image, `y_r`, N, knobs) — on disk, memory-mapped and read one step
//! at a time, so that a subject's reference costs no memory that grows with the step count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::tensor::{Device, Tensor};
use layret_attention::{KvPolicy, KvStore};
use layret_core::processor::{Branch, ModelRole, Pass};
use layret_core::progress::{StageProgress, report};
use layret_core::safetensors_writer::{SafetensorsWriter, StoredAs};
use layret_core::weights::{TensorFile, Weights};
use layret_core::{Error, Result};

use crate::hooks::PassHooks;
use crate::models::{BranchPass, Conditioning, ModelPair, recording_pass};
use crate::prompts::SubjectPrompts;
use crate::settings::MethodSettings;
use crate::stage::ProgressFn;

/// Where a reference's keys/values are.
#[derive(Debug)]
enum ReferenceKv {
    /// Held in memory (small runs, tests).
    Memory(KvStore),
    /// In a safetensors file, memory-mapped; each step read when asked for.
    Disk {
        file: Arc<TensorFile>,
        /// The swapped sites, in file order.
        sites: Vec<String>,
        device: Device,
    },
}

/// Everything stage 2 needs of the reference branch.
#[derive(Debug)]
pub struct ReferenceData {
    /// `z^r(t_k)` in sampling order (k = 0 is the noisiest), each `[1, 4, h, w]`.
    pub latents: Vec<Tensor<4>>,
    /// Subject maps per step, `[1, hm·wm]`.
    pub maps: Vec<Tensor<2>>,
    kv: ReferenceKv,
}

impl ReferenceData {
    /// Reference data held in memory.
    pub fn in_memory(latents: Vec<Tensor<4>>, kv: KvStore, maps: Vec<Tensor<2>>) -> Self {
        Self {
            latents,
            maps,
            kv: ReferenceKv::Memory(kv),
        }
    }

    /// The swapped sites' keys/values of step `k` (`[2, H, L, d]`: uncond, cond), as f32 on
    /// the pipeline's device: from memory, or read from the file for this step only.
    pub fn kv_at(&self, k: usize) -> Result<KvStore> {
        match &self.kv {
            ReferenceKv::Memory(kv) => Ok(kv.at_step(k)),
            ReferenceKv::Disk {
                file,
                sites,
                device,
            } => {
                let w = Weights::of(file.clone(), None, device, burn::tensor::DType::F32);
                let mut out = KvStore::new(KvPolicy::KeepF32);
                for site in sites {
                    let read = |kind: &str| -> Result<Tensor<4>> {
                        let key = format!("kv/{k}/{site}/{kind}");
                        let s = file.shape_of(&key).ok_or_else(|| Error::MissingTensor {
                            file: file.path().to_path_buf(),
                            key: key.clone(),
                        })?;
                        let shape = [s[0], s[1], s[2], s[3]];
                        w.tensor(&key, shape)
                    };
                    out.insert(site, k, read("k")?, read("v")?);
                }
                Ok(out)
            }
        }
    }

    /// Whether the keys/values live on disk (memory-mapped) rather than in memory.
    pub fn on_disk(&self) -> bool {
        matches!(self.kv, ReferenceKv::Disk { .. })
    }
}

/// The cache key of a reference: everything its result depends on, serialized field by field
/// into a versioned text (so renaming a Rust field never silently changes it), and the hash
/// of that text naming the file on disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReferenceKey {
    text: String,
}

/// The version line of [`ReferenceKey`]'s text; bump it when the data or its meaning changes.
const KEY_VERSION: &str = "layret-reference-v3";

impl ReferenceKey {
    /// The key of `image` (`[1, 3, H, W]`) under `models`, prompt `y_r` and the settings the
    /// reference branch depends on (N, guidance, negative prompt, mask factor, swap divisor,
    /// the K/V storage precision). Reads the models' files once to fingerprint their content.
    pub fn new(
        models: &ModelPair,
        image: &Tensor<4>,
        reference_prompt: &str,
        settings: &MethodSettings,
    ) -> Result<Self> {
        let dims = image.dims();
        let text = format!(
            "{KEY_VERSION}\nmodel {:016x}\nimage {:016x} {}x{}x{}x{}\nprompt {reference_prompt:?}\nnegative {:?}\nsteps {}\nguidance {:016x}\nmask_factor {}\nswap_divisor {}\nkv {}\n",
            models.fingerprint(),
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
            storage_of(settings).name(),
        );
        let mut text = text;
        if !settings.uses_ddim() {
            // Another branch sampler: the reference is inverted onto its timesteps.
            let ts = crate::sampler::branch_sampler(models, settings)?;
            text.push_str(&format!("timesteps {:?}\n", ts.ddim.timesteps()));
        }
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

/// The precision reference keys/values are stored in: f16 under [`KvPolicy::KeepF16`], else
/// f32 (exact).
fn storage_of(settings: &MethodSettings) -> Storage {
    if settings.kv_policy == KvPolicy::KeepF16 {
        Storage::F16
    } else {
        Storage::F32
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    F32,
    F16,
}

impl Storage {
    fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::F16 => "f16",
        }
    }
}

/// Where a [`ReferenceCache`] keeps its entries.
#[derive(Debug)]
enum Place {
    /// In memory only.
    Memory,
    /// A folder that outlives the process (`--reference-cache DIR`).
    Dir(PathBuf),
    /// A temporary folder inside `parent` (created on first use, removed with the cache).
    Temporary {
        parent: PathBuf,
        dir: Option<tempfile::TempDir>,
    },
}

/// How often a [`ReferenceCache`] found what it was asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Hits (memory or disk).
    pub hits: usize,
    /// Of the hits, those read from disk.
    pub disk_hits: usize,
    /// Misses (computed).
    pub misses: usize,
}

#[derive(Debug)]
struct CacheState {
    entries: HashMap<ReferenceKey, Arc<ReferenceData>>,
    place: Place,
    warnings: Vec<String>,
    stats: CacheStats,
    /// One lock per key being looked up, so a key is computed once even when several
    /// threads ask for it at the same time.
    slots: HashMap<ReferenceKey, Arc<Mutex<()>>>,
}

/// A cache of references (reused across prompts and seeds). Entries live on disk —
/// memory-mapped, one step read at a time — in a folder that later runs reuse
/// ([`with_disk`](Self::with_disk)) or a temporary one ([`new`](Self::new),
/// [`temporary_in`](Self::temporary_in)); [`in_memory`](Self::in_memory) keeps them in RAM.
/// Entries on disk are loaded onto the device of the models that ask for them; an entry that
/// cannot be read (corrupt, truncated, from another version) is recomputed, with a
/// [warning](Self::take_warnings).
///
/// The cache is shared by reference (`&self`, `Send + Sync`): put it in an [`Arc`] and give
/// it to several pipelines (e.g. one per server thread, see
/// [`MultiSourceRetouch::with_cache`](crate::MultiSourceRetouch::with_cache)); a reference
/// asked for by two of them at once is computed once.
#[derive(Debug)]
pub struct ReferenceCache {
    state: Mutex<CacheState>,
}

impl Default for ReferenceCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ReferenceCache {
    /// A cache in a temporary folder under the system's temporary directory (`TMPDIR`),
    /// removed when the cache is dropped.
    pub fn new() -> Self {
        Self::temporary_in(std::env::temp_dir())
    }

    /// A cache in a temporary folder inside `parent` (e.g. the output folder, so a large
    /// reference lands on the same disk), removed when the cache is dropped.
    pub fn temporary_in(parent: impl Into<PathBuf>) -> Self {
        Self::with_place(Place::Temporary {
            parent: parent.into(),
            dir: None,
        })
    }

    /// A cache held in memory only (its keys/values grow with the step count: for small runs).
    pub fn in_memory() -> Self {
        Self::with_place(Place::Memory)
    }

    /// A cache that reads and writes `dir/reference-<hash>.safetensors` and keeps them.
    pub fn with_disk(dir: impl Into<PathBuf>) -> Self {
        Self::with_place(Place::Dir(dir.into()))
    }

    fn with_place(place: Place) -> Self {
        Self {
            state: Mutex::new(CacheState {
                entries: HashMap::new(),
                place,
                warnings: Vec::new(),
                stats: CacheStats::default(),
                slots: HashMap::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hits and misses so far.
    pub fn stats(&self) -> CacheStats {
        self.state().stats
    }

    /// The folder entries are written to (created if needed), or `None` in memory.
    fn folder(&self) -> Result<Option<PathBuf>> {
        let mut st = self.state();
        match &mut st.place {
            Place::Memory => Ok(None),
            Place::Dir(d) => {
                std::fs::create_dir_all(&*d).map_err(|e| Error::io("creating", &*d, e))?;
                Ok(Some(d.clone()))
            }
            Place::Temporary { parent, dir } => {
                if dir.is_none() {
                    std::fs::create_dir_all(&*parent)
                        .map_err(|e| Error::io("creating", &*parent, e))?;
                    *dir = Some(
                        tempfile::Builder::new()
                            .prefix(".layret-reference-")
                            .tempdir_in(&*parent)
                            .map_err(|e| Error::io("creating a folder in", &*parent, e))?,
                    );
                }
                Ok(dir.as_ref().map(|d| d.path().to_path_buf()))
            }
        }
    }

    /// The file of `key` in the persistent cache folder, if the cache has one.
    pub fn file(&self, key: &ReferenceKey) -> Option<PathBuf> {
        match &self.state().place {
            Place::Dir(d) => Some(d.join(key.file_name())),
            _ => None,
        }
    }

    /// Whether `key` is in the cache (in memory, or as a file in the cache folder).
    pub fn contains(&self, key: &ReferenceKey) -> bool {
        let in_memory = self.state().entries.contains_key(key);
        in_memory || self.file(key).is_some_and(|f| f.exists())
    }

    /// Messages about entries that could not be used (and were recomputed), oldest first;
    /// the list is emptied.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut self.state().warnings)
    }

    /// The cached reference of `key`: from memory, else from disk (onto `device`), else
    /// computed (see [`compute_reference`]) and written to disk, atomically, one step at a
    /// time. Callers asking for the same key at the same time wait for one computation.
    pub fn get_or_compute(
        &self,
        key: ReferenceKey,
        device: &Device,
        compute: impl FnOnce(Option<(&Path, &ReferenceKey)>) -> Result<ReferenceData>,
    ) -> Result<Arc<ReferenceData>> {
        let slot = {
            let mut st = self.state();
            if let Some(v) = st.entries.get(&key).cloned() {
                st.stats.hits += 1;
                return Ok(v);
            }
            st.slots.entry(key.clone()).or_default().clone()
        };
        let _computing = slot.lock().unwrap_or_else(|e| e.into_inner());
        // Another caller may have finished it while this one waited.
        {
            let mut st = self.state();
            if let Some(v) = st.entries.get(&key).cloned() {
                st.stats.hits += 1;
                return Ok(v);
            }
        }
        let folder = self.folder()?;
        let file = folder.as_ref().map(|d| d.join(key.file_name()));
        // Other processes (shards of a batch on a shared filesystem) may compute the same
        // entry: one holds the entry's lock file while it checks and computes, the others wait
        // and then read what it wrote. The kernel drops the lock if the holder dies.
        let _cross_process = match &file {
            Some(f) => Some(lock_entry(f)?),
            None => None,
        };
        let cached = match file.as_ref().filter(|f| f.exists()) {
            Some(f) => match load_reference_data(f, &key, device) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.state().warnings.push(format!(
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
                let mut st = self.state();
                st.stats.hits += 1;
                st.stats.disk_hits += 1;
                Arc::new(d)
            }
            None => {
                self.state().stats.misses += 1;
                Arc::new(compute(file.as_deref().map(|f| (f, &key)))?)
            }
        };
        let mut st = self.state();
        st.entries.insert(key.clone(), v.clone());
        st.slots.remove(&key);
        Ok(v)
    }
}

/// An exclusive advisory lock on `<entry>.lock` (created if missing), held until dropped; the
/// lock file is removed on drop, so a cache folder holds only entries once no one works in it.
/// (A process that opened the old lock file just before the removal may then compute
/// alongside a newer one: both write the same entry atomically, so that costs time, never a
/// half-read file.)
struct EntryLock {
    file: std::fs::File,
    path: PathBuf,
}

impl Drop for EntryLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

fn lock_entry(entry: &Path) -> Result<EntryLock> {
    let path = entry.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("creating", &path, e))?;
    file.lock().map_err(|e| Error::io("locking", &path, e))?;
    Ok(EntryLock { file, path })
}

/// The metadata entry holding the [`ReferenceKey`] text in a cache file.
const KEY_METADATA: &str = "layret_reference_key";

/// Read a reference file for `key`, onto `device`: its latents and maps (small) now, its
/// keys/values memory-mapped, read one step at a time. A file written for another key (or
/// by another version), truncated, or missing an entry is an error.
pub fn load_reference_data(
    path: &Path,
    key: &ReferenceKey,
    device: &Device,
) -> Result<ReferenceData> {
    let file = Arc::new(TensorFile::open(path)?);
    let bad = |m: String| Error::invalid("reference cache", format!("{}: {m}", path.display()));
    if file.metadata().get(KEY_METADATA).map(String::as_str) != Some(key.as_str()) {
        return Err(bad(
            "written for another model, image or settings (or by another layret version)".into(),
        ));
    }
    let w = Weights::of(file.clone(), None, device, burn::tensor::DType::F32);
    let shape4 = |k: &str| -> Result<[usize; 4]> {
        match file.shape_of(k) {
            Some(&[a, b, c, d]) => Ok([a, b, c, d]),
            _ => Err(bad(format!("no 4-D entry `{k}`"))),
        }
    };
    let mut latents = Vec::new();
    let mut maps = Vec::new();
    let mut sites = Vec::new();
    for k in 0.. {
        let lk = format!("latents/{k}");
        if !file.contains(&lk) {
            break;
        }
        latents.push(w.tensor(&lk, shape4(&lk)?)?);
        let mk = format!("map/{k}");
        let [_, _, n, l] = shape4(&mk)?;
        maps.push(w.tensor::<4>(&mk, [1, 1, n, l])?.reshape([n, l]));
        let prefix = format!("kv/{k}/");
        let mut step_sites: Vec<String> = file
            .keys()
            .into_iter()
            .filter_map(|f| {
                f.strip_prefix(&prefix)?
                    .strip_suffix("/k")
                    .map(str::to_string)
            })
            .collect();
        step_sites.sort();
        for s in &step_sites {
            for kind in ["k", "v"] {
                shape4(&format!("kv/{k}/{s}/{kind}"))?;
            }
        }
        if k == 0 {
            sites = step_sites;
        } else if step_sites != sites {
            return Err(bad(format!("step {k} records other sites than step 0")));
        }
    }
    if latents.is_empty() || sites.is_empty() {
        return Err(bad("no steps".into()));
    }
    Ok(ReferenceData {
        latents,
        maps,
        kv: ReferenceKv::Disk {
            file,
            sites,
            device: device.clone(),
        },
    })
}

/// What a reference is computed from: the photo, the prompts (`y_r`, `P`) and the settings.
#[derive(Debug, Clone, Copy)]
pub struct ReferenceRequest<'a> {
    /// The reference photo `I_r`, `[1, 3, H, W]` in [-1, 1] at the generation size.
    pub image: &'a Tensor<4>,
    /// The prompts (the reference branch uses `y_r` and the phrase `P`).
    pub prompts: &'a SubjectPrompts,
    /// The method's settings (N, guidance, negative prompt, mask factor, swap divisor, K/V
    /// precision).
    pub settings: &'a MethodSettings,
}

/// Compute the reference branch (docs/method.md): `x = VAE.encode(I_r).mean · s`; DDIM
/// inversion with ε* on `y_r` without CFG (the user's `hooks.invert` on its passes); then, per
/// step k, ε* on `z^r(t_k)` with `y_r` under CFG batching, recording the swapped sites'
/// keys/values and the subject maps (`hooks.reference` on those passes). With `disk`
/// (`(file, key)`), each step's keys/values are written to the file as soon as they are
/// computed (never all held in memory; f16 under [`KvPolicy::KeepF16`]) and the result reads
/// them back from it; without, they are kept in memory.
pub fn compute_reference(
    models: &ModelPair,
    request: &ReferenceRequest,
    disk: Option<(&Path, &ReferenceKey)>,
    hooks: &mut PassHooks,
    progress: &mut ProgressFn,
) -> Result<ReferenceData> {
    let ReferenceRequest {
        image,
        prompts,
        settings,
    } = *request;
    let base = models.base();
    let [_, _, ih, iw] = image.dims();
    let f = base.vae_factor();
    let mask = settings.mask_level(ih / f, iw / f)?;
    let sched = crate::sampler::branch_sampler(models, settings)?.ddim;
    let cond = Conditioning::new(
        models,
        ModelRole::Personalized,
        &prompts.reference,
        &settings.negative_prompt,
        &prompts.phrase,
    )?;
    let x = base.encode_image(image.clone())?;
    // Inversion, ascending timesteps.
    let inverted = models.denoiser(ModelRole::Personalized).invert(
        x,
        &prompts.reference,
        &sched,
        &mut hooks.invert,
        progress,
    )?;
    let n = inverted.len();
    let by_t: HashMap<usize, Tensor<4>> = inverted.into_iter().collect();
    let latents = sched
        .timesteps()
        .iter()
        .map(|t| {
            by_t.get(t).cloned().ok_or_else(|| {
                Error::invalid("reference", format!("no inverted latent at t = {t}"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let storage = storage_of(settings);
    let mut memory_kv = KvStore::new(KvPolicy::KeepF32);
    let mut maps = Vec::with_capacity(n);
    let mut writer: Option<(SafetensorsWriter, Vec<String>)> = None;
    for (k, &t) in sched.timesteps().iter().enumerate() {
        let pass = BranchPass {
            branch: Branch::Reference,
            kind: Pass::Reference,
            step: k,
            timestep: t as f64,
            guidance: settings.guidance,
            conditioning: &cond,
            mask,
            swap_divisor: settings.swap_divisor,
        };
        let rec = recording_pass(
            models,
            &pass,
            latents[k].clone(),
            Some(KvPolicy::KeepF32),
            None,
            &mut hooks.reference,
        )?;
        let (kv, map) = (rec.kv.unwrap_or_default(), rec.map);
        match disk {
            None => {
                memory_kv.extend(kv);
                maps.push(map);
            }
            Some((path, key)) => {
                let mut entries: Vec<(String, Tensor<4>, Tensor<4>)> = kv
                    .entries()
                    .map(|(s, _, kt, vt)| (s.to_string(), kt.clone(), vt.clone()))
                    .collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                if writer.is_none() {
                    // Step 0 tells the shapes of every step: declare the whole file.
                    let sites: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
                    let kv_as = match storage {
                        Storage::F32 => StoredAs::F32,
                        Storage::F16 => StoredAs::F16,
                    };
                    let [mn, ml] = map.dims();
                    let mut decl = Vec::new();
                    for (j, zl) in latents.iter().enumerate() {
                        decl.push((format!("latents/{j}"), StoredAs::F32, zl.dims().to_vec()));
                    }
                    for j in 0..n {
                        decl.push((format!("map/{j}"), StoredAs::F32, vec![1, 1, mn, ml]));
                        for (s, kt, vt) in &entries {
                            decl.push((format!("kv/{j}/{s}/k"), kv_as, kt.dims().to_vec()));
                            decl.push((format!("kv/{j}/{s}/v"), kv_as, vt.dims().to_vec()));
                        }
                    }
                    let mut w = SafetensorsWriter::create(
                        path,
                        decl,
                        &[(KEY_METADATA, key.as_str().to_string())],
                    )?;
                    let names: Vec<String> =
                        (0..latents.len()).map(|j| format!("latents/{j}")).collect();
                    let batch: Vec<(&str, &Tensor<4>)> = names
                        .iter()
                        .map(String::as_str)
                        .zip(latents.iter())
                        .collect();
                    w.write_batch(&batch)?;
                    writer = Some((w, sites));
                }
                let Some((w, sites)) = writer.as_mut() else {
                    unreachable!("the writer was just created")
                };
                if entries.len() != sites.len()
                    || entries.iter().zip(sites.iter()).any(|(e, s)| &e.0 != s)
                {
                    return Err(Error::invalid(
                        "reference",
                        format!("step {k} recorded other sites than step 0"),
                    ));
                }
                // The step's map and keys/values in one batch: one read back per dtype.
                let [mn, ml] = map.dims();
                let map4 = map.clone().reshape([1, 1, mn, ml]);
                let mut names = vec![format!("map/{k}")];
                let mut tensors = vec![&map4];
                for (s, kt, vt) in &entries {
                    names.push(format!("kv/{k}/{s}/k"));
                    tensors.push(kt);
                    names.push(format!("kv/{k}/{s}/v"));
                    tensors.push(vt);
                }
                let batch: Vec<(&str, &Tensor<4>)> =
                    names.iter().map(String::as_str).zip(tensors).collect();
                w.write_batch(&batch)?;
            }
        }
        report(
            progress,
            StageProgress {
                stage: "reference",
                step: k + 1,
                total: n,
            },
        )?;
    }
    match (disk, writer) {
        (Some((path, key)), Some((w, _))) => {
            w.finish()?;
            load_reference_data(path, key, base.device())
        }
        _ => Ok(ReferenceData::in_memory(latents, memory_kv, maps)),
    }
}
