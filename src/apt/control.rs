//! Debian control data (deb822): paragraphs of `Field: value` lines, as in `Packages`,
//! `Release`, a .deb's `control` and dpkg's `status`.
//!
//! Hand-written rather than `deb822-lossless`: a `Packages` index is ~45 MB and we only read
//! it, so a borrowed, allocation-free scan is what pays; the lossless parsers build a syntax
//! tree for editing, which costs ~10x here for nothing we use.

/// One paragraph: fields in file order, values borrowed from the text (continuation lines
/// included, leading/trailing whitespace of the whole value trimmed).
#[derive(Debug, Clone, Default)]
pub struct Paragraph<'a> {
    pub fields: Vec<(&'a str, &'a str)>,
    /// 1-based line of the paragraph's first field.
    pub line: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct ControlError {
    pub line: usize,
    pub message: String,
}

impl<'a> Paragraph<'a> {
    /// The value of field `name` (field names are case-insensitive).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// Like [`get`](Self::get), but an error naming the field when it is absent.
    pub fn require(&self, name: &str) -> Result<&'a str, ControlError> {
        self.get(name).ok_or_else(|| ControlError {
            line: self.line,
            message: format!("paragraph has no `{name}` field"),
        })
    }
}

/// A field value: leading blanks and trailing whitespace removed; a value that starts on the
/// next line (`Conffiles:`, `SHA256:`) keeps its leading newline, so it renders back as is.
fn value(raw: &str) -> &str {
    raw.trim_start_matches([' ', '\t']).trim_end()
}

/// Parses every paragraph of `text`. Comment lines (`#`) are skipped, as dpkg does in
/// control files; a PGP armor around the text must be removed first.
pub fn parse(text: &str) -> Result<Vec<Paragraph<'_>>, ControlError> {
    let mut out = Vec::new();
    let mut cur = Paragraph::default();
    // (field name, value start offset, value end offset)
    let mut open: Option<(&str, usize, usize)> = None;
    let mut offset = 0;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            if let Some((k, s, e)) = open.take() {
                cur.fields.push((k, value(&text[s..e])));
            }
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match &mut open {
                Some((_, _, e)) => *e = start + line.len(),
                None => {
                    return Err(ControlError {
                        line: i + 1,
                        message: "continuation line outside a field".into(),
                    });
                }
            }
            continue;
        }
        if let Some((k, s, e)) = open.take() {
            cur.fields.push((k, value(&text[s..e])));
        }
        let Some(colon) = line.find(':') else {
            return Err(ControlError {
                line: i + 1,
                message: format!("expected `Field: value`, found `{line}`"),
            });
        };
        let name = &line[..colon];
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(ControlError {
                line: i + 1,
                message: format!("bad field name `{name}`"),
            });
        }
        if cur.fields.is_empty() {
            cur.line = i + 1;
        }
        open = Some((name, start + colon + 1, start + line.len()));
    }
    if let Some((k, s, e)) = open.take() {
        cur.fields.push((k, value(&text[s..e])));
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// The text signed by an OpenPGP cleartext signature (`InRelease`), dash-unescaped; `None`
/// when `text` is not a cleartext-signed message. Used only after the signature verified.
pub fn cleartext_body(text: &str) -> Option<String> {
    let rest = text.split_once("-----BEGIN PGP SIGNED MESSAGE-----")?.1;
    let (_, body) = rest
        .split_once("\n\n")
        .or_else(|| rest.split_once("\r\n\r\n"))?;
    let body = body.split("\n-----BEGIN PGP SIGNATURE-----").next()?;
    Some(
        body.lines()
            .map(|l| l.strip_prefix("- ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_fields_and_continuations() {
        let text = "Package: a\nVersion: 1.0\nDescription: short\n more\n .\n last\n\n\n# c\nPackage: b\nDepends: x,\n y\n";
        let ps = parse(text).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].get("package"), Some("a"));
        assert_eq!(ps[0].get("Description"), Some("short\n more\n .\n last"));
        assert_eq!(ps[1].line, 10);
        assert_eq!(ps[1].get("Depends"), Some("x,\n y"));
        assert_eq!(ps[1].get("Version"), None);
        assert!(ps[1].require("Version").is_err());
    }

    #[test]
    fn crlf_and_trailing_paragraph() {
        let ps = parse("A: 1\r\nB:2\r\n").unwrap();
        assert_eq!(ps[0].get("a"), Some("1"));
        assert_eq!(ps[0].get("b"), Some("2"));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse("A: 1\nbroken\n").unwrap_err().line, 2);
        assert_eq!(parse(" cont\n").unwrap_err().line, 1);
        assert_eq!(parse("A: 1\nbad name: 2\n").unwrap_err().line, 2);
    }

    #[test]
    fn cleartext_is_unescaped() {
        let t = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: x\n- -dash\n-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n";
        assert_eq!(cleartext_body(t).unwrap(), "Origin: x\n-dash");
        assert!(cleartext_body("Origin: x\n").is_none());
    }
}
