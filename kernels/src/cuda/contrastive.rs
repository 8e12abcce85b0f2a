//! Launch wrappers of `kernels/cuda/contrastive.cu`: the fused pixel contrastive loss on the
//! device, over the same [`Bag`]s and [`Form`]s as the CPU kernel (kernels/src/cpu/contrastive.rs),
//! so the engine builds the bags once (host-side labels) and runs either backend.
//!
//! [`forward`] uploads each bag (pixel ids and per-row classes), runs one block per anchor, keeps
//! the per-anchor state `(L_i, c_pos, c_exp)` on the device (3 floats per pixel: O(N)) and sums the
//! per-anchor `w_i loss_i` on the host in f64, in bag and row order. The weights (the reduction:
//! a mean per [`Bag::group`], then over the groups) come from the CPU kernel's [`bag_weights`].
//! [`backward`] accumulates `scale * dloss/df` into a gradient buffer the caller zeroed.

use super::alloc::CudaBuf;
use super::device::CudaDevice;
use super::error::{CudaError, CudaResult};
use super::launch::{grid_blocks, i32_of, same_device, BLOCK};
use crate::cpu::contrastive::{bag_weights, Bag, Form};
use crate::kargs;

/// One bag on the device with the forward's per-anchor state.
pub struct DeviceBag {
    n: usize,
    pix: CudaBuf,
    cls: CudaBuf,
    l: CudaBuf,
    c_pos: CudaBuf,
    c_exp: CudaBuf,
    partner: Option<usize>,
}

/// What the backward needs: the bags and their states.
pub struct Saved {
    bags: Vec<DeviceBag>,
    d: usize,
    hw: usize,
    inv_tau: f32,
    form: Form,
}

impl Saved {
    /// Device bytes held for the backward.
    pub fn bytes(&self) -> usize {
        self.bags.iter().map(|b| b.n * 4 * 5).sum()
    }
}

fn form_code(f: Form) -> i32 {
    match f {
        Form::PerPositive => 0,
        Form::SupCon => 1,
    }
}

fn row_classes(b: &Bag) -> Vec<i32> {
    let mut cls = vec![0i32; b.len()];
    for r in &b.runs {
        cls[r.start..r.end].iter_mut().for_each(|c| *c = r.class as i32);
    }
    cls
}

fn shared_bwd(d: usize) -> u32 {
    ((2 * d + 2 * BLOCK as usize) * 4) as u32
}

/// Dynamic shared memory a launch may use without opting in (`cuFuncSetAttribute`), on every GPU.
const SHARED_LIMIT: usize = 48 * 1024;

/// The most channels the kernels take: the backward stages two D-vectors plus a 256-candidate
/// chunk (`8 D + 2048` bytes) in the default 48 KiB of dynamic shared memory (the forward needs
/// only `4 D`, so the backward is the binding one).
pub const MAX_CHANNELS: usize = (SHARED_LIMIT - 2 * BLOCK as usize * 4) / 8;

/// Loss and saved state. `feats` is `[images, d, hw]` f32.
pub fn forward(
    feats: &CudaBuf,
    d: usize,
    hw: usize,
    bags: &[Bag],
    inv_tau: f32,
    form: Form,
) -> CudaResult<(f64, Saved)> {
    let dev: &'static CudaDevice = same_device("pixel_contrastive_loss", &[feats])?;
    if d > MAX_CHANNELS {
        return Err(CudaError::invalid(format!(
            "pixel_contrastive_loss: {d} channels exceed the kernels' shared-memory tile (at most {MAX_CHANNELS})"
        )));
    }
    // The backward keeps candidate offsets in `int`.
    i32_of(feats.bytes() / 4, "pixel_contrastive_loss: feature elements")?;
    for b in bags {
        if let Some(p) = b.partner {
            if p >= bags.len() {
                return Err(CudaError::invalid(format!("pixel_contrastive_loss: partner {p} of {} bags", bags.len())));
            }
        }
        if b.pixels.iter().any(|&g| g as usize >= feats.bytes() / 4 / d.max(1)) {
            return Err(CudaError::invalid("pixel_contrastive_loss: pixel id outside the feature buffer"));
        }
    }
    // The reduction's weights, as the CPU kernel forms them (one mean per group, then over groups).
    let weights = bag_weights(bags, form);
    let mut uploaded = Vec::with_capacity(bags.len());
    for b in bags {
        let pix: Vec<i32> = b.pixels.iter().map(|&p| p as i32).collect();
        uploaded.push(DeviceBag {
            n: b.len(),
            pix: dev.upload(&pix)?,
            cls: dev.upload(&row_classes(b))?,
            l: dev.alloc(b.len() * 4)?,
            c_pos: dev.alloc(b.len() * 4)?,
            c_exp: dev.alloc(b.len() * 4)?,
            partner: b.partner,
        });
    }
    let (d32, hw32, form32) = (i32_of(d, "contrastive")?, i32_of(hw, "contrastive")?, form_code(form));
    let mut loss = 0.0f64;
    for (bi, b) in bags.iter().enumerate() {
        if b.is_empty() {
            continue;
        }
        let w_bag = weights[bi] as f32;
        let lossw = dev.alloc(b.len() * 4)?;
        let (n32, np, ppix, pcls) = match b.partner {
            Some(p) => (b.len() as i32, uploaded[p].n as i32, uploaded[p].pix.ptr(), uploaded[p].cls.ptr()),
            None => (b.len() as i32, 0i32, 0u64, 0u64),
        };
        let u = &uploaded[bi];
        unsafe {
            dev.launch(
                "contrastive",
                "contrastive_fwd_f32",
                grid_blocks(b.len()),
                (BLOCK, 1, 1),
                (d * 4) as u32,
                &mut kargs![
                    feats.ptr(),
                    d32,
                    hw32,
                    inv_tau,
                    form32,
                    n32,
                    u.pix.ptr(),
                    u.cls.ptr(),
                    np,
                    ppix,
                    pcls,
                    w_bag,
                    u.l.ptr(),
                    u.c_pos.ptr(),
                    u.c_exp.ptr(),
                    lossw.ptr()
                ],
            )?
        };
        loss += lossw.to_vec::<f32>(b.len())?.iter().map(|&v| v as f64).sum::<f64>();
    }
    Ok((loss, Saved { bags: uploaded, d, hw, inv_tau, form }))
}

/// `grad += scale * dloss/dfeats` (the caller zeroes `grad` first).
pub fn backward(feats: &CudaBuf, saved: &Saved, scale: f32, grad: &mut CudaBuf) -> CudaResult<()> {
    let dev = same_device("pixel_contrastive_loss backward", &[feats, grad])?;
    if grad.bytes() < feats.bytes() {
        return Err(CudaError::invalid("pixel_contrastive_loss backward: gradient buffer smaller than the features"));
    }
    let (d, hw) = (saved.d, saved.hw);
    let (d32, hw32, form32, inv_tau) =
        (i32_of(d, "contrastive")?, i32_of(hw, "contrastive")?, form_code(saved.form), saved.inv_tau);
    let bags = &saved.bags;
    for (bi, b) in bags.iter().enumerate() {
        if b.n == 0 {
            continue;
        }
        let (np, ppix, pcls) = match b.partner {
            Some(p) => (bags[p].n as i32, bags[p].pix.ptr(), bags[p].cls.ptr()),
            None => (0i32, 0u64, 0u64),
        };
        let n32 = b.n as i32;
        unsafe {
            dev.launch(
                "contrastive",
                "contrastive_bwd_f32",
                grid_blocks(b.n),
                (BLOCK, 1, 1),
                shared_bwd(d),
                &mut kargs![
                    feats.ptr(),
                    d32,
                    hw32,
                    inv_tau,
                    form32,
                    n32,
                    b.pix.ptr(),
                    b.cls.ptr(),
                    b.l.ptr(),
                    b.c_pos.ptr(),
                    b.c_exp.ptr(),
                    np,
                    ppix,
                    pcls,
                    scale,
                    grad.ptr()
                ],
            )?
        };
        // Candidate-side terms of the bags that use this one as their partner.
        for r in bags.iter().filter(|r| r.partner == Some(bi) && r.n > 0) {
            let nr = r.n as i32;
            unsafe {
                dev.launch(
                    "contrastive",
                    "contrastive_bwd_rev_f32",
                    grid_blocks(b.n),
                    (BLOCK, 1, 1),
                    shared_bwd(d),
                    &mut kargs![
                        feats.ptr(),
                        d32,
                        hw32,
                        inv_tau,
                        form32,
                        n32,
                        b.pix.ptr(),
                        b.cls.ptr(),
                        nr,
                        r.pix.ptr(),
                        r.cls.ptr(),
                        r.l.ptr(),
                        r.c_pos.ptr(),
                        r.c_exp.ptr(),
                        scale,
                        grad.ptr()
                    ],
                )?
            };
        }
    }
    Ok(())
}
