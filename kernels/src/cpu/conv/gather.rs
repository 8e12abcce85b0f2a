//! Building a tile's GEMM operands: the im2col block as a gather, the gather of a tile's pixels
//! out of full planes, and the per-thread scratch buffer both are built in.
//!
//! `im2col` is written as a gather (each element of the block reads one source element, or is a
//! zero for a tap in the padding), so the same code serves `y` (gathering `x`) and `dx` (gathering
//! `gy`, i.e. col2im without scattered writes) and parallel tiles never write the same memory.

use super::tiling::{Segment, TapSpan, TilePlan};
use crate::cpu::packed_gemm::NR;
use crate::Float;
use std::any::Any;
use std::cell::RefCell;
use std::ops::Range;

/// Build the im2col block of a tile: rows (live tap, channel), columns the tile's pixels.
pub(super) fn gather_tile<T: Float>(
    src: &[T],
    channels: usize,
    src_hw: (usize, usize),
    yseg: &Segment,
    xseg: &Segment,
    pl: &TilePlan,
    col: &mut [T],
) {
    let npix = pl.npix;
    for_each_col_row(channels, pl, xseg, |row, ty, tx, c| {
        col_row(&src[c * src_hw.0 * src_hw.1..], src_hw.1, yseg, xseg, pl, ty, tx, &mut col[row * npix..][..npix])
    });
}

/// Marks a (tap, pixel) pair of a [`TapTable`] whose source lies in the padding.
const DEAD: u32 = u32::MAX;

/// Where each live tap of a tile reads, built once per tile (taps x pixels entries) so that the
/// packed gathers read each (tap, channel) row of the im2col block through it, instead of walking
/// the segment geometry, with its many short copies, once per row (taps x channels rows).
///
/// Per live tap `t` (in im2col row order: y taps of the tile, then x taps of its segment) the
/// table holds `npix` offsets, inside one source plane, of the element tap `t` reads for each tile
/// pixel ([`DEAD`] in the padding), then one entry per slab of [`NR`] pixels: the slab's first
/// offset when its `NR` sources are consecutive (one plain copy), else [`DEAD`].
pub(super) struct TapTable<'a> {
    data: &'a [u32],
    npix: usize,
}

impl<'a> TapTable<'a> {
    /// Entries of the table of a tile with `ntaps` live taps and `npix` pixels.
    pub(super) fn len(ntaps: usize, npix: usize) -> usize {
        ntaps * (npix + npix.div_ceil(NR))
    }

    /// Build the table of tile `pl` (sources of width `src_w`) in `buf` (of [`Self::len`]).
    pub(super) fn build(buf: &'a mut [u32], src_w: usize, yseg: &Segment, xseg: &Segment, pl: &TilePlan) -> Self {
        let (wdt, npix) = (xseg.count, pl.npix);
        let per_tap = npix + npix.div_ceil(NR);
        let mut taps = buf.chunks_mut(per_tap);
        for ty in &pl.ky {
            for tx in &xseg.taps {
                let (o, runs) = taps.next().expect("table sized by TapTable::len").split_at_mut(npix);
                for (r, j) in (pl.ja..pl.jb).enumerate() {
                    let d = &mut o[r * wdt..][..wdt];
                    if j < ty.ja || j >= ty.jb {
                        d.fill(DEAD);
                        continue;
                    }
                    let row = (ty.src0 + (j - ty.ja) * yseg.src_step) * src_w;
                    for (q, v) in d.iter_mut().enumerate() {
                        *v = if q >= tx.ja && q < tx.jb {
                            let off = row + tx.src0 + (q - tx.ja) * xseg.src_step;
                            u32::try_from(off).expect("conv source planes under 4 G elements")
                        } else {
                            DEAD
                        };
                    }
                }
                for (run, oq) in runs.iter_mut().zip(o.chunks(NR)) {
                    let consecutive = oq.len() == NR && oq[0] != DEAD && oq.windows(2).all(|w| w[1] == w[0] + 1);
                    *run = if consecutive { oq[0] } else { DEAD };
                }
            }
        }
        TapTable { data: buf, npix }
    }

    /// Tap `t`'s offsets (one per tile pixel) and its per-slab run starts.
    fn tap(&self, t: usize) -> (&[u32], &[u32]) {
        let per_tap = self.npix + self.npix.div_ceil(NR);
        self.data[t * per_tap..][..per_tap].split_at(self.npix)
    }
}

/// The source value at `off` of plane `sp`, zero for [`DEAD`] (which lies past any plane).
#[inline(always)]
fn tap_value(sp: &[f32], off: u32) -> f32 {
    sp.get(off as usize).copied().unwrap_or(0.0)
}

/// Rows `rows` of a tile's im2col block (row `l` = live tap `l / channels` of channel
/// `l % channels`, read through the tile's [`TapTable`]), straight in the packed GEMM's slab
/// layout: `rows.len()` rows, slabs of [`NR`] pixels, the padding columns of the last slab zeroed.
pub(super) fn gather_tile_slabs(
    src: &[f32],
    channels: usize,
    plane: usize,
    table: &TapTable,
    rows: Range<usize>,
    slabs: &mut [f32],
) {
    let k = rows.len();
    for (i, l) in rows.enumerate() {
        let sp = &src[(l % channels) * plane..][..plane];
        let (offs, runs) = table.tap(l / channels);
        for (q, (oq, &run)) in offs.chunks(NR).zip(runs).enumerate() {
            let dst = &mut slabs[(q * k + i) * NR..][..NR];
            if run != DEAD {
                dst.copy_from_slice(&sp[run as usize..][..NR]);
                continue;
            }
            for (d, &off) in dst.iter_mut().zip(oq) {
                *d = tap_value(sp, off);
            }
            dst[oq.len()..].fill(0.0);
        }
    }
}

/// Column `j` of a transposed slab block with `npix` rows: `B(p, j)` = what live tap `t` of the
/// tile's [`TapTable`] reads from plane `sp` for pixel `p` (one im2col row of the tile as a column
/// of `dw`'s right operand).
pub(super) fn gather_transposed_column(sp: &[f32], table: &TapTable, t: usize, j: usize, slabs: &mut [f32]) {
    let (o, _) = table.tap(t);
    let base = (j / NR) * o.len() * NR + j % NR;
    for (p, &off) in o.iter().enumerate() {
        slabs[base + p * NR] = tap_value(sp, off);
    }
}

/// The `k x npix` block whose row `l` is `planes[l * plane + pix0 ..][..npix]` (a 1x1 conv reads
/// its source planes directly), in slab layout.
pub(super) fn gather_planes_slabs(planes: &[f32], k: usize, plane: usize, pix0: usize, npix: usize, slabs: &mut [f32]) {
    for l in 0..k {
        if l + PREFETCH_ROWS < k {
            prefetch(&planes[(l + PREFETCH_ROWS) * plane + pix0..][..npix]);
        }
        row_to_slabs(&planes[l * plane + pix0..][..npix], k, l, slabs);
    }
}

/// How many rows ahead [`gather_planes_slabs`] asks for its source: each row is a separate short
/// run (one plane's pixels of a tile), too short for the hardware prefetcher to pick up, and the
/// copy otherwise waits on every line (it took 11-14 % of a 1x1 conv's forward).
const PREFETCH_ROWS: usize = 4;

/// Hint the CPU to bring `v`'s cache lines in (a no-op off x86-64).
#[inline(always)]
fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for i in (0..v.len()).step_by(16) {
        // SAFETY: a prefetch hint reads nothing architecturally; the address is inside `v`.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(v.as_ptr().add(i).cast()) };
    }
}

/// Row `l` of a `k`-row slab block from the row's `npix` values, zeroing the last slab's padding.
fn row_to_slabs(row: &[f32], k: usize, l: usize, slabs: &mut [f32]) {
    // Whole slabs as fixed-size array copies (two vector moves each); a copy of a run-time length
    // is a `memmove` call per 64 bytes, which took 14 % of a 1x1 conv's forward.
    let (whole, rest) = row.as_chunks::<NR>();
    for (q, chunk) in whole.iter().enumerate() {
        let dst: &mut [f32; NR] = (&mut slabs[(q * k + l) * NR..][..NR]).try_into().expect("NR floats");
        *dst = *chunk;
    }
    if !rest.is_empty() {
        let dst = &mut slabs[(whole.len() * k + l) * NR..][..NR];
        dst[..rest.len()].copy_from_slice(rest);
        dst[rest.len()..].fill(0.0);
    }
}

/// Column `j` of a slab block with `k` rows (`B(l, j) = row[l]`, `l < k`): the transposed layout
/// `dw` needs, where the im2col rows become the GEMM's columns.
pub(super) fn row_to_transposed_slabs(row: &[f32], k: usize, j: usize, slabs: &mut [f32]) {
    let base = (j / NR) * k * NR + j % NR;
    for (l, &v) in row.iter().enumerate() {
        slabs[base + l * NR] = v;
    }
}

/// Zero the padding columns `n..` of the last slab of a `k`-row slab block (scratch buffers hold
/// whatever the last user left).
pub(super) fn zero_slab_padding(slabs: &mut [f32], k: usize, n: usize) {
    if !n.is_multiple_of(NR) {
        let last = &mut slabs[(n / NR) * k * NR..][..k * NR];
        for l in 0..k {
            last[l * NR + n % NR..(l + 1) * NR].fill(0.0);
        }
    }
}

/// Call `f(row, y tap, x tap, channel)` for each row of a tile's im2col block, in row order.
fn for_each_col_row(
    channels: usize,
    pl: &TilePlan,
    xseg: &Segment,
    mut f: impl FnMut(usize, &TapSpan, &TapSpan, usize),
) {
    let mut row = 0;
    for ty in &pl.ky {
        for tx in &xseg.taps {
            for c in 0..channels {
                f(row, ty, tx, c);
                row += 1;
            }
        }
    }
}

/// One row of the im2col block: tap (`ty`, `tx`) of one source plane over the tile's pixels,
/// zero where the tap lands in the padding.
#[allow(clippy::too_many_arguments)]
pub(super) fn col_row<T: Float>(
    sp: &[T],
    src_w: usize,
    yseg: &Segment,
    xseg: &Segment,
    pl: &TilePlan,
    ty: &TapSpan,
    tx: &TapSpan,
    dst: &mut [T],
) {
    let wdt = xseg.count;
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

/// Gather a tile's pixels of `rows` planes (`[rows][plane]`, width `w`) into `tile` (`[rows][npix]`).
#[allow(clippy::too_many_arguments)]
pub(super) fn gather_pixels<T: Float>(
    tile: &mut [T],
    planes: &[T],
    rows: usize,
    w: usize,
    plane: usize,
    yseg: &Segment,
    xseg: &Segment,
    pl: &TilePlan,
) {
    for m in 0..rows {
        let (prow, trow) = (&planes[m * plane..][..plane], &mut tile[m * pl.npix..][..pl.npix]);
        for (v, off) in trow.iter_mut().zip(pl.plane_offsets(yseg, xseg, w)) {
            *v = prow[off];
        }
    }
}

/// The inverse of [`gather_pixels`]: write a `[rows][npix]` tile to its pixels of `rows` planes
/// starting at `planes` (width `w`, `plane` apart).
///
/// # Safety
/// `planes` must address `rows` planes that nothing else touches at this tile's pixels meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn scatter_pixels<T: Copy>(
    tile: &[T],
    planes: *mut T,
    rows: usize,
    w: usize,
    plane: usize,
    yseg: &Segment,
    xseg: &Segment,
    pl: &TilePlan,
) {
    for m in 0..rows {
        for (&v, off) in tile[m * pl.npix..][..pl.npix].iter().zip(pl.plane_offsets(yseg, xseg, w)) {
            *planes.add(m * plane + off) = v;
        }
    }
}

/// The same pixel of up to 16 consecutive channel planes in one 512-bit register (lane `l` =
/// plane `l`): a masked gather, the lanes past the channel count zeros (a slab's padding). For
/// the operands whose slabs run over channels: the per-tap `dw`'s `B`, Winograd's `V^T`.
#[cfg(target_arch = "x86_64")]
pub(super) struct ChannelLanes {
    /// `l * plane` in lane `l`.
    offsets: std::arch::x86_64::__m512i,
    mask: u16,
}

#[cfg(target_arch = "x86_64")]
impl ChannelLanes {
    /// `count` (<= 16) planes of `plane` floats each; `16 plane` plus any offset gathered later
    /// must fit an `i32` (the caller checks).
    #[target_feature(enable = "avx512f")]
    pub(super) fn new(plane: usize, count: usize) -> ChannelLanes {
        use std::arch::x86_64::*;
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        ChannelLanes {
            offsets: _mm512_mullo_epi32(lanes, _mm512_set1_epi32(plane as i32)),
            mask: crate::cpu::packed_gemm::lane_mask(count),
        }
    }

    /// Element `off` of each of the planes starting at `planes`.
    ///
    /// # Safety
    /// AVX-512F present; `planes + l plane + off` readable for every lane `l` of the mask.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn gather(&self, planes: *const f32, off: usize) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let idx = _mm512_add_epi32(self.offsets, _mm512_set1_epi32(off as i32));
        _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), self.mask, idx, planes)
    }
}

/// Run `f` on a per-thread scratch buffer of at least `len` elements, reused across calls (its
/// contents are whatever the last user left; callers overwrite what they read).
pub(super) fn with_scratch<T: Copy + Default + 'static, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
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
        buf.resize(len, T::default());
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
