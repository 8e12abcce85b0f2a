//! The packed GEMM against its plain reference on the same layouts.

use super::*;

fn val(i: usize) -> f32 {
    ((i * 7919 % 2003) as f32 / 2003.0 - 0.5) * 2.0
}

/// `B` with `bk` rows and `n` columns in slabs, from `B(l, j) = val(...)`, padding left at zero.
fn slabs(bk: usize, n: usize) -> Vec<f32> {
    let mut b = vec![0.0; slab_len(bk, n)];
    for l in 0..bk {
        for j in 0..n {
            b[slab_index(bk, l, j)] = val(l * 131 + j * 17 + 5);
        }
    }
    b
}

/// `(m, k of A, n, segments as (a_k0, len))`, `B`'s rows being the segments back to back.
type GemmCase<'a> = (usize, usize, usize, &'a [(usize, usize)]);

/// `A` (`m x k`), the segments `(a_k0, len)` with `B`'s rows back to back, `B`'s row count and `B`
/// (`n` columns) of one test case.
fn operands(m: usize, k: usize, n: usize, spans: &[(usize, usize)]) -> (PackedA, Vec<KSeg>, usize, Vec<f32>) {
    let a = PackedA::pack(m, k, |i, l| val(i * 977 + l * 3 + 1));
    let mut segs = Vec::new();
    let mut bk = 0;
    for &(a_k0, len) in spans {
        segs.push(KSeg { a_k0, b_k0: bk, len });
        bk += len;
    }
    (a, segs, bk, slabs(bk, n))
}

#[test]
fn k_blocks_cut_segments_at_kc_and_keep_their_order() {
    let segs = [KSeg { a_k0: 0, b_k0: 0, len: 200 }, KSeg { a_k0: 500, b_k0: 200, len: 400 }];
    let blocks = k_blocks(&segs);
    assert_eq!(blocks.len(), 3);
    assert_eq!(blocks[0], vec![KSeg { a_k0: 0, b_k0: 0, len: 200 }, KSeg { a_k0: 500, b_k0: 200, len: 56 }]);
    assert_eq!(blocks[1], vec![KSeg { a_k0: 556, b_k0: 256, len: 256 }]);
    assert_eq!(blocks[2], vec![KSeg { a_k0: 812, b_k0: 512, len: 88 }]);
    assert!(k_blocks(&[]).is_empty());
}

#[test]
fn matches_reference_on_ragged_shapes_segments_k_and_row_blocks() {
    if !available() {
        eprintln!("skipped: no AVX2 + FMA");
        return;
    }
    // (m, k of A, n, segments as (a_k0, len); B rows are the segments back to back)
    let cases: &[GemmCase] = &[
        (6, 16, 16, &[(0, 16)]),
        (7, 9, 5, &[(0, 9)]),
        (13, 40, 37, &[(3, 10), (20, 15)]),
        (1, 600, 33, &[(0, 600)]),
        (64, 2304, 70, &[(0, 256), (512, 700), (1400, 904)]),
        (5, 3, 1, &[(2, 1), (0, 1)]),
        (200, 300, 20, &[(0, 300)]),
        // Last slabs of 13 and of 8 columns (the full and the half-width kernel at their edges).
        (9, 50, 45, &[(0, 50)]),
        (12, 70, 24, &[(5, 60)]),
    ];
    for &(m, k, n, spans) in cases {
        let (a, segs, bk, b) = operands(m, k, n, spans);
        for accumulate in [false, true] {
            let ldc = n + 3;
            let c0: Vec<f32> = (0..m * ldc).map(|i| val(i + 11)).collect();
            let (mut got, mut want) = (c0.clone(), c0.clone());
            gemm(&a, &segs, &b, bk, n, &mut got, ldc, accumulate);
            gemm_reference(&a, &segs, &b, bk, n, &mut want, ldc, accumulate);
            for i in 0..m {
                for j in 0..ldc {
                    let (g, w) = (got[i * ldc + j], want[i * ldc + j]);
                    if j < n {
                        let tol = 1e-5 * (1.0 + bk as f32).sqrt() * (1.0 + w.abs());
                        assert!((g - w).abs() <= tol, "{m}x{k}x{n} acc {accumulate}: ({i},{j}) {g} vs {w}");
                    } else {
                        assert_eq!(g, c0[i * ldc + j], "column {j} past n written");
                    }
                }
            }
        }
    }
}

#[test]
fn no_segments_overwrites_with_zeros_or_leaves_c() {
    if !available() {
        return;
    }
    let a = PackedA::pack(3, 4, |_, _| 1.0);
    let b = slabs(0, 5);
    let mut c = vec![2.0; 15];
    gemm(&a, &[], &b, 0, 5, &mut c, 5, true);
    assert!(c.iter().all(|&v| v == 2.0));
    gemm(&a, &[], &b, 0, 5, &mut c, 5, false);
    assert!(c.iter().all(|&v| v == 0.0));
}

#[test]
fn packing_round_trips() {
    let a = PackedA::pack(13, 7, |i, l| (i * 100 + l) as f32);
    for i in 0..13 {
        for l in 0..7 {
            assert_eq!(a.get(i, l), (i * 100 + l) as f32);
        }
    }
    // A reused buffer (it never shrinks): after a larger matrix, each smaller or larger one is
    // exactly what a fresh pack gives, padding rows zero, panels no longer than the matrix.
    let mut reused = PackedA::pack(40, 30, |_, _| f32::NAN);
    for (m, k) in [(13, 7), (5, 3), (40, 30), (1, 1), (7, 50)] {
        reused.repack(m, k, |i, l| (i * 100 + l) as f32 + 0.5);
        let fresh = PackedA::pack(m, k, |i, l| (i * 100 + l) as f32 + 0.5);
        let bits = |p: &PackedA| p.panels().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&reused), bits(&fresh), "{m} x {k}");
        assert_eq!(fresh.panels().len(), m.div_ceil(MR) * k * MR);
    }
}

/// `cargo test -p kernels --release --lib packed_gemm::tests::speed -- --ignored --nocapture`:
/// one thread, the conv tile shapes (m rows of weights, k = taps x channels, n = 256 pixels), our
/// two micro-kernels next to matrixmultiply on the same problem in row-major form.
#[test]
#[ignore]
fn speed_on_conv_tile_shapes() {
    use crate::Float;
    if !available() {
        return;
    }
    let time = crate::cpu::best_time;
    for &(m, k, n) in &[(256, 2304, 256), (64, 576, 256), (512, 4608, 256), (256, 256, 256), (48, 2304, 256)] {
        let a = PackedA::pack(m, k, |i, l| val(i * 977 + l * 3 + 1));
        let arm: Vec<f32> = (0..m * k).map(val).collect();
        let b = slabs(k, n);
        let brm: Vec<f32> = (0..k * n).map(|i| val(i + 3)).collect();
        let segs = [KSeg { a_k0: 0, b_k0: 0, len: k }];
        let mut c = vec![0.0f32; m * n];
        let ours = time(&mut || gemm_with(Kernel::Avx2, &a, &segs, &b, k, n, &mut c, n, false));
        let wide =
            avx512_available().then(|| time(&mut || gemm_with(Kernel::Avx512, &a, &segs, &b, k, n, &mut c, n, false)));
        // SAFETY: in-bounds row-major views.
        let mm = time(&mut || unsafe {
            f32::gemm_raw(
                m,
                k,
                n,
                1.0,
                arm.as_ptr(),
                k as isize,
                1,
                brm.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        });
        let gf = 2.0 * (m * k * n) as f64 * 1e-9;
        let wide = wide.map_or("-".to_string(), |t| format!("{:.1}", gf / t));
        println!(
            "{m}x{k}x{n}: packed AVX-512 {wide} GFLOP/s, packed AVX2 {:.1} GFLOP/s, matrixmultiply {:.1} GFLOP/s",
            gf / ours,
            gf / mm
        );
    }
}

/// `cargo test -p kernels --release --lib packed_gemm::tests::fma_peak -- --ignored --nocapture`:
/// the machine's f32 FMA peak, the yardstick for the GEMM figures ([`meter::fma_peak_gflops`]) at
/// 8 and, on AVX-512 CPUs, 16 lanes, on 1 and on 2 threads.
#[test]
#[ignore]
fn fma_peak() {
    for (name, kernel) in [("AVX2", Kernel::Avx2), ("AVX-512", Kernel::Avx512)] {
        if kernel == Kernel::Avx512 && !avx512_available() {
            continue;
        }
        for threads in [1usize, 2] {
            if let Some(g) = meter::fma_peak_gflops(kernel, threads, 50_000_000) {
                println!("{name} FMA peak, {threads} thread(s): {g:.1} GFLOP/s");
            }
        }
    }
}

#[test]
fn avx512_kernel_matches_avx2_bit_for_bit() {
    if !available() || !avx512_available() {
        eprintln!("skipped: no AVX-512F");
        return;
    }
    // Odd and even slab counts, a last slab of 1..16 columns, a second slab of 1..16 columns,
    // short panels, segments, K blocks, accumulation.
    let cases: &[GemmCase] = &[
        (6, 16, 32, &[(0, 16)]),
        (7, 9, 17, &[(0, 9)]),
        (13, 40, 37, &[(3, 10), (20, 15)]),
        (1, 600, 48, &[(0, 600)]),
        (64, 2304, 70, &[(0, 256), (512, 700), (1400, 904)]),
        (5, 3, 1, &[(2, 1), (0, 1)]),
        (200, 300, 31, &[(0, 300)]),
        (97, 33, 289, &[(0, 33)]),
    ];
    for &(m, k, n, spans) in cases {
        let (a, segs, bk, b) = operands(m, k, n, spans);
        for accumulate in [false, true] {
            let ldc = n + 3;
            let c0: Vec<f32> = (0..m * ldc).map(|i| val(i + 11)).collect();
            let (mut wide, mut narrow, mut want) = (c0.clone(), c0.clone(), c0.clone());
            gemm_with(Kernel::Avx512, &a, &segs, &b, bk, n, &mut wide, ldc, accumulate);
            gemm_with(Kernel::Avx2, &a, &segs, &b, bk, n, &mut narrow, ldc, accumulate);
            gemm_reference(&a, &segs, &b, bk, n, &mut want, ldc, accumulate);
            for i in 0..m * ldc {
                assert_eq!(wide[i].to_bits(), narrow[i].to_bits(), "{m}x{k}x{n} acc {accumulate}: element {i}");
                if i % ldc >= n {
                    assert_eq!(wide[i], c0[i], "column {} past n written", i % ldc);
                } else {
                    let tol = 1e-5 * (1.0 + bk as f32).sqrt() * (1.0 + want[i].abs());
                    assert!((wide[i] - want[i]).abs() <= tol, "{m}x{k}x{n}: element {i} {} vs {}", wide[i], want[i]);
                }
            }
        }
    }
}
