//! What a Slurm cluster is asked for (`[slurm]` in the study file, `kdlab sweep --emit-slurm DIR
//! --partition …` on the command line), read and checked where the study file enters; the arrays
//! themselves are written by `super::slurm`.
//!
//! ```toml
//! threads = 1                 # LibTorch threads per run, local workers and array tasks alike
//!
//! [slurm]
//! partition = "cpu"
//! account = "my-project"
//! qos = "normal"
//! time = "2:00:00"            # per array task: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
//! mem = "4G"
//! cpus_per_task = 1           # default: the runs' thread count
//! gpus = 0                    # > 0: --gres=gpu:N and the runs on CUDA
//! max_running = 8             # at most this many tasks of an array at once (--array=1-N%8)
//! extra = ["--constraint=avx2", "--exclude=node13"]
//! ```
//!
//! Every value ends up in a shell script, so each is checked against what Slurm accepts for it
//! and refused, naming the key, if it holds anything else (a space, a quote, a newline, `$`).
use anyhow::{bail, Context, Result};

/// Slurm's default `MaxArraySize` is 1001 (indices 0–1000): a level with more runs is split into
/// several arrays of at most this many tasks.
pub(crate) const MAX_ARRAY: usize = 1000;

/// What `sbatch` is asked for, per array task. `None`/empty: not asked (the cluster's default).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub time: Option<String>,
    pub mem: Option<String>,
    pub cpus_per_task: Option<usize>,
    pub gpus: Option<usize>,
    pub max_running: Option<usize>,
    /// Further `sbatch` options, each one `--name=value` or `--flag`.
    pub extra: Vec<String>,
    /// The generic resource a study on GPUs asks for (the study's `device` and `gres` keys, checked
    /// there), in place of `gpu:N`; runs then train with `--device cuda`.
    pub gres: Option<String>,
}

pub(crate) const KEYS: [&str; 9] =
    ["partition", "account", "qos", "time", "mem", "cpus_per_task", "gpus", "max_running", "extra"];

/// Characters of a partition, account or QOS name.
fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.-+,".contains(c)
}

fn check_name(v: &str, key: &str, origin: &str) -> Result<()> {
    if v.is_empty() || !v.chars().all(name_char) {
        bail!("{origin}: slurm.{key} = {v:?} is not a Slurm name (letters, digits and _ . - + , only)");
    }
    Ok(())
}

/// Slurm's time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
fn check_time(v: &str, origin: &str) -> Result<()> {
    let digits = |s: &str| !s.is_empty() && s.len() <= 6 && s.chars().all(|c| c.is_ascii_digit());
    let ok = match v.split_once('-') {
        Some((days, rest)) => digits(days) && (1..=3).contains(&rest.split(':').count()) && rest.split(':').all(digits),
        None => (1..=3).contains(&v.split(':').count()) && v.split(':').all(digits),
    };
    if !ok {
        bail!(
            "{origin}: slurm.time = {v:?} is not a Slurm time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)"
        );
    }
    Ok(())
}

/// A memory size as `--mem` takes it: a number of megabytes, or a number with K, M, G or T.
fn check_mem(v: &str, origin: &str) -> Result<()> {
    let num = v.strip_suffix(['K', 'M', 'G', 'T']).unwrap_or(v);
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) {
        bail!("{origin}: slurm.mem = {v:?} is not a memory size (e.g. 4G, 500M, 4000)");
    }
    Ok(())
}

/// One further `sbatch` option: `--name` or `--name=value`, nothing a shell would act on.
fn check_extra(v: &str, origin: &str) -> Result<()> {
    let name_ok = v.strip_prefix("--").is_some_and(|rest| {
        let name = rest.split('=').next().unwrap_or_default();
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    let value_ok = v.chars().all(|c| c.is_ascii_alphanumeric() || "_.,:=+/@%-[]".contains(c));
    if !name_ok || !value_ok {
        bail!(
            "{origin}: slurm.extra entry {v:?} is not an sbatch option of the form --name or --name=value \
             (letters, digits and _ . , : = + / @ % - [ ] only)"
        );
    }
    Ok(())
}

fn positive(v: &toml::Value, key: &str, origin: &str, zero_ok: bool) -> Result<usize> {
    let min = if zero_ok { 0 } else { 1 };
    v.as_integer()
        .filter(|i| *i >= min && *i <= 1 << 20)
        .map(|i| i as usize)
        .with_context(|| format!("{origin}: slurm.{key} must be an integer ≥ {min}, found {v}"))
}

/// A study file's top-level `threads`: a positive integer, or absent.
pub(crate) fn parse_threads(v: Option<&toml::Value>, origin: &str) -> Result<Option<usize>> {
    v.map(|v| {
        v.as_integer().filter(|i| (1..=4096).contains(i)).map(|i| i as usize).with_context(|| {
            format!("{origin}: 'threads' must be a positive integer (LibTorch threads per run), found {v}")
        })
    })
    .transpose()
}

impl SlurmOptions {
    /// The `[slurm]` table of a study file (or the command line's flags gathered into one).
    pub fn parse(v: Option<&toml::Value>, origin: &str) -> Result<SlurmOptions> {
        let Some(v) = v else { return Ok(SlurmOptions::default()) };
        let t = v.as_table().with_context(|| format!("{origin}: '[slurm]' should be a table, found {v}"))?;
        let keys: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
        if let Some(k) = t.keys().find(|k| !keys.contains(k)) {
            let hint = crate::util::text::did_you_mean(k, &keys);
            bail!("{origin}: unknown key 'slurm.{k}'{hint}; valid keys: {}", keys.join(", "));
        }
        let string = |k: &str| -> Result<Option<String>> {
            match t.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => bail!("{origin}: slurm.{k} should be a string, found {v}"),
            }
        };
        let o = SlurmOptions {
            partition: string("partition")?,
            account: string("account")?,
            qos: string("qos")?,
            time: string("time")?,
            mem: string("mem")?,
            cpus_per_task: t.get("cpus_per_task").map(|v| positive(v, "cpus_per_task", origin, false)).transpose()?,
            gpus: t.get("gpus").map(|v| positive(v, "gpus", origin, true)).transpose()?,
            gres: None,
            max_running: t.get("max_running").map(|v| positive(v, "max_running", origin, false)).transpose()?,
            extra: match t.get("extra") {
                None => vec![],
                Some(toml::Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .with_context(|| format!("{origin}: slurm.extra must list strings, found {x}"))
                    })
                    .collect::<Result<_>>()?,
                Some(v) => bail!("{origin}: slurm.extra should be a list of strings, found {v}"),
            },
        };
        for (k, v) in [("partition", &o.partition), ("account", &o.account), ("qos", &o.qos)] {
            if let Some(v) = v {
                check_name(v, k, origin)?;
            }
        }
        if let Some(v) = &o.time {
            check_time(v, origin)?;
        }
        if let Some(v) = &o.mem {
            check_mem(v, origin)?;
        }
        for e in &o.extra {
            check_extra(e, origin)?;
        }
        Ok(o)
    }

    /// These options with `over`'s given values in their place (the command line over the study).
    pub(crate) fn overridden_by(self, over: SlurmOptions) -> SlurmOptions {
        SlurmOptions {
            partition: over.partition.or(self.partition),
            account: over.account.or(self.account),
            qos: over.qos.or(self.qos),
            time: over.time.or(self.time),
            mem: over.mem.or(self.mem),
            cpus_per_task: over.cpus_per_task.or(self.cpus_per_task),
            gpus: over.gpus.or(self.gpus),
            max_running: over.max_running.or(self.max_running),
            extra: if over.extra.is_empty() { self.extra } else { over.extra },
            gres: over.gres.or(self.gres),
        }
    }

    /// The `#SBATCH` lines these options ask for, given the CPUs each task gets.
    pub(super) fn sbatch_lines(&self, cpus: usize) -> String {
        let mut s = format!("#SBATCH --cpus-per-task={cpus}\n");
        let mut add = |name: &str, v: &Option<String>| {
            if let Some(v) = v {
                s += &format!("#SBATCH --{name}={v}\n");
            }
        };
        add("partition", &self.partition);
        add("account", &self.account);
        add("qos", &self.qos);
        add("time", &self.time);
        add("mem", &self.mem);
        if let Some(g) = &self.gres {
            s += &format!("#SBATCH --gres={g}\n");
        } else if let Some(g) = self.gpus.filter(|g| *g > 0) {
            s += &format!("#SBATCH --gres=gpu:{g}\n");
        }
        for e in &self.extra {
            s += &format!("#SBATCH {e}\n");
        }
        s
    }
}

/// The thread count each run of an `--emit-slurm` gets, and the CPUs each array task asks for:
/// `--threads`, else the study's `threads`, else `cpus_per_task`, else 1; the CPUs default to the
/// threads, so that neither waits for the other.
pub(crate) fn threads_and_cpus(threads: Option<usize>, opts: &SlurmOptions) -> (usize, usize) {
    let t = threads.or(opts.cpus_per_task).unwrap_or(1);
    (t, opts.cpus_per_task.unwrap_or(t))
}
