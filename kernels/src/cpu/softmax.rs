//! Kernels that reduce over the channel axis of `[N, C, S]` data (`S` = all trailing dims):
//! log-softmax, pixel-wise cross-entropy and L2 normalisation, forward and backward.
//!
//! Each op is split into a *per-pixel* pass (a statistic over the `C` channels of each of the
//! `N * S` pixels, written to an `N * S` buffer) and an *elementwise* pass over the `[N, C, S]`
//! output. Both are parallel over fixed contiguous chunks of their output; within a chunk the
//! channel loop is outermost and the pixel loop innermost, so the strided channel reads are
//! contiguous runs that vectorise. Every per-pixel value is reduced over `c = 0..C` in order.

use crate::cpu::parallel::{for_chunks_mut, sum_by};
use crate::Float;

/// Layout: `n` images, `c` channels, `s` positions per channel plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelDims {
    /// Images.
    pub n: usize,
    /// Channels (the reduced axis).
    pub c: usize,
    /// Positions per channel plane.
    pub s: usize,
}

impl ChannelDims {
    /// Number of pixels `n * s`.
    pub fn pixels(&self) -> usize {
        self.n * self.s
    }
    /// Number of elements `n * c * s`.
    pub fn len(&self) -> usize {
        self.n * self.c * self.s
    }
    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The run of channel `ch` of image `img` covering positions `j0..j0 + len`.
    #[inline]
    fn run<'a, T>(&self, x: &'a [T], img: usize, ch: usize, j0: usize, len: usize) -> &'a [T] {
        &x[(img * self.c + ch) * self.s + j0..][..len]
    }
}

/// Fill the per-pixel buffer `out` (`n * s` values) in parallel: `f(img, j0, block)` computes the
/// pixels `j0..j0 + block.len()` of image `img` (a block never crosses an image boundary).
fn per_pixel<T: Float, F>(d: ChannelDims, out: &mut [T], f: F)
where
    F: Fn(usize, usize, &mut [T]) + Sync,
{
    assert_eq!(out.len(), d.pixels());
    if d.s == 0 {
        return;
    }
    for_chunks_mut(out, 2048, |start, chunk| {
        let mut done = 0;
        while done < chunk.len() {
            let p = start + done;
            let (img, j0) = (p / d.s, p % d.s);
            let len = (d.s - j0).min(chunk.len() - done);
            f(img, j0, &mut chunk[done..done + len]);
            done += len;
        }
    });
}

/// Fill the `[n, c, s]` buffer `out` elementwise in parallel: `f(img, ch, j0, block)` computes
/// positions `j0..j0 + block.len()` of channel `ch` of image `img`; the pixel index of
/// `block[k]` is `img * s + j0 + k`.
fn per_element<T: Float, F>(d: ChannelDims, out: &mut [T], f: F)
where
    F: Fn(usize, usize, usize, &mut [T]) + Sync,
{
    assert_eq!(out.len(), d.len());
    if d.s == 0 {
        return;
    }
    for_chunks_mut(out, 8192, |start, chunk| {
        let mut done = 0;
        while done < chunk.len() {
            let e = start + done;
            let (plane, j0) = (e / d.s, e % d.s);
            let len = (d.s - j0).min(chunk.len() - done);
            f(plane / d.c, plane % d.c, j0, &mut chunk[done..done + len]);
            done += len;
        }
    });
}

/// Per-pixel `lse = max_c x + ln sum_c exp(x_c - max_c x)` (numerically stable log-sum-exp).
pub fn channel_logsumexp<T: Float>(x: &[T], d: ChannelDims, lse: &mut [T]) {
    assert_eq!(x.len(), d.len());
    per_pixel(d, lse, |img, j0, out| {
        let len = out.len();
        // `out` holds the running max, `acc` the sum of shifted exponentials.
        out.iter_mut().for_each(|v| *v = T::NEG_INFINITY);
        for ch in 0..d.c {
            for (m, &v) in out.iter_mut().zip(d.run(x, img, ch, j0, len)) {
                *m = (*m).max(v);
            }
        }
        let mut acc = vec![T::ZERO; len];
        for ch in 0..d.c {
            for ((a, &m), &v) in acc.iter_mut().zip(out.iter()).zip(d.run(x, img, ch, j0, len)) {
                *a += (v - m).exp();
            }
        }
        for (m, a) in out.iter_mut().zip(acc) {
            *m += a.ln();
        }
    });
}

/// Per-pixel channel sum `out = sum_c x_c`.
pub fn channel_sum<T: Float>(x: &[T], d: ChannelDims, out: &mut [T]) {
    assert_eq!(x.len(), d.len());
    per_pixel(d, out, |img, j0, o| {
        let len = o.len();
        o.iter_mut().for_each(|v| *v = T::ZERO);
        for ch in 0..d.c {
            for (a, &v) in o.iter_mut().zip(d.run(x, img, ch, j0, len)) {
                *a += v;
            }
        }
    });
}

/// Per-pixel channel dot product `out = sum_c a_c b_c`.
pub fn channel_dot<T: Float>(a: &[T], b: &[T], d: ChannelDims, out: &mut [T]) {
    assert_eq!(a.len(), d.len());
    assert_eq!(b.len(), d.len());
    per_pixel(d, out, |img, j0, o| {
        o.iter_mut().for_each(|v| *v = T::ZERO);
        for ch in 0..d.c {
            let (ar, br) = (d.run(a, img, ch, j0, o.len()), d.run(b, img, ch, j0, o.len()));
            for ((acc, &u), &v) in o.iter_mut().zip(ar).zip(br) {
                *acc += u * v;
            }
        }
    });
}

/// Log-softmax forward given the per-pixel log-sum-exp: `y = x - lse`.
pub fn log_softmax_forward<T: Float>(x: &[T], lse: &[T], d: ChannelDims, y: &mut [T]) {
    assert_eq!(x.len(), d.len());
    per_element(d, y, |img, ch, j0, out| {
        let (xr, lr) = (d.run(x, img, ch, j0, out.len()), &lse[img * d.s + j0..][..out.len()]);
        for ((o, &v), &l) in out.iter_mut().zip(xr).zip(lr) {
            *o = v - l;
        }
    });
}

/// Log-softmax backward: `dx = g - exp(y) * gsum` with `gsum = sum_c g` per pixel
/// ([`channel_sum`]) and `y` the forward output (`exp(y)` is the softmax).
pub fn log_softmax_backward<T: Float>(g: &[T], y: &[T], gsum: &[T], d: ChannelDims, dx: &mut [T]) {
    assert_eq!((g.len(), y.len()), (d.len(), d.len()));
    per_element(d, dx, |img, ch, j0, out| {
        let len = out.len();
        let (gr, yr, sr) = (d.run(g, img, ch, j0, len), d.run(y, img, ch, j0, len), &gsum[img * d.s + j0..][..len]);
        for (((o, &gv), &yv), &sv) in out.iter_mut().zip(gr).zip(yr).zip(sr) {
            *o = gv - yv.exp() * sv;
        }
    });
}

/// Cross-entropy forward reduction: `(sum over valid pixels of lse - x[label], valid count)`,
/// where a pixel is valid when its label is not `ignore` (labels must already be `< c`).
/// Summed in f64 over fixed chunks combined in order.
pub fn cross_entropy_sum<T: Float>(x: &[T], lse: &[T], labels: &[u8], ignore: u8, d: ChannelDims) -> (f64, usize) {
    assert_eq!(x.len(), d.len());
    assert_eq!((lse.len(), labels.len()), (d.pixels(), d.pixels()));
    let count = labels.iter().filter(|&&l| l != ignore).count();
    if d.s == 0 {
        return (0.0, count);
    }
    let total = sum_by(d.pixels(), |p| {
        let l = labels[p];
        if l == ignore {
            return 0.0;
        }
        let (img, j) = (p / d.s, p % d.s);
        (lse[p] - x[(img * d.c + l as usize) * d.s + j]).to_f64()
    });
    (total, count)
}

/// Cross-entropy backward: `dx = (exp(x - lse) - [c == label]) * scale` at valid pixels, 0 at
/// ignored ones (`scale` is the output gradient over the valid count).
pub fn cross_entropy_backward<T: Float>(
    x: &[T],
    lse: &[T],
    labels: &[u8],
    ignore: u8,
    scale: T,
    d: ChannelDims,
    dx: &mut [T],
) {
    assert_eq!(x.len(), d.len());
    assert_eq!((lse.len(), labels.len()), (d.pixels(), d.pixels()));
    per_element(d, dx, |img, ch, j0, out| {
        let len = out.len();
        let (xr, lr, lab) =
            (d.run(x, img, ch, j0, len), &lse[img * d.s + j0..][..len], &labels[img * d.s + j0..][..len]);
        for (((o, &v), &l), &t) in out.iter_mut().zip(xr).zip(lr).zip(lab) {
            *o = if t == ignore {
                T::ZERO
            } else {
                let onehot = if t as usize == ch { T::ONE } else { T::ZERO };
                ((v - l).exp() - onehot) * scale
            };
        }
    });
}

/// Per-pixel L2 norm over channels, `norm = sqrt(sum_c x_c^2)`.
pub fn channel_l2_norm<T: Float>(x: &[T], d: ChannelDims, norm: &mut [T]) {
    assert_eq!(x.len(), d.len());
    per_pixel(d, norm, |img, j0, o| {
        let len = o.len();
        o.iter_mut().for_each(|v| *v = T::ZERO);
        for ch in 0..d.c {
            for (a, &v) in o.iter_mut().zip(d.run(x, img, ch, j0, len)) {
                *a += v * v;
            }
        }
        o.iter_mut().for_each(|v| *v = v.sqrt());
    });
}

/// L2-normalise forward: `y = x / max(norm, eps)`.
pub fn l2_normalize_forward<T: Float>(x: &[T], norm: &[T], eps: T, d: ChannelDims, y: &mut [T]) {
    assert_eq!(x.len(), d.len());
    per_element(d, y, |img, ch, j0, out| {
        let (xr, nr) = (d.run(x, img, ch, j0, out.len()), &norm[img * d.s + j0..][..out.len()]);
        for ((o, &v), &n) in out.iter_mut().zip(xr).zip(nr) {
            *o = v / n.max(eps);
        }
    });
}

/// L2-normalise backward with `y` the forward output and `gy = sum_c g_c y_c` per pixel
/// ([`channel_dot`]): `dx = (g - y gy) / norm` where `norm >= eps` (the norm is active), and
/// `dx = g / eps` where the clamp is active (`norm < eps`: the denominator is the constant eps).
pub fn l2_normalize_backward<T: Float>(g: &[T], y: &[T], norm: &[T], gy: &[T], eps: T, d: ChannelDims, dx: &mut [T]) {
    assert_eq!((g.len(), y.len()), (d.len(), d.len()));
    per_element(d, dx, |img, ch, j0, out| {
        let len = out.len();
        let (gr, yr) = (d.run(g, img, ch, j0, len), d.run(y, img, ch, j0, len));
        let (nr, sr) = (&norm[img * d.s + j0..][..len], &gy[img * d.s + j0..][..len]);
        for ((((o, &gv), &yv), &n), &s) in out.iter_mut().zip(gr).zip(yr).zip(nr).zip(sr) {
            *o = if n >= eps { (gv - yv * s) / n } else { gv / eps };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logsumexp_is_stable_and_per_pixel() {
        let d = ChannelDims { n: 2, c: 3, s: 2 };
        let x = [1000.0, 0.0, 1000.0, 0.0, 1000.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0f64];
        let mut lse = [0.0; 4];
        channel_logsumexp(&x, d, &mut lse);
        assert!((lse[0] - (1000.0 + 3f64.ln())).abs() < 1e-9);
        assert!((lse[1] - 3f64.ln()).abs() < 1e-12);
        let want = (1f64.exp() + 3f64.exp() + 5f64.exp()).ln();
        assert!((lse[2] - want).abs() < 1e-12);
    }
}
