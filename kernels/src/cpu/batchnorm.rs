//! Batch-norm kernels over `[N, C, HW]` data: per-channel statistics, the normalised output and
//! the fused backward.
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

/// Training forward. For each channel: `mean = sum x / m`, biased `var = sum (x - mean)^2 / m`
/// (two passes, the second over cached data, so no cancellation), then
/// `y = (x - mean) * invstd * w + b` written as `y = x * scale + shift`
/// (`scale = w invstd`, `shift = b - mean scale`, `invstd = 1 / sqrt(var + eps)`).
/// `weight`/`bias` default to 1/0. Returns `(mean, biased var)` per channel.
/// Requires `m = n * hw >= 1`.
pub fn bn_train_forward<T: Float>(
    x: &[T],
    d: BnDims,
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    eps: T,
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
        let scale = weight.map_or(T::ONE, |w| w[ch]) * invstd;
        let shift = bias.map_or(T::ZERO, |b| b[ch]) - mean * scale;
        for (img, out) in planes.iter_mut().enumerate() {
            for (o, &v) in out.iter_mut().zip(d.plane(x, img, ch)) {
                *o = v * scale + shift;
            }
        }
        (mean, var)
    })
}

/// Per-channel affine map `y = x * scale[c] + shift[c]` (eval-mode forward).
pub fn channel_affine<T: Float>(x: &[T], d: BnDims, scale: &[T], shift: &[T], y: &mut [T]) {
    assert_eq!(x.len(), d.n * d.c * d.hw);
    assert_eq!(y.len(), x.len());
    for_each_channel(Some(y), d, |ch, planes| {
        let (a, b) = (scale[ch], shift[ch]);
        for (img, out) in planes.iter_mut().enumerate() {
            for (o, &v) in out.iter_mut().zip(d.plane(x, img, ch)) {
                *o = v * a + b;
            }
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
    dx: Option<&mut [T]>,
) -> Vec<(T, T)> {
    assert_eq!(x.len(), d.n * d.c * d.hw);
    assert_eq!(g.len(), x.len());
    let m = T::from_usize(d.per_channel());
    for_each_channel(dx, d, |ch, planes| {
        let (mu, inv) = (mean[ch], invstd[ch]);
        let (mut sg, mut sgxc) = (T::ZERO, T::ZERO);
        for img in 0..d.n {
            let (a, b) = sum_g_and_gxc(d.plane(g, img, ch), d.plane(x, img, ch), mu);
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
                let (gp, xp) = (d.plane(g, img, ch), d.plane(x, img, ch));
                for ((o, &gv), &xv) in out.iter_mut().zip(gp).zip(xp) {
                    *o = a * gv + b * xv + c;
                }
            }
        }
        (sg, sgxhat)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_forward_normalises_each_channel() {
        let d = BnDims { n: 2, c: 3, hw: 5 };
        let x: Vec<f64> = (0..30).map(|i| ((i * 7) % 11) as f64 + i as f64 * 0.1).collect();
        let mut y = vec![0.0; 30];
        let st = bn_train_forward(&x, d, None, None, 0.0, &mut y);
        for (ch, st) in st.iter().enumerate() {
            let v: Vec<f64> = (0..2).flat_map(|i| d.plane(&y, i, ch).to_vec()).collect();
            let mean = v.iter().sum::<f64>() / 10.0;
            let var = v.iter().map(|a| a * a).sum::<f64>() / 10.0;
            assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-12, "{mean} {var} {st:?}");
        }
    }
}
