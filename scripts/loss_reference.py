#!/usr/bin/env python3
"""An independent NumPy reference for `kdlab loss --json`, written from the formulas in the README.

    python3 scripts/loss_reference.py --method dkd --student s.npy --teacher t.npy --labels y.npy [--tau 4 ...]

Prints {"method", "terms": {name: value}, "total"} in float64 (ISATS: τ2 by brute force on a fine
grid, also printed per sample; the rules `bounded` and `order`, not `ts`).
"""
import argparse
import json

import numpy as np


def log_softmax(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def kl(logp, logq):
    p = np.exp(logp)
    return float(np.mean(np.where(p > 0, p * (logp - logq), 0.0).sum(axis=1)))


def ce(s, y):
    return float(-np.mean(log_softmax(s)[np.arange(len(y)), y]))


def others(z, y):
    n, c = z.shape
    mask = np.ones_like(z, dtype=bool)
    mask[np.arange(n), y] = False
    return z[mask].reshape(n, c - 1)


def log_nongt(z, y, tau):
    return log_softmax(others(z, y) / tau)


def log_binary(z, y, tau):
    lp = log_softmax(z / tau)
    py = np.exp(lp[np.arange(len(y)), y])
    return np.log(np.stack([py, 1 - py], axis=1))


def standardize(z):
    return (z - z.mean(axis=1, keepdims=True)) / (z.std(axis=1, keepdims=True) + 1e-7)


def ats_logits(t, y, tau1, tau2):
    z = t / np.asarray(tau2).reshape(-1, 1)
    z[np.arange(len(y)), y] = t[np.arange(len(y)), y] / tau1
    return z


def nongt_var(t, y, tau1, tau2):
    p = np.exp(log_softmax(ats_logits(t, y, tau1, tau2)))
    return others(p, y).var(axis=1)


def pearson_rows(a, b):
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def main():
    ap = argparse.ArgumentParser()
    for k in ["method", "student", "teacher", "labels"]:
        ap.add_argument("--" + k, required=True)
    for k in ["tau", "alpha", "beta", "gamma", "student-tau", "tau1", "tau2", "tau2-min", "lambda", "warmup", "epoch", "margin"]:
        ap.add_argument("--" + k, type=float)
    ap.add_argument("--standardize", action="store_true")
    ap.add_argument("--center-logits", action="store_true")
    ap.add_argument("--rule", default="order")
    a = ap.parse_args()
    s = np.load(a.student).astype(np.float64)
    t = np.load(a.teacher).astype(np.float64)
    y = np.load(a.labels).astype(np.int64)
    g = lambda v, d: d if v is None else v
    m, out, extra = a.method, {}, {}
    if m == "ce":
        out["ce"] = ce(s, y)
    elif m == "kd":
        tau = g(a.tau, 4.0)
        st = g(a.student_tau, tau)
        ss, tt = (standardize(s), standardize(t)) if a.standardize else (s, t)
        out["ce"] = g(a.alpha, 0.1) * ce(s, y)
        out["kd"] = g(a.beta, 0.9) * st * st * kl(log_softmax(tt / tau), log_softmax(ss / st))
    elif m in ("ats", "isats"):
        tau1, st, lam = g(a.tau1, 4.0), g(a.student_tau, 1.0), g(a.__dict__["lambda"], 0.5)
        if a.center_logits:
            t = t - t.mean(axis=1, keepdims=True)
        if m == "ats":
            tau2 = np.full(len(y), g(a.tau2, 2.0))
        else:
            if a.rule not in ("bounded", "order"):
                raise SystemExit(f"no reference for rule {a.rule}")
            lo = g(a.tau2_min, 0.5)
            grid = np.linspace(lo, tau1, 20001)
            margin = g(a.margin, 1e-3)  # `order`: log p_y - max_c log p_c >= margin in the target
            tau2 = []
            for i in range(len(y)):
                # The row repeated once per candidate τ2: the variance and the target at every grid point.
                rows, ys = np.repeat(t[i:i + 1], len(grid), 0), np.full(len(grid), y[i])
                var = nongt_var(rows, ys, tau1, grid)
                if a.rule == "order":
                    z = ats_logits(rows, ys, tau1, grid)
                    gap = z[:, y[i]] - others(z, ys).max(axis=1)
                    if gap[-1] < margin:  # not right by the margin even at τ2 = τ1: the fallback
                        tau2.append(tau1)
                        continue
                    var = np.where(gap >= margin, var, -np.inf)
                tau2.append(grid[np.argmax(var)])
            tau2 = np.array(tau2)
            extra["tau2"] = tau2.tolist()
        out["ce"] = (1 - lam) * ce(s, y)
        out["kd"] = lam * st * st * kl(log_softmax(ats_logits(t, y, tau1, tau2)), log_softmax(s / st))
    elif m == "nckd":
        tau = g(a.tau, 4.0)
        ss, tt = (standardize(s), standardize(t)) if a.standardize else (s, t)
        out["ce"] = g(a.alpha, 1.0) * ce(s, y)
        out["nckd"] = g(a.beta, 8.0) * tau * tau * kl(log_nongt(tt, y, tau), log_nongt(ss, y, tau))
    elif m == "dkd":
        tau, warm = g(a.tau, 4.0), g(a.warmup, 20.0)
        w = min(g(a.epoch, warm) / warm, 1.0) if warm > 0 else 1.0
        ss, tt = (standardize(s), standardize(t)) if a.standardize else (s, t)
        out["ce"] = ce(s, y)
        out["tckd"] = w * g(a.alpha, 1.0) * tau * tau * kl(log_binary(tt, y, tau), log_binary(ss, y, tau))
        out["nckd"] = w * g(a.beta, 8.0) * tau * tau * kl(log_nongt(tt, y, tau), log_nongt(ss, y, tau))
    elif m == "dist":
        tau = g(a.tau, 4.0)
        ps, pt = np.exp(log_softmax(s / tau)), np.exp(log_softmax(t / tau))
        out["ce"] = g(a.alpha, 1.0) * ce(s, y)
        out["inter"] = g(a.beta, 2.0) * tau * tau * (1 - pearson_rows(ps, pt).mean())
        out["intra"] = g(a.gamma, 2.0) * tau * tau * (1 - pearson_rows(ps.T, pt.T).mean())
    else:
        raise SystemExit("unknown method " + m)
    res = {"method": m, "terms": {k: float(v) for k, v in out.items()}, "total": float(sum(out.values()))}
    if extra:
        res["per_sample"] = extra
    print(json.dumps(res))


if __name__ == "__main__":
    main()
