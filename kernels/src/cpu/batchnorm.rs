//! Batch-norm kernels over `[N, C, HW]` data: per-channel statistics, the normalised output and
//! the fused backward, each optionally with a ReLU after the normalisation ([`Then::Relu`]).
//!
//! With the ReLU fused, the forward writes `y = max(x scale + shift, 0)` in its one output pass
//! (no second buffer for the ReLU to read and write), and the backward recomputes the ReLU's mask
//! `x scale + shift > 0` from the `x` it reads anyway, writing the masked `g` into `dx` while it
//! sums it and finishing `dx` in place: the separate ReLU backward pass (read `g` and `y`, write
//! the masked `g`) is gone. Both give bit for bit what
//! the batch norm followed by the ReLU op gives (tested), since every value is the same expression.
//!
//! Work is split by channel: one rayon task per channel owns that channel's `N` planes of the
//! output, so every per-channel sum is a serial, fixed-order reduction (8 interleaved lanes per
//! plane, planes combined in image order) and results are bit-identical for any thread count.
//! A channel's data (`N * HW` values, 33 KiB for 2x65x65 f32) stays in cache between the
//! statistics pass and the output pass, so each kernel reads its inputs from memory about once.

use crate::Float;
use rayon::prelude::*;

/// Layout of a batch-norm operand: `n` images of `c` channels of `hw` pixels, contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnDims {
    /// Images.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Pixels per channel plane.
    pub hw: usize,
}

impl BnDims {
    /// Values per channel (`n * hw`), the `m` of the batch statistics.
    pub fn per_channel(&self) -> usize {
        self.n * self.hw
    }
    fn plane<'a, T>(&self, x: &'a [T], img: usize, ch: usize) -> &'a [T] {
        let o = (img * self.c + ch) * self.hw;
        &x[o..o + self.hw]
    }
}

const LANES: usize = 8;

/// Combine the lanes in a fixed tree order.
#[inline(always)]
fn fold<T: Float>(a: [T; LANES]) -> T {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// `sum_i x_i` with 8 interleaved accumulators (vectorises; fixed order).
#[inline]
fn sum<T: Float>(x: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let mut it = x.chunks_exact(LANES);
    for ch in &mut it {
        for k in 0..LANES {
            acc[k] += ch[k];
        }
    }
    let mut tail = T::ZERO;
    for &v in it.remainder() {
        tail += v;
    }
    fold(acc) + tail
}

/// `sum_i (x_i - c)^2`.
#[inline]
fn sum_sq_dev<T: Float>(x: &[T], c: T) -> T {
    let mut acc = [T::ZERO; LANES];
    let mut it = x.chunks_exact(LANES);
    for ch in &mut it {
        for k in 0..LANES {
            let d = ch[k] - c;
            acc[k] += d * d;
        }
    }
    let mut tail = T::ZERO;
    for &v in it.remainder() {
        tail += (v - c) * (v - c);
    }
    fold(acc) + tail
}

/// `(sum_i g_i, sum_i g_i (x_i - c))` in one pass.
#[inline]
fn sum_g_and_gxc<T: Float>(g: &[T], x: &[T], c: T) -> (T, T) {
    let (mut sg, mut sgx) = ([T::ZERO; LANES], [T::ZERO; LANES]);
    let (mut gi, mut xi) = (g.chunks_exact(LANES), x.chunks_exact(LANES));
    for (gc, xc) in (&mut gi).zip(&mut xi) {
        for k in 0..LANES {
            sg[k] += gc[k];
            sgx[k] += gc[k] * (xc[k] - c);
        }
    }
    let (mut tg, mut tgx) = (T::ZERO, T::ZERO);
    for (&gv, &xv) in gi.remainder().iter().zip(xi.remainder()) {
        tg += gv;
        tgx += gv * (xv - c);
    }
    (fold(sg) + tg, fold(sgx) + tgx)
}

/// [`sum_g_and_gxc`] of the ReLU-masked `g` ([`relu_masked`] with the channel's `(scale,
/// shift)`), writing the masked values to `out` in the same pass (the same sums, in the same
/// order, as summing `out` afterwards).
#[inline]
fn mask_and_sum<T: Float>(out: &mut [T], g: &[T], x: &[T], c: T, (scale, shift): (T, T)) -> (T, T) {
    let (mut sg, mut sgx) = ([T::ZERO; LANES], [T::ZERO; LANES]);
    let (mut oi, mut gi, mut xi) = (out.chunks_exact_mut(LANES), g.chunks_exact(LANES), x.chunks_exact(LANES));
    for ((oc, gc), xc) in (&mut oi).zip(&mut gi).zip(&mut xi) {
        for k in 0..LANES {
            let gv = relu_masked(gc[k], xc[k], scale, shift);
            oc[k] = gv;
            sg[k] += gv;
            sgx[k] += gv * (xc[k] - c);
        }
    }
    let (mut tg, mut tgx) = (T::ZERO, T::ZERO);
    for ((o, &gv), &xv) in oi.into_remainder().iter_mut().zip(gi.remainder()).zip(xi.remainder()) {
        let gv = relu_masked(gv, xv, scale, shift);
        *o = gv;
        tg += gv;
        tgx += gv * (xv - c);
    }
    (fold(sg) + tg, fold(sgx) + tgx)
}

/// Run `task(channel, planes)` for every channel in parallel, where `planes` are that channel's
/// `n` planes of `out` (empty when `out` is `None`). Results come back in channel order.
fn for_each_channel<T, R, F>(out: Option<&mut [T]>, d: BnDims, task: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(usize, &mut [&mut [T]]) -> R + Sync,
{
    let mut per: Vec<Vec<&mut [T]>> = (0..d.c).map(|_| Vec::with_capacity(d.n)).collect();
    if let Some(out) = out {
        if d.hw > 0 && d.c > 0 {
            for img in out.chunks_mut(d.c * d.hw) {
                for (ch, p) in img.chunks_mut(d.hw).enumerate() {
                    per[ch].push(p);
                }
            }
        }
    }
    per.into_par_iter().enumerate().map(|(ch, mut planes)| task(ch, &mut planes)).collect()
}

/// What the kernels apply after the normalisation, in the same pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// `y = x scale + shift`.
    Nothing,
    /// `y = max(x scale + shift, 0)` (as the ReLU op: NaN gives 0).
    Relu,
}

/// A channel's affine map `(scale, shift) = (w invstd, b - mean scale)` (`w`/`b` 1/0 when absent):
/// the one expression the forward kernels and the fused backward's ReLU mask both use.
#[inline]
pub fn scale_shift<T: Float>(weight: Option<T>, bias: Option<T>, mean: T, invstd: T) -> (T, T) {
    let scale = weight.unwrap_or(T::ONE) * invstd;
    (scale, bias.unwrap_or(T::ZERO) - mean * scale)
}

/// `y[i] = then(x[i] scale + shift)` over one plane.
#[inline]
fn apply<T: Float>(x: &[T], scale: T, shift: T, then: Then, y: &mut [T]) {
    match then {
        Then::Nothing => {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = v * scale + shift;
            }
        }
        Then::Relu => {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = (v * scale + shift).max(T::ZERO);
            }
        }
    }
}

/// Training forward. For each channel: `mean = sum x / m`, biased `var = sum (x - mean)^2 / m`
/// (two passes, the second over cached data, so no cancellation), then
/// `y = then((x - mean) * invstd * w + b)` written as `y = then(x * scale + shift)`
/// ([`scale_shift`], `invstd = 1 / sqrt(var + eps)`).
/// `weight`/`bias` default to 1/0. Returns `(mean, biased var)` per channel.
/// Requires `m = n * hw >= 1`.
#[allow(clippy::too_many_arguments)]
pub fn bn_train_forward<T: Float>(
    x: &[T],
    d: BnDims,
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    eps: T,
    then: Then,
    y: &mut [T],
) -> Vec<(T, T)> {
    assert_eq!(x.len(), d.n * d.c * d.hw);
    assert_eq!(y.len(), x.len());
    let m = T::from_usize(d.per_channel());
    for_each_channel(Some(y), d, |ch, planes| {
        let mut s = T::ZERO;
        for img in 0..d.n {
            s += sum(d.plane(x, img, ch));
        }
        let mean = s / m;
        let mut ss = T::ZERO;
        for img in 0..d.n {
            ss += sum_sq_dev(d.plane(x, img, ch), mean);
        }
        let var = ss / m;
        let invstd = T::ONE / (var + eps).sqrt();
        let (scale, shift) = scale_shift(weight.map(|w| w[ch]), bias.map(|b| b[ch]), mean, invstd);
        for (img, out) in planes.iter_mut().enumerate() {
            apply(d.plane(x, img, ch), scale, shift, then, out);
        }
        (mean, var)
    })
}

/// Per-channel affine map `y = then(x * scale[c] + shift[c])` (eval-mode forward).
pub fn channel_affine<T: Float>(x: &[T], d: BnDims, scale: &[T], shift: &[T], then: Then, y: &mut [T]) {
    assert_eq!(x.len(), d.n * d.c * d.hw);
    assert_eq!(y.len(), x.len());
    for_each_channel(Some(y), d, |ch, planes| {
        for (img, out) in planes.iter_mut().enumerate() {
            apply(d.plane(x, img, ch), scale[ch], shift[ch], then, out);
        }
    });
}

/// How the normalisation statistics of the forward were obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMode {
    /// Batch statistics: they depend on `x`, so `dx` has the two centring terms.
    Train,
    /// Fixed (running) statistics: `dx` is a per-channel scale of `g`.
    Eval,
}

/// Batch-norm backward for one of both modes, fused per channel.
///
/// With `xhat = (x - mean) invstd`, `m = n * hw`, `w` = weight (1 when absent):
/// * always: `db = sum g`, `dw = sum g xhat` (returned per channel as `(db, dw)`);
/// * train: `dx = (w invstd / m) (m g - sum g - xhat sum(g xhat))`;
/// * eval: `dx = w invstd g`.
///
/// With `relu = Some((scale, shift))` (the forward's per-channel [`scale_shift`]) the forward was
/// [`Then::Relu`], and `g` is first masked by the ReLU's derivative: `g = 0` where
/// `x scale + shift <= 0` (the gradient reaching the batch norm through the ReLU).
///
/// `dx` is written only when given. `mean`/`invstd` are the batch statistics (train) or the
/// running mean and `1 / sqrt(running_var + eps)` (eval).
#[allow(clippy::too_many_arguments)]
pub fn bn_backward<T: Float>(
    g: &[T],
    x: &[T],
    d: BnDims,
    mean: &[T],
    invstd: &[T],
    weight: Option<&[T]>,
    mode: BnMode,
    relu: Option<(&[T], &[T])>,
    dx: Option<&mut [T]>,
) -> Vec<(T, T)> {
    assert_eq!(x.len(), d.n * d.c * d.hw);
    assert_eq!(g.len(), x.len());
    let m = T::from_usize(d.per_channel());
    for_each_channel(dx, d, |ch, planes| {
        let (mu, inv) = (mean[ch], invstd[ch]);
        let mask = relu.map(|(sc, sh)| (sc[ch], sh[ch]));
        // With the ReLU fused and `dx` wanted, the masked `g` is written into `dx` first (each
        // plane is then summed and rewritten from L1), so the mask is computed once per value.
        let staged = mask.is_some() && !planes.is_empty();
        let (mut sg, mut sgxc) = (T::ZERO, T::ZERO);
        // By index: `planes` is empty when `dx` is not wanted.
        #[allow(clippy::needless_range_loop)]
        for img in 0..d.n {
            let (gp, xp) = (d.plane(g, img, ch), d.plane(x, img, ch));
            let (a, b) = match mask {
                None => sum_g_and_gxc(gp, xp, mu),
                Some((sc, sh)) if staged => mask_and_sum(planes[img], gp, xp, mu, (sc, sh)),
                Some((sc, sh)) => {
                    let masked: Vec<T> = gp.iter().zip(xp).map(|(&gv, &xv)| relu_masked(gv, xv, sc, sh)).collect();
                    sum_g_and_gxc(&masked, xp, mu)
                }
            };
            sg += a;
            sgxc += b;
        }
        let sgxhat = sgxc * inv;
        if !planes.is_empty() {
            // dx = a g + b x + c, the train formula expanded so one fused pass writes it.
            let a = weight.map_or(T::ONE, |w| w[ch]) * inv;
            let (b, c) = match mode {
                BnMode::Train => {
                    let b = -a * inv * sgxhat / m;
                    (b, -a * sg / m - b * mu)
                }
                BnMode::Eval => (T::ZERO, T::ZERO),
            };
            for (img, out) in planes.iter_mut().enumerate() {
                let xp = d.plane(x, img, ch);
                if staged {
                    // `out` holds the masked `g`.
                    for (o, &xv) in out.iter_mut().zip(xp) {
                        *o = a * *o + b * xv + c;
                    }
                } else {
                    for ((o, &gv), &xv) in out.iter_mut().zip(d.plane(g, img, ch)).zip(xp) {
                        *o = a * gv + b * xv + c;
                    }
                }
            }
        }
        (sg, sgxhat)
    })
}

/// `g` where the forward's ReLU passed its input `x scale + shift` (the same expression as
/// [`apply`], so the same mask), else 0.
#[inline(always)]
fn relu_masked<T: Float>(gv: T, xv: T, scale: T, shift: T) -> T {
    if xv * scale + shift > T::ZERO {
        gv
    } else {
        T::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_forward_normalises_each_channel() {
        let d = BnDims { n: 2, c: 3, hw: 5 };
        let x: Vec<f64> = (0..30).map(|i| ((i * 7) % 11) as f64 + i as f64 * 0.1).collect();
        let mut y = vec![0.0; 30];
        let st = bn_train_forward(&x, d, None, None, 0.0, Then::Nothing, &mut y);
        for (ch, st) in st.iter().enumerate() {
            let v: Vec<f64> = (0..2).flat_map(|i| d.plane(&y, i, ch).to_vec()).collect();
            let mean = v.iter().sum::<f64>() / 10.0;
            let var = v.iter().map(|a| a * a).sum::<f64>() / 10.0;
            assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12, "{mean} {var} {st:?}");
        }
    }
}
