//! The lab pages as Markdown: their tagged code fences, and their headings'
//! anchors as GitHub makes them.

use std::collections::BTreeSet;

#[derive(Debug)]
pub struct Block {
    /// The page and the fence's line, for messages.
    pub at: String,
    pub tag: String,
    pub options: Vec<String>,
    pub body: String,
}

/// Every fenced block of `text` with a tag after its language.
pub fn blocks(page: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, Vec<String>, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((
                        n + 1,
                        info.split_whitespace().map(str::to_owned).collect(),
                        String::new(),
                    ));
                }
            }
            Some((start, info, body)) => {
                if trimmed == "```" {
                    if info.len() >= 2 {
                        out.push(Block {
                            at: format!("{page}:{start}"),
                            tag: info[1].clone(),
                            options: info[2..].to_vec(),
                            body: std::mem::take(body),
                        });
                    }
                    open = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "{page}: a code fence is never closed");
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// to hyphens.
pub fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (fenced code left out: a `#`
/// there is a shell comment).
pub fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}
