#!/usr/bin/env python3
"""An independent float64 reference for the feature methods of `kdlab loss --json --grad`: at
(attention transfer), sdd (scale decoupled distillation) and reviewkd (knowledge review). Written
from the papers' formulas, the conventions settled against the authors' published code (mdistiller's
AT and ReviewKD; SDD-CVPR2024's SPP and sdd_kd_loss: which scales, pooled from what, which regions
weigh more, the reductions), in NumPy, without autograd. ReviewKD's fusion modules are initialised
inside kdlab: `kdlab loss --modules` prints them and `--modules FILE` reads that JSON here.

    python3 scripts/feature_reference.py --method at --student s.npy --teacher t.npy --labels y.npy \
        --student-tap stage1=s1.npy --teacher-tap stage1=t1.npy ... [--stages 1 --power 2 ...]

Prints {"method", "terms", "total", "grad", "tap_grad", "complementary"}: "grad" is the gradient of
the total with respect to the student's logits, "tap_grad" with respect to each student tap (N rows,
each the sample's tap flattened), both by complex-step differentiation, f'(x) = Im f(x + ih) / h with
h = 1e-20, exact to rounding because no difference is taken. Every term is a mean over the batch of
per-sample values that depend on that sample's inputs only, so one entry is perturbed in all samples
at once (not ReviewKD's: its BatchNorm, in training mode, couples the samples, so one (sample,
entry) is perturbed at a time). Every function below therefore accepts complex inputs: |x| is continued analytically as
x·sign(Re x), a norm is the square root of a complex sum of squares, argmax reads the real part.
"complementary" is the fraction of SDD's (region, sample) pairs that are complementary.
"""
import argparse
import json
import math

import numpy as np

H = 1e-20


def log_softmax(z):
    m = z.real.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def ce(s, y):
    """Per sample."""
    return -log_softmax(s)[np.arange(len(y)), y]


def adaptive_avg_pool(f, oh, ow):
    """PyTorch's adaptive average pooling of (N, C, H, W): bin i spans [floor(i·H/oh), ceil((i+1)·H/oh))."""
    n, c, h, w = f.shape
    out = np.zeros((n, c, oh, ow), dtype=f.dtype)
    for i in range(oh):
        h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        for j in range(ow):
            w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            out[:, :, i, j] = f[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out


def attention(f, p):
    """Q = a / max(||a||, 1e-12), a = mean over channels of |f|^p, flattened: (N, H·W)."""
    a = (f * np.sign(f.real)) ** p
    a = a.mean(axis=1).reshape(len(f), -1)
    norm = np.sqrt((a * a).sum(axis=1, keepdims=True))
    return a / np.where(norm.real < 1e-12, 1e-12, norm)


def at_terms(s, y, st, tt, a):
    g = lambda v, d: d if v is None else v
    p, k = g(a.power, 2.0), int(g(a.stages, 3))
    feat = 0
    for i in range(1, k + 1):
        fs, ft = st["stage%d" % i], tt["stage%d" % i]
        h, w = min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3])
        if fs.shape[2:] != (h, w):
            fs = adaptive_avg_pool(fs, h, w)
        if ft.shape[2:] != (h, w):
            ft = adaptive_avg_pool(ft, h, w)
        # The stage's mean over samples and positions, as a per-sample value whose mean it is.
        feat = feat + ((attention(fs, p) - attention(ft, p)) ** 2).mean(axis=1)
    return {"ce": g(a.ce_weight, 1.0) * ce(s, y), "feat": g(a.feat_weight, 1000.0) * feat}, None


def regions(m, finest):
    """(N, C, H, W) → (N, R, C): the map pooled to finest × finest, the coarser scales pooled from that."""
    n, c = m.shape[:2]
    top = adaptive_avg_pool(m, finest, finest)
    out, s = [], 1
    while s <= finest:
        r = top if s == finest else adaptive_avg_pool(top, s, s)
        out.append(r.reshape(n, c, s * s).transpose(0, 2, 1))
        s *= 2
    return np.concatenate(out, axis=1)


def sdd_terms(s, y, st, tt, a):
    g = lambda v, d: d if v is None else v
    tau, alpha, beta = g(a.tau, 4.0), g(a.alpha, 0.1), g(a.beta, 0.9)
    comp, finest = g(a.comp_weight, 2.0), int(g(a.max_scale, 4))
    rs, rt = regions(st["logit_map"], finest), regions(tt["logit_map"], finest)
    n, r, c = rs.shape
    ls = log_softmax(rs.reshape(n * r, c) / tau).reshape(n, r, c)
    lt = log_softmax(rt.reshape(n * r, c) / tau).reshape(n, r, c)
    kl = tau * tau * (np.exp(lt) * (lt - ls)).sum(axis=2)
    right = rt.real.argmax(axis=2) == y[:, None]
    complementary = right != right[:, :1]
    wts = np.where(complementary, comp, 1.0)
    return {"ce": alpha * ce(s, y), "kd": beta * (wts * kl).mean(axis=1)}, float(complementary.mean())


def conv(x, w, b=None):
    """A stride-1 convolution of (N, C, H, W) by (O, C, k, k), zero-padded by k // 2."""
    k = w.shape[2]
    p = k // 2
    n, c, h, wd = x.shape
    xp = np.zeros((n, c, h + 2 * p, wd + 2 * p), dtype=np.result_type(x, w))
    xp[:, :, p:p + h, p:p + wd] = x
    out = 0
    for i in range(k):
        for j in range(k):
            out = out + np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return out if b is None else out + b[None, :, None, None]


def batch_norm(x, g, b):
    """Training mode: the batch's mean and biased variance per channel, eps 1e-5."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * g[None, :, None, None] + b[None, :, None, None]


def nearest(x, h, w):
    """F.interpolate(mode="nearest") to (h, w): source index floor(i·in/out)."""
    ih, iw = x.shape[2:]
    if (ih, iw) == (h, w):
        return x
    rows = [(i * ih) // h for i in range(h)]
    cols = [(j * iw) // w for j in range(w)]
    return x[:, :, rows][:, :, :, cols]


def hcl(fs, ft):
    h = fs.shape[2]
    loss = ((fs - ft) ** 2).mean()
    cnt, tot = 1.0, 1.0
    for l in [4, 2, 1]:
        if l >= h:
            continue
        cnt /= 2.0
        loss = loss + ((adaptive_avg_pool(fs, l, l) - adaptive_avg_pool(ft, l, l)) ** 2).mean() * cnt
        tot += cnt
    return loss / tot


def as_map(t):
    return t.reshape(t.shape[0], t.shape[1], 1, 1) if t.ndim == 2 else t


def reviewkd_terms(s, y, st, tt, a):
    """The ABF chain from the deepest level (the embedding) to stage1, HCL against the teacher's."""
    g = lambda v, d: d if v is None else v
    k, preact = int(g(a.stages, 3)), g(a.teacher_preact, 1.0) != 0
    mods = a.modules_values
    w = g(a.epoch, g(a.warmup, 20.0))
    warm = g(a.warmup, 20.0)
    w = min(w / warm, 1.0) if warm > 0 else 1.0
    s_names = ["embedding"] + ["stage%d" % i for i in range(k, 0, -1)]
    t_names = ["embedding"] + ["stage%d%s" % (i, "_preact" if preact else "") for i in range(k, 0, -1)]
    deeper, review = None, 0
    for lvl, (sn, tn) in enumerate(zip(s_names, t_names)):
        m = lambda name: mods["abf%d.%s" % (lvl, name)]
        f, ft = as_map(st[sn]), as_map(tt[tn])
        x = batch_norm(conv(f, m("conv1.weight")), m("bn1.weight"), m("bn1.bias"))
        if deeper is not None:
            n, _, h, wd = x.shape
            yy = nearest(deeper, h, wd)
            z = conv(np.concatenate([x, yy], axis=1), m("att.weight"), m("att.bias"))
            z = 1 / (1 + np.exp(-z))
            x = x * z[:, 0:1] + yy * z[:, 1:2]
        x = nearest(x, ft.shape[2], ft.shape[3])
        out = batch_norm(conv(x, m("conv2.weight")), m("bn2.weight"), m("bn2.bias"))
        review = review + hcl(out, ft)
        deeper = x
    n = len(y)
    # BatchNorm couples the samples: the review term is one number (here repeated per sample, so
    # that its mean is that number).
    return {"ce": g(a.ce_weight, 1.0) * ce(s, y), "feat": np.full(n, w * g(a.feat_weight, 5.0) * review)}, None


TERMS = {"at": at_terms, "sdd": sdd_terms, "reviewkd": reviewkd_terms}
# Methods whose terms are means of per-sample values that depend on that sample alone (so one
# entry can be perturbed in every sample at once); ReviewKD's BatchNorm couples the samples.
SEPARABLE = {"at", "sdd"}


def read_taps(given):
    out = {}
    for item in given or []:
        name, path = item.split("=", 1)
        out[name] = np.load(path).astype(np.float64)
    return out


def main():
    ap = argparse.ArgumentParser()
    for k in ["method", "student", "teacher", "labels"]:
        ap.add_argument("--" + k, required=True)
    ap.add_argument("--student-tap", action="append")
    ap.add_argument("--teacher-tap", action="append")
    for k in ["power", "stages", "ce-weight", "feat-weight", "tau", "alpha", "beta", "comp-weight", "max-scale",
              "warmup", "epoch"]:
        ap.add_argument("--" + k, type=float)
    ap.add_argument("--teacher-preact", type=lambda v: {"true": 1.0, "false": 0.0}[v])
    ap.add_argument("--modules", help="the JSON `kdlab loss --modules` printed: the method's variables")
    a = ap.parse_args()
    a.modules_values = {}
    if a.modules:
        with open(a.modules) as fh:
            mods = json.load(fh)["modules"]
        a.modules_values = {k: np.array(v["values"], dtype=np.float64).reshape(v["shape"]) for k, v in mods.items()}
    s = np.load(a.student).astype(np.float64)
    y = np.load(a.labels).astype(np.int64)
    st, tt = read_taps(a.student_tap), read_taps(a.teacher_tap)
    f = TERMS[a.method]
    out, comp = f(s, y, st, tt, a)
    n = len(y)
    total = lambda s_, st_: sum(f(s_, y, st_, tt, a)[0].values())
    grad = np.zeros_like(s)
    for c in range(s.shape[1]):
        sc = s.astype(np.complex128)
        sc[:, c] += 1j * H
        grad[:, c] = total(sc, st).imag / H / n
    tap_grad = {}
    for name, x in st.items():
        flat = x.reshape(n, -1)
        gr = np.zeros_like(flat)
        for j in range(flat.shape[1]):
            if a.method in SEPARABLE:
                xc = flat.astype(np.complex128)
                xc[:, j] += 1j * H
                gr[:, j] = total(s, dict(st, **{name: xc.reshape(x.shape)})).imag / H / n
                continue
            for i in range(n):
                xc = flat.astype(np.complex128)
                xc[i, j] += 1j * H
                gr[i, j] = total(s, dict(st, **{name: xc.reshape(x.shape)})).mean().imag / H
        tap_grad[name] = gr.tolist()
    res = {
        "method": a.method,
        "terms": {k: float(v.real.mean()) for k, v in out.items()},
        "total": float(sum(v.real.mean() for v in out.values())),
        "grad": grad.tolist(),
        "tap_grad": tap_grad,
        "complementary": comp,
    }
    assert all(math.isfinite(v) for v in res["terms"].values())
    print(json.dumps(res))


if __name__ == "__main__":
    main()
