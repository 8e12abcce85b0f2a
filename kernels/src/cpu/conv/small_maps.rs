//! Convs on small maps with large weights (the 17 x 17 maps of the late layers and ASPP): the whole
//! conv as one GEMM blocked over `K`, instead of one GEMM per tile.
//!
//! The tile path ([`GatherConv::run`]) gives every (image, tile) unit its own whole `K` loop
//! against the whole weight matrix. On a 17 x 17 map a tile is at most a few hundred pixels, so each
//! tile streams all of `A` (layer 4's 2048 x 512 weights are 4 MB, an ASPP branch's
//! 256 x 9 x 2048 are 19 MB) from L3 for a few hundred columns at most, and the conv runs at the
//! speed of memory. Here `K` is the outer loop, one tap and at most [`K_STEP`] channels per step:
//! each step gathers that slice of every tile's im2col block (all images) into one shared buffer,
//! then the threads each multiply their own rows of `A` by all of it, so each weight is read from
//! memory once per conv and the slice of `B` stays in cache while it is used. `C` (the output
//! planes, or for tiles that are not whole rows a buffer scattered at the end) starts at the bias
//! and accumulates over the steps in step order: every element is summed in an order fixed by
//! the shapes, whatever the thread count.

use super::engine::GatherConv;
use super::gather::{gather_planes_slabs, gather_tile_slabs, scatter_pixels, with_scratch, TapTable};
use super::tiling::{Segment, TilePlan};
use crate::cpu::packed_gemm::{self, as_f32, slab_len, KSeg, PackedA, MR};
use crate::cpu::parallel::SendPtr;
use crate::Float;
use rayon::prelude::*;

/// Most channels of one tap per step: a `K_STEP x 600`-pixel slice of `B` is 1.2 MB, inside L2.
const K_STEP: usize = 512;
/// Most destination pixels (all images) for this path: beyond it the slice of `B` leaves L2 and
/// tiles already reuse `A` enough.
const MAX_PIX: usize = 1280;
/// Fewest source channels: with thin taps a step is too short to pay for its two barriers.
const MIN_CHANNELS: usize = 128;
/// Fewest weights (`m x k`, 1 MB): below it `A` stays in L2 across tiles anyway.
const MIN_WEIGHTS: usize = 256 * 1024;

/// True when a conv with `pixels` destination pixels over all images, `m x (taps c_src)` weights
/// takes this path.
pub(super) fn applies(pixels: usize, m: usize, taps: usize, c_src: usize) -> bool {
    pixels <= MAX_PIX && c_src >= MIN_CHANNELS && m * taps * c_src >= MIN_WEIGHTS
}

/// Where one (image, tile) unit keeps its parts.
struct Unit<'p> {
    image: usize,
    plan: &'p TilePlan,
    /// Whether `C` is the output itself (whole rows of the plane).
    contiguous: bool,
    /// First pixel in the plane when contiguous.
    pix0: usize,
    /// Offsets of its `B` slice, its `C` buffer (when not contiguous) and its tap table.
    b_off: usize,
    c_off: usize,
    table_off: usize,
}

impl<T: Float> GatherConv<'_, T> {
    /// Overwrite group `g` of `out` by the blocked product (`pa`: the group's packed weights).
    ///
    /// # Safety
    /// `T` is f32 (the packed path); `out` addresses the whole output (`n groups m` planes of
    /// `out_hw`) and nothing else touches group `g`'s planes meanwhile.
    pub(super) unsafe fn run_small_maps(
        &self,
        pa: &PackedA,
        g: usize,
        plans: &[TilePlan],
        ys: &[Segment],
        xs: &[Segment],
        out: *mut f32,
    ) {
        let (m, c_src) = (self.m, self.c_src);
        let (oh, ow) = self.out_hw;
        let oplane = oh * ow;
        let splane = self.src_hw.0 * self.src_hw.1;
        let src = as_f32(self.src).expect("packed conv path on f32 only");
        let direct_b = self.ymap.is_identity() && self.xmap.is_identity();
        let taps = self.ymap.off.len() * self.xmap.off.len();
        let step_rows = K_STEP.min(c_src);
        let (mut b_len, mut c_len, mut table_len) = (0, 0, 0);
        let mut units = Vec::with_capacity(self.n * plans.len());
        for image in 0..self.n {
            for pl in plans {
                let (yseg, xseg) = (&ys[pl.sy], &xs[pl.sx]);
                let contiguous = yseg.step == 1 && xseg.step == 1 && xseg.count == ow;
                let u = Unit {
                    image,
                    plan: pl,
                    contiguous,
                    pix0: (yseg.start + pl.ja) * ow,
                    b_off: b_len,
                    c_off: c_len,
                    table_off: table_len,
                };
                b_len += slab_len(step_rows, pl.npix);
                c_len += if contiguous { 0 } else { m * pl.npix };
                table_len += if direct_b { 0 } else { TapTable::len(pl.ntaps, pl.npix) };
                units.push(u);
            }
        }
        let threads = rayon::current_num_threads().max(1);
        // Rows of `A` per task: two per thread for balance, whole pairs of panels (the AVX-512
        // kernel's 12-row blocks). Which thread runs a chunk never changes what it computes.
        let chunk = m.div_ceil(2 * threads).next_multiple_of(2 * MR).max(2 * MR);
        let row_chunks: Vec<std::ops::Range<usize>> = (0..m).step_by(chunk).map(|r| r..(r + chunk).min(m)).collect();
        let bias = self.bias.map(|b| as_f32(b).expect("packed conv path on f32 only"));
        let out_ptr = SendPtr(out);
        with_scratch::<u32, _>(table_len, |tables| {
            if !direct_b {
                let tp = SendPtr(tables.as_mut_ptr());
                units.par_iter().for_each(|u| {
                    let len = TapTable::len(u.plan.ntaps, u.plan.npix);
                    // SAFETY: each unit builds only its own part of the table buffer.
                    let buf = std::slice::from_raw_parts_mut(tp.ptr().add(u.table_off), len);
                    TapTable::build(buf, self.src_hw.1, &ys[u.plan.sy], &xs[u.plan.sx], u.plan);
                });
            }
            let tables: &[u32] = tables;
            let table = |u: &Unit| {
                let len = TapTable::len(u.plan.ntaps, u.plan.npix);
                TapTable::view(&tables[u.table_off..][..len], u.plan.npix)
            };
            with_scratch::<f32, _>(b_len + c_len, |buf| {
                let (b_buf, c_buf) = buf.split_at_mut(b_len);
                let (bp, cp) = (SendPtr(b_buf.as_mut_ptr()), SendPtr(c_buf.as_mut_ptr()));
                // `C` of a unit: the output planes (whole rows) or its own buffer, with its stride.
                let c_of = |u: &Unit| -> (*mut f32, usize) {
                    if u.contiguous {
                        (out_ptr.ptr().add((u.image * self.groups + g) * m * oplane + u.pix0), oplane)
                    } else {
                        (cp.ptr().add(u.c_off), u.plan.npix)
                    }
                };
                units.par_iter().for_each(|u| {
                    let (c, ldc) = c_of(u);
                    for r in 0..m {
                        // SAFETY: each unit fills only its own pixels of `C`.
                        let row = std::slice::from_raw_parts_mut(c.add(r * ldc), u.plan.npix);
                        row.fill(bias.map_or(0.0, |b| b[g * m + r]));
                    }
                });
                for t in 0..taps {
                    // The units where tap `t` is live, with its index among their live taps.
                    let live: Vec<(&Unit, usize)> = units
                        .iter()
                        .filter_map(|u| {
                            let run = u.plan.runs.iter().find(|r| t >= r.tap0 && t < r.tap0 + r.len)?;
                            Some((u, run.idx0 + t - run.tap0))
                        })
                        .collect();
                    for c0 in (0..c_src).step_by(K_STEP) {
                        let kb = (c0 + K_STEP).min(c_src) - c0;
                        live.par_iter().for_each(|&(u, idx)| {
                            let src = &src[(u.image * self.groups + g) * c_src * splane..][..c_src * splane];
                            let len = slab_len(kb, u.plan.npix);
                            // SAFETY: each unit writes only its own slice of the `B` buffer.
                            let slabs = std::slice::from_raw_parts_mut(bp.ptr().add(u.b_off), len);
                            if direct_b {
                                gather_planes_slabs(&src[c0 * splane..], kb, splane, u.pix0, u.plan.npix, slabs);
                            } else {
                                let rows = idx * c_src + c0..idx * c_src + c0 + kb;
                                gather_tile_slabs(src, c_src, splane, &table(u), rows, slabs);
                            }
                        });
                        let seg = [KSeg { a_k0: t * c_src + c0, b_k0: 0, len: kb }];
                        row_chunks.par_iter().for_each(|rows| {
                            for &(u, _) in &live {
                                let (c, ldc) = c_of(u);
                                let slabs =
                                    std::slice::from_raw_parts(bp.ptr().add(u.b_off), slab_len(kb, u.plan.npix));
                                // SAFETY: each task writes only its own rows of each unit's `C`.
                                packed_gemm::gemm_rows_to(
                                    pa,
                                    rows.clone(),
                                    &seg,
                                    slabs,
                                    kb,
                                    u.plan.npix,
                                    c.add(rows.start * ldc),
                                    ldc,
                                    true,
                                );
                            }
                        });
                    }
                }
                units.par_iter().filter(|u| !u.contiguous).for_each(|u| {
                    let tile = std::slice::from_raw_parts(cp.ptr().add(u.c_off), m * u.plan.npix);
                    let planes = out_ptr.ptr().add((u.image * self.groups + g) * m * oplane);
                    // SAFETY: each unit scatters only its own tile's pixels.
                    scatter_pixels(tile, planes, m, ow, oplane, &ys[u.plan.sy], &xs[u.plan.sx], u.plan);
                });
            })
        });
    }
}
