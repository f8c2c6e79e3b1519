//! Recipe diagnostics: field paths, their source spans, and errors that point at file:line:column.
//!
//! The renderer is hand-written (about 30 lines) rather than annotate-snippets because the
//! first line must carry `file:line:column` and the field in one greppable line for cron logs
//! and editors; the snippet with a caret follows it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One step of a path into the recipe: a key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path to a field, displayed as `file[0].dest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        FieldPath(v)
    }
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        FieldPath(v)
    }
    /// Parses `a.b[2].c`.
    pub fn parse(s: &str) -> Self {
        let mut out = Vec::new();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let (name, rest) = part.split_once('[').unwrap_or((part, ""));
            if !name.is_empty() {
                out.push(Seg::Key(name.to_string()));
            }
            for idx in rest.split('[') {
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    out.push(Seg::Index(i));
                }
            }
        }
        FieldPath(out)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Byte spans of every key and value of a TOML document, by field path.
#[derive(Debug, Clone, Default)]
pub struct SpanIndex {
    entries: Vec<(FieldPath, Range<usize>)>,
}

impl SpanIndex {
    /// Indexes `src`; a document that does not parse gives an empty index.
    pub fn new(src: &str) -> Self {
        let mut idx = SpanIndex::default();
        if let Ok(doc) = toml_edit::Document::parse(src) {
            idx.table(&FieldPath::root(), doc.as_table());
        }
        idx
    }

    fn table(&mut self, path: &FieldPath, t: &toml_edit::Table) {
        if let Some(s) = t.span() {
            self.entries.push((path.clone(), s));
        }
        for (k, _) in t.iter() {
            let Some((key, item)) = t.get_key_value(k) else {
                continue;
            };
            let p = path.key(k);
            if let Some(s) = key.span() {
                self.entries.push((p.clone(), s));
            }
            self.item(&p, item);
        }
    }

    fn item(&mut self, p: &FieldPath, item: &toml_edit::Item) {
        match item {
            toml_edit::Item::Value(v) => self.value(p, v),
            toml_edit::Item::Table(t) => self.table(p, t),
            toml_edit::Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    self.table(&p.index(i), t);
                }
            }
            toml_edit::Item::None => {}
        }
    }

    fn value(&mut self, p: &FieldPath, v: &toml_edit::Value) {
        if let Some(s) = v.span() {
            self.entries.push((p.clone(), s));
        }
        match v {
            toml_edit::Value::Array(a) => {
                for (i, e) in a.iter().enumerate() {
                    self.value(&p.index(i), e);
                }
            }
            toml_edit::Value::InlineTable(t) => {
                for (k, e) in t.iter() {
                    self.value(&p.key(k), e);
                }
            }
            _ => {}
        }
    }

    /// The span of a field's value (the last recorded one), else of its nearest ancestor.
    pub fn span_of(&self, path: &FieldPath) -> Option<Range<usize>> {
        let mut p = path.0.clone();
        loop {
            if let Some((_, s)) = self.entries.iter().rev().find(|(fp, _)| fp.0 == p) {
                return Some(s.clone());
            }
            p.pop()?;
        }
    }

    /// The innermost field whose span contains `offset`.
    pub fn path_at(&self, offset: usize) -> Option<FieldPath> {
        self.entries
            .iter()
            .filter(|(_, s)| s.start <= offset && offset < s.end.max(s.start + 1))
            .min_by_key(|(fp, s)| (s.end - s.start, usize::MAX - fp.0.len()))
            .map(|(fp, _)| fp.clone())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// A located message about a recipe.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
    source_line: String,
    width: usize,
}

impl Diagnostic {
    /// Locates `message` about `field` at byte span `span` of `src`.
    pub fn new(
        severity: Severity,
        file: &Path,
        src: &str,
        span: Option<Range<usize>>,
        field: String,
        message: String,
    ) -> Self {
        let span = span.unwrap_or(0..0);
        let start = span.start.min(src.len());
        let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
        let line = src[..start].matches('\n').count() + 1;
        let column = src[line_start..start].chars().count() + 1;
        let width = src[start..span.end.clamp(start, line_end)]
            .chars()
            .count()
            .max(1);
        Diagnostic {
            severity,
            file: file.to_path_buf(),
            line,
            column,
            field,
            message,
            source_line: mask_userinfo(&src[line_start..line_end]),
            width,
        }
    }
}

/// `line` with the credentials of any `scheme://user:password@host` replaced by `***`, so an
/// error about them never prints them.
fn mask_userinfo(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| {
                c == '/' || c == '"' || c == '\'' || c == '?' || c == '#' || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{level}: {}:{}:{}: ",
            self.file.display(),
            self.line,
            self.column
        )?;
        if !self.field.is_empty() {
            write!(f, "`{}`: ", self.field)?;
        }
        writeln!(f, "{}", self.message)?;
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        writeln!(f, "{pad} |")?;
        writeln!(f, "{num} | {}", self.source_line)?;
        write!(
            f,
            "{pad} | {}{}",
            " ".repeat(self.column - 1),
            "^".repeat(self.width)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_round_trip_through_paths() {
        let src = "[image]\nname = \"x\"\n\n[[file]]\ndest = \"a\"\n[[file]]\ndest = \"b\"\n";
        let idx = SpanIndex::new(src);
        let p = FieldPath::parse("file[1].dest");
        let s = idx.span_of(&p).unwrap();
        assert_eq!(&src[s.clone()], "\"b\"");
        assert_eq!(idx.path_at(s.start + 1), Some(p));
        let d = Diagnostic::new(
            Severity::Error,
            Path::new("r.toml"),
            src,
            Some(s),
            "f".into(),
            "m".into(),
        );
        assert_eq!((d.line, d.column), (7, 8));
    }
}
