//! Where a key stands in a scenario's YAML text, so that a configuration error names its
//! file, line and column.

/// One significant line of block YAML.
struct Line<'a> {
    /// 0-based line number.
    n: usize,
    /// Indent of the line (of its `-` for a sequence item).
    indent: usize,
    /// A sequence item (`- ...`).
    item: bool,
    /// The mapping key on the line and its column (0-based).
    key: Option<(&'a str, usize)>,
}

fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let content = raw.trim_start();
        if content.is_empty() || content.starts_with('#') || content.starts_with("---") {
            continue;
        }
        let indent = raw.len() - content.len();
        let (item, inner, col) = match content.strip_prefix('-') {
            Some(rest) if rest.is_empty() || rest.starts_with([' ', '\t']) => {
                let inner = rest.trim_start();
                (true, inner, raw.len() - inner.len())
            }
            _ => (false, content, indent),
        };
        let key = inner.split_once(':').and_then(|(k, rest)| {
            (rest.is_empty() || rest.starts_with([' ', '\t']))
                .then(|| (k.trim().trim_matches(['"', '\'']), col))
        });
        out.push(Line {
            n,
            indent,
            item,
            key,
        });
    }
    out
}

/// The 1-based line and column of a dotted key path (`timeline.3.path`; a number indexes
/// a sequence, or matches a numeric mapping key) in block-style YAML; the deepest part
/// found when the rest is not (flow style, defaults), 1:1 when nothing is.
pub fn locate(text: &str, key: &str) -> (usize, usize) {
    let lines = lines(text);
    let mut found = (1, 1);
    // The current node's lines start at `pos` and are deeper than `parent`; when the node
    // is a sequence item, its own line (`- key: ...`) counts too.
    let mut pos = 0;
    let mut parent: Option<usize> = None;
    let mut item_line: Option<usize> = None;
    for segment in key.split('.').filter(|s| !s.is_empty()) {
        let index = segment.parse::<usize>().ok();
        let first = lines
            .get(pos)
            .filter(|l| l.item && item_line != Some(pos) && parent.is_none_or(|p| l.indent >= p));
        let hit = match (first, index) {
            (Some(first), Some(k)) => {
                let indent = first.indent;
                lines
                    .iter()
                    .enumerate()
                    .skip(pos)
                    .take_while(|(_, l)| l.indent > indent || (l.indent == indent && l.item))
                    .filter(|(_, l)| l.item && l.indent == indent)
                    .nth(k)
                    .map(|(i, l)| (i, indent, l.key.map_or(indent, |(_, c)| c), true))
            }
            _ => lines
                .iter()
                .enumerate()
                .skip(pos)
                .take_while(|(i, l)| item_line == Some(*i) || parent.is_none_or(|p| l.indent > p))
                .find(|(_, l)| l.key.is_some_and(|(k, _)| k == segment))
                .and_then(|(i, l)| l.key.map(|(_, c)| (i, c, c, false))),
        };
        let Some((i, indent, col, item)) = hit else {
            break;
        };
        found = (lines.get(i).map_or(0, |l| l.n) + 1, col + 1);
        parent = Some(indent);
        if item {
            pos = i;
            item_line = Some(i);
        } else {
            pos = i + 1;
            item_line = None;
        }
    }
    found
}
