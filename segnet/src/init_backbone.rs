//! `--init-backbone FILE`: start the backbone from weights a user has, e.g. torchvision's ImageNet
//! checkpoints as distributed (`resnet50-0676ba61.pth`, PyTorch's zip format, read by
//! [`nn::read_pth`] without Python), a safetensors state dict, or a segnet checkpoint.
//!
//! Names: our backbone is torchvision's ResNet with the same tensor names under `backbone.`, so a
//! file's `layer1.0.conv1.weight` is our `backbone.layer1.0.conv1.weight`. Wrappers are taken
//! off first: a `module.` prefix (DataParallel) and a `backbone.` prefix (mmsegmentation, segnet's
//! own checkpoints). ImageNet's classifier (`fc.*`) has no place in DeepLabV3+ and is reported as
//! left out. Every backbone tensor must be found with its shape, or the run stops with the report
//! (a half-initialised backbone is nearly always a wrong file or a wrong `--backbone` / `--width`).

use crate::model::ResNet;
use anyhow::{bail, Result};
use nn::{Module, StateValue, Visitor};
use std::collections::BTreeMap;
use std::path::Path;

/// The backbone of a network, alone, under its usual `backbone.` names: what a backbone
/// initialisation or a DenseCL checkpoint gives the next network.
pub struct BackboneOnly<'a>(pub &'a mut ResNet);

impl Module for BackboneOnly<'_> {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.child("backbone", self.0);
    }
}

/// The file's tensors under the names our backbone uses.
fn read_renamed(path: &Path) -> Result<(BTreeMap<String, StateValue>, Vec<String>)> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let (tensors, mut notes) = if is_safetensors {
        (nn::read_checkpoint(path)?.model, Vec::new())
    } else {
        let f = nn::read_pth(path)?;
        let mut notes = Vec::new();
        if let Some(k) = &f.wrapped_in {
            notes.push(format!("state dict taken from the file's {k:?} entry"));
        }
        if !f.skipped.is_empty() {
            notes.push(format!("{} non-tensor entries skipped", f.skipped.len()));
        }
        (f.tensors, notes)
    };
    let mut out = BTreeMap::new();
    let mut stripped = 0;
    for (name, v) in tensors {
        let mut n = name.as_str();
        while let Some(rest) = n.strip_prefix("module.") {
            n = rest;
        }
        if let Some(rest) = n.strip_prefix("backbone.") {
            n = rest;
        }
        if n.len() != name.len() {
            stripped += 1;
        }
        out.insert(format!("backbone.{n}"), v);
    }
    if stripped > 0 {
        notes.push(format!("{stripped} names had a module./backbone. prefix taken off"));
    }
    Ok((out, notes))
}

/// Load `path` into `backbone`. Returns the line for the log: what was loaded and left out.
/// Errors name the file and list what is missing or mis-shaped.
pub fn load(path: &Path, backbone: &mut ResNet) -> Result<String> {
    let (tensors, notes) = read_renamed(path)?;
    let (total, arch) = (tensors.len(), describe_resnet(&tensors));
    let mut probe = BackboneOnly(backbone);
    let wanted: std::collections::BTreeSet<String> = nn::state_names(&mut probe).into_iter().collect();
    let (trial, left): (BTreeMap<_, _>, BTreeMap<_, _>) = tensors.into_iter().partition(|(k, _)| wanted.contains(k));
    if trial.is_empty() {
        let first: Vec<&str> = left.keys().take(5).map(|k| k.trim_start_matches("backbone.")).collect();
        bail!(
            "--init-backbone {}: none of its {total} tensors is a ResNet backbone tensor with torchvision names \
             (conv1.weight, layer1.0.conv1.weight, ...); it has {first:?}",
            path.display()
        );
    }
    // A dry run first: nothing changes unless every backbone tensor fits.
    let dry = nn::check_state_dict(&mut probe, &trial);
    if !dry.missing.is_empty() || !dry.mismatched.is_empty() {
        let what = match arch {
            Some(arch) => format!("the file holds a {arch}"),
            None => "the file is another depth or width".to_string(),
        };
        bail!(
            "--init-backbone {}: does not fit the model's backbone ({what}; torchvision's ImageNet weights \
             need --width 1 and the matching --backbone): {} of {} tensors fit{}",
            path.display(),
            dry.loaded,
            wanted.len(),
            nn::LoadReport { loaded: 0, ..dry }.to_string().trim_start_matches("0 loaded")
        );
    }
    let report = nn::load_state_dict(path, &mut probe, &trial)?;
    let left: Vec<&str> = left.keys().map(|k| k.trim_start_matches("backbone.")).collect();
    let mut line = format!("{} backbone tensors loaded from {}", report.loaded, path.display());
    if !left.is_empty() {
        let shown = &left[..left.len().min(6)];
        line += &format!("; {} left out (no place in DeepLabV3+): {}", left.len(), shown.join(", "));
        if left.len() > shown.len() {
            line += ", ...";
        }
    }
    for n in notes {
        line += &format!("; {n}");
    }
    Ok(line)
}

/// What torchvision ResNet the (renamed) tensors are, from their names and shapes: block type
/// (`conv3` only in bottlenecks), blocks per stage, and the stem's width relative to 64.
fn describe_resnet(t: &BTreeMap<String, StateValue>) -> Option<String> {
    let stem = t.get("backbone.conv1.weight")?.dims();
    let blocks =
        |layer: usize| (0..).take_while(|b| t.contains_key(&format!("backbone.layer{layer}.{b}.conv1.weight"))).count();
    let counts = [blocks(1), blocks(2), blocks(3), blocks(4)];
    let bottleneck = t.contains_key("backbone.layer1.0.conv3.weight");
    let depth = match (bottleneck, counts) {
        (false, [2, 2, 2, 2]) => "resnet18",
        (false, [3, 4, 6, 3]) => "resnet34",
        (true, [3, 4, 6, 3]) => "resnet50",
        (true, [3, 4, 23, 3]) => "resnet101",
        _ => return None,
    };
    let width = *stem.first()? as f64 / 64.0;
    Some(format!("{depth} at width {width}"))
}
