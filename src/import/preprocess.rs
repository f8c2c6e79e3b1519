//! The Dockerfile text before `dockerfile-parser` reads it: what the parser cannot read is
//! rewritten without moving any line (heredoc RUNs, quotes in FROM, ARGs with several
//! names), so every warning and error still names the Dockerfile's own line.

use super::shell;

/// ARG names past an ARG's first, by the line the ARG starts on: (name, default).
pub(super) type MoreArgs = std::collections::BTreeMap<usize, Vec<(String, Option<String>)>>;

/// What the Dockerfile parser cannot read, rewritten without moving any line: quotes in a
/// FROM line's image (`FROM debian:"${X}"`, which Docker unquotes) are dropped, and an ARG
/// with several names keeps its first, the others returned by line (the ARG's first line).
pub(super) fn normalize(text: &str) -> (String, MoreArgs) {
    let mut more = std::collections::BTreeMap::new();
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let word = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        if word == "FROM" {
            out.push(line.replace(['"', '\''], ""));
            i += 1;
            continue;
        }
        if word != "ARG" {
            out.push(line.to_string());
            i += 1;
            continue;
        }
        // The whole instruction, over its continuation lines.
        let first = i;
        let mut joined = String::new();
        loop {
            let l = lines[i];
            match l.trim_end().strip_suffix('\\') {
                Some(head) if i + 1 < lines.len() => {
                    joined.push_str(head);
                    joined.push(' ');
                    i += 1;
                }
                _ => {
                    joined.push_str(l);
                    i += 1;
                    break;
                }
            }
        }
        let rest = joined.trim_start()[3..].trim();
        let words: Vec<String> = shell::split(rest)
            .ok()
            .and_then(|c| c.into_iter().next())
            .and_then(|c| c.stages.into_iter().next())
            .unwrap_or_default();
        if words.len() < 2 {
            out.extend(lines[first..i].iter().map(|l| l.to_string()));
            continue;
        }
        let quote = |w: &str| match w.split_once('=') {
            Some((n, v)) => format!("{n}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")),
            None => w.to_string(),
        };
        out.push(format!("ARG {}", quote(&words[0])));
        // Blank lines where the continuation was, so later lines keep their numbers.
        out.extend(std::iter::repeat_n(String::new(), i - first - 1));
        more.insert(
            first + 1,
            words[1..]
                .iter()
                .map(|w| match w.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (w.clone(), None),
                })
                .collect(),
        );
    }
    (out.join("\n"), more)
}

const HEREDOC: &str = "__imgbuild_heredoc_";

/// Which heredoc a placeholder RUN stands for.
pub(super) fn heredoc_index(script: &str) -> Option<usize> {
    script
        .trim()
        .strip_prefix(HEREDOC)?
        .strip_suffix("__")?
        .parse()
        .ok()
}

/// `RUN <<EOF ... EOF` blocks, which dockerfile-parser cannot read: each becomes a placeholder
/// RUN and its body lines become comments, so every line keeps its number. Returns the text
/// and the bodies. A heredoc in any other instruction is an error naming its line.
pub(super) fn heredocs(text: &str) -> Result<(String, Vec<String>), (usize, String)> {
    let mut out = Vec::new();
    let mut bodies = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let t = line.trim_start();
        let Some(pos) = t.find("<<") else {
            out.push(line.to_string());
            continue;
        };
        let head = t[..pos].trim();
        let is_run = head.eq_ignore_ascii_case("RUN");
        let first_word = t
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        if !is_run {
            if matches!(first_word.as_str(), "COPY" | "ADD") {
                return Err((
                    i + 1,
                    "heredocs in COPY/ADD are not supported by import".into(),
                ));
            }
            out.push(line.to_string());
            continue;
        }
        let spec = t[pos + 2..].trim();
        let dash = spec.starts_with('-');
        let marker = spec
            .trim_start_matches('-')
            .trim_matches(['"', '\''])
            .to_string();
        if marker.is_empty() || marker.contains(char::is_whitespace) {
            return Err((i + 1, "only `RUN <<MARKER` heredocs are supported".into()));
        }
        let mut body = Vec::new();
        let mut closed = false;
        for (_, l) in lines.by_ref() {
            let end = if dash { l.trim_start_matches('\t') } else { l };
            if end == marker {
                closed = true;
                break;
            }
            body.push(l.to_string());
        }
        if !closed {
            return Err((i + 1, format!("heredoc `{marker}` is not closed")));
        }
        out.push(format!("RUN {HEREDOC}{}__", bodies.len()));
        out.extend(std::iter::repeat_n("#".to_string(), body.len() + 1));
        bodies.push(body.join("\n"));
    }
    let mut joined = out.join("\n");
    joined.push('\n');
    Ok((joined, bodies))
}
