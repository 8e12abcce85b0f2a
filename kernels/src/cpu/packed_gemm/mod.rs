//! An f32 GEMM on operands that are already in the micro-kernel's layout, for the convolutions.
//!
//! A general GEMM (matrixmultiply, [`crate::cpu::gemm()`]) copies both operands into its own panels
//! on every call. The conv engine calls it once per tile of ~256 pixels, so the weights were
//! repacked for every tile of every image, and the im2col block was built once and then copied
//! again into the library's panels. Here both operands are built in the layout the micro-kernel
//! reads, once:
//!
//! * the left operand `A` (`m x k`, the weights) is [`PackedA`]: panels of [`MR`] rows, `k`
//!   contiguous inside a panel, `A(p MR + r, l) = data[(p k + l) MR + r]`, packed once per conv call;
//! * the right operand `B` (`k x n`, the im2col block of a tile) is gathered straight into slabs of
//!   [`NR`] columns, `B(l, q NR + j) = b[(q k + l) NR + j]`, zero-padded to whole slabs
//!   ([`slab_len`]).
//!
//! [`gemm`] computes `C (+)= A[:, segments] B` where a list of [`KSeg`]s says which columns of `A`
//! meet which rows of `B`: a conv tile only gathers its live taps, so its `B` rows are a subset of
//! `A`'s columns, in runs. `K` is cut into blocks of at most [`KC`] (a `KC x NR` slab of `B` stays
//! in L1 while the row panels of `A` stream past it from L2), and each element of `C` sums its
//! products in a fixed order: segments in order, `l` in order, so results do not depend on threads.
//!
//! The micro-kernel is chosen at run time ([`kernel`]): on AVX-512 CPUs `avx512.rs` keeps a
//! `6 x 32` block of `C` (two neighbouring slabs) in twelve 512-bit registers; otherwise `avx2.rs`
//! (AVX2 + FMA, [`available`]) keeps a `6 x 16` block in twelve 256-bit ones. Both run the same
//! chain of fused multiply-adds per element, so they agree bit for bit. [`gemm_reference`] is the
//! plain loop nest on the same layouts that the tests compare them with; on CPUs without AVX2 the
//! conv engine keeps calling matrixmultiply.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
pub mod meter;
#[cfg(test)]
mod tests;

use std::any::TypeId;

/// Rows of `A` per panel (and of `C` per micro-kernel block).
pub const MR: usize = 6;
/// Columns of `B` per slab (and of `C` per micro-kernel block): two AVX registers.
pub const NR: usize = 16;
/// Most `k` per block: a `KC x NR` slab of `B` is 16 KiB, half of L1.
pub const KC: usize = 256;
/// Rows of `A` per block: `MC x KC` of `A` is 96 KiB, so it stays in L2 with the tile's `B`.
pub const MC: usize = 16 * MR;

/// True when the CPU runs the AVX2 + FMA micro-kernel (checked once, cached by std).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which micro-kernel [`gemm`] runs: both compute every element of `C` by the same chain of
/// fused multiply-adds, so they give bit-identical results and differ only in width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// `6 x 16` blocks in 256-bit registers (`avx2.rs`).
    Avx2,
    /// `6 x 32` blocks (two slabs) in 512-bit registers (`avx512.rs`): twice the work per FMA.
    Avx512,
}

/// The widest micro-kernel the CPU runs (checked once): AVX-512F when present, unless the
/// environment sets `SEGNET_CPU_AVX512=0` (to measure or test the AVX2 kernel on such a CPU).
/// Only meaningful when [`available`].
pub fn kernel() -> Kernel {
    static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| {
        let off = std::env::var("SEGNET_CPU_AVX512").is_ok_and(|v| v == "0");
        if avx512_available() && !off {
            Kernel::Avx512
        } else {
            Kernel::Avx2
        }
    })
}

/// True when the CPU has AVX-512F (the [`Kernel::Avx512`] micro-kernel can run).
pub fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `s` as `&[f32]` when `T` is `f32` (the conv engine is generic; only f32 takes this path).
pub fn as_f32<T: 'static>(s: &[T]) -> Option<&[f32]> {
    // SAFETY: T is f32, so the cast is the identity.
    (TypeId::of::<T>() == TypeId::of::<f32>())
        .then(|| unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) })
}

/// `s` as `&mut [f32]` when `T` is `f32`.
pub fn as_f32_mut<T: 'static>(s: &mut [T]) -> Option<&mut [f32]> {
    // SAFETY: T is f32, so the cast is the identity.
    (TypeId::of::<T>() == TypeId::of::<f32>())
        .then(|| unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) })
}

/// An `m x k` matrix in panels of [`MR`] rows (the last panel zero-padded).
pub struct PackedA {
    data: Vec<f32>,
    pub m: usize,
    pub k: usize,
}

impl PackedA {
    /// The panels: `A(p MR + r, l)` at `[(p k + l) MR + r]` (for kernels that walk them themselves).
    pub fn panels(&self) -> &[f32] {
        &self.data[..self.m.div_ceil(MR) * self.k * MR]
    }

    /// Pack `A(i, l) = at(i, l)`.
    pub fn pack(m: usize, k: usize, at: impl Fn(usize, usize) -> f32) -> PackedA {
        let mut a = PackedA { data: Vec::new(), m: 0, k: 0 };
        a.repack(m, k, at);
        a
    }

    /// Pack a new matrix into this one's buffer (kept between calls: no fresh pages per tile).
    pub fn repack(&mut self, m: usize, k: usize, at: impl Fn(usize, usize) -> f32) {
        let data = self.panels_mut(m, k);
        for p in 0..m.div_ceil(MR) {
            let rows = (m - p * MR).min(MR);
            let panel = &mut data[p * k * MR..][..k * MR];
            // Panel order (l outer): the writes are sequential and the reads walk `rows` source
            // rows side by side.
            for (l, col) in panel.chunks_exact_mut(MR).enumerate() {
                for (r, v) in col[..rows].iter_mut().enumerate() {
                    *v = at(p * MR + r, l);
                }
            }
        }
    }

    /// Pack panel by panel in parallel: `fill(p, rows, panel)` writes `A(p MR + r, l)` at
    /// `panel[l MR + r]` for `r < rows` (the rest is zero), in whatever order reads its source
    /// best.
    pub fn pack_panels(m: usize, k: usize, fill: impl Fn(usize, usize, &mut [f32]) + Sync) -> PackedA {
        Self::pack_panel_groups(m, k, 1, |p, panel| fill(p, (m - p * MR).min(MR), panel))
    }

    /// Pack `group` panels at a time in parallel: `fill(p0, data)` writes panels `p0, p0 + 1, ..`
    /// (`data` holds them back to back, `k MR` floats each; the last group may be shorter; rows
    /// past `m` stay zero). For sources whose rows of one panel are short pieces of longer rows:
    /// the conv weights are `[o][c][tap]`, and a panel of the input gradient's `A` takes 6 floats
    /// of every row `o`; a group of 8 panels takes 48, three whole cache lines.
    pub fn pack_panel_groups(m: usize, k: usize, group: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> PackedA {
        use rayon::prelude::*;
        let mut data = vec![0.0f32; m.div_ceil(MR) * k * MR];
        if k > 0 {
            let group = group.max(1);
            data.par_chunks_mut(group * k * MR).enumerate().for_each(|(gi, d)| fill(gi * group, d));
        }
        PackedA { data, m, k }
    }

    /// An `m x k` matrix that `fill(data)` writes in whatever order (and with whatever threads) it
    /// likes: `A(p MR + r, l)` lives at `data[(p k + l) MR + r]`, and `data` starts zeroed.
    pub fn pack_with(m: usize, k: usize, fill: impl FnOnce(&mut [f32])) -> PackedA {
        let mut data = vec![0.0f32; m.div_ceil(MR) * k * MR];
        fill(&mut data);
        PackedA { data, m, k }
    }

    /// Reshape to `m x k` for the caller to fill in place: `A(p MR + r, l)` lives at
    /// `[(p k + l) MR + r]` of the returned storage. The padding rows of the last panel are zero;
    /// every live entry keeps whatever the buffer held, so the caller must write all of them. For
    /// operands rebuilt many times per call (the buffer is reused, not allocated and faulted in).
    /// The buffer never shrinks, so a reused one is not zero-filled again when it grows back to a
    /// size it has held before (only past its largest size are new floats written).
    pub fn panels_mut(&mut self, m: usize, k: usize) -> &mut [f32] {
        let panels = m.div_ceil(MR);
        let need = panels * k * MR;
        if self.data.len() < need {
            self.data.resize(need, 0.0);
        }
        (self.m, self.k) = (m, k);
        let rows = m - panels.saturating_sub(1) * MR;
        if rows < MR && panels > 0 {
            let last = &mut self.data[(panels - 1) * k * MR..need];
            for l in 0..k {
                last[l * MR + rows..(l + 1) * MR].fill(0.0);
            }
        }
        &mut self.data[..need]
    }

    /// Floats the buffer holds without growing (for pools of packed operands).
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// `A(i, l)` (for tests and references).
    pub fn get(&self, i: usize, l: usize) -> f32 {
        self.data[((i / MR) * self.k + l) * MR + i % MR]
    }
}

/// The mask of the first `count` of 16 lanes (all 16 from 16 on): which columns of a slab, rows
/// of a panel or channels of a group a 512-bit operation touches.
#[inline(always)]
pub fn lane_mask(count: usize) -> u16 {
    if count >= 16 {
        u16::MAX
    } else {
        (1u16 << count) - 1
    }
}

/// Floats of a `k x n` right operand in slabs of [`NR`] columns.
pub fn slab_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * k * NR
}

/// Where `B(l, j)` lives in slab layout with `k` rows: `(j / NR) k NR + l NR + j % NR`.
#[inline(always)]
pub fn slab_index(k: usize, l: usize, j: usize) -> usize {
    ((j / NR) * k + l) * NR + j % NR
}

/// Columns `a_k0 .. a_k0 + len` of `A` times rows `b_k0 .. b_k0 + len` of `B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KSeg {
    pub a_k0: usize,
    pub b_k0: usize,
    pub len: usize,
}

/// Split `segs` into blocks of at most [`KC`] products each, cutting segments where needed.
fn k_blocks(segs: &[KSeg]) -> Vec<Vec<KSeg>> {
    let mut blocks = vec![Vec::new()];
    let mut room = KC;
    for s in segs {
        let mut s = *s;
        while s.len > 0 {
            if room == 0 {
                blocks.push(Vec::new());
                room = KC;
            }
            let take = s.len.min(room);
            blocks.last_mut().unwrap().push(KSeg { len: take, ..s });
            s.a_k0 += take;
            s.b_k0 += take;
            s.len -= take;
            room -= take;
        }
    }
    blocks.retain(|b| !b.is_empty());
    blocks
}

fn check(a: &PackedA, segs: &[KSeg], b: &[f32], bk: usize, n: usize, c_len: usize, ldc: usize) {
    assert!(segs.iter().all(|s| s.a_k0 + s.len <= a.k && s.b_k0 + s.len <= bk), "packed gemm: segment out of range");
    assert!(b.len() >= slab_len(bk, n), "packed gemm: B shorter than its slabs");
    assert!(ldc >= n && (a.m == 0 || n == 0 || c_len >= (a.m - 1) * ldc + n), "packed gemm: C out of bounds");
}

/// `C (m x n, row stride ldc) = [C +] sum_segments A[:, a_k0..] B[b_k0.., :]`, `B` in slabs of
/// `bk` rows. `accumulate = false` overwrites `C` (also when there are no segments). Requires
/// [`available`].
#[allow(clippy::too_many_arguments)]
pub fn gemm(a: &PackedA, segs: &[KSeg], b: &[f32], bk: usize, n: usize, c: &mut [f32], ldc: usize, accumulate: bool) {
    gemm_with(kernel(), a, segs, b, bk, n, c, ldc, accumulate)
}

/// [`gemm`] on a chosen micro-kernel (the tests compare the two). Panics when the CPU lacks it.
#[allow(clippy::too_many_arguments)]
pub fn gemm_with(
    kernel: Kernel,
    a: &PackedA,
    segs: &[KSeg],
    b: &[f32],
    bk: usize,
    n: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    check(a, segs, b, bk, n, c.len(), ldc);
    // SAFETY: `check` bounds A, B and C.
    unsafe { run(kernel, a, segs, b, bk, n, c.as_mut_ptr(), ldc, accumulate) }
}

/// [`gemm`] into a raw `C`, for callers whose parallel tasks write disjoint blocks of one buffer.
///
/// # Safety
/// `c` must address `a.m` rows of stride `ldc` with `n` writable columns each, not aliasing `a` or
/// `b`, and no other thread may touch them meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_to(
    a: &PackedA,
    segs: &[KSeg],
    b: &[f32],
    bk: usize,
    n: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    check(a, segs, b, bk, n, usize::MAX, ldc);
    run(kernel(), a, segs, b, bk, n, c, ldc, accumulate)
}

/// The blocked loops of [`gemm`] and [`gemm_to`], once their operands are checked.
///
/// # Safety
/// As [`gemm_to`], with [`check`] passed.
#[allow(clippy::too_many_arguments)]
unsafe fn run(
    kernel: Kernel,
    a: &PackedA,
    segs: &[KSeg],
    b: &[f32],
    bk: usize,
    n: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    assert!(available(), "packed gemm: AVX2 + FMA required");
    assert!(kernel == Kernel::Avx2 || avx512_available(), "packed gemm: AVX-512F required");
    if a.m == 0 || n == 0 {
        return;
    }
    let shape = || {
        let k: usize = segs.iter().map(|s| s.len).sum();
        (meter::Shape { kind: "gemm", m: a.m, k, n }, 2.0 * (a.m * n * k) as f64)
    };
    // The whole blocked product is one metered span.
    meter::span(shape, || {
        let blocks = k_blocks(segs);
        if blocks.is_empty() {
            if !accumulate {
                for i in 0..a.m {
                    std::slice::from_raw_parts_mut(c.add(i * ldc), n).fill(0.0);
                }
            }
            return;
        }
        // K blocks outermost (C is stored once per block), then row blocks of A (in L2), then the
        // slabs of B (one, or two for the 512-bit kernel, in L1 while the row panels of the block
        // stream past them).
        #[cfg(target_arch = "x86_64")]
        for (bi, blk) in blocks.iter().enumerate() {
            let acc = accumulate || bi > 0;
            let slabs_per_step = if kernel == Kernel::Avx512 { 2 } else { 1 };
            for i0 in (0..a.m).step_by(MC) {
                for q in (0..n.div_ceil(NR)).step_by(slabs_per_step) {
                    let w = (n - q * NR).min(slabs_per_step * NR);
                    let slab = b.as_ptr().add(q * bk * NR);
                    let panels_per_step = slabs_per_step;
                    for p in (i0 / MR..(i0 + MC).min(a.m).div_ceil(MR)).step_by(panels_per_step) {
                        let live = (a.m - p * MR).min(panels_per_step * MR);
                        let panel = a.data.as_ptr().add(p * a.k * MR);
                        let cb = c.add(p * MR * ldc + q * NR);
                        // SAFETY: the kernel's ISA is present (asserted); `check` bounds the panels and
                        // slabs (slab q + 1 and panel p + 1 are read only when `w > NR`, `rows > MR`,
                        // so they exist), the caller C.
                        match kernel {
                            Kernel::Avx2 => avx2::micro(blk, panel, slab, cb, ldc, live, w, acc),
                            Kernel::Avx512 => avx512::micro(blk, panel, a.k * MR, slab, bk * NR, cb, ldc, live, w, acc),
                        }
                    }
                }
            }
        }
    })
}

/// The same product as [`gemm`] as a plain loop nest (f64 sums): what the tests compare it with.
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference(
    a: &PackedA,
    segs: &[KSeg],
    b: &[f32],
    bk: usize,
    n: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    check(a, segs, b, bk, n, c.len(), ldc);
    for i in 0..a.m {
        for j in 0..n {
            let mut s = if accumulate { c[i * ldc + j] as f64 } else { 0.0 };
            for sg in segs {
                for l in 0..sg.len {
                    s += a.get(i, sg.a_k0 + l) as f64 * b[slab_index(bk, sg.b_k0 + l, j)] as f64;
                }
            }
            c[i * ldc + j] = s as f32;
        }
    }
}
