"""PyTorch twin of benches/benches/contrastive.rs: the naive pixel contrastive loss (Zhao et al.,
per-image, per-positive form), 2 images x 256-d, fwd and fwd+bwd, 2 threads, median of several runs,
and the peak resident-memory growth of one fwd+bwd (each size runs in a fresh subprocess).

Also the memory-bounded form a careful PyTorch user would write: anchors in chunks of 1024 rows,
each chunk under torch.utils.checkpoint so the backward recomputes its scores instead of keeping
them (memory O(chunk x N) instead of O(N^2)).

    /work/venv-torch/bin/python benches/torch/contrastive.py            # 65x65 and 129x129
    /work/venv-torch/bin/python benches/torch/contrastive.py 65         # one size
"""
import resource
import statistics
import subprocess
import sys
import time

import torch

B, D, CLASSES, TAU = 2, 256, 5, 0.07


def inputs(h, w):
    g = torch.Generator().manual_seed(1)
    f = torch.randn(B, D, h, w, generator=g)
    f = f / f.norm(dim=1, keepdim=True)
    hw = h * w
    i = torch.arange(B * hw)
    labels = ((i % w) * CLASSES // w + i // hw) % CLASSES
    labels[(i * 7919) % 20 == 0] = 255
    return f, labels.view(B, h, w)


def _valid_pixels(feats, labels, b):
    """Image `b`'s features (pixels x channels) and labels, ignored pixels left out."""
    y = labels[b].flatten()
    valid = y != 255
    return feats[b].flatten(1).t()[valid], y[valid]


def _anchor_terms(fa, f, ya, y):
    """Sum over the anchors `fa` (labels `ya`) of their per-anchor losses against all pixels `f`."""
    s = fa @ f.t() / TAU
    s = s - s.max(dim=1, keepdim=True)[0].detach()
    e = torch.exp(s)
    pos = (ya[:, None] == y[None, :]).float()
    neg_sum = (e * (1.0 - pos)).sum(1, keepdim=True)
    log_prob = s - torch.log(e + neg_sum)
    return (-(pos * log_prob).sum(1) / pos.sum(1)).sum()


def naive_loss(feats, labels):
    """The usual N x N implementation: scores, exp, masks, negative sums, log-probabilities."""
    losses = []
    for b in range(feats.shape[0]):
        f, y = _valid_pixels(feats, labels, b)
        losses.append(_anchor_terms(f, f, y, y) / f.shape[0])
    return torch.stack(losses).mean()


CHUNK = 1024


def chunked_loss(feats, labels):
    """The same loss as `naive_loss`, anchors in chunks, each chunk checkpointed."""
    from torch.utils.checkpoint import checkpoint

    losses = []
    for b in range(feats.shape[0]):
        f, y = _valid_pixels(feats, labels, b)
        total = 0.0
        for a0 in range(0, f.shape[0], CHUNK):
            fa, ya = f[a0:a0 + CHUNK], y[a0:a0 + CHUNK]
            if torch.is_grad_enabled():
                total = total + checkpoint(_anchor_terms, fa, f, ya, y, use_reentrant=False)
            else:
                total = total + _anchor_terms(fa, f, ya, y)
        losses.append(total / f.shape[0])
    return torch.stack(losses).mean()


def median_ms(fn, runs):
    fn()  # warm-up
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(t)


def one_size(hw):
    torch.set_num_threads(2)
    f, labels = inputs(hw, hw)
    runs = 5 if hw <= 65 else 3
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x = f.clone().requires_grad_(True)
    naive_loss(x, labels).backward()
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # KiB -> MiB
    with torch.no_grad():
        t_fwd = median_ms(lambda: naive_loss(f, labels), runs)

    def fb():
        x = f.clone().requires_grad_(True)
        naive_loss(x, labels).backward()

    t_fb = median_ms(fb, runs)
    print(f"torch naive {hw}x{hw} (2 x {D}-d, 2 threads): fwd {t_fwd:.0f} ms, fwd+bwd {t_fb:.0f} ms, "
          f"peak RSS growth of one fwd+bwd {peak:.0f} MiB")

    with torch.no_grad():
        same = torch.allclose(chunked_loss(f, labels), naive_loss(f, labels), rtol=1e-4)
        t_fwd = median_ms(lambda: chunked_loss(f, labels), runs)

    def fb_chunked():
        x = f.clone().requires_grad_(True)
        chunked_loss(x, labels).backward()

    t_fb = median_ms(fb_chunked, runs)
    print(f"torch chunked ({CHUNK} anchors, checkpointed) {hw}x{hw}: fwd {t_fwd:.0f} ms, fwd+bwd {t_fb:.0f} ms, "
          f"same loss as naive: {same}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        one_size(int(sys.argv[1]))
    else:
        for hw in (65, 129):
            r = subprocess.run([sys.executable, __file__, str(hw)])
            if r.returncode != 0:
                print(f"torch naive {hw}x{hw}: failed (exit {r.returncode}; out of memory?)")
