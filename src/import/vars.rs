//! Docker's variable expansion as the import reads it: ENV values expanded where Docker
//! expands them (with the `${X:-word}`, `${X#pattern}`, `${X%%pattern}` forms), ARG references
//! turned into the recipe's `${var.X}`, and ARG declarations.

use std::collections::BTreeMap;

use crate::recipe::interp::{Unset, braced, expand_docker};

/// `$NAME` / `${NAME}` of an ENV set earlier in the stage replaced by its value at that point,
/// as Docker expands ENV, WORKDIR, USER, COPY, LABEL and the like at build time. `known` holds
/// each name's value, itself already expanded. Names the Dockerfile never set (the base
/// image's own ENV), and values built on them, are left for the recipe and the shell, which
/// expand them against the image's environment.
/// [`expand_env`] for a RUN's script: a variable the Dockerfile never set is left to the shell
/// whatever the form (the script may set it, the runtime may: `HOME`, `USER`).
pub(super) fn expand_env_in_script(s: &str, known: &BTreeMap<String, String>) -> String {
    let lookup = |name: &str| known.get(name).filter(|v| !v.contains('$')).cloned();
    expand_docker(s, &lookup, Unset::Keep)
}

pub(super) fn expand_env(s: &str, known: &BTreeMap<String, String>) -> String {
    // A value that still refers to the base image's variables (`$PATH`) is not expanded:
    // the shell or the recipe expands it against the image's environment.
    // `${X:-default}` of a variable the Dockerfile never set takes its default (as it does
    // on a base image that does not set X either, which Debian's and Ubuntu's do not).
    let lookup = |name: &str| known.get(name).filter(|v| !v.contains('$')).cloned();
    expand_docker(s, &lookup, Unset::Default)
}

/// Whether `s` has a `${NAME<op>word}` form left unexpanded (its variable is a build argument
/// or the base image's): a recipe field cannot hold it, only a shell can.
pub(super) fn has_operator_form(s: &str) -> bool {
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 1..];
        if let Some((b, _)) = braced(after)
            && !b.op.is_empty()
        {
            return true;
        }
        rest = &rest[i + 2..];
    }
    false
}

/// The build arguments a RUN refers to in `${X<op>word}` forms, which the recipe's `${var.X}`
/// cannot express: a run step defines them first (`X='${var.X}'`), as Docker gives a RUN its
/// build arguments in the environment.
pub(super) fn arg_definitions(script: &str, args: &[(String, String)]) -> String {
    let mut names: Vec<&str> = Vec::new();
    let mut rest = script;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 1..];
        if let Some((b, _)) = braced(after)
            && !b.op.is_empty()
            && args.iter().any(|(n, _)| n == b.name)
            && !names.contains(&b.name)
        {
            names.push(b.name);
        }
        rest = &rest[i + 2..];
    }
    names
        .iter()
        .map(|n| format!("{n}='${{var.{n}}}'\n"))
        .collect()
}

/// `$X` / `${X}` of a declared ARG become `${var.X}`; `$(uname -m)`-style substitutions become
/// the recipe's platform variables.
pub(super) fn subst(s: &str, args: &[(String, String)]) -> String {
    let out = s
        .replace("$(uname -m)", "${uname_m}")
        .replace("$(dpkg --print-architecture)", "${arch}")
        .replace("$(uname -s)", "${os}");
    subst_args(&out, args)
}

/// Only ARG references become `${var.X}`: what a `[[run]]` command gets (a RUN sees the
/// build arguments in its environment, a run step the recipe's variables), while command
/// substitutions such as `$(uname -m)` stay for the shell, which runs in the image.
pub(super) fn subst_args(s: &str, args: &[(String, String)]) -> String {
    let mut out = s.to_string();
    for (name, _) in args {
        out = substitute(&out, name, &format!("${{var.{name}}}"));
    }
    out
}

/// `value` with `$key` and `${key}` replaced by `by` (a whole name: `$PATHX` is left alone).
pub(super) fn substitute(value: &str, key: &str, by: &str) -> String {
    let braced = format!("${{{key}}}");
    let value = value.replace(&braced, by);
    let plain = format!("${key}");
    let mut out = String::new();
    let mut rest = value.as_str();
    while let Some(i) = rest.find(&plain) {
        let after = &rest[i + plain.len()..];
        out.push_str(&rest[..i]);
        if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            out.push_str(&plain);
        } else {
            out.push_str(by);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// An ARG: a default naming earlier build arguments refers to them (`${var.X}`), and an ARG
/// without one inside a stage takes the global ARG's default, as Docker does (it does not
/// wipe it).
pub(super) fn declare(
    args: &mut Vec<(String, String)>,
    globals: &[(String, String)],
    name: &str,
    value: Option<String>,
) {
    let value = match value {
        Some(v) => subst_args(&v, args),
        None => globals
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
    };
    args.retain(|(n, _)| n != name);
    args.push((name.to_string(), value));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn operator_forms_expand_as_docker_does() {
        let k = env(&[
            ("V", "15.4.1"),
            ("E", ""),
            ("P", "/usr/local/go"),
            ("B", "$PATH"),
        ]);
        let x = |s: &str| expand_env(s, &k);
        assert_eq!(x("${V%%.*}"), "15");
        assert_eq!(x("${V%.*}"), "15.4");
        assert_eq!(x("${V#*.}"), "4.1");
        assert_eq!(x("${V##*.}"), "1");
        assert_eq!(x("${V%x}"), "15.4.1");
        assert_eq!(x("${P##*/}-${V:0:2}"), "go-${V:0:2}");
        assert_eq!(x("${E:-def}/${E-def}/${V:+set}/${E:+set}"), "def//set/");
        assert_eq!(
            x("${UNSET:-d} ${B%%:*} $V ${V}x"),
            "d ${B%%:*} 15.4.1 15.4.1x"
        );
        assert_eq!(x("${V%%[0-9]}"), "${V%%[0-9]}");
        assert_eq!(x("${V:-${P}}"), "15.4.1");
        assert_eq!(x("${E:-${P}/bin}"), "/usr/local/go/bin");
        assert_eq!(x("a ${unclosed"), "a ${unclosed");
        assert!(has_operator_form("x ${A%%.*} y"));
        assert!(!has_operator_form("x ${A} $B y"));
    }

    #[test]
    fn build_arguments_in_operator_forms_are_defined_for_the_shell() {
        let args = vec![("PG".to_string(), "16.2".to_string())];
        assert_eq!(
            arg_definitions("echo ${PG%%.*} ${PG%%.*} ${OTHER#x} ${PG}", &args),
            "PG='${var.PG}'\n"
        );
    }
}
