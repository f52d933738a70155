//! `kdlab watch` as a person uses it: in an 80×24 tmux pane, beside a sweep that runs a teacher,
//! then students of which two fail. The screen is read with capture-pane and must agree with the
//! study's index (the run in flight, its epoch, the counts, the failures); q and Ctrl-C must end it
//! with status 0 and leave the alternate screen. Needs tmux (`.ci/run` installs it); skipped
//! without it.
mod common;

use kdlab::study::store::{Status, Store};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A private tmux server, killed when the test ends however it ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().unwrap()
    }
    fn screen(&self, target: &str) -> Vec<String> {
        let o = self.cmd(&["capture-pane", "-p", "-t", target]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut lines: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
    }
    /// Starts `kdlab watch DIR` in a new 80×24 session; its exit status goes to `exit_file`.
    fn watch(&self, session: &str, dir: &Path, exit_file: &Path) {
        let cmd = format!(
            "{} watch {}; echo exit=$? > {}; sleep 600",
            env!("CARGO_BIN_EXE_kdlab"),
            dir.display(),
            exit_file.display()
        );
        let o = self.cmd(&["new-session", "-d", "-x", "80", "-y", "24", "-s", session, &cmd]);
        assert!(o.status.success(), "{}", common::text(&o));
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// Polls `f` every 100 ms for up to `secs`; the last screen is in the panic message.
fn until(secs: u64, what: &str, mut f: impl FnMut() -> (bool, String)) {
    let start = Instant::now();
    loop {
        let (ok, shown) = f();
        if ok {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(secs), "{what}; the screen:\n{shown}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn runs(dir: &Path) -> Vec<kdlab::study::store::StoredRun> {
    Store::open_to_read(&dir.join("study.sqlite")).and_then(|s| s.planned_runs()).unwrap_or_default()
}

fn counts_line(runs: &[kdlab::study::store::StoredRun]) -> String {
    let n = |s: Status| runs.iter().filter(|r| r.status == s).count();
    format!(
        "done {}  running {}  failed {}  queued {}  of {}",
        n(Status::Done),
        n(Status::Running),
        n(Status::Failed),
        n(Status::Queued),
        runs.len()
    )
}

fn exit_status(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

#[test]
fn watch_in_tmux_follows_a_sweep_and_quits_cleanly_on_q_and_ctrl_c() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipped: tmux is not installed (.ci/run installs it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A teacher long enough to be watched, then four students; the two mlp_16x1 ones diverge.
    let study = tmp.path().join("w.toml");
    std::fs::write(
        &study,
        "name = 'w'\ndata = 'fashion-mnist-mini'\ntrain_subset = 50\nseeds = [0]\n\
         [teachers]\nmodels = ['cnn_w1']\nepochs = 15\n\
         [students]\nmodels = ['mlp_16x1', 'mlp_32x1']\nepochs = 3\naugment = false\n\
         [students.overrides.mlp_16x1]\nlr = 1e30\n[[methods]]\nname = 'ce'\n[[methods]]\nname = 'kd'\n",
    )
    .unwrap();
    let dir: PathBuf = tmp.path().join("w");
    let mut sweep = common::kdlab()
        .args(["sweep", study.to_str().unwrap(), "--out", dir.to_str().unwrap(), "--workers", "1"])
        .args(["--threads", "1", "--quiet"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !dir.join("study.sqlite").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "the sweep made no study.sqlite");
        std::thread::sleep(Duration::from_millis(100));
    }
    let tmux = Tmux { socket: format!("kdlab-watch-test-{}", std::process::id()) };
    let exit_q = tmp.path().join("exit-q");
    tmux.watch("q", &dir, &exit_q);

    // While the teacher trains: its id, epoch and loss in the worker table, its curve, and the
    // counts the index holds at that moment.
    until(120, "the screen never showed the teacher in flight with the index's counts", || {
        let before = runs(&dir);
        let screen = tmux.screen("q");
        let after = runs(&dir);
        let shown = screen.join("\n");
        let Some(teacher) = before.iter().find(|r| r.status == Status::Running) else { return (false, shown) };
        let row = screen.iter().find(|l| l.starts_with(&format!("1   {}", teacher.id)));
        let ok = before.iter().map(|r| r.status).eq(after.iter().map(|r| r.status))
            && screen.get(1).is_some_and(|l| l.starts_with(&counts_line(&before)))
            && row
                .is_some_and(|l| l.contains("/15") && l.contains("cnn_w1") && l.split_whitespace().nth(3) != Some("-"))
            && screen.iter().any(|l| l.starts_with("1   ") && l.contains(".."));
        (ok, shown)
    });

    // After the sweep: the final counts, no run in flight, every failure with its error.
    assert!(sweep.wait().unwrap().success());
    let end = runs(&dir);
    let failed: Vec<_> = end.iter().filter(|r| r.status == Status::Failed).collect();
    assert_eq!(failed.len(), 2, "{end:?}");
    until(30, "the screen never showed the finished sweep", || {
        let screen = tmux.screen("q");
        let ok = screen.get(1).is_some_and(|l| *l == format!("{}   finished", counts_line(&end)))
            && screen.iter().any(|l| l.contains("(no run in flight)"))
            && failed.iter().all(|f| screen.iter().any(|l| l.starts_with(&f.id) && l.contains("the loss became")));
        (ok, screen.join("\n"))
    });
    let screen = tmux.screen("q");
    assert!(screen.len() <= 24 && screen.iter().all(|l| l.chars().count() <= 80), "{}", screen.join("\n"));

    // q ends it with status 0, and the shell's screen is back (the alternate screen is left).
    tmux.cmd(&["send-keys", "-t", "q", "q"]);
    until(10, "q did not end kdlab watch", || (exit_status(&exit_q).is_some(), tmux.screen("q").join("\n")));
    assert_eq!(exit_status(&exit_q).as_deref(), Some("exit=0"));
    assert!(!tmux.screen("q").iter().any(|l| l.contains("kdlab watch")), "{}", tmux.screen("q").join("\n"));

    // So does Ctrl-C.
    let exit_c = tmp.path().join("exit-c");
    tmux.watch("c", &dir, &exit_c);
    until(10, "the second watch never drew", || {
        let s = tmux.screen("c");
        (s.first().is_some_and(|l| l.starts_with("kdlab watch")), s.join("\n"))
    });
    tmux.cmd(&["send-keys", "-t", "c", "C-c"]);
    until(10, "Ctrl-C did not end kdlab watch", || (exit_status(&exit_c).is_some(), tmux.screen("c").join("\n")));
    assert_eq!(exit_status(&exit_c).as_deref(), Some("exit=0"));
}

#[test]
fn watch_names_a_directory_that_is_not_a_study() {
    let tmp = tempfile::tempdir().unwrap();
    let o = common::kdlab().args(["watch", tmp.path().to_str().unwrap(), "--once"]).output().unwrap();
    assert!(!o.status.success());
    let text = common::text(&o);
    assert!(text.contains(&tmp.path().display().to_string()) && text.contains("study.sqlite"), "{text}");
}
