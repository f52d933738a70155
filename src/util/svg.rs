//! Small, dependency-free SVG charts: line plots (linear or log x axis, optional error bars) and
//! heat-maps with labelled rows and columns. Self-contained files that any browser shows and that
//! can be inlined into an HTML report.
use std::fmt::Write;

const PALETTE: [&str; 10] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
/// Line styles for the 2nd and 3rd pass through the palette, so no two series look alike.
const DASHES: [&str; 3] = ["", r#" stroke-dasharray="7 3""#, r#" stroke-dasharray="2 2""#];

/// Colour and dash attribute of the i-th series.
fn style(i: usize) -> (&'static str, &'static str) {
    (PALETTE[i % PALETTE.len()], DASHES[(i / PALETTE.len()) % DASHES.len()])
}

/// One line of a plot.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Half-height of an error bar at each point (e.g. the standard deviation over seeds).
    pub errors: Option<Vec<f64>>,
}

#[derive(Clone, Debug)]
pub(crate) struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    pub series: Vec<Series>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// About five round tick values covering [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    if hi.is_nan() || lo.is_nan() || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut v = vec![];
    while t <= hi + step * 1e-9 {
        v.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    v
}

fn label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    // Parameter counts and the like: 9.1K, 137.6K, 1.7M (as the report's tables write them).
    if (1e3..1e12).contains(&a) {
        let (div, unit) = [(1e9, "G"), (1e6, "M"), (1e3, "K")].into_iter().find(|(d, _)| a >= *d).expect("a ≥ 1e3");
        let s = format!("{:.1}", v / div);
        return format!("{}{unit}", s.trim_end_matches(".0"));
    }
    if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A line plot's drawing area and data ranges (x on the log10 scale when `x_log`).
struct Frame {
    w: f64,
    h: f64,
    l: f64,
    r: f64,
    t: f64,
    b: f64,
    x_log: bool,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn fx(&self, x: f64) -> f64 {
        if self.x_log {
            x.log10()
        } else {
            x
        }
    }
    fn px(&self, x: f64) -> f64 {
        self.l + (self.fx(x) - self.x0) / (self.x1 - self.x0) * (self.w - self.l - self.r)
    }
    fn py(&self, y: f64) -> f64 {
        self.h - self.b - (y - self.y0) / (self.y1 - self.y0) * (self.h - self.t - self.b)
    }
}

impl LinePlot {
    pub(crate) fn to_svg(&self) -> String {
        let f = self.frame();
        let (w, h) = (f.w, f.h);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = write!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            (f.l + w - f.r) / 2.0,
            esc(&self.title)
        );
        self.draw_axes(&mut s, &f);
        for (i, se) in self.series.iter().enumerate() {
            draw_series(&mut s, &f, i, se);
        }
        s.push_str("</svg>\n");
        s
    }

    /// The finite points, all series together.
    fn finite_points(&self) -> Vec<(f64, f64)> {
        self.series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    }

    /// The drawing area and the data ranges (error bars included, y padded by 8%).
    fn frame(&self) -> Frame {
        let (w, h) = (640.0, 400.0);
        let (l, r, t, b) = (70.0, 170.0, 40.0, 50.0);
        let pts = self.finite_points();
        let fx = |x: f64| if self.x_log { x.log10() } else { x };
        let (mut x0, mut x1) =
            pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(fx(p.0)), b.max(fx(p.0))));
        let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
        for s in &self.series {
            for (i, &(_, y)) in s.points.iter().enumerate() {
                let e = s.errors.as_ref().map_or(0.0, |e| e[i]);
                if y.is_finite() {
                    y0 = y0.min(y - e);
                    y1 = y1.max(y + e);
                }
            }
        }
        if pts.is_empty() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 - x0 < 1e-12 {
            x0 -= 0.5;
            x1 += 0.5;
        }
        let pad = ((y1 - y0) * 0.08).max(1e-12 + y1.abs() * 1e-6);
        Frame { w, h, l, r, t, b, x_log: self.x_log, x0, x1, y0: y0 - pad, y1: y1 + pad }
    }

    /// The plot's box, grid lines, tick labels and axis titles.
    fn draw_axes(&self, s: &mut String, f: &Frame) {
        let (w, h, l, r, t, b) = (f.w, f.h, f.l, f.r, f.t, f.b);
        let _ = write!(
            s,
            r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
            w - l - r,
            h - t - b
        );
        for yt in ticks(f.y0, f.y1) {
            let y = f.py(yt);
            let _ = write!(s, r##"<line x1="{l}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/>"##, w - r);
            let _ = write!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, l - 6.0, y + 4.0, label(yt));
        }
        let xt: Vec<f64> = if self.x_log {
            let mut v: Vec<f64> = self.finite_points().iter().map(|p| p.0).collect();
            v.sort_by(f64::total_cmp);
            v.dedup();
            if v.len() > 9 {
                let step = v.len().div_ceil(9);
                v = v.into_iter().step_by(step).collect();
            }
            v
        } else {
            ticks(f.x0, f.x1)
        };
        for xv in xt {
            let x = f.px(xv);
            let _ = write!(s, r##"<line x1="{x:.1}" x2="{x:.1}" y1="{t}" y2="{}" stroke="#eee"/>"##, h - b);
            let _ = write!(s, r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#, h - b + 16.0, label(xv));
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            (l + w - r) / 2.0,
            h - 12.0,
            esc(&self.x_label)
        );
        let _ = write!(
            s,
            r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
            (t + h - b) / 2.0,
            (t + h - b) / 2.0,
            esc(&self.y_label)
        );
    }
}

/// Series `i`: its line, points (with their values on hover), error bars and legend entry.
fn draw_series(s: &mut String, f: &Frame, i: usize, se: &Series) {
    let (c, dash) = style(i);
    let good: Vec<(usize, &(f64, f64))> =
        se.points.iter().enumerate().filter(|(_, p)| p.0.is_finite() && p.1.is_finite()).collect();
    let path: Vec<String> = good.iter().map(|(_, p)| format!("{:.1},{:.1}", f.px(p.0), f.py(p.1))).collect();
    let _ = write!(s, r#"<polyline fill="none" stroke="{c}"{dash} stroke-width="2" points="{}"/>"#, path.join(" "));
    for (k, p) in &good {
        let _ = write!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"><title>{}: ({}, {})</title></circle>"#,
            f.px(p.0),
            f.py(p.1),
            esc(&se.name),
            label(p.0),
            label(p.1)
        );
        if let Some(e) = se.errors.as_ref().map(|e| e[*k]).filter(|e| *e > 0.0) {
            let _ = write!(
                s,
                r#"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="{c}"/>"#,
                f.py(p.1 - e),
                f.py(p.1 + e),
                x = f.px(p.0)
            );
        }
    }
    let ly = f.t + 14.0 + 18.0 * i as f64;
    let _ = write!(
        s,
        r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}"{dash} stroke-width="3"/>"#,
        f.w - f.r + 10.0,
        f.w - f.r + 30.0
    );
    let _ = write!(s, r#"<text x="{}" y="{}">{}</text>"#, f.w - f.r + 36.0, ly + 4.0, esc(&se.name));
}

/// Marker shapes, so that series drawn on top of one another stay told apart.
const MARKERS: [&str; 6] = ["circle", "square", "triangle", "diamond", "down", "cross"];

/// One panel of a [`PanelPlot`]: a ladder of teachers on a categorical x axis.
#[derive(Clone, Debug)]
pub(crate) struct Panel {
    pub title: String,
    /// The x positions' labels, in order (a `\n` splits a label over two lines); a series' point
    /// (i, y) sits at the i-th label.
    pub ticks: Vec<String>,
    pub series: Vec<Series>,
}

/// A horizontal band across every panel: a reference value and its spread (mean ± std).
#[derive(Clone, Debug)]
pub(crate) struct Band {
    pub name: String,
    pub mean: f64,
    pub std: f64,
}

/// Small multiples: one panel per group (a family of teachers), a shared y axis, and one legend.
/// A series keeps its colour, dash and marker in every panel; within a panel, the series are
/// shifted a few pixels apart horizontally so that their error bars do not hide one another, and
/// markers are hollow and of different shapes, so that series that coincide stay visible.
#[derive(Clone, Debug)]
pub(crate) struct PanelPlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub panels: Vec<Panel>,
    pub band: Option<Band>,
}

/// The drawing area of one panel.
struct PanelFrame {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    n: usize,
    y0: f64,
    y1: f64,
}

impl PanelFrame {
    /// The centre of the i-th slot.
    fn px(&self, i: f64) -> f64 {
        self.x + self.w * (i + 0.5) / self.n.max(1) as f64
    }
    fn py(&self, v: f64) -> f64 {
        self.y + self.h - (v - self.y0) / (self.y1 - self.y0) * self.h
    }
}

/// A marker of shape `k` at (x, y): hollow, so that a marker under it shows through.
fn marker(s: &mut String, k: usize, x: f64, y: f64, c: &str, title: &str) {
    let m = MARKERS[k % MARKERS.len()];
    let a = r#"fill="white" stroke-width="1.6""#;
    let t = format!("<title>{}</title>", esc(title));
    let _ = match m {
        "circle" => write!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.6" {a} stroke="{c}">{t}</circle>"#),
        "square" => write!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="6.6" height="6.6" {a} stroke="{c}">{t}</rect>"#,
            x - 3.3,
            y - 3.3
        ),
        "cross" => write!(
            s,
            r#"<path d="M{:.1},{:.1}L{:.1},{:.1}M{:.1},{:.1}L{:.1},{:.1}" stroke="{c}" stroke-width="2">{t}</path>"#,
            x - 4.0,
            y - 4.0,
            x + 4.0,
            y + 4.0,
            x - 4.0,
            y + 4.0,
            x + 4.0,
            y - 4.0
        ),
        _ => {
            let pts: [(f64, f64); 4] = match m {
                "triangle" => [(0.0, -4.6), (4.2, 3.2), (-4.2, 3.2), (0.0, -4.6)],
                "down" => [(0.0, 4.6), (4.2, -3.2), (-4.2, -3.2), (0.0, 4.6)],
                _ => [(0.0, -4.8), (4.2, 0.0), (0.0, 4.8), (-4.2, 0.0)],
            };
            let p: Vec<String> = pts.iter().map(|(dx, dy)| format!("{:.1},{:.1}", x + dx, y + dy)).collect();
            write!(s, r#"<polygon points="{}" {a} stroke="{c}">{t}</polygon>"#, p.join(" "))
        }
    };
}

impl PanelPlot {
    /// The series' names in the order they first appear: one legend entry and style each.
    fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = vec![];
        for se in self.panels.iter().flat_map(|p| &p.series) {
            if !v.contains(&se.name.as_str()) {
                v.push(&se.name);
            }
        }
        v
    }

    /// The shared y range: every point with its error bar, and the band; padded by 8%.
    fn y_range(&self) -> (f64, f64) {
        let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
        for se in self.panels.iter().flat_map(|p| &p.series) {
            for (i, &(_, y)) in se.points.iter().enumerate() {
                let e = se.errors.as_ref().map_or(0.0, |e| e[i]);
                if y.is_finite() && e.is_finite() {
                    (y0, y1) = (y0.min(y - e), y1.max(y + e));
                }
            }
        }
        if let Some(b) = self.band.as_ref().filter(|b| b.mean.is_finite() && b.std.is_finite()) {
            (y0, y1) = (y0.min(b.mean - b.std), y1.max(b.mean + b.std));
        }
        if !y0.is_finite() {
            (y0, y1) = (0.0, 1.0);
        }
        let pad = ((y1 - y0) * 0.08).max(1e-12 + y1.abs() * 1e-6);
        (y0 - pad, y1 + pad)
    }

    pub(crate) fn to_svg(&self) -> String {
        let names = self.names();
        let np = self.panels.len().max(1);
        let cols = np.min(3);
        let rows = np.div_ceil(cols);
        let (l, legend_w, gap) = (64.0, 210.0, 18.0);
        let pw = ((700.0 - gap * (cols - 1) as f64) / cols as f64).min(460.0);
        // Below each row of panels: two lines of tick labels (slanted ones take more).
        let (ph, top, row_gap) = (260.0, 52.0, 86.0);
        // Wide enough for the title (about 7.5 px a character at 15 px).
        let w = (l + pw * cols as f64 + gap * (cols - 1) as f64 + legend_w)
            .max(7.5 * self.title.chars().count() as f64 + 40.0)
            .round();
        let legend_h = 18.0 * (names.len() + self.band.is_some() as usize) as f64 + top + 10.0;
        let h = (top + rows as f64 * (ph + row_gap) - row_gap + 70.0).max(legend_h);
        let (y0, y1) = self.y_range();
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(s, r#"<rect width="{w:.0}" height="{h:.0}" fill="white"/>"#);
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="20" text-anchor="middle" font-size="15">{}</text>"#,
            w / 2.0,
            esc(&self.title)
        );
        let plot_h = rows as f64 * (ph + row_gap) - row_gap;
        let _ = write!(
            s,
            r#"<text x="14" y="{y:.1}" text-anchor="middle" transform="rotate(-90 14 {y:.1})">{}</text>"#,
            esc(&self.y_label),
            y = top + plot_h / 2.0
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            l + (pw * cols as f64 + gap * (cols - 1) as f64) / 2.0,
            h - 8.0,
            esc(&self.x_label)
        );
        for (pi, panel) in self.panels.iter().enumerate() {
            let (row, col) = (pi / cols, pi % cols);
            let f = PanelFrame {
                x: l + col as f64 * (pw + gap),
                y: top + row as f64 * (ph + row_gap),
                w: pw,
                h: ph,
                n: panel.ticks.len(),
                y0,
                y1,
            };
            self.draw_panel(&mut s, &f, panel, &names, col == 0);
        }
        // The legend: the band, then every series with its line, dash and marker.
        let lx = l + pw * cols as f64 + gap * (cols - 1) as f64 + 14.0;
        let mut ly = top + 8.0;
        if let Some(b) = &self.band {
            let _ = write!(
                s,
                r##"<rect x="{lx}" y="{:.1}" width="24" height="10" fill="#999" fill-opacity="0.3"/><line x1="{lx}" x2="{:.1}" y1="{ly}" y2="{ly}" stroke="#555" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}">{}</text>"##,
                ly - 5.0,
                lx + 24.0,
                lx + 30.0,
                ly + 4.0,
                esc(&format!("{} (± std)", b.name))
            );
            ly += 18.0;
        }
        for (k, name) in names.iter().enumerate() {
            let (c, dash) = panel_style(k);
            let _ = write!(
                s,
                r#"<line x1="{lx}" x2="{:.1}" y1="{ly}" y2="{ly}" stroke="{c}"{dash} stroke-width="2"/>"#,
                lx + 24.0
            );
            marker(&mut s, k, lx + 12.0, ly, c, name);
            let _ = write!(s, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, lx + 30.0, ly + 4.0, esc(name));
            ly += 18.0;
        }
        s.push_str("</svg>\n");
        s
    }

    fn draw_panel(&self, s: &mut String, f: &PanelFrame, panel: &Panel, names: &[&str], y_labels: bool) {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
            f.x + f.w / 2.0,
            f.y - 8.0,
            esc(&panel.title)
        );
        for yt in ticks(f.y0, f.y1) {
            let y = f.py(yt);
            let _ =
                write!(s, r##"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/>"##, f.x, f.x + f.w);
            if y_labels {
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                    f.x - 6.0,
                    y + 4.0,
                    label(yt)
                );
            }
        }
        // Tick labels: level under the slot where they fit, slanted where they would collide.
        let slot = f.w / f.n.max(1) as f64;
        let longest = panel.ticks.iter().flat_map(|t| t.split('\n')).map(|t| t.chars().count()).max().unwrap_or(1);
        let slant = slot < 6.2 * longest as f64;
        for (i, t) in panel.ticks.iter().enumerate() {
            let x = f.px(i as f64);
            let _ =
                write!(s, r##"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#eee"/>"##, f.y, f.y + f.h);
            for (j, line) in t.split('\n').enumerate() {
                let y = f.y + f.h + 14.0 + 12.0 * j as f64;
                if slant {
                    let (x, y) = (x + 4.0 + 9.0 * j as f64, y - 2.0);
                    let _ = write!(
                        s,
                        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="end" font-size="10" transform="rotate(-35 {x:.1} {y:.1})">{}</text>"#,
                        esc(line)
                    );
                } else {
                    let _ = write!(
                        s,
                        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                        esc(line)
                    );
                }
            }
        }
        if let Some(b) = self.band.as_ref().filter(|b| b.mean.is_finite() && b.std.is_finite()) {
            let (top, bottom) = (f.py(b.mean + b.std), f.py(b.mean - b.std));
            let _ = write!(
                s,
                r##"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="#999" fill-opacity="0.3"><title>{}: {} ± {}</title></rect>"##,
                f.x,
                f.w,
                (bottom - top).max(0.5),
                esc(&b.name),
                label(b.mean),
                label(b.std)
            );
            let y = f.py(b.mean);
            let _ = write!(
                s,
                r##"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#555" stroke-dasharray="4 3"/>"##,
                f.x,
                f.x + f.w
            );
        }
        // Offsets: the series of a panel spread over at most 60% of a slot, 7 px apart at most.
        let n = panel.series.len();
        let step = if n > 1 { (0.6 * slot / (n - 1) as f64).min(7.0) } else { 0.0 };
        for (j, se) in panel.series.iter().enumerate() {
            let k = names.iter().position(|x| *x == se.name).unwrap_or(0);
            let (c, dash) = panel_style(k);
            let dx = step * (j as f64 - (n as f64 - 1.0) / 2.0);
            let good: Vec<(usize, (f64, f64))> =
                se.points.iter().copied().enumerate().filter(|(_, p)| p.0.is_finite() && p.1.is_finite()).collect();
            let path: Vec<String> =
                good.iter().map(|(_, p)| format!("{:.1},{:.1}", f.px(p.0) + dx, f.py(p.1))).collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{c}"{dash} stroke-width="1.8" points="{}"/>"#,
                path.join(" ")
            );
            for (i, p) in &good {
                let x = f.px(p.0) + dx;
                let e = se.errors.as_ref().map_or(0.0, |e| e[*i]);
                if e > 0.0 && e.is_finite() {
                    let _ = write!(
                        s,
                        r#"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="{c}" stroke-width="1.2"/>"#,
                        f.py(p.1 - e),
                        f.py(p.1 + e)
                    );
                }
                let tick = panel.ticks.get(p.0 as usize).map_or(String::new(), |t| t.replace('\n', " "));
                let title = if e > 0.0 {
                    format!("{}, {tick}: {} ± {}", se.name, label(p.1), label(e))
                } else {
                    format!("{}, {tick}: {}", se.name, label(p.1))
                };
                marker(s, k, x, f.py(p.1), c, &title);
            }
        }
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#333"/>"##,
            f.x, f.y, f.w, f.h
        );
    }
}

/// Colour and dash of the k-th series of a panel plot: the dash cycles faster than the colour,
/// so that two series drawn on the same points differ in both.
fn panel_style(k: usize) -> (&'static str, &'static str) {
    (PALETTE[k % PALETTE.len()], DASHES[k % DASHES.len()])
}

#[derive(Clone, Debug)]
pub(crate) struct Heatmap {
    pub title: String,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    /// Row-major values; NaN cells are left blank.
    pub values: Vec<f64>,
    /// Print the value in each cell (for small matrices).
    pub annotate: bool,
}

/// A white → blue colour scale on [0, 1].
fn colour(t: f64) -> String {
    let t = t.clamp(0.0, 1.0);
    let (r, g, b) = (247.0 + (8.0 - 247.0) * t, 251.0 + (48.0 - 251.0) * t, 255.0 + (107.0 - 255.0) * t);
    format!("rgb({},{},{})", r as u8, g as u8, b as u8)
}

impl Heatmap {
    pub(crate) fn to_svg(&self) -> String {
        let (nr, nc) = (self.rows.len(), self.cols.len());
        let cell = (480.0 / nr.max(nc) as f64).clamp(6.0, 48.0);
        let label_w = 8.0 * self.rows.iter().map(|r| r.chars().count()).max().unwrap_or(1) as f64 + 10.0;
        let label_h = 7.0 * self.cols.iter().map(|c| c.chars().count()).max().unwrap_or(1) as f64 + 10.0;
        let (l, t) = (label_w.min(180.0), 40.0 + label_h.min(160.0));
        let w = l + cell * nc as f64 + 90.0;
        let h = t + cell * nr as f64 + 20.0;
        let finite: Vec<f64> = self.values.iter().copied().filter(|v| v.is_finite()).collect();
        let (lo, hi) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let span = if hi > lo { hi - lo } else { 1.0 };
        let mut s = String::new();
        let fs = (cell * 0.32).clamp(5.0, 12.0);
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="sans-serif" font-size="11">"#
        );
        let _ = write!(s, r#"<rect width="{w:.0}" height="{h:.0}" fill="white"/>"#);
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
            w / 2.0,
            esc(&self.title)
        );
        for (i, name) in self.rows.iter().enumerate() {
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                l - 4.0,
                t + cell * (i as f64 + 0.5) + 4.0,
                esc(name)
            );
        }
        for (j, name) in self.cols.iter().enumerate() {
            let x = l + cell * (j as f64 + 0.5);
            let _ = write!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" transform="rotate(-60 {x:.1} {:.1})">{}</text>"#,
                t - 4.0,
                t - 4.0,
                esc(name)
            );
        }
        for i in 0..nr {
            for j in 0..nc {
                let v = self.values[i * nc + j];
                if !v.is_finite() {
                    continue;
                }
                let z = (v - lo) / span;
                let (x, y) = (l + cell * j as f64, t + cell * i as f64);
                let _ = write!(
                    s,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{cell:.1}" height="{cell:.1}" fill="{}"><title>{} / {}: {}</title></rect>"#,
                    colour(z),
                    esc(&self.rows[i]),
                    esc(&self.cols[j]),
                    label(v)
                );
                if self.annotate {
                    let tc = if z > 0.55 { "white" } else { "black" };
                    let _ = write!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="{fs:.1}" fill="{tc}">{}</text>"#,
                        x + cell / 2.0,
                        y + cell / 2.0 + fs / 3.0,
                        short(v)
                    );
                }
            }
        }
        // Colour bar.
        let bx = l + cell * nc as f64 + 20.0;
        let bh = cell * nr as f64;
        for k in 0..50 {
            let z = 1.0 - k as f64 / 49.0;
            let _ = write!(
                s,
                r#"<rect x="{bx:.1}" y="{:.1}" width="14" height="{:.2}" fill="{}"/>"#,
                t + bh * k as f64 / 50.0,
                bh / 50.0 + 0.5,
                colour(z)
            );
        }
        let _ = write!(s, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, bx + 18.0, t + 8.0, label(hi));
        let _ = write!(s, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, bx + 18.0, t + bh, label(lo));
        s.push_str("</svg>\n");
        s
    }
}

fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Writes an SVG file atomically and, where `rsvg-convert` is installed, a PNG beside it (best
/// effort: the SVG is the result, the PNG a convenience).
pub(crate) fn write_svg(path: &std::path::Path, svg: &str) -> anyhow::Result<()> {
    crate::util::atomic::write_bytes(path, svg.as_bytes())?;
    let png = path.with_extension("png");
    let converted = std::process::Command::new("rsvg-convert")
        .arg(path)
        .arg("-o")
        .arg(&png)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !converted {
        let _ = std::fs::remove_file(&png);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.0), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        let t = ticks(0.013, 0.087);
        assert!(t.first().unwrap() >= &0.013 && t.last().unwrap() <= &0.087 && t.len() >= 3, "{t:?}");
    }

    #[test]
    fn labels_are_short() {
        let got: Vec<String> = [9146.0, 137_600.0, 1.74e6, 250.0, 0.05174, 1e-5].map(label).to_vec();
        assert_eq!(got, ["9.1K", "137.6K", "1.7M", "250", "0.0517", "1.0e-5"]);
    }

    #[test]
    fn thirty_series_do_not_share_a_style() {
        let styles: std::collections::HashSet<_> = (0..30).map(style).collect();
        assert_eq!(styles.len(), 30);
    }

    /// The (x, y) of the marker whose hover text is `title`.
    fn marker_at(svg: &str, title: &str) -> (f64, f64) {
        let at = svg.find(&format!("<title>{title}</title>")).unwrap_or_else(|| panic!("no marker '{title}'"));
        let tag = &svg[svg[..at].rfind('<').unwrap()..at];
        let num = |k: &str| -> f64 {
            let i = tag.find(&format!(" {k}=\"")).unwrap() + k.len() + 3;
            tag[i..i + tag[i..].find('"').unwrap()].parse().unwrap()
        };
        if tag.starts_with("<circle") {
            (num("cx"), num("cy"))
        } else {
            (num("x") + 3.3, num("y") + 3.3)
        }
    }

    #[test]
    fn panels_share_the_y_axis_and_coinciding_series_stay_apart() {
        let se = |name: &str, ys: &[f64]| Series {
            name: name.into(),
            points: ys.iter().enumerate().map(|(i, y)| (i as f64, *y)).collect(),
            errors: Some(vec![0.5; ys.len()]),
        };
        let p = PanelPlot {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            panels: vec![
                Panel {
                    title: "cnn".into(),
                    ticks: vec!["a\n1K".into(), "b\n2K".into()],
                    series: vec![se("kd", &[80.0, 81.0]), se("ats", &[80.0, 81.0])],
                },
                Panel {
                    title: "resnet".into(),
                    ticks: vec!["c".into(), "d".into(), "e".into()],
                    series: vec![se("kd", &[70.0, 80.0, 90.0])],
                },
            ],
            band: Some(Band { name: "alone".into(), mean: 75.0, std: 1.0 }),
        };
        let svg = p.to_svg();
        // One legend entry per series (and the band), whatever the panels repeat.
        assert_eq!(svg.matches(">kd</text>").count(), 1);
        assert_eq!(svg.matches(">ats</text>").count(), 1);
        assert!(
            svg.contains(">alone (± std)</text>") && svg.matches("fill-opacity=\"0.3\"").count() == 3,
            "a band per panel"
        );
        // Two series on the same points: the same height, apart sideways, different markers.
        let (kd, ats) = (marker_at(&svg, "kd, a 1K: 80 ± 0.5"), marker_at(&svg, "ats, a 1K: 80 ± 0.5"));
        assert!((kd.1 - ats.1).abs() < 0.2 && (kd.0 - ats.0).abs() >= 3.0, "{kd:?} {ats:?}");
        // The same value is drawn at the same height in both panels: the y axis is shared.
        let other = marker_at(&svg, "kd, d: 80 ± 0.5");
        assert!((other.1 - kd.1).abs() < 0.2 && other.0 > kd.0 + 100.0, "{other:?} {kd:?}");
        assert!(marker_at(&svg, "kd, e: 90 ± 0.5").1 < other.1, "higher is up");
    }

    #[test]
    fn plots_are_well_formed_svg_with_every_series() {
        let p = LinePlot {
            title: "σ(q) vs τ".into(),
            x_label: "τ".into(),
            y_label: "σ".into(),
            x_log: true,
            series: vec![
                Series { name: "a<b".into(), points: vec![(0.5, 0.1), (1.0, 0.2), (4.0, f64::NAN)], errors: None },
                Series { name: "c".into(), points: vec![(0.5, 0.3), (4.0, 0.05)], errors: Some(vec![0.01, 0.02]) },
            ],
        };
        let svg = p.to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a&lt;b") && !svg.contains("NaN"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        let hm = Heatmap {
            title: "A".into(),
            rows: vec!["x".into(), "y".into()],
            cols: vec!["x".into(), "y".into()],
            values: vec![f64::NAN, 0.5, 0.25, f64::NAN],
            annotate: true,
        };
        let svg = hm.to_svg();
        assert_eq!(svg.matches("<title>").count(), 2);
    }
}
