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
/// pixel ([`DEAD`] in the padding), then [`SLAB_WORDS`] words per slab of [`NR`] pixels saying how
/// the slab can be read as a few shifted vector loads ([`SlabSource`]).
pub(super) struct TapTable<'a> {
    data: &'a [u32],
    npix: usize,
    /// False for a table of offsets only (the weight gradient's transposed gathers read no slabs).
    slab_words: bool,
}

/// Words of a [`TapTable`] per slab: the [`SlabSource`] bases, then the masks, then the flag.
const SLAB_WORDS: usize = PARTS + PARTS.div_ceil(2) + 1;

/// Most shifted loads per slab: a slab of 16 pixels of one tap row spans at most three rows of
/// the destination when they are at least 8 wide (the 9 x 9 maps of a ResNet-18 at crop 129).
const PARTS: usize = 3;

/// One slab of one live tap as masked loads: lane `j` (a tile pixel) reads `plane[base[i] + j]`
/// for the part `i` whose `mask[i]` has bit `j`, and is zero when no mask has it (a tap in the
/// padding, or past the tile's last pixel). At stride 1 each destination row of the tile is one
/// shift of the source, so a slab has one part per row it touches; `general` marks the slabs that
/// need more than [`PARTS`] (a per-lane gather instead).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SlabSource {
    base: [i32; PARTS],
    mask: [u16; PARTS],
    general: bool,
}

impl SlabSource {
    /// The parts of a slab whose lanes read `offs` (at most [`NR`] of them, [`DEAD`] in the padding).
    fn of(offs: &[u32]) -> SlabSource {
        let mut s = SlabSource::default();
        let mut parts = 0;
        for (j, &off) in offs.iter().enumerate() {
            if off == DEAD {
                continue;
            }
            let base = i32::try_from(off as i64 - j as i64).expect("conv source planes under 2 G elements");
            match s.base[..parts].iter().position(|&b| b == base) {
                Some(i) => s.mask[i] |= 1 << j,
                None if parts < PARTS => {
                    (s.base[parts], s.mask[parts]) = (base, 1 << j);
                    parts += 1;
                }
                None => s.general = true,
            }
        }
        s
    }

    /// True when the slab is [`NR`] consecutive source elements (one plain copy from `base[0]`).
    fn is_consecutive(&self) -> bool {
        !self.general && self.mask[0] == u16::MAX && self.mask[1..].iter().all(|&m| m == 0)
    }

    fn store(&self, w: &mut [u32]) {
        w[..PARTS].copy_from_slice(&self.base.map(|b| b as u32));
        for (i, m) in w[PARTS..PARTS + PARTS.div_ceil(2)].iter_mut().enumerate() {
            let hi = self.mask.get(2 * i + 1).copied().unwrap_or(0);
            *m = u32::from(self.mask[2 * i]) | u32::from(hi) << 16;
        }
        w[SLAB_WORDS - 1] = u32::from(self.general);
    }

    fn load(w: &[u32]) -> SlabSource {
        let mut s = SlabSource { general: w[SLAB_WORDS - 1] != 0, ..Default::default() };
        for i in 0..PARTS {
            s.base[i] = w[i] as i32;
            s.mask[i] = (w[PARTS + i / 2] >> (16 * (i % 2))) as u16;
        }
        s
    }
}

impl<'a> TapTable<'a> {
    /// Entries of the table of a tile with `ntaps` live taps and `npix` pixels (`slab_words`:
    /// with the per-slab [`SlabSource`]s, which only the im2col gathers read).
    pub(super) fn len(ntaps: usize, npix: usize, slab_words: bool) -> usize {
        ntaps * Self::per_tap(npix, slab_words)
    }

    fn per_tap(npix: usize, slab_words: bool) -> usize {
        npix + if slab_words { SLAB_WORDS * npix.div_ceil(NR) } else { 0 }
    }

    /// Build the table of tile `pl` (sources of width `src_w`) in `buf` (of [`Self::len`]).
    pub(super) fn build(
        buf: &'a mut [u32],
        src_w: usize,
        yseg: &Segment,
        xseg: &Segment,
        pl: &TilePlan,
        slab_words: bool,
    ) -> Self {
        let (wdt, npix) = (xseg.count, pl.npix);
        let mut taps = buf.chunks_mut(Self::per_tap(npix, slab_words));
        for ty in &pl.ky {
            for tx in &xseg.taps {
                let (o, slabs) = taps.next().expect("table sized by TapTable::len").split_at_mut(npix);
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
                for (w, oq) in slabs.chunks_exact_mut(SLAB_WORDS).zip(o.chunks(NR)).filter(|_| slab_words) {
                    SlabSource::of(oq).store(w);
                }
            }
        }
        TapTable { data: buf, npix, slab_words }
    }

    /// Tap `t`'s offsets (one per tile pixel) and its per-slab words (empty without them).
    fn tap(&self, t: usize) -> (&[u32], &[u32]) {
        let per_tap = Self::per_tap(self.npix, self.slab_words);
        self.data[t * per_tap..][..per_tap].split_at(self.npix)
    }
}

/// The [`TapTable`] of every tile of a call, built once (tiles in parallel) and shared by the
/// images: a table depends on the tile's geometry only. For calls whose parallel units each run
/// one image of one tile (the forward and input gradient on small maps, the tiled weight
/// gradient), where every unit used to build its own copy (U2PL's step on the default model
/// spent 5 % of its time there). Memory: one image's tap offsets (`live taps x pixels` words).
pub(super) struct TileTables {
    bufs: Vec<Vec<u32>>,
    npix: Vec<usize>,
    slab_words: bool,
}

impl TileTables {
    /// The tables of `plans` (sources of width `src_w`, tile `t` on segments `ys[plans[t].sy]` and
    /// `xs[plans[t].sx]`), as [`TapTable::build`] makes them.
    pub(super) fn build(plans: &[TilePlan], src_w: usize, ys: &[Segment], xs: &[Segment], slab_words: bool) -> Self {
        use rayon::prelude::*;
        let mut bufs: Vec<Vec<u32>> =
            plans.iter().map(|pl| vec![0; TapTable::len(pl.ntaps, pl.npix, slab_words)]).collect();
        bufs.par_iter_mut().zip(plans).for_each(|(buf, pl)| {
            TapTable::build(buf, src_w, &ys[pl.sy], &xs[pl.sx], pl, slab_words);
        });
        TileTables { bufs, npix: plans.iter().map(|pl| pl.npix).collect(), slab_words }
    }

    /// Tile `t`'s table.
    pub(super) fn get(&self, t: usize) -> TapTable<'_> {
        TapTable { data: &self.bufs[t], npix: self.npix[t], slab_words: self.slab_words }
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
/// With the AVX-512 kernels each slab is a few masked vector loads ([`SlabSource`]); otherwise
/// consecutive slabs are copies and the rest are read element by element (the reference).
pub(super) fn gather_tile_slabs(
    src: &[f32],
    channels: usize,
    plane: usize,
    table: &TapTable,
    rows: Range<usize>,
    slabs: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::packed_gemm::kernel() == crate::cpu::packed_gemm::Kernel::Avx512 {
        // SAFETY: the kernel choice implies AVX-512F.
        return unsafe { gather_tile_slabs_avx512(src, channels, plane, table, rows, slabs) };
    }
    gather_tile_slabs_scalar(src, channels, plane, table, rows, slabs)
}

/// [`gather_tile_slabs`] without vector loads: the reference the AVX-512 gather is tested against.
pub(super) fn gather_tile_slabs_scalar(
    src: &[f32],
    channels: usize,
    plane: usize,
    table: &TapTable,
    rows: Range<usize>,
    slabs: &mut [f32],
) {
    assert!(table.slab_words, "im2col slab gather: a table without slab words");
    let k = rows.len();
    for (i, l) in rows.enumerate() {
        let sp = &src[(l % channels) * plane..][..plane];
        let (offs, words) = table.tap(l / channels);
        for (q, (oq, w)) in offs.chunks(NR).zip(words.chunks_exact(SLAB_WORDS)).enumerate() {
            let dst = &mut slabs[(q * k + i) * NR..][..NR];
            let s = SlabSource::load(w);
            if s.is_consecutive() {
                dst.copy_from_slice(&sp[s.base[0] as usize..][..NR]);
                continue;
            }
            for (d, &off) in dst.iter_mut().zip(oq) {
                *d = tap_value(sp, off);
            }
            dst[oq.len()..].fill(0.0);
        }
    }
}

/// [`gather_tile_slabs`] on 512-bit registers: every slab is one register, built by up to
/// [`PARTS`] masked loads of shifted source rows (a slab that crosses a row of the tile, or has
/// taps in the padding, read element by element took 15-23 % of a one-thread 3x3 forward on 33 x 33
/// and 65 x 65 maps), or by one masked gather for the rare slabs that need more parts.
///
/// # Safety
/// AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_tile_slabs_avx512(
    src: &[f32],
    channels: usize,
    plane: usize,
    table: &TapTable,
    rows: Range<usize>,
    slabs: &mut [f32],
) {
    use std::arch::x86_64::*;
    let k = rows.len();
    let nslabs = table.npix.div_ceil(NR);
    assert!(table.slab_words, "im2col slab gather: a table without slab words");
    assert!(slabs.len() >= nslabs * k * NR, "im2col slabs: buffer too short");
    for (i, l) in rows.enumerate() {
        let sp = &src[(l % channels) * plane..][..plane];
        let (offs, words) = table.tap(l / channels);
        for q in 0..nslabs {
            let s = SlabSource::load(&words[q * SLAB_WORDS..][..SLAB_WORDS]);
            let v = if s.general {
                let oq = &offs[q * NR..(q * NR + NR).min(offs.len())];
                let (mut idx, mut live) = ([0i32; NR], 0u16);
                for (j, &off) in oq.iter().enumerate() {
                    if off != DEAD {
                        (idx[j], live) = (off as i32, live | 1 << j);
                    }
                }
                // SAFETY: only the live lanes load, each at an offset inside `sp`.
                _mm512_mask_i32gather_ps::<4>(
                    _mm512_setzero_ps(),
                    live,
                    _mm512_loadu_si512(idx.as_ptr().cast()),
                    sp.as_ptr(),
                )
            } else {
                // SAFETY: lane j of part p loads `sp[base[p] + j]` only where `mask[p]` has bit j,
                // and those are the live offsets of the table, inside `sp`; masked-off lanes do not
                // access memory (the address outside `sp` is never dereferenced).
                let at = |p: usize| sp.as_ptr().wrapping_offset(s.base[p] as isize);
                let mut v = _mm512_maskz_loadu_ps(s.mask[0], at(0));
                v = _mm512_mask_loadu_ps(v, s.mask[1], at(1));
                _mm512_mask_loadu_ps(v, s.mask[2], at(2))
            };
            // SAFETY: slab q, row i lies inside `slabs` (asserted above).
            _mm512_storeu_ps(slabs.as_mut_ptr().add((q * k + i) * NR), v);
        }
    }
}

/// Columns `j0..j0 + cols` of the tile's im2col block transposed into slabs (`npix` rows: the
/// weight gradient's right operand `B(p, j)`), column `j` being live tap `idx0 + j / channels` of
/// channel `j % channels` read through the tile's [`TapTable`] from `x` (`channels` planes of
/// `plane`); the padding columns of the last slab are zeroed. With the AVX-512 kernels each slab
/// row is one masked gather across its 16 columns; otherwise the columns are written one by one
/// (the reference).
#[allow(clippy::too_many_arguments)]
pub(super) fn gather_transposed_slabs(
    x: &[f32],
    channels: usize,
    plane: usize,
    table: &TapTable,
    idx0: usize,
    j0: usize,
    cols: usize,
    slabs: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::packed_gemm::kernel() == crate::cpu::packed_gemm::Kernel::Avx512
        && channels * plane < i32::MAX as usize
        && table.data.len() < i32::MAX as usize
    {
        // SAFETY: the kernel choice implies AVX-512F; offsets fit the gathers' i32 lanes (checked).
        return unsafe { gather_transposed_slabs_avx512(x, channels, plane, table, idx0, j0, cols, slabs) };
    }
    gather_transposed_slabs_scalar(x, channels, plane, table, idx0, j0, cols, slabs)
}

/// [`gather_transposed_slabs`] one column at a time: the reference the AVX-512 gather is tested
/// against.
#[allow(clippy::too_many_arguments)]
pub(super) fn gather_transposed_slabs_scalar(
    x: &[f32],
    channels: usize,
    plane: usize,
    table: &TapTable,
    idx0: usize,
    j0: usize,
    cols: usize,
    slabs: &mut [f32],
) {
    let npix = table.npix;
    for j in 0..cols {
        let (t, c) = (idx0 + (j0 + j) / channels, (j0 + j) % channels);
        let (sp, (o, _)) = (&x[c * plane..][..plane], table.tap(t));
        let base = (j / NR) * npix * NR + j % NR;
        for (p, &off) in o.iter().enumerate() {
            slabs[base + p * NR] = tap_value(sp, off);
        }
    }
    zero_slab_padding(slabs, npix, cols);
}

/// [`gather_transposed_slabs`] on 512-bit registers: where a slab's 16 columns share a tap, runs
/// of 16 pixels that read consecutive elements are 16 plain loads (one per channel) transposed in
/// registers; elsewhere, per slab, lane `i` (column `j`) holds its tap's row start in the table
/// and its channel's plane start, and per pixel one gather reads the 16 columns' offsets from the
/// table (one broadcast when they share a tap) and a second the source values, the lanes in the
/// padding or past `cols` masked off (zeros). Writing the columns one by
/// one (16 strided stores per slab row) took 31 % of a one-thread `dw` of a 3x3 conv on 64
/// channels of 65 x 65.
///
/// # Safety
/// AVX-512F present; `channels * plane` and the table's length under `i32::MAX`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn gather_transposed_slabs_avx512(
    x: &[f32],
    channels: usize,
    plane: usize,
    table: &TapTable,
    idx0: usize,
    j0: usize,
    cols: usize,
    slabs: &mut [f32],
) {
    use std::arch::x86_64::*;
    let npix = table.npix;
    let per_tap = TapTable::per_tap(npix, table.slab_words);
    assert!(slabs.len() >= cols.div_ceil(NR) * npix * NR, "transposed slabs: buffer too short");
    assert!(x.len() >= channels * plane, "transposed slabs: source too short");
    let last_tap = idx0 + (j0 + cols.max(1) - 1) / channels;
    assert!((last_tap + 1) * per_tap <= table.data.len(), "transposed slabs: tap outside the table");
    let dead = _mm512_set1_epi32(DEAD as i32);
    for q in 0..cols.div_ceil(NR) {
        let n = (cols - q * NR).min(NR);
        let (mut tab, mut chan) = ([0i32; NR], [0i32; NR]);
        for i in 0..n {
            let j = j0 + q * NR + i;
            tab[i] = ((idx0 + j / channels) * per_tap) as i32;
            chan[i] = ((j % channels) * plane) as i32;
        }
        let shared_tap = tab[..n].iter().all(|&t| t == tab[0]);
        let (tab, chan) = (_mm512_loadu_si512(tab.as_ptr().cast()), _mm512_loadu_si512(chan.as_ptr().cast()));
        let cols_mask = crate::cpu::packed_gemm::lane_mask(n);
        let first_tap = &table.data[_mm512_cvtsi512_si32(tab) as usize..][..npix];
        let dst = slabs.as_mut_ptr().add(q * npix * NR);
        // With a shared tap the slab's columns are channels c0 .. c0 + n of it.
        let c0 = (j0 + q * NR) % channels;
        let mut p = 0;
        while p < npix {
            // Where the 16 columns share a tap and its next 16 pixels read 16 consecutive
            // elements (no padding), load the channels' runs and transpose them in registers.
            if shared_tap && p + NR <= npix && is_run(&first_tap[p..p + NR]) {
                // SAFETY: `off .. off + 16` are live offsets of one plane (the run), channels
                // c0 .. c0 + n lie inside `x` (asserted above), rows p .. p + 16 inside `slabs`.
                let off = first_tap[p] as usize;
                transposed_run(x.as_ptr().add(c0 * plane + off), plane, n, dst.add(p * NR));
                p += NR;
                continue;
            }
            // SAFETY (both gathers): the lanes of `cols_mask` read table entries `tap row + p`
            // (p < npix, rows inside the table: asserted), and the live lanes source offsets
            // `c plane + off` with `off` a live offset inside a plane and `c < channels`.
            let offs = if shared_tap {
                _mm512_set1_epi32(first_tap[p] as i32)
            } else {
                let idx = _mm512_add_epi32(tab, _mm512_set1_epi32(p as i32));
                _mm512_mask_i32gather_epi32::<4>(dead, cols_mask, idx, table.data.as_ptr().cast())
            };
            let live = _mm512_mask_cmpneq_epi32_mask(cols_mask, offs, dead);
            let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), live, _mm512_add_epi32(offs, chan), x.as_ptr());
            // SAFETY: row p of slab q lies inside `slabs` (asserted above).
            _mm512_storeu_ps(dst.add(p * NR), v);
            p += 1;
        }
    }
}

/// True when `offs` are `NR` consecutive live offsets (`o, o + 1, ...`).
#[inline(always)]
fn is_run(offs: &[u32]) -> bool {
    offs[0] != DEAD && offs.iter().enumerate().all(|(i, &o)| o == offs[0].wrapping_add(i as u32))
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

/// Rows `first..` of column `j` of a slab block with `k` rows (`B(l, j) = row[l]`, `l < k`): the
/// transposed layout `dw` needs, where the im2col rows become the GEMM's columns (the scalar
/// path and tail of [`planes_to_transposed_slabs`], and its reference in the tests).
fn row_to_transposed_slabs(row: &[f32], k: usize, j: usize, first: usize, slabs: &mut [f32]) {
    let base = (j / NR) * k * NR + j % NR;
    for (l, &v) in row.iter().enumerate().skip(first) {
        slabs[base + l * NR] = v;
    }
}

/// The `npix x cols` block `B(p, j) = planes[j plane + pix0 + p]` (a 1x1 conv's source planes,
/// transposed for `dw`) in slabs, the padding columns of the last slab zeroed: with the AVX-512
/// kernels by 16 x 16 register transposes of the planes' runs ([`transposed_run`]), otherwise
/// (and for the last pixels) column by column ([`row_to_transposed_slabs`]).
pub(super) fn planes_to_transposed_slabs(
    planes: &[f32],
    plane: usize,
    pix0: usize,
    npix: usize,
    cols: usize,
    slabs: &mut [f32],
) {
    assert!(cols == 0 || (cols - 1) * plane + pix0 + npix <= planes.len(), "transposed planes: source too short");
    assert!(slabs.len() >= crate::cpu::packed_gemm::slab_len(npix, cols), "transposed planes: slabs too short");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::packed_gemm::kernel() == crate::cpu::packed_gemm::Kernel::Avx512 {
        done = npix / NR * NR;
        // SAFETY: the kernel choice implies AVX-512F; bounds asserted above.
        unsafe { planes_to_transposed_slabs_avx512(planes, plane, pix0, done, npix, cols, slabs) };
    }
    for j in 0..cols {
        row_to_transposed_slabs(&planes[j * plane + pix0..][..npix], npix, j, done, slabs);
    }
    zero_slab_padding(slabs, npix, cols);
}

/// Pixels `0..done` (a multiple of 16) of [`planes_to_transposed_slabs`]: per slab of 16
/// channels and run of 16 pixels, 16 plain loads transposed in registers (channels past `cols`
/// are zero rows).
///
/// # Safety
/// AVX-512F present; the bounds of [`planes_to_transposed_slabs`] hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn planes_to_transposed_slabs_avx512(
    planes: &[f32],
    plane: usize,
    pix0: usize,
    done: usize,
    npix: usize,
    cols: usize,
    slabs: &mut [f32],
) {
    for q in 0..cols.div_ceil(NR) {
        let n = (cols - q * NR).min(NR);
        let src = planes.as_ptr().add(q * NR * plane + pix0);
        let dst = slabs.as_mut_ptr().add(q * npix * NR);
        for p in (0..done).step_by(NR) {
            // SAFETY: channels q 16 .. + n < cols, pixels pix0 + p .. + 16 < pix0 + npix; rows
            // p .. p + 16 of slab q lie inside `slabs`.
            transposed_run(src.add(p), plane, n, dst.add(p * NR));
        }
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

/// The 16 x 16 transpose of `rows` (lane `j` of output `i` = lane `i` of input `j`) in four rounds
/// of two-source permutes: round `s` (1, 2, 4, 8) swaps bit `s` of the row index with bit `s` of the
/// lane index between rows `i` and `i + s`. For the operands whose slabs run over channels: 16
/// channels' runs of 16 consecutive pixels, loaded as plain vectors, become 16 slab rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) fn transpose_16x16(mut rows: [std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    for (r, s) in [1usize, 2, 4, 8].into_iter().enumerate() {
        // SAFETY: 16 i32s each.
        let lo = unsafe { _mm512_loadu_si512(TRANSPOSE_IDX[r][0].as_ptr().cast()) };
        let hi = unsafe { _mm512_loadu_si512(TRANSPOSE_IDX[r][1].as_ptr().cast()) };
        for i in (0..16).filter(|i| i & s == 0) {
            let (a, b) = (rows[i], rows[i + s]);
            rows[i] = _mm512_permutex2var_ps(a, lo, b);
            rows[i + s] = _mm512_permutex2var_ps(a, hi, b);
        }
    }
    rows
}

/// The permutes of [`transpose_16x16`], round `r` (`s = 2^r`): `lo[j]` = `j` where bit `s` of `j`
/// is clear, else `16 + j - s` (lane `j - s` of the partner row); `hi[j]` = `j + s` where clear,
/// else `16 + j`.
#[cfg(target_arch = "x86_64")]
const TRANSPOSE_IDX: [[[i32; 16]; 2]; 4] = {
    let mut t = [[[0i32; 16]; 2]; 4];
    let mut r = 0;
    while r < 4 {
        let s = 1 << r;
        let mut j = 0;
        while j < 16 {
            (t[r][0][j], t[r][1][j]) =
                if j & s == 0 { (j as i32, (j + s) as i32) } else { (16 + j as i32 - s as i32, 16 + j as i32) };
            j += 1;
        }
        r += 1;
    }
    t
};

/// Slab rows `0..16` at `dst` (16 floats apart) from a run of 16 pixels in `n <= 16` channels:
/// channel `i`'s run is the 16 floats at `src + i plane`, loaded as one vector; the 16 x 16 block
/// is transposed in registers ([`transpose_16x16`]) so that each row holds the 16 channels of one
/// pixel (lanes past `n` zero: the slab padding). The fast path of every transposed operand of
/// `dw` (the per-tap gather, the tiled gather, the 1x1 planes).
///
/// # Safety
/// AVX-512F present; `src + i plane .. + 16` readable for `i < n`, `dst .. + 16 NR` writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transposed_run(src: *const f32, plane: usize, n: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    let mut rows = [_mm512_setzero_ps(); NR];
    for (i, r) in rows.iter_mut().enumerate().take(n) {
        // SAFETY: the caller's bounds.
        *r = unsafe { _mm512_loadu_ps(src.add(i * plane)) };
    }
    for (i, r) in transpose_16x16(rows).iter().enumerate() {
        // SAFETY: the caller's bounds.
        unsafe { _mm512_storeu_ps(dst.add(i * NR), *r) };
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

#[cfg(test)]
mod tests {
    use super::super::tiling::{plan_tiles, segments, Axis};
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_16x16_transpose_transposes() {
        use std::arch::x86_64::*;
        if !crate::cpu::packed_gemm::avx512_available() {
            return;
        }
        let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let mut got = [0.0f32; 256];
        // SAFETY: AVX-512F present; 16 rows of 16 floats in and out.
        unsafe {
            let rows: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(m[i * 16..].as_ptr()));
            for (i, r) in transpose_16x16(rows).iter().enumerate() {
                _mm512_storeu_ps(got[i * 16..].as_mut_ptr(), *r);
            }
        }
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(got[i * 16 + j], m[j * 16 + i], "row {i} lane {j}");
            }
        }
    }

    #[test]
    fn slab_sources_split_a_slab_into_one_part_per_source_shift() {
        let consecutive: Vec<u32> = (40..56).collect();
        let s = SlabSource::of(&consecutive);
        assert!(s.is_consecutive() && s.base[0] == 40, "{s:?}");
        // The left tap of a 3 x 3 conv: lane 0 in the padding, then one row of shift 9.
        let mut left = consecutive.clone();
        left[0] = DEAD;
        let s = SlabSource::of(&left);
        assert_eq!((s.base[0], s.mask, s.general), (40, [0xFFFE, 0, 0], false));
        assert!(!s.is_consecutive());
        // A slab across a row boundary: lanes 0..5 at 30.., lanes 5.. at 37.. (two shifts).
        let across: Vec<u32> = (0..16).map(|j| if j < 5 { 30 + j } else { 32 + j }).collect();
        let s = SlabSource::of(&across);
        assert_eq!((s.base, s.mask, s.general), ([30, 32, 0], [0x001F, 0xFFE0, 0], false));
        // A short last slab: lanes past its end are in no mask.
        let s = SlabSource::of(&[7, 8, DEAD]);
        assert_eq!((s.base, s.mask), ([7, 0, 0], [0b011, 0, 0]));
        // Four rows of a 4-wide map: more shifts than parts.
        let narrow: Vec<u32> = (0..16).map(|j| j + 2 * (j / 4)).collect();
        assert!(SlabSource::of(&narrow).general);
        // A slab source survives its table encoding.
        let s = SlabSource::of(&across);
        let mut w = [0u32; SLAB_WORDS];
        s.store(&mut w);
        assert_eq!(SlabSource::load(&w), s);
    }

    /// Every tile of the forward and input-gradient gathers of a set of geometries (widths from 3
    /// to 40, strides 1 and 2, dilations 1 to 6, channel counts off the slab width), gathered by
    /// the vector loads and by the element-by-element reference, and transposed for the weight
    /// gradient by the vector gathers and column by column: equal bit for bit.
    #[test]
    fn vector_gathers_match_the_scalar_references() {
        if crate::cpu::packed_gemm::kernel() != crate::cpu::packed_gemm::Kernel::Avx512 {
            eprintln!("no AVX-512 kernel on this CPU: only the scalar gather runs");
            return;
        }
        for &(hw, k, s, d, channels) in &[
            (33, 3, 1, 1, 3),
            (9, 3, 1, 1, 2),
            (17, 3, 1, 2, 5),
            (3, 3, 1, 1, 1),
            (40, 3, 2, 1, 2),
            (21, 3, 1, 6, 3),
            (12, 7, 2, 1, 1),
            (5, 3, 1, 1, 4),
            (11, 3, 1, 1, 20),
            // Slabs of 16 channels of one tap over runs of 16 pixels (the transposed runs).
            (20, 3, 1, 1, 17),
            (33, 3, 1, 2, 16),
        ] {
            let p = d * (k - 1) / 2;
            let out = (hw + 2 * p - d * (k - 1) - 1) / s + 1;
            for (name, axis, src_len, dst_len) in [
                ("forward", Axis::forward(hw, out, k, s, p, d), hw, out),
                ("input gradient", Axis::input_grad(hw, out, k, s, p, d), out, hw),
            ] {
                let ys = segments(&axis, 2);
                let xs = segments(&axis, 4);
                let plane = src_len * src_len;
                let src: Vec<f32> = (0..channels * plane).map(|i| (i % 97) as f32 - 48.0).collect();
                for pl in plan_tiles(&ys, &xs, k, 64) {
                    let (yseg, xseg) = (&ys[pl.sy], &xs[pl.sx]);
                    let mut buf = vec![0u32; TapTable::len(pl.ntaps, pl.npix, true)];
                    let table = TapTable::build(&mut buf, src_len, yseg, xseg, &pl, true);
                    let rows = 0..pl.ntaps * channels;
                    let len = crate::cpu::packed_gemm::slab_len(rows.len(), pl.npix);
                    let (mut want, mut got) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                    gather_tile_slabs_scalar(&src, channels, plane, &table, rows.clone(), &mut want);
                    // SAFETY: the kernel choice implies AVX-512F.
                    unsafe { gather_tile_slabs_avx512(&src, channels, plane, &table, rows, &mut got) };
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{name}: {hw} x {hw}, k {k}, s {s}, d {d}, tile {pl:?}, dst {dst_len}"
                    );
                    // A 1x1 conv's planes transposed for the weight gradient, against the
                    // column-by-column copy.
                    for cols in [channels, 1].into_iter().filter(|_| pl.npix < plane) {
                        let len = crate::cpu::packed_gemm::slab_len(pl.npix, cols);
                        let (mut want, mut got) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                        for c in 0..cols {
                            row_to_transposed_slabs(&src[c * plane + 1..][..pl.npix], pl.npix, c, 0, &mut want);
                        }
                        zero_slab_padding(&mut want, pl.npix, cols);
                        planes_to_transposed_slabs(&src, plane, 1, pl.npix, cols, &mut got);
                        assert_eq!(bits(&got), bits(&want), "transposed planes: {hw} x {hw}, {cols} channels");
                    }
                    // The weight gradient's transposed gather, on an offsets-only table, over
                    // column blocks that start inside a tap and cross taps.
                    let mut buf = vec![0u32; TapTable::len(pl.ntaps, pl.npix, false)];
                    let table = TapTable::build(&mut buf, src_len, yseg, xseg, &pl, false);
                    let all = pl.ntaps * channels;
                    for (j0, cols) in [(0, all), (1, all - 1), (all / 2, all - all / 2), (0, all.min(5))] {
                        let len = crate::cpu::packed_gemm::slab_len(pl.npix, cols);
                        let (mut want, mut got) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                        gather_transposed_slabs_scalar(&src, channels, plane, &table, 0, j0, cols, &mut want);
                        // SAFETY: the kernel choice implies AVX-512F.
                        unsafe { gather_transposed_slabs_avx512(&src, channels, plane, &table, 0, j0, cols, &mut got) };
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "transposed, {name}: {hw} x {hw}, k {k}, s {s}, d {d}, j0 {j0}"
                        );
                    }
                }
            }
        }
    }
}
