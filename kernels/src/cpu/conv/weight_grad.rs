//! The parameter gradients: `dw` (tiled gather + GEMM into per-chunk partial sums) and `db`.
//!
//! `dw` reuses the forward tiling (with bigger tiles, [`DW_TILE_PIX`]): each tile adds
//! `gy_tile (rows x pix) col_tile^T` to a partial sum. The (image, tile) units of each group are cut
//! into contiguous chunks (about [`DW_CHUNKS`] over all groups) balanced by a cost fixed by the
//! shapes ([`balanced_bounds`]); each chunk has its own partial sum, and the partials are reduced
//! in chunk order, so the result does not depend on the thread count. Depthwise convs use the
//! direct loop in `depthwise.rs`; large 3x3 stride-1 f32 convs (the decoder) take Winograd
//! F(4x4, 3x3) in `winograd.rs`, and pixel-poor ones the per-tap GEMMs of `weight_grad_taps.rs`.
//! `db` sums each channel over `n`, then pixels in order.

use super::depthwise::depthwise_weight_grad;
use super::engine::gemm_serial;
use super::engine::use_packed;
use super::gather::{
    gather_pixels, gather_tile, gather_transposed_slabs, planes_to_transposed_slabs, with_scratch, TapTable, TileTables,
};
use super::tiling::{plan_tiles, segments, Axis, Segment, TilePlan};
use super::weight_grad_taps::{tap_tasks, weight_grad_taps};
use super::winograd;
use super::{Conv2dGeom, DW_CHUNKS, DW_TILE_PIX, MIN_SPAN_X, MIN_SPAN_Y};
use crate::cpu::gemm::Mat;
use crate::cpu::packed_gemm::{self, as_f32, as_f32_mut, slab_len, KSeg, PackedA};
use crate::cpu::parallel::sum_in_order;
use crate::Float;
use rayon::prelude::*;

/// `dw` from `x` and `gy` for a validated geometry. `dw` is fully overwritten.
pub(super) fn weight_grad<T: Float>(g: &Conv2dGeom, x: &[T], gy: &[T], dw: &mut [T]) {
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
    if use_packed::<T>() {
        let f32s = |v| as_f32(v).expect("packed conv path on f32 only");
        if winograd::applies(g) {
            let dw = as_f32_mut(dw).expect("packed conv path on f32 only");
            return winograd::weight_grad(g, f32s(x), f32s(gy), dw);
        }
        if let Some(tasks) = tap_tasks(g) {
            let dw = as_f32_mut(dw).expect("packed conv path on f32 only");
            return weight_grad_taps(g, &tasks, f32s(x), f32s(gy), dw);
        }
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

    let packed = use_packed::<T>();
    // A tile's tap table serves every image: built once per call, not once per (image, tile).
    let tables = (packed && !direct).then(|| TileTables::build(&plans, g.w, &ys, &xs, false));
    let partials: Vec<Vec<T>> = tasks
        .par_iter()
        .map(|&(gi, u0, u1)| {
            // Partial dw of group gi in the repacked layout [o][tap][c].
            let mut acc = vec![T::ZERO; gsize];
            let mut gy_panels = PackedA::pack(0, 0, |_, _| 0.0);
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
                if packed {
                    let tile = DwTile { g, x_ng, g_ng, yseg, xseg, pl, direct, contiguous, pix0 };
                    let acc32 = as_f32_mut(&mut acc).expect("packed conv path on f32 only");
                    tile.accumulate_packed(&mut gy_panels, tables.as_ref().map(|tt| tt.get(t)), acc32);
                    continue;
                }
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

/// `db[o] = sum_{n, pixels} gy[n, o, .]` for validated lengths. `db` is overwritten.
pub(super) fn bias_grad<T: Float>(g: &Conv2dGeom, gy: &[T], db: &mut [T]) {
    let (oh, ow) = g.ohw();
    let plane = oh * ow;
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

/// Most columns of `dw` (taps x channels) per packed GEMM call; a multiple of the slab width.
const DW_COLS: usize = 256;

/// One (image, tile) unit of `dw` on the packed f32 path.
struct DwTile<'a, T> {
    g: &'a Conv2dGeom,
    /// The image's source planes and output-gradient planes of this group.
    x_ng: &'a [T],
    g_ng: &'a [T],
    yseg: &'a Segment,
    xseg: &'a Segment,
    pl: &'a TilePlan,
    direct: bool,
    contiguous: bool,
    pix0: usize,
}

impl<T: Float> DwTile<'_, T> {
    /// `acc ([cog][taps cig]) += gy_tile col_tile^T` with the packed GEMM: the tile's output
    /// gradient is `A` (`cog x npix`, packed into `gy_panels`, a buffer kept across tiles), and
    /// each run of live taps gives `B` = its rows of the im2col block, transposed into slabs
    /// (`npix x run channels`), gathered straight from the source through the tile's `table`
    /// (none when the conv reads its source directly).
    fn accumulate_packed(&self, gy_panels: &mut PackedA, table: Option<TapTable<'_>>, acc: &mut [f32]) {
        let (g, pl, yseg, xseg) = (self.g, self.pl, self.yseg, self.xseg);
        let (cig, cog) = (g.cig(), g.cog());
        let (oh, ow) = g.ohw();
        let oplane = oh * ow;
        let npix = pl.npix;
        let x = as_f32(self.x_ng).expect("packed conv path on f32 only");
        let gyv = as_f32(self.g_ng).expect("packed conv path on f32 only");
        if self.contiguous {
            gy_panels.repack(cog, npix, |o, p| gyv[o * oplane + self.pix0 + p]);
        } else {
            let offsets: Vec<usize> = pl.plane_offsets(yseg, xseg, ow).collect();
            gy_panels.repack(cog, npix, |o, p| gyv[o * oplane + offsets[p]]);
        }
        // Each run's columns in blocks of at most DW_COLS, so the slab scratch stays ~0.5 MiB per
        // thread however many taps x channels a run has (4608 for a 3x3 conv on 512 channels).
        let max_cols = (pl.runs.iter().map(|r| r.len).max().unwrap_or(0) * cig).min(DW_COLS);
        debug_assert_eq!(table.is_none(), self.direct);
        with_scratch::<f32, _>(slab_len(npix, max_cols), |slab_buf| {
            self.accumulate_runs(gy_panels, table.as_ref(), x, slab_buf, max_cols, acc);
        })
    }

    /// The GEMMs of [`Self::accumulate_packed`], run by run, in column blocks of [`DW_COLS`]
    /// (`table`: the tile's [`TapTable`], none when the conv reads its source directly).
    fn accumulate_runs(
        &self,
        gy_panels: &PackedA,
        table: Option<&TapTable>,
        x: &[f32],
        slab_buf: &mut [f32],
        max_cols: usize,
        acc: &mut [f32],
    ) {
        let (g, pl) = (self.g, self.pl);
        let (cig, taps) = (g.cig(), g.taps());
        let plane = g.h * g.w;
        let npix = pl.npix;
        let whole = [KSeg { a_k0: 0, b_k0: 0, len: npix }];
        debug_assert!(slab_buf.len() >= slab_len(npix, max_cols));
        for (r, j0) in pl.runs.iter().flat_map(|r| (0..r.len * cig).step_by(DW_COLS).map(move |j0| (r, j0))) {
            let cols = (r.len * cig - j0).min(DW_COLS);
            let slabs = &mut slab_buf[..slab_len(npix, cols)];
            match table {
                None => planes_to_transposed_slabs(&x[j0 * plane..], plane, self.pix0, npix, cols, slabs),
                Some(table) => gather_transposed_slabs(x, cig, plane, table, r.idx0, j0, cols, slabs),
            }
            let ldc = taps * cig;
            let c_off = r.tap0 * cig + j0;
            // SAFETY: acc is [cog][taps cig]; the block is cog x cols at column c_off, in bounds.
            unsafe {
                packed_gemm::gemm_to(gy_panels, &whole, slabs, npix, cols, acc.as_mut_ptr().add(c_off), ldc, true)
            };
        }
    }
}
