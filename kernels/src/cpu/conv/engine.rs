//! The gather-conv engine shared by `y` and `dx`, and the single-threaded GEMM its tiles call.
//!
//! [`forward`] and [`input_grad`] repack the weights into the layout the GEMM wants and describe
//! the problem as a [`GatherConv`]: "for each destination pixel, sum over taps of a matrix times a
//! source pixel found through an [`Axis`] map". [`GatherConv::run`] plans the tiles, splits the
//! work over (image, group, tile) units and runs each unit's gather + GEMMs ([`GatherConv::tile`]);
//! depthwise convs branch off to the direct loop in `depthwise.rs`, and large 3x3 stride-1 f32
//! convs to Winograd (F(4x4, 3x3) or F(2x2, 3x3)) in `winograd.rs`.

#[cfg(target_arch = "x86_64")]
use super::direct;
use super::gather::{
    gather_planes_slabs, gather_tile, gather_tile_slabs, scatter_pixels, with_scratch, TapTable, TileTables,
};
use super::tiling::{plan_tiles, segments, Axis, Segment, TilePlan};
use super::{per_tap, weight_panels, winograd};
use super::{Conv2dGeom, MIN_SPAN_X, MIN_SPAN_Y, TILE_PIX};
use crate::cpu::gemm::Mat;
use crate::cpu::packed_gemm::{self, as_f32, as_f32_mut, slab_len, KSeg, PackedA, KC};
use crate::cpu::parallel::SendPtr;
use crate::Float;
use rayon::prelude::*;

/// `y = conv(x, w) + b` for a validated geometry. `y` is fully overwritten.
pub(super) fn forward<T: Float>(g: &Conv2dGeom, x: &[T], w: &[T], bias: Option<&[T]>, y: &mut [T]) {
    if use_packed::<T>() && winograd::applies(g) {
        let f32s = |v| as_f32(v).expect("packed conv path on f32 only");
        let y = as_f32_mut(y).expect("packed conv path on f32 only");
        return winograd::forward(g, f32s(x), f32s(w), bias.map(f32s), y);
    }
    let (oh, ow) = g.ohw();
    let (s, p, d) = (g.stride, g.padding, g.dilation);
    let ymap = Axis::forward(g.h, oh, g.kh, s[0], p[0], d[0]);
    let xmap = Axis::forward(g.w, ow, g.kw, s[1], p[1], d[1]);
    let (cig, cog, taps) = (g.cig(), g.cog(), g.taps());
    // The packed f32 path: per group, A(o, tap cig + c) = w[o][c][tap] in the micro-kernel's panels.
    let packed = (use_packed::<T>() && !g.is_depthwise()).then(|| {
        weight_panels::forward(
            as_f32(w).expect("packed conv path on f32 only"),
            g.groups,
            cig,
            &live_taps(&ymap, &xmap),
            cog,
        )
    });
    // Otherwise repack w[o][c][tap] -> a[o][tap][c] so that a run of live taps is one contiguous K range.
    let mut a = Vec::new();
    if packed.is_none() {
        a = vec![T::ZERO; w.len()];
        for o in 0..g.c_out {
            for c in 0..cig {
                for t in 0..taps {
                    a[(o * taps + t) * cig + c] = w[(o * cig + c) * taps + t];
                }
            }
        }
    }
    GatherConv {
        a: &a,
        packed: packed.as_deref(),
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

/// `dx` from `gy` for a validated geometry. `dx` is fully overwritten.
pub(super) fn input_grad<T: Float>(g: &Conv2dGeom, w: &[T], gy: &[T], dx: &mut [T]) {
    if use_packed::<T>() && winograd::applies(g) {
        let f32s = |v| as_f32(v).expect("packed conv path on f32 only");
        let dx = as_f32_mut(dx).expect("packed conv path on f32 only");
        return winograd::input_grad(g, f32s(w), f32s(gy), dx);
    }
    let (oh, ow) = g.ohw();
    let (s, p, d) = (g.stride, g.padding, g.dilation);
    let ymap = Axis::input_grad(g.h, oh, g.kh, s[0], p[0], d[0]);
    let xmap = Axis::input_grad(g.w, ow, g.kw, s[1], p[1], d[1]);
    let (cig, cog, taps) = (g.cig(), g.cog(), g.taps());
    // The packed f32 path: per group, A(c, tap cog + o) = w[o][c][tap] (the forward's transpose).
    let packed = (use_packed::<T>() && !g.is_depthwise()).then(|| {
        weight_panels::input_grad(
            as_f32(w).expect("packed conv path on f32 only"),
            g.groups,
            cig,
            &live_taps(&ymap, &xmap),
            cog,
        )
    });
    // Otherwise a[g][c][tap][o] = w[g cog + o][c][tap]: the transposed weights of each group.
    let mut a = Vec::new();
    if packed.is_none() {
        a = vec![T::ZERO; w.len()];
        for gi in 0..g.groups {
            for o in 0..cog {
                for c in 0..cig {
                    for t in 0..taps {
                        a[((gi * cig + c) * taps + t) * cog + o] = w[((gi * cog + o) * cig + c) * taps + t];
                    }
                }
            }
        }
    }
    GatherConv {
        a: &a,
        packed: packed.as_deref(),
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

/// `dst[n][g m + r][pixel] = bias + sum_{tap, c} a[g][r][tap][c] src[n][g c_src + c][map(pixel, tap)]`.
///
/// (The fields are visible to the sibling modules for the depthwise loop in `depthwise.rs`.)
pub(super) struct GatherConv<'a, T> {
    /// `[groups][m][taps][c_src]` (empty on the packed path).
    pub(super) a: &'a [T],
    /// The same weights per group in the packed GEMM's panels, when `T` is f32 and the CPU has
    /// AVX2 + FMA ([`use_packed`]): then tiles gather straight into slabs and skip matrixmultiply.
    pub(super) packed: Option<&'a [PackedA]>,
    pub(super) m: usize,
    pub(super) c_src: usize,
    pub(super) groups: usize,
    pub(super) n: usize,
    pub(super) src: &'a [T],
    pub(super) src_hw: (usize, usize),
    pub(super) out_hw: (usize, usize),
    pub(super) ymap: Axis,
    pub(super) xmap: Axis,
    pub(super) bias: Option<&'a [T]>,
}

impl<T: Float> GatherConv<'_, T> {
    /// Overwrite `out` (`[n][groups m][out plane]`): plan the tiles, then run one parallel task per
    /// (image, group, tile) unit, or the direct loop per plane for a depthwise conv.
    pub(super) fn run(&self, out: &mut [T], depthwise: bool) {
        let ys = segments(&self.ymap, MIN_SPAN_Y);
        let xs = segments(&self.xmap, MIN_SPAN_X);
        let (kh, kw) = (self.ymap.off.len(), self.xmap.off.len());
        if depthwise {
            return self.run_depthwise(out, &ys, &xs, kh * kw);
        }
        if let Some(packed) = self.packed {
            let (oh, ow) = self.out_hw;
            if per_tap::applies(&self.ymap, &self.xmap, &ys, &xs, self.n * oh * ow, self.c_src, self.m) {
                // SAFETY: T is f32 on the packed path; `out` is the whole destination.
                return unsafe { self.run_per_tap(packed, out.as_mut_ptr().cast()) };
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(p) = direct::plan(&self.ymap, &self.xmap, self.src_hw, self.out_hw, self.c_src, self.groups) {
                // SAFETY: T is f32 on the packed path, the CPU has AVX2 + FMA (`plan` gave `p`);
                // `out` is the whole destination.
                return unsafe { self.run_direct(&p, &packed[0], out.as_mut_ptr().cast()) };
            }
        }
        let plans = plan_tiles(&ys, &xs, kw, TILE_PIX);
        let per_image = self.groups * plans.len();
        let optr = SendPtr(out.as_mut_ptr());
        if let Some(packed) = self.packed.filter(|_| per_image >= IMAGES_PER_UNIT_MIN_UNITS) {
            // Enough units in one image: each (group, tile) unit runs every image, so its tap table
            // is built once (the stem's 7x7 on 3 channels spent longer building tables than gathering).
            (0..per_image).into_par_iter().for_each(|u| {
                let (g, t) = (u / plans.len(), u % plans.len());
                let pl = &plans[t];
                // SAFETY: T is f32 on the packed path; each (g, tile) unit writes only its own tile's
                // pixels of its own planes, in every image.
                unsafe {
                    self.tile_packed(&packed[g], 0..self.n, g, pl, &ys[pl.sy], &xs[pl.sx], None, optr.ptr().cast())
                };
            });
            return;
        }
        // One unit per image: the packed path's tap tables are built once, for all images.
        let direct_b = self.ymap.is_identity() && self.xmap.is_identity();
        let tables =
            (self.packed.is_some() && !direct_b).then(|| TileTables::build(&plans, self.src_hw.1, &ys, &xs, true));
        (0..self.n * per_image).into_par_iter().for_each(|u| {
            let (n, rest) = (u / per_image, u % per_image);
            let (g, t) = (rest / plans.len(), rest % plans.len());
            let pl = &plans[t];
            let table = tables.as_ref().map(|tt| tt.get(t));
            // SAFETY: each (n, g, tile) unit writes only its own tile's pixels of its own planes.
            unsafe { self.tile(n, g, pl, &ys[pl.sy], &xs[pl.sx], kh * kw, table, optr.ptr()) };
        });
    }

    /// Gather + GEMMs of one unit, written into `out`'s planes of image `n`, group `g`, tile `pl`
    /// (`table`: the tile's tap table on the packed path, when the caller built it).
    ///
    /// # Safety
    /// `out` must point to the whole output buffer (`n groups m` planes of `out_hw`), and no other
    /// thread may access this unit's elements meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        &self,
        n: usize,
        g: usize,
        pl: &TilePlan,
        yseg: &Segment,
        xseg: &Segment,
        taps: usize,
        table: Option<TapTable<'_>>,
        out: *mut T,
    ) {
        if let Some(packed) = self.packed {
            return self.tile_packed(&packed[g], n..n + 1, g, pl, yseg, xseg, table, out.cast());
        }
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
                scatter_pixels(tmp, out.add(out_base), m, ow, oplane, yseg, xseg, pl);
            }
        });
    }

    /// [`Self::tile`] on the packed f32 path, for images `images` in turn (one tap table for all,
    /// `shared` or built here):
    /// the tile's im2col block is gathered straight into the GEMM's slabs and multiplied by the
    /// group's packed weights, one segment per run of live taps, all accumulated in registers
    /// before `C` is stored.
    ///
    /// # Safety
    /// As [`Self::tile`]; `T` is f32 (the caller checked, [`use_packed`]).
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_packed(
        &self,
        pa: &PackedA,
        images: std::ops::Range<usize>,
        g: usize,
        pl: &TilePlan,
        yseg: &Segment,
        xseg: &Segment,
        shared: Option<TapTable<'_>>,
        out: *mut f32,
    ) {
        let (m, c_src) = (self.m, self.c_src);
        let (oh, ow) = self.out_hw;
        let oplane = oh * ow;
        let splane = self.src_hw.0 * self.src_hw.1;
        let src_all = as_f32(self.src).expect("packed conv path on f32 only");
        let bias = self.bias.map(|b| as_f32(b).expect("packed conv path on f32 only"));
        let npix = pl.npix;
        let direct_b = self.ymap.is_identity() && self.xmap.is_identity();
        let contiguous = yseg.step == 1 && xseg.step == 1 && xseg.count == ow;
        let pix0 = (yseg.start + pl.ja) * ow;
        let k = pl.ntaps * c_src;
        // The block is gathered and multiplied KC rows at a time, so the slabs being read stay in
        // L2 (a 3x3 conv on 512 channels has k = 4608: 4.7 MB of slabs at once would not).
        let b_len = slab_len(k.min(KC), npix);
        let tmp_len = if contiguous { 0 } else { m * npix };
        let table_len = if direct_b || shared.is_some() { 0 } else { TapTable::len(pl.ntaps, npix, true) };
        with_scratch::<u32, _>(table_len, |table_buf| {
            let table =
                shared.or_else(|| (!direct_b).then(|| TapTable::build(table_buf, self.src_hw.1, yseg, xseg, pl, true)));
            with_scratch::<f32, _>(b_len + tmp_len, |buf| {
                let (slab_buf, tmp) = buf.split_at_mut(b_len);
                for n in images.clone() {
                    let src = &src_all[(n * self.groups + g) * c_src * splane..][..c_src * splane];
                    let out_base = (n * self.groups + g) * m * oplane;
                    let (c, ldc) =
                        if contiguous { (out.add(out_base + pix0), oplane) } else { (tmp.as_mut_ptr(), npix) };
                    if let Some(b) = bias {
                        for r in 0..m {
                            std::slice::from_raw_parts_mut(c.add(r * ldc), npix).fill(b[g * m + r]);
                        }
                    }
                    if k == 0 {
                        // No live tap: C is the bias (or zeros).
                        packed_gemm::gemm_to(pa, &[], slab_buf, 0, npix, c, ldc, bias.is_some());
                    }
                    for l0 in (0..k).step_by(KC) {
                        let l1 = (l0 + KC).min(k);
                        let slabs = &mut slab_buf[..slab_len(l1 - l0, npix)];
                        if direct_b {
                            gather_planes_slabs(&src[l0 * splane..], l1 - l0, splane, pix0, npix, slabs);
                        } else {
                            gather_tile_slabs(
                                src,
                                c_src,
                                splane,
                                table.as_ref().expect("built when gathering"),
                                l0..l1,
                                slabs,
                            );
                        }
                        // The runs' parts inside rows l0..l1 of the block (b_k0 relative to l0).
                        let segs: Vec<KSeg> = pl
                            .runs
                            .iter()
                            .filter_map(|r| {
                                let (b0, b1) = ((r.idx0 * c_src).max(l0), ((r.idx0 + r.len) * c_src).min(l1));
                                (b0 < b1).then(|| KSeg {
                                    a_k0: r.tap0 * c_src + b0 - r.idx0 * c_src,
                                    b_k0: b0 - l0,
                                    len: b1 - b0,
                                })
                            })
                            .collect();
                        packed_gemm::gemm_to(pa, &segs, slabs, l1 - l0, npix, c, ldc, bias.is_some() || l0 > 0);
                    }
                    if !contiguous {
                        scatter_pixels(tmp, out.add(out_base), m, ow, oplane, yseg, xseg, pl);
                    }
                }
            })
        });
    }
}

/// `C = alpha A B + beta C` on one thread (the callers parallelise over tiles).
///
/// # Safety
/// `c` with strides `rsc`, `csc` must address a valid `a.rows x b.cols` matrix not aliasing `a`, `b`.
pub(super) unsafe fn gemm_serial<T: Float>(
    alpha: T,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    beta: T,
    c: *mut T,
    rsc: isize,
    csc: isize,
) {
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

/// Fewest (group, tile) units per image for a unit to run every image (with fewer, one image's
/// units would not keep the threads busy; the late layers' 9 x 9 maps are one tile per image).
const IMAGES_PER_UNIT_MIN_UNITS: usize = 8;

/// Per tap (`ky kw + kx`), whether it lands inside the source somewhere: the weights of the others
/// are never read, so they are not packed (a dilation-18 3x3 on a 17 x 17 map has one live tap).
fn live_taps(ymap: &Axis, xmap: &Axis) -> Vec<bool> {
    let (ly, lx) = (ymap.live_taps(), xmap.live_taps());
    ly.iter().flat_map(|&y| lx.iter().map(move |&x| y && x)).collect()
}

/// True when convs on `T` take the packed f32 path: `T` is f32 and the CPU has AVX2 + FMA.
pub(super) fn use_packed<T: Float>() -> bool {
    as_f32::<T>(&[]).is_some() && packed_gemm::available()
}
