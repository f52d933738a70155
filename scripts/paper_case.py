#!/usr/bin/env python3
"""Search a study's per-run CSV for the paper's case (issue 23): a larger teacher that is *more*
accurate on the test set yet teaches a student worse by more than 2 std.

Usage: scripts/paper_case.py CSV [CSV ...] [--all] [--across-checkpoints] [--test-n=10000]

CSV is either a report's `fit_<student>.csv` (every run's teacher checkpoint with its own test
accuracy, `teacher_test_acc`; preferred, since runs distilled from an earlier epoch or a fit level
have a teacher accuracy different from the final one) or a report's `results.csv` (the teacher's
accuracy is its final one, from the `kind = teacher` rows; series distilled from another
checkpoint, ESKD or through an assistant are skipped, as their teacher accuracy is not there).

Pairs are compared within one student and one series (method, setting and fit level), so that
only the teacher differs; `--across-checkpoints` also compares a setting's runs across levels and
checkpoints (many more pairs: expect some to pass the bar by chance). A pair (L, S) is listed when
L has more parameters and a higher test accuracy than S; it is the paper's case when
mean(S) − mean(L) > 2 · max(std(L), std(S)) (sample std of the student's final test accuracy over
seeds). Fewer than 3 seeds on either side: marked ad hoc. The teacher's edge is set against 2 standard
errors of a difference of two accuracies on --test-n test images (taken as independent): an edge
below it is one the test set cannot resolve. Standard library only.
"""
import csv
import statistics
import sys
from collections import defaultdict


def load(path):
    """Rows of (student, series, setting, teacher, params, teacher_acc, seed, final_acc)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    if rows and "teacher_test_acc" in rows[0]:
        for r in rows:
            out.append((r["student"], r["series"], r["setting"], r["teacher"], int(r["teacher_params"]),
                        float(r["teacher_test_acc"]), r["seed"], float(r["final_acc"]), val(r.get("val_acc"))))
        # fit_<student>.csv repeats a run once per section it appears in: keep one row per run.
        seen, uniq = set(), []
        for row in out:
            key = (row[0], row[1], row[3], row[6])
            if key not in seen:
                seen.add(key)
                uniq.append(row)
        return uniq + tuned_kd(uniq)
    teacher_acc = {r["teacher"]: float(r["final_acc"]) for r in rows if r.get("kind") == "teacher"}
    for r in rows:
        if r.get("kind") != "student" or not r["teacher"]:
            continue
        series = r["series"]
        if any(k in series for k in ("ESKD", "TAKD", "epoch", "fit ", "calibrated")):
            continue
        out.append((r["student"], series, series, r["teacher"], int(r["teacher_params"]),
                    teacher_acc[r["teacher"]], r["seed"], float(r["final_acc"]), val(r.get("final_val_acc"))))
    return out + tuned_kd(out)


def family(model):
    """cnn_w4 -> cnn, resnet20 -> resnet, mlp_32x1 -> mlp: the zoo's families by name."""
    return model.rstrip("0123456789x_").split("_")[0].rstrip("0123456789")


def val(x):
    return float(x) if x not in (None, "") else None


def tuned_kd(rows):
    """The report's `kd (tuned on val)`: per student, teacher and level, the KD setting (τ) with the
    highest mean final validation accuracy; its runs as a series of their own."""
    by = defaultdict(list)
    for row in rows:
        if row[2].startswith("kd τ=") and row[8] is not None:
            level = row[1][len(row[2]):]  # the series' level suffix, e.g. " (fit val_nll≈0.48)"
            by[(row[0], row[3], level, row[2])].append(row)
    best = {}
    for (student, teacher, level, setting), v in by.items():
        m = statistics.mean(r[8] for r in v)
        if (student, teacher, level) not in best or m > best[(student, teacher, level)][0]:
            best[(student, teacher, level)] = (m, v)
    out = []
    for (student, teacher, level), (_, v) in best.items():
        for r in v:
            out.append((r[0], "kd (tuned on val)" + level, "kd (tuned on val)") + r[3:])
    return out


def main(argv):
    across = "--across-checkpoints" in argv
    show_all = "--all" in argv
    test_n = next((int(a.split("=")[1]) for a in argv if a.startswith("--test-n=")), 10000)
    paths = [a for a in argv if not a.startswith("--")]
    if not paths:
        sys.exit(__doc__)
    groups = defaultdict(list)  # (student, key, teacher, point) -> [final_acc]
    tacc = {}
    for p in paths:
        for student, series, setting, teacher, params, t_acc, seed, acc, _ in load(p):
            key = setting if across else series
            point = series  # a teacher checkpoint within the setting: its series names its level
            groups[(student, key, teacher, point)].append(acc)
            tacc[(student, key, teacher, point)] = (params, t_acc)
    by_key = defaultdict(list)
    for (student, key, teacher, point), accs in groups.items():
        params, t_acc = tacc[(student, key, teacher, point)]
        by_key[(student, key)].append((teacher, point, params, t_acc, accs))
    print("| student | series | larger teacher (acc) | KD student | smaller teacher (acc) | KD student | gap | 2·max std | same family | case | teacher edge / 2 SE |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    found = compared = resolved = 0
    for (student, key), pts in sorted(by_key.items()):
        for big in pts:
            for small in pts:
                if not (big[2] > small[2] and big[3] > small[3]):
                    continue
                compared += 1
                mb, ms = statistics.mean(big[4]), statistics.mean(small[4])
                sb = statistics.stdev(big[4]) if len(big[4]) > 1 else float("nan")
                ss = statistics.stdev(small[4]) if len(small[4]) > 1 else float("nan")
                bar = 2 * max(sb, ss)
                gap = ms - mb
                case = gap > bar
                found += case
                # Is the teacher's edge larger than the test set can blur? 2 SE of the difference of
                # two binomial accuracies on the test images, taken as independent (conservative:
                # the teachers share the test set, which makes the paired SE smaller).
                n = test_n
                se2 = 2 * (big[3] * (1 - big[3]) / n + small[3] * (1 - small[3]) / n) ** 0.5
                edge = big[3] - small[3]
                resolved += case and edge > se2
                if not (case or show_all):
                    continue
                adhoc = " (ad hoc)" if min(len(big[4]), len(small[4])) < 3 else ""
                name = lambda p: p[0] if not across else f"{p[0]} [{p[1]}]"
                print(f"| {student} | {key} | {name(big)} ({100 * big[3]:.2f}) | {100 * mb:.2f} ± {100 * sb:.2f} ({len(big[4])}) "
                      f"| {name(small)} ({100 * small[3]:.2f}) | {100 * ms:.2f} ± {100 * ss:.2f} ({len(small[4])}) "
                      f"| {100 * gap:+.2f} | {100 * bar:.2f} | {'yes' if family(big[0]) == family(small[0]) else 'no'} | {'**yes**' if case else 'no'}{adhoc} | {100 * edge:.2f} / {100 * se2:.2f} |")
    # With 3 seeds a side and equal true means, gap > 2·max(std) happens by chance about 2 % of the
    # time (a Gaussian simulation, docs/fit-pilots.md): set the count against compared × 0.02.
    print(f"\n{found} of {compared} pairs (larger and more test-accurate teacher) teach worse by more than 2 std "
          f"(about {0.021 * compared:.1f} expected by chance if the pairs were independent and equal); "
          f"{resolved} of them with a teacher edge above 2 SE of a difference of test accuracies.")


if __name__ == "__main__":
    main(sys.argv[1:])
