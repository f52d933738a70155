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

pub(crate) fn markdown(blocks: &[Block]) -> String {
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

/// An id for each heading, from its text: lower-case letters and digits joined by dashes, a
/// number appended where two headings read the same.
fn heading_ids(blocks: &[Block]) -> Vec<Option<String>> {
    let mut seen: Vec<String> = vec![];
    blocks
        .iter()
        .map(|b| {
            let Block::Heading(_, t) = b else { return None };
            let words: Vec<String> = t
                .to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect();
            let base = if words.is_empty() { "section".to_string() } else { words.join("-") };
            let n = seen.iter().filter(|s| **s == base).count();
            seen.push(base.clone());
            Some(if n == 0 { base } else { format!("{base}-{}", n + 1) })
        })
        .collect()
}

/// The page's style: readable widths, tables that say they sort.
const STYLE: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0;display:block;overflow-x:auto;max-width:100%}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3;cursor:pointer;user-select:none}\
th[aria-sort=ascending]::after{content:\" \\25B2\"}th[aria-sort=descending]::after{content:\" \\25BC\"}\
figure{margin:1em 0}figure svg{max-width:100%;height:auto}\
figcaption{color:#555;font-size:90%}pre{background:#f6f6f6;padding:1em;overflow:auto}\
nav.toc{background:#f8f8f8;border:1px solid #ddd;padding:.5em 1em;margin:1em 0}nav.toc ul{margin:.2em 0}";

/// Sorts a table by the column whose header is clicked (again: the other way). Numbers (with
/// the K/M/G of parameter counts) sort as numbers, before text; an empty cell or "-" sorts last
/// either way; rows that tie keep their order. Inline,
/// so that the report needs no network.
const SORT_SCRIPT: &str = r#"(function(){
function key(s){s=s.trim().replace('\u2212','-');var m=s.match(/^[+-]?\d+(\.\d+)?(e[+-]?\d+)?/i);
if(!m){return s==='-'||s===''?[2,0,s]:[1,0,s];}
var v=parseFloat(m[0]);var u=s.charAt(m[0].length);v*=u==='K'?1e3:u==='M'?1e6:u==='G'?1e9:1;return [0,v,s];}
function cmp(a,b){if(a[0]===0&&a[1]!==b[1]){return a[1]-b[1];}return a[2]<b[2]?-1:a[2]>b[2]?1:0;}
var tables=document.querySelectorAll('table.sortable');
for(var t=0;t<tables.length;t++){(function(table){
var ths=table.tHead.rows[0].cells;
for(var i=0;i<ths.length;i++){(function(th,col){th.title='sort by this column';th.addEventListener('click',function(){
var asc=th.getAttribute('aria-sort')!=='ascending';
for(var j=0;j<ths.length;j++){ths[j].removeAttribute('aria-sort');}
th.setAttribute('aria-sort',asc?'ascending':'descending');
var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
var keyed=rows.map(function(r,n){return [key(r.cells[col]?r.cells[col].textContent:''),n,r];});
keyed.sort(function(a,b){var c=a[0][0]-b[0][0];if(c===0){c=cmp(a[0],b[0]);if(!asc){c=-c;}}return c||a[1]-b[1];});
for(var k=0;k<keyed.length;k++){body.appendChild(keyed[k][2]);}});})(ths[i],i);}
})(tables[t]);}
})();"#;

/// The table of contents: every heading below the title, nested by level.
fn toc(blocks: &[Block], ids: &[Option<String>]) -> String {
    let mut s = String::from("<nav class=\"toc\"><b>Contents</b><ul>\n");
    let mut open_sub = false;
    for (b, id) in blocks.iter().zip(ids) {
        let (Block::Heading(l, t), Some(id)) = (b, id) else { continue };
        let item = format!("<li><a href=\"#{id}\">{}</a>", html_inline(t));
        match l {
            2 => {
                if open_sub {
                    s += "</ul></li>\n";
                    open_sub = false;
                } else if s.ends_with("</a>") {
                    s += "</li>\n";
                }
                s += &item;
            }
            3 => {
                if !open_sub {
                    s += "<ul>\n";
                    open_sub = true;
                }
                s += &item;
                s += "</li>\n";
            }
            _ => {}
        }
    }
    if open_sub {
        s += "</ul></li>\n";
    } else if s.ends_with("</a>") {
        s += "</li>\n";
    }
    s + "</ul></nav>\n"
}

pub fn html(title: &str, blocks: &[Block]) -> String {
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        html_escape(title)
    );
    let ids = heading_ids(blocks);
    let mut figures = 0;
    for (i, b) in blocks.iter().enumerate() {
        match b {
            Block::Heading(l, t) => {
                let id = ids[i].as_deref().unwrap_or_default();
                let _ = writeln!(s, "<h{l} id=\"{id}\">{}</h{l}>", html_inline(t));
                if *l == 1 {
                    s += &toc(blocks, &ids);
                }
            }
            Block::Para(t) => {
                let _ = writeln!(s, "<p>{}</p>", html_inline(t));
            }
            Block::Table(h, rows) => {
                s += "<table class=\"sortable\"><thead><tr>";
                for c in h {
                    let _ = write!(s, "<th>{}</th>", html_inline(c));
                }
                s += "</tr></thead>\n<tbody>\n";
                for r in rows {
                    s += "<tr>";
                    for c in r {
                        let _ = write!(s, "<td>{}</td>", html_inline(c));
                    }
                    s += "</tr>\n";
                }
                s += "</tbody></table>\n";
            }
            Block::Figure(_, svg, caption) => {
                figures += 1;
                let _ = writeln!(
                    s,
                    "<figure id=\"figure-{figures}\">{svg}<figcaption>{}</figcaption></figure>",
                    html_inline(caption)
                );
            }
            Block::Code(t) => {
                let _ = writeln!(s, "<pre>{}</pre>", html_escape(t));
            }
        }
    }
    s + "<script>" + SORT_SCRIPT + "</script>\n</body></html>\n"
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
        assert!(h.contains("<h1 id=\"t\">") && h.contains("class=\"sortable\""));
    }

    #[test]
    fn headings_get_unique_ids_and_the_contents_link_them() {
        let blocks = vec![
            Block::Heading(1, "Study `x`".into()),
            Block::Heading(2, "Student `a`".into()),
            Block::Heading(3, "Curves".into()),
            Block::Heading(2, "Student `b`".into()),
            Block::Heading(3, "Curves".into()),
            Block::Heading(2, "Reproduce".into()),
        ];
        let h = html("t", &blocks);
        for id in ["student-a", "curves", "student-b", "curves-2", "reproduce"] {
            assert!(h.contains(&format!("id=\"{id}\"")), "{id}: {h}");
            assert!(h.contains(&format!("href=\"#{id}\"")), "{id} in the contents");
        }
        // Lists nest and close: as many <ul> as </ul>, <li> as </li>.
        assert_eq!(h.matches("<ul>").count(), h.matches("</ul>").count());
        assert_eq!(h.matches("<li>").count(), h.matches("</li>").count());
        assert!(!h.contains("http://") && !h.contains("https://"), "no network at view time");
    }
}
