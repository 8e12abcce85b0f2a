// Max pooling (with argmax) and global average pooling over N*C planes.
//
// What: `max_pool2d_fwd_f32`: y[p, oy, ox] = max over the window (padding = -inf) and
//       argmax[p, oy, ox] = iy*W + ix of the first maximum in row-major window order (NaN wins),
//       the CPU kernel's convention (kernels/src/cpu/pool.rs). `max_pool2d_bwd_f32`: dx[p, iy, ix]
//       = sum of dy over the windows containing (iy, ix) whose argmax is (iy, ix): a gather in
//       ascending (oy, ox) order, no atomics. `gap_fwd_f32`: y[p] = mean of plane p (one block per
//       plane, fixed tree); `gap_bwd_f32`: dx[p, i] = dy[p] / HW.
// Launch: 1-D grid-stride, 256 threads (outputs for max fwd, inputs for max bwd, elements for gap
//       bwd); gap fwd one block per plane.
// Validated: cuda_parity.rs max_pool2d / global_avg_pool2d forward and backward vs the CPU.
#include "common.cuh"

struct PoolGeom {
    int planes, h, w, oh, ow;
    int kh, kw, sh, sw, ph, pw;
};

extern "C" __global__ void max_pool2d_fwd_f32(PoolGeom g, const float* __restrict__ x, float* __restrict__ y,
                                              unsigned int* __restrict__ argmax) {
    const int n = g.planes * g.oh * g.ow;
    GRID_STRIDE(i, n) {
        const int ox = i % g.ow, oy = (i / g.ow) % g.oh, p = i / (g.ow * g.oh);
        const float* xp = x + (long long)p * g.h * g.w;
        float best = -INFINITY;
        int idx = -1;
        for (int ky = 0; ky < g.kh; ++ky) {
            const int iy = oy * g.sh - g.ph + ky;
            if (iy < 0 || iy >= g.h) continue;
            for (int kx = 0; kx < g.kw; ++kx) {
                const int ix = ox * g.sw - g.pw + kx;
                if (ix < 0 || ix >= g.w) continue;
                const float v = xp[iy * g.w + ix];
                if (idx < 0 || v > best || (isnan(v) && !isnan(best))) {
                    best = v;
                    idx = iy * g.w + ix;
                }
            }
        }
        y[i] = best;
        argmax[i] = idx < 0 ? 0u : (unsigned int)idx;
    }
}

extern "C" __global__ void max_pool2d_bwd_f32(PoolGeom g, const unsigned int* __restrict__ argmax,
                                              const float* __restrict__ gy, float* __restrict__ dx) {
    const int n = g.planes * g.h * g.w;
    GRID_STRIDE(i, n) {
        const int ix = i % g.w, iy = (i / g.w) % g.h, p = i / (g.w * g.h);
        const unsigned int me = (unsigned int)(iy * g.w + ix);
        // Windows with oy*sh - ph <= iy <= oy*sh - ph + kh - 1.
        const int ty0 = iy + g.ph - g.kh + 1, tx0 = ix + g.pw - g.kw + 1;
        const int oy0 = ty0 <= 0 ? 0 : (ty0 + g.sh - 1) / g.sh, oy1 = min((iy + g.ph) / g.sh, g.oh - 1);
        const int ox0 = tx0 <= 0 ? 0 : (tx0 + g.sw - 1) / g.sw, ox1 = min((ix + g.pw) / g.sw, g.ow - 1);
        const long long base = (long long)p * g.oh * g.ow;
        float acc = 0.0f;
        for (int oy = oy0; oy <= oy1; ++oy)
            for (int ox = ox0; ox <= ox1; ++ox) {
                const long long o = base + oy * g.ow + ox;
                if (argmax[o] == me) acc += gy[o];
            }
        dx[i] = acc;
    }
}

extern "C" __global__ void gap_fwd_f32(int planes, int hw, const float* __restrict__ x, float* __restrict__ y) {
    __shared__ float scratch[32];
    for (int p = blockIdx.x; p < planes; p += gridDim.x) {
        const float* xp = x + (long long)p * hw;
        float acc = 0.0f;
        for (int i = threadIdx.x; i < hw; i += blockDim.x) acc += xp[i];
        acc = block_sum(acc, scratch);
        if (threadIdx.x == 0) y[p] = acc / (float)hw;
    }
}

extern "C" __global__ void gap_bwd_f32(int planes, int hw, const float* __restrict__ gy, float* __restrict__ dx) {
    const int n = planes * hw;
    GRID_STRIDE(i, n) { dx[i] = gy[i / hw] / (float)hw; }
}
