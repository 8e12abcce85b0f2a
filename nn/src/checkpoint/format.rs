//! The byte-level side of checkpoints: tensors to and from safetensors views, the metadata
//! keys, and the content checksum.

use crate::{Error, Result};
use engine::{DType, Element, Rng, Tensor};
use safetensors::tensor::{Dtype, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Value of the `format` metadata key.
pub const FORMAT: &str = "segnet-checkpoint";
/// Value of the `format_version` metadata key this build writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 1;
/// Prefix of the optimiser's momentum buffers among the tensors.
pub const MOMENTUM_PREFIX: &str = "optim.momentum_buffer.";
const EXTRA_PREFIX: &str = "extra.";

/// One stored tensor: a float tensor or an integer counter (int64 scalar).
#[derive(Clone, Debug)]
pub enum StateValue {
    /// f32 or f64 data.
    Float(Tensor),
    /// An int64 scalar of shape `[]` (batch norm's `num_batches_tracked`).
    Count(i64),
}

impl StateValue {
    /// Dimensions as stored.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            StateValue::Float(t) => t.dims().to_vec(),
            StateValue::Count(_) => vec![],
        }
    }
    /// Short description for error messages, e.g. `f32 [64, 3, 7, 7]`.
    pub fn describe(&self) -> String {
        match self {
            StateValue::Float(t) => format!("{:?} {}", t.dtype(), t.shape()).to_lowercase(),
            StateValue::Count(_) => "i64 []".into(),
        }
    }
}

/// A tensor ready to be serialised (owned little-endian bytes).
pub(crate) struct Encoded {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl View for &Encoded {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

pub(crate) fn encode(v: &StateValue) -> Result<Encoded> {
    match v {
        StateValue::Count(c) => Ok(Encoded { dtype: Dtype::I64, shape: vec![], bytes: c.to_le_bytes().to_vec() }),
        StateValue::Float(t) => {
            let t = t.to_device(engine::Device::Cpu)?;
            let (dtype, bytes) = match t.dtype() {
                DType::F32 => {
                    (Dtype::F32, t.cpu_slice::<f32>("checkpoint")?.iter().flat_map(|v| v.to_le_bytes()).collect())
                }
                DType::F64 => {
                    (Dtype::F64, t.cpu_slice::<f64>("checkpoint")?.iter().flat_map(|v| v.to_le_bytes()).collect())
                }
            };
            Ok(Encoded { dtype, shape: t.dims().to_vec(), bytes })
        }
    }
}

pub(crate) fn decode(path: &Path, name: &str, dtype: Dtype, shape: &[usize], bytes: &[u8]) -> Result<StateValue> {
    fn floats<T: Element, const N: usize>(bytes: &[u8], conv: fn([u8; N]) -> T) -> Vec<T> {
        bytes.chunks_exact(N).map(|c| conv(c.try_into().expect("chunks_exact yields N bytes"))).collect()
    }
    let tensor = |v: Result<Tensor, engine::Error>| v.map(StateValue::Float).map_err(Error::from);
    match dtype {
        Dtype::F32 => tensor(Tensor::from_vec(floats(bytes, f32::from_le_bytes), shape.to_vec())),
        Dtype::F64 => tensor(Tensor::from_vec(floats(bytes, f64::from_le_bytes), shape.to_vec())),
        Dtype::I64 if bytes.len() == 8 => Ok(StateValue::Count(i64::from_le_bytes(bytes.try_into().expect("8 bytes")))),
        _ => Err(Error::checkpoint(
            path,
            format!(
                "tensor {name}: dtype {dtype:?} with shape {shape:?} is not supported (f32, f64 or an int64 scalar)"
            ),
        )),
    }
}

/// FNV-1a (64-bit) over every tensor in name order: name, dtype, shape, data. Detects bit rot in
/// the data section, which the safetensors header cannot see. The order is by name, not by file
/// layout, so the sum does not depend on how the writer arranges the data.
pub(crate) fn checksum<'a>(tensors: impl IntoIterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>) -> u64 {
    let mut items: Vec<_> = tensors.into_iter().collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, dtype, shape, data) in items {
        feed(name.as_bytes());
        feed(&[0]);
        feed(format!("{dtype:?}").as_bytes());
        for d in shape {
            feed(&(*d as u64).to_le_bytes());
        }
        feed(data);
    }
    h
}

/// Run information saved beside the tensors (the safetensors `__metadata__` map).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointMeta {
    /// Optimiser steps taken when saved (the schedule position to resume from).
    pub step: u64,
    /// The run's generator, to resume the same random stream.
    pub rng: Option<Rng>,
    /// The run configuration as given by the caller (e.g. TOML or JSON text).
    pub config: String,
    /// Any other strings the caller wants kept (stage name, metrics, ...).
    pub extra: BTreeMap<String, String>,
}

pub(crate) fn meta_to_map(meta: &CheckpointMeta, optim_steps: Option<u64>, sum: u64) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert("format".into(), FORMAT.into());
    m.insert("format_version".into(), FORMAT_VERSION.to_string());
    m.insert("step".into(), meta.step.to_string());
    m.insert("config".into(), meta.config.clone());
    m.insert("checksum_fnv1a64".into(), format!("{sum:016x}"));
    if let Some(rng) = &meta.rng {
        let s = rng.state();
        m.insert("rng_state".into(), format!("{:016x},{:016x},{:016x},{:016x}", s[0], s[1], s[2], s[3]));
    }
    if let Some(n) = optim_steps {
        m.insert("optim_steps".into(), n.to_string());
    }
    for (k, v) in &meta.extra {
        m.insert(format!("{EXTRA_PREFIX}{k}"), v.clone());
    }
    m
}

/// What the metadata map says: the run information, the optimiser's step count and the checksum.
pub(crate) struct ParsedMeta {
    pub meta: CheckpointMeta,
    pub optim_steps: Option<u64>,
    pub checksum: Option<u64>,
}

/// Parse the metadata map. A file without a `format` key is taken as a plain state dict (for
/// example PyTorch weights saved with `safetensors.torch.save_file`): step 0, no generator.
pub(crate) fn parse_meta(path: &Path, map: Option<&HashMap<String, String>>) -> Result<ParsedMeta> {
    let empty = HashMap::new();
    let map = map.unwrap_or(&empty);
    let bad = |key: &str, v: &str| Error::checkpoint(path, format!("metadata {key} = {v:?} is malformed"));
    let mut parsed = ParsedMeta { meta: CheckpointMeta::default(), optim_steps: None, checksum: None };
    let Some(format) = map.get("format") else { return Ok(parsed) };
    if format != FORMAT {
        return Err(Error::checkpoint(path, format!("metadata format {format:?} is not {FORMAT:?}")));
    }
    let version = map.get("format_version").map(String::as_str).unwrap_or("");
    match version.parse::<u32>() {
        Ok(v) if (1..=FORMAT_VERSION).contains(&v) => {}
        Ok(v) => {
            return Err(Error::checkpoint(
                path,
                format!("format version {v} is newer than this build reads ({FORMAT_VERSION})"),
            ))
        }
        Err(_) => return Err(bad("format_version", version)),
    }
    let num = |key: &str| -> Result<Option<u64>> {
        map.get(key).map(|v| v.parse::<u64>().map_err(|_| bad(key, v))).transpose()
    };
    parsed.meta.step = num("step")?.unwrap_or(0);
    parsed.optim_steps = num("optim_steps")?;
    parsed.meta.config = map.get("config").cloned().unwrap_or_default();
    if let Some(v) = map.get("checksum_fnv1a64") {
        parsed.checksum = Some(u64::from_str_radix(v, 16).map_err(|_| bad("checksum_fnv1a64", v))?);
    }
    if let Some(v) = map.get("rng_state") {
        let words: Vec<u64> = v
            .split(',')
            .map(|w| u64::from_str_radix(w, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| bad("rng_state", v))?;
        let words: [u64; 4] = words.try_into().map_err(|_| bad("rng_state", v))?;
        parsed.meta.rng = Some(Rng::from_state(words));
    }
    for (k, v) in map {
        if let Some(k) = k.strip_prefix(EXTRA_PREFIX) {
            parsed.meta.extra.insert(k.to_string(), v.clone());
        }
    }
    Ok(parsed)
}
