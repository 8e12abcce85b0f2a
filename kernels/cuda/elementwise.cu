// Elementwise maps: unary ops, broadcasting binary ops, fill, and the dropout mask.
//
// What: `unary_f32`   y[i] = f(x[i]) for an op code (see UnaryOp in kernels/src/cuda/elementwise.rs);
//       `binary_f32`  z[i] = f(a[ia], b[ib]) where ia/ib come from the broadcast strides in
//                     `Bcast` (stride 0 along a stretched dimension), NumPy broadcasting;
//       `fill_f32`    y[i] = v;
//       `mask_scale_f32` y[i] = x[i] * (keep[i] ? scale : 0) (dropout forward and backward; the
//                     mask is drawn on the host with the engine's seeded Rng, so CPU and CUDA agree).
// Launch: 1-D, 256 threads per block, grid-stride (grid capped by the host).
// Validated: tests/tests/cuda_parity.rs runs every elementwise op and its backward on CUDA and on
// the CPU kernels with the same random inputs (f32, rel. tolerance 1e-5; exp/log within 2 ulp-ish).
#include "common.cuh"

// Must match kernels/src/cuda/elementwise.rs UnaryOp.
enum UnaryOp { U_NEG = 0, U_EXP = 1, U_LOG = 2, U_SQRT = 3, U_RELU = 4, U_AFFINE = 5 };
// Must match kernels/src/cuda/elementwise.rs BinaryOp.
enum BinaryOp {
    B_ADD = 0, B_SUB = 1, B_MUL = 2, B_DIV = 3,
    B_NEG_DIV_SQ = 4,  // -a / (b * b)     (d/db of a/b, times the incoming a = g*a)
    B_HALF_DIV = 5,    // a / (2 b)        (sqrt backward: g / (2 z))
    B_RELU_MASK = 6,   // b > 0 ? a : 0    (relu backward: g masked by the output)
    B_SCALE_B = 7      // alpha * b        (broadcast of b into the output shape, scaled)
};

struct Bcast {
    int rank;
    int dims[SEGNET_MAX_RANK];  // output dims
    int sa[SEGNET_MAX_RANK];    // a's strides inside the output shape (0 = broadcast)
    int sb[SEGNET_MAX_RANK];
};

extern "C" __global__ void unary_f32(int n, int op, float alpha, float beta, const float* __restrict__ x,
                                     float* __restrict__ y) {
    GRID_STRIDE(i, n) {
        const float v = x[i];
        float r;
        switch (op) {
            case U_NEG: r = -v; break;
            case U_EXP: r = expf(v); break;
            case U_LOG: r = logf(v); break;
            case U_SQRT: r = sqrtf(v); break;
            case U_RELU: r = fmaxf(v, 0.0f); break;
            default: r = alpha * v + beta; break;  // U_AFFINE (alpha x for a plain scale)
        }
        y[i] = r;
    }
}

__device__ __forceinline__ float binary_apply(int op, float a, float b, float alpha) {
    switch (op) {
        case B_ADD: return a + b;
        case B_SUB: return a - b;
        case B_MUL: return a * b;
        case B_DIV: return a / b;
        case B_NEG_DIV_SQ: return -a / (b * b);
        case B_HALF_DIV: return a / (2.0f * b);
        case B_RELU_MASK: return b > 0.0f ? a : 0.0f;
        default: return alpha * b;  // B_SCALE_B
    }
}

// Same-shape operands: no index arithmetic.
extern "C" __global__ void binary_same_f32(int n, int op, float alpha, const float* __restrict__ a,
                                           const float* __restrict__ b, float* __restrict__ z) {
    GRID_STRIDE(i, n) { z[i] = binary_apply(op, a[i], b[i], alpha); }
}

extern "C" __global__ void binary_f32(int n, int op, float alpha, Bcast s, const float* __restrict__ a,
                                      const float* __restrict__ b, float* __restrict__ z) {
    GRID_STRIDE(i, n) {
        int rem = i, ia = 0, ib = 0;
        for (int d = s.rank - 1; d >= 0; --d) {
            const int k = rem % s.dims[d];
            rem /= s.dims[d];
            ia += k * s.sa[d];
            ib += k * s.sb[d];
        }
        z[i] = binary_apply(op, a[ia], b[ib], alpha);
    }
}

extern "C" __global__ void fill_f32(int n, float v, float* __restrict__ y) {
    GRID_STRIDE(i, n) { y[i] = v; }
}

extern "C" __global__ void mask_scale_f32(int n, float scale, const float* __restrict__ x,
                                          const unsigned char* __restrict__ keep, float* __restrict__ y) {
    GRID_STRIDE(i, n) { y[i] = keep[i] ? x[i] * scale : 0.0f; }
}
