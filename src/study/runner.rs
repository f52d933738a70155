//! Running a study: plan its runs, bring the store up to date with the run directories, then run
//! what is left, `--workers` processes at a time (each with its own threads). Each run is its own
//! process (`kdlab sweep-run`), so a crash, a NaN or a kill costs only that run's current epoch:
//! started again, the same command skips finished runs and resumes interrupted ones from their
//! last checkpoint.
use super::config::StudyConfig;
use super::devices::{DeviceKind, DevicePlan, Scheduler, Slot};
use super::plan::{self, Kind, RunSpec};
use super::store::{Status, Store};
use crate::train::run;
use crate::util::{atomic, fmt, sealed};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// The devices the workers run on and how many on each (`--workers` on the CPU; `--device`,
    /// `--devices`, `--workers-per-device` on GPUs).
    pub devices: DevicePlan,
    /// Threads per worker (default: the cores divided among the workers).
    pub threads: Option<usize>,
    pub retry_failed: bool,
    pub dry_run: bool,
    /// Print one line per finished run only.
    pub quiet: bool,
}

/// Holds an exclusive lock on a file for as long as the value lives.
pub struct Lock(#[allow(dead_code)] File);

/// Takes an exclusive, non-blocking lock on `path`; `what` explains a refusal.
pub fn lock(path: &Path, what: &str) -> Result<Lock> {
    use std::os::fd::AsRawFd;
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("{what} ({} is locked)", path.display());
    }
    Ok(Lock(f))
}

/// The study directory for a study file (`--out`, else a directory named after the study).
pub(crate) fn study_dir(cfg: &StudyConfig, out: Option<&Path>) -> PathBuf {
    out.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(&cfg.name))
}

/// Reads a finished run's record and history from its directory, if it finished.
fn finished(dir: &Path, spec: &RunSpec) -> Result<Option<(run::RunRecord, Vec<run::EpochMetrics>)>> {
    let Some(rec) = run::read_record(dir)? else { return Ok(None) };
    if rec.status != run::RunStatus::Done || rec.epochs_done < spec.train.epochs {
        return Ok(None);
    }
    let meta = crate::train::checkpoint::read_meta(&dir.join("last.json"))?;
    Ok(Some((rec, meta.history)))
}

/// The failure a run recorded in its directory (training errors: a NaN loss, a full disk), if any.
fn recorded_failure(dir: &Path) -> Option<String> {
    let rec = run::read_record(dir).ok()??;
    (rec.status == run::RunStatus::Failed).then(|| rec.error.unwrap_or_else(|| "failed (no error recorded)".into()))
}

/// Brings the store in line with the plan and the run directories: adds new runs, imports runs
/// that finished (also ones run elsewhere, e.g. by Slurm jobs), requeues runs left `running` by a
/// killed sweep, and (with `retry_failed`) failed ones. `rebuilt`: the store was just built anew
/// (its file was missing or damaged), so a failure a run recorded in its directory is taken back
/// into it rather than queued again.
pub fn sync(store: &mut Store, specs: &[RunSpec], dir: &Path, retry_failed: bool, rebuilt: bool) -> Result<()> {
    store.add_missing(specs)?;
    for s in specs {
        let stored = store.get(&s.id)?.expect("just added");
        let rdir = plan::run_dir(dir, &s.id);
        if let Some((rec, history)) = finished(&rdir, s)? {
            if stored.status != Status::Done {
                store.record_done(&s.id, &rec, &history)?;
            }
            continue;
        }
        if rebuilt && !retry_failed && stored.status == Status::Queued {
            if let Some(error) = recorded_failure(&rdir) {
                store.set_status(&s.id, Status::Failed, Some(&error))?;
                continue;
            }
        }
        match stored.status {
            Status::Done => store.set_status(&s.id, Status::Queued, None)?, // its directory was removed
            Status::Running => store.set_status(&s.id, Status::Queued, None)?,
            Status::Failed if retry_failed => store.set_status(&s.id, Status::Queued, None)?,
            _ => {}
        }
    }
    Ok(())
}

/// The index of a study whose `study.sqlite` is missing while a sweep holds the study (the
/// database was deleted under it), rebuilt in memory from the study file and the run directories
/// without touching the directory.
pub(crate) fn index_in_memory(study_file: &Path, dir: &Path) -> Result<Store> {
    let text = sealed::read_text(study_file)?;
    let cfg = StudyConfig::load(study_file)?;
    let specs = plan::expand(&cfg, dir)?;
    let mut store = Store::open(Path::new(":memory:"))?;
    store.set_meta("study_toml", &text)?;
    store.set_meta("plan", &serde_json::to_string(&specs.iter().map(|s| &s.id).collect::<Vec<_>>())?)?;
    sync(&mut store, &specs, dir, false, true)?;
    Ok(store)
}

/// Plans a study, opens its directory and store, and syncs them.
pub fn open(
    study_file: &Path,
    out: Option<&Path>,
    retry_failed: bool,
) -> Result<(StudyConfig, PathBuf, Vec<RunSpec>, Store)> {
    // The study directory's copy of the study file is sealed; verified before it is planned.
    let text = sealed::read_text(study_file)?;
    let cfg = StudyConfig::load(study_file)?;
    let dir = study_dir(&cfg, out);
    std::fs::create_dir_all(dir.join("runs")).with_context(|| format!("creating {}", dir.display()))?;
    let specs = plan::expand(&cfg, &dir)?;
    let db = dir.join("study.sqlite");
    let mut rebuilt = false;
    if !db.exists() && dir.join("runs").read_dir().is_ok_and(|mut d| d.next().is_some()) {
        rebuilt = true;
        // A WAL left by the deleted database must not be replayed into the new one.
        for stale in ["study.sqlite-wal", "study.sqlite-shm"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        eprintln!("note: {} is missing; rebuilding the study's index from its run directories", db.display());
    }
    let mut store = match Store::open(&db) {
        Err(e) if super::store::is_damaged(&e) => {
            // The index is derived from the run directories: keep the damaged file for a look,
            // with its WAL (which must not be replayed into the new one), and build it anew.
            for part in ["", "-wal", "-shm"] {
                let from = dir.join(format!("study.sqlite{part}"));
                if from.exists() {
                    let to = dir.join(format!("study.sqlite.damaged{part}"));
                    std::fs::rename(&from, &to)
                        .with_context(|| format!("setting {} aside as {}", from.display(), to.display()))?;
                }
            }
            eprintln!(
                "warning: {e:#}; it is kept as {} and the index is rebuilt from the run directories",
                dir.join("study.sqlite.damaged").display()
            );
            rebuilt = true;
            Store::open(&db)?
        }
        opened => opened?,
    };
    atomic::write_bytes(&dir.join("study.toml"), sealed::seal_text(&text).as_bytes())?;
    store.set_meta("study_toml", &text)?;
    store.set_meta("kdlab_version", crate::VERSION)?;
    store.set_meta("plan", &serde_json::to_string(&specs.iter().map(|s| &s.id).collect::<Vec<_>>())?)?;
    sync(&mut store, &specs, &dir, retry_failed, rebuilt)?;
    Ok((cfg, dir, specs, store))
}

struct Running {
    id: String,
    child: Child,
    started: Instant,
    /// The device slot the worker holds.
    slot: Slot,
}

/// Times a run is given back to the queue after its GPU worker was killed, before the next death
/// counts as the run's failure.
const MAX_REQUEUES: usize = 3;

/// Starts each attempt's section of a run's log.
const ATTEMPT_MARK: &str = "--- kdlab sweep: attempt started ";

/// The executable a sweep's workers run, fixed once when the sweep starts.
///
/// `KDLAB_WORKER_EXE`, when set, names it (a seam for tests, and a way to pin a build). Otherwise,
/// on Linux, `/proc/self/exe`: exec'd in the forked child, it names the inode the sweep itself
/// runs from, which the kernel keeps alive even when the file at the sweep's path is deleted or
/// replaced — a rebuild in place (`cargo build`, `make install`) while a sweep runs neither breaks
/// the next spawn nor mixes two builds in one sweep. (`std::env::current_exe()` would give the
/// path, which after a rebuild names the new file, or reads back as `… (deleted)`.)
pub(crate) struct WorkerExe {
    /// What is exec'd.
    path: PathBuf,
    /// The sweep's own path, shown as the worker's argv[0] and in errors.
    shown: String,
}

impl WorkerExe {
    pub fn resolve() -> Result<WorkerExe> {
        let own = std::env::current_exe().context("finding kdlab's own executable")?;
        let shown = own.display().to_string();
        if let Some(p) = std::env::var_os("KDLAB_WORKER_EXE") {
            let path = PathBuf::from(p);
            let shown = path.display().to_string();
            return Ok(WorkerExe { path, shown });
        }
        let proc_exe = PathBuf::from("/proc/self/exe");
        let path = if proc_exe.exists() { proc_exe } else { own };
        Ok(WorkerExe { path, shown })
    }
}

/// Where one worker runs: the CPU, or one GPU by its `CUDA_VISIBLE_DEVICES` index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    Cpu,
    Gpu(usize),
}

impl Placement {
    fn describe(self) -> String {
        match self {
            Placement::Cpu => "cpu".into(),
            Placement::Gpu(g) => format!("cuda:{g}"),
        }
    }
}

/// The device a slot of `plan` stands for.
fn placement(plan: &DevicePlan, slot: Slot) -> Placement {
    match plan.kind {
        DeviceKind::Cpu => Placement::Cpu,
        DeviceKind::Cuda => Placement::Gpu(plan.gpus[slot]),
    }
}

/// Refuses to continue a run on another kind of device than the one it started on: its resumed
/// epochs would not be the numbers an uninterrupted run gives. A run with no finished epoch, or
/// whose record names no device, may go anywhere.
pub(crate) fn check_device_kind(rdir: &Path, kind: DeviceKind) -> Result<()> {
    let Some(rec) = run::read_record(rdir)? else { return Ok(()) };
    match DeviceKind::of_record(&rec.device) {
        Some(was) if was != kind && rec.epochs_done > 0 => bail!(
            "{} trained {} epoch(s) on {} ({}); continuing it on {} would mix devices in one run. \
             Resume it with --device {}, or delete the run directory to train it again on {}",
            rdir.display(),
            rec.epochs_done,
            was.as_str(),
            rec.device,
            kind.as_str(),
            was.as_str(),
            kind.as_str()
        ),
        _ => Ok(()),
    }
}

fn spawn(dir: &Path, spec: &RunSpec, threads: usize, exe: &WorkerExe, on: Placement) -> Result<Child> {
    let rdir = plan::run_dir(dir, &spec.id);
    std::fs::create_dir_all(&rdir)?;
    let spec_path = rdir.join("spec.json");
    sealed::write_json(&spec_path, &RunSpec { threads: Some(threads), ..spec.clone() })?;
    let mut log = File::options().create(true).append(true).open(rdir.join("log.txt"))?;
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    writeln!(log, "{ATTEMPT_MARK}(unix time {unix}) on {}", on.describe())?;
    let mut cmd = Command::new(&exe.path);
    let device = match on {
        Placement::Cpu => "cpu",
        Placement::Gpu(_) => "cuda",
    };
    cmd.arg0(&exe.shown)
        .args(["sweep-run", &spec_path.display().to_string(), "--threads", &threads.to_string(), "--device", device])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // The worker sees its one GPU only (as cuda:0): it cannot allocate on a card another worker
    // was given, and its run record names the physical GPU through this variable.
    if let Placement::Gpu(g) = on {
        cmd.env("CUDA_VISIBLE_DEVICES", g.to_string());
    }
    // LibTorch's OpenMP threads spin while they wait for work. When the machine has more busy
    // threads than cores (two workers, a compiler, another job), spinning threads steal the cores
    // the working ones need: a 2-thread ISATS student took 82–90 s instead of 7–11 s under load
    // (docs/performance.md). Passive waiting costs a wake-up per parallel region instead. A
    // setting the user made is kept.
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        cmd.env("OMP_WAIT_POLICY", "PASSIVE");
    }
    // SAFETY: prctl is async-signal-safe; the child dies with the sweep, so a killed sweep
    // never leaves a run training behind that a restarted sweep would start a second time.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting {} for the run {}", exe.shown, spec.id))
}

/// The reason a run's process failed: the error it recorded, else its log's last error line.
fn failure_reason(dir: &Path, code: Option<i32>) -> String {
    // The log holds every attempt; only this attempt's error counts (an earlier attempt's, or
    // the one an earlier attempt left in run.json, may be stale).
    let log = std::fs::read_to_string(dir.join("log.txt")).unwrap_or_default();
    let this_attempt = log.rsplit(ATTEMPT_MARK).next().unwrap_or_default();
    this_attempt
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .map(|l| l.trim_start_matches("error:").trim().to_string())
        .unwrap_or_else(|| format!("the run's process exited with {code:?}; see {}", dir.join("log.txt").display()))
}

/// (done, failed) among the planned runs: the store also keeps runs that an earlier version of the
/// study file planned.
fn planned_counts(store: &Store, planned: &HashMap<&str, &RunSpec>) -> Result<(usize, usize)> {
    let runs: Vec<_> = store.runs()?.into_iter().filter(|r| planned.contains_key(r.id.as_str())).collect();
    let count = |status: Status| runs.iter().filter(|r| r.status == status).count();
    Ok((count(Status::Done), count(Status::Failed)))
}

/// Runs everything a study still needs.
pub fn sweep(study_file: &Path, out: Option<&Path>, opts: &SweepOptions) -> Result<PathBuf> {
    let cfg0 = StudyConfig::load(study_file)?;
    let dir0 = study_dir(&cfg0, out);
    std::fs::create_dir_all(&dir0).with_context(|| format!("creating {}", dir0.display()))?;
    let _lock = lock(&dir0.join(".sweep.lock"), &format!("another sweep is already running on {}", dir0.display()))?;
    let (cfg, dir, specs, mut store) = open(study_file, out, opts.retry_failed)?;
    for note in cfg.skipped_notes() {
        println!("note: {note}");
    }
    let todo: Vec<&RunSpec> =
        specs.iter().filter(|s| store.get(&s.id).ok().flatten().map(|r| r.status) == Some(Status::Queued)).collect();
    let mixed: Vec<String> = todo
        .iter()
        .filter_map(|s| check_device_kind(&plan::run_dir(&dir, &s.id), opts.devices.kind).err())
        .map(|e| format!("{e:#}"))
        .collect();
    if !mixed.is_empty() {
        bail!("{} run(s) started on another kind of device:\n  {}", mixed.len(), mixed.join("\n  "));
    }
    if opts.dry_run {
        print_plan(&dir, &specs, &todo);
        return Ok(dir);
    }
    let workers = opts.devices.workers().max(1);
    // The study's thread count, when it fixes one, is what its runs compute with anywhere.
    let threads =
        opts.threads.or(cfg.threads).unwrap_or_else(|| (crate::util::device::available_cores() / workers).max(1));
    println!(
        "{} ({}): {} runs, {} to run with {workers} worker(s) × {threads} thread(s){}",
        cfg.name,
        dir.display(),
        specs.len(),
        todo.len(),
        if opts.devices.kind == DeviceKind::Cuda { format!(" on {}", opts.devices) } else { String::new() }
    );
    let started = Instant::now();
    let mut pool = Pool {
        dir: &dir,
        specs: &specs,
        by_id: specs.iter().map(|s| (s.id.as_str(), s)).collect(),
        exe: WorkerExe::resolve()?,
        plan: opts.devices.clone(),
        scheduler: Scheduler::new(&opts.devices),
        attempts: HashMap::new(),
        threads,
        quiet: opts.quiet,
        running: vec![],
        spawn_error: None,
    };
    pool.run(&cfg, &mut store)?;
    let (d, f) = planned_counts(&store, &pool.by_id)?;
    if pool.scheduler.all_retired() {
        bail!(
            "the sweep stopped: the workers on every device ({}) kept dying; {d} of {} runs are done and the rest \
             stay queued. Check the GPUs (nvidia-smi), then continue with `kdlab sweep {} --out {} {}`",
            pool.plan,
            specs.len(),
            study_file.display(),
            dir.display(),
            device_flags(opts)
        );
    }
    println!(
        "{}: {d} of {} runs done, {f} failed, in {}. `kdlab report {}` writes the report.",
        cfg.name,
        specs.len(),
        fmt::duration(started.elapsed().as_secs_f64()),
        dir.display()
    );
    if f > 0 {
        println!("failed runs are retried with --retry-failed; `kdlab status {}` lists them", dir.display());
    }
    if let Some((id, e)) = pool.spawn_error {
        let queued = store
            .runs()?
            .iter()
            .filter(|r| pool.by_id.contains_key(r.id.as_str()) && r.status == Status::Queued)
            .count();
        let mut again = format!("kdlab sweep {} --out {} {}", study_file.display(), dir.display(), device_flags(opts));
        if let Some(t) = opts.threads {
            again += &format!(" --threads {t}");
        }
        bail!(
            "the sweep stopped: it could not start a worker for the run {id}: {e:#}. No run was marked failed; \
             {queued} runs are still queued. Once the cause is fixed, continue with `{again}`"
        );
    }
    Ok(dir)
}

/// The flags that give a sweep the same workers and devices again.
fn device_flags(opts: &SweepOptions) -> String {
    let p = &opts.devices;
    match p.kind {
        DeviceKind::Cpu => format!("--workers {}", p.per_device),
        DeviceKind::Cuda => {
            let ids: Vec<String> = p.gpus.iter().map(usize::to_string).collect();
            format!("--devices {} --workers-per-device {}", ids.join(","), p.per_device)
        }
    }
}

/// `--dry-run`: what a sweep would run.
fn print_plan(dir: &Path, specs: &[RunSpec], todo: &[&RunSpec]) {
    println!(
        "{}: {} runs planned, {} to run ({} done or failed)",
        dir.display(),
        specs.len(),
        todo.len(),
        specs.len() - todo.len()
    );
    let rows: Vec<Vec<String>> = todo
        .iter()
        .map(|s| vec![s.id.clone(), s.kind.as_str().into(), s.name.clone(), s.train.epochs.to_string()])
        .collect();
    if !rows.is_empty() {
        let table = fmt::table(&["id", "kind", "run", "epochs"], &rows);
        print!("{table}{}", if table.ends_with('\n') { "" } else { "\n" });
    }
}

/// The sweep's workers: the runs in flight, and what starting one needs.
struct Pool<'a> {
    dir: &'a Path,
    specs: &'a [RunSpec],
    by_id: HashMap<&'a str, &'a RunSpec>,
    exe: WorkerExe,
    plan: DevicePlan,
    scheduler: Scheduler,
    /// Times each run's worker was killed on a GPU and the run requeued.
    attempts: HashMap<String, usize>,
    threads: usize,
    quiet: bool,
    running: Vec<Running>,
    /// A worker that could not be started: the sweep's failure, not the run's. The run goes back
    /// to `queued`, nothing more starts, the running workers finish, and the sweep reports it.
    spawn_error: Option<(String, anyhow::Error)>,
}

impl Pool<'_> {
    /// Starts runs as their teachers finish, until none is left to start and none is running.
    fn run(&mut self, cfg: &StudyConfig, store: &mut Store) -> Result<()> {
        let mut probed = false;
        loop {
            let st = self.fail_orphans(store)?;
            let teachers_done =
                self.specs.iter().filter(|s| s.kind == Kind::Teacher).all(|s| st.get(&s.id) == Some(&Status::Done));
            if teachers_done && !probed {
                probed = true;
                if let Err(e) = super::probe_teachers(cfg, self.dir, self.specs, store) {
                    eprintln!("warning: probing the teachers failed: {e:#}");
                }
            }
            let ready: Vec<&RunSpec> = self
                .specs
                .iter()
                .filter(|s| st.get(&s.id) == Some(&Status::Queued))
                .filter(|s| !self.running.iter().any(|r| r.id == s.id))
                .filter(|s| s.depends_on.iter().all(|d| st.get(d) == Some(&Status::Done)))
                .collect();
            let stopped = self.spawn_error.is_some() || self.scheduler.all_retired();
            if (ready.is_empty() || stopped) && self.running.is_empty() {
                return Ok(());
            }
            self.start(&ready, store)?;
            std::thread::sleep(Duration::from_millis(200));
            self.reap(store)?;
        }
    }

    /// Marks failed the queued runs whose teacher run failed (they cannot run); every run's status.
    fn fail_orphans(&self, store: &Store) -> Result<HashMap<String, Status>> {
        let st: HashMap<String, Status> = store.runs()?.into_iter().map(|r| (r.id, r.status)).collect();
        for s in self.specs {
            if st.get(&s.id) == Some(&Status::Queued) {
                if let Some(dep) = s.depends_on.iter().find(|d| st.get(*d) == Some(&Status::Failed)) {
                    store.set_status(&s.id, Status::Failed, Some(&format!("its teacher run {dep} failed")))?;
                }
            }
        }
        Ok(store.runs()?.into_iter().map(|r| (r.id, r.status)).collect())
    }

    /// Starts ready runs in the free worker slots, each on the least busy device with room (none
    /// after a worker failed to start).
    fn start(&mut self, ready: &[&RunSpec], store: &Store) -> Result<()> {
        if self.spawn_error.is_some() {
            return Ok(());
        }
        for s in ready {
            let Some(slot) = self.scheduler.acquire() else { break };
            store.set_status(&s.id, Status::Running, None)?;
            let on = placement(&self.plan, slot);
            match spawn(self.dir, s, self.threads, &self.exe, on) {
                Ok(child) => {
                    if !self.quiet {
                        match on {
                            Placement::Cpu => println!("  start {} {}", s.id, s.name),
                            Placement::Gpu(_) => println!("  start {} {} on {}", s.id, s.name, on.describe()),
                        }
                    }
                    self.running.push(Running { id: s.id.clone(), child, started: Instant::now(), slot });
                }
                Err(e) => {
                    self.scheduler.release(slot, false);
                    store.set_status(&s.id, Status::Queued, None)?;
                    eprintln!(
                        "error: could not start a worker for {} ({e:#}); starting no more runs{}",
                        s.name,
                        if self.running.is_empty() {
                            String::new()
                        } else {
                            format!(", waiting for the {} running", self.running.len())
                        }
                    );
                    self.spawn_error = Some((s.id.clone(), e));
                    break;
                }
            }
        }
        Ok(())
    }

    /// Records the runs whose process has exited: done if it finished its epochs, else failed with
    /// the reason from its log.
    fn reap(&mut self, store: &mut Store) -> Result<()> {
        let mut still = vec![];
        for mut r in self.running.drain(..) {
            let Some(code) = r.child.try_wait()? else {
                still.push(r);
                continue;
            };
            let spec = self.by_id[r.id.as_str()];
            let rdir = plan::run_dir(self.dir, &r.id);
            // On a GPU a worker killed by a signal (the device fell off the bus, the OOM killer) is
            // the device's failure, not the run's: the run goes back to the queue, resumes from
            // its last checkpoint on whichever GPU is free, and the scheduler retires a GPU whose
            // workers keep dying. On the CPU such a death stays the run's failure, as before.
            let died = code.code().is_none() && self.plan.kind == DeviceKind::Cuda;
            let on = placement(&self.plan, r.slot);
            if self.scheduler.release(r.slot, died) {
                eprintln!(
                    "warning: {} workers on {} died in a row; no more runs go to it",
                    super::devices::RETIRE_AFTER,
                    on.describe()
                );
            }
            let tries = self.attempts.entry(r.id.clone()).or_default();
            if died && *tries < MAX_REQUEUES {
                *tries += 1;
                store.set_status(&r.id, Status::Queued, None)?;
                println!("  requeued {}: its worker on {} was killed ({code})", spec.name, on.describe());
                continue;
            }
            let outcome = if code.success() { finished(&rdir, spec)? } else { None };
            let line = match outcome {
                Some((rec, history)) => {
                    store.record_done(&r.id, &rec, &history)?;
                    format!(
                        "{}: final {:.2}%, best {:.2}% ({})",
                        spec.name,
                        100.0 * rec.final_test_acc.unwrap_or(f64::NAN),
                        100.0 * rec.best_test_acc.unwrap_or(f64::NAN),
                        fmt::duration(r.started.elapsed().as_secs_f64())
                    )
                }
                None => {
                    let why = failure_reason(&rdir, code.code());
                    store.set_status(&r.id, Status::Failed, Some(&why))?;
                    format!("FAILED {}: {why}", spec.name)
                }
            };
            let (d, f) = planned_counts(store, &self.by_id)?;
            println!("[{d}/{} done, {f} failed] {line}", self.specs.len());
        }
        self.running = still;
        Ok(())
    }
}

/// `kdlab sweep-run SPEC.json`: trains one run of a study (what a sweep worker or a Slurm job runs).
pub(crate) fn run_one(spec_path: &Path, device: tch::Device) -> Result<()> {
    let spec: RunSpec = sealed::read_json(spec_path, "a study run")?;
    let rdir = spec_path.parent().context("a spec lives in its run directory")?.to_path_buf();
    let study = rdir.parent().and_then(Path::parent).context("a run directory lives in <study>/runs/")?.to_path_buf();
    let _lock = lock(&rdir.join(".lock"), &format!("run {} is already being trained by another process", spec.id))?;
    check_device_kind(&rdir, if device == tch::Device::Cpu { DeviceKind::Cpu } else { DeviceKind::Cuda })?;
    // The spec's thread count wins over --threads: it is what the run's numbers depend on.
    if let Some(n) = spec.threads {
        crate::util::device::set_threads(n);
    }
    // Only the id: a run's label may change in the study file without making it another run.
    let extra = serde_json::json!({"study_run": spec.id});
    match &spec.teacher {
        None => {
            let data = spec.train.load_data()?;
            let opts = crate::train::trainer::RunOptions {
                extra,
                ..crate::train::trainer::RunOptions::new(&rdir, device, "train")
            };
            crate::train::trainer::train(&spec.train, &data, &mut crate::train::objective::CrossEntropy, &opts)?;
        }
        Some(t) => {
            let (tspec, extra) = teacher_for_run(t, &study, &spec, extra)?;
            let cfg = crate::train::distill::DistillConfig {
                train: spec.train.clone(),
                teacher: tspec.clone(),
                assistants: vec![],
                guides: spec.guides.iter().map(|g| g.spec(&study)).collect(),
                method: spec.method.clone(),
                teacher_cache: spec.teacher_cache,
                teacher_norm: Default::default(),
                teacher_calibrate: t.calibrate,
            };
            crate::train::distill::run(&cfg, &tspec, &rdir, device, false, 0, extra)?;
        }
    }
    Ok(())
}

/// The checkpoint a student run distils from, and what its record says of the teacher: the epoch a
/// fit rule chose (`teacher_fit`) and the teacher's fit as the method sees it (`teacher_stats`,
/// see [`super::fit::teacher_stats`]).
fn teacher_for_run(
    t: &plan::TeacherRef,
    study: &Path,
    spec: &RunSpec,
    mut extra: serde_json::Value,
) -> Result<(String, serde_json::Value)> {
    let mut t = t.clone();
    let mut data = None;
    if let Some(fit) = &t.fit {
        let d = data.insert(spec.train.load_data()?);
        let run: crate::train::checkpoint::RunRef = t.spec(study).parse()?;
        let candidates = super::fit::candidates(&run.dir, d)?;
        let c = fit.choose(&candidates).with_context(|| format!("teacher {} for {}", t.name, fit.label()))?;
        println!(
            "teacher {} at {}: epoch {} ({} = {:.4})",
            t.name,
            fit.label(),
            c.epoch,
            fit.metric.name(),
            c.value(fit.metric)
        );
        t.at_epoch = Some(c.epoch);
        extra["teacher_fit"] = serde_json::json!({"metric": fit.metric, "target": fit.target, "rule": fit.rule,
            "label": fit.label(), "epoch": c.epoch, "value": c.value(fit.metric),
            "val_acc": c.val_acc, "val_nll": c.val_nll, "val_ece": c.val_ece});
    }
    let tspec = t.spec(study);
    // The teacher's own fit, for the report; TorchScript teachers are not probed here.
    if !crate::train::teacher::is_torchscript(&tspec) {
        let d = match data {
            Some(d) => d,
            None => spec.train.load_data()?,
        };
        let teacher = crate::train::teacher::Teacher::load(&tspec, tch::Device::Cpu)?;
        let temperature = if t.calibrate { crate::train::distill::calibrated_temperature(&teacher, &d)? } else { 1.0 };
        extra["teacher_stats"] = super::fit::teacher_stats(&teacher, &d, temperature)?;
    }
    Ok((tspec, extra))
}
