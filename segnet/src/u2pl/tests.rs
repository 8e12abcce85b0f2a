use super::*;
use crate::model::{Backbone, ModelSpec};

#[test]
fn percentile_follows_numpys_linear_rule() {
    let v = [4.0f32, 1.0, 3.0, 2.0];
    assert_eq!(percentile(&v, 50.0), Some(2.5));
    assert!((percentile(&v, 80.0).unwrap() - 3.4).abs() < 1e-6);
    assert_eq!(percentile(&v, 0.0), Some(1.0));
    assert_eq!(percentile(&v, 100.0), Some(4.0));
    assert_eq!(percentile(&[], 50.0), None);
}

#[test]
fn the_entropy_split_moves_as_alpha_t_says() {
    // 100 valid pixels with entropies 0..99 (shuffled) and 10 padded pixels of huge entropy.
    let mut ent: Vec<f32> = (0..100).map(|i| ((i * 37) % 100) as f32).collect();
    ent.extend([1e6f32; 10]);
    let valid: Vec<bool> = (0..110).map(|i| i < 100).collect();
    let total = 1000;
    for (t, want_alpha, want_dropped) in [(0, 20.0, 20), (500, 10.0, 10), (750, 5.0, 5), (900, 2.0, 2)] {
        let alpha = alpha_t(20.0, t, total);
        assert!((alpha - want_alpha).abs() < 1e-9, "t={t}: alpha {alpha}");
        let (mask, thr) = unreliable_mask(&ent, &valid, alpha);
        let thr = thr.unwrap();
        // The (100 - alpha)-th percentile of 0..99 is 0.99 (100 - alpha): exactly the top alpha% are at or above it.
        assert!((thr - 0.99 * (100.0 - alpha)).abs() < 1e-4, "t={t}: threshold {thr}");
        assert_eq!(mask.iter().filter(|&&m| m).count(), want_dropped, "t={t}");
        for i in 0..100 {
            assert_eq!(mask[i], ent[i] as f64 >= thr, "pixel {i}");
        }
        assert!(mask[100..].iter().all(|&m| !m), "padding is never unreliable (nor counted)");
    }
    // The threshold rises as alpha_t falls: fewer pixels are unreliable late in the stage.
    let thr = |t| unreliable_mask(&ent, &valid, alpha_t(20.0, t, total)).1.unwrap();
    assert!(thr(0) < thr(400) && thr(400) < thr(800) && thr(800) <= thr(1000));
    assert_eq!(alpha_t(20.0, 1000, 1000), 0.0);
    assert_eq!(unreliable_mask(&ent, &[false; 110], 20.0), (vec![false; 110], None));
}

#[test]
fn the_class_balanced_split_keeps_the_same_share_of_every_class() {
    // Class 0: 50 confident pixels (entropies 0..49); class 1: 10 uncertain ones (entropies
    // 100..109), all above every class-0 entropy; 5 padded pixels of class 1.
    let mut ent: Vec<f32> = (0..50).map(|i| i as f32).collect();
    ent.extend((0..10).map(|i| 100.0 + i as f32));
    ent.extend([1e6f32; 5]);
    let classes: Vec<u8> = (0..65).map(|i| if i < 50 { 0 } else { 1 }).collect();
    let valid: Vec<bool> = (0..65).map(|i| i < 60).collect();
    // The batch-wide split at alpha 20 drops the top 12 of 60: all of class 1 and 2 of class 0.
    let (batch, _) = unreliable_mask(&ent, &valid, 20.0);
    assert_eq!(batch[50..60].iter().filter(|&&m| m).count(), 10);
    assert_eq!(batch[..50].iter().filter(|&&m| m).count(), 2);
    // Per class: the top 20 % of each, 10 of class 0 (entropies 40..49) and 2 of class 1 (108, 109).
    let (mask, thr) = unreliable_mask_per_class(&ent, &valid, &classes, 3, 20.0);
    for i in 0..65 {
        let want = (40..50).contains(&i) || (58..60).contains(&i);
        assert_eq!(mask[i], want, "pixel {i}");
    }
    assert!((thr[0].unwrap() - 39.2).abs() < 1e-4, "class 0 threshold {:?}", thr[0]);
    assert!((thr[1].unwrap() - 107.2).abs() < 1e-4, "class 1 threshold {:?}", thr[1]);
    assert_eq!(thr[2], None, "a class without pixels has no threshold");
    // alpha 0 keeps everything below the per-class maximum, which is itself unreliable (>= rule).
    let (mask, _) = unreliable_mask_per_class(&ent, &valid, &classes, 3, 0.0);
    assert_eq!(mask.iter().filter(|&&m| m).count(), 2);
}

#[test]
fn rank_range_is_clamped_to_the_class_count() {
    let s = U2plSettings::default();
    assert_eq!(s.rank_range(21), (3, 20));
    assert_eq!(s.rank_range(4), (3, 4));
    assert_eq!(s.rank_range(3), (2, 3));
    // The released code's 2-class failure (low = 3 leaves no rank): here rank 1, the other class.
    assert_eq!(s.rank_range(2), (1, 2));
    let wide = U2plSettings { low_rank: 1, high_rank: 3, ..s };
    assert_eq!(wide.rank_range(21), (1, 3));
}

#[test]
fn class_rank_counts_larger_probabilities() {
    // Probabilities of one pixel, stride 1: class 2 is the top, then 0, then 3, then 1.
    let p = [0.3f32, 0.05, 0.5, 0.15];
    assert_eq!([0, 1, 2, 3].map(|c| class_rank(&p, 4, 1, c)), [1, 3, 0, 2]);
    // Ties go to the lower class id.
    let t = [0.5f32, 0.5];
    assert_eq!([class_rank(&t, 2, 1, 0), class_rank(&t, 2, 1, 1)], [0, 1]);
}

/// Probabilities `[n, C, s]` from per-cell rows.
fn probs(rows: &[[f32; 4]]) -> Vec<f32> {
    // One image per row, one cell per image: [n, 4, 1].
    rows.iter().flat_map(|r| r.iter().copied()).collect()
}

#[test]
fn a_pixel_of_known_rank_lands_in_the_right_class_queue() {
    // Cells (one per image): 0 labeled (label 1), 1 labeled (ignore), 2 unlabeled unreliable
    // (pseudo 2), 3 unlabeled reliable (pseudo 0), 4 unlabeled unreliable (pseudo 3).
    let p = probs(&[
        [0.35, 0.4, 0.2, 0.05], // labeled y=1: ranks 0->1, 1->0, 2->2, 3->3
        [0.25, 0.25, 0.25, 0.25],
        [0.3, 0.02, 0.6, 0.08], // pseudo 2: ranks 2->0, 0->1, 3->2, 1->3
        [0.9, 0.05, 0.03, 0.02],
        [0.1, 0.2, 0.3, 0.4], // pseudo 3: ranks 3->0, 2->1, 1->2, 0->3
    ]);
    let labels = [1u8, 255];
    let pseudo = [2u8, 0, 3];
    let (reliable, unreliable) = ([false, true, false], [true, false, true]);
    let g = Grid {
        classes: 4,
        s: 1,
        n_l: 2,
        labels: &labels,
        pseudo: &pseudo,
        reliable: &reliable,
        unreliable: &unreliable,
        probs: &p,
    };
    let sel = select(&g, (3, 4), 0.3);
    // Unlabeled cell 2: class 1 is its rank-3 class, so it is a negative of class 1 alone;
    // cell 4: class 0 is rank 3, a negative of class 0 alone. Labeled cell 0 (y = 1): the classes
    // ranked below 3 that are not its label are 0 and 2.
    assert_eq!(sel.negatives, vec![vec![0, 4], vec![2], vec![0], vec![]]);
    // With [2, 4): cell 2 is also a negative of class 3 (rank 2), cell 4 of class 1 (rank 2),
    // and the labeled cell only of class 0 (rank 1; class 2's rank 2 is no longer below 2).
    let sel2 = select(&g, (2, 4), 0.3);
    assert_eq!(sel2.negatives, vec![vec![0, 4], vec![2, 4], vec![], vec![2]]);
    // Anchors: labeled y=1 with p_1 = 0.4 > 0.3, reliable cell 3 (pseudo 0, p 0.9); the
    // unreliable cells are never anchors and the ignored cell nothing at all.
    assert_eq!(sel.anchors, vec![vec![3], vec![0], vec![], vec![]]);
    assert_eq!(sel.members, sel.anchors);
    // The probability filter drops anchors but not prototype members.
    let strict = select(&g, (3, 4), 0.5);
    assert_eq!(strict.anchors, vec![vec![3], vec![], vec![], vec![]]);
    assert_eq!(strict.members, vec![vec![3], vec![0], vec![], vec![]]);
}

#[test]
fn no_negative_carries_its_label_or_pseudo_label() {
    let mut rng = Rng::new(5);
    for _ in 0..50 {
        let (c_n, s, n_l, n_u) = (2 + rng.below(5), 1 + rng.below(6), 1 + rng.below(3), 1 + rng.below(3));
        let n = n_l + n_u;
        let mut p = vec![0f32; n * c_n * s];
        for b in 0..n {
            for q in 0..s {
                let raw: Vec<f32> = (0..c_n).map(|_| rng.uniform() as f32 + 1e-3).collect();
                let z: f32 = raw.iter().sum();
                for k in 0..c_n {
                    p[(b * c_n + k) * s + q] = raw[k] / z;
                }
            }
        }
        let labels: Vec<u8> =
            (0..n_l * s).map(|_| if rng.uniform() < 0.2 { 255 } else { rng.below(c_n) as u8 }).collect();
        let pseudo: Vec<u8> =
            (0..n_u * s).map(|_| if rng.uniform() < 0.2 { 255 } else { rng.below(c_n) as u8 }).collect();
        let unreliable: Vec<bool> = (0..n_u * s).map(|_| rng.uniform() < 0.5).collect();
        let reliable: Vec<bool> = unreliable.iter().map(|u| !u).collect();
        let g = Grid {
            classes: c_n,
            s,
            n_l,
            labels: &labels,
            pseudo: &pseudo,
            reliable: &reliable,
            unreliable: &unreliable,
            probs: &p,
        };
        let range = U2plSettings::default().rank_range(c_n);
        let sel = select(&g, range, 0.3);
        for c in 0..c_n {
            for &cell in &sel.negatives[c] {
                let own = if cell < n_l * s { labels[cell] } else { pseudo[cell - n_l * s] };
                assert_ne!(own, 255, "an ignored pixel is never a negative");
                assert_ne!(own as usize, c, "class {c}: a negative carrying label {own}");
                if cell >= n_l * s {
                    assert!(unreliable[cell - n_l * s], "only unreliable unlabeled pixels are negatives");
                }
            }
            for &cell in &sel.anchors[c] {
                let own = if cell < n_l * s { labels[cell] } else { pseudo[cell - n_l * s] };
                assert_eq!(own as usize, c);
            }
        }
    }
}

#[test]
fn queues_are_bounded_fifos() {
    let mut q = Queues::new(2, 3, 2);
    assert_eq!(q.bytes(), 2 * 3 * 2 * 4);
    assert!(q.is_empty(0) && q.is_empty(1));
    q.push(1, &[1., 1., 2., 2.]).unwrap();
    assert_eq!((q.len(0), q.len(1)), (0, 2));
    assert_eq!(q.key(1, 1).unwrap(), [2., 2.]);
    assert!(q.key(1, 2).is_err());
    // Two more: capacity 3, the oldest (1) is replaced by 4.
    q.push(1, &[3., 3., 4., 4.]).unwrap();
    assert_eq!(q.len(1), 3);
    let held: Vec<f32> = (0..3).map(|i| q.key(1, i).unwrap()[0]).collect();
    assert_eq!(held, [4., 2., 3.]);
    // More rows than the capacity in one push: only the newest three stay.
    q.push(0, &[5., 5., 6., 6., 7., 7., 8., 8., 9., 9.]).unwrap();
    let mut held: Vec<f32> = (0..3).map(|i| q.key(0, i).unwrap()[0]).collect();
    held.sort_by(f32::total_cmp);
    assert_eq!(held, [7., 8., 9.]);
    assert!(q.push(0, &[1.0]).is_err(), "a partial row is an error");
    // Saved as buffers and counters under <class>.{keys,len,head}.
    let names = nn::state_names(&mut q);
    assert_eq!(names, ["0.keys", "0.len", "0.head", "1.keys", "1.len", "1.head"]);
}

#[test]
fn cutmix_moves_labels_exactly_with_the_image() {
    let (n, h, w) = (3, 10, 12);
    let mut rng = Rng::new(9);
    let mix = (0..20).map(|_| CutMix::draw(n, h, w, 0.5, &mut rng)).find(CutMix::active).unwrap();
    // Image values encode (image, channel, pixel); labels the image.
    let image: Vec<f32> = (0..n * 3 * h * w).map(|i| i as f32).collect();
    let labels: Vec<u8> = (0..n * h * w).map(|i| (i / (h * w)) as u8).collect();
    let (mi, ml) = (mix.apply(&image, 3, h, w), mix.apply(&labels, 1, h, w));
    for b in 0..n {
        let [y0, x0, bh, bw] = mix.boxes[b].unwrap();
        // Half the area, width in (W/2, W).
        assert!(bw > w / 2 && bw < w, "{bw}");
        assert!(((bh * bw) as f64 - (h * w) as f64 / 2.0).abs() <= bw as f64 / 2.0 + 1e-9);
        for y in 0..h {
            for x in 0..w {
                let inside = (y0..y0 + bh).contains(&y) && (x0..x0 + bw).contains(&x);
                let src = if inside { (b + 1) % n } else { b };
                let p = y * w + x;
                assert_eq!(ml[b * h * w + p] as usize, src, "label at image {b} ({y}, {x})");
                for ch in 0..3 {
                    let v = mi[(b * 3 + ch) * h * w + p] as usize;
                    assert_eq!(v, (src * 3 + ch) * h * w + p, "image at {b} {ch} ({y}, {x})");
                }
            }
        }
    }
    // A coarser grid follows the pixel the nearest rule samples: the same as downsampling the
    // mixed labels.
    let (gh, gw) = (3, 4);
    let grid_labels = nearest(&labels, n, [h, w], gh, gw);
    assert_eq!(mix.apply(&grid_labels, 1, gh, gw), nearest(&ml, n, [h, w], gh, gw));
    // No mixing with p = 0, or with a single image.
    assert!(!CutMix::draw(n, h, w, 0.0, &mut rng).active());
    assert!(!CutMix::draw(1, h, w, 1.0, &mut rng).active());
    assert_eq!(CutMix::none(2, h, w).apply(&labels[..2 * h * w], 1, h, w), &labels[..2 * h * w]);
}

fn tiny_net(classes: usize) -> Net {
    let spec = ModelSpec {
        width: 0.125,
        output_stride: 8,
        head_channels: 64,
        aspp_rates: Some([1, 2, 3]),
        ..ModelSpec::new(Backbone::Resnet18, classes)
    };
    let mut n = DeepLabV3Plus::new(&spec, &mut Rng::new(4)).unwrap();
    n.add_projection(&mut Rng::new(5)).unwrap();
    n
}

#[test]
fn ema_copies_and_averages_every_float_tensor() {
    let mut a = tiny_net(3);
    let mut b = DeepLabV3Plus::new(&a.spec.clone(), &mut Rng::new(77)).unwrap();
    b.add_projection(&mut Rng::new(78)).unwrap();
    let before: Vec<f64> = nn::state_dict(&mut a)
        .values()
        .filter_map(|v| match v {
            nn::StateValue::Float(t) => Some(t.to_vec_f64().unwrap()[0]),
            _ => None,
        })
        .collect();
    ema(&mut a, &mut b, 0.5).unwrap();
    let (sa, sb) = (nn::state_dict(&mut a), nn::state_dict(&mut b));
    let mut i = 0;
    for (k, v) in &sa {
        if let (nn::StateValue::Float(x), nn::StateValue::Float(y)) = (v, &sb[k]) {
            let want = 0.5 * before[i] + 0.5 * y.to_vec_f64().unwrap()[0];
            assert!((x.to_vec_f64().unwrap()[0] - want).abs() < 1e-6, "{k}");
            i += 1;
        }
    }
    ema(&mut a, &mut b, 0.0).unwrap();
    for (k, v) in nn::state_dict(&mut a) {
        assert_eq!(format!("{v:?}"), format!("{:?}", nn::state_dict(&mut b)[&k]), "{k} after a copy");
    }
    // A network of another shape is refused.
    let mut other = tiny_net(5);
    assert!(ema(&mut other, &mut b, 0.5).is_err());
}

/// A labeled batch (blocky labels, some ignored) and an unlabeled one (zeros = valid, a padded
/// border as the loader's padding).
fn batches(n: usize, s: usize, classes: usize) -> (Batch, Batch) {
    let mut rng = Rng::new(3);
    let img = |rng: &mut Rng| Tensor::randn([n, 3, s, s], 1.0, DType::F32, rng).to_vec_f32().unwrap();
    let labels = (0..n * s * s)
        .map(|i| {
            let (b, y, x) = (i / (s * s), i / s % s, i % s);
            if (y + x) % 13 == 0 {
                255
            } else {
                ((b + y / 6 + x / 5) % classes) as u8
            }
        })
        .collect();
    let pad = (0..n * s * s).map(|i| if i % s >= s - 3 { 255 } else { 0 }).collect();
    let mk = |images, labels| Batch {
        epoch: 0,
        step: 0,
        indices: (0..n).collect(),
        images,
        image_shape: [n, 3, s, s],
        labels,
        label_shape: [n, s, s],
        distorted: None,
    };
    (mk(img(&mut rng), labels), mk(img(&mut rng), pad))
}

fn cfg(classes_queue: usize) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.u2pl.steps = 10;
    c.u2pl_settings.sup_only_steps = 1;
    c.u2pl_settings.queue_size = classes_queue;
    c.u2pl_settings.cutmix = 1.0;
    c.u2pl_settings.anchors = 16;
    c.u2pl_settings.negatives = 5;
    c
}

#[test]
fn the_step_trains_the_student_only_and_fills_the_queues() {
    let (lb, ub) = batches(2, 32, 3);
    let mut net = tiny_net(3);
    let mut obj = U2pl::new(&cfg(64), 3);
    assert!(obj.loss(&mut net, &lb, 0, &mut Ctx::train(Rng::new(1))).is_err(), "u2pl needs an unlabeled batch");
    obj.start(&mut net).unwrap();
    // Warm-up step: the labeled cross-entropy alone.
    let mut ctx = Ctx::train(Rng::new(1));
    let l0 = obj.loss_semi(&mut net, &lb, &ub, 0, &mut ctx).unwrap();
    let m = obj.step_metrics().unwrap();
    assert_eq!(m["warmup"], true);
    assert!((m["l_sup"].as_f64().unwrap() - l0.item().unwrap()).abs() < 1e-12);
    drop(ctx);
    assert!(obj.state_ref().unwrap().queues.is_empty(0), "no queue pushes during the warm-up");

    // A semi-supervised step: all three terms, gradients for the student's classifier and
    // representation head, none for the teacher.
    let mut ctx = Ctx::train(Rng::new(2));
    let loss = obj.loss_semi(&mut net, &lb, &ub, 1, &mut ctx).unwrap();
    let m = obj.step_metrics().unwrap();
    let (ls, lu, lc) = (m["l_sup"].as_f64().unwrap(), m["l_unsup"].as_f64().unwrap(), m["l_contra"].as_f64().unwrap());
    assert!(lu > 0.0 && lc > 0.0, "{m}");
    assert!((loss.item().unwrap() - (ls + lu + 0.1 * lc)).abs() < 1e-5, "{m}");
    // alpha_1 = 20 (1 - 1/10) = 18: the kept share of the valid (unpadded) pixels is 82%.
    assert!((m["alpha"].as_f64().unwrap() - 18.0).abs() < 1e-9);
    let valid_share = 29.0 / 32.0;
    assert!((m["kept_fraction"].as_f64().unwrap() - 0.82 * valid_share).abs() < 0.01, "{m}");
    assert_eq!(m["cutmix"], true);
    let grads = ctx.backward(&loss).unwrap();
    let mut missing = vec![];
    nn::for_each_param(&mut net, |name, p| {
        if grads.get(p).is_none() {
            missing.push(name.to_string());
        }
    });
    assert!(missing.is_empty(), "no gradient for {missing:?}");
    let st = obj.state.as_mut().unwrap();
    let mut teacher_grads = 0;
    nn::for_each_param(&mut st.teacher, |_, p| teacher_grads += grads.get(p).is_some() as usize);
    assert_eq!(teacher_grads, 0, "the teacher gets no gradients");
    let filled: usize = (0..3).map(|c| st.queues.len(c)).sum();
    assert!(filled > 0, "negatives were queued");
    assert!((0..3).all(|c| st.queues.len(c) <= 64), "queues stay bounded");
}

#[test]
fn the_teacher_follows_the_student_by_ema_and_is_what_evaluations_score() {
    let mut net = tiny_net(3);
    let mut obj = U2pl::new(&cfg(16), 3);
    obj.start(&mut net).unwrap();
    let first = |n: &mut Net| n.head.classifier.as_ref().unwrap().weight.value.to_vec_f64().unwrap()[0];
    let t0 = first(&mut obj.state.as_mut().unwrap().teacher);
    assert_eq!(t0, first(&mut net), "the teacher starts as a copy");
    // Move the student, then step after the warm-up (k = 1 since it: d = min(1 - 1/2, 0.99) = 0.5).
    let w = &mut net.head.classifier.as_mut().unwrap().weight.value;
    *w = ops::affine(w, 1.0, 1.0).unwrap();
    obj.last_step = 2;
    obj.after_step(&mut net).unwrap();
    let t1 = first(&mut obj.state.as_mut().unwrap().teacher);
    assert!((t1 - (0.5 * t0 + 0.5 * (t0 + 1.0))).abs() < 1e-6, "{t0} -> {t1}");
    // Late in the stage the momentum is capped at 0.99.
    obj.last_step = 500;
    obj.after_step(&mut net).unwrap();
    let t2 = first(&mut obj.state.as_mut().unwrap().teacher);
    assert!((t2 - (0.99 * t1 + 0.01 * (t0 + 1.0))).abs() < 1e-6);
    assert_eq!(first(obj.eval_net(&mut net)), t2, "evaluations score the teacher");
    obj.finish(&mut net).unwrap();
    assert_eq!(first(&mut net), t2, "the stage ends with the teacher's weights");
}

/// The features, cell by cell, that `net` gives `images` (`n` images of `s x s`) in `ctx`.
fn cell_features(net: &mut Net, images: Vec<f32>, n: usize, s: usize, ctx: &mut Ctx) -> Vec<Vec<f32>> {
    let x = net::input(net, images, [n, 3, s, s]).unwrap();
    let f = net.features(&x, ctx).unwrap();
    let z = net.project(&f, ctx).unwrap();
    let (dim, cells) = (z.dim(1), z.dim(2) * z.dim(3));
    cells_major(&z.to_vec_f32().unwrap(), n, dim, cells).chunks(dim).map(<[f32]>::to_vec).collect()
}

#[test]
fn labeled_negatives_come_from_the_teacher_or_with_labeled_from_student_from_the_student() {
    let (n, s) = (2, 32);
    let (lb, ub) = batches(n, s, 3);
    for from in [LabeledFrom::Teacher, LabeledFrom::Student] {
        let mut net = tiny_net(3);
        let mut c = cfg(4096);
        c.u2pl_settings.labeled_from = from;
        // No CutMix: the student's batch is [x_l; x_u] as it comes, so its features can be
        // recomputed below with the same dropout draws.
        c.u2pl_settings.cutmix = 0.0;
        let mut obj = U2pl::new(&c, 3);
        obj.start(&mut net).unwrap();
        let both = [lb.images.clone(), ub.images.clone()].concat();
        let student = cell_features(&mut net, both.clone(), 2 * n, s, &mut Ctx::train(Rng::new(2)));
        let teacher = cell_features(&mut obj.state.as_mut().unwrap().teacher, both, 2 * n, s, &mut Ctx::eval());
        let labeled_cells = student.len() / 2;
        obj.loss_semi(&mut net, &lb, &ub, 1, &mut Ctx::train(Rng::new(2))).unwrap();
        let m = obj.step_metrics().unwrap();
        let teacher_images = if from == LabeledFrom::Teacher { 2 * n } else { n };
        assert_eq!(m["teacher_images"], teacher_images, "{from:?}: {m}");
        let st = obj.state_ref().unwrap();
        let (mut from_student, mut from_teacher) = (0, 0);
        for class in 0..3 {
            for i in 0..st.queues.len(class) {
                let key = st.queues.key(class, i).unwrap();
                from_student += student[..labeled_cells].iter().any(|f| f == key) as usize;
                from_teacher += teacher[..labeled_cells].iter().any(|f| f == key) as usize;
            }
        }
        // Train-mode and eval-mode batch norm give different features, so a key matches one side.
        match from {
            LabeledFrom::Teacher => assert!(from_teacher > 0 && from_student == 0, "{from_teacher} / {from_student}"),
            LabeledFrom::Student => assert!(from_student > 0 && from_teacher == 0, "{from_teacher} / {from_student}"),
        }
    }
}
