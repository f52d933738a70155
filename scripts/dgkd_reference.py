#!/usr/bin/env python3
"""An independent float64 reference for DGKD's loss in `kdlab loss --json --grad`, written from the
paper (Son, Na, Choi & Han, "Densely Guided Knowledge Distillation using Multiple Teacher
Assistants", ICCV 2021), in NumPy, without autograd:

    ce = alpha * CE(s, y)
    kd = beta * tau^2 * sum over kept guides g of KL(softmax(g / tau) || softmax(s / tau))

the guides being the teacher and then each assistant, the KL averaged over the batch, and the keep
mask b_g given (the paper's stochastic teaching drops guides at random; the draw is kdlab's, so the
reference takes the mask).

    python3 scripts/dgkd_reference.py --student s.npy --teacher t.npy --guides a.npy,b.npy \
        --labels y.npy --keep 1,0,1 [--tau 5 --alpha 0 --beta 1]

Prints {"method", "terms": {name: value}, "total", "grad"}; "grad" is the gradient of the total with
respect to the student's logits, by complex-step differentiation: f'(x) = Im f(x + ih) / h with
h = 1e-20, exact to rounding because no difference is taken. Every term is a mean over the batch of
per-sample values, so one column is perturbed in all rows at once (C evaluations, not N*C).
"""
import argparse
import json

import numpy as np

H = 1e-20


def log_softmax(z):
    m = z.real.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def per_sample(s, guides, keep, y, tau, alpha, beta):
    """Each term per sample (the batch mean is taken by the caller)."""
    ce = -log_softmax(s)[np.arange(len(y)), y]
    log_q = log_softmax(s / tau)
    kd = np.zeros(len(y), dtype=s.dtype)
    for g, k in zip(guides, keep):
        if k:
            log_p = log_softmax(g / tau)
            kd = kd + (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    return {"ce": alpha * ce, "kd": beta * tau * tau * kd}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="dgkd")
    ap.add_argument("--student", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--guides", default="")
    ap.add_argument("--labels", required=True)
    ap.add_argument("--keep", required=True)
    ap.add_argument("--tau", type=float, default=5.0)
    ap.add_argument("--alpha", type=float, default=0.0)
    ap.add_argument("--beta", type=float, default=1.0)
    a = ap.parse_args()
    assert a.method == "dgkd"
    s = np.load(a.student).astype(np.float64)
    guides = [np.load(a.teacher).astype(np.float64)]
    guides += [np.load(f).astype(np.float64) for f in a.guides.split(",") if f]
    y = np.load(a.labels).astype(np.int64)
    keep = [int(b) for b in a.keep.split(",")]
    assert len(keep) == len(guides) and all(b in (0, 1) for b in keep)
    n, c = s.shape
    terms = {k: float(v.mean()) for k, v in per_sample(s, guides, keep, y, a.tau, a.alpha, a.beta).items()}
    grad = np.zeros((n, c))
    for j in range(c):
        z = s.astype(np.complex128)
        z[:, j] += 1j * H
        total = sum(per_sample(z, guides, keep, y, a.tau, a.alpha, a.beta).values())
        # d(mean over the batch)/d s[i, j] = Im(total_i) / (h N): row i depends on s[i] only.
        grad[:, j] = total.imag / H / n
    print(json.dumps({"method": "dgkd", "terms": terms, "total": sum(terms.values()), "grad": grad.tolist()}))


if __name__ == "__main__":
    main()
