//! `segnet predict`: label PNGs (indexed colour with the dataset's palette) and colour overlays.

use crate::net::{argmax, logits};
use crate::train::load_for_inference;
use anyhow::{Context, Result};
use datasets::import::decode::decode_rgb;
use datasets::import::voc::voc_palette;
use datasets::{augment, AugmentConfig, Rng as DRng, SampleRef};
use nn::Ctx;
use std::borrow::Cow;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

fn write_png(
    path: &Path,
    w: usize,
    h: usize,
    color: png::ColorType,
    data: &[u8],
    palette: Option<&[[u8; 3]]>,
) -> Result<()> {
    let tmp = path.with_extension("png.tmp");
    let f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut enc = png::Encoder::new(BufWriter::new(f), w as u32, h as u32);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    if let Some(p) = palette {
        enc.set_palette(p.iter().flatten().copied().collect::<Vec<u8>>());
    }
    let mut wr = enc.write_header()?;
    wr.write_image_data(data)?;
    wr.finish()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Predict every image and write `<stem>_label.png` and `<stem>_overlay.png` into `out`.
pub fn run(ckpt: &Path, images: &[PathBuf], out: &Path) -> Result<()> {
    let (mut net, _cfg, names, palette) = load_for_inference(ckpt)?;
    let palette: Vec<[u8; 3]> = palette.unwrap_or_else(voc_palette);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for path in images {
        let (h, w, rgb) = decode_rgb(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let s = SampleRef { name: Cow::Borrowed(""), height: h, width: w, image: &rgb, label: None };
        let a = augment(&s, &AugmentConfig::eval(), &mut DRng::new(0))?;
        let x = crate::net::input(&mut net, a.image, [1, 3, h, w])?;
        let pred = argmax(&logits(&mut net, &x, &mut Ctx::eval())?)?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        write_png(&out.join(format!("{stem}_label.png")), w, h, png::ColorType::Indexed, &pred, Some(&palette))?;
        let mut overlay = rgb.clone();
        for (p, &k) in pred.iter().enumerate() {
            let c = palette.get(k as usize).copied().unwrap_or([255, 255, 255]);
            for ch in 0..3 {
                overlay[p * 3 + ch] = ((overlay[p * 3 + ch] as u16 + c[ch] as u16) / 2) as u8;
            }
        }
        write_png(&out.join(format!("{stem}_overlay.png")), w, h, png::ColorType::Rgb, &overlay, None)?;
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
        println!("{}: {}", path.display(), present.join(", "));
    }
    println!("wrote label and overlay PNGs to {}", out.display());
    Ok(())
}
