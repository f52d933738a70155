"""Reads kdlab run directories' event files with TensorBoard's own reader (EventAccumulator, as
`tensorboard --logdir` loads them) and checks every value against what kdlab wrote elsewhere:

- `epoch/<column>`: every cell of metrics.csv, at step = the epoch, each epoch exactly once;
- `step/…`: steps 1..epochs×steps-per-epoch, each exactly once; per epoch, the batch-size-weighted
  mean of `step/loss`, `step/batch_acc` and `step/term_<t>` is metrics.csv's train_loss, train_acc
  and term_<t>; the mean and largest `step/grad_norm` are grad_norm_mean and grad_norm_max; the
  rate at the epoch's last step is its lr;
- histograms `epoch/<name>` (ISATS's τ2): one per epoch, holding every training sample once, with
  the minimum, maximum and mean that the checkpoint's history records (`isats_tau2`);
- the HParams plugin: the session start holds the run's configuration (run.json), the session end
  says success, and `final/test_acc` is the last epoch's test accuracy.

Usage: tensorboard_check.py [--logdir DIR] RUN_DIR... ; with --logdir, also that TensorBoard's
HParams dashboard for DIR has one session per run. Prints a line per run; exits 1 on a mismatch.
"""
import csv
import json
import math
import os
import sys

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import metadata as hp_metadata

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def close(a, b, rel=2e-6, abs_=2e-6):
    # Scalars are float32 in TensorBoard; metrics.csv rounds to 6 decimals.
    return abs(a - b) <= abs_ + rel * abs(b)


def load(run):
    acc = ea.EventAccumulator(run, size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def check_run(run):
    name = os.path.basename(run.rstrip("/"))
    record = json.load(open(os.path.join(run, "run.json")))
    record = record.get("value", record)  # sealed JSON keeps the value beside its checksum
    history = json.load(open(os.path.join(run, "last.json")))
    history = history.get("value", history)["history"]
    rows = list(csv.DictReader(open(os.path.join(run, "metrics.csv"))))
    acc = load(run)
    tags = acc.Tags()
    scalars = set(tags["scalars"])

    def series(tag):
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    # Per-epoch scalars: every metrics.csv cell.
    epochs = [int(r["epoch"]) for r in rows]
    for col in rows[0]:
        if col == "epoch":
            continue
        tag = "epoch/" + col
        check(tag in scalars, f"{name}: no {tag}")
        if tag not in scalars:
            continue
        got = series(tag)
        check([s for s, _ in got] == epochs, f"{name}: {tag} steps {[s for s, _ in got]} != epochs {epochs}")
        for (step, v), r in zip(got, rows):
            if r[col] != "":
                # As precise as metrics.csv prints the column (times to 1 ms, rates to 0.1/s).
                decimals = len(r[col].split(".")[1]) if "." in r[col] else 0
                check(close(v, float(r[col]), abs_=0.5 * 10 ** -decimals + 1e-12),
                      f"{name}: {tag} at epoch {step}: {v} != metrics.csv {r[col]}")

    # Per-step scalars against the epoch means.
    n = record["data"]["train_samples"]
    bs = record["config"]["batch_size"]
    steps = -(-n // bs)
    sizes = [min(bs, n - i * bs) for i in range(steps)]
    loss = series("step/loss")
    check([s for s, _ in loss] == list(range(1, len(rows) * steps + 1)),
          f"{name}: step/loss steps are not 1..{len(rows) * steps} once each ({len(loss)} events)")
    weighted = {"step/loss": "train_loss", "step/batch_acc": "train_acc"}
    weighted.update({t: "term_" + t[len("step/term_"):] for t in scalars if t.startswith("step/term_")})
    for tag, col in weighted.items():
        vals = [v for _, v in series(tag)]
        for e, r in enumerate(rows):
            chunk = vals[e * steps:(e + 1) * steps]
            mean = sum(v * w for v, w in zip(chunk, sizes)) / n
            check(close(mean, float(r[col]), rel=1e-5, abs_=1e-5),
                  f"{name}: weighted mean of {tag} in epoch {e + 1}: {mean} != {col} {r[col]}")
    grads = [v for _, v in series("step/grad_norm")]
    lrs = [v for _, v in series("step/lr")]
    for e, r in enumerate(rows):
        chunk = grads[e * steps:(e + 1) * steps]
        if r.get("grad_norm_mean"):
            check(close(sum(chunk) / len(chunk), float(r["grad_norm_mean"]), rel=1e-5, abs_=1e-5),
                  f"{name}: mean step/grad_norm in epoch {e + 1} != grad_norm_mean {r['grad_norm_mean']}")
            check(close(max(chunk), float(r["grad_norm_max"])), f"{name}: max step/grad_norm in epoch {e + 1}")
        check(close(lrs[(e + 1) * steps - 1], float(r["lr"])), f"{name}: step/lr at the end of epoch {e + 1}")

    # Histograms of per-sample values, against the history's summaries.
    hists = 0
    for tag in tags["histograms"]:
        stat = "isats_" + tag[len("epoch/"):]
        hs = acc.Histograms(tag)
        check([h.step for h in hs] == epochs, f"{name}: {tag} steps {[h.step for h in hs]}")
        for h, m in zip(hs, history):
            hv = h.histogram_value
            summary = (m.get("extra") or {}).get(stat)
            check(summary is not None, f"{name}: the history has no {stat} for epoch {m['epoch']}")
            if summary is None:
                continue
            check(hv.num == n and sum(hv.bucket) == n, f"{name}: {tag} at epoch {h.step} holds {hv.num} values, not {n}")
            check(math.isclose(hv.min, summary["min"], rel_tol=1e-9) and math.isclose(hv.max, summary["max"], rel_tol=1e-9),
                  f"{name}: {tag} range [{hv.min}, {hv.max}] != [{summary['min']}, {summary['max']}]")
            check(math.isclose(hv.sum / hv.num, summary["mean"], rel_tol=1e-9),
                  f"{name}: {tag} mean {hv.sum / hv.num} != {summary['mean']}")
            hists += 1

    # HParams: session start and end, final metrics.
    content = acc.PluginTagToContent("hparams")
    start = hp_metadata.parse_session_start_info_plugin_data(content[hp_metadata.SESSION_START_INFO_TAG])
    hp = {k: v for k, v in start.hparams.items()}
    for key in ["lr", "epochs", "batch_size", "seed", "model"]:
        want = record["config"][key]
        got = hp[key].string_value if isinstance(want, str) else hp[key].number_value
        check(got == want, f"{name}: hparam {key} = {got!r}, run.json says {want!r}")
    if record["kind"] == "distill":
        check(hp["method"].string_value == record["objective"]["method"], f"{name}: hparam method")
    end = hp_metadata.parse_session_end_info_plugin_data(content[hp_metadata.SESSION_END_INFO_TAG])
    check(end.status == 1, f"{name}: session end status {end.status}, not success")
    final = series("final/test_acc")
    check(len(final) == 1 and close(final[0][1], float(rows[-1]["test_acc"])), f"{name}: final/test_acc {final}")
    print(f"{name}: {len(rows)} epochs, {len(loss)} steps, {hists} histograms, {len(hp)} hparams checked")


def check_hparams_view(logdir, runs):
    """The HParams dashboard's experiment for `tensorboard --logdir LOGDIR`, built as TensorBoard
    builds it: one session per run, the runs' hyper-parameters as columns, final/test_acc a metric."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    m = pem.EventMultiplexer()
    m.AddRunsFromDirectory(logdir)
    m.Reload()
    dp = data_provider.MultiplexerDataProvider(m, logdir)
    bc = backend_context.Context(base_plugin.TBContext(logdir=logdir, multiplexer=m, data_provider=dp))
    ctx = context.RequestContext()
    sessions = bc.hparams_metadata(ctx, "")
    names = sorted(os.path.relpath(r, logdir) for r in runs)
    check(sorted(sessions) == names, f"HParams sessions {sorted(sessions)} != runs {names}")
    exp = bc.experiment_from_metadata(ctx, "", True, sessions, bc.hparams_from_data_provider(ctx, "", 100))
    hparams = {h.name for h in exp.hparam_infos}
    metrics = {mi.name.tag for mi in exp.metric_infos}
    for h in ["lr", "model", "epochs", "seed"]:
        check(h in hparams, f"the HParams experiment has no hyper-parameter {h}: {sorted(hparams)}")
    check("final/test_acc" in metrics, f"the HParams experiment has no metric final/test_acc: {sorted(metrics)}")
    print(f"HParams view of {logdir}: {len(sessions)} sessions, {len(hparams)} hyper-parameters, {len(metrics)} metrics")


args = sys.argv[1:]
if args and args[0] == "--logdir":
    check_hparams_view(args[1], args[2:])
    args = args[2:]
for run in args:
    check_run(run)
if failures:
    print("\n".join(failures))
    sys.exit(1)
