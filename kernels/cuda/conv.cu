// 2-D convolution (stride, padding, dilation, groups) as im2col + batched SGEMM (gemm.cu).
//
// What: per image, `im2col_f32` gathers the input patches into col[C_in*kH*kW, OH*OW]
//       (col[(c*kH + ky)*kW + kx, oy*OW + ox] = x[c, oy*s - p + ky*d, ox*s - p + kx*d], 0 in the
//       padding); the Rust wrapper then runs y_g = W_g col_g batched over groups. Backward:
//       dcol_g = W_g^T dy_g, then `col2im_f32` folds dcol back into dx as a *gather* (each input
//       pixel sums the taps that read it, in (c, ky, kx) order: no atomics, deterministic);
//       dW_g += dy_g col_g^T over images; db = sum of dy over (N, OH, OW) (reduce.cu).
//       `bias_add_f32` adds b[c] to every pixel of channel c. A 1x1, stride-1, unpadded conv
//       skips im2col (the input plane is the column matrix).
// Launch: 1-D, 256 threads, grid-stride; im2col over C*kH*kW*OH*OW columns entries, col2im over
//       C*H*W input pixels, bias_add over all outputs.
// Validated: cuda_parity.rs conv2d forward and all three gradients against the CPU kernel on random
//       shapes with stride/padding/dilation/groups (incl. depthwise), f32 tolerance.
#include "common.cuh"

struct ConvGeom {
    int c, h, w;      // input channels (all groups), height, width
    int kh, kw;
    int sh, sw, ph, pw, dh, dw;
    int oh, ow;
};

extern "C" __global__ void im2col_f32(ConvGeom g, const float* __restrict__ x, float* __restrict__ col) {
    const int ohw = g.oh * g.ow;
    const int n = g.c * g.kh * g.kw * ohw;
    GRID_STRIDE(i, n) {
        const int pix = i % ohw, row = i / ohw;
        const int kx = row % g.kw, ky = (row / g.kw) % g.kh, c = row / (g.kw * g.kh);
        const int oy = pix / g.ow, ox = pix % g.ow;
        const int iy = oy * g.sh - g.ph + ky * g.dh, ix = ox * g.sw - g.pw + kx * g.dw;
        col[i] = (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) ? x[(c * g.h + iy) * g.w + ix] : 0.0f;
    }
}

extern "C" __global__ void col2im_f32(ConvGeom g, const float* __restrict__ col, float* __restrict__ x) {
    const int ohw = g.oh * g.ow;
    const int n = g.c * g.h * g.w;
    GRID_STRIDE(i, n) {
        const int ix = i % g.w, iy = (i / g.w) % g.h, c = i / (g.w * g.h);
        float acc = 0.0f;
        for (int ky = 0; ky < g.kh; ++ky) {
            const int ty = iy + g.ph - ky * g.dh;  // = oy * sh when tap ky of row oy reads iy
            if (ty < 0 || ty % g.sh != 0) continue;
            const int oy = ty / g.sh;
            if (oy >= g.oh) continue;
            for (int kx = 0; kx < g.kw; ++kx) {
                const int tx = ix + g.pw - kx * g.dw;
                if (tx < 0 || tx % g.sw != 0) continue;
                const int ox = tx / g.sw;
                if (ox >= g.ow) continue;
                acc += col[((c * g.kh + ky) * g.kw + kx) * ohw + oy * g.ow + ox];
            }
        }
        x[i] = acc;
    }
}

extern "C" __global__ void bias_add_f32(int n, int channels, int hw, const float* __restrict__ b, float* __restrict__ y) {
    GRID_STRIDE(i, n) { y[i] += b[(i / hw) % channels]; }
}
