//! The shell side of Dockerfile import: a RUN line is split into simple commands on `&&`,
//! `||`, `;` and newlines, each command into words (quotes and backslashes removed, `$(...)`
//! and `${...}` kept whole), with pipes kept as stages of one command.
//!
//! Written here: `shlex` splits words but knows no operators, and the full shell parsers
//! (conch-parser) are unmaintained. Import only needs to recognize simple commands; anything
//! it cannot read becomes a `[[run]]` step with the original text.

/// One pipeline stage: its words, unquoted.
pub type Words = Vec<String>;

/// A simple command, possibly a pipeline (`curl URL | tar -x`), and the text it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub stages: Vec<Words>,
    pub text: String,
    /// What ended it: `&&`, `||`, `;`, a newline, or the end of the script.
    pub end: End,
}

/// The operator after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    And,
    Or,
    Semicolon,
    Newline,
    Script,
}

/// Words that open or close shell structure: a command starting with one is part of a
/// compound command (`if`, `case`, `for`, `while`, `{ ...; }`, `( ... )`), which only makes
/// sense whole.
const STRUCTURE: &[&str] = &[
    "if", "then", "else", "elif", "fi", "case", "esac", "for", "while", "until", "do", "done", "{",
    "}", "!", "function",
];

/// Whether `cmds` (from [`split`]) is a plain list: simple commands joined by `&&`, `;` or
/// newlines, none of them part of a compound command, a bare variable assignment, a
/// subshell, a background job or the left side of `||`. Only such a list may be taken apart
/// command by command: in anything else (`a || b`, `X=1; use $X`, `if ...; then ...; fi`) a
/// command's meaning depends on its neighbours.
pub fn is_plain_list(cmds: &[Command]) -> bool {
    cmds.iter().all(|c| {
        let first = c.stages.first().and_then(|s| s.first()).map(String::as_str);
        let assigns_only = c
            .stages
            .first()
            .is_some_and(|s| s.iter().all(|w| is_assignment(w)));
        c.end != End::Or
            && !c.text.starts_with(['(', '{'])
            && !c.text.ends_with(['&', ')'])
            && !c.text.contains(" & ")
            && !assigns_only
            && first.is_some_and(|w| !STRUCTURE.contains(&w))
    })
}

/// Whether every command of `cmds` runs only if the one before succeeded (`&&` throughout).
pub fn is_and_chain(cmds: &[Command]) -> bool {
    cmds.iter().all(|c| matches!(c.end, End::And | End::Script))
}

/// `NAME=value` (a shell variable assignment when it is a command's first word).
fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ShellError(pub String);

/// Splits `script` into commands. Redirections stay words (`>>`, `2>&1`).
pub fn split(script: &str) -> Result<Vec<Command>, ShellError> {
    let mut out = Vec::new();
    let mut stages: Vec<Words> = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut start = 0;
    let chars: Vec<(usize, char)> = script.char_indices().collect();
    let mut i = 0;
    let flush_word = |word: &mut String, in_word: &mut bool, stages: &mut Vec<Words>| {
        if *in_word {
            if let Some(s) = stages.last_mut() {
                s.push(std::mem::take(word));
            }
            *in_word = false;
        }
    };
    let end_command =
        |stages: &mut Vec<Words>, from: usize, to: usize, end: End, out: &mut Vec<Command>| {
            let taken = std::mem::replace(stages, vec![Vec::new()]);
            let taken: Vec<Words> = taken.into_iter().filter(|s| !s.is_empty()).collect();
            if !taken.is_empty() {
                out.push(Command {
                    stages: taken,
                    text: script[from..to].trim().to_string(),
                    end,
                });
            }
        };
    while i < chars.len() {
        let (pos, c) = chars[i];
        let next = chars.get(i + 1).map(|(_, c)| *c);
        match c {
            '\\' if next == Some('\n') => i += 1,
            '\\' => {
                if let Some(n) = next {
                    word.push(n);
                    in_word = true;
                    i += 1;
                }
            }
            '\'' => {
                in_word = true;
                i = single_quoted(&chars, i + 1, &mut word)?;
            }
            '"' => {
                in_word = true;
                i = double_quoted(&chars, i + 1, &mut word)?;
            }
            '$' if matches!(next, Some('(') | Some('{')) => {
                in_word = true;
                i = expansion(&chars, i, &mut word)?;
            }
            '#' if !in_word => {
                while i < chars.len() && chars[i].1 != '\n' {
                    i += 1;
                }
                continue;
            }
            ' ' | '\t' => flush_word(&mut word, &mut in_word, &mut stages),
            '\n' | ';' => {
                flush_word(&mut word, &mut in_word, &mut stages);
                let end = if c == ';' {
                    End::Semicolon
                } else {
                    End::Newline
                };
                end_command(&mut stages, start, pos, end, &mut out);
                start = pos + 1;
            }
            '&' if next == Some('&') => {
                flush_word(&mut word, &mut in_word, &mut stages);
                end_command(&mut stages, start, pos, End::And, &mut out);
                i += 1;
                start = pos + 2;
            }
            '|' if next == Some('|') => {
                flush_word(&mut word, &mut in_word, &mut stages);
                end_command(&mut stages, start, pos, End::Or, &mut out);
                i += 1;
                start = pos + 2;
            }
            '|' => {
                flush_word(&mut word, &mut in_word, &mut stages);
                stages.push(Vec::new());
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
        i += 1;
    }
    flush_word(&mut word, &mut in_word, &mut stages);
    end_command(&mut stages, start, script.len(), End::Script, &mut out);
    // A trailing newline or `;` before the end is not a separator between two commands.
    if let Some(last) = out.last_mut()
        && script
            .trim_end_matches([' ', '\t', '\n', ';'])
            .ends_with(&last.text)
    {
        last.end = End::Script;
    }
    Ok(out)
}

/// Reads a single-quoted string from `i` (after the quote) into `word`; the index of the
/// closing quote.
fn single_quoted(
    chars: &[(usize, char)],
    mut i: usize,
    word: &mut String,
) -> Result<usize, ShellError> {
    loop {
        let Some((_, c)) = chars.get(i) else {
            return Err(ShellError("unclosed single quote".into()));
        };
        if *c == '\'' {
            return Ok(i);
        }
        word.push(*c);
        i += 1;
    }
}

/// Reads a double-quoted string from `i` (after the quote) into `word`, its backslash escapes
/// applied; the index of the closing quote.
fn double_quoted(
    chars: &[(usize, char)],
    mut i: usize,
    word: &mut String,
) -> Result<usize, ShellError> {
    loop {
        let Some((_, c)) = chars.get(i) else {
            return Err(ShellError("unclosed double quote".into()));
        };
        match c {
            '"' => return Ok(i),
            '\\' if matches!(chars.get(i + 1).map(|x| x.1), Some('"' | '\\' | '$' | '`')) => {
                word.push(chars[i + 1].1);
                i += 1;
            }
            _ => word.push(*c),
        }
        i += 1;
    }
}

/// `$(...)` and `${...}` from `i` (the `$`) kept whole in `word`, nesting counted; the index of
/// the closing bracket.
fn expansion(
    chars: &[(usize, char)],
    mut i: usize,
    word: &mut String,
) -> Result<usize, ShellError> {
    let (open, close) = if chars.get(i + 1).map(|x| x.1) == Some('(') {
        ('(', ')')
    } else {
        ('{', '}')
    };
    let mut depth = 0;
    loop {
        let Some((_, c)) = chars.get(i) else {
            return Err(ShellError(format!("unclosed `${open}`")));
        };
        word.push(*c);
        if *c == open {
            depth += 1;
        } else if *c == close {
            depth -= 1;
            if depth == 0 {
                return Ok(i);
            }
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(script: &str) -> Vec<Vec<Vec<String>>> {
        split(script)
            .unwrap()
            .into_iter()
            .map(|c| c.stages)
            .collect()
    }

    fn w(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn operators_continuations_and_quotes() {
        let s = "apt-get update && \\\n    DEBIAN_FRONTEND=\"noninteractive\" apt-get install --yes ca-certificates; echo 'a b' \"c\\\"d\"";
        let c = split(s).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].stages, [w(&["apt-get", "update"])]);
        assert_eq!(
            c[1].stages,
            [w(&[
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "install",
                "--yes",
                "ca-certificates"
            ])]
        );
        assert_eq!(c[2].stages, [w(&["echo", "a b", "c\"d"])]);
        assert_eq!(c[0].text, "apt-get update");
    }

    #[test]
    fn pipes_substitutions_and_comments() {
        let got = words(
            "curl -L \"https://x/go-$(uname -m).tar.gz\" | tar -C /usr/local -xzvf - # fetch\nln -s ${A} /b || true",
        );
        assert_eq!(
            got[0],
            [
                w(&["curl", "-L", "https://x/go-$(uname -m).tar.gz"]),
                w(&["tar", "-C", "/usr/local", "-xzvf", "-"])
            ]
        );
        assert_eq!(got[1], [w(&["ln", "-s", "${A}", "/b"])]);
        assert_eq!(got[2], [w(&["true"])]);
    }

    #[test]
    fn redirections_stay_words_and_errors() {
        let got = words("echo \"u ALL=(ALL) NOPASSWD:ALL\" >>/etc/sudoers.d/nopasswd");
        assert_eq!(
            got[0],
            [w(&[
                "echo",
                "u ALL=(ALL) NOPASSWD:ALL",
                ">>/etc/sudoers.d/nopasswd"
            ])]
        );
        assert!(split("echo 'x").is_err());
        assert!(split("echo \"x").is_err());
        assert!(split("echo $(x").is_err());
        assert!(split("").unwrap().is_empty());
    }
}
