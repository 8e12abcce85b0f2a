// The fused pixel-wise label-based contrastive loss, streamed: O(N) memory, no N x N matrix.
//
// Problem and notation as in kernels/src/cpu/contrastive.rs (the CPU kernel this must match):
// a *bag* lists pixels (global ids image*hw + p into features [images, D, hw]) with their class;
// an optional *partner* bag contributes its pixels of the anchor's class as extra positives
// (never negatives). s_ij = f_i . f_j / tau.
//   Per-positive (form 0): K_i = own pixels of another class, P_i = own pixels of class c (i
//     included) + partner's of class c; L_i = logsumexp_{k in K_i} s_ik (-inf if empty);
//     loss_i = mean_{j in P_i} softplus(L_i - s_ij).
//   SupCon (form 1): C_i = own pixels except i + partner's of class c, P_i = the class-c ones;
//     L_i = logsumexp_{k in C_i} s_ik; loss_i = L_i - mean_{j in P_i} s_ij; anchors with P_i empty
//     do not count.
//   Loss = sum_i w_i loss_i, w_i = w_bag for counting anchors (host, the CPU kernel's bag_weights:
//     1 / (G * counting anchors of the bag's group), G = number of groups; a group is an image, an
//     image pair or the batch bag, and one without counting anchors still counts in G).
// Kernels:
//   `contrastive_fwd_f32`: one block per anchor row (block-strided). The anchor's feature is
//     staged in shared memory; threads stride over candidates computing dots (reads of one
//     channel are contiguous across threads). Pass 1: per-thread online logsumexp, combined by a
//     fixed block tree. Pass 2 (dots recomputed): positive terms. Writes L_i (+inf for anchors that
//     do not count), c_pos = w/|P|, c_exp = w A/|P| (per-positive, A = sum_j sigmoid(L - s_ij)) or
//     w (SupCon), and w_i loss_i (summed by the host in f64).
//   `contrastive_bwd_f32`: one block per row p of the bag: df_p += scale/tau * sum_j G_pj f_j with
//     G_pj = dS_pj + dS_jp over the bag (dS from the saved per-anchor state, the diagonal counted
//     twice as d s_pp/d f_p = 2 f_p/tau requires) plus dS_pq f_q over the partner's class-c pixels.
//     Coefficients of a chunk of 256 candidates go to shared memory, then threads switch to
//     channels and accumulate into a shared D-vector: no atomics, fixed order.
//   `contrastive_bwd_rev_f32`: for bags R whose partner is this bag, the candidate-side term
//     df_q += scale/tau * sum_{p in R, class(p) = class(q)} dS_pq f_p.
//   Launched bag by bag on one stream: accumulation into df is ordered and deterministic.
// Dynamic shared memory: (2 D + 256) floats + 256 ints (fwd: D floats).
// Validated: cuda_parity.rs pixel_contrastive_loss (within-image, cross-image, batch; both forms)
//   loss and feature gradient against the CPU kernel, f32 tolerance.
#include "common.cuh"

__device__ __forceinline__ float softplus_f(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ float sigmoid_f(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    const float e = expf(x);
    return e / (1.0f + e);
}

// Offset of channel 0 of global pixel id `g` in [images, D, hw].
__device__ __forceinline__ long long pix_offset(int g, int d, int hw) {
    const int img = g / hw;
    return (long long)img * d * hw + (g - img * hw);
}

__device__ __forceinline__ float dot_shared(const float* __restrict__ fi, const float* __restrict__ f, long long off,
                                            int d, int hw) {
    float acc = 0.0f;
    for (int k = 0; k < d; ++k) acc = fmaf(fi[k], f[off + (long long)k * hw], acc);
    return acc;
}

// acc[k] += sum over the cnt staged candidates t of coef[t] * f[koff[t] + k * hw]; each thread
// owns the channels k = threadIdx.x, threadIdx.x + blockDim.x, ...
__device__ __forceinline__ void accumulate_staged(const float* __restrict__ f, int d, int hw, const float* coef,
                                                  const int* koff, int cnt, float* acc) {
    for (int k = threadIdx.x; k < d; k += blockDim.x) {
        float a = acc[k];
        for (int t = 0; t < cnt; ++t) a = fmaf(coef[t], f[koff[t] + (long long)k * hw], a);
        acc[k] = a;
    }
}

// dloss/ds for anchor a (state l, cpos, cexp) and candidate b: `same` class, `self` b == a.
__device__ __forceinline__ float dscore(int form, float s, float l, float cpos, float cexp, bool same, bool self) {
    if (form == 0) return same ? -cpos * sigmoid_f(l - s) : cexp * expf(s - l);
    if (self) return 0.0f;
    return cexp * expf(s - l) - (same ? cpos : 0.0f);
}

extern "C" __global__ void contrastive_fwd_f32(const float* __restrict__ f, int d, int hw, float inv_tau, int form,
                                               int n, const int* __restrict__ pix, const int* __restrict__ cls,
                                               int np, const int* __restrict__ ppix, const int* __restrict__ pcls,
                                               float w_bag, float* __restrict__ l_out, float* __restrict__ cpos_out,
                                               float* __restrict__ cexp_out, float* __restrict__ lossw_out) {
    extern __shared__ float sh[];
    float* fi = sh;  // D floats
    __shared__ float scratch[32];
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        const long long oi = pix_offset(pix[i], d, hw);
        const int c = cls[i];
        __syncthreads();  // fi of the previous row may still be read
        for (int k = threadIdx.x; k < d; k += blockDim.x) fi[k] = f[oi + (long long)k * hw];
        __syncthreads();
        // Pass 1: logsumexp over the denominator set (online per thread).
        float m = -INFINITY, acc = 0.0f;
        for (int k = threadIdx.x; k < n + np; k += blockDim.x) {
            bool in_set;
            long long ok;
            if (k < n) {
                in_set = form == 0 ? cls[k] != c : k != i;
                ok = pix_offset(pix[k], d, hw);
            } else {
                in_set = form == 1 && pcls[k - n] == c;
                ok = pix_offset(ppix[k - n], d, hw);
            }
            if (!in_set) continue;
            const float v = dot_shared(fi, f, ok, d, hw) * inv_tau;
            if (v > m) {
                acc = acc * expf(m - v) + 1.0f;
                m = v;
            } else {
                acc += expf(v - m);
            }
        }
        const float mx = block_max(m, scratch);
        const float tot = block_sum(m == -INFINITY ? 0.0f : acc * expf(m - mx), scratch);
        const float L = mx == -INFINITY ? -INFINITY : mx + logf(tot);
        // Pass 2: positives.
        float a1 = 0.0f, a2 = 0.0f, cnt = 0.0f;
        for (int k = threadIdx.x; k < n + np; k += blockDim.x) {
            bool pos;
            long long ok;
            if (k < n) {
                pos = cls[k] == c && (form == 0 || k != i);
                ok = pix_offset(pix[k], d, hw);
            } else {
                pos = pcls[k - n] == c;
                ok = pix_offset(ppix[k - n], d, hw);
            }
            if (!pos) continue;
            const float v = dot_shared(fi, f, ok, d, hw) * inv_tau;
            if (form == 0) {
                a1 += softplus_f(L - v);
                a2 += sigmoid_f(L - v);
            } else {
                a1 += v;
            }
            cnt += 1.0f;
        }
        a1 = block_sum(a1, scratch);
        a2 = block_sum(a2, scratch);
        cnt = block_sum(cnt, scratch);
        if (threadIdx.x == 0) {
            if (cnt == 0.0f) {
                l_out[i] = INFINITY;
                cpos_out[i] = 0.0f;
                cexp_out[i] = 0.0f;
                lossw_out[i] = 0.0f;
            } else if (form == 0) {
                l_out[i] = L;
                cpos_out[i] = w_bag / cnt;
                cexp_out[i] = w_bag * a2 / cnt;
                lossw_out[i] = w_bag * a1 / cnt;
            } else {
                l_out[i] = L;
                cpos_out[i] = w_bag / cnt;
                cexp_out[i] = w_bag;
                lossw_out[i] = w_bag * (L - a1 / cnt);
            }
        }
    }
}

extern "C" __global__ void contrastive_bwd_f32(const float* __restrict__ f, int d, int hw, float inv_tau, int form,
                                               int n, const int* __restrict__ pix, const int* __restrict__ cls,
                                               const float* __restrict__ lv, const float* __restrict__ cpos,
                                               const float* __restrict__ cexp, int np, const int* __restrict__ ppix,
                                               const int* __restrict__ pcls, float scale, float* __restrict__ df) {
    extern __shared__ float sh[];
    float* fp = sh;               // D
    float* acc = sh + d;          // D
    float* coef = sh + 2 * d;     // blockDim.x
    int* koff = (int*)(coef + blockDim.x);  // blockDim.x candidate offsets (fit in int: numel < 2^31)
    for (int p = blockIdx.x; p < n; p += gridDim.x) {
        const long long op = pix_offset(pix[p], d, hw);
        const int c = cls[p];
        const float lp = lv[p], cp = cpos[p], ce = cexp[p];
        __syncthreads();
        for (int k = threadIdx.x; k < d; k += blockDim.x) {
            fp[k] = f[op + (long long)k * hw];
            acc[k] = 0.0f;
        }
        __syncthreads();
        const int total = n + np;
        for (int base = 0; base < total; base += blockDim.x) {
            const int j = base + threadIdx.x;
            float g = 0.0f;
            int oj = 0;
            if (j < n) {
                oj = (int)pix_offset(pix[j], d, hw);
                const float s = dot_shared(fp, f, oj, d, hw) * inv_tau;
                const bool same = cls[j] == c, self = j == p;
                g = dscore(form, s, lp, cp, ce, same, self) + dscore(form, s, lv[j], cpos[j], cexp[j], same, self);
            } else if (j < total && pcls[j - n] == c) {
                oj = (int)pix_offset(ppix[j - n], d, hw);
                const float s = dot_shared(fp, f, oj, d, hw) * inv_tau;
                g = dscore(form, s, lp, cp, ce, true, false);
            }
            coef[threadIdx.x] = g;
            koff[threadIdx.x] = oj;
            __syncthreads();
            const int cnt = min((int)blockDim.x, total - base);
            accumulate_staged(f, d, hw, coef, koff, cnt, acc);
            __syncthreads();
        }
        const float sc = scale * inv_tau;
        for (int k = threadIdx.x; k < d; k += blockDim.x) df[op + (long long)k * hw] += sc * acc[k];
    }
}

extern "C" __global__ void contrastive_bwd_rev_f32(const float* __restrict__ f, int d, int hw, float inv_tau,
                                                   int form, int nq, const int* __restrict__ qpix,
                                                   const int* __restrict__ qcls, int nr, const int* __restrict__ rpix,
                                                   const int* __restrict__ rcls, const float* __restrict__ rl,
                                                   const float* __restrict__ rcpos, const float* __restrict__ rcexp,
                                                   float scale, float* __restrict__ df) {
    extern __shared__ float sh[];
    float* fq = sh;
    float* acc = sh + d;
    float* coef = sh + 2 * d;
    int* koff = (int*)(coef + blockDim.x);
    for (int q = blockIdx.x; q < nq; q += gridDim.x) {
        const long long oq = pix_offset(qpix[q], d, hw);
        const int c = qcls[q];
        __syncthreads();
        for (int k = threadIdx.x; k < d; k += blockDim.x) {
            fq[k] = f[oq + (long long)k * hw];
            acc[k] = 0.0f;
        }
        __syncthreads();
        for (int base = 0; base < nr; base += blockDim.x) {
            const int j = base + threadIdx.x;
            float g = 0.0f;
            int oj = 0;
            if (j < nr && rcls[j] == c) {
                oj = (int)pix_offset(rpix[j], d, hw);
                const float s = dot_shared(fq, f, oj, d, hw) * inv_tau;
                g = dscore(form, s, rl[j], rcpos[j], rcexp[j], true, false);
            }
            coef[threadIdx.x] = g;
            koff[threadIdx.x] = oj;
            __syncthreads();
            const int cnt = min((int)blockDim.x, nr - base);
            accumulate_staged(f, d, hw, coef, koff, cnt, acc);
            __syncthreads();
        }
        const float sc = scale * inv_tau;
        for (int k = threadIdx.x; k < d; k += blockDim.x) df[oq + (long long)k * hw] += sc * acc[k];
    }
}
