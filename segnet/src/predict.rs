//! `segnet predict`: label PNGs (indexed colour with the dataset's palette), colour overlays and,
//! where the ground truth is known (`--labels DIR`, or the records of `--pack`), image | prediction
//! | ground truth side by side.
//!
//! Inputs are files, folders (their `.png`/`.jpg`/`.jpeg` files, sorted, not recursive) and glob
//! patterns (`'data/*.jpg'`, expanded here for shells that do not); the network runs as
//! [`crate::infer`] says (`--window`, `--flip`, `--scales`). Every file is written atomically.

use crate::cli::PredictArgs;
use crate::infer::infer;
use crate::net::argmax;
use crate::train::load_for_inference;
use anyhow::{bail, Context, Result};
use datasets::import::decode::{decode_label_png, decode_rgb};
use datasets::import::voc::voc_palette;
use datasets::{augment, AugmentConfig, Pack, Rng as DRng, SampleRef};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const IMAGE_EXTS: [&str; 3] = ["png", "jpg", "jpeg"];

fn encode_png(w: usize, h: usize, color: png::ColorType, data: &[u8], palette: Option<&[[u8; 3]]>) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut enc = png::Encoder::new(&mut buf, w as u32, h as u32);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    if let Some(p) = palette {
        enc.set_palette(p.iter().flatten().copied().collect::<Vec<u8>>());
    }
    let mut wr = enc.write_header()?;
    wr.write_image_data(data)?;
    wr.finish()?;
    Ok(buf)
}

fn write_png(
    path: &Path,
    w: usize,
    h: usize,
    color: png::ColorType,
    data: &[u8],
    palette: Option<&[[u8; 3]]>,
) -> Result<()> {
    let bytes = encode_png(w, h, color, data, palette)?;
    nn::write_atomically(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn has_image_ext(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The image files named by the command line: files as they are, folders as their images
/// (sorted), glob patterns (`*`, `?`, `[...]`) as their matching files (sorted). A folder with no
/// images, a pattern matching nothing or a path that does not exist is an error naming it; so are
/// two inputs with the same file stem (their outputs would overwrite each other).
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("{}: cannot list the folder", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && has_image_ext(p))
                .collect();
            if v.is_empty() {
                bail!("{}: the folder holds no .png/.jpg/.jpeg images", input.display());
            }
            v.sort();
            out.extend(v);
        } else if input.is_file() {
            out.push(input.clone());
        } else {
            let pat = input.to_string_lossy();
            if !pat.contains(['*', '?', '[']) {
                bail!("{}: no such file or folder", input.display());
            }
            let paths = glob::glob(&pat).map_err(|e| anyhow::anyhow!("{pat}: not a valid glob pattern: {e}"))?;
            let mut v = Vec::new();
            for p in paths {
                let p = p.map_err(|e| anyhow::anyhow!("{pat}: {e}"))?;
                if p.is_file() {
                    v.push(p);
                }
            }
            if v.is_empty() {
                bail!("{pat}: the pattern matches no file");
            }
            v.sort();
            out.extend(v);
        }
    }
    let mut stems: BTreeMap<String, &PathBuf> = BTreeMap::new();
    for p in &out {
        if let Some(prev) = stems.insert(stem_of(p), p) {
            if prev != p {
                bail!(
                    "{} and {} have the same name and would overwrite each other's outputs; predict them into \
                     different --out folders",
                    prev.display(),
                    p.display()
                );
            }
        }
    }
    out.dedup();
    Ok(out)
}

fn stem_of(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into())
}

fn colorize(labels: &[u8], palette: &[[u8; 3]]) -> Vec<u8> {
    labels.iter().flat_map(|&k| palette.get(k as usize).copied().unwrap_or([255, 255, 255])).collect()
}

/// `image | prediction | ground truth` (RGB, `h x (3w + 2 gap)`, white gaps).
pub fn side_by_side(rgb: &[u8], pred: &[u8], gt: &[u8], h: usize, w: usize, palette: &[[u8; 3]]) -> (usize, Vec<u8>) {
    const GAP: usize = 4;
    let panels = [rgb.to_vec(), colorize(pred, palette), colorize(gt, palette)];
    let tw = 3 * w + 2 * GAP;
    let mut out = vec![255u8; h * tw * 3];
    for (i, p) in panels.iter().enumerate() {
        let x0 = i * (w + GAP);
        for y in 0..h {
            out[(y * tw + x0) * 3..(y * tw + x0 + w) * 3].copy_from_slice(&p[y * w * 3..(y + 1) * w * 3]);
        }
    }
    (tw, out)
}

/// One image to predict: where it came from, its pixels and, if known, its ground truth.
struct Input {
    name: String,
    shown: String,
    h: usize,
    w: usize,
    rgb: Vec<u8>,
    gt: Option<Vec<u8>>,
}

fn ground_truth(dir: &Path, stem: &str, h: usize, w: usize) -> Result<Option<Vec<u8>>> {
    let p = dir.join(format!("{stem}.png"));
    if !p.is_file() {
        return Ok(None);
    }
    let (lh, lw, l) = decode_label_png(&p).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
    if (lh, lw) != (h, w) {
        bail!("--labels: {} is {lw}x{lh} but its image is {w}x{h}", p.display());
    }
    Ok(Some(l))
}

/// `segnet predict`: predict every input and write `<stem>_label.png`, `<stem>_overlay.png` and,
/// with ground truth, `<stem>_compare.png` into `--out`.
pub fn run(a: &PredictArgs) -> Result<()> {
    let (mut net, cfg, names, palette) = load_for_inference(&a.checkpoint)?;
    let opts = a.infer.options(cfg.crop)?;
    let palette: Vec<[u8; 3]> = palette.unwrap_or_else(voc_palette);
    if let Some(d) = &a.labels {
        if !d.is_dir() {
            bail!("--labels {}: not a folder", d.display());
        }
    }
    // Inputs first, so a bad path fails before any work.
    let files = expand_inputs(&a.images)?;
    let pack = match &a.pack {
        Some(p) => {
            let pack = Pack::open(p).map_err(|e| anyhow::anyhow!("--pack: {e}"))?;
            if pack.num_classes() != names.len() {
                bail!(
                    "--pack {}: has {} classes but the checkpoint's model predicts {}",
                    p.display(),
                    pack.num_classes(),
                    names.len()
                );
            }
            Some(pack)
        }
        None => None,
    };
    if files.is_empty() && pack.as_ref().is_none_or(|p| p.is_empty()) {
        bail!("nothing to predict: give images, folders or patterns, or --pack with records");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let total = files.len() + pack.as_ref().map_or(0, |p| p.len());
    let load = |i: usize| -> Result<Input> {
        if i < files.len() {
            let path = &files[i];
            let (h, w, rgb) = decode_rgb(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let name = stem_of(path);
            let gt = match &a.labels {
                Some(d) => ground_truth(d, &name, h, w)?,
                None => None,
            };
            Ok(Input { name, shown: path.display().to_string(), h, w, rgb, gt })
        } else {
            let p = pack.as_ref().expect("records only with a pack");
            let k = i - files.len();
            let r = p.record(k)?;
            let name = if r.name.is_empty() { format!("record{k}") } else { r.name.replace(['/', '\\'], "_") };
            let shown = format!("{} record {k} ({})", p.path().display(), r.name);
            Ok(Input { name, shown, h: r.height, w: r.width, rgb: r.image.to_vec(), gt: r.label.map(<[u8]>::to_vec) })
        }
    };
    let mut compared = 0;
    for i in 0..total {
        let Input { name, shown, h, w, rgb, gt } = load(i)?;
        let s = SampleRef { name: Cow::Borrowed(""), height: h, width: w, image: &rgb, label: None };
        let aug = augment(&s, &AugmentConfig::eval(), &mut DRng::new(0))?;
        let x = crate::net::input(&mut net, aug.image, [1, 3, h, w])?;
        let pred = argmax(&infer(&mut net, &x, &opts)?)?;
        write_png(&a.out.join(format!("{name}_label.png")), w, h, png::ColorType::Indexed, &pred, Some(&palette))?;
        let mut overlay = rgb.clone();
        for (p, &k) in pred.iter().enumerate() {
            let c = palette.get(k as usize).copied().unwrap_or([255, 255, 255]);
            for ch in 0..3 {
                overlay[p * 3 + ch] = ((overlay[p * 3 + ch] as u16 + c[ch] as u16) / 2) as u8;
            }
        }
        write_png(&a.out.join(format!("{name}_overlay.png")), w, h, png::ColorType::Rgb, &overlay, None)?;
        let mut counts = vec![0usize; names.len()];
        for &k in &pred {
            if let Some(c) = counts.get_mut(k as usize) {
                *c += 1;
            }
        }
        let present: Vec<String> = counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(k, &c)| format!("{} {:.0}%", names[k], 100.0 * c as f64 / pred.len() as f64))
            .collect();
        let mut line = format!("{shown}: {}", present.join(", "));
        if let Some(gt) = &gt {
            let (tw, cmp) = side_by_side(&rgb, &pred, gt, h, w, &palette);
            write_png(&a.out.join(format!("{name}_compare.png")), tw, h, png::ColorType::Rgb, &cmp, None)?;
            let valid = gt.iter().filter(|&&g| (g as usize) < names.len()).count();
            let right = gt.iter().zip(&pred).filter(|(g, p)| g == p).count();
            if valid > 0 {
                line.push_str(&format!(" (pixel accuracy {:.1}%)", 100.0 * right as f64 / valid as f64));
            }
            compared += 1;
        }
        println!("{line}");
    }
    let what = if compared > 0 {
        format!("label, overlay and (for {compared} with ground truth) image | prediction | ground truth PNGs")
    } else {
        "label and overlay PNGs".into()
    };
    println!("wrote {what} for {total} images to {} (inference: {})", a.out.display(), opts.describe());
    Ok(())
}
