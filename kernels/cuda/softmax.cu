// Log-softmax over channels and pixel-wise cross-entropy with an ignore label, on [N, C, S].
//
// What: `log_softmax_fwd_f32`: lse[n,s] = max + log sum_c exp(x - max); y = x - lse.
//       `log_softmax_bwd_f32`: dx = g - exp(y) sum_c g.
//       `cross_entropy_fwd_f32`: per pixel, loss[n,s] = lse - x[label] (0 where label == ignore),
//       and lse saved for the backward; the wrapper sums the pixels (reduce.cu, fixed order) and
//       divides by the non-ignored count (host-side labels), an all-ignored batch giving 0.
//       `cross_entropy_bwd_f32`: dx = scale (exp(x - lse) - [c == label]) for valid pixels, 0 for
//       ignored ones (scale = dloss / count).
// Launch: one thread per (n, s) column looping over C, 256 threads, grid-stride.
// Validated: cuda_parity.rs log_softmax and cross_entropy (with ignored pixels) vs the CPU.
#include "common.cuh"

__device__ __forceinline__ float column_lse(const float* xp, int c, int s) {
    float m = -INFINITY;
    for (int k = 0; k < c; ++k) m = fmaxf(m, xp[k * s]);
    if (m == -INFINITY) return -INFINITY;
    float acc = 0.0f;
    for (int k = 0; k < c; ++k) acc += expf(xp[k * s] - m);
    return m + logf(acc);
}

extern "C" __global__ void log_softmax_fwd_f32(int n, int c, int s, const float* __restrict__ x, float* __restrict__ y) {
    const int cols = n * s;
    GRID_STRIDE(i, cols) {
        const long long base = (long long)(i / s) * c * s + i % s;
        const float lse = column_lse(x + base, c, s);
        for (int k = 0; k < c; ++k) y[base + k * s] = x[base + k * s] - lse;
    }
}

extern "C" __global__ void log_softmax_bwd_f32(int n, int c, int s, const float* __restrict__ g,
                                               const float* __restrict__ y, float* __restrict__ dx) {
    const int cols = n * s;
    GRID_STRIDE(i, cols) {
        const long long base = (long long)(i / s) * c * s + i % s;
        float gs = 0.0f;
        for (int k = 0; k < c; ++k) gs += g[base + k * s];
        for (int k = 0; k < c; ++k) dx[base + k * s] = g[base + k * s] - expf(y[base + k * s]) * gs;
    }
}

extern "C" __global__ void cross_entropy_fwd_f32(int n, int c, int s, int ignore, const float* __restrict__ x,
                                                 const unsigned char* __restrict__ labels, float* __restrict__ loss,
                                                 float* __restrict__ lse_out) {
    const int cols = n * s;
    GRID_STRIDE(i, cols) {
        const long long base = (long long)(i / s) * c * s + i % s;
        const int lab = labels[i];
        const float lse = column_lse(x + base, c, s);
        lse_out[i] = lse;
        loss[i] = (lab == ignore) ? 0.0f : lse - x[base + lab * s];
    }
}

extern "C" __global__ void cross_entropy_bwd_f32(int n, int c, int s, int ignore, float scale,
                                                 const float* __restrict__ x, const unsigned char* __restrict__ labels,
                                                 const float* __restrict__ lse, float* __restrict__ dx) {
    const int cols = n * s;
    GRID_STRIDE(i, cols) {
        const long long base = (long long)(i / s) * c * s + i % s;
        const int lab = labels[i];
        if (lab == ignore) {
            for (int k = 0; k < c; ++k) dx[base + k * s] = 0.0f;
        } else {
            const float l = lse[i];
            for (int k = 0; k < c; ++k) dx[base + k * s] = scale * (expf(x[base + k * s] - l) - (k == lab ? 1.0f : 0.0f));
        }
    }
}
