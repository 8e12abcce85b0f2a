//! PyTorch's `.pth` / `.pt` files as `torch.save` writes them since 1.6: a ZIP archive (stored,
//! uncompressed) holding `<name>/data.pkl`, the pickled object, and `<name>/data/<key>`, one raw
//! little-endian storage per key (e.g. torchvision's `resnet50-0676ba61.pth`). Only tensors are
//! read: no Python object is ever constructed or run ([`pickle`]).
//!
//! The object is usually a state dict (`{name: tensor}`); training checkpoints wrap it as
//! `{"state_dict": ...}` (mmcv / mmsegmentation) or `{"model": ...}`, and [`read_pth`] takes the
//! inner dict then. Entries that are not tensors are listed in [`PthFile::skipped`].

mod pickle;
mod zip;

use super::StateValue;
use crate::{Error, Result};
use engine::Tensor;
use pickle::{TensorRef, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// What a `.pth` file held.
#[derive(Clone, Debug)]
pub struct PthFile {
    /// Tensors by name: f32 and f64 as stored, f16 / bf16 widened to f32, int64 scalars as
    /// counters (`num_batches_tracked`).
    pub tensors: BTreeMap<String, StateValue>,
    /// `(name, why)` of entries that are not loadable tensors (non-tensor values, integer
    /// tensors other than scalars).
    pub skipped: Vec<(String, String)>,
    /// The key the state dict was found under (`state_dict`, `model`), if it was wrapped.
    pub wrapped_in: Option<String>,
}

/// Bytes per element and a converter to f64 for a storage class.
fn element(class: &str) -> Option<(usize, fn(&[u8]) -> f64, bool)> {
    fn f32le(b: &[u8]) -> f64 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64
    }
    fn f64le(b: &[u8]) -> f64 {
        f64::from_le_bytes(b.try_into().expect("8 bytes"))
    }
    fn f16le(b: &[u8]) -> f64 {
        half_to_f32(u16::from_le_bytes([b[0], b[1]])) as f64
    }
    fn bf16le(b: &[u8]) -> f64 {
        f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16) as f64
    }
    fn i64le(b: &[u8]) -> f64 {
        i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64
    }
    // (bytes, convert, is_float)
    Some(match class {
        "FloatStorage" => (4, f32le, true),
        "DoubleStorage" => (8, f64le, true),
        "HalfStorage" => (2, f16le, true),
        "BFloat16Storage" => (2, bf16le, true),
        "LongStorage" => (8, i64le, false),
        _ => return None,
    })
}

/// IEEE binary16 to f32 (subnormals, infinities and NaN included).
fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f32;
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// The elements of `t` in row-major order, gathered through its strides.
fn gather(
    t: &TensorRef,
    storage: &[u8],
    width: usize,
    conv: fn(&[u8]) -> f64,
) -> std::result::Result<Vec<f64>, String> {
    let numel: usize = t.size.iter().product();
    let stored = storage.len() / width;
    if numel == 0 {
        return Ok(Vec::new());
    }
    let last = t.offset + t.size.iter().zip(&t.stride).map(|(&n, &s)| (n - 1) * s).sum::<usize>();
    if last >= stored {
        return Err(format!("reaches element {last} of a storage of {stored}: the file is truncated or corrupt"));
    }
    let mut out = Vec::with_capacity(numel);
    let mut idx = vec![0usize; t.size.len()];
    for _ in 0..numel {
        let e = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.push(conv(&storage[e * width..(e + 1) * width]));
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

/// Read the tensors of a PyTorch zip checkpoint. Errors name the file and what is wrong (not a
/// zip: perhaps the pre-1.6 legacy format; no `data.pkl`; a storage missing or too short).
pub fn read_pth(path: impl AsRef<Path>) -> Result<PthFile> {
    let path = path.as_ref();
    let err = |m: String| Error::checkpoint(path, m);
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if bytes.first() == Some(&0x80) {
        return Err(err("a legacy (pre-1.6, non-zip) PyTorch file: re-save it with a current PyTorch \
             (torch.save(torch.load(f), g)) to read it here"
            .into()));
    }
    let entries = zip::entries(&bytes).map_err(|e| err(format!("not a PyTorch zip checkpoint: {e}")))?;
    let pkls: Vec<&String> = entries.keys().filter(|k| k.ends_with("/data.pkl") || *k == "data.pkl").collect();
    let pkl = match pkls.as_slice() {
        [one] => *one,
        [] => return Err(err("a zip archive without data.pkl: not a PyTorch checkpoint".into())),
        many => return Err(err(format!("several data.pkl entries ({many:?})"))),
    };
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    if let Some(bo) = entries.get(&format!("{prefix}byteorder")) {
        let order = &bytes[bo.offset..bo.offset + bo.size];
        if order != b"little" {
            return Err(err(format!(
                "byte order {:?}: only little-endian files are supported",
                String::from_utf8_lossy(order)
            )));
        }
    }
    let e = entries[pkl];
    let root = pickle::load(&bytes[e.offset..e.offset + e.size]).map_err(|m| err(format!("{pkl}: {m}")))?;
    let Value::Dict(mut items) = root else {
        return Err(err(format!("holds a {} rather than a state dict", kind(&root))));
    };
    let mut wrapped_in = None;
    for key in ["state_dict", "model"] {
        let inner = items.iter().position(|(k, v)| *k == Value::Str(key.into()) && matches!(v, Value::Dict(_)));
        if let Some(i) = inner {
            let Value::Dict(d) = items.swap_remove(i).1 else { unreachable!("matched a dict") };
            items = d;
            wrapped_in = Some(key.to_string());
            break;
        }
    }
    let mut out = PthFile { tensors: BTreeMap::new(), skipped: Vec::new(), wrapped_in };
    for (k, v) in items {
        let Value::Str(name) = k else {
            out.skipped.push((format!("{k:?}"), "a key that is not a string".into()));
            continue;
        };
        let t = match v {
            Value::Tensor(t) => t,
            other => {
                out.skipped.push((name, format!("not a tensor ({})", kind(&other))));
                continue;
            }
        };
        let Some((width, conv, is_float)) = element(&t.dtype) else {
            out.skipped.push((name, format!("unsupported storage type {}", t.dtype)));
            continue;
        };
        let storage_name = format!("{prefix}data/{}", t.key);
        let s = entries
            .get(&storage_name)
            .ok_or_else(|| err(format!("tensor {name}: storage {storage_name} is missing from the archive")))?;
        let data = &bytes[s.offset..s.offset + s.size];
        let values = gather(&t, data, width, conv).map_err(|m| err(format!("tensor {name}: {m}")))?;
        let value = if is_float {
            let tensor = if t.dtype == "DoubleStorage" {
                Tensor::from_vec(values, t.size.clone())
            } else {
                Tensor::from_vec(values.into_iter().map(|x| x as f32).collect::<Vec<f32>>(), t.size.clone())
            };
            StateValue::Float(tensor.map_err(Error::from)?)
        } else if t.size.is_empty() {
            StateValue::Count(values[0] as i64)
        } else {
            out.skipped.push((name, format!("an int64 tensor of shape {:?} (only scalars are read)", t.size)));
            continue;
        };
        out.tensors.insert(name, value);
    }
    Ok(out)
}

fn kind(v: &Value) -> String {
    match v {
        Value::Object(name) => format!("{name} object"),
        Value::Dict(_) => "dict".into(),
        Value::List(_) => "list".into(),
        Value::Tuple(_) => "tuple".into(),
        Value::Tensor(_) => "tensor".into(),
        Value::Str(_) => "str".into(),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => "number".into(),
        _ => format!("{v:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_values() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(half_to_f32(0x7bff), 65504.0);
        assert!(half_to_f32(0x7c00).is_infinite());
        assert!(half_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn strided_views_are_gathered_in_row_major_order() {
        // A 2x3 storage read as its transpose (3x2, strides (1, 3)), offset 0.
        let storage: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let t = TensorRef {
            dtype: "FloatStorage".into(),
            key: "0".into(),
            offset: 0,
            size: vec![3, 2],
            stride: vec![1, 3],
        };
        let (w, conv, _) = element("FloatStorage").unwrap();
        assert_eq!(gather(&t, &storage, w, conv).unwrap(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let past = TensorRef { offset: 1, ..t };
        assert!(gather(&past, &storage, w, conv).unwrap_err().contains("truncated"));
    }
}
