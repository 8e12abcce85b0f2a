//! Augmentation: labels move exactly with the image, padding, flip, colour, normalisation.

use datasets::augment::{apply, plan, PadFill};
use datasets::{augment, AugmentConfig, ColorJitter, Rng, Sample};

/// An image whose red channel is the source column and green the source row (bilinear interpolation
/// of a linear ramp is exact), and a random blocky label map. From any augmented pixel we can read
/// back the exact source position it was sampled at, and check its label is the nearest source label.
fn ramp_sample(h: usize, w: usize, seed: u64) -> Sample {
    let mut rng = Rng::new(seed);
    let blocks: Vec<u8> = (0..64).map(|_| rng.below(5) as u8).collect();
    let mut image = Vec::with_capacity(h * w * 3);
    let mut label = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            image.extend_from_slice(&[x as u8, y as u8, 7]);
            label.push(blocks[(y / 5 % 8) * 8 + x / 3 % 8]);
        }
    }
    Sample { name: "ramp".into(), height: h, width: w, image, label: Some(label) }
}

fn raw(cfg: AugmentConfig) -> AugmentConfig {
    // mean 0, std 1: the output is x/255 and can be mapped back exactly.
    AugmentConfig { mean: [0.0; 3], std: [1.0; 3], ..cfg }
}

#[test]
fn labels_follow_the_image_under_scale_crop_flip() {
    let s = ramp_sample(37, 53, 1);
    let cfg = raw(AugmentConfig::train(41));
    let mut flips = 0;
    let mut checked = 0usize;
    for seed in 0..60 {
        let mut rng = Rng::new(seed);
        let p = plan(s.height, s.width, &cfg, &mut rng);
        flips += p.flip as usize;
        let a = apply(&s.view(), &p, &cfg).unwrap();
        assert_eq!((a.height, a.width, a.image.len(), a.label.len()), (41, 41, 41 * 41 * 3, 41 * 41));
        let plane = 41 * 41;
        let src = s.label.as_ref().unwrap();
        for i in 0..plane {
            let (oy, ox) = (i / 41, i % 41);
            let fx = if p.flip { 40 - ox } else { ox };
            let in_bounds = p.off_y + oy < p.scaled_h && p.off_x + fx < p.scaled_w;
            if !in_bounds {
                assert_eq!(a.label[i], 255, "padding is ignore");
                assert_eq!(a.image[i], 0.0, "mean padding normalises to 0");
                continue;
            }
            let sx = a.image[i] * 255.0;
            let sy = a.image[plane + i] * 255.0;
            assert!((a.image[2 * plane + i] * 255.0 - 7.0).abs() < 1e-3);
            // Skip exact ties between two nearest pixels (f32 rounding decides those).
            if (sx.fract() - 0.5).abs() < 1e-3 || (sy.fract() - 0.5).abs() < 1e-3 {
                continue;
            }
            let (nx, ny) = (sx.round() as usize, sy.round() as usize);
            assert_eq!(a.label[i], src[ny * s.width + nx], "seed {seed} pixel ({ox},{oy})");
            checked += 1;
        }
    }
    assert!(flips > 10 && flips < 50, "flip happens about half the time ({flips}/60)");
    assert!(checked > 40_000);
}

#[test]
fn identity_config_only_normalises() {
    let s = ramp_sample(9, 11, 2);
    let cfg = AugmentConfig::eval();
    let a = augment(&s.view(), &cfg, &mut Rng::new(0)).unwrap();
    assert_eq!((a.height, a.width), (9, 11));
    assert_eq!(&a.label, s.label.as_ref().unwrap());
    let plane = 99;
    for i in 0..plane {
        for c in 0..3 {
            let want = (s.image[i * 3 + c] as f32 / 255.0 - cfg.mean[c]) / cfg.std[c];
            assert!((a.image[c * plane + i] - want).abs() < 1e-5);
        }
    }
}

#[test]
fn flip_mirrors_image_and_label() {
    let s = ramp_sample(6, 10, 3);
    let cfg = raw(AugmentConfig { hflip: true, ..AugmentConfig::eval() });
    let mut rng = Rng::new(0);
    let p = loop {
        let p = plan(6, 10, &cfg, &mut rng);
        if p.flip {
            break p;
        }
    };
    let a = apply(&s.view(), &p, &cfg).unwrap();
    let l = s.label.as_ref().unwrap();
    for y in 0..6 {
        for x in 0..10 {
            assert_eq!(a.label[y * 10 + x], l[y * 10 + 9 - x]);
            assert!((a.image[y * 10 + x] * 255.0 - (9 - x) as f32).abs() < 1e-3);
        }
    }
}

#[test]
fn small_image_is_padded_with_ignore_and_zero_fill() {
    let s = ramp_sample(10, 10, 4);
    let cfg = AugmentConfig { pad: PadFill::Zero, scale: Some((0.5, 0.5)), ..AugmentConfig::train(16) };
    let cfg = AugmentConfig { hflip: false, ..cfg };
    let a = augment(&s.view(), &cfg, &mut Rng::new(5)).unwrap();
    let ignored = a.label.iter().filter(|&&v| v == 255).count();
    assert_eq!(ignored, 16 * 16 - 5 * 5);
    // Zero fill: raw 0 normalised is -mean/std.
    let want = -cfg.mean[0] / cfg.std[0];
    assert!((a.image[15 * 16 + 15] - want).abs() < 1e-6);
}

#[test]
fn colour_jitter_changes_colours_not_labels_and_greyscale_equalises() {
    let s = datasets::synth_sample(&datasets::SynthConfig::default(), 0).unwrap();
    let base = raw(AugmentConfig::eval());
    let grey = AugmentConfig {
        color: Some(ColorJitter { prob: 1.0, grayscale_prob: 1.0, ..ColorJitter::default() }),
        ..base.clone()
    };
    let a0 = augment(&s.view(), &base, &mut Rng::new(1)).unwrap();
    let a1 = augment(&s.view(), &grey, &mut Rng::new(1)).unwrap();
    assert_eq!(a0.label, a1.label);
    assert_ne!(a0.image, a1.image);
    let plane = a1.height * a1.width;
    for i in 0..plane {
        assert!((a1.image[i] - a1.image[plane + i]).abs() < 1e-4);
        assert!((a1.image[i] - a1.image[2 * plane + i]).abs() < 1e-4);
        assert!((0.0..=1.0).contains(&a1.image[i]), "clamped to the valid range");
    }
    // Jitter off (probabilities 0) is exactly the identity.
    let off = AugmentConfig {
        color: Some(ColorJitter { prob: 0.0, grayscale_prob: 0.0, ..ColorJitter::default() }),
        ..base.clone()
    };
    assert_eq!(augment(&s.view(), &off, &mut Rng::new(1)).unwrap(), a0);
    // Random jitter varies across draws.
    let jit =
        AugmentConfig { color: Some(ColorJitter { grayscale_prob: 0.0, prob: 1.0, ..ColorJitter::default() }), ..base };
    let j1 = augment(&s.view(), &jit, &mut Rng::new(2)).unwrap();
    let j2 = augment(&s.view(), &jit, &mut Rng::new(3)).unwrap();
    assert_ne!(j1.image, j2.image);
}

#[test]
fn unlabeled_sample_gets_ignore_labels_and_bad_config_is_rejected() {
    let mut s = ramp_sample(8, 8, 5);
    s.label = None;
    let a = augment(&s.view(), &AugmentConfig::train(8), &mut Rng::new(0)).unwrap();
    assert!(a.label.iter().all(|&v| v == 255));
    for bad in [
        AugmentConfig { crop: Some([0, 4]), ..AugmentConfig::eval() },
        AugmentConfig { scale: Some((2.0, 1.0)), ..AugmentConfig::eval() },
        AugmentConfig { std: [1.0, 0.0, 1.0], ..AugmentConfig::eval() },
    ] {
        assert!(augment(&s.view(), &bad, &mut Rng::new(0)).is_err());
    }
}

#[test]
fn two_views_share_geometry_and_labels_and_differ_only_by_the_colour_map() {
    let s = datasets::synth_sample(&datasets::SynthConfig { height: 40, width: 44, ..Default::default() }, 3).unwrap();
    let jitter = ColorJitter { prob: 1.0, grayscale_prob: 0.0, ..ColorJitter::default() };
    // Scale 0.5-2.0 of a 40x44 image into a 48 crop pads some crops, so padding is covered too.
    let two = raw(AugmentConfig { color: Some(jitter), ..AugmentConfig::contrastive(48) });
    assert!(two.two_views);
    let one_distorted = AugmentConfig { two_views: false, ..two.clone() };
    let plain = AugmentConfig { color: None, two_views: false, ..two.clone() };
    let mut padded = 0;
    for seed in 0..30 {
        let p = plan(s.height, s.width, &two, &mut Rng::new(seed));
        let a = apply(&s.view(), &p, &two).unwrap();
        let d = a.distorted.as_ref().expect("two views");
        assert_eq!(d.len(), a.image.len());
        // The original view: the plan without colour draws the same geometry first, so it is
        // exactly the uncoloured augmentation of the same crop.
        let q = plan(s.height, s.width, &plain, &mut Rng::new(seed));
        assert_eq!(
            (q.scaled_h, q.scaled_w, q.off_y, q.off_x, q.flip),
            (p.scaled_h, p.scaled_w, p.off_y, p.off_x, p.flip)
        );
        let orig = apply(&s.view(), &q, &plain).unwrap();
        assert_eq!((&orig.image, &orig.label, orig.distorted.is_none()), (&a.image, &a.label, true));
        // The distorted view: exactly the single colour-distorted view of the same plan.
        let single = apply(&s.view(), &p, &one_distorted).unwrap();
        assert_eq!((&single.image, &single.label), (d, &a.label));
        assert_ne!(d, &a.image, "seed {seed}: colour jitter with probability 1 changes the colours");
        // Both views pad the same pixels with the same fill.
        let plane = a.height * a.width;
        for i in (0..plane).filter(|&i| a.label[i] == 255) {
            padded += 1;
            for c in 0..3 {
                assert_eq!(a.image[c * plane + i], d[c * plane + i]);
            }
        }
    }
    assert!(padded > 0, "some crop was padded");
    // Deterministic: the same RNG gives the same two views.
    let a = augment(&s.view(), &two, &mut Rng::new(9)).unwrap();
    assert_eq!(augment(&s.view(), &two, &mut Rng::new(9)).unwrap(), a);
}
