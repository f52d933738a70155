//! Slurm job arrays for a study: one array per dependency level, each task one run (the options
//! they ask for are `super::slurm_options`).
use super::plan::{self, Kind, RunSpec};
use super::store::{Status, Store};
use crate::util::{atomic, sealed};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub use super::slurm_options::*;

/// `'text'` for a shell, whatever it holds.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// What `emit` wrote.
pub struct Emitted {
    pub files: Vec<PathBuf>,
    /// Runs in the arrays.
    pub runs: usize,
    pub threads: usize,
    pub cpus: usize,
}

/// Writes Slurm job arrays for the runs still to do: one array per dependency level (teachers,
/// then assistants — one level per link of a DGKD chain, `assistants1`, `assistants2`, … — then
/// students; a level of more than `MAX_ARRAY` runs in several), each level waiting for the one
/// before with `afterok`. Each task runs `kdlab sweep-run` on its run's spec —
/// which carries the thread count, so that an array task computes what a local worker computes —
/// and writes only into its own run directory; `kdlab sweep` or `kdlab report` then imports the
/// finished runs into the study's database (one writer, so SQLite never has to lock across a
/// network file system).
pub fn emit(
    dir: &Path,
    specs: &[RunSpec],
    store: &Store,
    out: &Path,
    opts: &SlurmOptions,
    threads: Option<usize>,
) -> Result<Emitted> {
    let depth = depths(specs);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out_abs = std::fs::canonicalize(out)?;
    let exe = std::env::current_exe().context("finding kdlab's own executable")?.display().to_string();
    let (threads, cpus) = threads_and_cpus(threads, opts);
    let gpu = opts.gpus.is_some_and(|g| g > 0) || opts.gres.is_some();
    let mut files = vec![];
    let mut runs = 0;
    let mut submit = String::from(
        "#!/bin/bash\n# Submits the study's job arrays in dependency order (written by kdlab sweep --emit-slurm).\n\
         set -euo pipefail\ncd \"$(dirname \"$0\")\"\n",
    );
    // The arrays of the level before, which this level waits for.
    let mut prev: Vec<String> = vec![];
    let levels = [Kind::Teacher, Kind::Assistant, Kind::Student].into_iter().flat_map(|kind| {
        let deepest = specs.iter().filter(|s| s.kind == kind).map(|s| depth[s.id.as_str()]).max().unwrap_or(0);
        (0..=deepest).map(move |d| (kind, d, deepest))
    });
    for (kind, d, deepest) in levels {
        let todo: Vec<&RunSpec> = specs
            .iter()
            .filter(|s| s.kind == kind && depth[s.id.as_str()] == d)
            .filter(|s| store.get(&s.id).ok().flatten().is_some_and(|r| r.status != Status::Done))
            .collect();
        if todo.is_empty() {
            continue;
        }
        runs += todo.len();
        let chunks: Vec<&[&RunSpec]> = todo.chunks(MAX_ARRAY).collect();
        let mut level = vec![];
        // A kind in one level keeps its plain name (`assistants`); a chain's levels are numbered.
        let base = if deepest == 0 { format!("{}s", kind.as_str()) } else { format!("{}s{}", kind.as_str(), d + 1) };
        for (i, chunk) in chunks.iter().enumerate() {
            let name = if chunks.len() == 1 { base.clone() } else { format!("{base}-{}", i + 1) };
            let mut list = String::new();
            for s in chunk.iter() {
                let rdir = plan::run_dir(dir, &s.id);
                std::fs::create_dir_all(&rdir)?;
                let p = rdir.join("spec.json");
                sealed::write_json(&p, &RunSpec { threads: Some(threads), ..(*s).clone() })?;
                list += &format!("{}\n", std::fs::canonicalize(&p)?.display());
            }
            atomic::write_bytes(&out.join(format!("{name}.txt")), list.as_bytes())?;
            let throttle = opts.max_running.map(|m| format!("%{m}")).unwrap_or_default();
            let wait = if prev.is_empty() {
                String::new()
            } else {
                // A failed task of the level before would leave this array pending forever.
                "#SBATCH --kill-on-invalid-dep=yes\n".to_string()
            };
            let script = format!(
                "#!/bin/bash\n#SBATCH --job-name=kdlab-{name}\n#SBATCH --array=1-{n}{throttle}\n{lines}{wait}#SBATCH --output={o}/{name}-%a.out\n\
                 # One run of the study per array task. Its spec.json fixes its thread count ({threads}),\n\
                 # so it computes what a local `kdlab sweep` worker computes.\n\
                 set -euo pipefail\n\
                 spec=$(sed -n \"${{SLURM_ARRAY_TASK_ID}}p\" {list})\n\
                 exec {exe} sweep-run \"$spec\" --device {device}\n",
                n = chunk.len(),
                lines = opts.sbatch_lines(cpus),
                o = out_abs.display(),
                list = shell_quote(&out_abs.join(format!("{name}.txt")).display().to_string()),
                exe = shell_quote(&exe),
                device = if gpu { "cuda" } else { "cpu" },
            );
            let sp = out.join(format!("{name}.sbatch"));
            atomic::write_bytes(&sp, script.as_bytes())?;
            files.push(sp);
            let var = name.replace('-', "_");
            let dep = if prev.is_empty() {
                String::new()
            } else {
                format!(" --dependency=afterok:{}", prev.iter().map(|p| format!("${p}")).collect::<Vec<_>>().join(":"))
            };
            submit += &format!("{var}=$(sbatch --parsable{dep} {name}.sbatch)\necho \"{name}: job ${var}\"\n");
            level.push(var);
        }
        prev = level;
    }
    let sp = out.join("submit.sh");
    atomic::write_bytes(&sp, submit.as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sp, std::fs::Permissions::from_mode(0o755))?;
    files.push(sp);
    Ok(Emitted { files, runs, threads, cpus })
}

/// Each run's depth within its kind: 0, or one more than the deepest run of its own kind it
/// depends on (a DGKD chain's second assistant, taught by the first, is at depth 1). Runs of one
/// kind and depth are independent, so they form one level, one array.
fn depths(specs: &[RunSpec]) -> std::collections::HashMap<&str, usize> {
    let by_id: std::collections::HashMap<&str, &RunSpec> = specs.iter().map(|s| (s.id.as_str(), s)).collect();
    fn depth_of<'a>(
        s: &'a RunSpec,
        by_id: &std::collections::HashMap<&'a str, &'a RunSpec>,
        memo: &mut std::collections::HashMap<&'a str, usize>,
    ) -> usize {
        if let Some(&d) = memo.get(s.id.as_str()) {
            return d;
        }
        let d = s
            .depends_on
            .iter()
            .filter_map(|d| by_id.get(d.as_str()).copied())
            .filter(|p| p.kind == s.kind)
            .map(|p| depth_of(p, by_id, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(s.id.as_str(), d);
        d
    }
    let mut memo = std::collections::HashMap::new();
    for s in specs {
        depth_of(s, &by_id, &mut memo);
    }
    memo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SlurmOptions> {
        let t: toml::Table = text.parse().unwrap();
        SlurmOptions::parse(t.get("slurm"), "s.toml")
    }

    #[test]
    fn the_usual_options_become_sbatch_lines() {
        let o = parse(
            "[slurm]\npartition='cpu'\naccount='proj-1'\nqos='normal'\ntime='1-02:00:00'\nmem='4G'\ngpus=1\nextra=['--constraint=avx2']\n",
        )
        .unwrap();
        let lines = o.sbatch_lines(2);
        for want in [
            "--cpus-per-task=2",
            "--partition=cpu",
            "--account=proj-1",
            "--qos=normal",
            "--time=1-02:00:00",
            "--mem=4G",
            "--gres=gpu:1",
            "#SBATCH --constraint=avx2",
        ] {
            assert!(lines.contains(want), "{want} missing from\n{lines}");
        }
        assert_eq!(parse("").unwrap().sbatch_lines(1), "#SBATCH --cpus-per-task=1\n");
    }

    #[test]
    fn values_a_shell_would_act_on_are_refused_naming_the_key() {
        for (text, key) in [
            ("partition='cpu; rm -rf ~'", "slurm.partition"),
            ("account='a\\nb'", "slurm.account"),
            ("time='2 hours'", "slurm.time"),
            ("time='1:2:3:4'", "slurm.time"),
            ("mem='4GB'", "slurm.mem"),
            ("extra=['--x=$(id)']", "slurm.extra"),
            ("extra=['-p cpu']", "slurm.extra"),
            ("cpus_per_task=0", "slurm.cpus_per_task"),
            ("gpus=-1", "slurm.gpus"),
            ("partion='cpu'", "slurm.partion"),
        ] {
            let e = format!("{:#}", parse(&format!("[slurm]\n{text}\n")).unwrap_err());
            assert!(e.contains("s.toml") && e.contains(key), "{text}: {e}");
        }
        for ok in ["5", "30:00", "2:00:00", "1-0", "1-12:30", "1-12:30:00"] {
            parse(&format!("[slurm]\ntime='{ok}'\n")).unwrap();
        }
    }

    #[test]
    fn the_command_line_overrides_the_study_and_threads_fix_the_cpus() {
        let study = parse("[slurm]\npartition='a'\ntime='10'\ncpus_per_task=4\n").unwrap();
        let cli = SlurmOptions { partition: Some("b".into()), ..Default::default() };
        let o = study.overridden_by(cli);
        assert_eq!((o.partition.as_deref(), o.time.as_deref()), (Some("b"), Some("10")));
        assert_eq!(threads_and_cpus(None, &o), (4, 4));
        assert_eq!(threads_and_cpus(Some(2), &o), (2, 4));
        assert_eq!(threads_and_cpus(Some(3), &SlurmOptions::default()), (3, 3));
        assert_eq!(threads_and_cpus(None, &SlurmOptions::default()), (1, 1));
    }

    #[test]
    fn threads_are_a_positive_integer() {
        let t = |text: &str| parse_threads(text.parse::<toml::Table>().unwrap().get("threads"), "s.toml");
        assert_eq!(t("threads = 2").unwrap(), Some(2));
        assert_eq!(t("").unwrap(), None);
        for bad in ["threads = 0", "threads = -1", "threads = 1.5", "threads = 'all'"] {
            let e = format!("{:#}", t(bad).unwrap_err());
            assert!(e.contains("s.toml") && e.contains("'threads'"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_quoted_path_survives_the_shell() {
        let out = std::process::Command::new("bash")
            .args(["-c", &format!("printf %s {}", shell_quote("a b'c$d"))])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b'c$d");
    }
}
