//! String interpolation: `${var.NAME}` in every recipe string, platform variables in URLs,
//! and Docker-style `$NAME` / `${NAME}` expansion in `[env]`.

use std::collections::BTreeMap;

use super::diag::FieldPath;

/// A `${...}` that cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExpandError(pub String);

impl From<String> for ExpandError {
    fn from(m: String) -> Self {
        ExpandError(m)
    }
}

impl From<&str> for ExpandError {
    fn from(m: &str) -> Self {
        ExpandError(m.to_string())
    }
}

fn fail<T>(m: String) -> Result<T, ExpandError> {
    Err(ExpandError(m))
}

/// An interpolation failure at a field.
#[derive(Debug, Clone)]
pub struct InterpError {
    pub path: FieldPath,
    pub message: String,
}

/// Replaces `${var.NAME}` in every string of `value` (keys are left alone). `$${` escapes a
/// literal `${`. Other `${...}` forms are left untouched for the later passes.
pub fn vars_in_value(
    value: &mut toml::Value,
    vars: &BTreeMap<String, String>,
    path: &FieldPath,
    errs: &mut Vec<InterpError>,
) {
    match value {
        toml::Value::String(s) => match expand(s, |name| lookup_var(name, vars)) {
            Ok(v) => *s = v,
            Err(message) => errs.push(InterpError {
                path: path.clone(),
                message: message.0,
            }),
        },
        toml::Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                vars_in_value(v, vars, &path.index(i), errs);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                vars_in_value(v, vars, &path.key(k), errs);
            }
        }
        _ => {}
    }
}

/// Expands `${var.X}` inside `[vars]` values themselves (a variable may be built from
/// others); a reference to an unknown variable or a cycle (`a = "${var.a}"`, `a -> b -> a`) is
/// an error at `vars.NAME`. Values without `${var.` are left exactly as written.
pub fn resolve_vars(vars: &mut BTreeMap<String, String>) -> Vec<InterpError> {
    fn resolve(
        name: &str,
        raw: &BTreeMap<String, String>,
        done: &mut BTreeMap<String, Result<String, ExpandError>>,
        stack: &mut Vec<String>,
    ) -> Result<String, ExpandError> {
        if let Some(r) = done.get(name) {
            return r.clone();
        }
        if let Some(i) = stack.iter().position(|s| s == name) {
            let mut cycle: Vec<String> = stack[i..].to_vec();
            cycle.push(name.to_string());
            return fail(format!(
                "the variables refer to each other in a cycle: {}",
                cycle.join(" -> ")
            ));
        }
        let Some(value) = raw.get(name) else {
            return fail(format!(
                "unknown variable `${{var.{name}}}` (declare it in [vars] or pass --var {name}=...)"
            ));
        };
        if !value.contains("${var.") {
            return Ok(value.clone());
        }
        stack.push(name.to_string());
        let r = expand(value, |n| match n.strip_prefix("var.") {
            Some(v) => match resolve(v, raw, done, stack) {
                Ok(val) => Lookup::Value(val),
                Err(e) => Lookup::Error(e.0),
            },
            None => Lookup::Keep,
        });
        stack.pop();
        done.insert(name.to_string(), r.clone());
        r
    }
    let raw = vars.clone();
    let mut done = BTreeMap::new();
    let mut errs = Vec::new();
    for name in raw.keys() {
        match resolve(name, &raw, &mut done, &mut Vec::new()) {
            Ok(v) => {
                vars.insert(name.clone(), v);
            }
            Err(message) => errs.push(InterpError {
                path: FieldPath::root().key("vars").key(name),
                message: message.0,
            }),
        }
    }
    errs
}

fn lookup_var(name: &str, vars: &BTreeMap<String, String>) -> Lookup {
    match name.strip_prefix("var.") {
        Some(v) => match vars.get(v) {
            Some(val) => Lookup::Value(val.clone()),
            None => Lookup::Error(format!(
                "unknown variable `${{var.{v}}}` (declare it in [vars] or pass --var {v}=...)"
            )),
        },
        None => Lookup::Keep,
    }
}

/// Platform variables for download URLs: `${arch}`, `${uname_m}`, `${os}`.
pub fn platform_vars(platform: &str) -> BTreeMap<&'static str, String> {
    let (os, arch) = platform.split_once('/').unwrap_or(("linux", platform));
    let uname_m = match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        other => other,
    };
    BTreeMap::from([
        ("arch", arch.to_string()),
        ("uname_m", uname_m.to_string()),
        ("os", os.to_string()),
    ])
}

/// Expands platform variables in a URL; an unknown `${name}` is an error.
pub fn expand_platform(url: &str, platform: &str) -> Result<String, ExpandError> {
    let pv = platform_vars(platform);
    expand(url, |name| match pv.get(name) {
        Some(v) => Lookup::Value(v.clone()),
        None => Lookup::Error(format!(
            "unknown variable `${{{name}}}` in URL (known: arch, uname_m, os)"
        )),
    })
}

/// Docker ENV semantics: `$NAME` and `${NAME}` take the value of an earlier variable (or the
/// base image's), and an undefined one expands to the empty string.
/// The environment after applying `[env]` over the base image's (`KEY=VALUE` strings),
/// each value expanded Docker-style against what is set before it.
pub fn merged_env(base: &[String], recipe: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = base
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    for (k, v) in recipe {
        let v = expand_env(v, &env);
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v,
            None => env.push((k.clone(), v)),
        }
    }
    env
}

pub fn expand_env(value: &str, env: &[(String, String)]) -> String {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    expand_docker(value, &lookup, Unset::Empty)
}

/// What a variable without a value expands to in [`expand_docker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unset {
    /// Nothing, as Docker expands an unset variable (the whole environment is known).
    Empty,
    /// The text as written: the variable may be set where the text is used later.
    Keep,
    /// As `Keep`, except that `${NAME:-word}` / `${NAME-word}` take their word: the import's
    /// reading of a variable its Dockerfile never set, for a value that must be literal
    /// (a WORKDIR, a COPY destination), assuming the base image does not set it either.
    Default,
}

/// Docker's variable expansion in Dockerfile words (ENV, WORKDIR, LABEL...): `$NAME`,
/// `${NAME}`, `${NAME:-word}`, `${NAME-word}`, `${NAME:+word}`, `${NAME+word}`, and the
/// pattern forms `${NAME#pattern}`, `${NAME##pattern}`, `${NAME%pattern}`, `${NAME%%pattern}`
/// (patterns of `*`, `?` and literal characters). `lookup` gives a variable's value; one
/// it does not know expands as `unset` says.
pub fn expand_docker(s: &str, lookup: &dyn Fn(&str) -> Option<String>, unset: Unset) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if after.starts_with('{') {
            let Some((form, len)) = braced(after) else {
                // Unclosed: the text as written.
                out.push_str(&rest[i..]);
                return out;
            };
            match form.eval(lookup, unset) {
                Some(v) => out.push_str(&v),
                None => out.push_str(&rest[i..i + 1 + len]),
            }
            rest = &after[len..];
            continue;
        }
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        match (end, lookup(&after[..end])) {
            (0, _) => out.push('$'),
            (_, Some(v)) => out.push_str(&v),
            (_, None) if unset == Unset::Empty => {}
            (_, None) if unset == Unset::Default => out.push_str(&rest[i..i + 1 + end]),
            (_, None) => out.push_str(&rest[i..i + 1 + end]),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `${NAME}` or `${NAME<op>word}`, as Docker's Dockerfile expansion reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct Braced<'a> {
    pub name: &'a str,
    /// `""` for a plain `${NAME}`; else `:-`, `-`, `:+`, `+`, `#`, `##`, `%`, `%%`.
    pub op: &'a str,
    pub word: &'a str,
}

const OPS: [&str; 8] = [":-", ":+", "##", "%%", "-", "+", "#", "%"];

/// Reads the `{...}` after a `$` (`after` starts with `{`): the form and the length of the
/// `{...}` text, or `None` when there is no closing brace. A `${` inside the word nests.
pub fn braced(after: &str) -> Option<(Braced<'_>, usize)> {
    let inner = after.strip_prefix('{')?;
    let mut depth = 0usize;
    let mut end = None;
    let bytes = inner.as_bytes();
    for (j, &b) in bytes.iter().enumerate() {
        match b {
            b'{' if j > 0 && bytes[j - 1] == b'$' => depth += 1,
            b'}' if depth == 0 => {
                end = Some(j);
                break;
            }
            b'}' => depth -= 1,
            _ => {}
        }
    }
    let end = end?;
    let body = &inner[..end];
    let n = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    let (name, tail) = body.split_at(n);
    let (op, word) = if tail.is_empty() {
        ("", "")
    } else {
        match OPS.iter().find(|op| tail.starts_with(**op)) {
            Some(op) => (*op, &tail[op.len()..]),
            // `${1abc}`-style text or an operator Docker does not know: not a variable.
            None => ("?", tail),
        }
    };
    Some((Braced { name, op, word }, end + 2))
}

impl Braced<'_> {
    /// The expansion; `None` leaves the text as written (an unknown variable with
    /// [`Unset::Keep`], a form or pattern Docker's expansion does not have).
    fn eval(&self, lookup: &dyn Fn(&str) -> Option<String>, unset: Unset) -> Option<String> {
        if self.name.is_empty() || self.op == "?" {
            return None;
        }
        let v = match lookup(self.name) {
            Some(v) => Some(v),
            None if unset == Unset::Keep => return None,
            None if unset == Unset::Default && !matches!(self.op, ":-" | "-") => return None,
            None => None,
        };
        let word = || expand_docker(self.word, lookup, unset);
        Some(match (self.op, v) {
            ("", v) => v.unwrap_or_default(),
            (":-", Some(v)) | ("-", Some(v)) if !(v.is_empty() && self.op == ":-") => v,
            (":-" | "-", _) => word(),
            (":+", Some(v)) | ("+", Some(v)) if !(v.is_empty() && self.op == ":+") => word(),
            (":+" | "+", _) => String::new(),
            (_, None) => String::new(),
            (op, Some(v)) => {
                let pat = word();
                if pat.contains('$') {
                    return None;
                }
                trim_pattern(&v, &pat, op)?
            }
        })
    }
}

/// `v` with the shortest (`#`, `%`) or longest (`##`, `%%`) prefix (`#`) or suffix (`%`)
/// matching the shell pattern `pat` removed. Only `*`, `?` and literal characters are read;
/// a bracket expression or a backslash gives `None` (the text is left to the shell).
fn trim_pattern(v: &str, pat: &str, op: &str) -> Option<String> {
    if pat.contains(['[', '\\', '\'', '"']) {
        return None;
    }
    let p: Vec<char> = pat.chars().collect();
    let chars: Vec<char> = v.chars().collect();
    let n = chars.len();
    let prefix = op.starts_with('#');
    let longest = op.len() == 2;
    let mut cuts: Vec<usize> = (0..=n).collect();
    if longest == prefix {
        cuts.reverse();
    }
    for k in cuts {
        let (part, keep) = if prefix {
            (&chars[..k], &chars[k..])
        } else {
            (&chars[k..], &chars[..k])
        };
        if glob(&p, part) {
            return Some(keep.iter().collect());
        }
    }
    Some(v.to_string())
}

/// Whether `s` matches the pattern `p` of `*`, `?` and literal characters as a whole.
fn glob(p: &[char], s: &[char]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some(('*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some(('?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

enum Lookup {
    Value(String),
    Keep,
    Error(String),
}

fn expand(s: &str, mut lookup: impl FnMut(&str) -> Lookup) -> Result<String, ExpandError> {
    if !s.contains("${") {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            // `$${` is a literal `${`.
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let Some(end) = rest[i..].find('}') else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        let name = &rest[i + 2..i + end];
        match lookup(name) {
            Lookup::Value(v) => out.push_str(&v),
            Lookup::Keep => out.push_str(&rest[i..=i + end]),
            Lookup::Error(e) => return Err(ExpandError(e)),
        }
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion_follows_docker() {
        let env = vec![
            ("GOROOT".to_string(), "/usr/local/go".to_string()),
            ("PATH".into(), "/bin".into()),
        ];
        assert_eq!(
            expand_env("$PATH:$GOROOT/bin", &env),
            "/bin:/usr/local/go/bin"
        );
        assert_eq!(expand_env("${UNSET}x$", &env), "x$");
        assert_eq!(
            expand_env(
                "${UNSET:-d}|${GOROOT##*/}|${GOROOT%/*}|${UNSET#x}|${PATH:+p}",
                &env
            ),
            "d|go|/usr/local||p"
        );
    }

    #[test]
    fn vars_and_escapes() {
        let vars = BTreeMap::from([("user".to_string(), "eric".to_string())]);
        let mut v = toml::Value::String("/home/${var.user} $${var.user} ${HOME}".into());
        let mut errs = vec![];
        vars_in_value(&mut v, &vars, &FieldPath::root(), &mut errs);
        assert_eq!(v.as_str(), Some("/home/eric ${var.user} ${HOME}"));
        let mut bad = toml::Value::String("${var.nope}".into());
        vars_in_value(&mut bad, &vars, &FieldPath::root(), &mut errs);
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn platform_urls() {
        assert_eq!(
            expand_platform("go-${os}-${arch}-${uname_m}", "linux/arm64").unwrap(),
            "go-linux-arm64-aarch64"
        );
        assert!(expand_platform("${nope}", "linux/amd64").is_err());
    }
}
