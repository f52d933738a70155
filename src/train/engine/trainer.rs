//! The training loop shared by `kdlab train` and `kdlab distill`: epochs of shuffled, augmented
//! batches; the objective's loss terms summed and minimised with SGD; test accuracy after every
//! epoch; checkpoints (`last`, `best`, every N epochs) and metrics written atomically; and resume
//! from `last` when the same run is started again.
use crate::data::loader::{Feed, Loader, LoaderSpec};
use crate::data::Dataset;
use crate::models::Taps;
use crate::train::amp::{self, Amp, LossScaler};
use crate::train::checkpoint::{self, CheckpointMeta, OptimizerMeta};
use crate::train::config::{self, TrainConfig};
use crate::train::eval::{self, to_tensors};
use crate::train::events::RunEvents;
use crate::train::model::Model;
use crate::train::objective::{Objective, StepInput, TASK_TERM};
use crate::train::run::{self, DataRecord, EpochMetrics, RunRecord, RunStatus};
use crate::train::sgd::{Optimizer, Sgd};
use crate::util::fmt;
use crate::util::progress;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// Where and how to run, beyond the configuration itself.
pub struct RunOptions {
    pub out: PathBuf,
    pub device: Device,
    /// "train" or "distill".
    pub kind: String,
    /// Anything else that defines the run (e.g. the teacher), compared on resume.
    pub extra: serde_json::Value,
    /// No progress bars and no per-epoch lines.
    pub quiet: bool,
    /// Stop (cleanly, as after a crash at an epoch boundary) once this many epochs are done.
    pub stop_after: Option<usize>,
    /// Read the loss back to the host every this many steps (None: every step on the CPU, where
    /// it costs nothing, and every 50 on a GPU, where each read waits for the queue to drain).
    /// The values, and the step a NaN is reported at, do not depend on it.
    pub sync_every: Option<usize>,
    /// Write `steps.csv` with the loss, each term, the gradient norm and the rate of the run's
    /// first this many steps (0: none): what a diverging or collapsing start looks like.
    pub trace_steps: usize,
}

impl RunOptions {
    pub fn new(out: impl Into<PathBuf>, device: Device, kind: &str) -> Self {
        RunOptions {
            out: out.into(),
            device,
            kind: kind.into(),
            extra: serde_json::Value::Null,
            quiet: false,
            stop_after: None,
            sync_every: None,
            trace_steps: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub dir: PathBuf,
    pub history: Vec<EpochMetrics>,
    pub final_test_acc: f64,
    pub best_test_acc: f64,
    pub best_epoch: usize,
    pub params: u64,
    /// Epochs that were already done when this invocation started (0 for a fresh run).
    pub resumed_at: usize,
    pub wall_time_s: f64,
    /// False when `stop_after` ended the call before the last epoch.
    pub complete: bool,
}

/// Trains `cfg.model` on `data` with `objective`, in `opts.out`; resumes there if a compatible
/// run was interrupted, and returns at once if it already finished.
pub fn train(cfg: &TrainConfig, data: &Dataset, objective: &mut dyn Objective, opts: &RunOptions) -> Result<Outcome> {
    cfg.validate()?;
    let dir = &opts.out;
    std::fs::create_dir_all(dir).with_context(|| format!("creating run directory {}", dir.display()))?;
    let config_json = serde_json::to_value(cfg)?;
    let objective_json = objective.describe();
    let mut record = RunRecord {
        kdlab_version: crate::VERSION.to_string(),
        kind: opts.kind.clone(),
        config: config_json,
        objective: objective_json,
        extra: opts.extra.clone(),
        data: DataRecord::of(data),
        model: cfg.model.clone(),
        params: 0,
        device: crate::util::device::describe(opts.device),
        threads: tch::get_num_threads() as usize,
        status: RunStatus::Running,
        error: None,
        epochs_done: 0,
        final_test_acc: None,
        best_test_acc: None,
        best_epoch: None,
        wall_time_s: 0.0,
        final_val_acc: None,
        final_extra: None,
        memory_format: None,
    };
    let old = run::read_record(dir)?;
    if let Some(old) = &old {
        ensure_same_run(dir, old, &record)?;
        record.wall_time_s = old.wall_time_s;
    }

    let model = Model::new(&cfg.model, data.shape(), data.classes, opts.device, cfg.seed)?;
    record.params = model.params();
    record.memory_format = Some(model.memory_format());
    ensure_same_layout(dir, old.as_ref(), &model)?;
    // A method's modules and state live beside the student, initialised from the seed (their own
    // stream), optimised with it and checkpointed with it.
    let method_vars = nn::VarStore::new(opts.device);
    crate::train::model::seeded(cfg.seed, crate::util::rng::stream::METHOD_INIT, || {
        objective.setup(&model, method_vars.root(), &data.train.labels)
    })?;
    let mut opt = Sgd::new(&model.vs, cfg.momentum, cfg.nesterov, cfg.weight_decay)
        .with_vars(&method_vars, checkpoint::METHOD_PREFIX);
    if cfg.optimizer == Optimizer::Dot {
        opt = opt.with_dot(cfg.dot_delta);
    }
    let last = dir.join("last.json");
    let mut history = vec![];
    if last.exists() {
        let meta = checkpoint::restore(&last, &model, &method_vars, &mut opt)
            .with_context(|| format!("resuming {} from {}", dir.display(), last.display()))?;
        history = meta.history;
        history.truncate(meta.epoch);
    }
    let resumed_at = history.len();
    if resumed_at >= cfg.epochs {
        if !opts.quiet {
            println!("{}: already trained ({} epochs); nothing to do", dir.display(), resumed_at);
        }
        return finish(dir, record, &history, model.params(), resumed_at, 0.0);
    }
    if resumed_at > 0 && !opts.quiet {
        println!("{}: resuming after epoch {resumed_at} of {}", dir.display(), cfg.epochs);
    }
    run::write_record(dir, &record)?;
    let mut events = RunEvents::open(dir, &record, &history)?;

    let trainee = Trainee { model: &model, method_vars: &method_vars };
    let result = train_epochs(cfg, data, objective, opts, &trainee, &mut opt, &mut history, &mut record, &mut events);
    if let Err(e) = result {
        events.fail();
        record.status = RunStatus::Failed;
        record.error = Some(format!("{e:#}"));
        record.epochs_done = history.len();
        // Best effort: the error itself matters more than recording it.
        let _ = run::write_record(dir, &record);
        return Err(e);
    }
    let wall = record.wall_time_s;
    if history.len() < cfg.epochs {
        // Stopped early on request: the run stays resumable, and says so.
        run::write_record(dir, &record)?;
        let mut out = finish_outcome(dir, &history, model.params(), resumed_at, wall)?;
        out.complete = false;
        return Ok(out);
    }
    events.finish(&history)?;
    finish(dir, record, &history, model.params(), resumed_at, wall)
}

fn finish(
    dir: &Path,
    mut record: RunRecord,
    history: &[EpochMetrics],
    params: u64,
    resumed_at: usize,
    wall: f64,
) -> Result<Outcome> {
    let out = finish_outcome(dir, history, params, resumed_at, wall)?;
    let last = history.last().expect("checked by finish_outcome");
    let best = best_epoch(history);
    if record.status != RunStatus::Done {
        record.status = RunStatus::Done;
        record.error = None;
        record.epochs_done = history.len();
        record.final_test_acc = Some(last.test_acc);
        record.best_test_acc = Some(best.test_acc);
        record.best_epoch = Some(best.epoch);
        record.final_val_acc = last.val_acc;
        record.final_extra = last.extra.clone();
        record.params = params;
        run::write_record(dir, &record)?;
    }
    Ok(out)
}

/// The epoch with the highest test accuracy (the earliest among equals).
pub fn best_epoch(history: &[EpochMetrics]) -> &EpochMetrics {
    history
        .iter()
        .max_by(|a, b| a.test_acc.total_cmp(&b.test_acc).then(b.epoch.cmp(&a.epoch)))
        .expect("a non-empty history")
}

/// One step's loss, terms and correct count, still on the device.
struct PendingStep {
    step: usize,
    n: usize,
    lr: f64,
    loss: Tensor,
    terms: Vec<(String, Tensor)>,
    correct: Tensor,
    grad_norm: Tensor,
}

impl PendingStep {
    fn new(
        step: usize,
        lr: f64,
        loss: &Tensor,
        terms: &[(String, Tensor)],
        logits: &Tensor,
        y: &Tensor,
        grad_norm: Tensor,
    ) -> Self {
        PendingStep {
            step,
            n: y.size()[0] as usize,
            lr,
            loss: loss.detach(),
            terms: terms.iter().map(|(k, t)| (k.clone(), t.detach())).collect(),
            correct: logits.argmax(-1, false).eq_tensor(y).sum(Kind::Int64),
            grad_norm,
        }
    }
}

/// Per-sample sums over an epoch's steps, in step order, and the trace of the run's first steps.
#[derive(Default)]
struct StepSums {
    loss: f64,
    terms: BTreeMap<String, f64>,
    correct: i64,
    seen: usize,
    steps: usize,
    grad_norm_sum: f64,
    grad_norm_max: f64,
}

/// One traced step (`RunOptions::trace_steps`).
struct TracedStep {
    epoch: usize,
    step: usize,
    lr: f64,
    loss: f64,
    terms: Vec<(String, f64)>,
    acc: f64,
    grad_norm: f64,
}

impl StepSums {
    /// Reads the pending steps back (the first read waits for the device, the rest are small
    /// copies) and adds them in order, and to the event file; the first non-finite loss is
    /// returned with its step. Steps whose run-wide index is below `trace_until` are also
    /// appended to `trace`.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        pending: &mut Vec<PendingStep>,
        epoch: usize,
        first_step: usize,
        trace_until: usize,
        trace: &mut Vec<TracedStep>,
        events: &mut RunEvents,
    ) -> std::result::Result<(), (usize, f64)> {
        let losses: Vec<f64> = pending.iter().map(|p| p.loss.double_value(&[])).collect();
        if let Some((p, v)) = pending.iter().zip(&losses).find(|(_, v)| !v.is_finite()) {
            return Err((p.step, *v));
        }
        for (p, v) in pending.drain(..).zip(losses) {
            let terms: Vec<(String, f64)> = p.terms.iter().map(|(k, t)| (k.clone(), t.double_value(&[]))).collect();
            let correct = p.correct.int64_value(&[]);
            let grad_norm = p.grad_norm.double_value(&[]);
            self.loss += v * p.n as f64;
            for (name, t) in &terms {
                *self.terms.entry(name.clone()).or_default() += t * p.n as f64;
            }
            self.correct += correct;
            self.seen += p.n;
            self.steps += 1;
            self.grad_norm_sum += grad_norm;
            self.grad_norm_max = self.grad_norm_max.max(grad_norm);
            let acc = correct as f64 / p.n.max(1) as f64;
            events.step(first_step + p.step + 1, p.lr, v, &terms, acc, grad_norm);
            if first_step + p.step < trace_until {
                trace.push(TracedStep { epoch, step: first_step + p.step, lr: p.lr, loss: v, terms, acc, grad_norm });
            }
        }
        Ok(())
    }
}

/// `steps.csv`: one row per traced step (1-based epoch and run-wide step).
fn write_trace(dir: &Path, trace: &[TracedStep]) -> Result<()> {
    let names: Vec<&str> = trace.first().map(|t| t.terms.iter().map(|(k, _)| k.as_str()).collect()).unwrap_or_default();
    let mut out = String::from("epoch,step,lr,loss,batch_acc,grad_norm");
    for n in &names {
        out.push_str(&format!(",term_{n}"));
    }
    out.push('\n');
    for t in trace {
        out.push_str(&format!("{},{},{},{:.6},{:.4},{:.6}", t.epoch, t.step + 1, t.lr, t.loss, t.acc, t.grad_norm));
        for (_, v) in &t.terms {
            out.push_str(&format!(",{v:.6}"));
        }
        out.push('\n');
    }
    crate::util::atomic::write_bytes(&dir.join("steps.csv"), out.as_bytes())
}

fn finish_outcome(dir: &Path, history: &[EpochMetrics], params: u64, resumed_at: usize, wall: f64) -> Result<Outcome> {
    let last = history.last().context("no epoch was trained")?;
    let best = best_epoch(history);
    Ok(Outcome {
        dir: dir.to_path_buf(),
        history: history.to_vec(),
        final_test_acc: last.test_acc,
        best_test_acc: best.test_acc,
        best_epoch: best.epoch,
        params,
        resumed_at,
        wall_time_s: wall,
        complete: true,
    })
}

/// A run directory may only be resumed by the same run.
fn ensure_same_run(dir: &Path, old: &RunRecord, new: &RunRecord) -> Result<()> {
    // Records written before the data-carving keys existed lack them: compare identities.
    let (old_config, new_config) = (config::identity_of(old.config.clone()), config::identity_of(new.config.clone()));
    let pairs = [
        ("config", &old_config, &new_config),
        ("objective", &old.objective, &new.objective),
        ("run", &old.extra, &new.extra),
    ];
    for (what, a, b) in pairs {
        if a != b {
            let diff = describe_diff(a, b);
            bail!(
                "{} already holds a different run ({what} differs: {diff}); choose another --out, or delete that directory to start over",
                dir.display()
            );
        }
    }
    if old.data.fingerprint != new.data.fingerprint {
        bail!(
            "{} was trained on other data ({} {}), not on {} {}",
            dir.display(),
            old.data.name,
            &old.data.fingerprint[..12],
            new.data.name,
            &new.data.fingerprint[..12]
        );
    }
    Ok(())
}

/// A run resumes in the memory layout it was trained in: the layout changes the kernels' float
/// rounding, so another would not continue the run bit-identically. (Runs written before the
/// layout was recorded resume in the process's.)
fn ensure_same_layout(dir: &Path, old: Option<&RunRecord>, model: &Model) -> Result<()> {
    let Some(was) = old.and_then(|o| o.memory_format) else { return Ok(()) };
    let now = model.memory_format();
    if was != now && model.has_convolutions() {
        let (was, now) = (fmt::flag_value(&was), fmt::flag_value(&now));
        bail!(
            "{} was trained in the {was} memory layout, and this process would continue it in {now}; resume it with --memory-format {was}",
            dir.display()
        );
    }
    Ok(())
}

fn describe_diff(a: &serde_json::Value, b: &serde_json::Value) -> String {
    match (a.as_object(), b.as_object()) {
        (Some(x), Some(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| x.get(*k) != y.get(*k))
                .map(|k| format!("{k}: {} → {}", show(x.get(k)), show(y.get(k))))
                .collect::<Vec<_>>()
                .join(", ")
        }
        _ => format!("{a} → {b}"),
    }
}

fn show(v: Option<&serde_json::Value>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "(none)".into())
}

#[allow(clippy::too_many_arguments)]
fn train_epochs(
    cfg: &TrainConfig,
    data: &Dataset,
    objective: &mut dyn Objective,
    opts: &RunOptions,
    trainee: &Trainee,
    opt: &mut Sgd,
    history: &mut Vec<EpochMetrics>,
    record: &mut RunRecord,
    events: &mut RunEvents,
) -> Result<()> {
    let model = trainee.model;
    let dir = &opts.out;
    let tap_names = objective.student_taps();
    let schedule = cfg.lr_schedule();
    let train_feed = data.feed("train", cfg.augment)?;
    let test_feed = data.feed("test", false)?;
    let val_feed = if data.val.is_some() { Some(data.feed("val", false)?) } else { None };
    let spec = LoaderSpec { batch_size: cfg.batch_size, shuffle: true, seed: cfg.seed, drop_last: false };
    let shape = data.shape();
    let end = opts.stop_after.map_or(cfg.epochs, |s| s.min(cfg.epochs));
    let sync_every = opts.sync_every.unwrap_or(if model.device() == Device::Cpu { 1 } else { 50 }).max(1);
    let mut trace: Vec<TracedStep> = vec![];
    let mut scaler = (cfg.amp == Amp::Fp16).then(LossScaler::default);
    for epoch in history.len()..end {
        let start = Instant::now();
        // A top-k teacher cache replays the views it recorded on decoded splits; a streamed
        // folder's loader draws the recorded crops from the seed itself (the distiller checks them).
        let replayed = match &train_feed {
            Feed::Memory { split, augment } => objective
                .replay_views(epoch, augment, shape)?
                .map(|views| Loader::replay(split.clone(), augment.clone(), spec, epoch as u64, views)),
            Feed::Files(_) => None,
        };
        let mut loader = replayed.unwrap_or_else(|| Loader::from_feed(train_feed.clone(), spec, epoch as u64));
        let steps = loader.batches();
        let bar = if opts.quiet {
            indicatif::ProgressBar::hidden()
        } else {
            progress::epoch_bar(steps, format!("epoch {}/{}", epoch + 1, cfg.epochs))
        };
        let mut sums = StepSums::default();
        let mut pending: Vec<PendingStep> = vec![];
        let mut lr = cfg.lr;
        let mut busy = 0.0f64;
        for (step, batch) in loader.by_ref().enumerate() {
            let t0 = Instant::now();
            let (x, y) = to_tensors(&batch, shape, model.device());
            lr = schedule.lr(epoch, step, steps);
            let mut taps = if tap_names.is_empty() { Taps::none() } else { Taps::only(&tap_names) };
            // Under `amp` the forward pass runs in bf16/fp16, and the logits come back as float32
            // before any loss sees them (src/train/engine/amp.rs says why).
            let logits = amp::forward(cfg.amp, model.device(), || model.forward_train_taps(&x, &mut taps))?;
            let input =
                StepInput { images: &x, labels: &y, batch: &batch, epoch, step, steps, seed: cfg.seed, taps: &taps };
            let terms = objective.terms(&logits, &input)?;
            events.sample(&*objective);
            let loss = terms
                .iter()
                .map(|(_, t)| t.shallow_clone())
                .reduce(|a, b| a + b)
                .context("the objective returned no loss terms")?;
            opt.zero_grad();
            let update = if opt.is_dot() {
                // DOT differentiates the task term and the distillation terms separately.
                let (task, distill) = split_terms(&terms);
                opt.backward_split(task.as_ref(), distill.as_ref(), scaler.as_ref().map_or(1.0, |s| s.scale));
                scaler.as_mut().is_none_or(|s| s.unscale(&opt.grads()))
            } else {
                amp::backward(&loss, scaler.as_mut(), || opt.grads())
            };
            let grad_norm = if !update {
                // fp16 overflowed: the step is skipped, and its gradients are no measure of anything.
                Tensor::from(0.0f64)
            } else if cfg.clip_grad_norm > 0.0 {
                opt.clip_grad_norm(cfg.clip_grad_norm)
            } else {
                opt.grad_norm()
            };
            pending.push(PendingStep::new(step, lr, &loss, &terms, &logits, &y, grad_norm));
            if pending.len() >= sync_every || step + 1 == steps {
                // A NaN is found here, up to sync_every − 1 updates late: the weights in memory
                // are lost either way, and the last checkpoint on disk is untouched.
                if let Err((bad_step, v)) =
                    sums.add(&mut pending, epoch + 1, epoch * steps, opts.trace_steps, &mut trace, events)
                {
                    bail!(
                        "the loss became {v} at epoch {} step {} of {}; training stopped (lr {lr:.4}). The last good checkpoint is {}",
                        epoch + 1,
                        bad_step + 1,
                        steps,
                        if history.is_empty() { "none (no epoch finished)".to_string() } else { dir.join("last.json").display().to_string() }
                    );
                }
            }
            if update {
                opt.step(lr);
            }
            busy += t0.elapsed().as_secs_f64();
            bar.inc(1);
            if sums.seen > 0 && (step % 5 == 0 || step + 1 == steps) {
                bar.set_message(format!(
                    "loss {:.4} acc {:5.1}% {:.0} img/s",
                    sums.loss / sums.seen as f64,
                    100.0 * sums.correct as f64 / sums.seen as f64,
                    sums.seen as f64 / busy.max(1e-9)
                ));
            }
        }
        loader.finish()?; // an image file that cannot be decoded ends the epoch: the run stays resumable
        if !trace.is_empty() && epoch * steps < opts.trace_steps {
            write_trace(dir, &trace)?;
        }
        bar.finish_and_clear();
        let train_time = start.elapsed().as_secs_f64();
        let evals = Evaluations {
            test: eval::evaluate_feed(model, test_feed.clone())?,
            val: val_feed.as_ref().map(|v| eval::evaluate_feed(model, v.clone())).transpose()?,
        };
        let metrics =
            epoch_metrics(epoch, lr, sums, evals, train_time, start.elapsed().as_secs_f64(), objective.end_epoch());
        events.epoch(&metrics)?; // before the checkpoint: see `events` on resuming
        history.push(metrics.clone());
        record.wall_time_s += metrics.time_s;
        save_epoch(cfg, dir, trainee, opt, history)?;
        record.epochs_done = history.len();
        run::write_record(dir, record)?;
        if !opts.quiet {
            print_epoch(cfg, history, &metrics);
        }
    }
    Ok(())
}

/// The task loss (the term named `objective::TASK_TERM`) and the distillation loss (the sum of
/// every other term), as DOT separates them; None where there is no such term.
fn split_terms(terms: &[(String, Tensor)]) -> (Option<Tensor>, Option<Tensor>) {
    let sum = |task: bool| {
        terms.iter().filter(|(k, _)| (k == TASK_TERM) == task).map(|(_, t)| t.shallow_clone()).reduce(|a, b| a + b)
    };
    (sum(true), sum(false))
}

/// An epoch's evaluation on the test set and, when there is one, the validation split.
struct Evaluations {
    test: eval::EvalResult,
    val: Option<eval::EvalResult>,
}

/// An epoch's record: its training sums as means, its evaluations, its times.
fn epoch_metrics(
    epoch: usize,
    lr: f64,
    sums: StepSums,
    evals: Evaluations,
    train_time: f64,
    time_s: f64,
    extra: Option<serde_json::Value>,
) -> EpochMetrics {
    let StepSums { loss: loss_sum, terms: term_sums, correct, seen, steps, grad_norm_sum, grad_norm_max } = sums;
    let Evaluations { test, val } = evals;
    EpochMetrics {
        epoch: epoch + 1,
        lr,
        train_loss: loss_sum / seen.max(1) as f64,
        train_acc: correct as f64 / seen.max(1) as f64,
        test_loss: test.loss,
        test_acc: test.acc,
        val_loss: val.as_ref().map(|v| v.loss),
        val_acc: val.as_ref().map(|v| v.acc),
        time_s,
        images_per_s: seen as f64 / train_time.max(1e-9),
        terms: term_sums.into_iter().map(|(k, v)| (k, v / seen.max(1) as f64)).collect(),
        grad_norm_mean: Some(grad_norm_sum / steps.max(1) as f64),
        grad_norm_max: Some(grad_norm_max),
        extra,
    }
}

/// The line printed after each epoch.
fn print_epoch(cfg: &TrainConfig, history: &[EpochMetrics], metrics: &EpochMetrics) {
    let best = history.iter().map(|m| m.test_acc).fold(0.0, f64::max);
    println!(
        "epoch {:>3}/{}  lr {:.4}  loss {:.4}  train {:5.2}%  test {:5.2}% (best {:5.2}%){}  {:.0} img/s  {}",
        metrics.epoch,
        cfg.epochs,
        metrics.lr,
        metrics.train_loss,
        100.0 * metrics.train_acc,
        100.0 * metrics.test_acc,
        100.0 * best,
        metrics.val_acc.map(|v| format!("  val {:5.2}%", 100.0 * v)).unwrap_or_default(),
        metrics.images_per_s,
        fmt::duration(metrics.time_s)
    );
}

/// Writes the epoch's metrics and checkpoints. `last` is written last: it is what a resumed run
/// reads, so everything it implies must already be on disk.
/// What a run trains: the student, and a method's modules and state.
struct Trainee<'a> {
    model: &'a Model,
    method_vars: &'a nn::VarStore,
}

fn save_epoch(cfg: &TrainConfig, dir: &Path, trainee: &Trainee, opt: &Sgd, history: &[EpochMetrics]) -> Result<()> {
    let model = trainee.model;
    let method = Some(trainee.method_vars).filter(|v| !v.variables().is_empty());
    let m = history.last().expect("an epoch was just recorded");
    let best = best_epoch(history);
    let meta = CheckpointMeta {
        format: String::new(),
        model: model.arch.clone(),
        input: model.input,
        classes: model.classes,
        epoch: m.epoch,
        weights_file: String::new(),
        weights_sha256: String::new(),
        params: model.params(),
        test_acc: m.test_acc,
        best_test_acc: best.test_acc,
        best_epoch: best.epoch,
        optimizer: OptimizerMeta {
            kind: cfg.optimizer.as_str().into(),
            lr: m.lr,
            momentum: cfg.momentum,
            nesterov: cfg.nesterov,
            weight_decay: cfg.weight_decay,
            has_momentum_buffers: false,
            dot_delta: (cfg.optimizer == Optimizer::Dot).then_some(cfg.dot_delta),
        },
        history: history.to_vec(),
    };
    run::write_metrics_csv(dir, history)?;
    if cfg.save_every > 0 && m.epoch % cfg.save_every == 0 {
        let stem = checkpoint::epoch_stem(m.epoch);
        checkpoint::save_with(&dir.join("checkpoints"), &stem, model, Some(opt), method, meta.clone())?;
    }
    if best.epoch == m.epoch {
        checkpoint::save_with(dir, "best", model, Some(opt), method, meta.clone())?;
    }
    checkpoint::save_with(dir, "last", model, Some(opt), method, meta)?;
    Ok(())
}
