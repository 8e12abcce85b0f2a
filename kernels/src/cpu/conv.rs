//! 2-D convolution kernels (NCHW, grouped, strided, padded, dilated) as tiled gather + GEMM.
//!
//! Shapes: `x: [N, C_in, H, W]`, `w: [C_out, C_in/G, kH, kW]`, `y: [N, C_out, OH, OW]` with
//! `OH = floor((H + 2 p - d (kH - 1) - 1) / s) + 1` (PyTorch), likewise for `OW`.
//!
//! ```text
//! y[n, o, oy, ox]  = b[o] + sum_{c, ky, kx} w[o, c, ky, kx] x[n, g C_in/G + c, oy s - p + ky d, ox s - p + kx d]
//! dx[n, i, iy, ix] = sum_{o in group, ky, kx : (iy + p - ky d) = oy s} w[o, c, ky, kx] gy[n, o, oy, ox]
//! dw[o, c, ky, kx] = sum_{n, oy, ox} gy[n, o, oy, ox] x[n, ., oy s - p + ky d, ox s - p + kx d]
//! db[o]            = sum_{n, oy, ox} gy[n, o, oy, ox]
//! ```
//! (taps that land in the zero padding contribute nothing).
//!
//! **One gather-conv engine for `y` and `dx`.** Both are "for each destination pixel, sum over taps
//! of a matrix times a source pixel found by an affine map": `y` gathers `x` through
//! `i = o s - p + k d`, `dx` gathers `gy` through `o = (i + p - k d) / s` (only where divisible),
//! which is col2im written as a gather, so parallel tiles never write the same element. The
//! destination is cut into tiles of about [`TILE_PIX`] pixels; a tile's `im2col` block (taps x
//! channels x pixels) is built in a per-thread scratch buffer reused across calls and multiplied by
//! the repacked weights `[rows][tap][channel]` with `matrixmultiply` (one GEMM per run of
//! consecutive taps).
//!
//! **Skipping taps in the padding.** Along each axis the destination coordinates are split at the
//! points where a tap starts or stops landing inside the source, so within a 2-D region the set of
//! live taps is fixed; taps that are dead in a whole tile are left out of its GEMM (a 3x3 conv with
//! dilation 18 on 33x33 has only 40% live taps). Regions narrower than a few pixels are merged into
//! a neighbour (computing some zeros is cheaper than a tiny GEMM). For `dx` of a strided conv the
//! destination is also split by phase (`i mod s`): within a phase the live taps are fixed again and
//! the gather is contiguous.
//!
//! **Special cases.** A 1x1, stride-1, unpadded conv needs no gather: the GEMM reads the source
//! planes directly. Depthwise convs (one input and one output channel per group) use a direct
//! loop instead of 1-row GEMMs.
//!
//! **dw** runs the forward tiling and accumulates `gy_tile (rows x pix) col_tile^T` into a
//! per-chunk partial sum; chunks are fixed by the problem (balanced by a deterministic cost) and
//! reduced in chunk order. **db** sums each channel over `n` then pixels in order.
//!
//! Work is split over (image, group, tile) units whose boundaries depend only on the shapes, and
//! every output element is produced by one unit with a fixed summation order, so results are
//! bit-identical from run to run.

use crate::cpu::gemm::Mat;
use crate::Float;
use rayon::prelude::*;
use std::any::Any;
use std::cell::RefCell;

/// Destination pixels per gather/GEMM tile for `y` and `dx`.
const TILE_PIX: usize = 256;
/// Pixels per tile for `dw` (its GEMM's inner dimension, so bigger is better).
const DW_TILE_PIX: usize = 512;
/// Target number of partial sums for `dw` (over all groups).
const DW_CHUNKS: usize = 4;
/// Regions narrower than this (in coordinates along x / y) are merged with a neighbour.
const MIN_SPAN_X: usize = 4;
const MIN_SPAN_Y: usize = 2;

/// Sizes and hyperparameters of one convolution. The caller validates them (see [`Self::out_hw`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// PyTorch's output length `floor((len + 2 p - d (k - 1) - 1) / s) + 1`, or `None` when the
/// (dilated) kernel does not fit in the padded input or `s == 0`.
pub fn conv_out_len(len: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
    let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
    let padded = len.checked_add(2 * p)?;
    if s == 0 || padded < span {
        return None;
    }
    Some((padded - span) / s + 1)
}

impl Conv2dGeom {
    /// `(OH, OW)`, or `None` if the kernel does not fit.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        let oh = conv_out_len(self.h, self.kh, self.stride[0], self.padding[0], self.dilation[0])?;
        let ow = conv_out_len(self.w, self.kw, self.stride[1], self.padding[1], self.dilation[1])?;
        Some((oh, ow))
    }
    fn ohw(&self) -> (usize, usize) {
        self.out_hw().expect("conv2d kernel called with an invalid geometry")
    }
    fn cig(&self) -> usize {
        self.c_in / self.groups
    }
    fn cog(&self) -> usize {
        self.c_out / self.groups
    }
    fn taps(&self) -> usize {
        self.kh * self.kw
    }
    fn check(&self, x_len: usize, w_len: usize, y_len: usize) {
        let (oh, ow) = self.ohw();
        assert!(self.groups > 0 && self.cig() * self.groups == self.c_in && self.cog() * self.groups == self.c_out);
        assert_eq!(x_len, self.n * self.c_in * self.h * self.w, "conv2d: x length");
        assert_eq!(w_len, self.c_out * self.cig() * self.taps(), "conv2d: w length");
        assert_eq!(y_len, self.n * self.c_out * oh * ow, "conv2d: y length");
    }
    fn is_depthwise(&self) -> bool {
        self.cig() == 1 && self.cog() == 1
    }
}

/// `y = conv(x, w) + b`. `y` is fully overwritten.
pub fn conv2d_forward<T: Float>(g: &Conv2dGeom, x: &[T], w: &[T], bias: Option<&[T]>, y: &mut [T]) {
    g.check(x.len(), w.len(), y.len());
    if let Some(b) = bias {
        assert_eq!(b.len(), g.c_out, "conv2d: bias length");
    }
    let (oh, ow) = g.ohw();
    let (s, p, d) = (g.stride, g.padding, g.dilation);
    let ymap = Axis::forward(g.h, oh, g.kh, s[0], p[0], d[0]);
    let xmap = Axis::forward(g.w, ow, g.kw, s[1], p[1], d[1]);
    let (cig, taps) = (g.cig(), g.taps());
    // Repack w[o][c][tap] -> a[o][tap][c] so that a run of live taps is one contiguous K range.
    let mut a = vec![T::ZERO; w.len()];
    for o in 0..g.c_out {
        for c in 0..cig {
            for t in 0..taps {
                a[(o * taps + t) * cig + c] = w[(o * cig + c) * taps + t];
            }
        }
    }
    GatherConv {
        a: &a,
        m: g.cog(),
        c_src: cig,
        groups: g.groups,
        n: g.n,
        src: x,
        src_hw: (g.h, g.w),
        out_hw: (oh, ow),
        ymap,
        xmap,
        bias,
    }
    .run(y, g.is_depthwise());
}

/// `dx` from `gy` (the gradient of `y`). `dx` is fully overwritten.
pub fn conv2d_backward_input<T: Float>(g: &Conv2dGeom, w: &[T], gy: &[T], dx: &mut [T]) {
    g.check(dx.len(), w.len(), gy.len());
    let (oh, ow) = g.ohw();
    let (s, p, d) = (g.stride, g.padding, g.dilation);
    let ymap = Axis::input_grad(g.h, oh, g.kh, s[0], p[0], d[0]);
    let xmap = Axis::input_grad(g.w, ow, g.kw, s[1], p[1], d[1]);
    let (cig, cog, taps) = (g.cig(), g.cog(), g.taps());
    // a[g][c][tap][o] = w[g cog + o][c][tap]: the transposed weights of each group.
    let mut a = vec![T::ZERO; w.len()];
    for gi in 0..g.groups {
        for o in 0..cog {
            for c in 0..cig {
                for t in 0..taps {
                    a[((gi * cig + c) * taps + t) * cog + o] = w[((gi * cog + o) * cig + c) * taps + t];
                }
            }
        }
    }
    GatherConv {
        a: &a,
        m: cig,
        c_src: cog,
        groups: g.groups,
        n: g.n,
        src: gy,
        src_hw: (oh, ow),
        out_hw: (g.h, g.w),
        ymap,
        xmap,
        bias: None,
    }
    .run(dx, g.is_depthwise());
}

/// `db[o] = sum_{n, pixels} gy[n, o, .]`. `db` is overwritten.
pub fn conv2d_backward_bias<T: Float>(g: &Conv2dGeom, gy: &[T], db: &mut [T]) {
    let (oh, ow) = g.ohw();
    let plane = oh * ow;
    assert_eq!(gy.len(), g.n * g.c_out * plane, "conv2d: gy length");
    assert_eq!(db.len(), g.c_out, "conv2d: db length");
    let c_out = g.c_out;
    db.par_iter_mut().enumerate().for_each(|(o, acc)| {
        let mut s = T::ZERO;
        for n in 0..g.n {
            let row = &gy[(n * c_out + o) * plane..][..plane];
            s += sum_in_order(row);
        }
        *acc = s;
    });
}

/// `dw` from `x` and `gy`. `dw` is fully overwritten.
pub fn conv2d_backward_weight<T: Float>(g: &Conv2dGeom, x: &[T], gy: &[T], dw: &mut [T]) {
    g.check(x.len(), dw.len(), gy.len());
    let (oh, ow) = g.ohw();
    let (s, p, d) = (g.stride, g.padding, g.dilation);
    let ymap = Axis::forward(g.h, oh, g.kh, s[0], p[0], d[0]);
    let xmap = Axis::forward(g.w, ow, g.kw, s[1], p[1], d[1]);
    let ys = segments(&ymap, MIN_SPAN_Y);
    let xs = segments(&xmap, MIN_SPAN_X);
    let (cig, cog, taps, kw) = (g.cig(), g.cog(), g.taps(), g.kw);
    if g.is_depthwise() {
        return depthwise_weight_grad(g, &ys, &xs, x, gy, dw);
    }
    let plans = plan_tiles(&ys, &xs, kw, DW_TILE_PIX);
    let direct = ymap.is_identity() && xmap.is_identity();
    let (plane, oplane) = (g.h * g.w, oh * ow);
    let gsize = cog * taps * cig;

    // Units of one group: (image, tile), in order; chunks are contiguous ranges balanced by cost.
    let units: Vec<(usize, usize)> = (0..g.n).flat_map(|n| (0..plans.len()).map(move |t| (n, t))).collect();
    let costs: Vec<usize> = units.iter().map(|&(_, t)| plans[t].npix * plans[t].ntaps).collect();
    let nchunks = DW_CHUNKS.div_ceil(g.groups).clamp(1, units.len().max(1));
    let bounds = balanced_bounds(&costs, nchunks);
    let tasks: Vec<(usize, usize, usize)> =
        (0..g.groups).flat_map(|gi| bounds.windows(2).map(move |b| (gi, b[0], b[1]))).collect();

    let partials: Vec<Vec<T>> = tasks
        .par_iter()
        .map(|&(gi, u0, u1)| {
            // Partial dw of group gi in the repacked layout [o][tap][c].
            let mut acc = vec![T::ZERO; gsize];
            for &(n, t) in &units[u0..u1] {
                let pl = &plans[t];
                if pl.ntaps == 0 {
                    continue;
                }
                let (yseg, xseg) = (&ys[pl.sy], &xs[pl.sx]);
                let npix = pl.npix;
                let x_ng = &x[(n * g.groups + gi) * cig * plane..][..cig * plane];
                let g_ng = &gy[(n * g.groups + gi) * cog * oplane..][..cog * oplane];
                let contiguous = yseg.step == 1 && xseg.step == 1 && xseg.count == ow;
                let pix0 = (yseg.start + pl.ja) * ow;
                let col_len = if direct { 0 } else { pl.ntaps * cig * npix };
                let gt_len = if contiguous { 0 } else { cog * npix };
                with_scratch::<T, _>(col_len + gt_len, |buf| {
                    let (col, gt) = buf.split_at_mut(col_len);
                    if !direct {
                        gather_tile(x_ng, cig, (g.h, g.w), yseg, xseg, pl, col);
                    }
                    let gmat = if contiguous {
                        Mat { data: &g_ng[pix0..], rows: cog, cols: npix, rs: oplane as isize, cs: 1 }
                    } else {
                        gather_pixels(gt, g_ng, cog, ow, oplane, yseg, xseg, pl);
                        Mat::rm(&*gt, cog, npix)
                    };
                    for r in &pl.runs {
                        let b = if direct {
                            Mat { data: &x_ng[pix0..], rows: cig, cols: npix, rs: plane as isize, cs: 1 }.t()
                        } else {
                            Mat::rm(&col[r.idx0 * cig * npix..][..r.len * cig * npix], r.len * cig, npix).t()
                        };
                        let c_off = r.tap0 * cig;
                        // SAFETY: acc is [cog][taps*cig]; the view is cog x len*cig at column c_off.
                        unsafe {
                            gemm_serial(T::ONE, gmat, b, T::ONE, acc.as_mut_ptr().add(c_off), (taps * cig) as isize, 1)
                        };
                    }
                });
            }
            acc
        })
        .collect();

    // Reduce the chunks of each group in chunk order, unpacking [o][tap][c] -> [o][c][tap].
    let per_group = bounds.len() - 1;
    dw.par_chunks_mut(gsize).enumerate().for_each(|(gi, dwg)| {
        let parts = &partials[gi * per_group..(gi + 1) * per_group];
        for o in 0..cog {
            for t in 0..taps {
                for c in 0..cig {
                    let i = (o * taps + t) * cig + c;
                    let mut s = parts[0][i];
                    for p in &parts[1..] {
                        s += p[i];
                    }
                    dwg[(o * cig + c) * taps + t] = s;
                }
            }
        }
    });
}

/// Sum of a slice in index order (a fixed order, so the result is reproducible).
fn sum_in_order<T: Float>(v: &[T]) -> T {
    // Four interleaved accumulators: still a fixed order, but the adds pipeline.
    let mut acc = [T::ZERO; 4];
    let mut it = v.chunks_exact(4);
    for c in &mut it {
        acc[0] += c[0];
        acc[1] += c[1];
        acc[2] += c[2];
        acc[3] += c[3];
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for &r in it.remainder() {
        s += r;
    }
    s
}

/// Split `costs` into `k` contiguous ranges of about equal total cost; returns `k + 1` bounds.
fn balanced_bounds(costs: &[usize], k: usize) -> Vec<usize> {
    let total: usize = costs.iter().sum::<usize>().max(1);
    let mut bounds = vec![0];
    let mut acc = 0;
    for (i, &c) in costs.iter().enumerate() {
        acc += c;
        let next = bounds.len();
        if next < k && acc * k >= total * next && i + 1 < costs.len() {
            bounds.push(i + 1);
        }
    }
    bounds.push(costs.len());
    bounds
}

/// How destination coordinates map to source coordinates along one axis, per tap:
/// `src = (dst * mul + off[tap]) / div`, live only when divisible and inside `[0, src_len)`.
struct Axis {
    mul: isize,
    div: isize,
    off: Vec<isize>,
    src_len: usize,
    dst_len: usize,
}

impl Axis {
    /// Forward: `i = o s - p + k d`.
    fn forward(in_len: usize, out_len: usize, k: usize, s: usize, p: usize, d: usize) -> Axis {
        let off = (0..k).map(|t| (t * d) as isize - p as isize).collect();
        Axis { mul: s as isize, div: 1, off, src_len: in_len, dst_len: out_len }
    }
    /// Input gradient: `o = (i + p - k d) / s`.
    fn input_grad(in_len: usize, out_len: usize, k: usize, s: usize, p: usize, d: usize) -> Axis {
        let off = (0..k).map(|t| p as isize - (t * d) as isize).collect();
        Axis { mul: 1, div: s as isize, off, src_len: out_len, dst_len: in_len }
    }
    fn src(&self, dst: usize, tap: usize) -> Option<usize> {
        let v = dst as isize * self.mul + self.off[tap];
        if v < 0 || v % self.div != 0 {
            return None;
        }
        let q = (v / self.div) as usize;
        (q < self.src_len).then_some(q)
    }
    fn is_identity(&self) -> bool {
        self.off == [0] && self.mul == 1 && self.div == 1 && self.src_len == self.dst_len
    }
}

/// A tap live on destination coordinates `j in [ja, jb)` of a segment, reading source
/// `src0 + (j - ja) * src_step`.
#[derive(Clone, Copy, Debug)]
struct TapSpan {
    tap: usize,
    ja: usize,
    jb: usize,
    src0: usize,
}

/// Destination coordinates `start + step * j` for `j < count`, with the taps live on them.
#[derive(Debug)]
struct Segment {
    start: usize,
    step: usize,
    count: usize,
    src_step: usize,
    taps: Vec<TapSpan>,
}

impl Segment {
    fn coord(&self, j: usize) -> usize {
        self.start + self.step * j
    }
}

/// Cut an axis into segments with a fixed live-tap set (up to the merging of narrow ones).
fn segments(ax: &Axis, min_span: usize) -> Vec<Segment> {
    let step = ax.div as usize;
    let src_step = (step as isize * ax.mul / ax.div) as usize;
    let mut out = Vec::new();
    for phase in 0..step.min(ax.dst_len) {
        let count = (ax.dst_len - phase).div_ceil(step);
        // Live interval of each tap over j (the live set is an interval: divisibility is fixed
        // within a phase and the range condition is monotone).
        let spans: Vec<Option<(usize, usize)>> = (0..ax.off.len())
            .map(|t| {
                let live = |j: usize| ax.src(phase + step * j, t).is_some();
                let ja = (0..count).find(|&j| live(j))?;
                let jb = (ja..count).find(|&j| !live(j)).unwrap_or(count);
                debug_assert!((jb..count).all(|j| !live(j)), "live taps must form an interval");
                Some((ja, jb))
            })
            .collect();
        let mut cuts: Vec<usize> = vec![0, count];
        for &(a, b) in spans.iter().flatten() {
            cuts.extend([a, b]);
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut cur: Option<(usize, usize)> = None;
        for w in cuts.windows(2) {
            let c = match cur {
                None => (w[0], w[1]),
                Some((a, _)) => (a, w[1]),
            };
            if c.1 - c.0 >= min_span {
                groups.push(c);
                cur = None;
            } else {
                cur = Some(c);
            }
        }
        if let Some(c) = cur {
            match groups.last_mut() {
                Some(last) => last.1 = c.1,
                None => groups.push(c),
            }
        }
        for (a, b) in groups {
            let taps = spans
                .iter()
                .enumerate()
                .filter_map(|(t, s)| {
                    let (ja, jb) = (*s)?;
                    let (ja, jb) = (ja.max(a), jb.min(b));
                    (ja < jb).then(|| TapSpan {
                        tap: t,
                        ja: ja - a,
                        jb: jb - a,
                        src0: ax.src(phase + step * ja, t).unwrap(),
                    })
                })
                .collect();
            out.push(Segment { start: phase + step * a, step, count: b - a, src_step, taps });
        }
    }
    out
}

/// A run of live taps with consecutive tap indices: col rows `[idx0, idx0 + len)` (times the
/// channel count) hold taps `tap0 .. tap0 + len`.
#[derive(Clone, Copy, Debug)]
struct Run {
    idx0: usize,
    tap0: usize,
    len: usize,
}

/// One tile: rows `[ja, jb)` of y-segment `sy` times all of x-segment `sx`, with its live taps.
#[derive(Debug)]
struct TilePlan {
    sy: usize,
    sx: usize,
    ja: usize,
    jb: usize,
    /// Live y taps (x taps are those of the x segment).
    ky: Vec<TapSpan>,
    runs: Vec<Run>,
    ntaps: usize,
    npix: usize,
}

fn plan_tiles(ys: &[Segment], xs: &[Segment], kw: usize, target: usize) -> Vec<TilePlan> {
    let mut plans = Vec::new();
    for (sy, yseg) in ys.iter().enumerate() {
        for (sx, xseg) in xs.iter().enumerate() {
            let rows_per = (target / xseg.count).max(1);
            let nt = yseg.count.div_ceil(rows_per);
            for i in 0..nt {
                let (ja, jb) = (i * yseg.count / nt, (i + 1) * yseg.count / nt);
                let ky: Vec<TapSpan> = yseg.taps.iter().copied().filter(|t| t.ja < jb && t.jb > ja).collect();
                let mut runs: Vec<Run> = Vec::new();
                let mut idx = 0;
                for ty in &ky {
                    for tx in &xseg.taps {
                        let tap = ty.tap * kw + tx.tap;
                        match runs.last_mut() {
                            Some(r) if r.tap0 + r.len == tap => r.len += 1,
                            _ => runs.push(Run { idx0: idx, tap0: tap, len: 1 }),
                        }
                        idx += 1;
                    }
                }
                plans.push(TilePlan { sy, sx, ja, jb, ky, runs, ntaps: idx, npix: (jb - ja) * xseg.count });
            }
        }
    }
    plans
}

/// Build the im2col block of a tile: rows (live tap, channel), columns the tile's pixels.
fn gather_tile<T: Float>(
    src: &[T],
    channels: usize,
    (src_h, src_w): (usize, usize),
    yseg: &Segment,
    xseg: &Segment,
    pl: &TilePlan,
    col: &mut [T],
) {
    let plane = src_h * src_w;
    let wdt = xseg.count;
    let npix = pl.npix;
    let mut row = 0;
    for ty in &pl.ky {
        for tx in &xseg.taps {
            for c in 0..channels {
                let sp = &src[c * plane..][..plane];
                let dst = &mut col[row * npix..][..npix];
                row += 1;
                for (r, j) in (pl.ja..pl.jb).enumerate() {
                    let d = &mut dst[r * wdt..][..wdt];
                    if j < ty.ja || j >= ty.jb {
                        d.fill(T::ZERO);
                        continue;
                    }
                    let iy = ty.src0 + (j - ty.ja) * yseg.src_step;
                    let srow = &sp[iy * src_w..][..src_w];
                    d[..tx.ja].fill(T::ZERO);
                    d[tx.jb..].fill(T::ZERO);
                    let live = &mut d[tx.ja..tx.jb];
                    if xseg.src_step == 1 {
                        live.copy_from_slice(&srow[tx.src0..tx.src0 + live.len()]);
                    } else {
                        for (q, v) in live.iter_mut().enumerate() {
                            *v = srow[tx.src0 + q * xseg.src_step];
                        }
                    }
                }
            }
        }
    }
}

/// Gather a tile's pixels of `rows` planes (`[rows][plane]`, width `w`) into `tile` (`[rows][npix]`).
#[allow(clippy::too_many_arguments)]
fn gather_pixels<T: Float>(
    tile: &mut [T],
    planes: &[T],
    rows: usize,
    w: usize,
    plane: usize,
    yseg: &Segment,
    xseg: &Segment,
    pl: &TilePlan,
) {
    let wdt = xseg.count;
    for m in 0..rows {
        for (r, j) in (pl.ja..pl.jb).enumerate() {
            let prow = &planes[m * plane + yseg.coord(j) * w..][..w];
            let trow = &mut tile[m * pl.npix + r * wdt..][..wdt];
            for (q, v) in trow.iter_mut().enumerate() {
                *v = prow[xseg.coord(q)];
            }
        }
    }
}

struct SendPtr<T>(*mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// `dst[n][g m + r][pixel] = bias + sum_{tap, c} a[g][r][tap][c] src[n][g c_src + c][map(pixel, tap)]`.
struct GatherConv<'a, T> {
    /// `[groups][m][taps][c_src]`.
    a: &'a [T],
    m: usize,
    c_src: usize,
    groups: usize,
    n: usize,
    src: &'a [T],
    src_hw: (usize, usize),
    out_hw: (usize, usize),
    ymap: Axis,
    xmap: Axis,
    bias: Option<&'a [T]>,
}

impl<T: Float> GatherConv<'_, T> {
    fn run(&self, out: &mut [T], depthwise: bool) {
        let ys = segments(&self.ymap, MIN_SPAN_Y);
        let xs = segments(&self.xmap, MIN_SPAN_X);
        let (kh, kw) = (self.ymap.off.len(), self.xmap.off.len());
        if depthwise {
            return self.run_depthwise(out, &ys, &xs, kh * kw);
        }
        let plans = plan_tiles(&ys, &xs, kw, TILE_PIX);
        let per_image = self.groups * plans.len();
        let optr = SendPtr(out.as_mut_ptr());
        let optr = &optr;
        (0..self.n * per_image).into_par_iter().for_each(|u| {
            let (n, rest) = (u / per_image, u % per_image);
            let (g, t) = (rest / plans.len(), rest % plans.len());
            let pl = &plans[t];
            // SAFETY: each (n, g, tile) unit writes only its own tile's pixels of its own planes.
            unsafe { self.tile(n, g, pl, &ys[pl.sy], &xs[pl.sx], kh * kw, optr.0) };
        });
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(&self, n: usize, g: usize, pl: &TilePlan, yseg: &Segment, xseg: &Segment, taps: usize, out: *mut T) {
        let (m, c_src) = (self.m, self.c_src);
        let (oh, ow) = self.out_hw;
        let oplane = oh * ow;
        let splane = self.src_hw.0 * self.src_hw.1;
        let k_all = taps * c_src;
        let a_g = &self.a[g * m * k_all..][..m * k_all];
        let src = &self.src[(n * self.groups + g) * c_src * splane..][..c_src * splane];
        let out_base = (n * self.groups + g) * m * oplane;
        let npix = pl.npix;
        let direct_b = self.ymap.is_identity() && self.xmap.is_identity();
        let contiguous = yseg.step == 1 && xseg.step == 1 && xseg.count == ow;
        debug_assert!(!direct_b || contiguous);
        let pix0 = (yseg.start + pl.ja) * ow;
        let col_len = if direct_b { 0 } else { pl.ntaps * c_src * npix };
        let tmp_len = if contiguous { 0 } else { m * npix };
        with_scratch::<T, _>(col_len + tmp_len, |buf| {
            let (col, tmp) = buf.split_at_mut(col_len);
            if !direct_b {
                gather_tile(src, c_src, self.src_hw, yseg, xseg, pl, col);
            }
            let (c, rsc) = if contiguous { (out.add(out_base + pix0), oplane) } else { (tmp.as_mut_ptr(), npix) };
            let mut beta = T::ZERO;
            if self.bias.is_some() || pl.runs.is_empty() {
                for r in 0..m {
                    let v = self.bias.map_or(T::ZERO, |b| b[g * m + r]);
                    std::slice::from_raw_parts_mut(c.add(r * rsc), npix).fill(v);
                }
                beta = T::ONE;
            }
            for run in &pl.runs {
                let a =
                    Mat { data: &a_g[run.tap0 * c_src..], rows: m, cols: run.len * c_src, rs: k_all as isize, cs: 1 };
                let b = if direct_b {
                    Mat { data: &src[pix0..], rows: c_src, cols: npix, rs: splane as isize, cs: 1 }
                } else {
                    Mat::rm(&col[run.idx0 * c_src * npix..][..run.len * c_src * npix], run.len * c_src, npix)
                };
                gemm_serial(T::ONE, a, b, beta, c, rsc as isize, 1);
                beta = T::ONE;
            }
            if !contiguous {
                let wdt = xseg.count;
                for r in 0..m {
                    for (ri, j) in (pl.ja..pl.jb).enumerate() {
                        let row = out.add(out_base + r * oplane + yseg.coord(j) * ow);
                        let trow = &tmp[r * npix + ri * wdt..][..wdt];
                        for (q, &v) in trow.iter().enumerate() {
                            *row.add(xseg.coord(q)) = v;
                        }
                    }
                }
            }
        });
    }

    /// One input and one output channel per group: a direct loop per plane, taps outermost so the
    /// inner loop is a contiguous (or strided) row update.
    fn run_depthwise(&self, out: &mut [T], ys: &[Segment], xs: &[Segment], taps: usize) {
        let (oh, ow) = self.out_hw;
        let (sh, sw) = self.src_hw;
        let (oplane, splane) = (oh * ow, sh * sw);
        let kw = self.xmap.off.len();
        out.par_chunks_mut(oplane).enumerate().for_each(|(plane_idx, dst)| {
            let ch = plane_idx % self.groups;
            let src = &self.src[plane_idx * splane..][..splane];
            let wt = &self.a[ch * taps..][..taps];
            dst.fill(self.bias.map_or(T::ZERO, |b| b[ch]));
            for yseg in ys {
                for xseg in xs {
                    for ty in &yseg.taps {
                        for tx in &xseg.taps {
                            let wv = wt[ty.tap * kw + tx.tap];
                            for j in ty.ja..ty.jb {
                                let iy = ty.src0 + (j - ty.ja) * yseg.src_step;
                                let srow = &src[iy * sw..][..sw];
                                let drow = yseg.coord(j) * ow;
                                for q in tx.ja..tx.jb {
                                    let ix = tx.src0 + (q - tx.ja) * xseg.src_step;
                                    dst[drow + xseg.coord(q)] += wv * srow[ix];
                                }
                            }
                        }
                    }
                }
            }
        });
    }
}

/// Depthwise `dw[c][tap] = sum_n sum_pixels gy[n, c, .] x[n, c, map(., tap)]`, one task per channel.
fn depthwise_weight_grad<T: Float>(g: &Conv2dGeom, ys: &[Segment], xs: &[Segment], x: &[T], gy: &[T], dw: &mut [T]) {
    let (oh, ow) = g.ohw();
    let (plane, oplane, taps, kw, ch) = (g.h * g.w, oh * ow, g.taps(), g.kw, g.c_in);
    dw.par_chunks_mut(taps).enumerate().for_each(|(c, dwc)| {
        for (t, v) in dwc.iter_mut().enumerate() {
            let (ky, kx) = (t / kw, t % kw);
            let mut s = T::ZERO;
            for n in 0..g.n {
                let src = &x[(n * ch + c) * plane..][..plane];
                let gp = &gy[(n * ch + c) * oplane..][..oplane];
                for yseg in ys {
                    let Some(ty) = yseg.taps.iter().find(|s| s.tap == ky) else { continue };
                    for xseg in xs {
                        let Some(tx) = xseg.taps.iter().find(|s| s.tap == kx) else { continue };
                        for j in ty.ja..ty.jb {
                            let iy = ty.src0 + (j - ty.ja) * yseg.src_step;
                            let orow = yseg.coord(j) * ow;
                            for q in tx.ja..tx.jb {
                                let ix = tx.src0 + (q - tx.ja) * xseg.src_step;
                                s += gp[orow + xseg.coord(q)] * src[iy * g.w + ix];
                            }
                        }
                    }
                }
            }
            *v = s;
        }
    });
}

/// `C = alpha A B + beta C` on one thread (the callers parallelise over tiles).
///
/// # Safety
/// `c` with strides `rsc`, `csc` must address a valid `a.rows x b.cols` matrix not aliasing `a`, `b`.
unsafe fn gemm_serial<T: Float>(alpha: T, a: Mat<'_, T>, b: Mat<'_, T>, beta: T, c: *mut T, rsc: isize, csc: isize) {
    debug_assert_eq!(a.cols, b.rows);
    let last = |m: &Mat<'_, T>| (m.rows as isize - 1) * m.rs + (m.cols as isize - 1) * m.cs;
    assert!(a.rows == 0 || a.cols == 0 || (last(&a) as usize) < a.data.len(), "conv gemm: A out of bounds");
    assert!(b.rows == 0 || b.cols == 0 || (last(&b) as usize) < b.data.len(), "conv gemm: B out of bounds");
    if a.rows == 0 || b.cols == 0 {
        return;
    }
    T::gemm_raw(
        a.rows,
        a.cols,
        b.cols,
        alpha,
        a.data.as_ptr(),
        a.rs,
        a.cs,
        b.data.as_ptr(),
        b.rs,
        b.cs,
        beta,
        c,
        rsc,
        csc,
    );
}

/// Run `f` on a per-thread scratch buffer of at least `len` elements, reused across calls (its
/// contents are whatever the last user left; callers overwrite what they read).
fn with_scratch<T: Float, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    thread_local! {
        static POOL: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
    }
    // Take the buffer out while `f` runs, so a nested use on this thread gets its own.
    let mut buf: Vec<T> = POOL.with(|p| {
        let mut p = p.borrow_mut();
        match p.iter_mut().find_map(|b| b.downcast_mut::<Vec<T>>()) {
            Some(v) => std::mem::take(v),
            None => Vec::new(),
        }
    });
    if buf.len() < len {
        buf.resize(len, T::ZERO);
    }
    let r = f(&mut buf[..len]);
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        match p.iter_mut().find_map(|b| b.downcast_mut::<Vec<T>>()) {
            Some(v) => {
                if v.capacity() < buf.capacity() {
                    *v = buf;
                }
            }
            None => p.push(Box::new(buf)),
        }
    });
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct definition, for checking the tiled kernels.
    fn naive(g: &Conv2dGeom, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
        let (oh, ow) = g.out_hw().unwrap();
        let (cig, cog) = (g.cig(), g.cog());
        let mut y = vec![0.0; g.n * g.c_out * oh * ow];
        for n in 0..g.n {
            for o in 0..g.c_out {
                let gi = o / cog;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = b.map_or(0.0, |b| b[o]);
                        for c in 0..cig {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.padding[0] as isize;
                                    let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    let xi = ((n * g.c_in + gi * cig + c) * g.h + iy as usize) * g.w + ix as usize;
                                    s += w[((o * cig + c) * g.kh + ky) * g.kw + kx] * x[xi];
                                }
                            }
                        }
                        y[((n * g.c_out + o) * oh + oy) * ow + ox] = s;
                    }
                }
            }
        }
        y
    }

    fn vals(n: usize, seed: usize) -> Vec<f64> {
        (0..n).map(|i| (((i * 7919 + seed * 104729) % 23) as f64 - 11.0) / 8.0).collect()
    }

    #[test]
    fn forward_matches_naive_on_padded_dilated_strided_grouped_cases() {
        let cases = [
            (2, 4, 9, 8, 6, 3, 3, [1, 1], [1, 1], [1, 1], 2),
            (1, 3, 33, 33, 4, 3, 3, [1, 1], [18, 18], [18, 18], 1),
            (1, 2, 13, 11, 2, 3, 2, [2, 3], [2, 1], [3, 2], 1),
            (2, 4, 7, 7, 4, 3, 3, [2, 2], [1, 1], [1, 1], 4),
            (1, 4, 10, 10, 8, 1, 1, [1, 1], [0, 0], [1, 1], 2),
            (1, 3, 70, 70, 5, 1, 1, [1, 1], [0, 0], [1, 1], 1),
        ];
        for &(n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups) in &cases {
            let g = Conv2dGeom { n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups };
            let x = vals(n * c_in * h * w, 1);
            let wt = vals(c_out * (c_in / groups) * kh * kw, 2);
            let b = vals(c_out, 3);
            let (oh, ow) = g.out_hw().unwrap();
            let mut y = vec![0.0; n * c_out * oh * ow];
            conv2d_forward(&g, &x, &wt, Some(&b), &mut y);
            let want = naive(&g, &x, &wt, Some(&b));
            for (a, e) in y.iter().zip(&want) {
                assert!((a - e).abs() < 1e-9, "{g:?}: {a} vs {e}");
            }
        }
    }
}
