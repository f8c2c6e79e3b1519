//! Repositories: where packages come from (`[[apt.sources]]`, the base image's own
//! `sources.list`), and fetching their indexes: `InRelease` verified against the source's
//! OpenPGP key, then `Packages.xz`/`.gz` verified against the sha256 the signed `Release`
//! lists. Index files are cached as blobs under that sha256, so an unchanged repository is
//! not downloaded again; `InRelease` itself is always fetched (it is what says "changed").

use std::io::Read;

use pgp::composed::{CleartextSignedMessage, SignedPublicKey};

use super::control;
use super::universe::Universe;
use crate::cache::Cache;
use crate::digest::Digest;
use crate::http::{HttpError as DownloadError, redact};
use crate::report::{Event, Reporter};

/// A Release file whose SHA256 list cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReleaseError(pub String);

impl From<String> for ReleaseError {
    fn from(m: String) -> Self {
        ReleaseError(m)
    }
}

impl From<&str> for ReleaseError {
    fn from(m: &str) -> Self {
        ReleaseError(m.to_string())
    }
}

/// One `deb` line: `uri suite components...` with the key that signs it.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub uri: String,
    pub suite: String,
    pub components: Vec<String>,
    /// OpenPGP keyring (armored or binary); `None` only for sources of the base image
    /// whose keys were not found, which are then refused.
    pub keyring: Option<Vec<u8>>,
    /// Where the key came from, for messages.
    pub key_origin: String,
}

impl Source {
    fn dists(&self) -> String {
        format!("{}/dists/{}", self.uri.trim_end_matches('/'), self.suite)
    }

    /// The URL of a file the index names (`pool/main/a/a_1_amd64.deb`).
    pub fn file_url(&self, filename: &str) -> String {
        format!("{}/{}", self.uri.trim_end_matches('/'), filename)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("source `{source_name}`: {url} is not signed (no OpenPGP cleartext signature)")]
    Unsigned { source_name: String, url: String },
    #[error("source `{source_name}`: the signature of {url} does not verify with the key in {key}")]
    BadSignature {
        source_name: String,
        url: String,
        key: String,
    },
    #[error("source `{source_name}`: cannot read the OpenPGP key {key}: {message}")]
    Key {
        source_name: String,
        key: String,
        message: String,
    },
    #[error("source `{source_name}`: {url}: {message}")]
    Index {
        source_name: String,
        url: String,
        message: String,
    },
}

/// What was fetched from one source: the snapshot recorded in the lock file.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub inrelease: Digest,
    pub date: String,
}

/// Parses every key of a keyring, armored or binary.
fn keys(src: &Source) -> Result<Vec<SignedPublicKey>, RepoError> {
    let err = |message: String| RepoError::Key {
        source_name: src.name.clone(),
        key: src.key_origin.clone(),
        message,
    };
    let bytes = src
        .keyring
        .as_deref()
        .ok_or_else(|| err("no key: add `key = \"FILE\"` to the source".into()))?;
    crate::openpgp::keyring(bytes).map_err(|e| err(e.to_string()))
}

/// Verifies a cleartext-signed `InRelease` against the source's keys (primary keys and
/// their subkeys); returns the signed text.
pub fn verify_inrelease(src: &Source, url: &str, text: &str) -> Result<String, RepoError> {
    if !text.contains("-----BEGIN PGP SIGNED MESSAGE-----") {
        return Err(RepoError::Unsigned {
            source_name: src.name.clone(),
            url: redact(url),
        });
    }
    let bad = || RepoError::BadSignature {
        source_name: src.name.clone(),
        url: redact(url),
        key: src.key_origin.clone(),
    };
    let (msg, _) = CleartextSignedMessage::from_string(text).map_err(|_| bad())?;
    let keys = keys(src)?;
    let ok = keys
        .iter()
        .any(|k| msg.verify(k).is_ok() || k.public_subkeys.iter().any(|s| msg.verify(s).is_ok()));
    if !ok {
        return Err(bad());
    }
    control::cleartext_body(text).ok_or_else(bad)
}

/// One entry of the `SHA256:` list of a Release file.
#[derive(Debug, Clone)]
struct Listed {
    sha256: Digest,
    size: u64,
    path: String,
}

/// The entries of a Release file's `SHA256` list, its `Date`, and whether it is
/// `NotAutomatic` (backports, experimental).
fn listed(release: &str) -> Result<(Vec<Listed>, String, bool), ReleaseError> {
    let ps = control::parse(release).map_err(|e| e.to_string())?;
    let p = ps.first().ok_or("empty Release file")?;
    let list = p.get("SHA256").ok_or("Release has no SHA256 list")?;
    let mut out = Vec::new();
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut it = line.split_whitespace();
        let (Some(h), Some(s), Some(path)) = (it.next(), it.next(), it.next()) else {
            return Err(format!("bad SHA256 line `{line}`").into());
        };
        out.push(Listed {
            sha256: Digest::parse(&format!("sha256:{h}")).map_err(|e| e.to_string())?,
            size: s.parse().map_err(|_| format!("bad size in `{line}`"))?,
            path: path.to_string(),
        });
    }
    Ok((
        out,
        p.get("Date").unwrap_or_default().to_string(),
        p.get("NotAutomatic") == Some("yes"),
    ))
}

fn get_text(client: &reqwest::blocking::Client, url: &str) -> Result<String, DownloadError> {
    let b = crate::http::get_small(client, url, 256 << 20)?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

/// Fetches and verifies the indexes of `src` for `arch` into `universe` (as repository number
/// `repo`). Returns the snapshot it read.
pub fn fetch(
    client: &reqwest::blocking::Client,
    cache: &Cache,
    src: &Source,
    repo: usize,
    universe: &mut Universe,
    reporter: &dyn Reporter,
) -> Result<Snapshot, RepoError> {
    let url = format!("{}/InRelease", src.dists());
    reporter.report(Event::Stage(&format!("reading {}", redact(&url))));
    let text = get_text(client, &url)?;
    let inrelease = Digest::of(text.as_bytes());
    let release = verify_inrelease(src, &url, &text)?;
    let index_err = |url: &str, message: String| RepoError::Index {
        source_name: src.name.clone(),
        url: redact(url),
        message,
    };
    let (list, date, not_automatic) = listed(&release).map_err(|m| index_err(&url, m.0))?;
    if not_automatic {
        universe.set_priority(repo, 1);
    }
    for comp in &src.components {
        let base = format!("{comp}/binary-{}/Packages", universe.arch);
        let pick = ["xz", "gz", ""].iter().find_map(|ext| {
            let want = if ext.is_empty() {
                base.clone()
            } else {
                format!("{base}.{ext}")
            };
            list.iter().find(|l| l.path == want)
        });
        let Some(entry) = pick else {
            return Err(index_err(
                &url,
                format!("lists no {base} (is component `{comp}` right?)"),
            ));
        };
        let purl = format!("{}/{}", src.dists(), entry.path);
        crate::http::fetch(client, cache, &purl, &entry.sha256, reporter).map_err(|e| {
            match e {
                DownloadError::Mismatch {
                    url,
                    expected,
                    found,
                } => index_err(
                    &url,
                    format!(
                        "does not match the sha256 in the signed Release: expected {expected}, found {found}"
                    ),
                ),
                other => RepoError::Download(other),
            }
        })?;
        let blob = cache.blob_path(&entry.sha256);
        let file = std::fs::File::open(&blob).map_err(|e| index_err(&purl, e.to_string()))?;
        let mut reader: Box<dyn Read> = if entry.path.ends_with(".xz") {
            Box::new(liblzma::read::XzDecoder::new(std::io::BufReader::new(file)))
        } else if entry.path.ends_with(".gz") {
            Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
                file,
            )))
        } else {
            Box::new(file)
        };
        let mut text = String::with_capacity((entry.size as usize).saturating_mul(5));
        reader
            .read_to_string(&mut text)
            .map_err(|e| index_err(&purl, format!("cannot decompress: {e}")))?;
        universe
            .add_index(&text, repo, &redact(&purl))
            .map_err(|e| index_err(&purl, e.message))?;
    }
    Ok(Snapshot { inrelease, date })
}

/// Reads `deb` lines and deb822 stanzas of an apt sources file (`sources.list`,
/// `*.list`, `*.sources`). Keys named by `Signed-By` are looked up with `read_key`.
pub fn parse_sources_file(
    name: &str,
    text: &str,
    read_key: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Vec<Source> {
    let mut out = Vec::new();
    if name.ends_with(".sources") {
        let Ok(ps) = control::parse(text) else {
            return out;
        };
        for p in ps {
            if p.get("Enabled") == Some("no")
                || !p
                    .get("Types")
                    .unwrap_or_default()
                    .split_whitespace()
                    .any(|t| t == "deb")
            {
                continue;
            }
            let key = p.get("Signed-By").unwrap_or_default().trim().to_string();
            let keyring = if key.contains("BEGIN PGP") {
                Some(
                    key.lines()
                        .map(|l| l.trim())
                        .map(|l| if l == "." { "" } else { l })
                        .collect::<Vec<_>>()
                        .join("\n")
                        .into_bytes(),
                )
            } else {
                read_key(&key)
            };
            for uri in p.get("URIs").unwrap_or_default().split_whitespace() {
                for suite in p.get("Suites").unwrap_or_default().split_whitespace() {
                    out.push(Source {
                        name: format!("{name} {suite}"),
                        uri: uri.to_string(),
                        suite: suite.to_string(),
                        components: p
                            .get("Components")
                            .unwrap_or_default()
                            .split_whitespace()
                            .map(str::to_string)
                            .collect(),
                        keyring: keyring.clone(),
                        key_origin: if key.contains("BEGIN PGP") {
                            format!("{name} (inline Signed-By)")
                        } else {
                            key.clone()
                        },
                    });
                }
            }
        }
        return out;
    }
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let mut rest = rest.trim();
        let mut key = String::new();
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, tail)) = opts.split_once(']') else {
                continue;
            };
            for o in opts.split_whitespace() {
                if let Some(k) = o.strip_prefix("signed-by=") {
                    key = k.to_string();
                }
            }
            rest = tail.trim();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(Source {
            name: format!("{name} {suite}"),
            uri: uri.to_string(),
            suite: suite.to_string(),
            components: words.map(str::to_string).collect(),
            keyring: read_key(&key),
            key_origin: key,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_and_deb822_sources() {
        let key = |p: &str| (p == "/k.gpg").then(|| b"KEY".to_vec());
        let s = parse_sources_file(
            "sources.list",
            "# c\ndeb http://a/ubuntu jammy main universe\ndeb-src http://a x y\ndeb [arch=amd64 signed-by=/k.gpg] http://b stable main # c\n",
            &key,
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].components, ["main", "universe"]);
        assert!(s[0].keyring.is_none());
        assert_eq!(s[1].uri, "http://b");
        assert_eq!(s[1].keyring.as_deref(), Some(&b"KEY"[..]));
        let s = parse_sources_file(
            "debian.sources",
            "Types: deb\nURIs: http://m/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\nTypes: deb-src\nURIs: x\nSuites: y\n",
            &key,
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].suite, "bookworm-updates");
        assert!(s[1].keyring.is_some());
    }

    #[test]
    fn release_sha256_list() {
        let (l, date, na) = listed("Origin: x\nDate: Sat, 01 Jan 2000 00:00:00 UTC\nSHA256:\n 0000000000000000000000000000000000000000000000000000000000000000 12 main/binary-amd64/Packages\n").unwrap();
        assert_eq!(l[0].size, 12);
        assert_eq!(l[0].path, "main/binary-amd64/Packages");
        assert!(date.starts_with("Sat"));
        assert!(!na);
        assert!(listed("Origin: x\n").is_err());
    }
}
