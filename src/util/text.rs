//! Help for mistyped names: the valid name closest to what was typed.

/// The candidate closest to `key` by edit distance, if it is close enough to be a likely typo.
pub fn nearest<'a>(key: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(key, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// " (did you mean 'tau'?)" when a candidate is close to `key`, else "".
pub(crate) fn did_you_mean(key: &str, candidates: &[String]) -> String {
    nearest(key, candidates).map(|k| format!(" (did you mean '{k}'?)")).unwrap_or_default()
}
