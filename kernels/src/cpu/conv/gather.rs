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

/// Rows `rows` of the same im2col block (rows = live taps x channels), straight in the packed
/// GEMM's slab layout (`rows.len()` rows, slabs of [`NR`] pixels, the padding columns of the last
/// slab zeroed). `row` is scratch for one row of `npix` values.
#[allow(clippy::too_many_arguments)]
pub(super) fn gather_tile_slabs(
    src: &[f32],
    channels: usize,
    src_hw: (usize, usize),
    yseg: &Segment,
    xseg: &Segment,
    pl: &TilePlan,
    rows: Range<usize>,
    row: &mut [f32],
    slabs: &mut [f32],
) {
    let k = rows.len();
    for_each_col_row(channels, pl, xseg, |l, ty, tx, c| {
        if rows.contains(&l) {
            col_row(&src[c * src_hw.0 * src_hw.1..], src_hw.1, yseg, xseg, pl, ty, tx, row);
            row_to_slabs(row, k, l - rows.start, slabs);
        }
    });
}

/// The `k x npix` block whose row `l` is `planes[l * plane + pix0 ..][..npix]` (a 1x1 conv reads
/// its source planes directly), in slab layout.
pub(super) fn gather_planes_slabs(planes: &[f32], k: usize, plane: usize, pix0: usize, npix: usize, slabs: &mut [f32]) {
    for l in 0..k {
        row_to_slabs(&planes[l * plane + pix0..][..npix], k, l, slabs);
    }
}

/// Row `l` of a `k`-row slab block from the row's `npix` values, zeroing the last slab's padding.
fn row_to_slabs(row: &[f32], k: usize, l: usize, slabs: &mut [f32]) {
    for (q, chunk) in row.chunks(NR).enumerate() {
        let dst = &mut slabs[(q * k + l) * NR..][..NR];
        dst[..chunk.len()].copy_from_slice(chunk);
        dst[chunk.len()..].fill(0.0);
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

/// Run `f` on a per-thread scratch buffer of at least `len` elements, reused across calls (its
/// contents are whatever the last user left; callers overwrite what they read).
pub(super) fn with_scratch<T: Float, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
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
