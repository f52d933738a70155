//! The probe against independent computations: a plain, non-streaming float64 version of every
//! metric written here from the definitions, and (where NumPy is installed) the NumPy reference
//! script on .npy files the probe has never seen.
use kdlab::probe::{self, source::LogitSource, ProbeReport};
use std::path::Path;

/// An in-memory source, served in chunks like a file.
struct Mem {
    name: String,
    c: usize,
    data: Vec<f64>,
    pos: usize,
}

impl LogitSource for Mem {
    fn name(&self) -> &str {
        &self.name
    }
    fn classes(&self) -> usize {
        self.c
    }
    fn samples(&self) -> usize {
        self.data.len() / self.c
    }
    fn next_rows(&mut self, n: usize) -> anyhow::Result<Vec<f64>> {
        let end = (self.pos + n * self.c).min(self.data.len());
        let v = self.data[self.pos..end].to_vec();
        self.pos = end;
        Ok(v)
    }
}

fn mem(name: &str, c: usize, data: &[f64]) -> Box<dyn LogitSource> {
    Box::new(Mem { name: name.into(), c, data: data.to_vec(), pos: 0 })
}

fn run(teachers: &[(&str, &[f64])], c: usize, labels: &[usize], taus: &[f64], chunk: usize) -> ProbeReport {
    let sources = teachers.iter().map(|(n, d)| mem(n, c, d)).collect();
    probe::run(sources, labels, "labels", taus, chunk).unwrap().report
}

/// Plain float64 definitions, one sample at a time, nothing shared with the streaming code.
mod plain {
    pub fn softmax(f: &[f64], tau: f64) -> Vec<f64> {
        let m = f.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = f.iter().map(|v| ((v - m) / tau).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }
    pub fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len() as f64
    }
    pub fn pvar(v: &[f64]) -> f64 {
        let m = mean(v);
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64
    }
    pub fn ranks(v: &[f64]) -> Vec<f64> {
        // Rank = 1 + (number smaller) + (number equal − 1)/2.
        v.iter()
            .map(|x| {
                let less = v.iter().filter(|y| *y < x).count() as f64;
                let eq = v.iter().filter(|y| *y == x).count() as f64;
                1.0 + less + (eq - 1.0) / 2.0
            })
            .collect()
    }
    pub fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
        let (ma, mb) = (mean(a), mean(b));
        let num: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let den =
            (a.iter().map(|x| (x - ma).powi(2)).sum::<f64>() * b.iter().map(|y| (y - mb).powi(2)).sum::<f64>()).sqrt();
        (den > 0.0).then(|| num / den)
    }
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12) || (a - b).abs() < 1e-13, "{what}: {a} vs {b}");
}

/// Random logits with deliberate ties (values on a coarse grid) and one sample fully tied.
fn logits(n: usize, c: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut r = kdlab::util::rng::Rng::new(seed);
    let mut v: Vec<f64> = (0..n * c).map(|_| ((r.below(9) as f64) - 4.0) * scale).collect();
    v[..c].iter_mut().for_each(|x| *x = 1.0);
    v
}

#[test]
fn every_teacher_metric_matches_the_plain_definitions() {
    let (n, c) = (37, 6);
    let f = logits(n, c, 1, 0.7);
    let labels: Vec<usize> = (0..n).map(|i| (i * 7 + 3) % c).collect();
    let taus = [0.05, 0.3, 1.0, 4.0, 20.0];
    let r = run(&[("t", &f)], c, &labels, &taus, 5);
    let t = &r.teachers[0];
    let rows: Vec<&[f64]> = f.chunks(c).collect();
    let acc = rows.iter().zip(&labels).filter(|(row, &y)| {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        row.iter().position(|&v| v == m).unwrap() == y
    });
    close(t.accuracy, acc.count() as f64 / n as f64, "accuracy");
    let others = |row: &[f64], y: usize| -> Vec<f64> {
        row.iter().enumerate().filter(|(i, _)| *i != y).map(|(_, v)| *v).collect()
    };
    let gap = plain::mean(
        &rows
            .iter()
            .zip(&labels)
            .map(|(row, &y)| row[y] - others(row, y).iter().cloned().fold(f64::MIN, f64::max))
            .collect::<Vec<_>>(),
    );
    close(t.logit_gap, gap, "logit_gap");
    let lstd =
        plain::mean(&rows.iter().zip(&labels).map(|(row, &y)| plain::pvar(&others(row, y)).sqrt()).collect::<Vec<_>>());
    close(t.logit_nongt_std, lstd, "logit_nongt_std");
    for (k, &tau) in taus.iter().enumerate() {
        let got = &t.per_tau[k];
        assert_eq!(got.tau, tau);
        let mut sums = [0.0f64; 6];
        let (mut bins_n, mut bins_conf, mut bins_ok) = ([0.0f64; 15], [0.0f64; 15], [0.0f64; 15]);
        for (row, &y) in rows.iter().zip(&labels) {
            let p = plain::softmax(row, tau);
            let q = others(&p, y);
            let qs: f64 = q.iter().sum();
            let qh: Vec<f64> = q.iter().map(|v| v / qs).collect();
            sums[0] += p[y];
            sums[1] += (1.0 - p[y]) / (c - 1) as f64;
            sums[2] += plain::pvar(&q).sqrt();
            sums[3] += plain::pvar(&q);
            sums[4] += -qh.iter().filter(|v| **v > 0.0).map(|v| v * v.ln()).sum::<f64>();
            sums[5] += -p[y].ln();
            let conf = p.iter().cloned().fold(0.0, f64::max);
            let b = (0..15).find(|&b| conf > b as f64 / 15.0 && conf <= (b + 1) as f64 / 15.0).unwrap();
            bins_n[b] += 1.0;
            bins_conf[b] += conf;
            let pred = p.iter().position(|&v| v == conf).unwrap();
            bins_ok[b] += f64::from(pred == y);
        }
        let m = |s: f64| s / n as f64;
        close(got.p_true, m(sums[0]), "p_true");
        close(got.nongt_mean, m(sums[1]), "nongt_mean");
        close(got.nongt_std, m(sums[2]), "nongt_std");
        close(got.nongt_var, m(sums[3]), "nongt_var");
        close(got.nongt_entropy, m(sums[4]), "nongt_entropy");
        close(got.nll, m(sums[5]), "nll");
        let ece: f64 = (0..15)
            .filter(|&b| bins_n[b] > 0.0)
            .map(|b| bins_n[b] / n as f64 * (bins_ok[b] / bins_n[b] - bins_conf[b] / bins_n[b]).abs())
            .sum();
        close(got.ece, ece, "ece");
    }
    let best = t.per_tau.iter().min_by(|a, b| a.nll.total_cmp(&b.nll)).unwrap().tau;
    assert_eq!(t.best_tau_nll, best);
}

#[test]
fn pair_metrics_match_the_plain_definitions_and_ignore_chunking() {
    let (n, c) = (41, 7);
    let (fa, fb) = (logits(n, c, 2, 1.0), logits(n, c, 3, 0.5));
    let labels: Vec<usize> = (0..n).map(|i| (i * 3) % c).collect();
    let taus = [0.5, 2.0];
    let r = run(&[("a", &fa), ("b", &fb)], c, &labels, &taus, 4);
    for chunk in [1, 9, 1000] {
        assert_eq!(run(&[("a", &fa), ("b", &fb)], c, &labels, &taus, chunk), r, "chunk {chunk}");
    }
    let p = &r.pairs[0];
    let (mut sp, mut kd, mut top1, mut top5) = (vec![], vec![], 0.0, 0.0);
    for i in 0..n {
        let y = labels[i];
        let xa: Vec<f64> = (0..c).filter(|&k| k != y).map(|k| fa[i * c + k]).collect();
        let xb: Vec<f64> = (0..c).filter(|&k| k != y).map(|k| fb[i * c + k]).collect();
        if let Some(v) = plain::pearson(&plain::ranks(&xa), &plain::ranks(&xb)) {
            sp.push(v);
        }
        // τ-b from its definition.
        let (mut con, mut dis, mut ta, mut tb) = (0.0, 0.0, 0.0, 0.0);
        for u in 0..xa.len() {
            for v in u + 1..xa.len() {
                let (da, db) = (xa[u] - xa[v], xb[u] - xb[v]);
                match (da == 0.0, db == 0.0) {
                    (true, true) => {}
                    (true, false) => ta += 1.0,
                    (false, true) => tb += 1.0,
                    _ if da * db > 0.0 => con += 1.0,
                    _ => dis += 1.0,
                }
            }
        }
        let den = f64::sqrt((con + dis + ta) * (con + dis + tb));
        if den > 0.0 {
            kd.push((con - dis) / den);
        }
        let first_max = |x: &[f64]| x.iter().position(|v| *v == x.iter().cloned().fold(f64::MIN, f64::max)).unwrap();
        top1 += f64::from(first_max(&xa) == first_max(&xb));
        let topk = |x: &[f64]| {
            let mut idx: Vec<usize> = (0..x.len()).collect();
            idx.sort_by(|&p, &q| x[q].partial_cmp(&x[p]).unwrap());
            idx.truncate(5);
            idx
        };
        let (ta5, tb5) = (topk(&xa), topk(&xb));
        top5 += ta5.iter().filter(|k| tb5.contains(k)).count() as f64 / 5.0;
    }
    close(p.spearman.unwrap(), plain::mean(&sp), "spearman");
    assert!(sp.len() < n, "the all-tied sample is left out");
    close(p.kendall.unwrap(), plain::mean(&kd), "kendall");
    close(p.top1_agree, top1 / n as f64, "top1_agree");
    close(p.top5_overlap, top5 / n as f64, "top5_overlap");
    // Class affinity at τ: A[k][j] = mean q̂_j over samples of class k, off the diagonal.
    for (ti, &tau) in taus.iter().enumerate() {
        let aff = |f: &[f64]| -> Vec<f64> {
            let mut v = vec![];
            for k in 0..c {
                let rows: Vec<usize> = (0..n).filter(|&i| labels[i] == k).collect();
                for j in (0..c).filter(|&j| j != k) {
                    let q: Vec<f64> = rows
                        .iter()
                        .map(|&i| {
                            let p = plain::softmax(&f[i * c..(i + 1) * c], tau);
                            p[j] / (1.0 - p[k])
                        })
                        .collect();
                    v.push(plain::mean(&q));
                }
            }
            v
        };
        close(p.per_tau[ti].affinity_corr.unwrap(), plain::pearson(&aff(&fa), &aff(&fb)).unwrap(), "affinity_corr");
    }
}

#[test]
fn temperature_never_changes_the_rank_metrics() {
    let (n, c) = (30, 10);
    let (fa, fb) = (logits(n, c, 4, 1.3), logits(n, c, 5, 0.9));
    let labels: Vec<usize> = (0..n).map(|i| i % c).collect();
    let base = run(&[("a", &fa), ("b", &fb)], c, &labels, &[1.0], 8).pairs[0].clone();
    for tau in [0.05, 0.5, 3.0, 20.0] {
        // Rank metrics of the softened outputs: log-probabilities log p = f/τ − log Z keep
        // every order (probabilities themselves can underflow to ties at small τ).
        let soft = |f: &[f64]| -> Vec<f64> {
            f.chunks(c)
                .flat_map(|row| {
                    let p = plain::softmax(row, tau);
                    let m = row.iter().cloned().fold(f64::MIN, f64::max);
                    let lz = p.iter().zip(row).map(|(_, v)| ((v - m) / tau).exp()).sum::<f64>().ln();
                    row.iter().map(move |v| (v - m) / tau - lz).collect::<Vec<_>>()
                })
                .collect()
        };
        let scaled = run(&[("a", &soft(&fa)), ("b", &soft(&fb))], c, &labels, &[1.0], 8).pairs[0].clone();
        assert_eq!(
            (scaled.spearman, scaled.kendall, scaled.top1_agree, scaled.top5_overlap),
            (base.spearman, base.kendall, base.top1_agree, base.top5_overlap),
            "tau {tau}"
        );
    }
}

#[test]
fn two_classes_give_zero_spread_and_null_ranks() {
    let f = [2.0, -1.0, 0.5, 0.5, -3.0, 4.0];
    let g = [1.0, 0.0, 0.0, 1.0, 2.0, 2.0];
    let r = run(&[("a", &f), ("b", &g)], 2, &[0, 1, 1], &[1.0, 4.0], 2);
    for t in &r.teachers {
        for p in &t.per_tau {
            assert_eq!(p.nongt_std, 0.0);
            assert_eq!(p.nongt_entropy, 0.0);
            close(p.nongt_mean, 1.0 - p.p_true, "C=2: the one non-GT entry is 1 − p_y");
        }
    }
    assert_eq!(r.pairs[0].spearman, None);
    assert_eq!(r.pairs[0].kendall, None);
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"spearman\":null") && !json.contains("NaN"), "{json}");
}

#[test]
fn huge_logits_and_extreme_temperatures_stay_finite() {
    let f = [1e4, -1e4, 0.0, 5.0, -1e4, 1e4, 3.0, 2.0, 0.0, 0.0, 0.0, 0.0];
    let r = run(&[("x", &f)], 4, &[0, 0, 2], &[0.05, 1.0, 20.0], 2);
    let json = serde_json::to_value(&r).unwrap();
    fn all_finite(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Number(n) => n.as_f64().unwrap().is_finite(),
            serde_json::Value::Array(a) => a.iter().all(all_finite),
            serde_json::Value::Object(o) => o.values().all(all_finite),
            _ => true,
        }
    }
    assert!(all_finite(&json), "{json}");
    // Sample 1 has logit −1e4 on its true class and 1e4 on another: at τ = 0.05 its NLL is
    // (1e4 − (−1e4))/0.05 = 4e5; sample 0's is ~0 and sample 2's (all equal) is ln 4.
    let nll = r.teachers[0].per_tau[0].nll;
    close(nll, (4e5 + 4f64.ln()) / 3.0, "nll at τ = 0.05");
}

#[test]
fn mismatched_inputs_are_refused() {
    let f = [0.0; 6];
    let e = probe::run(vec![mem("a", 3, &f), mem("b", 3, &f[..3])], &[0, 1], "y.npy", &[1.0], 4).unwrap_err();
    assert!(format!("{e:#}").contains("b has 1 samples but y.npy has 2 labels"), "{e:#}");
    let e = probe::run(vec![mem("a", 3, &f)], &[0, 3], "y.npy", &[1.0], 4).unwrap_err();
    assert!(format!("{e:#}").contains("y.npy: label 3 at sample 1"), "{e:#}");
    let e = probe::run(vec![mem("a", 3, &f)], &[0, 1], "y.npy", &[0.0], 4).unwrap_err();
    assert!(format!("{e:#}").contains("positive"), "{e:#}");
}

/// The must-show check: on .npy logits it has never seen, every key of `kdlab probe --json`
/// matches the NumPy reference script to 1e-5 relative.
#[test]
fn matches_the_numpy_reference_on_unseen_npy_files() {
    let venv = std::env::var("KDLAB_TORCH_VENV")
        .unwrap_or_else(|_| format!("{}/.cache/kdlab-torch-venv", std::env::var("HOME").unwrap_or_default()));
    let py = Path::new(&venv).join("bin/python");
    if !py.exists() {
        eprintln!("skipping: no NumPy environment at {}", py.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (n, c) = (120, 8);
    let mut r = kdlab::util::rng::Rng::new(77);
    let mut names = vec![];
    for (k, scale) in [3.0f64, 1.0, 0.2].iter().enumerate() {
        let v: Vec<f32> = (0..n * c)
            .map(|_| ((r.unit() - 0.5) * 2.0 * scale * if r.below(5) == 0 { 4.0 } else { 1.0 }) as f32)
            .collect();
        let p = tmp.path().join(format!("teacher{k}.npy"));
        kdlab::data::npy::write_f32(&p, &[n, c], &v).unwrap();
        names.push(p);
    }
    let labels: Vec<i64> = (0..n).map(|_| r.below(c as u64) as i64).collect();
    kdlab::data::npy::write_i64(&tmp.path().join("y.npy"), &[n], &labels).unwrap();
    let taus = "0.1,0.5,1,2,4,10";
    let mut args: Vec<String> = vec![
        "probe".into(),
        "--labels".into(),
        "y.npy".into(),
        "--tau".into(),
        taus.into(),
        "--json".into(),
        "k.json".into(),
    ];
    for p in &names {
        args.extend(["--logits".into(), p.display().to_string()]);
    }
    let o =
        std::process::Command::new(env!("CARGO_BIN_EXE_kdlab")).args(&args).current_dir(tmp.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/probe_reference.py");
    let mut cmd = std::process::Command::new(&py);
    cmd.arg(script).args(["--labels", "y.npy", "--tau", taus]).args(&names).current_dir(tmp.path());
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ours: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("k.json")).unwrap()).unwrap();
    let mut compared = 0;
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, count: &mut usize) {
        use serde_json::Value::*;
        match (a, b) {
            (Object(x), Object(y)) => {
                for (k, v) in y {
                    let w = x.get(k).unwrap_or_else(|| panic!("kdlab lacks {path}.{k}"));
                    walk(&format!("{path}.{k}"), w, v, count);
                }
            }
            (Array(x), Array(y)) => {
                assert_eq!(x.len(), y.len(), "{path}");
                for (i, (v, w)) in x.iter().zip(y).enumerate() {
                    walk(&format!("{path}[{i}]"), v, w, count);
                }
            }
            (Number(x), Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!((x - y).abs() <= 1e-5 * x.abs().max(y.abs()) + 1e-12, "{path}: kdlab {x} vs NumPy {y}");
                *count += 1;
            }
            (x, y) => assert_eq!(x, y, "{path}"),
        }
    }
    walk("", &ours, &reference, &mut compared);
    assert!(compared > 150, "compared only {compared} numbers");
}
