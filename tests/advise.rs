//! `kdlab advise`: teachers and checkpoints ranked by their NLL on the validation split, checked
//! against the NLL recomputed here from the checkpoints' saved logits; a run without a validation
//! split refused; and the match with a study's KD students on a results.csv written by hand.
mod common;
use common::{kdlab_cpu, read_json, text};
use std::path::Path;

/// Trains a tiny teacher on the embedded data, every epoch kept.
fn train(dir: &Path, model: &str, out: &str, val_per_class: &str) {
    let o = kdlab_cpu(
        &[
            "train",
            "--model",
            model,
            "--data",
            "fashion-mnist-mini",
            "--train-subset",
            "30",
            "--val-per-class",
            val_per_class,
            "--epochs",
            "3",
            "--save-every",
            "1",
            "--augment",
            "false",
            "--out",
            out,
            "--quiet",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", text(&o));
}

/// Mean NLL (and the logits' accuracy) of a checkpoint on a split, from the logits `kdlab logits`
/// saves, by log-sum-exp in float64 here: independent of the probe's code.
fn nll_from_logits(dir: &Path, spec: &str, split: &str) -> (f64, f64) {
    let out = dir.join("x.npy");
    let labels = dir.join("y.npy");
    let o = kdlab_cpu(&["logits", "--run", spec, "--split", split, "--out", "x.npy", "--labels-out", "y.npy"], dir);
    assert!(o.status.success(), "{}", text(&o));
    let (n, c, z) = kdlab::data::npy::read_logits(&out).unwrap();
    let y = kdlab::data::npy::read_labels(&labels).unwrap();
    assert_eq!(y.len(), n);
    let (mut nll, mut correct) = (0.0, 0usize);
    for (i, &yi) in y.iter().enumerate() {
        let row = &z[i * c..(i + 1) * c];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        nll += lse - row[yi as usize];
        let arg = (0..c).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        correct += usize::from(arg == yi as usize);
    }
    (nll / n as f64, correct as f64 / n as f64)
}

fn ranks(x: &[f64]) -> Vec<f64> {
    (0..x.len())
        .map(|i| {
            let below = x.iter().filter(|&&v| v < x[i]).count() as f64;
            let tied = x.iter().filter(|&&v| v == x[i]).count() as f64;
            below + (tied + 1.0) / 2.0
        })
        .collect()
}

fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn advise_ranks_by_validation_nll_refuses_runs_without_one_and_matches_a_study() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    train(d, "cnn_w1", "runs/a", "10");
    train(d, "mlp_32x1", "runs/b", "10");
    let specs = ["runs/a", "runs/a@epoch1", "runs/a@epoch2", "runs/b", "runs/b@epoch1"];

    // The study's KD students, by hand: per checkpoint, KD settings with validation accuracy
    // (the one with the best mean validation accuracy counts), and rows that must not count.
    let header = "id,kind,student,teacher,teacher_params,series,method,hyper,seed,final_acc,best_acc,best_epoch,final_val_acc,teacher_family,teacher_epoch";
    let rows = [
        "a,teacher,,cnn_w1,1,teacher,ce,,0,0.5,0.5,,,cnn,",
        "b,teacher,,mlp_32x1,1,teacher,ce,,0,0.5,0.5,,,mlp,",
        // a@epoch1: τ=2 has the lower validation accuracy; τ=4 is the tuned setting, mean 0.61.
        "s1,student,mlp_32x1,cnn_w1,1,kd τ=2,kd,,0,0.70,,,0.50,cnn,1",
        "s2,student,mlp_32x1,cnn_w1,1,kd τ=2,kd,,1,0.72,,,0.50,cnn,1",
        "s3,student,mlp_32x1,cnn_w1,1,kd τ=4,kd,,0,0.60,,,0.60,cnn,1",
        "s4,student,mlp_32x1,cnn_w1,1,kd τ=4,kd,,1,0.62,,,0.60,cnn,1",
        // a's final checkpoint (no teacher_epoch): 0.80.
        "s5,student,mlp_32x1,cnn_w1,1,kd τ=4,kd,,0,0.80,,,0.50,cnn,",
        // b@epoch1: 0.65; b final: 0.75.
        "s6,student,mlp_32x1,mlp_32x1,1,kd τ=4,kd,,0,0.65,,,0.50,mlp,1",
        "s7,student,mlp_32x1,mlp_32x1,1,kd τ=4,kd,,0,0.75,,,0.50,mlp,",
        // Not counted: a calibrated teacher, another method, another student, and a fit level
        // whose checkpoint the file does not give.
        "s8,student,mlp_32x1,cnn_w1,1,kd (calibrated),kd,,0,0.10,,,0.99,cnn,",
        "s9,student,mlp_32x1,mlp_32x1,1,ats,ats,,0,0.99,,,0.99,mlp,1",
        "s10,student,cnn_w1,mlp_32x1,1,kd τ=4,kd,,0,0.01,,,0.99,mlp,1",
        "s11,student,mlp_32x1,cnn_w1,1,kd τ=2 (fit val_nll≈0.7),kd,,0,0.02,,,0.99,cnn,",
    ];
    std::fs::create_dir_all(d.join("study")).unwrap();
    std::fs::write(d.join("study/results.csv"), format!("{header}\n{}\n", rows.join("\n"))).unwrap();
    let measured = [("runs/a", 0.80), ("runs/a@epoch1", 0.61), ("runs/b", 0.75), ("runs/b@epoch1", 0.65)];

    let mut args = vec!["advise", "--student", "mlp_32x1", "--study", "study/results.csv", "--json", "a.json"];
    for s in &specs {
        args.extend(["--run", s]);
    }
    let o = kdlab_cpu(&args, d);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let j = read_json(&d.join("a.json"));
    assert_eq!(j["split"], "val");
    let ranking = j["ranking"].as_array().unwrap();
    assert_eq!(ranking.len(), specs.len(), "{out}");

    // Each checkpoint's NLL equals the one recomputed from its validation logits, and the
    // ranking is in increasing order of it.
    let mut ours = vec![];
    for r in ranking {
        let spec = r["spec"].as_str().unwrap();
        let (nll, acc) = nll_from_logits(d, spec, "val");
        let got = r["val_nll"].as_f64().unwrap();
        assert!((got - nll).abs() <= 1e-9 * nll.max(1.0), "{spec}: advise {got}, recomputed {nll}");
        assert!((r["val_acc"].as_f64().unwrap() - acc).abs() < 1e-12, "{spec}");
        ours.push((spec.to_string(), nll));
    }
    for w in ours.windows(2) {
        assert!(w[0].1 <= w[1].1, "not ranked by validation NLL: {ours:?}\n{out}");
    }
    // The validation split, not the test set: the test NLL of the first is another number.
    let (test_nll, _) = nll_from_logits(d, &ours[0].0, "test");
    assert!((test_nll - ours[0].1).abs() > 1e-6, "val {} vs test {test_nll}", ours[0].1);
    // The table lists the checkpoints in that order.
    let table: Vec<String> = out
        .lines()
        .skip_while(|l| !l.starts_with("----"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| format!("runs/{}", l.split_whitespace().nth(1).unwrap()))
        .collect();
    assert_eq!(table, ours.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(), "{out}");

    // The study: the tuned KD student per matched checkpoint, and Spearman of the ranking (−NLL)
    // with it over those checkpoints; runs/a@epoch2 has no KD student in the file.
    let mut nll_m = vec![];
    let mut acc_m = vec![];
    for r in ranking {
        let spec = r["spec"].as_str().unwrap();
        match measured.iter().find(|(s, _)| *s == spec) {
            Some((_, acc)) => {
                let got = r["study_student_acc"].as_f64().unwrap_or(f64::NAN);
                assert!((got - acc).abs() < 1e-12, "{spec}: study value {got}, want {acc}\n{out}");
                nll_m.push(-ours.iter().find(|(s, _)| s == spec).unwrap().1);
                acc_m.push(*acc);
            }
            None => assert!(r["study_student_acc"].is_null(), "{spec} has no KD student in the study\n{out}"),
        }
    }
    let want = spearman(&nll_m, &acc_m);
    assert_eq!(j["study"]["n"], 4, "{out}");
    let got = j["study"]["spearman"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-12, "spearman {got}, want {want}\n{out}");
    assert!(out.contains(&format!("{want:+.2} (n = 4 checkpoints matched of 5")), "{out}");
    assert!(out.contains("1 KD runs at a fit level with no teacher_epoch left out"), "{out}");

    // The report directory works as the study too; --all-epochs expands a run to its kept epochs.
    let o = kdlab_cpu(&["advise", "--run", "runs/a", "--all-epochs", "--student", "mlp_32x1", "--study", "study"], d);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("3 teacher checkpoints ranked") && out.contains("a@epoch2"), "{out}");
    assert!(out.contains("(n = 2 checkpoints matched of 3"), "{out}");

    // A run without a validation split is refused, naming it; so is an unknown student.
    train(d, "mlp_32x1", "runs/c", "0");
    let o = kdlab_cpu(&["advise", "--run", "runs/a", "--run", "runs/c", "--student", "mlp_32x1"], d);
    let e = text(&o);
    assert!(!o.status.success(), "{e}");
    assert!(e.contains("runs/c has no validation split") && e.contains("--val-per-class"), "{e}");
    let o = kdlab_cpu(&["advise", "--run", "runs/a", "--student", "mlp_9x9x9"], d);
    assert!(!o.status.success() && text(&o).contains("mlp_9x9x9"), "{}", text(&o));
}
