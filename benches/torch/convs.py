"""PyTorch twin of `segnet bench convs`: the same conv geometries, timed the same way.

Run:
    segnet bench convs --backbone resnet50 --batch 2 --crop 257 --threads 2 --json > convs.json
    /work/venv-torch/bin/python benches/torch/convs.py --shapes convs.json [--threads 2] [--iters 5] [--json]

For every conv in the file (one per distinct geometry of segnet's forward, with the count of its
uses), f32, random data: the forward (`F.conv2d`), the input gradient and the weight gradient
(`torch.ops.aten.convolution_backward` with one output asked for at a time), each the median of
`--iters` calls after one untimed call, as segnet does. Prints a side-by-side table (ms) with
segnet's figures from the same file, or with `--json` one line with PyTorch's figures per conv.
Totals weight each conv by its count and leave out the `dx` of the first conv (the image needs
no gradient in a training step), as segnet's do.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F


def median_s(fn, iters):
    fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def time_conv(c, iters):
    x = torch.randn(c["n"], c["c_in"], c["h"], c["w"])
    w = torch.randn(c["c_out"], c["c_in"] // c["groups"], c["kh"], c["kw"])
    args = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"])
    with torch.no_grad():
        y = F.conv2d(x, w, None, **args)
        gy = torch.randn_like(y)

        def backward(mask):
            return lambda: torch.ops.aten.convolution_backward(
                gy, x, w, None, c["stride"], c["padding"], c["dilation"], False, [0, 0], c["groups"], mask
            )

        fwd = median_s(lambda: F.conv2d(x, w, None, **args), iters)
        dx = median_s(backward([True, False, False]), iters)
        dw = median_s(backward([False, True, False]), iters)
    return fwd * 1e3, dx * 1e3, dw * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", required=True, help="the JSON line of `segnet bench convs --json`")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ours = json.load(open(a.shapes))
    rows, tot = [], {"fwd": 0.0, "bwd": 0.0, "ours_fwd": 0.0, "ours_bwd": 0.0}
    for c in ours["convs"]:
        fwd, dx, dw = time_conv(c, a.iters)
        k, dx_in = c["count"], c["dx_in_step"]
        tot["fwd"] += fwd * k
        tot["bwd"] += (dw + (dx if dx_in else 0.0)) * k
        tot["ours_fwd"] += c["fwd_ms"] * k
        tot["ours_bwd"] += (c["dw_ms"] + (c["dx_ms"] if dx_in else 0.0)) * k
        rows.append(dict(c, torch_fwd_ms=fwd, torch_dx_ms=dx, torch_dw_ms=dw))
    if a.json:
        print(json.dumps({"bench": "convs-torch", "torch": torch.__version__, "threads": a.threads,
                          "iters": a.iters, "convs": rows, "total_fwd_ms": tot["fwd"], "total_bwd_ms": tot["bwd"]}))
        return
    print(f"torch {torch.__version__}, {a.threads} threads; ms, segnet / PyTorch (segnet's from {a.shapes})")
    print(f"{'count':>5} {'c_in':>5} {'hw':>4} {'c_out':>5} {'k':>2} {'s':>2} {'d':>2} | "
          f"{'fwd':>15} {'dx':>15} {'dw':>15}")
    for r in rows:
        dx = f"{r['dx_ms']:7.2f}/{r['torch_dx_ms']:7.2f}" if r["dx_in_step"] else f"{'-':>15}"
        print(f"{r['count']:>5} {r['c_in']:>5} {r['h']:>4} {r['c_out']:>5} {r['kh']:>2} {r['stride'][0]:>2} "
              f"{r['dilation'][0]:>2} | {r['fwd_ms']:7.2f}/{r['torch_fwd_ms']:7.2f} {dx} "
              f"{r['dw_ms']:7.2f}/{r['torch_dw_ms']:7.2f}")
    print(f"total (x count): forward {tot['ours_fwd']:.1f} / {tot['fwd']:.1f} ms, "
          f"backward {tot['ours_bwd']:.1f} / {tot['bwd']:.1f} ms")


if __name__ == "__main__":
    main()
