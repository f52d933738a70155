#!/usr/bin/env python3
"""An independent NumPy reference for `kdlab probe --logits ... --labels ... --json`.

Written from the definitions in the README (not from kdlab's Rust code), in float64, without
streaming. Prints the same JSON layout, so the two can be compared key by key:

    python3 scripts/probe_reference.py --labels y.npy --tau 0.5,1,4 a.npy b.npy > ref.json
"""
import argparse
import json
import os

import numpy as np


def log_softmax(z):
    m = z.max(axis=1, keepdims=True)
    s = z - m
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def teacher(name, f, y, taus):
    n, c = f.shape
    rows = np.arange(n)
    mask = np.ones_like(f, dtype=bool)
    mask[rows, y] = False
    others = f[mask].reshape(n, c - 1)
    out = {
        "name": name,
        "classes": c,
        "samples": n,
        "accuracy": float(np.mean(f.argmax(axis=1) == y)),
        "logit_gap": float(np.mean(f[rows, y] - others.max(axis=1))),
        "logit_nongt_std": float(np.mean(others.std(axis=1))),
        "per_tau": [],
    }
    correct = f.argmax(axis=1) == y
    for tau in taus:
        logp = log_softmax(f / tau)
        p = np.exp(logp)
        q = p[mask].reshape(n, c - 1)
        # q-hat: the softmax of the non-GT logits alone.
        logq = log_softmax(others / tau)
        qh = np.exp(logq)
        ent = -(np.where(qh > 0, qh * logq, 0.0)).sum(axis=1)
        conf = p.max(axis=1)
        ece = 0.0
        for b in range(15):
            inb = (conf > b / 15) & (conf <= (b + 1) / 15)
            if b == 0:
                inb |= conf <= 0
            if inb.any():
                ece += inb.mean() * abs(correct[inb].mean() - conf[inb].mean())
        out["per_tau"].append({
            "tau": tau,
            "p_true": float(p[rows, y].mean()),
            "nongt_mean": float(q.mean(axis=1).mean()),
            "nongt_std": float(q.std(axis=1).mean()),
            "nongt_var": float(q.var(axis=1).mean()),
            "nongt_entropy": float(ent.mean()),
            "nll": float(-logp[rows, y].mean()),
            "ece": float(ece),
        })
    nlls = [t["nll"] for t in out["per_tau"]]
    out["best_tau_nll"] = taus[int(np.argmin(nlls))]
    return out


def rank_average(x):
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(a, b):
    a = a - a.mean()
    b = b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return None if d == 0 else float((a * b).sum() / d)


def kendall_b(a, b):
    n = len(a)
    conc = disc = ta = tb = 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ta += 1
            elif db == 0:
                tb += 1
            elif da * db > 0:
                conc += 1
            else:
                disc += 1
    d = np.sqrt((conc + disc + ta) * (conc + disc + tb))
    return None if d == 0 else (conc - disc) / d


def affinity(f, y, tau):
    n, c = f.shape
    a = np.full((c, c), np.nan)
    for k in range(c):
        sel = y == k
        if not sel.any():
            continue
        z = f[sel] / tau
        z[:, k] = -np.inf
        a[k] = np.exp(log_softmax(z)).mean(axis=0)
        a[k, k] = np.nan
    return a


def pair(na, fa, nb, fb, y, taus):
    n, c = fa.shape
    sp, kd, top1, top5 = [], [], [], []
    k = min(5, c - 1)
    for i in range(n):
        keep = np.arange(c) != y[i]
        xa, xb = fa[i][keep], fb[i][keep]
        r = pearson(rank_average(xa), rank_average(xb)) if c > 2 else None
        if r is not None:
            sp.append(r)
        t = kendall_b(xa, xb)
        if t is not None:
            kd.append(t)
        top1.append(xa.argmax() == xb.argmax())
        sa = set(np.argsort(-xa, kind="stable")[:k])
        sb = set(np.argsort(-xb, kind="stable")[:k])
        top5.append(len(sa & sb) / k)
    per_tau = []
    for tau in taus:
        aa, ab = affinity(fa, y, tau), affinity(fb, y, tau)
        ok = np.isfinite(aa) & np.isfinite(ab)
        per_tau.append({"tau": tau, "affinity_corr": pearson(aa[ok], ab[ok]) if ok.sum() >= 2 else None})
    return {
        "a": na, "b": nb,
        "spearman": float(np.mean(sp)) if sp else None,
        "kendall": float(np.mean(kd)) if kd else None,
        "top1_agree": float(np.mean(top1)),
        "top5_overlap": float(np.mean(top5)),
        "per_tau": per_tau,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", required=True)
    ap.add_argument("--tau", required=True)
    ap.add_argument("logits", nargs="+")
    a = ap.parse_args()
    taus = [float(t) for t in a.tau.split(",")]
    y = np.load(a.labels).astype(np.int64)
    fs = [(os.path.splitext(os.path.basename(p))[0], np.load(p).astype(np.float64)) for p in a.logits]
    out = {
        "teachers": [teacher(n, f, y, taus) for n, f in fs],
        "pairs": [pair(fs[i][0], fs[i][1], fs[j][0], fs[j][1], y, taus)
                  for i in range(len(fs)) for j in range(i + 1, len(fs))],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
