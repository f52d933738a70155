//! The report of a study with two families of teachers, built by hand (no training): curves,
//! drops and correlations within a family; a report that regenerates byte for byte from its own
//! files; and the HTML page as a browser shows it (Debian's Chromium, headless): no console
//! error, no broken image, working contents links and sortable tables, and each plot's
//! screenshot the size and content of the SVG the page shows.
use kdlab::report::doc::Block;
use kdlab::report::results::{RunState, Student, StudyResults, Teacher};
use kdlab::report::sections::StudentView;
use kdlab::study::store::Status;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SM: &str = "mlp_32x1";

/// Teachers of two families, interleaved in size: (name, family, parameters, how well it teaches).
const TEACHERS: [(&str, &str, u64, f64); 6] = [
    ("cnn_w1", "cnn", 9_146, 0.000),
    ("cnn_w2", "cnn", 20_586, 0.010),
    ("cnn_w4", "cnn", 50_378, 0.020),
    ("resnet8", "resnet", 77_754, 0.000),
    ("resnet14", "resnet", 174_970, 0.025),
    ("resnet20", "resnet", 272_186, 0.005),
];

/// Series: (name, method, hyper-parameters, accuracy without the teacher's effect). `dkd` has
/// collapsed; `kd τ=…` are one method's two settings (so 'kd (tuned on val)' exists).
fn series() -> Vec<(&'static str, &'static str, serde_json::Value, f64)> {
    vec![
        ("kd τ=1", "kd", json!({"tau": 1.0}), 0.80),
        ("kd τ=4", "kd", json!({"tau": 4.0}), 0.81),
        ("ats", "ats", json!({"tau1": 4.0, "tau2": 3.0}), 0.82),
        ("dist", "dist", json!({"tau": 1.0}), 0.79),
        ("dkd", "dkd", json!({"beta": 2.0}), 0.10),
        ("isats", "isats", json!({"rule": "ts_order"}), 0.83),
        ("nckd", "nckd", json!({"tau": 4.0}), 0.785),
    ]
}

fn results() -> StudyResults {
    let teachers: Vec<Teacher> = TEACHERS
        .iter()
        .map(|(name, family, params, _)| Teacher {
            id: Some(format!("t-{name}")),
            seed: Some(0),
            name: name.to_string(),
            params: *params,
            final_acc: 0.85 + *params as f64 * 1e-8,
            best_acc: 0.86 + *params as f64 * 1e-8,
            family: family.to_string(),
        })
        .collect();
    let mut students = vec![];
    for seed in 0..3u64 {
        let noise = 0.003 * seed as f64;
        students.push(Student {
            id: format!("ce-{seed}"),
            student: SM.into(),
            teacher: None,
            altered_teacher: false,
            series: "ce".into(),
            method: "ce".into(),
            hyper: json!({}),
            seed,
            final_acc: 0.79 + noise,
            best_acc: 0.795 + noise,
            best_epoch: 5,
            val_acc: Some(0.78 + noise),
            teacher_fit: None,
            teacher_stats: None,
            final_test_loss: None,
            extra: None,
        });
        for (name, method, hyper, base) in series() {
            for (t, _, _, effect) in TEACHERS {
                // kd τ=1 is the better setting on the ResNets, on validation and test alike.
                let tuned = if name == "kd τ=1" && t.starts_with("resnet") { 0.02 } else { 0.0 };
                let acc = if method == "dkd" { base } else { base + effect + tuned + noise };
                students.push(Student {
                    id: format!("{name}-{t}-{seed}"),
                    student: SM.into(),
                    teacher: Some(t.into()),
                    altered_teacher: false,
                    series: name.into(),
                    method: method.into(),
                    hyper: hyper.clone(),
                    seed,
                    final_acc: acc,
                    best_acc: acc + 0.002 * (1 + seed) as f64,
                    best_epoch: 7,
                    val_acc: Some(acc - 0.01),
                    teacher_fit: None,
                    teacher_stats: None,
                    final_test_loss: None,
                    extra: (method == "ats").then(|| {
                        json!({"ats_target": {"teacher_wrong": 0.1, "flipped_where_teacher_right": 0.25}, "isats_tau2": null})
                    }),
                });
            }
        }
    }
    let runs = teachers
        .iter()
        .map(|t| (t.id.clone().unwrap(), format!("teacher {} s0", t.name)))
        .chain(students.iter().map(|s| (s.id.clone(), format!("student {}", s.id))))
        .map(|(id, name)| RunState { id, name, status: Status::Done, error: None, wall_time_s: Some(1.5) })
        .collect();
    StudyResults {
        name: "families".into(),
        probe_tau: 4.0,
        version: "test-1".into(),
        study_toml: "name = \"families\"\nprobe_tau = 4\n".into(),
        teachers,
        students,
        probes: vec![],
        runs,
        featured: vec![],
    }
}

/// The mean final accuracy of a series from a teacher, computed here from the runs.
fn mean(r: &StudyResults, series: &str, teacher: &str) -> f64 {
    let v: Vec<f64> = r
        .students
        .iter()
        .filter(|s| s.series == series && s.teacher.as_deref() == Some(teacher))
        .map(|s| s.final_acc)
        .collect();
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn curves_and_drops_are_compared_within_a_family() {
    let r = results();
    let v = StudentView::new(&r, SM.into());
    let fams: Vec<(&str, Vec<&str>)> =
        v.families.iter().map(|(f, ts)| (f.as_str(), ts.iter().map(|t| t.name.as_str()).collect())).collect();
    assert_eq!(
        fams,
        [("cnn", vec!["cnn_w1", "cnn_w2", "cnn_w4"]), ("resnet", vec!["resnet8", "resnet14", "resnet20"])]
    );
    // At most five featured series; KD tuned on validation first; the collapsed DKD left out.
    assert_eq!(v.featured, ["kd (tuned on val)", "ats", "dist", "isats", "nckd"]);

    let dir = tempfile::tempdir().unwrap();
    let report = kdlab::report::study::write_results(&r, dir.path()).unwrap();
    let svg = std::fs::read_to_string(dir.path().join(format!("mismatch_{SM}_final.svg"))).unwrap();
    assert!(svg.contains(">cnn (3 teachers)<") && svg.contains(">resnet (3 teachers)<"), "a panel per family");
    for s in &v.featured {
        assert!(svg.contains(&format!(">{s}</text>")), "{s} in the legend");
    }
    assert!(!svg.contains(">dkd</text>") && !svg.contains(">kd τ=4</text>"), "only the featured series");
    assert!(svg.contains("ce (no teacher) (± std)") && svg.contains("fill-opacity"), "the student alone is a band");

    // The drop table: per family, the best-teaching teacher against the family's largest, as
    // computed here from the runs (resnet14 teaches best, resnet20 is the largest).
    let table = report
        .blocks
        .iter()
        .find_map(|b| match b {
            Block::Table(h, rows) if h.iter().any(|c| c == "drop") => Some(rows.clone()),
            _ => None,
        })
        .expect("a drop table");
    let row = table.iter().find(|row| row[0] == "ats" && row[1] == "resnet").expect("ats, resnet");
    assert_eq!((row[2].as_str(), row[4].as_str()), ("resnet14", "resnet20"));
    let drop = 100.0 * (mean(&r, "ats", "resnet14") - mean(&r, "ats", "resnet20"));
    assert_eq!(row[6], format!("{drop:.2}"));
    let cnn = table.iter().find(|row| row[0] == "ats" && row[1] == "cnn").expect("ats, cnn");
    assert_eq!(
        (cnn[2].as_str(), cnn[4].as_str(), cnn[6].as_str()),
        ("cnn_w4", "cnn_w4", "0.00"),
        "no drop in the CNNs"
    );
    // No row compares teachers of different families.
    assert!(table.iter().all(|row| row[2][..3] == row[4][..3]), "{table:?}");
}

/// Every file of a report directory, by name.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_report_regenerates_byte_identical_from_itself() {
    let r = results();
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    kdlab::report::study::write_results(&r, a.path()).unwrap();
    kdlab::report::study::write_results(&r, b.path()).unwrap();
    let first = files(a.path());
    assert!(first.len() >= 8, "{:?}", first.iter().map(|f| &f.0).collect::<Vec<_>>());
    assert_eq!(first, files(b.path()), "the same results give the same report");
    // Read back from its own files (as `kdlab report --from-report` does for docs/), the report
    // is the same, byte for byte.
    let back = StudyResults::from_report(a.path()).unwrap();
    kdlab::report::study::write_results(&back, c.path()).unwrap();
    for ((name, x), (name2, y)) in first.iter().zip(&files(c.path())) {
        assert_eq!(name, name2);
        assert!(x == y, "{name} differs when regenerated from the report's files");
    }
}

/// Debian's Chromium (or the browser `KDLAB_CHROMIUM` names), if installed.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KDLAB_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|n| std::env::split_paths(&path).map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// Runs the browser headless on `url` with `args`; its stdout and stderr. Each run has a
/// profile of its own (parallel tests must not share one) and a minute at most.
fn browse(exe: &Path, profile: &Path, args: &[String], url: &str) -> (String, String) {
    let mut child = Command::new(exe)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--enable-logging=stderr", "--v=0"])
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the browser");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().ok();
            panic!("the browser did not finish on {url} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (reader.join().unwrap(), err_reader.join().unwrap())
}

/// The console messages a browser run logged (Chromium logs each as `INFO:CONSOLE`).
fn console(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

/// What the check page finds, in the report loaded into its frame: figures with their drawn
/// size and the share of pixels that differ from a screenshot, links, images and sorting.
const CHECK: &str = r#"<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="f" src="report.html" width="1200" height="900"></iframe>
<script>
var out={figures:[],problems:[]};
function done(){document.getElementById('result').textContent=JSON.stringify(out);}
function pixels(img,w,h){var c=document.createElement('canvas');c.width=w;c.height=h;var x=c.getContext('2d');
x.fillStyle='white';x.fillRect(0,0,w,h);x.drawImage(img,0,0);return x.getImageData(0,0,w,h).data;}
function load(src,k){var i=new Image();i.onload=function(){k(i);};i.onerror=function(){out.problems.push('cannot load '+src.slice(0,60));k(null);};i.src=src;}
function differ(a,b){var n=0;for(var i=0;i<a.length;i+=4){if(Math.max(Math.abs(a[i]-b[i]),Math.abs(a[i+1]-b[i+1]),Math.abs(a[i+2]-b[i+2]))>64){n++;}}return n/(a.length/4);}
document.getElementById('f').onload=function(){try{
var d=document.getElementById('f').contentDocument;
var imgs=d.images;for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0){out.problems.push('broken image '+imgs[i].src);}}
var ext=d.querySelectorAll('[src],[href]');for(var i=0;i<ext.length;i++){var u=ext[i].getAttribute('src')||ext[i].getAttribute('href');if(/^(https?:)?\/\//.test(u)){out.problems.push('network: '+u);}}
var links=d.querySelectorAll('nav.toc a');out.toc=links.length;
for(var i=0;i<links.length;i++){if(!d.getElementById(links[i].getAttribute('href').slice(1))){out.problems.push('dead link '+links[i].getAttribute('href'));}}
var t=null,ts=d.querySelectorAll('table.sortable');for(var i=0;i<ts.length&&!t;i++){if(ts[i].tBodies[0].rows.length>=4&&ts[i].tHead.rows[0].cells[0].textContent==='method'){t=ts[i];}}
function col(){var r=t.tBodies[0].rows,v=[];for(var i=0;i<r.length;i++){v.push(parseFloat(r[i].cells[1].textContent));}return v.filter(function(x){return !isNaN(x);});}
var th=t.tHead.rows[0].cells[1];th.click();var up=col();th.click();var down=col();
out.sort={up:up,down:down,aria:th.getAttribute('aria-sort')};
var svgs=d.querySelectorAll('figure svg');var left=svgs.length;if(!left){done();}
var shots=SHOTS;
Array.prototype.forEach.call(svgs,function(s,i){var r=s.getBoundingClientRect();
var f={w:+s.getAttribute('width'),h:+s.getAttribute('height'),drawn:[r.width,r.height]};out.figures.push(f);
load('data:image/svg+xml;charset=utf-8,'+encodeURIComponent(new XMLSerializer().serializeToString(s)),function(inline){
load(shots[i],function(shot){load(shots[(i+1)%shots.length],function(other){
if(inline&&shot&&other){f.shot=[shot.naturalWidth,shot.naturalHeight];var a=pixels(inline,f.w,f.h);
f.diff=differ(a,pixels(shot,f.w,f.h));f.diff_other=differ(a,pixels(other,f.w,f.h));f.dark=0;
for(var k=0;k<a.length;k+=4){if(a[k]<128){f.dark++;}}f.dark/=a.length/4;}
if(--left===0){done();}});});});});
}catch(e){out.problems.push(String(e));done();}};
</script></body></html>"#;

#[test]
fn the_html_report_renders_in_a_headless_browser() {
    let Some(exe) = chromium() else {
        if std::env::var_os("KDLAB_REQUIRE_BROWSER").is_some() {
            panic!("KDLAB_REQUIRE_BROWSER is set but no chromium is installed");
        }
        eprintln!("SKIPPED the_html_report_renders_in_a_headless_browser: no chromium on PATH (apt-get install -y chromium; .ci/run installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let report = kdlab::report::study::write_results(&results(), dir.path()).unwrap();
    let figures: Vec<&String> =
        report.blocks.iter().filter_map(|b| if let Block::Figure(f, _, _) = b { Some(f) } else { None }).collect();
    assert!(figures.len() >= 3, "{figures:?}");
    let url = |p: &Path| format!("file://{}", p.display());

    // The page alone: no console message at all (the report logs nothing when it works).
    let (dom, err) =
        browse(&exe, &dir.path().join("profile-page"), &["--dump-dom".into()], &url(&dir.path().join("report.html")));
    assert!(dom.contains("<nav class=\"toc\">"), "the browser rendered the page");
    assert!(console(&err).is_empty(), "console messages: {:?}", console(&err));

    // A screenshot of each plot, by the browser, at the size the SVG declares.
    let mut shots = vec![];
    for (i, f) in figures.iter().enumerate() {
        let svg = std::fs::read_to_string(dir.path().join(f)).unwrap();
        let attr = |k: &str| -> u32 {
            let at = svg.find(&format!(" {k}=\"")).unwrap() + k.len() + 3;
            svg[at..at + svg[at..].find('"').unwrap()].parse().unwrap()
        };
        let (w, h) = (attr("width"), attr("height"));
        let png = format!("shot-{i}.png");
        let (_, err) = browse(
            &exe,
            &dir.path().join(format!("profile-shot-{i}")),
            &[format!("--window-size={w},{h}"), format!("--screenshot={}", dir.path().join(&png).display())],
            &url(&dir.path().join(f)),
        );
        assert!(dir.path().join(&png).exists(), "no screenshot of {f}: {err}");
        let img = image::open(dir.path().join(&png)).unwrap();
        assert_eq!((img.width(), img.height()), (w, h), "{f}: the screenshot's size");
        shots.push(png);
    }

    // The report in a frame of the check page, which compares each inline plot with its
    // screenshot pixel by pixel, follows the contents' links and sorts a table.
    let list = format!("[{}]", shots.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(","));
    std::fs::write(dir.path().join("check.html"), CHECK.replace("SHOTS", &list)).unwrap();
    let (dom, err) = browse(
        &exe,
        &dir.path().join("profile-check"),
        &["--allow-file-access-from-files".into(), "--virtual-time-budget=20000".into(), "--dump-dom".into()],
        &url(&dir.path().join("check.html")),
    );
    assert!(console(&err).is_empty(), "console messages: {:?}", console(&err));
    let at = dom.find("<pre id=\"result\">").expect("the check page's result") + 17;
    let text = &dom[at..at + dom[at..].find("</pre>").unwrap()];
    let got: serde_json::Value =
        serde_json::from_str(&text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
            .unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(got["problems"], json!([]), "{got}");
    assert!(got["toc"].as_u64().unwrap() >= 5, "{got}");
    let figs = got["figures"].as_array().unwrap();
    assert_eq!(figs.len(), figures.len(), "every figure inline: {got}");
    for (f, name) in figs.iter().zip(&figures) {
        let pair =
            |v: &serde_json::Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
        let size = vec![f["w"].as_f64().unwrap(), f["h"].as_f64().unwrap()];
        assert_eq!(pair(&f["drawn"]), size, "{name}: drawn at its own size");
        assert_eq!(pair(&f["shot"]), size, "{name}: the screenshot's size");
        eprintln!(
            "{name}: {size:?}, differs from its screenshot in {:.3}% of the pixels, from another plot's in {:.1}%",
            100.0 * f["diff"].as_f64().unwrap(),
            100.0 * f["diff_other"].as_f64().unwrap()
        );
        let (diff, other) = (f["diff"].as_f64().unwrap(), f["diff_other"].as_f64().unwrap());
        assert!(diff < 0.01, "{name}: {:.2}% of the pixels differ from its screenshot", 100.0 * diff);
        assert!(other > 0.02 && other > 5.0 * diff, "{name}: the comparison tells plots apart ({other} vs {diff})");
        assert!(f["dark"].as_f64().unwrap() > 0.005, "{name}: the plot is drawn, not blank");
    }
    let (up, down) = (got["sort"]["up"].as_array().unwrap(), got["sort"]["down"].as_array().unwrap());
    let num = |v: &Vec<serde_json::Value>| v.iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>();
    let (up, down) = (num(up), num(down));
    assert!(up.len() >= 4 && up.windows(2).all(|w| w[0] <= w[1]), "sorted up: {up:?}");
    assert!(down.windows(2).all(|w| w[0] >= w[1]) && down.first() > down.last(), "sorted down: {down:?}");
    assert_eq!(got["sort"]["aria"], "descending");
}
