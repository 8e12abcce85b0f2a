"""Open a segnet checkpoint's backbone in PyTorch as a torchvision ResNet, the way a user takes a
pretrained backbone elsewhere (e.g. a DenseCL stage's `densecl-final.safetensors`):

    python benches/torch/open_backbone.py runs/X/checkpoints/densecl-final.safetensors --arch resnet18

The checkpoint must be of a `--width 1` model (torchvision's ResNets have no width multiplier).
Every `backbone.*` tensor is loaded into `torchvision.models.<arch>()` with its prefix taken off;
the script fails unless the only missing tensors are the ImageNet classifier `fc.*` and nothing is
unexpected, then runs a forward pass and prints the feature shape. `--save-pth OUT.pth` also writes
the backbone as a torchvision-style state dict (`torch.save`), which `segnet train --init-backbone`
reads back.
"""
import argparse

import torch
import torchvision
from safetensors.torch import load_file


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--save-pth")
    a = p.parse_args()
    sd = load_file(a.checkpoint)
    backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    model = getattr(torchvision.models, a.arch)(weights=None)
    res = model.load_state_dict(backbone, strict=False)
    missing = sorted(res.missing_keys)
    assert missing == ["fc.bias", "fc.weight"], f"missing: {missing}"
    assert not res.unexpected_keys, f"unexpected: {res.unexpected_keys}"
    model.fc = torch.nn.Identity()
    model.eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 224, 224))
    print(f"{a.checkpoint}: {len(backbone)} backbone tensors loaded into torchvision.models.{a.arch} "
          f"(missing only fc.weight, fc.bias; none unexpected); pooled features {tuple(feats.shape)}")
    if a.save_pth:
        torch.save(backbone, a.save_pth)
        print(f"wrote {a.save_pth} ({len(backbone)} tensors, torch {torch.__version__})")


if __name__ == "__main__":
    main()
