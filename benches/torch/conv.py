"""PyTorch twin of benches/benches/conv.rs: the same conv shapes, f32, 2 threads.

Run: /work/venv-torch/bin/python benches/torch/conv.py
Prints the median wall time (ms) of forward and of forward + backward (dX, dW and db) per case.
"""
import torch
import torch.nn.functional as F

from timing import median_ms

torch.set_num_threads(2)
torch.manual_seed(0)


def case(name, n, c_in, c_out, hw, k, dilation, padding):
    x = torch.randn(n, c_in, hw, hw, requires_grad=True)
    w = (torch.randn(c_out, c_in, k, k) * 0.05).requires_grad_()
    b = torch.zeros(c_out, requires_grad=True)
    with torch.no_grad():
        y = F.conv2d(x, w, b, padding=padding, dilation=dilation)
    g = torch.randn_like(y)

    def fwd():
        with torch.no_grad():
            F.conv2d(x, w, b, padding=padding, dilation=dilation)

    def fwd_bwd():
        x.grad = w.grad = b.grad = None
        y = F.conv2d(x, w, b, padding=padding, dilation=dilation)
        y.backward(g)

    print(f"{name:<28} fwd {median_ms(fwd):8.2f} ms   fwd+bwd {median_ms(fwd_bwd):8.2f} ms", flush=True)


if __name__ == "__main__":
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for d in (1, 6, 12, 18):
        case(f"conv3x3_256_2x33x33_d{d}", 2, 256, 256, 33, 3, d, d)
    case("conv1x1_256_2x65x65", 2, 256, 256, 65, 1, 1, 0)
    case("conv3x3_512_2x17x17_d2", 2, 512, 512, 17, 3, 2, 2)
    case("conv3x3_2048to256_2x17x17_d6", 2, 2048, 256, 17, 3, 6, 6)
