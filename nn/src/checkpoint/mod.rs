//! Checkpoints in safetensors: the model's `state_dict` under PyTorch names and layouts (f32
//! weights and statistics, int64 `num_batches_tracked` of shape `[]`), the optimiser's momentum
//! buffers under `optim.momentum_buffer.<param name>`, and the run information (step, generator
//! state, run config, format version, a content checksum) in the `__metadata__` map.
//!
//! A file opens in Python with `safetensors.torch.load_file`; dropping the `optim.` keys leaves a
//! dict that `load_state_dict` of the equivalent torch module accepts.
//!
//! Writes go to `<path>.tmp`, are fsynced, then renamed over `<path>`: a crash leaves either the
//! old file or the new one, never half of one. Reads check the header, the checksum and every
//! tensor's name, dtype and shape, and name the file and the tensors in any error.

mod format;
mod pth;

pub use format::{CheckpointMeta, StateValue, FORMAT, FORMAT_VERSION, MOMENTUM_PREFIX};
pub use pth::{read_pth, PthFile};

use crate::{visit_all, Error, Module, Result, Sgd, Slot};
use engine::Tensor;
use format::{checksum, decode, encode, meta_to_map, parse_meta, Encoded};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Every stored tensor of `model`, by state name (float tensors and counters).
pub fn state_dict<M: Module + ?Sized>(model: &mut M) -> BTreeMap<String, StateValue> {
    ordered_state(model).into_iter().collect()
}

/// The state in visit order (the order reports list names in).
fn ordered_state<M: Module + ?Sized>(model: &mut M) -> Vec<(String, StateValue)> {
    let mut out = Vec::new();
    visit_all(model, |name, slot| {
        let v = match slot {
            Slot::Param(p) => StateValue::Float(p.value.clone()),
            Slot::Buffer(t) => StateValue::Float(t.clone()),
            Slot::Count(c) => StateValue::Count(*c),
        };
        out.push((name.to_string(), v));
    });
    out
}

/// Save `model` (and the optimiser's state, if given) with `meta` to `path`, atomically.
pub fn save_checkpoint<M: Module + ?Sized>(
    path: impl AsRef<Path>,
    model: &mut M,
    optim: Option<&Sgd>,
    meta: &CheckpointMeta,
) -> Result<()> {
    let path = path.as_ref();
    let ordered = ordered_state(model);
    let mut state: BTreeMap<String, StateValue> = ordered.iter().cloned().collect();
    if state.len() != ordered.len() {
        let mut names: Vec<&String> = ordered.iter().map(|(n, _)| n).collect();
        names.sort();
        let dup = names.windows(2).find(|w| w[0] == w[1]).map(|w| w[0].clone()).unwrap_or_default();
        return Err(Error::checkpoint(path, format!("the model reports the state name {dup:?} twice")));
    }
    if let Some(opt) = optim {
        for (name, buf) in opt.momentum_buffers() {
            state.insert(format!("{MOMENTUM_PREFIX}{name}"), StateValue::Float(buf.clone()));
        }
    }
    let encoded: Vec<(String, Encoded)> =
        state.iter().map(|(k, v)| Ok((k.clone(), encode(v)?))).collect::<Result<_>>()?;
    let sum = checksum(encoded.iter().map(|(k, e)| (k.as_str(), e.dtype, e.shape.as_slice(), e.bytes.as_slice())));
    let map = meta_to_map(meta, optim.map(Sgd::steps), sum);
    let bytes = safetensors::serialize(encoded.iter().map(|(k, e)| (k.as_str(), e)), Some(map))
        .map_err(|e| Error::checkpoint(path, format!("cannot serialise: {e}")))?;
    write_atomically(path, &bytes).map_err(|e| Error::checkpoint(path, e.to_string()))
}

/// Write `bytes` to `path` so that a crash never leaves a half-written file: create the parent
/// folder, write a `<path>.tmp` next to it, fsync, rename it over `path`, then (best effort) fsync
/// the folder so the rename itself is durable. Used for checkpoints and for every file a run
/// directory or an experiment writes.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let ctx = |what: String| move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(ctx("cannot create the directory".into()))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(ctx(format!("cannot create {}", tmp.display())))?;
    let written = f
        .write_all(bytes)
        .map_err(ctx(format!("cannot write {}", tmp.display())))
        .and_then(|_| f.sync_all().map_err(ctx(format!("cannot sync {}", tmp.display()))));
    drop(f);
    if let Err(e) = written {
        // Disk full or the like: the temporary file goes, the previous file stays as it was.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(ctx(format!("cannot rename {} over it", tmp.display())))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// A checkpoint read from disk, not yet matched to a model.
#[derive(Clone, Debug)]
pub struct CheckpointData {
    /// Run information (defaults for a plain state dict without our metadata).
    pub meta: CheckpointMeta,
    /// Model tensors by state name.
    pub model: BTreeMap<String, StateValue>,
    /// Optimiser momentum buffers by parameter name.
    pub momentum: BTreeMap<String, Tensor>,
    /// The optimiser's step count, if an optimiser was saved.
    pub optim_steps: Option<u64>,
}

/// Read and verify a checkpoint file: a valid safetensors file, our format and version (or no
/// format at all: a plain state dict), a matching checksum, supported dtypes.
pub fn read_checkpoint(path: impl AsRef<Path>) -> Result<CheckpointData> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::checkpoint(path, format!("cannot read: {e}")))?;
    let invalid = |e: safetensors::SafeTensorError| {
        Error::checkpoint(
            path,
            format!("not a valid safetensors file ({} bytes; truncated or corrupt?): {e}", bytes.len()),
        )
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(invalid)?;
    let st = SafeTensors::deserialize(&bytes).map_err(invalid)?;
    let parsed = parse_meta(path, header.metadata().as_ref())?;
    let views = st.tensors();
    if let Some(expected) = parsed.checksum {
        let found = checksum(views.iter().map(|(k, v)| (k.as_str(), v.dtype(), v.shape(), v.data())));
        if found != expected {
            return Err(Error::checkpoint(
                path,
                format!("checksum mismatch (stored {expected:016x}, computed {found:016x}): the file is corrupt"),
            ));
        }
    }
    let mut data = CheckpointData {
        meta: parsed.meta,
        model: BTreeMap::new(),
        momentum: BTreeMap::new(),
        optim_steps: parsed.optim_steps,
    };
    for (name, v) in views {
        let value = decode(path, &name, v.dtype(), v.shape(), v.data())?;
        match (name.strip_prefix(MOMENTUM_PREFIX), value) {
            (Some(param), StateValue::Float(t)) => {
                data.momentum.insert(param.to_string(), t);
            }
            (Some(_), StateValue::Count(_)) => {
                return Err(Error::checkpoint(path, format!("tensor {name}: a momentum buffer must be a float tensor")))
            }
            (None, value) => {
                data.model.insert(name, value);
            }
        }
    }
    Ok(data)
}

/// How a checkpoint's tensors matched a model's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors copied into the model (and optimiser).
    pub loaded: usize,
    /// Model state the checkpoint lacks (left as it was).
    pub missing: Vec<String>,
    /// Checkpoint tensors the model has no place for (ignored).
    pub unexpected: Vec<String>,
    /// `(name, in the checkpoint, in the model)`: present in both with different shape or kind
    /// (left as it was), e.g. `("classifier.weight", "f32 [21, 256, 1, 1]", "f32 [19, 256, 1, 1]")`.
    pub mismatched: Vec<(String, String, String)>,
}

impl LoadReport {
    /// True when every tensor matched both ways.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn list(f: &mut std::fmt::Formatter<'_>, what: &str, items: &[String]) -> std::fmt::Result {
            const SHOWN: usize = 20;
            if items.is_empty() {
                return Ok(());
            }
            write!(f, "; {} {what}: {}", items.len(), items[..items.len().min(SHOWN)].join(", "))?;
            if items.len() > SHOWN {
                write!(f, ", ... ({} more)", items.len() - SHOWN)?;
            }
            Ok(())
        }
        write!(f, "{} loaded", self.loaded)?;
        list(f, "missing", &self.missing)?;
        list(f, "unexpected", &self.unexpected)?;
        let mis: Vec<String> =
            self.mismatched.iter().map(|(n, c, m)| format!("{n} (checkpoint {c}, model {m})")).collect();
        list(f, "mis-shaped", &mis)
    }
}

/// Load a checkpoint into `model` (and `optim`, if given: its momentum buffers and step count).
///
/// `strict`: every model tensor must be present with the same shape and the file must hold
/// nothing else (momentum buffers must belong to model parameters); otherwise nothing is changed
/// and the error lists every missing, unexpected and mis-shaped tensor by name. Non-strict (e.g.
/// stage-1 weights into the stage-2 model, which has a classifier instead of a projection head):
/// load what matches, leave the rest, and return the report. Floats are converted to the model's
/// dtype. Optimiser tensors are ignored when `optim` is `None`.
pub fn load_checkpoint<M: Module + ?Sized>(
    path: impl AsRef<Path>,
    model: &mut M,
    optim: Option<&mut Sgd>,
    strict: bool,
) -> Result<(CheckpointMeta, LoadReport)> {
    let path = path.as_ref();
    let data = read_checkpoint(path)?;

    // Pass 1: match names and shapes without touching the model.
    let ordered = ordered_state(model);
    let model_state: BTreeMap<&str, &StateValue> = ordered.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let (accepted, mut report) = match_state(&ordered, &data.model);
    let mut momentum = BTreeMap::new();
    if optim.is_some() {
        for (name, mine) in &ordered {
            let Some(buf) = data.momentum.get(name) else { continue };
            match mine {
                StateValue::Float(p) if p.dims() == buf.dims() => {
                    momentum.insert(name.clone(), buf.clone());
                }
                _ => report.mismatched.push((
                    format!("{MOMENTUM_PREFIX}{name}"),
                    StateValue::Float(buf.clone()).describe(),
                    mine.describe(),
                )),
            }
        }
        let strays = data.momentum.keys().filter(|k| !model_state.contains_key(k.as_str()));
        report.unexpected.extend(strays.map(|k| format!("{MOMENTUM_PREFIX}{k}")));
    }
    if strict && !report.is_clean() {
        return Err(Error::checkpoint(path, format!("does not fit the model (strict load): {report}")));
    }

    // Pass 2: copy.
    copy_state(path, model, &accepted)?;
    report.loaded = accepted.len() + momentum.len();
    if let Some(opt) = optim {
        opt.restore(momentum, data.optim_steps.unwrap_or(0));
    }
    Ok((data.meta, report))
}

/// Which of `tensors` fit the model state `ordered` (same name, shape and kind), and the report
/// of the rest: model state they lack, tensors the model has no place for, mis-shaped ones.
fn match_state<'a>(
    ordered: &[(String, StateValue)],
    tensors: &'a BTreeMap<String, StateValue>,
) -> (BTreeMap<String, &'a StateValue>, LoadReport) {
    let mut report = LoadReport::default();
    let mut accepted = BTreeMap::new();
    for (name, mine) in ordered {
        match tensors.get(name) {
            None => report.missing.push(name.clone()),
            Some(theirs) if fits(theirs, mine) => {
                accepted.insert(name.clone(), theirs);
            }
            Some(theirs) => report.mismatched.push((name.clone(), theirs.describe(), mine.describe())),
        }
    }
    let known: std::collections::BTreeSet<&str> = ordered.iter().map(|(n, _)| n.as_str()).collect();
    report.unexpected = tensors.keys().filter(|k| !known.contains(k.as_str())).cloned().collect();
    (accepted, report)
}

/// Copy the `accepted` tensors into the model (floats converted to the model's dtype).
fn copy_state<M: Module + ?Sized>(path: &Path, model: &mut M, accepted: &BTreeMap<String, &StateValue>) -> Result<()> {
    let mut result = Ok(());
    visit_all(model, |name, slot| {
        let Some(v) = accepted.get(name) else { return };
        if result.is_err() {
            return;
        }
        result = match (slot, v) {
            (Slot::Param(p), StateValue::Float(t)) => p.value.assign(t).map_err(Error::from),
            (Slot::Buffer(b), StateValue::Float(t)) => b.assign(t).map_err(Error::from),
            (Slot::Count(c), StateValue::Count(n)) => {
                *c = *n;
                Ok(())
            }
            _ => Err(Error::checkpoint(path, format!("tensor {name}: kind changed during load"))),
        };
    });
    result
}

/// What [`load_state_dict`] of `tensors` would report, without changing the model.
pub fn check_state_dict<M: Module + ?Sized>(model: &mut M, tensors: &BTreeMap<String, StateValue>) -> LoadReport {
    let ordered = ordered_state(model);
    let (accepted, mut report) = match_state(&ordered, tensors);
    report.loaded = accepted.len();
    report
}

/// Load named tensors from any source (e.g. [`read_pth`]) into `model`, non-strictly: what
/// matches by name, shape and kind is copied, the rest is left and reported. `path` is the file
/// they came from, for error messages.
pub fn load_state_dict<M: Module + ?Sized>(
    path: &Path,
    model: &mut M,
    tensors: &BTreeMap<String, StateValue>,
) -> Result<LoadReport> {
    let ordered = ordered_state(model);
    let (accepted, mut report) = match_state(&ordered, tensors);
    copy_state(path, model, &accepted)?;
    report.loaded = accepted.len();
    Ok(report)
}

/// Can `theirs` (from the file) be loaded where the model holds `mine`?
fn fits(theirs: &StateValue, mine: &StateValue) -> bool {
    match (theirs, mine) {
        (StateValue::Float(a), StateValue::Float(b)) => a.dims() == b.dims(),
        (StateValue::Count(_), StateValue::Count(_)) => true,
        _ => false,
    }
}
