//! Package relationship fields (`Depends`, `Pre-Depends`, `Conflicts`, `Provides`...) and
//! Debian version constraints, per Debian policy §7.1.

use std::cmp::Ordering;
use std::fmt;

/// A dependency field that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RelationError(pub String);

impl From<String> for RelationError {
    fn from(m: String) -> Self {
        RelationError(m)
    }
}

impl From<&str> for RelationError {
    fn from(m: &str) -> Self {
        RelationError(m.to_string())
    }
}

pub use debversion::Version;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<<" => Op::Lt,
            "<=" | "<" => Op::Le, // `<` and `>` are the deprecated forms of `<=` and `>=`
            "=" => Op::Eq,
            ">=" | ">" => Op::Ge,
            ">>" => Op::Gt,
            _ => return None,
        })
    }

    pub fn matches(self, ord: Ordering) -> bool {
        match self {
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Eq => ord == Ordering::Equal,
            Op::Ge => ord != Ordering::Less,
            Op::Gt => ord == Ordering::Greater,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        }
    }
}

/// One possibility of a relation: `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    pub name: String,
    /// `any`, `native` or an architecture, when qualified.
    pub arch: Option<String>,
    pub constraint: Option<(Op, Version)>,
}

impl Dep {
    /// Whether `version` satisfies the constraint (a dependency without one takes anything).
    pub fn allows(&self, version: &Version) -> bool {
        match &self.constraint {
            None => true,
            Some((op, want)) => op.matches(version.cmp(want)),
        }
    }
}

impl fmt::Display for Dep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(a) = &self.arch {
            write!(f, ":{a}")?;
        }
        if let Some((op, v)) = &self.constraint {
            write!(f, " ({} {v})", op.as_str())?;
        }
        Ok(())
    }
}

/// A relation: alternatives separated by `|`; any one satisfies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation(pub Vec<Dep>);

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Parses one possibility; `None` for an empty string.
pub fn parse_dep(s: &str) -> Result<Option<Dep>, RelationError> {
    let mut s = s.trim();
    // Architecture restrictions and build profiles only appear in source packages: drop them.
    for (open, close) in [('[', ']'), ('<', '>')] {
        if let Some(i) = s
            .find(open)
            .filter(|i| !s[..*i].contains('(') || s[..*i].contains(')'))
        {
            if !s[i..].contains(close) {
                return Err(format!("unclosed `{open}` in `{s}`").into());
            }
            s = s[..i].trim_end();
        }
    }
    if s.is_empty() {
        return Ok(None);
    }
    let (head, constraint) = match s.split_once('(') {
        None => (s, None),
        Some((head, rest)) => {
            let inner = rest
                .strip_suffix(')')
                .ok_or_else(|| format!("unclosed `(` in `{s}`"))?
                .trim();
            let split = inner
                .find(|c: char| !matches!(c, '<' | '>' | '='))
                .ok_or_else(|| format!("no version in `{s}`"))?;
            let op = Op::parse(&inner[..split])
                .ok_or_else(|| format!("bad operator `{}` in `{s}`", &inner[..split]))?;
            let v = inner[split..].trim();
            let version: Version = v
                .parse()
                .map_err(|e| format!("bad version `{v}` in `{s}`: {e}"))?;
            (head.trim(), Some((op, version)))
        }
    };
    let (name, arch) = match head.split_once(':') {
        Some((n, a)) => (n, Some(a.to_string())),
        None => (head, None),
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("bad package name in `{s}`").into());
    }
    Ok(Some(Dep {
        name: name.to_string(),
        arch,
        constraint,
    }))
}

/// Parses a relationship field: `a (>= 1) | b, c:any`.
pub fn parse_relations(field: &str) -> Result<Vec<Relation>, RelationError> {
    let mut out = Vec::new();
    for group in field.split(',') {
        let mut alts = Vec::new();
        for alt in group.split('|') {
            if let Some(d) = parse_dep(alt)? {
                alts.push(d);
            }
        }
        if !alts.is_empty() {
            out.push(Relation(alts));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    /// Cases from dpkg's own version tests (lib/dpkg/t/t-version.c and
    /// scripts/t/Dpkg_Version.t): (a, b, ordering of a against b).
    const DPKG_CASES: &[(&str, &str, i32)] = &[
        ("1.0", "1.0", 0),
        ("1.0", "1.0-0", 0),
        ("0:1.0", "1.0", 0),
        ("1.0-1", "1.0-2", -1),
        ("1.0", "1.1", -1),
        ("1.2", "1.10", -1),
        ("0", "00", 0),
        ("1.001", "1.1", 0),
        ("1:0.5", "2.0", 1),
        ("2:1.0", "1:9.9", 1),
        ("1.0~rc1", "1.0", -1),
        ("1.0~~", "1.0~", -1),
        ("1.0~~a", "1.0~~", 1),
        ("1.0~", "1.0", -1),
        ("1.0~rc1-1", "1.0-1", -1),
        ("1.0a", "1.0", 1),
        ("1.0a", "1.0+", -1),
        ("1.0+", "1.0.", -1),
        ("1.0.", "1.0", 1),
        ("1.0-1", "1.0", 1),
        ("1.0-1~bpo1", "1.0-1", -1),
        ("1.0-1+b1", "1.0-1", 1),
        ("1.0-1ubuntu1", "1.0-1", 1),
        ("2.30-5", "2.30-21", -1),
        ("7.6p2-4", "7.6-0", 1),
        ("1.0.3-3", "1.0-1", 1),
        ("1.3", "1.2.2-2", 1),
        ("1.3", "1.2.2", 1),
        ("0-pre", "0-pre", 0),
        ("0-pre", "0-pree", -1),
        ("1.1.6r2-2", "1.1.6r-1", 1),
        ("2.6b2-1", "2.6b-2", 1),
        ("98.1p5-1", "98.1-pre2-b6-2", -1),
        ("0.4a6-2", "0.4-1", 1),
        ("1:3.0.5-2", "1:3.0.5.1", -1),
        ("10.11.1.3-2", "10.11.1.3-2", 0),
        ("4.4.3-2", "4.4.3-2", 0),
        ("1:0.4", "10.3", 1),
        ("1:1.25-4", "1:1.25-8", -1),
        ("0:1.18.36", "1.18.36", 0),
        ("1.18.36", "1.18.35", 1),
        ("0:1.18.36", "1.18.35", 1),
        ("9:1.18.36:5.4-20", "10:0.5.1-22", -1),
        ("9:1.18.36:5.4-20", "9:1.18.36:5.5-1", -1),
        ("9:1.18.36:5.4-20", " 9:1.18.37:4.3-22", -1),
        ("1.18.36-0.17.35-18", "1.18.36-19", 1),
        ("1:1.2.13-3", "1:1.2.13-3.1", -1),
        ("2.0.7pre1-4", "2.0.7r-1", -1),
        ("0.2", "1.0-0", -1),
        ("1.0", "1.0-0+b1", -1),
        ("1.0", "1.0-0~", 1),
        ("1.2.3", "1.2.3", 0),
        ("4.4.3-2", "2:4.4.3-2", -1),
    ];

    #[test]
    fn version_ordering_matches_dpkg_cases() {
        for (a, b, want) in DPKG_CASES {
            let got = v(a.trim()).cmp(&v(b.trim())) as i32;
            assert_eq!(got, *want, "{a} vs {b}");
            let back = v(b.trim()).cmp(&v(a.trim())) as i32;
            assert_eq!(back, -*want, "{b} vs {a}");
        }
    }

    /// Version strings dpkg accepts: optional epoch, upstream starting with a digit, optional
    /// revision; tildes, pluses and dots included.
    const VERSION: &str = "([0-9]:)?[0-9][0-9a-z.+~]{0,6}(-[0-9a-z.+~]{1,4})?";

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Our ordering is dpkg's: every random pair is checked with `dpkg --compare-versions`.
        #[test]
        fn ordering_agrees_with_dpkg(a in VERSION, b in VERSION) {
            let (Ok(va), Ok(vb)) = (a.parse::<Version>(), b.parse::<Version>()) else {
                return Err(proptest::test_runner::TestCaseError::reject("unparsable"));
            };
            let op = match va.cmp(&vb) {
                Ordering::Less => "lt",
                Ordering::Equal => "eq",
                Ordering::Greater => "gt",
            };
            let st = std::process::Command::new("dpkg")
                .args(["--compare-versions", &a, op, &b])
                .status()
                .expect("dpkg is on every Debian machine");
            proptest::prop_assert!(st.success(), "dpkg disagrees: {} {} {}", a, op, b);
        }

        #[test]
        fn ordering_is_total(a in VERSION, b in VERSION, c in VERSION) {
            let (Ok(a), Ok(b), Ok(c)) = (a.parse::<Version>(), b.parse::<Version>(), c.parse::<Version>()) else {
                return Err(proptest::test_runner::TestCaseError::reject("unparsable"));
            };
            proptest::prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
            if a <= b && b <= c {
                proptest::prop_assert!(a <= c);
            }
        }
    }

    #[test]
    fn relations_parse() {
        let r = parse_relations(
            "libc6 (>= 2.34), awk | mawk:any, foo (<< 1:2~rc1) [amd64] <!nocheck>, bar:amd64 (= 1.0-1)",
        )
        .unwrap();
        assert_eq!(r.len(), 3 + 1);
        assert_eq!(r[0].0[0].name, "libc6");
        assert_eq!(r[0].0[0].constraint, Some((Op::Ge, v("2.34"))));
        assert_eq!(r[1].0.len(), 2);
        assert_eq!(r[1].0[1].arch.as_deref(), Some("any"));
        assert_eq!(r[2].0[0].constraint, Some((Op::Lt, v("1:2~rc1"))));
        assert_eq!(r[3].to_string(), "bar:amd64 (= 1.0-1)");
        assert!(r[0].0[0].allows(&v("2.36-9")));
        assert!(!r[0].0[0].allows(&v("2.31")));
        assert!(!r[2].0[0].allows(&v("1:2")));
        assert!(r[2].0[0].allows(&v("2:0").min(v("1:1.9"))));
    }

    #[test]
    fn deprecated_and_bad_relations() {
        let r = parse_relations("a (< 2), b (> 1)").unwrap();
        assert_eq!(r[0].0[0].constraint.as_ref().unwrap().0, Op::Le);
        assert_eq!(r[1].0[0].constraint.as_ref().unwrap().0, Op::Ge);
        assert!(parse_relations("a (>= 1").is_err());
        assert!(parse_relations("a (~ 1)").is_err());
        assert!(parse_relations("a (>=)").is_err());
        assert!(parse_relations("").unwrap().is_empty());
    }
}
