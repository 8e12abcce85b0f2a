// Batch normalisation over [N, C, HW]: statistics, affine apply, running update, backward.
//
// What (m = N*HW per channel, xhat = (x - mean) invstd, invstd = 1/sqrt(var + eps)):
//   `bn_stats_f32`       mean[c] = sum x / m; var[c] = sum (x - mean)^2 / m (biased, two passes).
//   `bn_scale_shift_f32` invstd[c], scale[c] = w[c] invstd[c], shift[c] = b[c] - mean[c] scale[c]
//                        (w/b may be null: 1/0). Train: var = batch var; eval: the running var.
//   `bn_apply_f32`       y = x scale[c] + shift[c].
//   `bn_running_f32`     rm = (1-mom) rm + mom mean; rv = (1-mom) rv + mom var m/(m-1) (unbiased).
//   `bn_bwd_reduce_f32`  sg[c] = sum g, sgxhat[c] = sum g xhat   (= db and dw).
//   `bn_bwd_dx_f32`      train: dx = w invstd (g - (sg + xhat sgxhat)/m); eval: dx = w invstd g.
// Launch: per-channel kernels (stats, bwd_reduce) one 256-thread block per channel, block-strided
//   over the channel's N planes then a fixed tree (deterministic); elementwise kernels 1-D
//   grid-stride; scale_shift/running one thread per channel.
// Validated: cuda_parity.rs batch_norm2d train/eval forward, running stats and gradients vs the CPU.
#include "common.cuh"

extern "C" __global__ void bn_stats_f32(int n, int c, int hw, const float* __restrict__ x, float* __restrict__ mean,
                                        float* __restrict__ var) {
    __shared__ float scratch[32];
    const int m = n * hw;
    for (int ch = blockIdx.x; ch < c; ch += gridDim.x) {
        float acc = 0.0f;
        for (int i = threadIdx.x; i < m; i += blockDim.x) acc += x[((long long)(i / hw) * c + ch) * hw + i % hw];
        const float mu = block_sum(acc, scratch) / (float)m;
        float acc2 = 0.0f;
        for (int i = threadIdx.x; i < m; i += blockDim.x) {
            const float d = x[((long long)(i / hw) * c + ch) * hw + i % hw] - mu;
            acc2 += d * d;
        }
        const float v = block_sum(acc2, scratch) / (float)m;
        if (threadIdx.x == 0) {
            mean[ch] = mu;
            var[ch] = v;
        }
    }
}

extern "C" __global__ void bn_scale_shift_f32(int c, float eps, const float* __restrict__ mean,
                                              const float* __restrict__ var, const float* __restrict__ w,
                                              const float* __restrict__ b, float* __restrict__ invstd,
                                              float* __restrict__ scale, float* __restrict__ shift) {
    GRID_STRIDE(ch, c) {
        const float inv = rsqrtf(var[ch] + eps);
        const float s = (w ? w[ch] : 1.0f) * inv;
        invstd[ch] = inv;
        scale[ch] = s;
        shift[ch] = (b ? b[ch] : 0.0f) - mean[ch] * s;
    }
}

extern "C" __global__ void bn_apply_f32(int total, int c, int hw, const float* __restrict__ x,
                                        const float* __restrict__ scale, const float* __restrict__ shift,
                                        float* __restrict__ y) {
    GRID_STRIDE(i, total) {
        const int ch = (i / hw) % c;
        y[i] = x[i] * scale[ch] + shift[ch];
    }
}

extern "C" __global__ void bn_running_f32(int c, int m, float momentum, const float* __restrict__ mean,
                                          const float* __restrict__ var, float* __restrict__ rm,
                                          float* __restrict__ rv) {
    GRID_STRIDE(ch, c) {
        const float unbiased = m > 1 ? var[ch] * (float)m / (float)(m - 1) : var[ch];
        rm[ch] = (1.0f - momentum) * rm[ch] + momentum * mean[ch];
        rv[ch] = (1.0f - momentum) * rv[ch] + momentum * unbiased;
    }
}

extern "C" __global__ void bn_bwd_reduce_f32(int n, int c, int hw, const float* __restrict__ g,
                                             const float* __restrict__ x, const float* __restrict__ mean,
                                             const float* __restrict__ invstd, float* __restrict__ sg,
                                             float* __restrict__ sgxhat) {
    __shared__ float scratch[32];
    const int m = n * hw;
    for (int ch = blockIdx.x; ch < c; ch += gridDim.x) {
        const float mu = mean[ch], inv = invstd[ch];
        float a = 0.0f, b = 0.0f;
        for (int i = threadIdx.x; i < m; i += blockDim.x) {
            const long long o = ((long long)(i / hw) * c + ch) * hw + i % hw;
            a += g[o];
            b += g[o] * (x[o] - mu);
        }
        a = block_sum(a, scratch);
        b = block_sum(b, scratch);
        if (threadIdx.x == 0) {
            sg[ch] = a;
            sgxhat[ch] = b * inv;
        }
    }
}

extern "C" __global__ void bn_bwd_dx_f32(int total, int c, int hw, int m, int train, const float* __restrict__ g,
                                         const float* __restrict__ x, const float* __restrict__ mean,
                                         const float* __restrict__ invstd, const float* __restrict__ w,
                                         const float* __restrict__ sg, const float* __restrict__ sgxhat,
                                         float* __restrict__ dx) {
    GRID_STRIDE(i, total) {
        const int ch = (i / hw) % c;
        const float inv = invstd[ch], a = (w ? w[ch] : 1.0f) * inv;
        if (train) {
            const float xhat = (x[i] - mean[ch]) * inv;
            dx[i] = a * (g[i] - (sg[ch] + xhat * sgxhat[ch]) / (float)m);
        } else {
            dx[i] = a * g[i];
        }
    }
}
