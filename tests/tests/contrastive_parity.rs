//! The fused pixel contrastive loss against the naive `N x N` reference
//! (`segnet_tests::contrastive_ref`): loss and full gradient, every mode and form, with ignore pixels,
//! single-pixel classes, images without a valid pixel and all-invalid batches; f32 at 65x65 against
//! f64; several tile blocks (every round of the symmetric schedule); anchors on the exact path next
//! to shifted ones; stability for unnormalised features; determinism across thread counts; bad input.
//! The reduction (per image, or per image pair, then the plain mean over the batch) against a
//! hand-written transcription of the official TensorFlow code, loss and central-difference
//! gradient, where its two images have different valid-pixel counts and where an image or a pair
//! has none.

use engine::ops::contrastive::{batch_sample, cross_image_partners};
use engine::ops::{self, ContrastiveConfig, ContrastiveForm, ContrastiveMode};
use engine::{DType, Error, LabelMap, Rng, Tape, Tensor};
use segnet_tests::contrastive_ref::{random_features, reference, reference_pair, ContrastCase, RefOut};
use segnet_tests::{arbitrary_via_rng, property, Case};

const MODES: [ContrastiveMode; 3] = [ContrastiveMode::WithinImage, ContrastiveMode::CrossImage, ContrastiveMode::Batch];
const FORMS: [ContrastiveForm; 2] = [ContrastiveForm::PerPositive, ContrastiveForm::SupCon];

/// Loss and gradient of the fused op.
fn fused(f: &Tensor, labels: &LabelMap, cfg: &ContrastiveConfig) -> (f64, Vec<f64>) {
    let tape = Tape::new();
    let x = tape.watch(f);
    let loss = ops::pixel_contrastive_loss(&x, labels, cfg).unwrap();
    let v = loss.item().unwrap();
    let g = tape.backward(&loss).unwrap();
    (v, g.get(&x).map(|t| t.to_vec_f64().unwrap()).unwrap_or_else(|| vec![0.0; f.numel()]))
}

/// `|a - b| <= rtol * scale` elementwise, with `scale` the largest reference magnitude (or 1e-300).
fn compare(what: &str, got: (f64, &[f64]), want: &RefOut, rtol: f64) -> Result<(), String> {
    let (loss, grad) = got;
    if (loss - want.loss).abs() > rtol * want.loss.abs().max(1e-300) {
        return Err(format!("{what}: loss {loss:.15e} vs reference {:.15e}", want.loss));
    }
    let scale = want.grad.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    for (k, (a, b)) in grad.iter().zip(&want.grad).enumerate() {
        if (a - b).abs() > rtol * scale {
            return Err(format!("{what}: grad[{k}] {a:.15e} vs reference {b:.15e} (scale {scale:.3e})"));
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
struct Medium(ContrastCase);
impl Case for Medium {
    fn from_rng(rng: &mut Rng) -> Self {
        Medium(ContrastCase::draw(rng, 3, 8, 8, 4))
    }
    fn smaller(&self) -> Vec<Self> {
        self.0.smaller().into_iter().map(Medium).collect()
    }
}
arbitrary_via_rng!(Medium);

fn check_case(c: &ContrastCase, labels: &LabelMap) -> Result<(), String> {
    let fv = c.features();
    let f = Tensor::from_f64_vec(fv.clone(), vec![c.b, c.d, c.h, c.w], DType::F64);
    let got = fused(&f, labels, &c.cfg);
    let want = reference(&fv, c.b, c.d, c.h * c.w, &labels.data, &c.cfg);
    compare(&format!("{:?} {:?}", c.cfg.mode, c.cfg.form), (got.0, &got.1), &want, 1e-10)
}

#[test]
fn fused_matches_naive_on_random_cases() {
    property("contrastive_parity_random", 80, |c: &Medium| check_case(&c.0, &c.0.labels()));
}

#[test]
fn fused_matches_naive_with_singletons_empty_images_and_ignore() {
    let mut rng = Rng::new(11);
    for mode in MODES {
        for form in FORMS {
            for normalised in [true, false] {
                let mut c = ContrastCase::draw(&mut rng, 3, 6, 6, 4);
                (c.b, c.d, c.h, c.w, c.classes, c.ignore_p, c.normalised) = (3, 4, 5, 4, 4, 0.25, normalised);
                (c.cfg.mode, c.cfg.form, c.cfg.classes, c.cfg.max_pixels) = (mode, form, 4, 23);
                let mut labels = c.labels();
                let hw = c.h * c.w;
                // Image 1 has no valid pixel; in image 0 class 3 has exactly one pixel.
                labels.data[hw..2 * hw].fill(255);
                for v in &mut labels.data[..hw] {
                    if *v == 3 {
                        *v = 0;
                    }
                }
                labels.data[5] = 3;
                // Image 2: only singleton classes (so SupCon has no anchor there).
                labels.data[2 * hw..3 * hw].fill(255);
                labels.data[2 * hw] = 0;
                labels.data[2 * hw + 7] = 1;
                check_case(&c, &labels).unwrap();
            }
        }
    }
}

#[test]
fn all_invalid_gives_zero_loss_and_zero_gradient() {
    for mode in MODES {
        for form in FORMS {
            let cfg = ContrastiveConfig { mode, form, classes: 3, ..Default::default() };
            let f = Tensor::from_f64_vec(random_features(2, 3, 12, true, 1), vec![2, 3, 3, 4], DType::F64);
            let labels = LabelMap::new(2, 3, 4, vec![255; 24]).unwrap();
            let (loss, grad) = fused(&f, &labels, &cfg);
            assert_eq!(loss, 0.0, "{mode:?} {form:?}");
            assert!(grad.iter().all(|&g| g == 0.0), "{mode:?} {form:?}");
            // SupCon with every class a singleton also has no anchor.
            let labels =
                LabelMap::new(2, 3, 4, (0..24).map(|i| if i % 12 < 3 { i as u8 % 12 } else { 255 }).collect()).unwrap();
            if form == ContrastiveForm::SupCon && mode == ContrastiveMode::WithinImage {
                let (loss, grad) = fused(&f, &labels, &cfg);
                assert_eq!(loss, 0.0);
                assert!(grad.iter().all(|&g| g == 0.0));
            }
        }
    }
}

/// Loss and gradients (of `[a; b]`) of the fused pair op.
fn fused_pair(ta: &Tensor, la: &LabelMap, tb: &Tensor, lb: &LabelMap, cfg: &ContrastiveConfig) -> (f64, Vec<f64>) {
    let tape = Tape::new();
    let (xa, xb) = (tape.watch(ta), tape.watch(tb));
    let loss = ops::pixel_contrastive_loss_pair(&xa, la, &xb, lb, cfg).unwrap();
    let v = loss.item().unwrap();
    let g = tape.backward(&loss).unwrap();
    let grad_of = |x: &Tensor, t: &Tensor| g.get(x).map(|t| t.to_vec_f64().unwrap()).unwrap_or(vec![0.0; t.numel()]);
    let mut grad = grad_of(&xa, ta);
    grad.extend(grad_of(&xb, tb));
    (v, grad)
}

/// The official code's `compute_contrastive_loss` for one batch element, written out as the
/// TensorFlow code computes it (google-research `supervised_pixel_contrastive_loss`), pixel rows
/// `f` with labels `y` and image ids `img` (negatives only between pixels of one image): per anchor
/// `(sum_j nll_ij pos_ij / max(1e-6, sum_j pos_ij), valid_i)`.
fn official_anchor_terms(f: &[Vec<f64>], y: &[u8], img: &[usize], tau: f64, ignore: u8) -> Vec<(f64, f64)> {
    let n = f.len();
    let ign = |i: usize| y[i] == ignore;
    (0..n)
        .map(|i| {
            let logit = |j: usize| f[i].iter().zip(&f[j]).map(|(a, b)| a * b).sum::<f64>() / tau;
            let valid = |j: usize| if ign(i) || ign(j) { 0.0 } else { 1.0 };
            let pos = |j: usize| if y[i] == y[j] { valid(j) } else { 0.0 };
            let neg = |j: usize| if y[i] != y[j] && img[i] == img[j] { valid(j) } else { 0.0 };
            let exp = |j: usize| logit(j).exp() * valid(j);
            let neg_sum: f64 = (0..n).map(|k| exp(k) * neg(k)).sum();
            let pos_sum: f64 = (0..n).map(pos).sum();
            let nll: f64 = (0..n)
                .map(|j| {
                    let den = exp(j) + neg_sum;
                    let norm = if den == 0.0 { 0.0 } else { exp(j) / den };
                    -(norm * valid(j) + (1.0 - valid(j))).ln() * pos(j) / pos_sum.max(1e-6)
                })
                .sum();
            (nll, if pos_sum == 0.0 { 0.0 } else { 1.0 })
        })
        .collect()
}

/// `sum_i nll_i valid_i / max(1e-6, sum_i valid_i)`: one batch element's loss in the official code.
fn official_element(terms: &[(f64, f64)]) -> f64 {
    let valid: f64 = terms.iter().map(|t| t.1).sum();
    terms.iter().map(|t| t.0 * t.1).sum::<f64>() / valid.max(1e-6)
}

/// Pixel rows of image `i` of `[b, d, hw]` features.
fn image_rows(f: &[f64], i: usize, d: usize, hw: usize) -> Vec<Vec<f64>> {
    (0..hw).map(|p| (0..d).map(|c| f[i * d * hw + c * hw + p]).collect()).collect()
}

/// The official cross-image loss (`cross_image_supervised_pixel_contrastive_loss`): per pair the
/// 2N pixels of image `i` of `a` and image `i` of `b` concatenated, negatives masked to the
/// anchor's image, then `reduce_mean` over the batch.
#[allow(clippy::too_many_arguments)]
fn official_pair(fa: &[f64], fb: &[f64], la: &[u8], lb: &[u8], b: usize, d: usize, hw: usize, tau: f64) -> f64 {
    let elements: Vec<f64> = (0..b)
        .map(|i| {
            let rows: Vec<Vec<f64>> = image_rows(fa, i, d, hw).into_iter().chain(image_rows(fb, i, d, hw)).collect();
            let y: Vec<u8> = la[i * hw..(i + 1) * hw].iter().chain(&lb[i * hw..(i + 1) * hw]).copied().collect();
            let img: Vec<usize> = (0..2 * hw).map(|p| p / hw).collect();
            official_element(&official_anchor_terms(&rows, &y, &img, tau, 255))
        })
        .collect();
    elements.iter().sum::<f64>() / b as f64
}

/// The official within-image loss (`within_image_supervised_pixel_contrastive_loss`) of one view.
fn official_within(f: &[f64], l: &[u8], b: usize, d: usize, hw: usize, tau: f64) -> f64 {
    let elements: Vec<f64> = (0..b)
        .map(|i| {
            let terms =
                official_anchor_terms(&image_rows(f, i, d, hw), &l[i * hw..(i + 1) * hw], &vec![0; hw], tau, 255);
            official_element(&terms)
        })
        .collect();
    elements.iter().sum::<f64>() / b as f64
}

/// `dF` of `loss` at `x` by central differences (f64, small cases).
fn central_differences(x: &[f64], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-5;
    let mut v = x.to_vec();
    (0..x.len())
        .map(|k| {
            v[k] = x[k] + h;
            let up = loss(&v);
            v[k] = x[k] - h;
            let down = loss(&v);
            v[k] = x[k];
            (up - down) / (2.0 * h)
        })
        .collect()
}

#[test]
fn pair_reduction_is_the_official_one_when_valid_counts_differ() {
    // Three pairs of 3x4 images: pair 0 has 12 valid pixels in the first image and 4 in the second
    // (the case where averaging per image and averaging the pair's 2N anchors differ), pair 1 no
    // valid pixel at all (0 that still counts in the mean over the batch), pair 2 none in the first
    // image only.
    let (b, d, h, w, tau) = (3, 4, 3, 4, 0.2);
    let hw = h * w;
    let (fa, fb) = (random_features(b, d, hw, true, 21), random_features(b, d, hw, true, 22));
    let mut la: Vec<u8> = (0..b * hw).map(|g| ((g * 7 + g / 5) % 3) as u8).collect();
    let mut lb: Vec<u8> = (0..b * hw).map(|g| ((g * 5 + 1) % 3) as u8).collect();
    lb[4..hw].fill(255);
    la[hw..2 * hw].fill(255);
    lb[hw..2 * hw].fill(255);
    la[2 * hw..].fill(255);
    let valid = |l: &[u8], i: usize| l[i * hw..(i + 1) * hw].iter().filter(|&&v| v != 255).count();
    assert_eq!([valid(&la, 0), valid(&lb, 0), valid(&la, 2), valid(&lb, 2)], [12, 4, 0, 12]);
    let cfg = ContrastiveConfig { tau, classes: 3, ..Default::default() };
    let (lma, lmb) = (LabelMap::new(b, h, w, la.clone()).unwrap(), LabelMap::new(b, h, w, lb.clone()).unwrap());
    let ta = Tensor::from_f64_vec(fa.clone(), vec![b, d, h, w], DType::F64);
    let tb = Tensor::from_f64_vec(fb.clone(), vec![b, d, h, w], DType::F64);
    let (loss, grad) = fused_pair(&ta, &lma, &tb, &lmb, &cfg);
    let want = official_pair(&fa, &fb, &la, &lb, b, d, hw, tau);
    assert!((loss - want).abs() <= 1e-12 * want.abs(), "fused {loss:.15e} vs official {want:.15e}");
    // The per-image reduction (each image's anchors averaged, then the images that have any) gives
    // a different value here, so the comparison above tells the two apart.
    let per_image = {
        let mut means = vec![];
        for i in 0..b {
            let rows: Vec<Vec<f64>> = image_rows(&fa, i, d, hw).into_iter().chain(image_rows(&fb, i, d, hw)).collect();
            let y: Vec<u8> = la[i * hw..(i + 1) * hw].iter().chain(&lb[i * hw..(i + 1) * hw]).copied().collect();
            let img: Vec<usize> = (0..2 * hw).map(|p| p / hw).collect();
            let terms = official_anchor_terms(&rows, &y, &img, tau, 255);
            means.extend(terms.chunks(hw).filter(|t| t.iter().any(|v| v.1 > 0.0)).map(official_element));
        }
        means.iter().sum::<f64>() / means.len() as f64
    };
    assert!((per_image - want).abs() > 1e-3 * want.abs(), "per-image {per_image} vs official {want}");
    // The gradient of the official form, by central differences over both views.
    let x: Vec<f64> = fa.iter().chain(&fb).copied().collect();
    let n = fa.len();
    let num = central_differences(&x, |v| official_pair(&v[..n], &v[n..], &la, &lb, b, d, hw, tau));
    let scale = num.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    for (k, (a, e)) in grad.iter().zip(&num).enumerate() {
        assert!((a - e).abs() <= 1e-7 * scale, "grad[{k}]: fused {a:.12e} vs official {e:.12e} (scale {scale:.3e})");
    }
    // The naive reference agrees too.
    let reference = reference_pair(&fa, &fb, b, d, hw, &la, &lb, &cfg);
    compare("pair vs reference", (loss, &grad), &reference, 1e-10).unwrap();
}

#[test]
fn within_reduction_counts_images_without_valid_pixels_as_official() {
    // Image 1 has no valid pixel: the official code's mean over the batch counts it as 0.
    let (b, d, h, w, tau) = (3, 4, 3, 4, 0.2);
    let hw = h * w;
    let f = random_features(b, d, hw, true, 23);
    let mut l: Vec<u8> = (0..b * hw).map(|g| ((g * 7 + g / 5) % 3) as u8).collect();
    l[hw..2 * hw].fill(255);
    l[2 * hw + 5..].fill(255);
    let cfg = ContrastiveConfig { tau, classes: 3, ..Default::default() };
    let t = Tensor::from_f64_vec(f.clone(), vec![b, d, h, w], DType::F64);
    let (loss, grad) = fused(&t, &LabelMap::new(b, h, w, l.clone()).unwrap(), &cfg);
    let want = official_within(&f, &l, b, d, hw, tau);
    assert!((loss - want).abs() <= 1e-12 * want.abs(), "fused {loss:.15e} vs official {want:.15e}");
    let num = central_differences(&f, |v| official_within(v, &l, b, d, hw, tau));
    let scale = num.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (k, (a, e)) in grad.iter().zip(&num).enumerate() {
        assert!((a - e).abs() <= 1e-7 * scale, "grad[{k}]: fused {a:.12e} vs official {e:.12e} (scale {scale:.3e})");
    }
    // That is (L_0 + L_2) / 3, not the (L_0 + L_2) / 2 of a mean over the images that have anchors.
    let image = |i: usize| official_within(&f[i * d * hw..(i + 1) * d * hw], &l[i * hw..(i + 1) * hw], 1, d, hw, tau);
    let (l0, l2) = (image(0), image(2));
    assert!(l0 > 0.0 && l2 > 0.0);
    assert!(((l0 + l2) / 3.0 - want).abs() <= 1e-12 * want, "{l0} {l2} {want}");
    let reference = reference(&f, b, d, hw, &l, &cfg);
    compare("within vs reference", (loss, &grad), &reference, 1e-10).unwrap();
}

#[test]
fn pair_matches_naive() {
    property("contrastive_parity_pair", 40, |c: &Medium| {
        let c = &c.0;
        let la = c.labels();
        let mut o = c.clone();
        o.seed ^= 0xabc;
        let lb = o.labels();
        let hw = c.h * c.w;
        let (fa, fb) = (c.features(), random_features(c.b, c.d, hw, c.normalised, o.seed));
        let ta = Tensor::from_f64_vec(fa.clone(), vec![c.b, c.d, c.h, c.w], DType::F64);
        let tb = Tensor::from_f64_vec(fb.clone(), vec![c.b, c.d, c.h, c.w], DType::F64);
        let (v, grad) = fused_pair(&ta, &la, &tb, &lb, &c.cfg);
        let want = reference_pair(&fa, &fb, c.b, c.d, hw, &la.data, &lb.data, &c.cfg);
        compare("pair", (v, &grad), &want, 1e-10)
    });
}

/// Blob-like labels: `classes` vertical bands with some ignore pixels, like resized segmentation maps.
fn band_labels(b: usize, h: usize, w: usize, classes: usize, seed: u64) -> LabelMap {
    let mut rng = Rng::new(seed);
    let data = (0..b * h * w)
        .map(|i| {
            let (img, x) = (i / (h * w), i % w);
            if rng.uniform() < 0.05 {
                255
            } else {
                ((x * classes / w + img) % classes) as u8
            }
        })
        .collect();
    LabelMap::new(b, h, w, data).unwrap()
}

#[test]
fn f32_fused_matches_f64_naive_at_65x65() {
    let (b, d, h, w) = (2, 32, 65, 65);
    let fv = random_features(b, d, h * w, true, 3);
    let labels = band_labels(b, h, w, 5, 4);
    for form in FORMS {
        let cfg = ContrastiveConfig { classes: 5, form, ..Default::default() };
        let f32t = Tensor::from_f64_vec(fv.clone(), vec![b, d, h, w], DType::F32);
        let (loss, grad) = fused(&f32t, &labels, &cfg);
        // The reference sees the f32-rounded inputs, so only the arithmetic differs.
        let rounded: Vec<f64> = fv.iter().map(|&v| v as f32 as f64).collect();
        let want = reference(&rounded, b, d, h * w, &labels.data, &cfg);
        // f32 scores carry ~1e-6 relative error and sums over ~4000 terms; 2e-5 of the largest
        // gradient entry and 1e-5 of the loss are well inside what f32 should reach.
        compare(&format!("f32 {form:?}"), (loss, &grad), &want, 2e-5).unwrap();
    }
}

#[test]
fn several_tile_blocks_match_naive_in_every_mode_and_form() {
    // 24x24 = 576 pixels per image: three blocks, so every round of the symmetric schedule runs
    // (diagonal and off-diagonal tiles); batch mode makes one bag of ~1100 pixels (four blocks).
    let (b, d, h, w) = (2, 5, 24, 24);
    let labels = band_labels(b, h, w, 4, 8);
    for normalised in [true, false] {
        let fv = random_features(b, d, h * w, normalised, 12);
        let f = Tensor::from_f64_vec(fv.clone(), vec![b, d, h, w], DType::F64);
        for mode in MODES {
            for form in FORMS {
                let cfg = ContrastiveConfig { classes: 4, mode, form, ..Default::default() };
                let got = fused(&f, &labels, &cfg);
                let want = reference(&fv, b, d, h * w, &labels.data, &cfg);
                compare(&format!("{mode:?} {form:?} normalised={normalised}"), (got.0, &got.1), &want, 1e-10).unwrap();
            }
        }
    }
}

#[test]
fn f32_several_blocks_match_f64_naive_in_every_mode_and_form() {
    // 37x29 = 1073 pixels per image: five blocks of uneven size, the last not a multiple of the
    // f32 score kernel's 16-pixel panels.
    let (b, d, h, w) = (2, 24, 37, 29);
    let fv = random_features(b, d, h * w, true, 13);
    let rounded: Vec<f64> = fv.iter().map(|&v| v as f32 as f64).collect();
    let labels = band_labels(b, h, w, 5, 9);
    let f = Tensor::from_f64_vec(fv, vec![b, d, h, w], DType::F32);
    for mode in MODES {
        for form in FORMS {
            let cfg = ContrastiveConfig { classes: 5, mode, form, max_pixels: 1500, ..Default::default() };
            let got = fused(&f, &labels, &cfg);
            let want = reference(&rounded, b, d, h * w, &labels.data, &cfg);
            compare(&format!("f32 {mode:?} {form:?}"), (got.0, &got.1), &want, 2e-5).unwrap();
        }
    }
}

#[test]
fn mixed_norms_send_some_anchors_to_the_exact_path_and_agree() {
    // Most pixels unit-norm, one in 23 of norm 6: the bag's common shift is 36/tau ~ 514, so the
    // unit-norm anchors' shifted sums (<= e^-480) fall below the f32 floor (e^-40) and take the
    // exact per-row path; in f64 (floor e^-600) they stay on the shifted path. Both must agree
    // with the naive reference, and tiles mixing the two kinds must give the right gradient.
    use kernels::cpu::contrastive::{forward, Bag, Form, Problem};
    let (b, d, h, w) = (2, 8, 20, 21);
    let hw = h * w;
    let mut fv = random_features(b, d, hw, true, 14);
    // The large pixels share one direction, so those with a large negative of another class sit
    // at the bound (shifted sum ~1) and stay on the shifted path.
    for img in 0..b {
        for p in (0..hw).step_by(23) {
            for c in 0..d {
                fv[img * d * hw + c * hw + p] = 6.0 / (d as f64).sqrt();
            }
        }
    }
    let labels = band_labels(b, h, w, 3, 10);
    for form in FORMS {
        for mode in MODES {
            let cfg = ContrastiveConfig { classes: 3, mode, form, ..Default::default() };
            let want = reference(&fv, b, d, hw, &labels.data, &cfg);
            let got64 = fused(&Tensor::from_f64_vec(fv.clone(), vec![b, d, h, w], DType::F64), &labels, &cfg);
            compare(&format!("f64 {mode:?} {form:?}"), (got64.0, &got64.1), &want, 1e-10).unwrap();
            let rounded: Vec<f64> = fv.iter().map(|&v| v as f32 as f64).collect();
            let want32 = reference(&rounded, b, d, hw, &labels.data, &cfg);
            let got32 = fused(&Tensor::from_f64_vec(fv.clone(), vec![b, d, h, w], DType::F32), &labels, &cfg);
            compare(&format!("f32 {mode:?} {form:?}"), (got32.0, &got32.1), &want32, 1e-4).unwrap();
        }
    }
    // The path taken, seen from the kernel: image 0 as one bag.
    let items: Vec<(u8, u32)> =
        (0..hw).filter(|&p| labels.data[p] != 255).map(|p| (labels.data[p], p as u32)).collect();
    let bags = [Bag::from_pixels(items, None, 0)];
    let f32s: Vec<f32> = fv[..d * hw].iter().map(|&v| v as f32).collect();
    for (form, name) in [(Form::PerPositive, "per-positive"), (Form::SupCon, "supcon")] {
        let p = Problem { feats: &f32s, d, hw, bags: &bags, inv_tau: 1.0 / 0.07, form };
        let st = &forward(&p).states[0];
        let exact = st.exact.iter().filter(|&&e| e).count();
        assert!(exact > 0 && exact < st.exact.len(), "{name}: {exact} of {} anchors exact", st.exact.len());
        let f64s: Vec<f64> = fv[..d * hw].to_vec();
        let p = Problem { feats: &f64s, d, hw, bags: &bags, inv_tau: 1.0 / 0.07, form };
        assert!(forward(&p).states[0].exact.iter().all(|&e| !e), "{name}: f64 stays on the shifted path");
    }
}

#[test]
fn unnormalised_large_scores_stay_finite_and_agree() {
    // Features of norm ~40 with tau 0.07: scores up to ~2e4, far beyond exp's range.
    let (b, d, h, w) = (2, 8, 9, 7);
    let fv: Vec<f64> = random_features(b, d, h * w, true, 9).into_iter().map(|v| 40.0 * v).collect();
    let labels = band_labels(b, h, w, 3, 2);
    for form in FORMS {
        for mode in MODES {
            let cfg = ContrastiveConfig { classes: 3, form, mode, ..Default::default() };
            let (l64, g64) = fused(&Tensor::from_f64_vec(fv.clone(), vec![b, d, h, w], DType::F64), &labels, &cfg);
            let (l32, g32) = fused(&Tensor::from_f64_vec(fv.clone(), vec![b, d, h, w], DType::F32), &labels, &cfg);
            assert!(l64.is_finite() && l32.is_finite() && g32.iter().all(|g| g.is_finite()), "{form:?} {mode:?}");
            assert!(l64 > 100.0, "scores this large give a large loss: {l64}");
            let rel = (l32 - l64).abs() / l64;
            assert!(rel < 1e-4, "{form:?} {mode:?}: f32 loss {l32} vs f64 {l64}");
            let scale = g64.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = g32.iter().zip(&g64).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(err < 1e-3 * scale, "{form:?} {mode:?}: gradient error {err} of scale {scale}");
        }
    }
}

#[test]
fn results_are_bit_identical_across_thread_counts() {
    // 600 pixels per image (three tile blocks, so several rounds run in parallel; batch mode
    // samples 1000 of the 1200 pixels), and five images of 120 pixels (small bags, which run side
    // by side; batch mode's one bag of 500 sampled pixels spans the images).
    for (b, d, h, w, max_pixels) in [(2, 16, 25, 24, 1000), (5, 16, 12, 10, 500)] {
        let f = Tensor::from_f64_vec(random_features(b, d, h * w, true, 5), vec![b, d, h, w], DType::F32);
        let labels = band_labels(b, h, w, 4, 6);
        for mode in MODES {
            let cfg = ContrastiveConfig { classes: 4, mode, max_pixels, ..Default::default() };
            let run = |threads: usize| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| fused(&f, &labels, &cfg))
            };
            let (l1, g1) = run(1);
            let (l3, g3) = run(3);
            assert_eq!(l1.to_bits(), l3.to_bits(), "{b} images, {mode:?}");
            assert!(g1.iter().zip(&g3).all(|(a, b)| a.to_bits() == b.to_bits()), "{b} images, {mode:?}");
        }
    }
}

#[test]
fn batch_sample_and_partners_are_as_documented() {
    let labels = band_labels(3, 10, 10, 4, 1);
    let valid = labels.data.iter().filter(|&&l| l != 255).count();
    let all = batch_sample(&labels, 255, 10_000, 1);
    assert_eq!(all.len(), valid);
    let s = batch_sample(&labels, 255, 50, 1);
    assert_eq!(s.len(), 50);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
    assert!(s.iter().all(|&g| labels.data[g as usize] != 255));
    assert_eq!(s, batch_sample(&labels, 255, 50, 1));
    assert_ne!(s, batch_sample(&labels, 255, 50, 2));
    for b in 2..9 {
        let p = cross_image_partners(b, b as u64);
        let mut q = p.clone();
        q.sort();
        assert_eq!(q, (0..b).collect::<Vec<_>>());
        assert!(p.iter().enumerate().all(|(i, &j)| i != j), "derangement {p:?}");
    }
    assert_eq!(cross_image_partners(1, 3), vec![0]);
}

#[test]
fn cross_image_with_one_image_equals_within_image() {
    let f = Tensor::from_f64_vec(random_features(1, 4, 30, true, 2), vec![1, 4, 5, 6], DType::F64);
    let labels = band_labels(1, 5, 6, 3, 3);
    for form in FORMS {
        let within = ContrastiveConfig { classes: 3, form, ..Default::default() };
        let cross = ContrastiveConfig { mode: ContrastiveMode::CrossImage, ..within.clone() };
        assert_eq!(fused(&f, &labels, &within), fused(&f, &labels, &cross));
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    let f = Tensor::from_f64_vec(random_features(2, 3, 12, true, 1), vec![2, 3, 3, 4], DType::F64);
    let labels = LabelMap::new(2, 3, 4, vec![0; 24]).unwrap();
    let cfg = ContrastiveConfig { classes: 3, ..Default::default() };
    let err = |r: engine::Result<Tensor>| r.expect_err("should fail");
    let e = err(ops::pixel_contrastive_loss(&f, &LabelMap::new(2, 4, 3, vec![0; 24]).unwrap(), &cfg));
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("[2, 3, 3, 4]"), "{e}");
    let e = err(ops::pixel_contrastive_loss(&f.reshape(&[2, 3, 12]).unwrap(), &labels, &cfg));
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let mut bad = labels.clone();
    bad.data[7] = 3;
    let e = err(ops::pixel_contrastive_loss(&f, &bad, &cfg));
    assert!(matches!(e, Error::Invalid { .. }) && e.to_string().contains("label 3"), "{e}");
    for tau in [0.0, -0.1, f64::NAN] {
        let e = err(ops::pixel_contrastive_loss(&f, &labels, &ContrastiveConfig { tau, ..cfg.clone() }));
        assert!(matches!(e, Error::Invalid { .. }) && e.to_string().contains("tau"), "{e}");
    }
    let e = err(ops::pixel_contrastive_loss(&Tensor::zeros(vec![2, 0, 3, 4], DType::F64), &labels, &cfg));
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    let batch = ContrastiveConfig { mode: ContrastiveMode::Batch, max_pixels: 0, ..cfg.clone() };
    assert!(matches!(err(ops::pixel_contrastive_loss(&f, &labels, &batch)), Error::Invalid { .. }));
    let g = Tensor::from_f64_vec(random_features(2, 3, 12, true, 1), vec![2, 3, 4, 3], DType::F64);
    let l2 = LabelMap::new(2, 4, 3, vec![0; 24]).unwrap();
    assert!(matches!(err(ops::pixel_contrastive_loss_pair(&f, &labels, &g, &l2, &cfg)), Error::Shape { .. }));
    let h = f.to_dtype(DType::F32).unwrap();
    assert!(matches!(err(ops::pixel_contrastive_loss_pair(&f, &labels, &h, &labels, &cfg)), Error::DType { .. }));
}
