#!/usr/bin/env python3
"""An independent float64 reference for the 2023-2024 logit methods of `kdlab loss --json --grad`:
ttm, wttm, normkd, dtkd, ctkd. Written from the papers' formulas (conventions settled against the authors'
published code: reductions, Bessel's correction, where gradients flow), in NumPy, without autograd.

    python3 scripts/logit_reference.py --method dtkd --student s.npy --teacher t.npy --labels y.npy [--tau 4 ...]

Prints {"method", "terms": {name: value}, "total", "grad"}; "grad" is the gradient of the total with
respect to the student's logits, by complex-step differentiation: f'(x) = Im f(x + ih) / h with
h = 1e-20, exact to rounding because no difference is taken. Every term is a mean over the batch of
per-sample values that depend on that sample's row only, so the terms are computed per sample and
one column is perturbed in all rows at once (C evaluations, not N·C). Every function below is therefore
written so that it accepts complex logits (max and argmax read the real part; the standard
deviation is the square root of a complex mean of squares, not NumPy's std, which takes |z|).

ctkd's trainable temperature parameter theta gets "var_grad": {"theta": [g]}, the gradient the
optimiser sees through the gradient reversal layer: g = -lambda * d(total)/d(theta), the derivative
again by complex step (theta + ih), lambda from the cosine curriculum at the epoch.
"""
import argparse
import json

import numpy as np

H = 1e-20


def log_softmax(z):
    m = z.real.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def kl_rows(logp, logq):
    """KL(p_i || q_i) per row, from log-probabilities."""
    return (np.exp(logp) * (logp - logq)).sum(axis=1)


def ce(s, y):
    """Per sample."""
    return -log_softmax(s)[np.arange(len(y)), y]


def row_max(z):
    """Each row's largest entry (by its real part), as an (N, 1) column."""
    return z[np.arange(len(z)), z.real.argmax(axis=1)][:, None]


def std_bessel(z):
    """torch.std(z, dim=1, keepdim=True): Bessel-corrected; the variance floored at 1e-14 as kdlab."""
    d = z - z.mean(axis=1, keepdims=True)
    var = (d * d).sum(axis=1, keepdims=True) / max(z.shape[1] - 1, 1)
    return np.sqrt(np.where(var.real < 1e-14, 1e-14, var))


def power_target(t, gamma):
    """TTM's target: the teacher's probabilities raised to gamma and renormalised, and their sum."""
    p = np.exp(log_softmax(t)) ** gamma
    u = p.sum(axis=1)
    return p / u[:, None], u


def terms(m, s, t, y, a, theta=None):
    """Each term per sample (its value is the mean); theta: ctkd's parameter (default its init)."""
    g = lambda v, d: d if v is None else v
    out = {}
    if m in ("ttm", "wttm"):
        tau = g(a.tau, 10.0 if m == "ttm" else 5.0)
        target, u = power_target(t, 1.0 / tau)
        kl = (target * (np.log(target) - log_softmax(s))).sum(axis=1)
        out["ce"] = g(a.alpha, 1.0) * ce(s, y)
        if m == "ttm":
            out["kd"] = g(a.beta, 1.0) * kl
        else:
            out["kd"] = g(a.beta, 4.0) * u * kl
    elif m == "normkd":
        tn = g(a.tau_norm, 2.0)
        tt, ts = tn * std_bessel(t), tn * std_bessel(s)
        kl = kl_rows(log_softmax(t / tt), log_softmax(s / ts))
        out["ce"] = g(a.alpha, 0.1) * ce(s, y)
        out["kd"] = g(a.beta, 0.9) * kl * tt[:, 0] ** 2
    elif m == "dtkd":
        tau, warm = g(a.tau, 4.0), g(a.warmup, 20.0)
        w = min(g(a.epoch, warm) / warm, 1.0) if warm > 0 else 1.0
        ms, mt = row_max(s), row_max(t)
        ok = (ms.real > 0) & (mt.real > 0)
        ts = np.where(ok, 2 * ms / (mt + ms) * tau, tau)
        tt = np.where(ok, 2 * mt / (mt + ms) * tau, tau)
        dt = kl_rows(log_softmax(t / tt), log_softmax(s / ts)) * (tt * ts)[:, 0]
        kd = tau * tau * kl_rows(log_softmax(t / tau), log_softmax(s / tau))
        out["ce"] = ce(s, y)
        out["dtkd"] = w * g(a.alpha, 3.0) * dt
        out["kd"] = w * g(a.beta, 1.0) * kd
    elif m == "ctkd":
        tau = ctkd_tau(a, theta)
        kl = kl_rows(log_softmax(t / tau), log_softmax(s / tau))
        out["ce"] = g(a.alpha, 0.1) * ce(s, y)
        out["kd"] = g(a.beta, 0.9) * tau * tau * kl
    else:
        raise SystemExit("no reference for method " + m)
    return out


def ctkd_theta(a):
    """theta as kdlab holds it: created in float32 (the training dtype), as kdlab loss does too."""
    return float(np.float32(1.0 if a.theta_init is None else a.theta_init))


def ctkd_tau(a, theta):
    """tau = tau_min + tau_range * sigmoid(theta); theta may be complex."""
    g = lambda v, d: d if v is None else v
    theta = ctkd_theta(a) if theta is None else theta
    return g(a.tau_min, 1.0) + g(a.tau_range, 20.0) / (1.0 + np.exp(-theta))


def ctkd_lambda(a):
    """The reversal strength at the (1-based) epoch: a half cosine from lambda_min to lambda_max
    over lambda_epochs epochs; kdlab loss's default epoch is the end of the ramp."""
    g = lambda v, d: d if v is None else v
    ramp, lo, hi = g(a.lambda_epochs, 10.0), g(a.lambda_min, 0.0), g(a.lambda_max, 1.0)
    e = g(a.epoch, ramp)
    progress = 1.0 if ramp <= 0 else min(max(e / ramp, 0.0), 1.0)
    return lo + (hi - lo) * (1.0 - np.cos(np.pi * progress)) / 2.0


def main():
    ap = argparse.ArgumentParser()
    for k in ["method", "student", "teacher", "labels"]:
        ap.add_argument("--" + k, required=True)
    for k in ["tau", "alpha", "beta", "tau-norm", "warmup", "epoch", "tau-min", "tau-range", "theta-init",
              "lambda-min", "lambda-max", "lambda-epochs"]:
        ap.add_argument("--" + k, type=float)
    a = ap.parse_args()
    s = np.load(a.student).astype(np.float64)
    t = np.load(a.teacher).astype(np.float64)
    y = np.load(a.labels).astype(np.int64)
    out = terms(a.method, s, t, y, a)
    grad = np.zeros_like(s)
    for c in range(s.shape[1]):
        sc = s.astype(np.complex128)
        sc[:, c] += 1j * H
        grad[:, c] = sum(terms(a.method, sc, t, y, a).values()).imag / H / len(y)
    res = {
        "method": a.method,
        "terms": {k: float(v.mean()) for k, v in out.items()},
        "total": float(sum(v.mean() for v in out.values())),
        "grad": grad.tolist(),
    }
    if a.method == "ctkd":
        theta = ctkd_theta(a) + 1j * H
        d_theta = sum(v.mean() for v in terms(a.method, s, t, y, a, theta).values()).imag / H
        res["var_grad"] = {"theta": [-ctkd_lambda(a) * d_theta]}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
