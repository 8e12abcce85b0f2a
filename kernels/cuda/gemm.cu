// Batched strided matrix multiply: C[b] = alpha * A[b] B[b] + beta * C[b].
//
// What: A[b] is m x k with element (i, p) at a[b*a_bs + i*a_rs + p*a_cs]; B[b] is k x n likewise;
//       C[b] is m x n at c[b*c_bs + i*c_rs + j]. A transpose is a view with swapped strides (no
//       copy), a shared operand has batch stride 0. Used by matmul (forward and both gradients) and
//       by conv2d (im2col columns times the weight, batched over groups).
// Kernels:
//   `sgemm_f32`: classic shared-memory tiling. 64x64 output tile per 256-thread block, k in
//       steps of 16 staged through shared memory; each thread accumulates a 4x4 micro-tile with
//       rows/cols strided by 16 (conflict-free shared reads). Launch: grid (ceil(n/64),
//       ceil(m/64), batch), block 256. Exact f32 FMA accumulation in k order.
//   `sgemm_tf32`: optional tensor-core path (sm_80+ `wmma` m16n16k8, TF32 inputs, f32 accumulate),
//       64x64 tile per 128-thread block (4 warps, 32x32 each). Inputs are rounded to TF32 (10-bit
//       mantissa), so results differ from f32 at ~1e-3 relative: enable it explicitly
//       (kernels::cuda::set_tf32 / SEGNET_CUDA_TF32=1). Launch: grid as above, block 128.
// Validated: cuda_parity.rs matmul forward/backward (batched, shared B, transposed views) against the
// CPU GEMM at f32 tolerance; TF32 against the CPU at 1e-2 relative.
#include <mma.h>
#include "common.cuh"

struct GemmDesc {
    int m, n, k;
    int a_rs, a_cs, a_bs;
    int b_rs, b_cs, b_bs;
    int c_rs, c_bs;
    float alpha, beta;
};

#define TM 64
#define TN 64
#define TK 16

extern "C" __global__ void __launch_bounds__(256) sgemm_f32(GemmDesc d, const float* __restrict__ a,
                                                            const float* __restrict__ b, float* __restrict__ c) {
    __shared__ float As[TK][TM + 1];
    __shared__ float Bs[TK][TN + 1];
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int row0 = blockIdx.y * TM, col0 = blockIdx.x * TN;
    a += (long long)blockIdx.z * d.a_bs;
    b += (long long)blockIdx.z * d.b_bs;
    c += (long long)blockIdx.z * d.c_bs;

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < d.k; k0 += TK) {
        // Stage A[row0.., k0..] (64x16) and B[k0.., col0..] (16x64); zero outside the matrices.
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int e = tid + 256 * l;
            const int ar = e / TK, ak = e % TK;  // consecutive threads walk k: coalesced for row-major A
            const int gr = row0 + ar, gk = k0 + ak;
            As[ak][ar] = (gr < d.m && gk < d.k) ? a[gr * d.a_rs + gk * d.a_cs] : 0.0f;
            const int bk = e / TN, bc = e % TN;  // consecutive threads walk n: coalesced for row-major B
            const int gk2 = k0 + bk, gc = col0 + bc;
            Bs[bk][bc] = (gk2 < d.k && gc < d.n) ? b[gk2 * d.b_rs + gc * d.b_cs] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int p = 0; p < TK; ++p) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) av[i] = As[p][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = Bs[p][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = row0 + ty + 16 * i;
        if (r >= d.m) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int cc = col0 + tx + 16 * j;
            if (cc >= d.n) continue;
            float* out = c + r * d.c_rs + cc;
            const float v = d.alpha * acc[i][j];
            *out = d.beta == 0.0f ? v : v + d.beta * *out;  // beta == 0 never reads C (may be garbage)
        }
    }
}

using namespace nvcuda;

#define LDA (TK + 4)
#define LDB (TN + 4)
#define LDC (TN + 4)

extern "C" __global__ void __launch_bounds__(128) sgemm_tf32(GemmDesc d, const float* __restrict__ a,
                                                             const float* __restrict__ b, float* __restrict__ c) {
    __shared__ __align__(32) float As[TM * LDA];
    __shared__ __align__(32) float Bs[TK * LDB];
    __shared__ __align__(32) float Cs[TM * LDC];
    const int tid = threadIdx.x, warp = tid / 32;
    const int wm = warp / 2, wn = warp % 2;  // each warp owns a 32x32 quadrant
    const int row0 = blockIdx.y * TM, col0 = blockIdx.x * TN;
    a += (long long)blockIdx.z * d.a_bs;
    b += (long long)blockIdx.z * d.b_bs;
    c += (long long)blockIdx.z * d.c_bs;

    wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

    for (int k0 = 0; k0 < d.k; k0 += TK) {
        for (int e = tid; e < TM * TK; e += 128) {
            const int ar = e / TK, ak = e % TK;
            const int gr = row0 + ar, gk = k0 + ak;
            const float v = (gr < d.m && gk < d.k) ? a[gr * d.a_rs + gk * d.a_cs] : 0.0f;
            As[ar * LDA + ak] = wmma::__float_to_tf32(v);
            const int bk = e / TN, bc = e % TN;
            const int gk2 = k0 + bk, gc = col0 + bc;
            const float w = (gk2 < d.k && gc < d.n) ? b[gk2 * d.b_rs + gc * d.b_cs] : 0.0f;
            Bs[bk * LDB + bc] = wmma::__float_to_tf32(w);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TK; kk += 8) {
            wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], As + (wm * 32 + i * 16) * LDA + kk, LDA);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], Bs + kk * LDB + wn * 32 + j * 16, LDB);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
            wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * LDC + wn * 32 + j * 16, acc[i][j], LDC,
                                    wmma::mem_row_major);
    __syncthreads();
    for (int e = tid; e < TM * TN; e += 128) {
        const int r = row0 + e / TN, cc = col0 + e % TN;
        if (r < d.m && cc < d.n) {
            float* out = c + r * d.c_rs + cc;
            const float v = d.alpha * Cs[(e / TN) * LDC + e % TN];
            *out = d.beta == 0.0f ? v : v + d.beta * *out;
        }
    }
}
