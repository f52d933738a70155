//! Human-readable numbers for tables and progress lines.

/// 1234567 → "1.23M", 278324 → "278.3K".
pub fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// Seconds → "1h02m", "3m05s", "12.3s".
pub fn duration(secs: f64) -> String {
    if secs >= 3600.0 {
        let m = (secs / 60.0).round() as u64;
        format!("{}h{:02}m", m / 60, m % 60)
    } else if secs >= 60.0 {
        let s = secs.round() as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{secs:.1}s")
    }
}

/// Renders rows as an aligned text table: first column left-aligned, the rest right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 0 { format!("{c:<w$}", w = width[i]) } else { format!("{c:>w$}", w = width[i]) })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    out.push_str(&width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// How a value of a `--flag` enum is spelt on the command line.
pub fn flag_value<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value().expect("every value is named").get_name().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(count(278_324), "278.3K");
        assert_eq!(count(1_740_000), "1.74M");
        assert_eq!(count(12), "12");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(3720.0), "1h02m");
        let t = table(&["model", "params"], &[vec!["resnet8".into(), "78.0K".into()]]);
        assert_eq!(t, "model    params\n-------  ------\nresnet8   78.0K\n");
    }
}
