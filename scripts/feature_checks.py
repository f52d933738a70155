#!/usr/bin/env python3
"""Re-derives the feature study's answers (issue 22) from its report's results.csv alone.

    python3 scripts/feature_checks.py REPORT_DIR [--small resnet20] [--large resnet56]

The question, per method: does it flatten the capacity-mismatch drop on the ResNet ladder, and by
how much, against the ATS (4, 4) control? For every student and method series this recomputes,
from the per-run rows (mean and sample standard deviation over seeds):

1. the teachers' own test accuracy (the confound: a larger teacher that teaches worse may simply be
   a worse teacher);
2. each series' accuracy from every teacher, final epoch and best epoch;
3. the drop from the smaller teacher (--small) to the larger (--large), its spread
   (sqrt(s1^2 + s2^2)), and whether it exceeds twice that spread; and (3b) the paper's case: for
   every pair of teachers where the larger is also the more accurate, whether it teaches worse;
4. each series against the control: the difference of drops (does it flatten the drop more than the
   control does?) and the difference of accuracies from the larger teacher (is it better where the
   drop is?), each with its spread and the "> 2 std" bar;
5. teacher-assistant chains (series trained from the larger teacher only) against KD from the
   larger teacher directly, the control from it, and KD from the smaller teacher (the drop a chain
   tries to close).

KD's temperature is chosen per teacher on the validation split (the mean final validation
accuracy over seeds), never on the test set: the series "kd (tuned on val)".

Standard library only, so that it runs anywhere.
"""
import argparse
import csv
import math
import os
import statistics
import sys
from collections import defaultdict

CONTROL = "ats control (4, 4)"
TUNED = "kd (tuned on val)"


def stat(v):
    m = statistics.fmean(v)
    s = statistics.stdev(v) if len(v) > 1 else 0.0
    return m, s, len(v)


def fmt(m, s, n):
    return f"{100 * m:.2f} ± {100 * s:.2f} ({n})"


def diff(a, b):
    """a − b of two (mean, std, n) and the difference's spread, sqrt(s_a^2 + s_b^2)."""
    return a[0] - b[0], math.hypot(a[1], b[1])


def points(d, sd):
    return f"{100 * d:+.2f} ± {100 * sd:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report")
    ap.add_argument("--small", default="resnet20", help="the smaller (better-teaching) teacher")
    ap.add_argument("--large", default="resnet56", help="the larger teacher, where a drop would be")
    a = ap.parse_args()
    rows = list(csv.DictReader(open(os.path.join(a.report, "results.csv"))))
    out = [f"# Feature-study checks, re-derived from {os.path.join(a.report, 'results.csv')}", ""]

    # 1. Teachers.
    out += ["## 1. Teachers (test accuracy, final epoch)", "", "| teacher | params | final | best |", "|---|---|---|---|"]
    teacher_acc = {}
    for r in sorted((r for r in rows if r["kind"] == "teacher"), key=lambda r: int(r["teacher_params"] or 0)):
        teacher_acc[r["teacher"]] = float(r["final_acc"])
        out.append(f"| {r['teacher']} | {r['teacher_params']} | {100 * float(r['final_acc']):.2f} | {100 * float(r['best_acc']):.2f} |")
    out.append("")
    if a.small in teacher_acc and a.large in teacher_acc:
        d = teacher_acc[a.small] - teacher_acc[a.large]
        out.append(
            f"The larger teacher ({a.large}) is {'less' if d > 0 else 'more'} accurate than the smaller ({a.small}) "
            f"by {abs(100 * d):.2f} points: a drop from {a.small} to {a.large} "
            + ("cannot be told apart from a worse teacher." if d > 0 else "is a capacity effect, not an accuracy one.")
        )
        out.append("")

    # Per (student, series, teacher): final, best and validation accuracies over seeds.
    cell = defaultdict(lambda: defaultdict(list))
    alone = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["kind"] != "student":
            continue
        key = (r["student"], r["series"], r["teacher"])
        if not r["teacher"]:
            alone[r["student"]]["final"].append(float(r["final_acc"]))
            alone[r["student"]]["best"].append(float(r["best_acc"]))
            continue
        cell[key]["final"].append(float(r["final_acc"]))
        cell[key]["best"].append(float(r["best_acc"]))
        if r["final_val_acc"]:
            cell[key]["val"].append(float(r["final_val_acc"]))

    students = sorted({k[0] for k in cell})
    for student in students:
        series = sorted({k[1] for k in cell if k[0] == student})
        teachers = sorted({k[2] for k in cell if k[0] == student}, key=lambda t: size_of(rows, t))
        # KD's τ per teacher, on validation.
        kd = [s for s in series if s.startswith("kd τ=") and "+" not in s]
        for t in teachers:
            cands = [(statistics.fmean(cell[(student, s, t)]["val"]), s) for s in kd if cell[(student, s, t)]["val"]]
            if cands:
                _, best = max(cands)
                cell[(student, TUNED, t)] = dict(cell[(student, best, t)])
                cell[(student, TUNED, t)]["chosen"] = best
        if any((student, TUNED, t) in cell for t in teachers):
            series.append(TUNED)

        out += [f"## 2. Student {student}: test accuracy by teacher (%, mean ± std (seeds))", ""]
        if alone[student]["final"]:
            out.append(
                f"Student alone: final {fmt(*stat(alone[student]['final']))}, best epoch {fmt(*stat(alone[student]['best']))}"
            )
            out.append("")
        out.append("| series | " + " | ".join(f"{t} final | {t} best" for t in teachers) + " |")
        out.append("|---|" + "---|---|" * len(teachers))
        for s in series:
            cells = []
            for t in teachers:
                c = cell.get((student, s, t))
                if c and c["final"]:
                    extra = f" [{c['chosen']}]" if "chosen" in c else ""
                    cells += [fmt(*stat(c["final"])) + extra, fmt(*stat(c["best"]))]
                else:
                    cells += ["–", "–"]
            out.append(f"| {s} | " + " | ".join(cells) + " |")
        out.append("")

        # 3 and 4. The drop, and against the control.
        def ms(s, t, which="final"):
            c = cell.get((student, s, t))
            return stat(c[which]) if c and c[which] else None

        out += [
            f"## 3–4. Student {student}: the drop from {a.small} to {a.large}, and against the control (final epoch, points)",
            "",
            f"drop = acc({a.small}) − acc({a.large}); spread = √(s₁² + s₂²); vs control: this series minus "
            f"{CONTROL} (drop: negative flattens more than the control; at {a.large}: positive teaches better there).",
            "",
            f"| series | acc from {a.small} | acc from {a.large} | drop | drop > 2 spread | drop − control's | > 2 spread | at {a.large} − control | > 2 spread |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        ctrl = (ms(CONTROL, a.small), ms(CONTROL, a.large))
        for s in series:
            lo, hi = ms(s, a.small), ms(s, a.large)
            if not lo or not hi:
                continue
            drop, dsd = diff(lo, hi)
            row = [s, fmt(*lo), fmt(*hi), points(drop, dsd), yes(abs(drop) > 2 * dsd)]
            if ctrl[0] and ctrl[1] and s != CONTROL:
                cdrop, csd = diff(*ctrl)
                dd, ddsd = diff((drop, dsd), (cdrop, csd))
                at, atsd = diff(hi, ctrl[1])
                row += [points(dd, ddsd), yes(abs(dd) > 2 * ddsd), points(at, atsd), yes(abs(at) > 2 * atsd)]
            else:
                row += ["", "", "", ""]
            out.append("| " + " | ".join(row) + " |")
        out.append("")

        # 3b. The paper's case: a larger teacher that is also more accurate teaching worse.
        pairs = [
            (x, y)
            for i, x in enumerate(teachers)
            for y in teachers[i + 1 :]
            if x in teacher_acc and y in teacher_acc and teacher_acc[y] > teacher_acc[x]
        ]
        if pairs:
            out += [
                f"## 3b. Student {student}: the paper's case — a larger and more accurate teacher teaching worse (final epoch, points)",
                "",
                "Pairs of teachers where the larger is also the more accurate; drop = acc(smaller) − acc(larger), "
                "flagged where it exceeds twice its spread.",
                "",
                "| series | " + " | ".join(f"{x} → {y} drop | > 2 spread" for x, y in pairs) + " |",
                "|---|" + "---|---|" * len(pairs),
            ]
            found = []
            for s in series:
                row = [s]
                for x, y in pairs:
                    lo, hi = ms(s, x), ms(s, y)
                    if not lo or not hi:
                        row += ["–", ""]
                        continue
                    d, sd = diff(lo, hi)
                    row += [points(d, sd), yes(d > 2 * sd)]
                    if d > 2 * sd:
                        found.append(f"{s} ({x} → {y})")
                out.append("| " + " | ".join(row) + " |")
            out += ["", "The paper's case, beyond twice the spread: " + (", ".join(found) if found else "none") + ".", ""]

        # 5. Chains trained from the larger teacher only.
        # A chain's series names its assistants: "kd (TAKD via resnet8)", "dgkd (DGKD via resnet8)".
        chains = [s for s in series if " via " in s and ms(s, a.large)]
        if chains:
            out += [
                f"## 5. Student {student}: teacher-assistant chains from {a.large} (final epoch, points)",
                "",
                f"| chain | acc from {a.large} | − KD τ=4 from {a.large} | − control from {a.large} | − KD (tuned) from {a.small} |",
                "|---|---|---|---|---|",
            ]
            for s in chains:
                m = ms(s, a.large)
                row = [s, fmt(*m)]
                for ref, t in (("kd τ=4", a.large), (CONTROL, a.large), (TUNED, a.small)):
                    r = ms(ref, t)
                    if r:
                        d, sd = diff(m, r)
                        row.append(points(d, sd) + (" (> 2 spread)" if abs(d) > 2 * sd else ""))
                    else:
                        row.append("–")
                out.append("| " + " | ".join(row) + " |")
            out.append("")
    print("\n".join(out))


def size_of(rows, teacher):
    for r in rows:
        if r["teacher"] == teacher and r["teacher_params"]:
            return int(r["teacher_params"])
    return 0


def yes(b):
    return "yes" if b else "no"


if __name__ == "__main__":
    sys.exit(main())
