#!/usr/bin/env python3
"""Re-derives the capacity-mismatch study's claims from a report's CSV files alone.

    python3 scripts/mismatch_checks.py REPORT_DIR [--student mlp_32x1] [--tau 4]

REPORT_DIR holds `results.csv` (one row per run) and `teachers.csv` (the teachers' probe numbers),
as `kdlab report` writes them. Nothing here reads kdlab's own summaries: every statistic is
recomputed from the per-run rows (mean and sample standard deviation over seeds, final epoch).
The checks are those of the study's question (docs/fashion-mnist-mismatch/):

1. KD, with its temperature chosen per teacher on the validation split, beats the student trained
   alone by more than twice the larger of the two standard deviations, for at least one teacher;
2. the KD student's accuracy against teacher size is not monotone increasing *within a family*:
   some larger teacher of the same family (ResNet depth, CNN width) teaches worse than a smaller
   one by more than twice the larger standard deviation;
3. the teachers' nongt_std (σ(q)) on the transfer set against size, and its correlation with the
   KD students' accuracy, within each family and across all teachers;
4. per method, the drop from the best-teaching teacher to the largest one of each family.

Capacity is compared within a family: across families architecture changes with size, so a
cross-family comparison (labelled "all, across families") does not isolate capacity. A teacher's
family is the `teacher_family` column of results.csv (kdlab writes it from the zoo and the study
file's `[teachers] families`); older files without it fall back to the architecture's name.

Standard library only, so that it runs anywhere.
"""
import argparse
import ast
import csv
import math
import os
import statistics
import sys
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


def pearson(a, b):
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    den = math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
    return num / den if den > 0 else float("nan")


def spearman(a, b):
    return pearson(ranks(a), ranks(b))


def family_by_name(arch):
    """The zoo's family of an architecture name (src/models, `Arch::family`), for results.csv
    files written before the `teacher_family` column."""
    if arch.startswith("resnet"):
        if arch.endswith("x4"):
            return "resnet x4"
        return "imagenet resnet" if arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152") else "resnet"
    for prefix, fam in (("cnn_w", "cnn"), ("wrn_", "wrn"), ("vgg", "vgg"), ("mlp_", "mlp"), ("mobilenetv2", "mobilenetv2")):
        if arch.startswith(prefix):
            return fam
    return "imported"


def groups(ts, family):
    """Per family with three teachers or more, then all of them across families (if several)."""
    fams = sorted({family(t) for t in ts})
    out = [(f, [t for t in ts if family(t) == f]) for f in fams]
    out = [(f, g) for f, g in out if len(g) >= 3]
    if len(fams) > 1:
        out.append(("all, across families", list(ts)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", help="a report directory with results.csv and teachers.csv")
    ap.add_argument("--student", default=None, help="the student architecture (default: the first)")
    ap.add_argument("--tau", type=float, default=4.0, help="the probe temperature of nongt_std")
    a = ap.parse_args()
    rows = list(csv.DictReader(open(os.path.join(a.report, "results.csv"))))
    teachers = {r["teacher"]: int(r["teacher_params"]) for r in rows if r["kind"] == "teacher"}
    fams = {r["teacher"]: r["teacher_family"] for r in rows if r["kind"] == "teacher" and r.get("teacher_family")}
    family = lambda t: fams.get(t) or family_by_name(t)
    students = [r for r in rows if r["kind"] == "student"]
    if not students:
        sys.exit("no student runs in results.csv")
    sm = a.student or students[0]["student"]
    students = [r for r in students if r["student"] == sm]
    ce = [float(r["final_acc"]) for r in students if r["method"] == "ce" and not r["teacher"]]
    ce_m, ce_s, ce_n = stat(ce)
    print(f"# Checks re-derived from {a.report}/results.csv (student {sm})\n")
    print(f"Student alone: {100 * ce_m:.2f} ± {100 * ce_s:.2f} ({ce_n} seeds)\n")

    # Per series and teacher: final accuracies and validation accuracies over seeds.
    acc = defaultdict(list)
    val = defaultdict(list)
    method_of = {}
    for r in students:
        if not r["teacher"]:
            continue
        key = (r["series"], r["teacher"])
        acc[key].append(float(r["final_acc"]))
        if r.get("final_val_acc"):
            val[key].append(float(r["final_val_acc"]))
        method_of[r["series"]] = r["method"]
    order = sorted(teachers, key=teachers.get)

    # KD with τ chosen per teacher on validation (plain kd series: no ESKD, TAKD, or relabelling).
    kd_series = sorted({s for s, m in method_of.items() if m == "kd" and "(" not in s and "+ls" not in s})
    tuned = {}
    for t in order:
        cands = [(statistics.fmean(val[(s, t)]), s) for s in kd_series if val.get((s, t))]
        if cands:
            tuned[t] = max(cands)[1]
    print("## 1. KD (τ chosen on validation) against the student alone\n")
    print("| teacher | params | chosen | KD final | margin over ce | > 2 std |")
    print("|---|---|---|---|---|---|")
    wins = 0
    for t in order:
        if t not in tuned:
            continue
        m, s, n = stat(acc[(tuned[t], t)])
        margin = m - ce_m
        ok = margin > 2 * max(s, ce_s)
        wins += ok
        print(f"| {t} | {teachers[t]} | {tuned[t]} | {100 * m:.2f} ± {100 * s:.2f} ({n}) | {100 * margin:+.2f} | {'yes' if ok else 'no'} |")
    print(f"\nCheck 1 ({'holds' if wins else 'fails'}): KD beats the student alone by > 2 std for {wins} teacher(s).\n")

    # Non-monotone curve: the largest drop from a smaller to a larger teacher of the same family.
    print("## 2. Is KD's curve monotone in teacher size, within each family?\n")
    print("| series | family | smaller teacher | acc | larger teacher | acc | drop | > 2 std |")
    print("|---|---|---|---|---|---|---|---|")
    curves = {s: {t: acc[(s, t)] for t in order if acc.get((s, t))} for s in kd_series}
    curves["kd (tuned on val)"] = {t: acc[(tuned[t], t)] for t in tuned}
    found = False
    for s, c in curves.items():
        for fam in sorted({family(t) for t in c}):
            best = None
            ts = [t for t in order if t in c and family(t) == fam]
            for i, small in enumerate(ts):
                for large in ts[i + 1:]:
                    (m1, s1, _), (m2, s2, _) = stat(c[small]), stat(c[large])
                    if best is None or m1 - m2 > best[0]:
                        best = (m1 - m2, small, m1, large, m2, 2 * max(s1, s2))
            if best:
                sig = best[0] > best[5]
                found |= sig and s == "kd (tuned on val)"
                print(f"| {s} | {fam} | {best[1]} | {100 * best[2]:.2f} | {best[3]} | {100 * best[4]:.2f} | {100 * best[0]:+.2f} | {'yes' if sig else 'no'} |")
    print(f"\nCheck 2 ({'holds' if found else 'fails'} for KD tuned on validation): a larger teacher teaches measurably worse than a smaller one of its own family.\n")

    probe = defaultdict(dict)
    teacher_acc = defaultdict(dict)
    for r in csv.DictReader(open(os.path.join(a.report, "teachers.csv"))):
        if abs(float(r["tau"]) - a.tau) < 1e-9:
            probe[r["probed_on"]][r["teacher"]] = float(r["nongt_std"])
            teacher_acc[r["probed_on"]][r["teacher"]] = float(r["accuracy"])

    # A larger teacher that teaches worse may simply be a worse teacher: the students' accuracy
    # against the teachers' own accuracy, on the test set and on the transfer set.
    print("## 2b. Student accuracy against the teacher's own accuracy\n")
    def against_kd(values, what):
        """Correlates a per-teacher number with the KD (tuned) student's mean accuracy, within
        each family and across all teachers."""
        for fam, ts in groups([t for t in order if t in values and t in tuned], family):
            x = [values[t] for t in ts]
            y = [statistics.fmean(acc[(tuned[t], t)]) for t in ts]
            print(f"- {what} vs KD (tuned) student accuracy, {fam} ({len(ts)} teachers): Pearson {pearson(x, y):+.3f}, Spearman {spearman(x, y):+.3f}")

    for where, ta in teacher_acc.items():
        against_kd(ta, f"teacher accuracy on the {where}")
    print()

    # σ(q) against size and against the students' accuracy.
    print("## 3. σ(q) (nongt_std) against teacher size and student accuracy\n")
    for where, sd in probe.items():
        for fam, ts in groups([t for t in order if t in sd], family):
            rho = spearman([teachers[t] for t in ts], [sd[t] for t in ts])
            print(f"- {where}, {fam} ({len(ts)} teachers): Spearman(size, σ(q)) = {rho:+.3f}" + ("  (falls with size)" if rho < 0 else ""))
        against_kd(sd, f"σ(q) on the {where}")
    print()

    # Remedies: drop from the best-teaching to the largest teacher, per family.
    print("## 4. Capacity-mismatch drop per method and family (best-teaching vs largest teacher)\n")
    print("| series | family | best teacher | acc | largest | acc | drop |")
    print("|---|---|---|---|---|---|---|")
    all_series = sorted(method_of) + ["kd (tuned on val)"]
    for s in all_series:
        c = curves.get(s) or {t: acc[(s, t)] for t in order if acc.get((s, t))}
        for fam in sorted({family(t) for t in c}):
            ts = [t for t in order if t in c and family(t) == fam]
            if len(ts) < 2:
                continue
            means = {t: statistics.fmean(c[t]) for t in ts}
            b = max(ts, key=lambda t: means[t])
            l = ts[-1]
            print(f"| {s} | {fam} | {b} | {100 * means[b]:.2f} | {l} | {100 * means[l]:.2f} | {100 * (means[b] - means[l]):.2f} |")


if __name__ == "__main__":
    main()
