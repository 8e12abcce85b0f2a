// Bilinear resize over N*C planes, both align_corners conventions.
//
// What: the host computes the per-axis taps with the CPU kernel's `linear_taps::<f32>` (PyTorch's
//   source-index rules, kernels/src/cpu/resize.rs), so both backends use identical indices and
//   weights. `bilinear_fwd_f32`: y[p,i,j] = l0h (l0w x[h0,w0] + l1w x[h0,w1]) + l1h (l0w x[h1,w0]
//   + l1w x[h1,w1]). Backward is the transpose, done separably as two gathers through CSR tables
//   (for each input index, the outputs that read it and their weights, built on the host):
//   `bilinear_bwd_w_f32` tmp[p, oy, ix] = sum_{(ox, l) in colsW(ix)} g[p, oy, ox] l, then
//   `bilinear_bwd_h_f32` dx[p, iy, ix] = sum_{(oy, l) in rowsH(iy)} tmp[p, oy, ix] l.
//   No atomics: deterministic, fixed order.
// Launch: 1-D grid-stride, 256 threads, one thread per output element of each pass.
// Validated: cuda_parity.rs resize_bilinear (up/down, both align_corners) forward and backward vs CPU.
#include "common.cuh"

extern "C" __global__ void bilinear_fwd_f32(int planes, int ih, int iw, int oh, int ow, const int* __restrict__ h0,
                                            const int* __restrict__ h1, const float* __restrict__ lh0,
                                            const float* __restrict__ lh1, const int* __restrict__ w0,
                                            const int* __restrict__ w1, const float* __restrict__ lw0,
                                            const float* __restrict__ lw1, const float* __restrict__ x,
                                            float* __restrict__ y) {
    const int n = planes * oh * ow;
    GRID_STRIDE(i, n) {
        const int j = i % ow, r = (i / ow) % oh, p = i / (ow * oh);
        const float* xp = x + (long long)p * ih * iw;
        const float* r0 = xp + h0[r] * iw;
        const float* r1 = xp + h1[r] * iw;
        const float a = lw0[j] * r0[w0[j]] + lw1[j] * r0[w1[j]];
        const float b = lw0[j] * r1[w0[j]] + lw1[j] * r1[w1[j]];
        y[i] = lh0[r] * a + lh1[r] * b;
    }
}

// tmp[p, oy, ix] from g[p, oy, ox]: rows = planes * oh.
extern "C" __global__ void bilinear_bwd_w_f32(int rows, int iw, int ow, const int* __restrict__ off,
                                              const int* __restrict__ idx, const float* __restrict__ wt,
                                              const float* __restrict__ g, float* __restrict__ tmp) {
    const int n = rows * iw;
    GRID_STRIDE(i, n) {
        const int ix = i % iw, row = i / iw;
        const float* gr = g + (long long)row * ow;
        float acc = 0.0f;
        for (int e = off[ix]; e < off[ix + 1]; ++e) acc += gr[idx[e]] * wt[e];
        tmp[i] = acc;
    }
}

// dx[p, iy, ix] from tmp[p, oy, ix].
extern "C" __global__ void bilinear_bwd_h_f32(int planes, int ih, int iw, int oh, const int* __restrict__ off,
                                              const int* __restrict__ idx, const float* __restrict__ wt,
                                              const float* __restrict__ tmp, float* __restrict__ dx) {
    const int n = planes * ih * iw;
    GRID_STRIDE(i, n) {
        const int ix = i % iw, iy = (i / iw) % ih, p = i / (iw * ih);
        const float* tp = tmp + (long long)p * oh * iw;
        float acc = 0.0f;
        for (int e = off[iy]; e < off[iy + 1]; ++e) acc += tp[idx[e] * iw + ix] * wt[e];
        dx[i] = acc;
    }
}
