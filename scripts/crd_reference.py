#!/usr/bin/env python3
"""An independent float64 reference for `kdlab loss --method crd --json --grad` (Tian, Krishnan,
Isola, "Contrastive Representation Distillation", ICLR 2020). Written from the paper's NCE objective
with the conventions of the authors' code (RepDistiller's crd/, as mdistiller repeats it): the
embedding heads (linear, then division by the L2 norm), scores exp(v . m / tau) against the other
network's bank rows (detached), Z = mean(scores) * samples estimated from this batch when not
given (a constant: no gradient flows through it), their ContrastLoss with P_n = 1/samples, m = K,
eps = 1e-7, the two directions summed. In NumPy, without autograd.

    python3 scripts/crd_reference.py --student s.npy --labels y.npy \
        --student-tap embedding=fs.npy --teacher-tap embedding=ft.npy \
        --indices idx.npy --negatives neg.npy --samples M \
        --method-var bank_s=bs.npy --method-var bank_t=bt.npy \
        --method-var embed_s.weight=ws.npy --method-var embed_s.bias=bs_.npy ... [--method-var z=z.npy]
        [--nce-t 0.07 --ce-weight 1 --feat-weight 0.8]

Prints {"terms", "total", "grad", "tap_grad": {"embedding"}, "var_grad": {embed_*.weight, embed_*.bias}}:
every gradient of the total by complex-step differentiation, f'(x) = Im f(x + ih) / h with
h = 1e-20, exact to rounding since no difference is taken; every function below accepts complex
inputs (the norm is the square root of a sum of squares, not |z|; Z takes the real part only).
"""
import argparse
import json

import numpy as np

H = 1e-20
EPS = 1e-7


def read(spec):
    name, path = spec.split("=", 1)
    return name, np.load(path).astype(np.float64)


def embed(x, w, b):
    z = x.reshape(len(x), -1) @ w.T + b
    return z / np.sqrt((z * z).sum(axis=1, keepdims=True))


def nce(p, samples):
    """The authors' ContrastLoss on (N, K+1) scores, the positive first."""
    n, k1 = p.shape
    mpn = (k1 - 1) / samples
    pos, neg = p[:, 0], p[:, 1:]
    d1 = np.log(pos / (pos + mpn + EPS))
    d0 = np.log(mpn / (neg + mpn + EPS))
    return -(d1.sum() + d0.sum()) / n


def log_softmax(z):
    m = z.real.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def terms(x, a, fixed):
    """The terms as (possibly complex) scalars; `x` holds the differentiated inputs."""
    samples, contrast, z, y = fixed["samples"], fixed["contrast"], fixed["z"], fixed["y"]
    vs = embed(x["fs"], x["embed_s.weight"], x["embed_s.bias"])
    vt = embed(fixed["ft"], x["embed_t.weight"], x["embed_t.bias"])
    # Student anchor against the teacher's bank, teacher anchor against the student's.
    out_s = np.exp(np.take_along_axis(vs @ fixed["bank_t"].T, contrast, axis=1) / a.nce_t)
    out_t = np.exp(np.take_along_axis(vt @ fixed["bank_s"].T, contrast, axis=1) / a.nce_t)
    zs = z[0] if z[0] >= 0 else out_s.real.mean() * samples
    zt = z[1] if z[1] >= 0 else out_t.real.mean() * samples
    ce = -log_softmax(x["s"])[np.arange(len(y)), y].mean()
    return {"ce": a.ce_weight * ce, "crd": a.feat_weight * (nce(out_s / zs, samples) + nce(out_t / zt, samples))}


def total(x, a, fixed):
    return sum(terms(x, a, fixed).values())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--student", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--student-tap", required=True)
    p.add_argument("--teacher-tap", required=True)
    p.add_argument("--indices", required=True)
    p.add_argument("--negatives", required=True)
    p.add_argument("--samples", type=int, required=True)
    p.add_argument("--method-var", action="append", default=[])
    p.add_argument("--nce-t", type=float, default=0.07)
    p.add_argument("--ce-weight", type=float, default=1.0)
    p.add_argument("--feat-weight", type=float, default=0.8)
    a = p.parse_args()

    vars_ = dict(read(v) for v in a.method_var)
    idx = np.load(a.indices).astype(np.int64).reshape(-1)
    neg = np.load(a.negatives).astype(np.int64)
    fixed = {
        "samples": a.samples,
        "contrast": np.concatenate([idx[:, None], neg], axis=1),
        "z": vars_.get("z", np.array([-1.0, -1.0])),
        "y": np.load(a.labels).astype(np.int64),
        "ft": read(a.teacher_tap)[1],
        "bank_s": vars_["bank_s"],
        "bank_t": vars_["bank_t"],
    }
    x = {"s": np.load(a.student).astype(np.float64), "fs": read(a.student_tap)[1]}
    for k in ("embed_s.weight", "embed_s.bias", "embed_t.weight", "embed_t.bias"):
        x[k] = vars_[k]

    values = {k: float(v.real) for k, v in terms(x, a, fixed).items()}
    grads = {}
    xc = {k: w.astype(np.complex128) for k, w in x.items()}
    for name, v in x.items():
        g = np.zeros(v.shape)
        for j in np.ndindex(v.shape):
            # Perturbed in place and restored: adding and removing ih leaves the real part as is.
            xc[name][j] += 1j * H
            g[j] = total(xc, a, fixed).imag / H
            xc[name][j] = x[name][j]
        grads[name] = g
    n = len(x["s"])
    out = {
        "method": "crd",
        "terms": values,
        "total": sum(values.values()),
        "grad": grads["s"].tolist(),
        "tap_grad": {"embedding": grads["fs"].reshape(n, -1).tolist()},
        "var_grad": {k: grads[k].reshape(-1).tolist() for k in x if k.startswith("embed_")},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
