//! A tiny document model rendered twice: as Markdown (figures as linked SVG files) and as one
//! self-contained HTML page (figures inlined).
use std::fmt::Write;

pub enum Block {
    Heading(usize, String),
    Para(String),
    /// Header, rows; a cell starting with `**` and ending with `**` is bold.
    Table(Vec<String>, Vec<Vec<String>>),
    /// File name, SVG content, caption.
    Figure(String, String, String),
    Code(String),
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn html_inline(s: &str) -> String {
    // `code` and **bold**, the only inline markup the report uses.
    let mut out = String::new();
    let mut code = false;
    for (i, part) in html_escape(s).split('`').enumerate() {
        if i > 0 {
            out += if code { "</code>" } else { "<code>" };
            code = !code;
        }
        let mut bold = false;
        for (j, p) in part.split("**").enumerate() {
            if j > 0 {
                out += if bold { "</b>" } else { "<b>" };
                bold = !bold;
            }
            out += p;
        }
    }
    out
}

pub fn markdown(blocks: &[Block]) -> String {
    let mut s = String::new();
    for b in blocks {
        match b {
            Block::Heading(l, t) => {
                let _ = writeln!(s, "{} {t}\n", "#".repeat(*l));
            }
            Block::Para(t) => {
                let _ = writeln!(s, "{t}\n");
            }
            Block::Table(h, rows) => {
                let _ = writeln!(s, "| {} |", h.join(" | "));
                let _ = writeln!(s, "|{}|", h.iter().map(|_| "---").collect::<Vec<_>>().join("|"));
                for r in rows {
                    let _ = writeln!(s, "| {} |", r.join(" | "));
                }
                s.push('\n');
            }
            Block::Figure(file, _, caption) => {
                let _ = writeln!(s, "![{caption}]({file})\n\n*{caption}*\n");
            }
            Block::Code(t) => {
                let _ = writeln!(s, "```\n{}\n```\n", t.trim_end());
            }
        }
    }
    s
}

pub fn html(title: &str, blocks: &[Block]) -> String {
    let mut s = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}th{{background:#f3f3f3}}figure{{margin:1em 0}}\
         figcaption{{color:#555;font-size:90%}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head><body>\n",
        html_escape(title)
    );
    for b in blocks {
        match b {
            Block::Heading(l, t) => {
                let _ = writeln!(s, "<h{l}>{}</h{l}>", html_inline(t));
            }
            Block::Para(t) => {
                let _ = writeln!(s, "<p>{}</p>", html_inline(t));
            }
            Block::Table(h, rows) => {
                s += "<table><tr>";
                for c in h {
                    let _ = write!(s, "<th>{}</th>", html_inline(c));
                }
                s += "</tr>\n";
                for r in rows {
                    s += "<tr>";
                    for c in r {
                        let _ = write!(s, "<td>{}</td>", html_inline(c));
                    }
                    s += "</tr>\n";
                }
                s += "</table>\n";
            }
            Block::Figure(_, svg, caption) => {
                let _ = writeln!(s, "<figure>{svg}<figcaption>{}</figcaption></figure>", html_inline(caption));
            }
            Block::Code(t) => {
                let _ = writeln!(s, "<pre>{}</pre>", html_escape(t));
            }
        }
    }
    s + "</body></html>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_ways() {
        let blocks = vec![
            Block::Heading(1, "T".into()),
            Block::Table(vec!["a".into(), "b".into()], vec![vec!["x".into(), "**1.0**".into()]]),
            Block::Figure("f.svg".into(), "<svg></svg>".into(), "cap <x>".into()),
        ];
        let md = markdown(&blocks);
        assert!(md.contains("| x | **1.0** |") && md.contains("![cap <x>](f.svg)"));
        let h = html("t", &blocks);
        assert!(h.contains("<td><b>1.0</b></td>") && h.contains("<svg></svg>") && h.contains("cap &lt;x&gt;"));
    }
}
