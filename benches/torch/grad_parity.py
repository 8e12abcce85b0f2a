"""Whole-model gradient parity: segnet's DeepLabV3+ training step against the same network in PyTorch.

The network is the embedded default of `segnet train` (ResNet-18 at width 0.25, output stride 8,
ASPP rates 1/2/3, 64 head channels, 16 low-level channels, 5 classes), built here in plain
PyTorch with segnet's parameter names so a segnet checkpoint loads with `strict=True`:

* ResNet with BasicBlocks; channels `make_divisible(c * width, 8, 8)` (16, 32, 64, 128);
  `replace_stride_with_dilation=[False, True, True]` semantics: a dilated stage drops its stride,
  its first block keeps the previous dilation, the later blocks use the new one; BOTH 3x3 convs
  of a basic block use the block's dilation (torchvision's BasicBlock refuses dilation).
* VainF's DeepLabHeadV3Plus with two 3x3 decoder convs (`classifier.0/1`, `classifier.3/4`) and the
  1x1 classifier at `classifier.6`; logits upsampled bilinearly (align_corners=False).

Usage (the Rust side is a throwaway program that writes the same quantities from segnet):

    python benches/torch/grad_parity.py CKPT BATCH.safetensors SEGNET_OUT.safetensors --dtype f64 --steps 3 --lr 0.1

BATCH holds `x` (f32 [N, 3, H, W], normalised) and `labels` (u8 [N, H, W], 255 = ignore);
SEGNET_OUT holds `loss`, `logits`, `grad.<param>`, `state.<buffer>` (after one train-mode forward)
and `param.<param>` after `--steps` SGD steps (compared as updates p_K - p_0) (momentum 0.9, weight decay 1e-4 except BN and
biases, constant lr). Dropout is 0 on both sides (its mask cannot be shared). The script prints
the max relative difference per tensor and per group.

`--make-batch PACK N OUT` writes a batch of the first N records of a segnet pack (with a block of
ignored pixels in each label map) instead.
"""
import argparse
import math
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_divisible(v, divisor=8, minimum=8):
    """segnet's `make_divisible` (segnet/src/model/spec.rs)."""
    rounded = max(math.floor((v + divisor / 2) / divisor) * divisor, minimum)
    if rounded < 0.9 * v:
        rounded += divisor
    return int(rounded)


def conv_bn_relu(cin, cout, k, dilation=1):
    pad = dilation if k == 3 else 0
    return [nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride, dilation):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idt = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + idt)


class ResNet18(nn.Module):
    def __init__(self, width, output_stride):
        super().__init__()
        planes = [make_divisible(c * width) if width != 1 else c for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, planes[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        dilate = [False, True, True] if output_stride == 8 else [False, False, True]
        inplanes, dilation = planes[0], 1
        for stage in range(4):
            stride = 1 if stage == 0 else 2
            previous = dilation
            if stage > 0 and dilate[stage - 1]:
                dilation *= stride
                stride = 1
            blocks = [BasicBlock(inplanes, planes[stage], stride, previous)]
            inplanes = planes[stage]
            blocks.append(BasicBlock(inplanes, planes[stage], 1, dilation))
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.low_channels, self.out_channels = planes[0], planes[3]

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))


class AsppPooling(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(cin, cout, 1))

    def forward(self, x):
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class Aspp(nn.Module):
    def __init__(self, cin, c, rates, dropout):
        super().__init__()
        branches = [nn.Sequential(*conv_bn_relu(cin, c, 1))]
        branches += [nn.Sequential(*conv_bn_relu(cin, c, 3, r)) for r in rates]
        branches.append(AsppPooling(cin, c))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*conv_bn_relu(5 * c, c, 1), nn.Dropout(dropout))

    def forward(self, x):
        return self.project(torch.cat([b(x) for b in self.convs], dim=1))


class Head(nn.Module):
    def __init__(self, low_in, high_in, classes, c, low, rates, dropout):
        super().__init__()
        self.project = nn.Sequential(*conv_bn_relu(low_in, low, 1))
        self.aspp = Aspp(high_in, c, rates, dropout)
        self.classifier = nn.Sequential(*conv_bn_relu(low + c, c, 3), *conv_bn_relu(c, c, 3), nn.Conv2d(c, classes, 1))

    def forward(self, low_level, out):
        low = self.project(low_level)
        high = F.interpolate(self.aspp(out), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, high], dim=1))


class SegnetDeepLab(nn.Module):
    """segnet's default DeepLabV3+ (names `backbone.*`, `classifier.*`)."""

    def __init__(self, classes=5, width=0.25, output_stride=8, rates=(1, 2, 3), head=256, low=48, dropout=0.1):
        super().__init__()
        self.backbone = ResNet18(width, output_stride)
        scale = (lambda c: c) if width == 1 else (lambda c: make_divisible(c * width))
        self.classifier = Head(self.backbone.low_channels, self.backbone.out_channels, classes, scale(head),
                               scale(low), rates, dropout)

    def forward(self, x):
        low, out = self.backbone(x)
        return F.interpolate(self.classifier(low, out), size=x.shape[-2:], mode="bilinear", align_corners=False)


def init_like_segnet(model):
    """torchvision init for the backbone (kaiming fan_out), VainF's for the head (kaiming fan_in),
    BN 1/0, classifier bias PyTorch's default (as segnet/src/model/blocks.rs)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            mode = "fan_out" if name.startswith("backbone") else "fan_in"
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def sgd_param_groups(model, weight_decay):
    """No weight decay on BN parameters and biases (segnet's `no_decay_norm_and_bias`)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim == 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------- segnet pack reader (FORMAT.md)

def read_pack(path):
    """Images (uint8 [N, H, W, 3]) and labels (uint8 [N, H, W]) of a same-size labeled pack."""
    buf = open(path, "rb").read()
    assert buf[:8] == b"SEGPACK\0", "not a segnet pack"
    n = struct.unpack_from("<Q", buf, 16)[0]
    index_offset = struct.unpack_from("<Q", buf, 40)[0]
    images, labels = [], []
    for i in range(n):
        off, h, w, flags = struct.unpack_from("<QIII", buf, index_offset + 32 * i)
        assert flags & 1, "unlabeled record"
        img = np.frombuffer(buf, np.uint8, h * w * 3, off).reshape(h, w, 3)
        lab = np.frombuffer(buf, np.uint8, h * w, off + h * w * 3).reshape(h, w)
        images.append(img)
        labels.append(lab)
    return np.stack(images), np.stack(labels)


def normalise(images_u8):
    """uint8 NHWC -> float32 NCHW, `(x / 255 - mean) / std` (segnet's AugmentConfig)."""
    x = torch.from_numpy(images_u8.astype(np.float32)).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


# ---------------------------------------------------------------- the parity check

def group_of(name):
    for g in ("backbone.conv1", "backbone.bn1", "backbone.layer1", "backbone.layer2", "backbone.layer3",
              "backbone.layer4", "classifier.project", "classifier.aspp.convs.4", "classifier.aspp.convs",
              "classifier.aspp.project", "classifier.classifier.6", "classifier.classifier"):
        if name.startswith(g):
            return g
    return "other"


def rel(a, b):
    """max |a - b| / max |b| (0 when both vanish)."""
    scale = b.abs().max().item()
    d = (a - b).abs().max().item()
    return d / scale if scale > 0 else d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt", nargs="?")
    ap.add_argument("batch", nargs="?")
    ap.add_argument("ours", nargs="?")
    ap.add_argument("--dtype", default="f64", choices=["f32", "f64"])
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--make-batch", nargs=3, metavar=("PACK", "N", "OUT"))
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    from safetensors.torch import load_file, save_file

    if a.make_batch:
        pack, n, out = a.make_batch
        imgs, labs = read_pack(pack)
        x = normalise(imgs[: int(n)])
        labels = torch.from_numpy(labs[: int(n)].copy())
        labels[:, 5:9, 40:50] = 255  # exercise ignore_index
        save_file({"x": x, "labels": labels}, out)
        print(f"wrote {out}: x {tuple(x.shape)}, labels {tuple(labels.shape)}")
        return

    dt = torch.float64 if a.dtype == "f64" else torch.float32
    model = SegnetDeepLab(dropout=0.0)
    sd = {k: v for k, v in load_file(a.ckpt).items() if not k.startswith("optim.")}
    model.load_state_dict(sd, strict=True)
    model = model.to(dt).train()
    batch = load_file(a.batch)
    x = batch["x"].to(dt)
    labels = batch["labels"].long()
    ours = {k: v for k, v in load_file(a.ours).items()}

    opt = torch.optim.SGD(sgd_param_groups(model, 1e-4), lr=a.lr, momentum=0.9)
    # Compare updates (p_K - p_0), not parameters, so a wrong step is not hidden by |p|.
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = {}

    def record(kind, name, mine, theirs):
        r = rel(theirs.to(torch.float64), mine.to(torch.float64))
        key = (kind, group_of(name))
        groups[key] = max(groups.get(key, 0.0), r)
        if a.verbose:
            print(f"{kind:6s} {name:55s} rel {r:.3e}")

    for step in range(max(a.steps, 1)):
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, labels, ignore_index=255)
        loss.backward()
        if step == 0:
            print(f"loss: torch {loss.item():.12g} segnet {ours['loss'].item():.12g} "
                  f"rel {abs(loss.item() - ours['loss'].item()) / abs(loss.item()):.3e}")
            record("logits", "logits", logits.detach(), ours["logits"])
            for name, p in model.named_parameters():
                record("grad", name, p.grad, ours[f"grad.{name}"])
            for name, b in model.named_buffers():
                if name.endswith(("running_mean", "running_var")):
                    record("buffer", name, b, ours[f"state.{name}"])
        if a.steps > 0:
            opt.step()
    if a.steps > 0:
        for name, p in model.named_parameters():
            p0 = initial[name]
            record("update", name, p.detach() - p0, ours[f"param.{name}"].to(dt) - p0)
    print(f"{'kind':8s} {'group':28s} max rel diff")
    for (kind, g), r in sorted(groups.items()):
        print(f"{kind:8s} {g:28s} {r:.3e}")
    worst = max(groups.values())
    print(f"worst {worst:.3e}")


if __name__ == "__main__":
    sys.exit(main())
