"""PyTorch twin of benches/benches/norm_resize.rs: batch norm (train) and bilinear resize, f32, 2 threads.

Run: /work/venv-torch/bin/python benches/torch/norm_resize.py
Prints the median wall time (ms) of forward and of forward + backward per case.
"""
import torch
import torch.nn.functional as F

from timing import median_ms

torch.set_num_threads(2)
torch.manual_seed(0)


def report(name, fwd, fwd_bwd):
    print(f"{name:<34} fwd {median_ms(fwd):8.2f} ms   fwd+bwd {median_ms(fwd_bwd):8.2f} ms", flush=True)


def batch_norm():
    x = torch.randn(2, 256, 65, 65, requires_grad=True)
    w = torch.ones(256, requires_grad=True)
    b = torch.zeros(256, requires_grad=True)
    rm, rv = torch.zeros(256), torch.ones(256)
    g = torch.randn_like(x)

    def fwd():
        with torch.no_grad():
            F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)

    def fwd_bwd():
        x.grad = w.grad = b.grad = None
        F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5).backward(g)

    report("batch_norm2d_train 2x256x65x65", fwd, fwd_bwd)


def bilinear(align):
    x = torch.randn(2, 256, 33, 33, requires_grad=True)
    g = torch.randn(2, 256, 129, 129)

    def fwd():
        with torch.no_grad():
            F.interpolate(x, size=(129, 129), mode="bilinear", align_corners=align)

    def fwd_bwd():
        x.grad = None
        F.interpolate(x, size=(129, 129), mode="bilinear", align_corners=align).backward(g)

    report(f"bilinear 2x256 33->129 ac={align}", fwd, fwd_bwd)


if __name__ == "__main__":
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    batch_norm()
    bilinear(False)
    bilinear(True)
