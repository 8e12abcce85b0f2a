//! DenseCL (Wang et al., "Dense Contrastive Learning for Self-Supervised Visual Pre-Training",
//! CVPR 2021) as a stage objective: label-free pretraining of the backbone on every training
//! image, then fine-tuning as after the contrastive stage. Notes with every setting:
//! `shared/research/densecl-u2pl.md` part 1.
//!
//! Per step, for a batch of `N` un-augmented crops (labels never read):
//!
//! 1. **Views** ([`views`]): two independent MoCo-v2 draws per crop (random resized crop with
//!    area in `[min_scale, 1]`, flip, jitter p 0.8, grayscale p 0.2, blur p 0.5 with sigma scaled
//!    to the crop); view 1 is the query, view 2 the key (not symmetrised, as the paper). The
//!    geometry is kept, so the matching can be compared with the true correspondence
//!    (`match_true` in the metrics).
//! 2. **Key encoder update** before the keys: `theta_k = m theta_k + (1 - m) theta_q` over the
//!    parameters of the backbone and both heads ([`momentum_update`]); its batch-norm buffers
//!    follow its own train-mode passes (as MoCo).
//! 3. **Query** (the trained network, train mode, on the tape): the backbone's last stage `C5`
//!    (`[N, C, S, S]`, `S = crop / output stride`: 8x8 for the default 64 crop at stride 8), then
//!    * the global head: GAP, 1x1 conv (= Linear) `C -> hidden`, ReLU, 1x1 conv `hidden -> dim`,
//!      L2 normalisation: `q: [N, dim]`;
//!    * the dense head: the same on every cell (1x1 convs): unit `z_q: [N, dim, S, S]`.
//! 4. **Keys** (the key encoder, train-mode batch norm, no tape): the view-2 batch is permuted
//!    and run in `bn_chunks` chunks (emulated shuffle-BN: a key's batch statistics come from other
//!    images than its query's), then **unshuffled** (the bug of a re-implementation: forgetting
//!    to unshuffle the dense keys) to `k: [N, dim]`, unit `z_k: [N, dim, S, S]` and the pooled
//!    dense key `normalize(GAP(dense head output))`. The query is run in the same number of
//!    chunks in batch order.
//! 5. **Correspondence**: for every query cell `i`, `j*(i) = argmax_j cos(b_q,i, b_k,j)` over the
//!    key cells of the same image, on the *backbone* features `C5` ([`match_cells`]; no gradient,
//!    query to key only, no threshold).
//! 6. **Loss** `(1 - lambda) L_g + lambda L_d` ([`engine::ops::info_nce_queue`] at `tau`):
//!    `L_g`: `q` against `k` and the global queue; `L_d`: every `z_q,i` against `z_k,j*(i)` and
//!    the dense queue, averaged over `N S^2`. `lambda` is 0 for the first `dense_warmup_steps`.
//! 7. After the optimiser step, `k` enters the global queue and the pooled dense key the dense
//!    queue (FIFO rings of `queue_size` unit vectors, random unit vectors at the start).
//!
//! The trained network ([`new_net`]) is a DeepLabV3+ without classifier or projection head but
//! with the two query heads (`densecl.global.{0,2}`, `densecl.dense.{0,2}`); its ASPP and decoder
//! are unused. Checkpoints of the stage hold it, the key encoder (`objective.key.backbone.*`,
//! `objective.key.densecl.*`) and the queues (`objective.queue.{global,dense}.{keys,head}`), so
//! a resumed stage repeats the uninterrupted one exactly. What transfers to the next stage is the
//! query **backbone** alone, by name (`backbone.*`, torchvision names; [`load_backbone`]).
//!
//! CPU only (the loss op has no CUDA kernel).

pub mod views;

use crate::config::{DenseclSettings, TrainConfig};
use crate::init_backbone::BackboneOnly;
use crate::model::{DeepLabV3Plus, ModelSpec, ResNet};
use crate::net::{self, Net};
use crate::objective::{batch_shuffle, train_augment, Objective};
use crate::train::derive_seed;
use anyhow::{bail, ensure, Context, Result};
use datasets::{AugmentConfig, Batch};
use engine::{ops, DType, Device, Rng, Tensor};
use nn::{visit_all, Conv2d, ConvOptions, Ctx, Layer, Module, Slot, Visitor};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use views::{apply_photometric, draw_geom, draw_photometric, render, true_correspondence, ViewGeom};

/// DenseCL's query (or key) heads on the backbone's last stage: a global MLP (as 1x1 convs on the
/// pooled vector, i.e. Linear layers) and a dense one (1x1 convs on every cell).
pub struct Heads {
    global: [Conv2d; 2],
    dense: [Conv2d; 2],
}

impl Heads {
    /// Heads `in_c -> hidden -> dim`. Global layers: Kaiming normal (fan-in) weights and zero
    /// biases (the released `init_weights` on its Linears); dense 1x1 convs: PyTorch's default
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` weights and biases (the released code leaves them).
    pub fn new(in_c: usize, hidden: usize, dim: usize, rng: &mut Rng) -> Result<Heads> {
        let conv =
            |i: usize, o: usize, rng: &mut Rng| Conv2d::with_options(i, o, 1, ConvOptions::new().bias(true), rng);
        let mut global = [conv(in_c, hidden, rng)?, conv(hidden, dim, rng)?];
        for c in &mut global {
            let dims = c.weight.value.dims().to_vec();
            c.weight.value = Tensor::randn(dims.clone(), (2.0 / dims[1] as f64).sqrt(), DType::F32, rng);
        }
        let mut dense = [conv(in_c, hidden, rng)?, conv(hidden, dim, rng)?];
        for c in &mut dense {
            let dims = c.weight.value.dims().to_vec();
            let b = 1.0 / (dims[1] as f64).sqrt();
            c.weight.value = Tensor::rand_uniform(dims.clone(), -b, b, DType::F32, rng);
            if let Some(bias) = &mut c.bias {
                bias.value = Tensor::rand_uniform(vec![dims[0]], -b, b, DType::F32, rng);
            }
        }
        Ok(Heads { global, dense })
    }

    /// Output dimension.
    pub fn dim(&self) -> usize {
        self.global[1].out_channels()
    }

    /// `[N, C, S, S] -> [N, dim]`: GAP, MLP, L2 normalisation.
    pub fn global(&mut self, c5: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let g = ops::global_avg_pool2d(c5)?;
        let hid = self.global[0].forward(&g, ctx)?.relu()?;
        let g = self.global[1].forward(&hid, ctx)?;
        let n = g.dim(0);
        Ok(ops::reshape(&ops::l2_normalize(&g, 1e-12)?, &[n, self.dim()])?)
    }

    /// `[N, C, S, S] ->` the raw dense head output `[N, dim, S, S]` (normalise per cell for the loss).
    pub fn dense(&mut self, c5: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let hid = self.dense[0].forward(c5, ctx)?.relu()?;
        Ok(self.dense[1].forward(&hid, ctx)?)
    }
}

impl Module for Heads {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.child("global.0", &mut self.global[0]);
        v.child("global.2", &mut self.global[1]);
        v.child("dense.0", &mut self.dense[0]);
        v.child("dense.2", &mut self.dense[1]);
    }
}

/// The hidden width of the heads: `settings.hidden`, or the backbone's width (as Lightly's
/// 512-512-128 on a 512-channel ResNet; the paper's 2048-2048-128 on ResNet-50).
pub fn hidden_width(spec: &ModelSpec, s: &DenseclSettings) -> usize {
    s.hidden.unwrap_or(spec.backbone_out())
}

/// The DenseCL stage's network: the backbone (and the unused DeepLabV3+ head), no classifier, no
/// projection head, the query heads under `densecl.*`.
pub fn new_net(spec: &ModelSpec, s: &DenseclSettings, rng: &mut Rng) -> Result<Net> {
    let mut net = DeepLabV3Plus::for_pretraining(spec, rng)?;
    net.projection = None;
    net.densecl = Some(Heads::new(spec.backbone_out(), hidden_width(spec, s), s.dim, rng)?);
    Ok(net)
}

/// The momentum key encoder: a backbone and heads with the query's names.
pub struct KeyEncoder {
    pub backbone: ResNet,
    pub heads: Heads,
}

impl Module for KeyEncoder {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.child("backbone", &mut self.backbone);
        v.child("densecl", &mut self.heads);
    }
}

/// Whether `name` is key-encoder state of the query network.
fn shared_name(name: &str) -> bool {
    name.starts_with("backbone.") || name.starts_with("densecl.")
}

/// The query's `backbone.*` and `densecl.*` tensors, by name (parameters only, or all state).
fn query_tensors(net: &mut Net, params_only: bool) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    visit_all(net, |name, slot| {
        if !shared_name(name) {
            return;
        }
        match slot {
            Slot::Param(p) => {
                out.insert(name.to_string(), p.value.clone());
            }
            Slot::Buffer(b) if !params_only => {
                out.insert(name.to_string(), b.clone());
            }
            _ => {}
        }
    });
    out
}

/// Copy the query's backbone and heads (parameters and buffers) into the key encoder.
pub fn copy_into_key(key: &mut KeyEncoder, net: &mut Net) -> Result<()> {
    let src = query_tensors(net, false);
    let mut result = Ok(());
    let mut seen = 0;
    visit_all(key, |name, slot| {
        let t = match slot {
            Slot::Param(p) => &mut p.value,
            Slot::Buffer(b) => b,
            Slot::Count(_) => return,
        };
        match src.get(name) {
            Some(s) => {
                seen += 1;
                if let Err(e) = t.assign(s) {
                    result = Err(anyhow::anyhow!("densecl key encoder {name}: {e}"));
                }
            }
            None => result = Err(anyhow::anyhow!("densecl: the query network has no {name}")),
        }
    });
    result?;
    ensure!(seen == src.len(), "densecl: the key encoder has {seen} tensors, the query {}", src.len());
    Ok(())
}

/// `theta_k = m theta_k + (1 - m) theta_q` over the key encoder's parameters (matched by name);
/// buffers are left alone.
pub fn momentum_update(key: &mut KeyEncoder, net: &mut Net, m: f64) -> Result<()> {
    let src = query_tensors(net, true);
    let mut result = Ok(());
    let mut seen = 0;
    nn::for_each_param(key, |name, p| {
        if result.is_err() {
            return;
        }
        let Some(q) = src.get(name) else {
            result = Err(anyhow::anyhow!("densecl: the query network has no parameter {name}"));
            return;
        };
        seen += 1;
        result = (|| -> Result<()> {
            let qv = q.to_vec_f32()?;
            ensure!(qv.len() == p.value.numel(), "densecl momentum update: {name} differs in size");
            p.value.update_cpu::<f32>(|k| {
                for (a, b) in k.iter_mut().zip(&qv) {
                    *a = (m * *a as f64 + (1.0 - m) * *b as f64) as f32;
                }
            })?;
            Ok(())
        })();
    });
    result?;
    ensure!(seen == src.len(), "densecl: the key encoder has {seen} parameters, the query {}", src.len());
    Ok(())
}

/// A FIFO ring of `len` unit vectors of `dim` values (MoCo's queue): starts full of random unit
/// vectors; every push overwrites the oldest rows.
pub struct Queue {
    pub dim: usize,
    pub len: usize,
    keys: Tensor,
    head: i64,
}

impl Queue {
    /// `len` random unit vectors (normal draws, normalised).
    pub fn random(len: usize, dim: usize, rng: &mut Rng) -> Queue {
        let mut v: Vec<f32> = (0..len * dim).map(|_| rng.normal() as f32).collect();
        for r in v.chunks_mut(dim.max(1)) {
            let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            r.iter_mut().for_each(|x| *x /= n);
        }
        Queue { dim, len, keys: Tensor::from_vec(v, vec![len, dim]).expect("queue shape"), head: 0 }
    }

    /// Where the next row goes.
    pub fn head(&self) -> usize {
        self.head as usize
    }

    /// Push `rows` (`k x dim` values) in order, the oldest leaving first.
    pub fn push(&mut self, rows: &[f32]) -> Result<()> {
        ensure!(rows.len() % self.dim.max(1) == 0, "queue push: {} values are not rows of {}", rows.len(), self.dim);
        let (dim, len) = (self.dim, self.len);
        let mut head = self.head as usize;
        if len > 0 {
            self.keys.update_cpu::<f32>(|k| {
                for r in rows.chunks(dim) {
                    k[head * dim..(head + 1) * dim].copy_from_slice(r);
                    head = (head + 1) % len;
                }
            })?;
        }
        self.head = head as i64;
        Ok(())
    }

    /// The held rows `[len, dim]` (storage order).
    pub fn keys(&self) -> &Tensor {
        &self.keys
    }
}

impl Module for Queue {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.buffer("keys", &mut self.keys);
        v.count("head", &mut self.head);
    }
}

/// The objective's saved state: the key encoder and the two queues.
pub struct State {
    pub key: KeyEncoder,
    pub global: Queue,
    pub dense: Queue,
}

impl Module for State {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.child("key", &mut self.key);
        v.child("queue.global", &mut self.global);
        v.child("queue.dense", &mut self.dense);
    }
}

/// For each image `n` and query cell `i` of `[N, C, S]` maps, the flat index `n S + j*` of the
/// key cell of the same image with the largest cosine similarity (first on ties).
pub fn match_cells(bq: &[f32], bk: &[f32], n: usize, c: usize, s: usize) -> Vec<usize> {
    let unit = |v: &[f32], b: usize| -> Vec<f32> {
        // [S, C] rows of image b, unit length.
        let mut r = vec![0f32; s * c];
        for i in 0..s {
            let mut nn = 0f32;
            for k in 0..c {
                let x = v[(b * c + k) * s + i];
                r[i * c + k] = x;
                nn += x * x;
            }
            let nn = nn.sqrt().max(1e-12);
            r[i * c..(i + 1) * c].iter_mut().for_each(|x| *x /= nn);
        }
        r
    };
    let mut out = Vec::with_capacity(n * s);
    for b in 0..n {
        let (q, k) = (unit(bq, b), unit(bk, b));
        for i in 0..s {
            let qi = &q[i * c..(i + 1) * c];
            let (mut best, mut bv) = (0, f32::NEG_INFINITY);
            for j in 0..s {
                let d: f32 = qi.iter().zip(&k[j * c..(j + 1) * c]).map(|(a, b)| a * b).sum();
                if d > bv {
                    (best, bv) = (j, d);
                }
            }
            out.push(b * s + best);
        }
    }
    out
}

/// Rows `idx` of the per-cell vectors of `[N, D, S]` values, as `[idx.len(), D]` values.
fn cell_rows(v: &[f32], d: usize, s: usize, idx: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        let (b, p) = (i / s, i % s);
        out.extend((0..d).map(|k| v[(b * d + k) * s + p]));
    }
    out
}

/// Images `perm[0], perm[1], ...` of `[N, per]` values.
fn permute_rows(v: &[f32], per: usize, perm: &[usize]) -> Vec<f32> {
    perm.iter().flat_map(|&i| v[i * per..(i + 1) * per].iter().copied()).collect()
}

/// The inverse of [`permute_rows`]: row `perm[r]` of the result is row `r` of `v`.
fn unpermute_rows(v: &[f32], per: usize, perm: &[usize]) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for (r, &i) in perm.iter().enumerate() {
        out[i * per..(i + 1) * per].copy_from_slice(&v[r * per..(r + 1) * per]);
    }
    out
}

/// What the key encoder gives for a batch (host values, batch order).
pub struct Keys {
    /// `C5`, `[N, C, S]`.
    pub c5: Vec<f32>,
    /// Channels of `C5`.
    pub channels: usize,
    /// Cells per image.
    pub cells: usize,
    /// Global keys `[N, dim]` (unit).
    pub global: Vec<f32>,
    /// Dense keys `[N, dim, S]` (unit per cell).
    pub dense: Vec<f32>,
    /// Pooled dense keys `[N, dim]` (unit).
    pub pooled: Vec<f32>,
}

/// The key encoder on `images` (`[N, 3, H, W]` values): permuted by `perm`, in `chunks` chunks of
/// train-mode batch norm, then unshuffled back to batch order.
pub fn key_forward(
    key: &mut KeyEncoder,
    images: &[f32],
    shape: [usize; 4],
    perm: &[usize],
    chunks: usize,
) -> Result<Keys> {
    let [n, ch, h, w] = shape;
    let per = ch * h * w;
    let shuffled = permute_rows(images, per, perm);
    let mut ctx = Ctx::new(None, true, Rng::new(0));
    let size = n / chunks.max(1);
    let (mut c5s, mut gs, mut ds, mut ps) = (vec![], vec![], vec![], vec![]);
    let (mut channels, mut cells, mut dim) = (0, 0, 0);
    for c in 0..chunks.max(1) {
        let (lo, hi) = (c * size, if c + 1 == chunks.max(1) { n } else { (c + 1) * size });
        let x = Tensor::from_vec(shuffled[lo * per..hi * per].to_vec(), vec![hi - lo, ch, h, w])?;
        let c5 = key.backbone.forward(&x, &mut ctx)?;
        let g = key.heads.global(&c5, &mut ctx)?;
        let raw = key.heads.dense(&c5, &mut ctx)?;
        let pooled = ops::l2_normalize(&ops::global_avg_pool2d(&raw)?, 1e-12)?;
        let dense = ops::l2_normalize(&raw, 1e-12)?;
        (channels, cells, dim) = (c5.dim(1), c5.dim(2) * c5.dim(3), g.dim(1));
        c5s.extend(c5.to_vec_f32()?);
        gs.extend(g.to_vec_f32()?);
        ds.extend(dense.to_vec_f32()?);
        ps.extend(pooled.to_vec_f32()?);
    }
    Ok(Keys {
        c5: unpermute_rows(&c5s, channels * cells, perm),
        channels,
        cells,
        global: unpermute_rows(&gs, dim, perm),
        dense: unpermute_rows(&ds, dim * cells, perm),
        pooled: unpermute_rows(&ps, dim, perm),
    })
}

/// The two views of every image of a batch and their geometry.
pub struct Views {
    pub query: Vec<f32>,
    pub key: Vec<f32>,
    pub geom: Vec<[ViewGeom; 2]>,
}

/// Draw and render the two views of every crop of `images` (`[N, 3, H, W]`, normalised with
/// `mean`/`std`) from `rng`.
pub fn make_views(
    images: &[f32],
    [n, _, h, w]: [usize; 4],
    min_scale: f64,
    mean: [f32; 3],
    std: [f32; 3],
    rng: &mut Rng,
) -> Views {
    let per = 3 * h * w;
    let (mut query, mut key, mut geom) = (Vec::with_capacity(n * per), Vec::with_capacity(n * per), vec![]);
    for b in 0..n {
        let base = &images[b * per..(b + 1) * per];
        let mut pair = [ViewGeom::identity(h, w); 2];
        for (v, out) in [&mut query, &mut key].into_iter().enumerate() {
            let g = draw_geom(h, w, min_scale, rng);
            let mut img = render(base, h, w, &g);
            apply_photometric(&mut img, h, w, &draw_photometric(h.min(w), rng), mean, std);
            out.extend(img);
            pair[v] = g;
        }
        geom.push(pair);
    }
    Views { query, key, geom }
}

/// The DenseCL objective (see the module docs).
pub struct DenseCl {
    s: DenseclSettings,
    seed: u64,
    aug: AugmentConfig,
    state: Option<State>,
    pending: Option<(Vec<f32>, Vec<f32>)>,
    metrics: serde_json::Value,
}

impl DenseCl {
    /// The objective `cfg` describes.
    pub fn new(cfg: &TrainConfig) -> DenseCl {
        let aug = AugmentConfig { scale: None, hflip: false, color: None, two_views: false, ..train_augment(cfg) };
        DenseCl {
            s: cfg.densecl_settings.clone(),
            seed: cfg.seed,
            aug,
            state: None,
            pending: None,
            metrics: serde_json::Value::Null,
        }
    }

    /// The key encoder and queues (after [`Objective::start`]).
    pub fn state_ref(&self) -> Option<&State> {
        self.state.as_ref()
    }

    fn step_seed(&self, step: usize, what: u64) -> u64 {
        derive_seed(self.seed, &[10, step as u64, what])
    }

    /// The loss of one batch whose views are `views` (see the module docs, steps 2 to 6).
    pub fn views_loss(
        &mut self,
        net: &mut Net,
        v: &Views,
        shape: [usize; 4],
        step: usize,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let [n, ch, h, w] = shape;
        let chunks = self.s.bn_chunks.max(1);
        ensure!(
            n >= 2 * chunks,
            "densecl: a batch of {n} images cannot be split into {chunks} batch-norm chunks of 2 or more"
        );
        let perm = batch_shuffle(n, self.step_seed(step, 1));
        let st = self.state.as_mut().context("densecl: the objective was not started")?;
        momentum_update(&mut st.key, net, self.s.key_momentum)?;
        let keys = key_forward(&mut st.key, &v.key, shape, &perm, chunks)?;

        // Query: the backbone in chunks of batch order, the heads on the whole batch.
        let per = ch * h * w;
        let size = n / chunks;
        let mut c5s = Vec::with_capacity(chunks);
        for c in 0..chunks {
            let (lo, hi) = (c * size, if c + 1 == chunks { n } else { (c + 1) * size });
            let x = net::input(net, v.query[lo * per..hi * per].to_vec(), [hi - lo, ch, h, w])?;
            c5s.push(net.backbone.forward(&x, ctx)?);
        }
        let c5 = if c5s.len() == 1 {
            c5s.pop().expect("one chunk")
        } else {
            ops::concat(&c5s.iter().collect::<Vec<_>>(), 0)?
        };
        drop(c5s);
        let heads = net.densecl.as_mut().context("densecl: the network has no DenseCL heads")?;
        let q = heads.global(&c5, ctx)?;
        let zq = ops::l2_normalize(&heads.dense(&c5, ctx)?, 1e-12)?;
        let (c, s, grid) = (c5.dim(1), c5.dim(2) * c5.dim(3), [c5.dim(2), c5.dim(3)]);
        ensure!(c == keys.channels && s == keys.cells, "densecl: query and key feature maps differ");
        let dim = q.dim(1);

        // Correspondence on the backbone features, then the two InfoNCE terms.
        let j = match_cells(&c5.to_vec_f32()?, &keys.c5, n, c, s);
        drop(c5);
        let k_g = Tensor::from_vec(keys.global.clone(), vec![n, dim])?;
        let l_g = ops::info_nce_queue(&q, &k_g, st.global.keys(), self.s.tau)?;
        let all: Vec<usize> = (0..n * s).collect();
        let zq_rows = ops::gather_pixels(&zq, &all)?;
        let pos = Tensor::from_vec(cell_rows(&keys.dense, dim, s, &j), vec![n * s, dim])?;
        let l_d = ops::info_nce_queue(&zq_rows, &pos, st.dense.keys(), self.s.tau)?;
        let lambda = if step < self.s.dense_warmup_steps { 0.0 } else { self.s.lambda };
        let loss = ops::affine(&l_g, 1.0 - lambda, 0.0)?.add(&ops::affine(&l_d, lambda, 0.0)?)?;

        // How often the argmax finds the geometrically corresponding cell (where there is one).
        let (mut hits, mut total) = (0usize, 0usize);
        for (b, g) in v.geom.iter().enumerate() {
            for (i, t) in true_correspondence(&g[0], &g[1], [h, w], grid).into_iter().enumerate() {
                if let Some(t) = t {
                    total += 1;
                    hits += usize::from(j[b * s + i] == b * s + t);
                }
            }
        }
        self.metrics = json!({
            "l_global": l_g.item()?, "l_dense": l_d.item()?, "lambda": lambda,
            "match_true": if total > 0 { hits as f64 / total as f64 } else { f64::NAN },
        });
        self.pending = Some((keys.global, keys.pooled));
        Ok(loss)
    }
}

impl Objective for DenseCl {
    fn augment(&self, _cfg: &TrainConfig) -> AugmentConfig {
        self.aug.clone()
    }

    fn start(&mut self, net: &mut Net) -> Result<()> {
        if net::device_of(net) != Device::Cpu {
            bail!("densecl: runs on the CPU only (its loss has no CUDA kernel); use --device cpu");
        }
        let heads = net.densecl.as_ref().context("densecl: the network needs the DenseCL heads (densecl::new_net)")?;
        let dim = heads.dim();
        let spec = net.spec.clone();
        let mut rng = Rng::new(derive_seed(self.seed, &[9]));
        let mut key = KeyEncoder {
            backbone: ResNet::new(&spec, &mut rng)?,
            heads: Heads::new(spec.backbone_out(), hidden_width(&spec, &self.s), dim, &mut rng)?,
        };
        copy_into_key(&mut key, net)?;
        let global = Queue::random(self.s.queue_size, dim, &mut rng);
        let dense = Queue::random(self.s.queue_size, dim, &mut rng);
        self.state = Some(State { key, global, dense });
        Ok(())
    }

    fn loss(&mut self, net: &mut Net, b: &Batch, step: usize, ctx: &mut Ctx) -> Result<Tensor> {
        let mut rng = Rng::new(self.step_seed(step, 0));
        let views = make_views(&b.images, b.image_shape, self.s.min_scale, self.aug.mean, self.aug.std, &mut rng);
        self.views_loss(net, &views, b.image_shape, step, ctx)
    }

    fn after_step(&mut self, _net: &mut Net) -> Result<()> {
        let st = self.state.as_mut().context("densecl: the objective was not started")?;
        if let Some((g, d)) = self.pending.take() {
            st.global.push(&g)?;
            st.dense.push(&d)?;
        }
        Ok(())
    }

    fn state(&mut self) -> Option<&mut dyn Module> {
        self.state.as_mut().map(|s| s as &mut dyn Module)
    }

    fn step_metrics(&self) -> Option<serde_json::Value> {
        (!self.metrics.is_null()).then(|| self.metrics.clone())
    }

    fn describe(&self) -> Option<String> {
        let s = &self.s;
        Some(format!(
            "densecl: key momentum {}, lambda {} (0 for {} steps), tau {}, queues 2 x {} keys of {}, {} batch-norm chunks, crop scale [{}, 1]; labels unused",
            s.key_momentum, s.lambda, s.dense_warmup_steps, s.tau, s.queue_size, s.dim, s.bn_chunks, s.min_scale
        ))
    }
}

/// Load the `backbone.*` tensors of checkpoint `path` (a DenseCL stage's) into `net`'s backbone,
/// leaving everything else (decoder, classifier, projection head) as initialised. Errors if a
/// backbone tensor is missing or mis-shaped. Returns a line for the log.
pub fn load_backbone(path: &Path, net: &mut Net) -> Result<String> {
    let (_, report) = nn::load_checkpoint(path, &mut BackboneOnly(&mut net.backbone), None, false)?;
    if !report.missing.is_empty() || !report.mismatched.is_empty() {
        bail!("{}: its backbone does not fit the model: {report}", path.display());
    }
    let loaded = nn::state_names(&mut BackboneOnly(&mut net.backbone)).len();
    Ok(format!("the backbone ({loaded} tensors) loaded; heads, key encoder and queues left out"))
}

#[cfg(test)]
mod tests;
