"""PyTorch twin of `segnet bench step`: one whole training step of the same DeepLabV3+ on CPU.

Same model, shapes, data and optimiser as segnet/src/bench.rs, so the two JSON lines compare
directly:

* backbone: torchvision ResNet (v1.5, `weights=None`), output stride 16 (layer4 dilated, its first
  block at the previous dilation, as `replace_stride_with_dilation=[False, False, True]`), no fc.
  torchvision's BasicBlock refuses dilation, so for resnet18/34 layer4 is patched by hand the way
  segnet does it (stride 1 in the first block and its downsample, dilation 2 in the later blocks).
* head: VainF's DeepLabHeadV3Plus with TWO 3x3 decoder convs (as segnet): 48-ch low-level
  projection, ASPP 256 (rates 6/12/18 + image pooling, dropout 0.1), [low, high] concat,
  3x3 conv-BN-ReLU x 2, then (finetune) a 1x1 classifier with bias and bilinear upsampling
  (align_corners=False) to the input, cross-entropy with ignore 255;
  or (contrastive) decoder features resized bilinearly (align_corners=True) to (crop-1)/8+1, a
  projection head of three 1x1 convs with bias (ReLU after the first two), F.normalize, and the
  naive N x N within-image pixel contrastive loss (Zhao et al., per-positive form, tau 0.07).
  `--views 2 --grid decoder` is what segnet's contrastive stage does with `--loss-mode within`
  (`segnet bench step --stage contrastive --loss-mode within`): the batch and a colour-mapped
  second view each go through the network, the loss on the decoder's own stride-4 map, the two
  within-image losses summed.
* SGD momentum 0.9, weight decay 1e-4; 21 classes; input normal(0, 1); blocky random labels.

State names follow segnet's checkpoints (`backbone.*`, `classifier.*`, `projection.*`), so
`--compare-checkpoint ckpt.safetensors` can check every parameter shape against ours.

One step = zero_grad + forward + loss + backward + optimizer.step; the median over `--iters`
steps after `--warmup` is reported, with the process peak RSS (ru_maxrss, which includes the torch
runtime itself). Prints one JSON line with `--json` (same keys as segnet's: median_step_s,
peak_rss_mb, plus params and median_step_cpu_s, the CPU time of all threads per step);
`--phases` adds the median forward+loss / backward / optimizer times.

    /work/venv-torch/bin/python benches/torch/deeplab_step.py --backbone resnet50 --batch 2 \\
        --crop 257 --stage finetune --threads 2 --warmup 2 --iters 5 --json
"""
import argparse
import json
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

TAU = 0.07
IGNORE = 255


def conv_bn_relu(cin, cout, k, padding=0, dilation=1):
    return [
        nn.Conv2d(cin, cout, k, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class AsppPooling(nn.Sequential):
    """Image pooling branch: names convs.4.1 (conv) / convs.4.2 (BN), as VainF and segnet."""

    def __init__(self, cin, cout):
        super().__init__(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(cin, cout, 1))

    def forward(self, x):
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class Aspp(nn.Module):
    def __init__(self, cin, c, rates, dropout):
        super().__init__()
        branches = [nn.Sequential(*conv_bn_relu(cin, c, 1))]
        branches += [nn.Sequential(*conv_bn_relu(cin, c, 3, padding=r, dilation=r)) for r in rates]
        branches.append(AsppPooling(cin, c))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*conv_bn_relu(5 * c, c, 1), nn.Dropout(dropout))

    def forward(self, x):
        return self.project(torch.cat([b(x) for b in self.convs], dim=1))


class Head(nn.Module):
    """DeepLabHeadV3Plus with two 3x3 decoder convs (classifier.0/1, classifier.3/4) and, for
    segmentation, the 1x1 classifier at classifier.6."""

    def __init__(self, low_in, high_in, classes, with_classifier, c=256, low=48, rates=(6, 12, 18)):
        super().__init__()
        self.project = nn.Sequential(*conv_bn_relu(low_in, low, 1))
        self.aspp = Aspp(high_in, c, rates, 0.1)
        layers = conv_bn_relu(low + c, c, 3, padding=1) + conv_bn_relu(c, c, 3, padding=1)
        if with_classifier:
            layers.append(nn.Conv2d(c, classes, 1, bias=True))
        self.classifier = nn.Sequential(*layers)
        self.with_classifier = with_classifier

    def features(self, low_level, out):
        low = self.project(low_level)
        high = F.interpolate(self.aspp(out), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier[:6](torch.cat([low, high], dim=1))

    def classify(self, feats):
        return self.classifier[6](feats)


def dilate_basic_layer4(layer):
    """segnet's OS16 for BasicBlock ResNets: first block at stride 1 (previous dilation), later
    blocks' 3x3 convs at dilation 2."""
    first = layer[0]
    first.conv1.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    for block in list(layer)[1:]:
        for conv in (block.conv1, block.conv2):
            conv.dilation, conv.padding = (2, 2), (2, 2)


def make_backbone(name):
    if name in ("resnet50", "resnet101"):
        net = getattr(torchvision.models, name)(weights=None, replace_stride_with_dilation=[False, False, True])
    else:
        net = getattr(torchvision.models, name)(weights=None)
        dilate_basic_layer4(net.layer4)
    del net.fc, net.avgpool
    return net


class DeepLab(nn.Module):
    def __init__(self, backbone, classes, contrastive):
        super().__init__()
        self.backbone = make_backbone(backbone)
        expansion = 4 if backbone in ("resnet50", "resnet101") else 1
        self.classifier = Head(64 * expansion, 512 * expansion, classes, with_classifier=not contrastive)
        if contrastive:
            c = 256
            self.projection = nn.Sequential(
                nn.Conv2d(c, c, 1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 1)
            )

    def features(self, x):
        b = self.backbone
        low = b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))
        out = b.layer4(b.layer3(b.layer2(low)))
        return self.classifier.features(low, out)

    def logits(self, x):
        y = self.classifier.classify(self.features(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def embed(self, x, grid):
        f = self.features(x)
        if grid is not None:  # None: the decoder's map as it comes (segnet's `--loss-grid decoder`)
            f = F.interpolate(f, size=(grid, grid), mode="bilinear", align_corners=True)
        return F.normalize(self.projection(f), dim=1)


def naive_contrastive_loss(z, labels):
    """Within-image, per-positive form: for anchor i of class y_i, positives P_i (same class, i
    included), negatives K_i (other classes), l_ij = -log(e_ij / (e_ij + sum_K e_ik)), loss_i = mean
    over P_i; image loss = mean over anchors; loss = mean over images. Materialises N x N."""
    losses = []
    for b in range(z.shape[0]):
        y = labels[b].flatten()
        valid = y != IGNORE
        f = z[b].flatten(1).t()[valid]
        y = y[valid]
        s = f @ f.t() / TAU
        s = s - s.max(dim=1, keepdim=True)[0].detach()
        e = torch.exp(s)
        pos = (y[:, None] == y[None, :]).float()
        neg_sum = (e * (1.0 - pos)).sum(1, keepdim=True)
        log_prob = s - torch.log(e + neg_sum)
        losses.append((-(pos * log_prob).sum(1) / pos.sum(1)).mean())
    return torch.stack(losses).mean()


def blocky_labels(b, h, w, classes, g):
    """Random class per 8x8 cell, as segnet's bench (regions, not salt-and-pepper)."""
    cells = torch.randint(0, classes, (b, (h + 7) // 8, (w + 7) // 8), generator=g)
    return cells.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :h, :w].contiguous()


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def compare_checkpoint(model, path):
    """Every parameter name and shape of `model` against a segnet safetensors checkpoint."""
    from safetensors import safe_open

    ours = {}
    with safe_open(path, framework="pt") as f:
        for k in f.keys():
            ours[k] = tuple(f.get_slice(k).get_shape())
    theirs = {k: tuple(p.shape) for k, p in model.named_parameters()}
    # Parameters only: BN running statistics and the optimiser's momentum buffers are not.
    ours_params = {
        k: v for k, v in ours.items()
        if not k.startswith("optim.") and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
    missing = sorted(set(theirs) - set(ours_params))
    extra = sorted(set(ours_params) - set(theirs))
    wrong = sorted(f"{k}: ours {ours_params[k]} torch {theirs[k]}" for k in theirs
                   if k in ours_params and ours_params[k] != theirs[k])
    n_ours = sum(torch.Size(s).numel() for s in ours_params.values())
    return {"checkpoint_params": n_ours, "missing_in_ckpt": missing[:10], "extra_in_ckpt": extra[:10],
            "shape_mismatch": wrong[:10], "mismatches": len(missing) + len(extra) + len(wrong)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet50", choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop", type=int, default=257)
    p.add_argument("--stage", default="finetune", choices=["finetune", "contrastive"])
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--views", type=int, default=1, choices=[1, 2],
                   help="contrastive: 2 = also a colour-mapped second view, losses summed (segnet's two-view batches)")
    p.add_argument("--grid", default="eighth", choices=["eighth", "decoder"],
                   help="contrastive: loss on (crop-1)/8+1 (resized) or on the decoder's own map")
    p.add_argument("--json", action="store_true")
    p.add_argument("--phases", action="store_true", help="also time forward+loss, backward, optimizer")
    p.add_argument("--compare-checkpoint", help="segnet .safetensors checkpoint to compare names/shapes with")
    a = p.parse_args()
    rss_import = peak_rss_mb()  # the torch runtime alone, before any model or data
    if a.iters < 1:
        sys.exit("--iters must be at least 1")

    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    contrastive = a.stage == "contrastive"
    model = DeepLab(a.backbone, a.classes, contrastive).train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(a.batch, 3, a.crop, a.crop, generator=g)
    labels = blocky_labels(a.batch, a.crop, a.crop, a.classes, g)
    grid = (a.crop - 1) // 8 + 1 if a.grid == "eighth" else None
    side = grid if grid is not None else (a.crop - 1) // 4 + 1  # the decoder map of a stride-4 head
    small = F.interpolate(labels[:, None].float(), size=(side, side), mode="nearest")[:, 0].long()
    # The second view: a per-channel colour map of the first, as segnet's bench builds it.
    x2 = x * torch.tensor([0.8, 1.1, 0.9])[None, :, None, None] + torch.tensor([0.1, -0.05, 0.2])[None, :, None, None]

    times, cpu, fwd, bwd, upd = [], [], [], [], []
    for it in range(a.warmup + a.iters):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        if contrastive:
            loss = naive_contrastive_loss(model.embed(x, grid), small)
            if a.views == 2:
                loss = loss + naive_contrastive_loss(model.embed(x2, grid), small)
        else:
            loss = F.cross_entropy(model.logits(x), labels, ignore_index=IGNORE)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if it >= a.warmup:
            times.append(t3 - t0)
            cpu.append(time.process_time() - c0)
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            upd.append(t3 - t2)

    out = {
        "bench": "step", "impl": f"torch {torch.__version__}", "backbone": a.backbone, "stage": a.stage,
        "batch": a.batch, "crop": a.crop, "output_stride": 16,
        "loss_form": {"mode": "within", "grid": a.grid, "views": a.views} if contrastive else None, "threads": a.threads, "iters": a.iters,
        "median_step_s": statistics.median(times), "min_step_s": min(times), "peak_rss_mb": peak_rss_mb(),
        "median_step_cpu_s": statistics.median(cpu),
        "params": params, "loss": loss.item(), "rss_after_import_mb": rss_import,
    }
    if a.phases:
        med = statistics.median
        out.update(fwd_loss_s=med(fwd), backward_s=med(bwd), optimizer_s=med(upd))
    if a.compare_checkpoint:
        out["compare"] = compare_checkpoint(model, a.compare_checkpoint)
    print(json.dumps(out) if a.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
