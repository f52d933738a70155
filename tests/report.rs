//! The study report from results built by hand (no training): the ATS τ1 × τ2 heat-map is found
//! from the runs' hyper-parameters, whatever series the runs are in and however they are labelled.
use kdlab::report::results::{Student, StudyResults, Teacher};
use kdlab::report::sections::ats_grid::ats_grids;
use kdlab::report::sections::StudentView;
use serde_json::json;

const SM: &str = "mlp_32x1";

fn teacher(name: &str, params: u64) -> Teacher {
    Teacher {
        id: Some(format!("t-{name}")),
        seed: Some(0),
        name: name.into(),
        params,
        final_acc: 0.9,
        best_acc: 0.91,
        family: "cnn".into(),
    }
}

fn student(series: &str, method: &str, hyper: serde_json::Value, teacher: &str, seed: u64, acc: f64) -> Student {
    Student {
        id: format!("{series}-{teacher}-{seed}-{hyper}"),
        student: SM.into(),
        teacher: Some(teacher.into()),
        altered_teacher: false,
        series: series.into(),
        method: method.into(),
        hyper,
        seed,
        final_acc: acc,
        best_acc: acc + 0.01,
        best_epoch: 3,
        val_acc: None,
        extra: None,
        teacher_fit: None,
        teacher_stats: None,
        final_test_loss: None,
    }
}

fn ats(tau1: f64, tau2: f64) -> serde_json::Value {
    json!({"tau1": tau1, "tau2": tau2, "student_tau": 1.0, "lambda": 1.0, "center_logits": false})
}

/// A default `ats` series (τ1 = 4, τ2 = 2) and a grid block's series (τ1 = 4 with τ2 ∈ {1, 3},
/// τ1 = 2 with τ2 = 1), named by `grid_label` (None: the study's own "ats τ1=… τ2=…" names),
/// plus KD and a centred ATS run that is not part of the plain grid.
fn results(grid_label: Option<&str>) -> StudyResults {
    let teachers = vec![teacher("cnn_w1", 1_000), teacher("cnn_w2", 4_000)];
    let mut students = vec![];
    for t in ["cnn_w1", "cnn_w2"] {
        for seed in [0, 1] {
            students.push(student("ats", "ats", ats(4.0, 2.0), t, seed, 0.80 + 0.01 * seed as f64));
            for (tau1, tau2, acc) in [(4.0, 1.0, 0.70), (4.0, 3.0, 0.75), (2.0, 1.0, 0.60)] {
                let name = grid_label.map_or(format!("ats τ1={tau1} τ2={tau2}"), str::to_string);
                students.push(student(&name, "ats", ats(tau1, tau2), t, seed, acc));
            }
            students.push(student("kd", "kd", json!({"tau": 4.0}), t, seed, 0.78));
            let centred = json!({"tau1": 8.0, "tau2": 1.0, "student_tau": 1.0, "lambda": 1.0, "center_logits": true});
            students.push(student("ats centred", "ats", centred, t, seed, 0.5));
        }
    }
    StudyResults {
        featured: vec![],
        name: "grid".into(),
        probe_tau: 4.0,
        version: "test".into(),
        study_toml: String::new(),
        teachers,
        students,
        probes: vec![],
        runs: vec![],
    }
}

/// Checks one teacher's heat-map holds all four cells of both series, and only those.
fn check_grid(r: &StudyResults) {
    let view = StudentView::new(r, SM.into());
    let grids = ats_grids(&view);
    assert_eq!(grids.len(), 2, "one heat-map per teacher");
    for g in &grids {
        assert_eq!(g.tau1, vec![2000, 4000]);
        assert_eq!(g.tau2, vec![1000, 2000, 3000]);
        assert_eq!(g.runs.len(), 8, "the centred runs are not in the plain grid");
        assert_eq!(g.cell(4000, 2000).len(), 2, "the default `ats` series is a cell of the grid");
        assert!(g.cell(4000, 2000).iter().all(|s| s.series == "ats"));
        assert_eq!(g.cell(4000, 1000).len(), 2);
        assert_eq!(g.cell(2000, 1000).len(), 2);
        assert!(g.cell(2000, 3000).is_empty());
    }
    let dir = tempfile::tempdir().unwrap();
    let report = kdlab::report::study::write_results(r, dir.path()).unwrap();
    for t in ["cnn_w1", "cnn_w2"] {
        for acc in ["final", "best"] {
            let name = format!("ats_grid_{SM}_{t}_{acc}.svg");
            assert!(report.files.contains(&dir.path().join(&name)), "{name} written");
            let svg = std::fs::read_to_string(dir.path().join(&name)).unwrap();
            // One <title> per filled cell: (4, 1), (4, 2), (4, 3), (2, 1).
            assert_eq!(svg.matches("<title>").count(), 4, "{name}: all four cells");
            assert!(svg.contains("τ1=2") && svg.contains("τ1=4") && !svg.contains("τ1=8"));
            assert!(svg.contains("τ2=1") && svg.contains("τ2=2") && svg.contains("τ2=3"));
        }
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert_eq!(md.matches("](ats_grid_").count(), 4, "four heat-maps in the report");
}

#[test]
fn an_ats_grid_spanning_two_series_is_one_heat_map() {
    let r = results(None);
    check_grid(&r);
    // The grid points stay off the curves; the default `ats` series is a curve.
    let view = StudentView::new(&r, SM.into());
    let curves: Vec<&str> = view.curve_series.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(curves, vec!["ats", "ats centred", "kd"]);
}

#[test]
fn a_custom_label_does_not_hide_the_ats_grid() {
    let r = results(Some("my grid"));
    check_grid(&r);
    // The labelled grid mixes settings, so it is no curve (its mean would average them).
    let view = StudentView::new(&r, SM.into());
    let curves: Vec<&str> = view.curve_series.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(curves, vec!["ats", "ats centred", "kd"]);
}
