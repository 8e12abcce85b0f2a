"""Learning parity: train segnet's default DeepLabV3+ in PyTorch on the same synthetic data and
with the same recipe as `segnet train --stages ce-only`, and report the validation mIoU.

Measured on the earlier default task (the shapes generator, 200 training images, no scale
augmentation); the embedded default is now the 4-class texture task (500 training / 100 validation
images, random scale 0.75-1.5 and crop) and this script has not been re-run on it: it does not
implement the scale/crop augmentation yet, so a comparison on the new task needs that first.

Recipe at the time (segnet/src/config.rs defaults + the experiment's overrides): ResNet-18 width 0.25, output
stride 8, ASPP rates 1/2/3, dropout 0.1, segnet's initialisation (kaiming fan_out backbone, fan_in
head); all 200 training images labeled; batch 8, epochs of shuffled images; horizontal flips
(p = 0.5), no scaling, no crop (64x64 images, crop 64); ImageNet mean/std on x/255; SGD momentum
0.9, weight decay 1e-4 except BN parameters and biases; cosine lr `lr * (1 + cos(pi t / T)) / 2`
for steps t = 0..T-1; cross-entropy with ignore 255 on logits upsampled bilinearly
(align_corners=False). Evaluation: eval mode, the 40 validation images, one confusion matrix,
mIoU over the classes present in the ground truth or the predictions.

Data: packs written by segnet itself, identical to what `segnet train` generates in memory:

    segnet data synth -o train.pack --images 200 --size 64 --seed 7
    segnet data synth -o val.pack --images 40 --size 64 --seed 18581050384   # 7 * 0x9E3779B9 + 1

    /work/venv-torch/bin/python benches/torch/train_synth.py train.pack val.pack --steps 600 --lr 0.1 --seeds 0,1,2
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grad_parity import SegnetDeepLab, init_like_segnet, normalise, read_pack, sgd_param_groups  # noqa: E402


def confusion(model, x, y, classes, batch=8):
    model.eval()
    cm = torch.zeros(classes, classes, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            pred = model(x[i:i + batch]).argmax(1)
            gt = y[i:i + batch]
            valid = gt != 255
            cm += torch.bincount(gt[valid] * classes + pred[valid], minlength=classes * classes).view(classes, classes)
    model.train()
    return cm


def scores(cm):
    tp = cm.diag().double()
    union = cm.sum(0).double() + cm.sum(1).double() - tp
    iou = [(tp[k] / union[k]).item() if union[k] > 0 else None for k in range(len(tp))]
    defined = [v for v in iou if v is not None]
    return {"miou": sum(defined) / len(defined), "iou": iou, "pixel_accuracy": (tp.sum() / cm.sum()).item()}


def train(a, seed, data):
    xtr, ytr, xva, yva = data
    torch.manual_seed(seed)
    model = SegnetDeepLab(dropout=a.dropout)
    init_like_segnet(model)
    model.train()
    opt = torch.optim.SGD(sgd_param_groups(model, a.weight_decay), lr=a.lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    n, bs = len(xtr), a.batch
    per_epoch = n // bs
    curve = []
    order = None
    t0 = time.time()
    for step in range(a.steps):
        if step % per_epoch == 0:
            order = torch.randperm(n, generator=g)
        idx = order[(step % per_epoch) * bs:(step % per_epoch + 1) * bs]
        x, y = xtr[idx].clone(), ytr[idx].clone()
        if a.flip:
            flip = torch.rand(bs, generator=g) < 0.5
            x[flip] = x[flip].flip(-1)
            y[flip] = y[flip].flip(-1)
        lr = a.lr * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            s = scores(confusion(model, xva, yva, 5))
            curve.append({"step": step + 1, "loss": loss.item(), "miou": s["miou"]})
            if not a.quiet:
                print(f"  seed {seed} step {step + 1}: loss {loss.item():.4f} val mIoU {100 * s['miou']:.2f}% "
                      f"({time.time() - t0:.0f}s)", flush=True)
    final = scores(confusion(model, xva, yva, 5))
    # Training-set mIoU (eval mode, no flips): tells underfitting from overfitting.
    final["train_miou"] = scores(confusion(model, xtr, ytr, 5))["miou"]
    final["curve"] = curve
    return final


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train_pack")
    ap.add_argument("val_pack")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--no-flip", dest="flip", action="store_false")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    imgs, labs = read_pack(a.train_pack)
    vimgs, vlabs = read_pack(a.val_pack)
    data = (normalise(imgs), torch.from_numpy(labs.astype(np.int64)),
            normalise(vimgs), torch.from_numpy(vlabs.astype(np.int64)))
    results = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        r = train(a, seed, data)
        results.append(r)
        iou = " ".join("n/a" if v is None else f"{100 * v:.1f}" for v in r["iou"])
        print(f"seed {seed}: val mIoU {100 * r['miou']:.2f}% (per class {iou}), pixel acc "
              f"{100 * r['pixel_accuracy']:.2f}%, train mIoU {100 * r['train_miou']:.2f}%", flush=True)
    m = [r["miou"] for r in results]
    print(f"val mIoU over {len(m)} seed(s): mean {100 * np.mean(m):.2f}%, min {100 * min(m):.2f}%, "
          f"max {100 * max(m):.2f}%")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
