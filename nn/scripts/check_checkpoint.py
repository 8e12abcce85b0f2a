"""Check that an nn checkpoint opens in PyTorch and means the same thing there.

    cargo run -p nn --release --example tiny_checkpoint -- /tmp/tiny
    /work/venv-torch/bin/python nn/scripts/check_checkpoint.py /tmp/tiny

Loads tiny.safetensors with safetensors.torch.load_file, checks dtypes (float32 weights, int64
num_batches_tracked of shape []), loads the model tensors into the equivalent torch module with
strict=True, checks the optimiser tensors match parameter names and shapes, then runs the probe
input of tiny_reference.safetensors through the module in eval mode and compares with the Rust
output. A tool for developers; the Rust test suite does not need Python.
"""

import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16, 1))

    def forward(self, x):
        return self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Sequential(
            nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 8, 1),
        )

    def forward(self, x):
        return F.normalize(self.head(self.backbone(x)), dim=1)


def main(out_dir: Path) -> int:
    path = out_dir / "tiny.safetensors"
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    print(f"{path}: {len(tensors)} tensors, metadata keys {sorted(meta)}")
    assert meta["format"] == "segnet-checkpoint" and meta["step"] == "3", meta

    model_sd = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
    optim_sd = {k[len("optim.momentum_buffer."):]: v for k, v in tensors.items() if k.startswith("optim.")}
    for k, v in model_sd.items():
        want = torch.int64 if k.endswith("num_batches_tracked") else torch.float32
        assert v.dtype == want, f"{k}: {v.dtype}, expected {want}"
        if want == torch.int64:
            assert v.shape == torch.Size([]) and int(v) == 3, f"{k}: {v.shape} {v}"

    net = Net()
    torch_sd = net.state_dict()
    result = net.load_state_dict(model_sd, strict=True)
    print(f"load_state_dict(strict=True): {result}")
    params = dict(net.named_parameters())
    assert sorted(optim_sd) == sorted(params), "momentum buffers do not match the parameters"
    for k, v in optim_sd.items():
        assert v.shape == params[k].shape, f"momentum {k}: {v.shape} vs {params[k].shape}"
    for k, v in torch_sd.items():
        assert model_sd[k].shape == v.shape, k

    ref = load_file(str(out_dir / "tiny_reference.safetensors"))
    net.eval()
    with torch.no_grad():
        y = net(ref["input"])
    err = (y - ref["output"]).abs().max().item()
    print(f"eval forward: max |torch - rust| = {err:.3e} over {y.numel()} values")
    assert err < 1e-4, "outputs differ"
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "target/tiny_checkpoint")))
