"""How well a top-k teacher target, rebuilt with one fill logit for the C−k missing classes,
matches the full softened target: mean KL(p_τ(full) ‖ p_τ(rebuilt)) over a set of teacher logits,
for each fill rule, k and τ. Chooses the fill rule of kdlab's top-k cache (src/train/teachers/topk_cache.rs).

    kdlab logits --run RUN --split train --out t.npy
    python scripts/topk_fidelity.py t.npy [more.npy ...]

Rules (each stores at most one extra number per sample):
  mass@1   fill = log(Σ_tail e^l) − log(C−k): the missing probability at τ = 1 spread evenly (FKD's
           label smoothing of the remaining mass); the top-k probabilities at τ = 1 are exact.
  mass@4   the same at τ = 4: fill = 4·(log Σ_tail e^(l/4) − log(C−k)).
  mean     fill = the mean of the missing logits.
  drop     fill = −∞: the top-k renormalised (no extra number).
  oracle   a different fill for each τ (mass@τ): the best one fill can do at that τ.
"""
import sys
import numpy as np


def lse(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def log_softmax(x, tau):
    z = x / tau
    return z - lse(z)[:, None]


def rebuild(logits, k, fill):
    order = np.argsort(-logits, axis=1, kind="stable")
    out = np.empty_like(logits)
    out[:] = fill[:, None]
    rows = np.arange(len(logits))[:, None]
    out[rows, order[:, :k]] = logits[rows, order[:, :k]]
    return out


def fills(logits, k, tau):
    c = logits.shape[1]
    tail = -np.sort(-logits, axis=1)[:, k:]
    mass = lambda t: t * (lse(tail / t) - np.log(c - k))
    return {
        "mass@1": mass(1.0),
        "mass@4": mass(4.0),
        "mean": tail.mean(axis=1),
        "drop": np.full(len(logits), -np.inf),
        "oracle": mass(tau),
    }


def main(paths):
    logits = np.concatenate([np.load(p).astype(np.float64) for p in paths])
    # f16 storage, as the cache does
    logits16 = logits.astype(np.float16).astype(np.float64)
    taus = [1, 2, 4, 8]
    print(f"{len(logits)} samples × {logits.shape[1]} classes from {', '.join(paths)}")
    print("mean KL(full ‖ rebuilt) at τ (nats); f16 storage of the kept logits and the fill")
    print("| k | rule | " + " | ".join(f"τ={t}" for t in taus) + " |")
    print("|---|---|" + "---|" * len(taus))
    for k in [1, 2, 3, 5]:
        for rule in ["mass@1", "mass@4", "mean", "drop", "oracle"]:
            row = []
            for t in taus:
                fill = fills(logits, k, t)[rule].astype(np.float16).astype(np.float64)
                p = log_softmax(logits, t)
                q = log_softmax(rebuild(logits16, k, fill), t)
                row.append((np.exp(p) * (p - q)).sum(axis=1).mean())
            print(f"| {k} | {rule} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    p = log_softmax(logits, 4)
    q = log_softmax(logits16, 4)
    print(f"f16 alone (k = C), τ=4: {(np.exp(p) * (p - q)).sum(axis=1).mean():.2e}")


if __name__ == "__main__":
    main(sys.argv[1:])
