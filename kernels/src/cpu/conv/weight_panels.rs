//! The conv weights in the packed GEMM's row panels, once per call, in buffers kept between calls.
//!
//! The gather-conv engine multiplies every tile's im2col block by the weights as the packed GEMM's
//! left operand `A` ([`PackedA`]: panels of [`MR`] rows, `A(p MR + r, l) = data[(p k + l) MR + r]`).
//! For one group's weights `w[o][c][tap]` (`cog` rows `o`, `cig` channels `c`, `taps` taps):
//!
//! ```text
//! forward:        A(o, tap cig + c) = w[o][c][tap]    (m = cog rows, k = taps cig)
//! input gradient: A(c, tap cog + o) = w[o][c][tap]    (m = cig rows, k = taps cog)
//! ```
//!
//! Both are transposes of the weights, and on the late layers' small maps they were a large part of
//! a conv call: a 3x3 conv with 512 channels on 9 x 9 maps packs 9.4 MB of weights for 162 pixels.
//! Two things made that slow, and both are gone here:
//!
//! * **Zero filling.** Each call allocated a fresh zeroed buffer (a `memset` of the whole 9.4 MB
//!   before the packing wrote every entry again). The buffers now come from a small pool ([`Panels`]
//!   gives its buffers back when dropped) and only the padding rows of a last, short panel are
//!   zeroed ([`PackedA::panels_mut`]).
//! * **One float at a time.** Six rows of a panel side by side, with a scalar load and store per
//!   weight. On AVX-512 each run of 16 panel columns (96 floats, contiguous in the panel) is now six
//!   masked 16-lane gathers from the weights, whose offsets are the same for every run of a call
//!   ([`pack_run_avx512`]). The scalar packers stay as the reference the tests compare them with,
//!   and as the path on CPUs without AVX-512.
//!
//! Either way every weight lands where the other puts it: the packed panels are bit-identical.

use crate::cpu::packed_gemm::{avx512_available, PackedA, MR};
use crate::cpu::parallel::SendPtr;
use rayon::prelude::*;
use std::sync::Mutex;

/// Each group's packed weights of one conv call. The buffers go back to the pool when dropped.
pub(super) struct Panels(Vec<PackedA>);

impl std::ops::Deref for Panels {
    type Target = [PackedA];
    fn deref(&self) -> &[PackedA] {
        &self.0
    }
}

impl Drop for Panels {
    fn drop(&mut self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        for pa in self.0.drain(..) {
            // Keep the largest buffers.
            pool.push(pa);
            pool.sort_by_key(|b| std::cmp::Reverse(b.capacity()));
            pool.truncate(POOL_BUFFERS);
        }
    }
}

/// Buffers kept for the next call. Convs run one after another and a call's panels are dropped
/// when it returns, so one buffer is enough: it grows to the model's largest packed weights (ASPP's
/// 2048 x 9 x 256 on ResNet-50: 19 MB) and serves every call after that.
const POOL_BUFFERS: usize = 1;

static POOL: Mutex<Vec<PackedA>> = Mutex::new(Vec::new());

/// A buffer from the pool reshaped to `m x k` (the smallest that holds it; a new one when none
/// does: growing a pooled one would copy its stale contents). Its live entries hold stale values.
fn take(m: usize, k: usize) -> PackedA {
    let need = m.div_ceil(MR) * k * MR;
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let fits = (0..pool.len()).filter(|&i| pool[i].capacity() >= need).min_by_key(|&i| pool[i].capacity());
    match fits {
        Some(i) => pool.swap_remove(i),
        None => PackedA::pack(0, 0, |_, _| 0.0),
    }
}

/// Panels per parallel task of the forward's packing (a group of 8 panels reads 48 rows).
const PACK_GROUP: usize = 8;

/// Weights per task block of the input gradient's packing (256 KB: read once, then from L2).
const PACK_BLOCK_FLOATS: usize = 64 * 1024;

/// The forward's `A` of every group: `w` is `[groups cog][cig][taps]`, `live[t]` says whether tap
/// `t` is read at all (the columns of the others keep stale values).
pub(super) fn forward(w: &[f32], groups: usize, cig: usize, live: &[bool], cog: usize) -> Panels {
    let vector = avx512_available();
    per_group(w, groups, cog, live.len() * cig, |wg, data| {
        let k = live.len() * cig;
        data.par_chunks_mut(PACK_GROUP * k * MR).enumerate().for_each(|(task, d)| {
            for (j, panel) in d.chunks_exact_mut(k * MR).enumerate() {
                let p = task * PACK_GROUP + j;
                let rows = (cog - p * MR).min(MR);
                let wp = &wg[p * MR * k..][..rows * k];
                if vector {
                    // SAFETY: AVX-512F present; sizes as `forward_panel_scalar` reads them.
                    unsafe { forward_panel_avx512(wp, cig, live, rows, panel) }
                } else {
                    forward_panel_scalar(wp, cig, live, rows, panel);
                }
            }
        });
    })
}

/// The input gradient's `A` of every group, `w` and `live` as in [`forward`].
pub(super) fn input_grad(w: &[f32], groups: usize, cig: usize, live: &[bool], cog: usize) -> Panels {
    let vector = avx512_available();
    per_group(w, groups, cig, live.len() * cog, |wg, data| input_grad_into(wg, cig, live, cog, data, vector))
}

/// Per group of `w` (`groups` parts of `m k` weights: both layouts hold each weight once), an
/// `m x k` buffer from the pool that `fill(group weights, panels)` packs (nothing to do when `k` is 0).
fn per_group(w: &[f32], groups: usize, m: usize, k: usize, fill: impl Fn(&[f32], &mut [f32])) -> Panels {
    let per_group = m * k;
    assert_eq!(w.len(), groups * per_group, "conv weight packing: sizes");
    Panels(
        (0..groups)
            .map(|gi| {
                let mut pa = take(m, k);
                let data = pa.panels_mut(m, k);
                if k > 0 {
                    fill(&w[gi * per_group..][..per_group], data);
                }
                pa
            })
            .collect(),
    )
}

/// One panel of the forward's `A` (rows `o` of `wp`, `rows <= MR` of them, each `cig x taps`):
/// `panel[(t cig + c) MR + r] = wp[(r cig + c) taps + t]` for the live taps, rows past `rows` left
/// alone. Blocks of 16 channels, taps inside: each tap's part of the block is one run of `16 MR`
/// floats written in order, read from the block's `rows x 16 taps` weights (in L1), six rows side
/// by side, a whole panel's by an unrolled loop of `MR` loads and stores. Written row by row
/// (stride `MR`) with a bound check per element, this took 15 % of a 1x1 conv's forward on a 17 x
/// 17 map; channel by channel with the taps inside (nine write streams), 18 % of a 3x3 conv's on a
/// 9 x 9 map with 512 channels.
pub(super) fn forward_panel_scalar(wp: &[f32], cig: usize, live: &[bool], rows: usize, panel: &mut [f32]) {
    let taps = live.len();
    let row_len = cig * taps;
    assert!(rows <= MR && wp.len() >= rows * row_len && panel.len() >= row_len * MR, "conv weight packing: sizes");
    for c0 in (0..cig).step_by(16) {
        let c1 = (c0 + 16).min(cig);
        for t in (0..taps).filter(|&t| live[t]) {
            let run = &mut panel[(t * cig + c0) * MR..(t * cig + c1) * MR];
            for (j, col) in run.chunks_exact_mut(MR).enumerate() {
                // SAFETY: r < rows <= MR, (c0 + j) taps + t < cig taps: inside the `rows * cig *
                // taps` floats of `wp` (asserted); `col` holds MR floats.
                unsafe { copy_column(col, wp, (c0 + j) * taps + t, row_len, rows) };
            }
        }
    }
}

/// One panel column: `col[r] = src[i + r stride]` for `r < rows`, a whole panel's six by an
/// unrolled loop (both scalar packers' inner step).
///
/// # Safety
/// `rows <= col.len()`, and `src` holds `i + (rows - 1) stride` when `rows > 0`.
#[inline(always)]
unsafe fn copy_column(col: &mut [f32], src: &[f32], i: usize, stride: usize, rows: usize) {
    if rows == MR {
        for r in 0..MR {
            *col.get_unchecked_mut(r) = *src.get_unchecked(i + r * stride);
        }
    } else {
        for r in 0..rows {
            *col.get_unchecked_mut(r) = *src.get_unchecked(i + r * stride);
        }
    }
}

/// [`forward_panel_scalar`] on AVX-512: for each block of 16 channels, each tap's 16 panel columns
/// are one run of 96 floats, gathered from `wp` with the offsets `r cig taps + j taps`.
///
/// # Safety
/// AVX-512F present; `wp` holds `rows * cig * taps` floats, `panel` `cig * taps * MR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn forward_panel_avx512(wp: &[f32], cig: usize, live: &[bool], rows: usize, panel: &mut [f32]) {
    let taps = live.len();
    assert!(wp.len() >= rows * cig * taps && panel.len() >= cig * taps * MR, "conv weight packing: sizes");
    let offsets = RunOffsets::new(taps, cig * taps, rows);
    for c0 in (0..cig).step_by(16) {
        let cols = (cig - c0).min(16);
        // Channel block first, taps inside: the block's 6 x 16 x taps weights stay in L1.
        for t in (0..taps).filter(|&t| live[t]) {
            pack_run_avx512(
                wp.as_ptr().add(c0 * taps + t),
                &offsets,
                cols,
                panel.as_mut_ptr().add((t * cig + c0) * MR),
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn forward_panel_avx512(wp: &[f32], cig: usize, live: &[bool], rows: usize, panel: &mut [f32]) {
    forward_panel_scalar(wp, cig, live, rows, panel)
}

/// The input gradient's packing of one group's weights `wg` into the whole buffer `data`
/// (`cig.div_ceil(MR) * taps cog * MR` floats): `A(c, t cog + o) = wg[(o cig + c) taps + t]`, rows
/// past `cig` and the columns of dead taps (`live[t]` false) left alone. Tasks take blocks of rows `o` (about 256 KB of weights, read in order and
/// then from L2) and write each panel's part for them as one contiguous run per tap. Packing panel
/// by panel instead (6 floats of each of `cog` rows, 2 KB apart for 512 channels: a read pattern
/// the prefetchers do not follow) took 16-25 % of a 1x1 conv's input gradient on a 17 x 17 map.
/// `vector`: the runs as AVX-512 gathers (requires AVX-512F), else the scalar loop.
pub(super) fn input_grad_into(wg: &[f32], cig: usize, live: &[bool], cog: usize, data: &mut [f32], vector: bool) {
    let taps = live.len();
    let k = taps * cog;
    let panels = cig.div_ceil(MR);
    assert!(data.len() >= panels * k * MR && wg.len() >= cog * cig * taps, "conv weight packing: sizes");
    assert!(!vector || avx512_available(), "conv weight packing: AVX-512F required");
    let block = (PACK_BLOCK_FLOATS / (cig * taps).max(1)).clamp(4, 64);
    let dp = SendPtr(data.as_mut_ptr());
    // The gather offsets of a whole panel's runs and of the last panel's (fewer rows).
    let offsets = vector.then(|| {
        let last = cig - (panels.max(1) - 1) * MR;
        [RunOffsets::new(cig * taps, taps, MR), RunOffsets::new(cig * taps, taps, last)]
    });
    (0..cog.div_ceil(block)).into_par_iter().for_each(|bi| {
        let (ob, oe) = (bi * block, ((bi + 1) * block).min(cog));
        for p in 0..panels {
            let rows = (cig - p * MR).min(MR);
            let offsets = offsets.as_ref().map(|o| &o[usize::from(p + 1 == panels)]);
            for t in (0..taps).filter(|&t| live[t]) {
                // SAFETY: the run of panel p, tap t, rows o in ob..oe lies inside `data` (asserted
                // above) and belongs to this block's task alone.
                let run = unsafe {
                    std::slice::from_raw_parts_mut(dp.ptr().add(p * k * MR + (t * cog + ob) * MR), (oe - ob) * MR)
                };
                let src = &wg[(ob * cig + p * MR) * taps + t..];
                match offsets {
                    // SAFETY: AVX-512F present (asserted); a lane (o, r) reads
                    // `src[(o - ob) cig taps + r taps]`, inside `wg` for o < cog and r < rows.
                    Some(offs) => unsafe {
                        for o0 in (0..oe - ob).step_by(16) {
                            pack_run_avx512(
                                src.as_ptr().add(o0 * cig * taps),
                                offs,
                                (oe - ob - o0).min(16),
                                run.as_mut_ptr().add(o0 * MR),
                            );
                        }
                    },
                    None => {
                        assert!(
                            src.len() > (oe - ob - 1) * cig * taps + (rows - 1) * taps,
                            "conv weight packing: sizes"
                        );
                        for (o, col) in run.chunks_exact_mut(MR).enumerate() {
                            // SAFETY: o < oe - ob and r < rows: inside `src` (asserted); `col`
                            // holds MR >= rows floats.
                            unsafe { copy_column(col, src, o * cig * taps, taps, rows) };
                        }
                    }
                }
            }
        }
    });
}

/// The gather offsets of a run of 16 panel columns: lane `i` of vector `v` is element
/// `e = 16 v + i` of the run, column `j = e / MR`, row `r = e % MR`, at `j col_stride + r
/// row_stride` from the run's first weight; lanes of rows `>= rows` are masked off.
struct RunOffsets {
    idx: [[i32; 16]; MR],
    row_mask: [u16; MR],
}

impl RunOffsets {
    fn new(col_stride: usize, row_stride: usize, rows: usize) -> RunOffsets {
        let mut idx = [[0i32; 16]; MR];
        let mut row_mask = [0u16; MR];
        for (v, (lanes, mask)) in idx.iter_mut().zip(&mut row_mask).enumerate() {
            for (i, lane) in lanes.iter_mut().enumerate() {
                let e = 16 * v + i;
                let (j, r) = (e / MR, e % MR);
                *lane =
                    i32::try_from(j * col_stride + r * row_stride).expect("conv weight packing: offsets fit in i32");
                if r < rows {
                    *mask |= 1 << i;
                }
            }
        }
        RunOffsets { idx, row_mask }
    }
}

/// Write `cols <= 16` columns of a run (`cols MR` floats at `dst`) by six masked gathers from
/// `src`: lanes of live rows read their weight, lanes of padding rows write zero.
///
/// # Safety
/// AVX-512F present; every unmasked lane's offset from `src` readable; `dst` writable for `cols MR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_run_avx512(src: *const f32, offs: &RunOffsets, cols: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    let floats = cols * MR;
    for v in 0..MR.min(floats.div_ceil(16)) {
        let store = crate::cpu::packed_gemm::lane_mask(floats - 16 * v);
        let load = store & offs.row_mask[v];
        let x = _mm512_mask_i32gather_ps::<4>(
            _mm512_setzero_ps(),
            load,
            _mm512_loadu_si512(offs.idx[v].as_ptr().cast()),
            src.cast(),
        );
        _mm512_mask_storeu_ps(dst.add(16 * v), store, x);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_run_avx512(_: *const f32, _: &RunOffsets, _: usize, _: *mut f32) {
    unreachable!("AVX-512 packing runs on x86-64 only")
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Packing time per weight, best of 20 calls, for a few of the step's shapes:
    /// `cargo test -p kernels --release --lib weight_panels::timing -- --ignored --nocapture`
    /// (`RAYON_NUM_THREADS=1` for one thread).
    #[test]
    #[ignore]
    fn packing_speed() {
        for &(cig, taps, cog) in &[(512usize, 9usize, 512usize), (1024, 1, 2048), (256, 9, 256)] {
            let w: Vec<f32> = (0..cig * taps * cog).map(|i| i as f32).collect();
            let live = vec![true; taps];
            let mut best = [f64::MAX; 2];
            for _ in 0..20 {
                let t0 = std::time::Instant::now();
                drop(forward(&w, 1, cig, &live, cog));
                best[0] = best[0].min(t0.elapsed().as_secs_f64());
                let t0 = std::time::Instant::now();
                drop(input_grad(&w, 1, cig, &live, cog));
                best[1] = best[1].min(t0.elapsed().as_secs_f64());
            }
            let per = 1e9 / (cig * taps * cog) as f64;
            println!(
                "{cig} x {taps} -> {cog}: forward {:.3} ms ({:.2} ns/weight), input gradient {:.3} ms ({:.2} ns/weight)",
                best[0] * 1e3,
                best[0] * per,
                best[1] * 1e3,
                best[1] * per
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(len: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919) % 1000) as f32 * 0.001 - 0.5).collect()
    }

    /// The forward's `A` by its definition: padding rows zero, the rest of dead taps' columns NaN
    /// (left untouched in a [`stale`] buffer).
    fn forward_reference(wg: &[f32], cig: usize, live: &[bool], cog: usize) -> Vec<f32> {
        let taps = live.len();
        let k = taps * cig;
        let mut data = vec![0.0; cog.div_ceil(MR) * k * MR];
        for o in 0..cog.div_ceil(MR) * MR {
            for c in 0..cig {
                for t in 0..taps {
                    data[((o / MR) * k + t * cig + c) * MR + o % MR] = match (o < cog, live[t]) {
                        (false, _) => 0.0,
                        (true, false) => f32::NAN,
                        (true, true) => wg[(o * cig + c) * taps + t],
                    };
                }
            }
        }
        data
    }

    /// The input gradient's `A` by its definition, likewise.
    fn input_grad_reference(wg: &[f32], cig: usize, live: &[bool], cog: usize) -> Vec<f32> {
        let taps = live.len();
        let k = taps * cog;
        let mut data = vec![0.0; cig.div_ceil(MR) * k * MR];
        for o in 0..cog {
            for c in 0..cig.div_ceil(MR) * MR {
                for t in 0..taps {
                    data[((c / MR) * k + t * cog + o) * MR + c % MR] = match (c < cig, live[t]) {
                        (false, _) => 0.0,
                        (true, false) => f32::NAN,
                        (true, true) => wg[(o * cig + c) * taps + t],
                    };
                }
            }
        }
        data
    }

    const SHAPES: [(usize, usize, usize, usize); 7] =
        [(1, 1, 1, 1), (3, 9, 5, 1), (16, 9, 6, 2), (17, 1, 13, 1), (40, 9, 33, 2), (64, 49, 7, 1), (5, 9, 70, 3)];

    /// A buffer of `m x k` panels, NaN but for the padding rows' zeros (what `panels_mut` leaves
    /// in a stale buffer, with the stale values made NaN so that any entry a packer misses shows).
    fn stale(m: usize, k: usize) -> Vec<f32> {
        let mut data = vec![f32::NAN; m.div_ceil(MR) * k * MR];
        for p in 0..m.div_ceil(MR) {
            let rows = (m - p * MR).min(MR);
            for l in 0..k {
                data[(p * k + l) * MR + rows..(p * k + l + 1) * MR].fill(0.0);
            }
        }
        data
    }

    /// Both packers (scalar and, where the CPU has it, AVX-512), with every tap live and with some
    /// dead, against the definitions, bit for bit; and the pooled entry points (stale buffers from
    /// the previous shape) on every live entry.
    #[test]
    fn packed_panels_match_the_definitions() {
        let paths: &[bool] = if avx512_available() { &[false, true] } else { &[false] };
        for &(cig, taps, cog, groups) in &SHAPES {
            let w = weights(groups * cog * cig * taps);
            let per = cog * cig * taps;
            for live in [vec![true; taps], (0..taps).map(|t| t % 3 != 1).collect()] {
                let fwd = forward(&w, groups, cig, &live, cog);
                let dx = input_grad(&w, groups, cig, &live, cog);
                for gi in 0..groups {
                    let wg = &w[gi * per..][..per];
                    for o in 0..cog {
                        for c in 0..cig {
                            for t in (0..taps).filter(|&t| live[t]) {
                                let v = wg[(o * cig + c) * taps + t].to_bits();
                                assert_eq!(fwd[gi].get(o, t * cig + c).to_bits(), v, "forward {cig} x {taps} -> {cog}");
                                assert_eq!(
                                    dx[gi].get(c, t * cog + o).to_bits(),
                                    v,
                                    "input gradient {cig} x {taps} -> {cog}"
                                );
                            }
                        }
                    }
                    let (want_f, want_d) =
                        (forward_reference(wg, cig, &live, cog), input_grad_reference(wg, cig, &live, cog));
                    for &vector in paths {
                        let k = taps * cig;
                        let mut data = stale(cog, k);
                        for (p, panel) in data.chunks_exact_mut(k * MR).enumerate() {
                            let rows = (cog - p * MR).min(MR);
                            let wp = &wg[p * MR * k..][..rows * k];
                            if vector {
                                // SAFETY: AVX-512F present (`paths`); sizes as the scalar packer's.
                                unsafe { forward_panel_avx512(wp, cig, &live, rows, panel) };
                            } else {
                                forward_panel_scalar(wp, cig, &live, rows, panel);
                            }
                        }
                        assert_eq!(
                            bits(&data),
                            bits(&want_f),
                            "forward panels, vector {vector}, {cig} x {taps} -> {cog}"
                        );
                        let mut data = stale(cig, taps * cog);
                        input_grad_into(wg, cig, &live, cog, &mut data, vector);
                        assert_eq!(
                            bits(&data),
                            bits(&want_d),
                            "input-gradient panels, vector {vector}, {cig} x {taps} -> {cog}"
                        );
                    }
                }
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
