#!/usr/bin/env python3
"""Re-derives the size-versus-fit study's claims from a report's CSV files alone.

    python3 scripts/fit_checks.py REPORT_DIR [--student mlp_32x1] [--tau 4]

REPORT_DIR holds `results.csv` (one row per run: the student trained alone) and
`fit_<student>.csv` (one row per distillation run with its teacher's checkpoint and fit), as
`kdlab report` writes them. Every statistic is recomputed from the per-run rows (mean and sample
standard deviation over seeds); nothing of kdlab's own summaries is read. The checks:

1. per fit level, the KD student (τ chosen per teacher and level on mean validation accuracy)
   against teacher size: Spearman ρ, and every pair where a larger teacher teaches worse than a
   smaller one by more than twice the larger std, with whether the larger one is the more
   accurate on the test set (the paper's case);
2. across every teacher checkpoint (teacher × level), Spearman ρ of the KD student's mean final
   accuracy with the teacher's test NLL, validation NLL, test accuracy, test ECE, σ(q) on the
   transfer set and size; and of the student's test cross-entropy with the teacher's test NLL;
3. calibration: each final teacher's temperature, and KD τ = 4 from it against the plain one;
4. KD (tuned), ATS, the ATS (4, 4) control and ISATS against the student alone, per point.

Standard library only, so that it runs anywhere.
"""
import argparse
import csv
import os
import statistics
from collections import defaultdict


def stat(v):
    m = statistics.fmean(v)
    s = statistics.stdev(v) if len(v) > 1 else 0.0
    return m, s, len(v)


def ranks(x):
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den if den else float("nan")


def pct(s):
    return f"{100 * s[0]:.2f} ± {100 * s[1]:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report_dir")
    ap.add_argument("--student", default="mlp_32x1")
    ap.add_argument("--tau", type=float, default=4.0)
    a = ap.parse_args()
    rows = list(csv.DictReader(open(os.path.join(a.report_dir, f"fit_{a.student}.csv"))))
    alone = [
        float(r["final_acc"])
        for r in csv.DictReader(open(os.path.join(a.report_dir, "results.csv")))
        if r["kind"] == "student" and r["student"] == a.student and r["method"] == "ce"
    ]
    out = []
    p = out.append
    f = lambda r, k: float(r[k]) if r[k] != "" else float("nan")
    base = stat(alone) if alone else None
    if base:
        p(f"Student `{a.student}` alone: {pct(base)} (n = {base[2]}), final epoch.\n")

    # Group runs: (setting, teacher, level) -> runs.
    groups = defaultdict(list)
    for r in rows:
        groups[(r["setting"], r["teacher"], r["level"])].append(r)
    # KD tuned per (teacher, level) on mean validation accuracy.
    kd = {}
    for (setting, t, lvl), runs in groups.items():
        if runs[0]["method"] != "kd":
            continue
        v = statistics.fmean(f(r, "val_acc") for r in runs)
        if (t, lvl) not in kd or v > kd[(t, lvl)][0]:
            kd[(t, lvl)] = (v, setting, runs)
    points = []
    for (t, lvl), (v, setting, runs) in kd.items():
        r0 = runs[0]
        points.append(
            dict(
                teacher=t,
                level=lvl,
                setting=setting,
                params=int(r0["teacher_params"]),
                epoch=r0["teacher_epoch"] or "last",
                fit=r0["fit_value"],
                T=f(r0, "temperature"),
                t_acc=f(r0, "teacher_test_acc"),
                t_nll=f(r0, "teacher_test_nll"),
                t_vnll=f(r0, "teacher_val_nll"),
                t_ece=f(r0, "teacher_test_ece"),
                sigma=f(r0, f"sigma_transfer_tau{int(a.tau)}"),
                final=stat([f(r, "final_acc") for r in runs]),
                best=stat([f(r, "best_acc") for r in runs]),
                ce=stat([f(r, "final_test_loss") for r in runs]),
            )
        )
    points.sort(key=lambda q: (q["level"], q["params"]))

    p("## 1. KD (τ tuned on validation) against teacher size at each fit level\n")
    p("| level | teacher | params | epoch | fit value | T | teacher test acc | test NLL | KD τ | final | best |")
    p("|---|---|---|---|---|---|---|---|---|---|---|")
    for q in points:
        p(
            f"| {q['level']} | {q['teacher']} | {q['params']} | {q['epoch']} | {q['fit']} | {q['T']:.3f} | "
            f"{100 * q['t_acc']:.2f} | {q['t_nll']:.4f} | {q['setting']} | {pct(q['final'])} | {pct(q['best'])} |"
        )
    p("")
    levels = sorted({q["level"] for q in points})
    tally = {"final": [0, 0], "best": [0, 0]}
    for lvl in levels:
        at = [q for q in points if q["level"] == lvl]
        if len(at) < 2:
            continue
        for which in ["final", "best"]:
            rho = spearman([q["params"] for q in at], [q[which][0] for q in at])
            worse = []
            for big in at:
                for small in at:
                    if big["params"] <= small["params"]:
                        continue
                    drop = small[which][0] - big[which][0]
                    if drop > 2 * max(small[which][1], big[which][1]):
                        more_acc = big["t_acc"] > small["t_acc"]
                        tally[which][0] += 1
                        tally[which][1] += more_acc
                        worse.append(
                            f"{big['teacher']} < {small['teacher']} by {100 * drop:.2f}"
                            f" (larger teacher {'MORE' if more_acc else 'less'} accurate: "
                            f"{100 * big['t_acc']:.2f} vs {100 * small['t_acc']:.2f})"
                        )
            p(f"- **{lvl}**, {which} epoch: Spearman ρ(size, student) = {rho:+.2f}; larger teacher teaching worse by > 2 std: "
              + ("; ".join(worse) if worse else "none"))
    for which, (n, more) in tally.items():
        p(f"- Over all levels ({which} epoch): {n} (larger, smaller) pairs where the larger teacher teaches worse by > 2 std; "
          f"in {more} of them the larger teacher is the more accurate on the test set (the paper's case).")
    p("")

    p("## 2. Across every teacher checkpoint: what predicts the KD student\n")
    ys = [q["final"][0] for q in points]
    p(f"{len(points)} points (teacher × level, calibrated final teachers included), final-epoch mean over seeds.\n")
    p("| teacher number | Spearman ρ with the KD student |")
    p("|---|---|")
    for name, key in [
        ("test NLL", "t_nll"),
        ("validation NLL", "t_vnll"),
        ("test accuracy", "t_acc"),
        ("test ECE", "t_ece"),
        (f"σ(q) on the transfer set, τ = {a.tau:g}", "sigma"),
        ("parameters", "params"),
    ]:
        p(f"| {name} | {spearman([q[key] for q in points], ys):+.2f} |")
    uncal = [q for q in points if "calibrated" not in q["level"]]
    p("")
    p(f"Without the calibrated teachers ({len(uncal)} points): ρ(test NLL) = "
      f"{spearman([q['t_nll'] for q in uncal], [q['final'][0] for q in uncal]):+.2f}, ρ(test acc) = "
      f"{spearman([q['t_acc'] for q in uncal], [q['final'][0] for q in uncal]):+.2f}.")
    p(f"Student test cross-entropy against teacher test NLL: Spearman ρ = "
      f"{spearman([q['t_nll'] for q in points], [q['ce'][0] for q in points]):+.2f}.\n")

    p("## 3. Calibrated teachers (final checkpoint, one T fitted on validation NLL)\n")
    plain = {(g[1]): runs for g, runs in groups.items() if g[0] == "kd τ=4" and g[2] == "final"}
    cal = {(g[1]): runs for g, runs in groups.items() if g[0] == "kd" and g[2] == "final, calibrated"}
    if cal:
        p("| teacher | T | KD τ=4 plain | KD τ=4 calibrated | difference |")
        p("|---|---|---|---|---|")
        for t in sorted(cal, key=lambda t: int(cal[t][0]["teacher_params"])):
            c = stat([f(r, "final_acc") for r in cal[t]])
            pl = stat([f(r, "final_acc") for r in plain.get(t, [])]) if plain.get(t) else None
            diff = f"{100 * (c[0] - pl[0]):+.2f}" if pl else "-"
            p(f"| {t} | {f(cal[t][0], 'temperature'):.3f} | {pct(pl) if pl else '-'} | {pct(c)} | {diff} |")
    p("")

    p("## 4. Against the student alone\n")
    if base:
        for q in points:
            gain = q["final"][0] - base[0]
            sig = gain > 2 * max(q["final"][1], base[1])
            q["gain"] = (gain, sig)
        n_sig = sum(1 for q in points if q["gain"][1])
        p(f"KD (tuned) beats the student alone by > 2 std at {n_sig} of {len(points)} points; "
          f"margins {100 * min(q['gain'][0] for q in points):+.2f} to {100 * max(q['gain'][0] for q in points):+.2f} points.")
        # The remedies (ATS, its (4, 4) control, ISATS): how far each sits from KD and from the
        # student alone, and how much it still follows the teacher's fit.
        ats = defaultdict(list)
        for (setting, t, lvl), runs in groups.items():
            if runs[0]["method"] in ("ats", "isats"):
                ats[setting].append((t, lvl, stat([f(r, "final_acc") for r in runs]), f(runs[0], "teacher_test_nll")))
        for setting, v in sorted(ats.items()):
            better = sum(1 for t, lvl, s, _ in v if (t, lvl) in kd and s[0] > stat([f(r, "final_acc") for r in kd[(t, lvl)][2]])[0])
            above = sum(1 for _, _, s, _ in v if s[0] - base[0] > 2 * max(s[1], base[1]))
            rho = spearman([nll for *_, nll in v], [s[0] for _, _, s, _ in v])
            p(f"- `{setting}`: {len(v)} points, above KD (tuned) at {better}; against the student alone "
              f"{100 * (min(s[0] for _, _, s, _ in v) - base[0]):+.2f} to {100 * (max(s[0] for _, _, s, _ in v) - base[0]):+.2f} points, "
              f"above it by > 2 std at {above}; Spearman ρ with the teacher's test NLL {rho:+.2f}.")
        # The control that could refute "the asymmetry helps": a remedy that does no better than
        # ATS's loss form with τ1 = τ2 owes its gain over KD to the form, not to the asymmetry.
        control = {(t, lvl): s for t, lvl, s, _ in ats.get("ats control (4, 4)", [])}
        if control:
            p("\n## 5. The remedies against the ATS (4, 4) control\n")
            for setting, v in sorted(ats.items()):
                if setting == "ats control (4, 4)":
                    continue
                pairs = [(s, control[(t, lvl)]) for t, lvl, s, _ in v if (t, lvl) in control]
                if not pairs:
                    continue
                diffs = [100 * (s[0] - c[0]) for s, c in pairs]
                better = sum(1 for s, c in pairs if s[0] - c[0] > 2 * max(s[1], c[1]))
                worse = sum(1 for s, c in pairs if c[0] - s[0] > 2 * max(s[1], c[1]))
                p(f"- `{setting}` minus the control: {len(pairs)} points, mean {sum(diffs) / len(diffs):+.2f}, "
                  f"{min(diffs):+.2f} to {max(diffs):+.2f} points; above it by > 2 std at {better}, below it at {worse}.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
