//! HTTP for every stage (downloads, lock pins, apt indexes and .debs, the registry, Proxmox):
//! one client builder with the network timeout, `GET` with retries and credentials from a
//! netrc file, stall detection, and URL redaction for messages.
//!
//! Timeouts: every client connects within the network timeout (`--network-timeout`, env
//! `IMGBUILD_NETWORK_TIMEOUT`, default 30 s), waits at most that long for an answer's headers
//! and for each read of a body (an idle timeout: a 2 GB download may take an hour as long as
//! bytes keep coming), and the kernel drops a connection whose sent bytes stay unacknowledged
//! that long (`TCP_USER_TIMEOUT`). Uploads, whose body is sent inside one blocking call, get
//! the timeout plus the time to send their bytes at [`MIN_UPLOAD_RATE`].
//!
//! Credentials never live in URLs (`check` refuses them: they would be published with the
//! image): like apt's `auth.conf` and curl's `--netrc`, [`get`] looks the URL's host up in a
//! netrc file (`$IMGBUILD_NETRC`, else `~/.netrc`) and sends `login`/`password` as basic auth
//! to that host only (reqwest drops the header on a redirect to another host).

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cache::{Cache, CacheError};
use crate::digest::Digest;
use crate::report::{Dir, Event, Reporter};

/// Attempts for idempotent requests (GET, HEAD) that fail with a connection error, a stall or
/// a 5xx/429 answer.
pub const ATTEMPTS: u32 = 3;

/// Uploads may take the timeout plus their size at this rate (bytes per second).
pub const MIN_UPLOAD_RATE: u64 = 256 * 1024;

static TIMEOUT_SECS: AtomicU64 = AtomicU64::new(30);

/// Sets the network timeout for every client made after this call.
pub fn set_timeout(d: Duration) {
    TIMEOUT_SECS.store(d.as_secs().max(1), Ordering::Relaxed);
}

/// The network timeout.
pub fn timeout() -> Duration {
    Duration::from_secs(TIMEOUT_SECS.load(Ordering::Relaxed))
}

/// How long an upload of `len` bytes may take.
pub fn upload_timeout(len: u64) -> Duration {
    timeout() + Duration::from_secs(len / MIN_UPLOAD_RATE)
}

/// The one client builder: user agent and timeouts set; callers add certificates.
pub fn builder() -> reqwest::blocking::ClientBuilder {
    let t = timeout();
    reqwest::blocking::Client::builder()
        .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(t)
        .timeout(t)
        .tcp_user_timeout(t)
        .tcp_keepalive(t)
}

/// A client from [`builder`] as it is.
pub fn client() -> Result<reqwest::blocking::Client, reqwest::Error> {
    builder().build()
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot download {url}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url} stalled: {what} for {secs} s (--network-timeout)")]
    Stalled {
        url: String,
        what: &'static str,
        secs: u64,
    },
    #[error("cannot download {url}: server answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("download {url} does not match its sha256: expected {expected}, found {found}")]
    Mismatch {
        url: String,
        expected: Digest,
        found: Digest,
    },
    #[error("cannot store download {url} in the cache")]
    Cache { url: String, source: CacheError },
    #[error("cannot read the netrc file {path}")]
    Netrc { path: PathBuf, source: io::Error },
}

/// `url` with any `user:password@` removed, for messages.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, tail) = rest.split_once('/').map_or((rest, ""), |(a, t)| (a, t));
            let host = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
            let sep = if rest.contains('/') { "/" } else { "" };
            format!("{scheme}://{host}{sep}{tail}")
        }
        None => url.to_string(),
    }
}

/// Whether `url`'s authority holds credentials (`user@` or `user:password@`).
pub fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority.contains('@')
}

/// The host of `url` (without port or credentials), lowercased.
fn host_of(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    u.host_str().map(str::to_ascii_lowercase)
}

/// Where credentials are read from: `$IMGBUILD_NETRC`, else `~/.netrc`.
pub fn netrc_path() -> Option<PathBuf> {
    crate::settings::get()
        .netrc
        .clone()
        .or_else(|| Some(crate::fsutil::home_dir().join(".netrc")))
}

/// `login` and `password` for `host` in netrc text (`machine` entries, then `default`);
/// `macdef` bodies are skipped. Tokens are whitespace-separated, as in curl and apt.
pub fn netrc_lookup(text: &str, host: &str) -> Option<(String, String)> {
    let mut found: Option<(String, String)> = None;
    let mut default: Option<(String, String)> = None;
    let mut lines = text.lines();
    // Tokens, with `macdef` skipping to the next empty line.
    let mut tokens: Vec<String> = Vec::new();
    while let Some(line) = lines.next() {
        for t in line.split_whitespace() {
            if t == "macdef" {
                for l in lines.by_ref() {
                    if l.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            tokens.push(t.to_string());
        }
    }
    let mut i = 0;
    while i < tokens.len() {
        let is_default = tokens[i] == "default";
        let machine = if tokens[i] == "machine" {
            i += 1;
            tokens.get(i).map(|s| s.to_ascii_lowercase())
        } else if is_default {
            None
        } else {
            i += 1;
            continue;
        };
        i += 1;
        let (mut login, mut password) = (String::new(), String::new());
        while i < tokens.len() && tokens[i] != "machine" && tokens[i] != "default" {
            match tokens[i].as_str() {
                "login" => login = tokens.get(i + 1).cloned().unwrap_or_default(),
                "password" => password = tokens.get(i + 1).cloned().unwrap_or_default(),
                _ => {
                    i += 1;
                    continue;
                }
            }
            i += 2;
        }
        if is_default {
            default.get_or_insert((login, password));
        } else if machine.as_deref() == Some(host) && found.is_none() {
            found = Some((login, password));
        }
    }
    found.or(default)
}

/// The basic-auth credentials the netrc file holds for `url`'s host, if any. A netrc file
/// that exists but cannot be read is an error; a missing one is not.
fn credentials_for(url: &str) -> Result<Option<(String, String)>, HttpError> {
    let Some(path) = netrc_path() else {
        return Ok(None);
    };
    let text = match crate::fsutil::read_bounded(&path, 1 << 20) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(HttpError::Netrc { path, source }),
    };
    let text = String::from_utf8_lossy(&text);
    Ok(host_of(url).and_then(|h| netrc_lookup(&text, &h)))
}

fn is_transient(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
}

/// Waits before attempt `attempt + 1`: 0.5 s, 1 s, 2 s ...
pub fn backoff(attempt: u32) {
    std::thread::sleep(Duration::from_millis(
        500 << attempt.saturating_sub(1).min(5),
    ));
}

/// Maps a reqwest error: a timeout becomes [`HttpError::Stalled`].
pub fn error(url: &str, what: &'static str, source: reqwest::Error) -> HttpError {
    if source.is_timeout() {
        HttpError::Stalled {
            url: redact(url),
            what,
            secs: timeout().as_secs(),
        }
    } else {
        HttpError::Http {
            url: redact(url),
            source,
        }
    }
}

/// `GET url` with the status checked and the netrc's credentials for its host: the one way
/// imgbuild starts a download (downloads, lock pins, apt indexes and packages). Connection
/// errors, stalls and 5xx/429 answers are retried ([`ATTEMPTS`] in all, with backoff).
/// The body of `url`, at most `limit` bytes, fetched again when it stalls (an index, a
/// signature: small files read whole).
pub fn get_small(
    client: &reqwest::blocking::Client,
    url: &str,
    limit: u64,
) -> Result<Vec<u8>, HttpError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let resp = get(client, url)?;
        let mut body = StallReader::new(resp);
        match read_limited(&mut body, limit) {
            Ok(b) => return Ok(b),
            Err(_) if body.stalled && attempt < ATTEMPTS => backoff(attempt),
            Err(_) if body.stalled => {
                return Err(HttpError::Stalled {
                    url: redact(url),
                    what: "no data",
                    secs: timeout().as_secs(),
                });
            }
            Err(source) => {
                return Err(HttpError::Cache {
                    url: redact(url),
                    source: crate::cache::CacheError::Io {
                        action: "read",
                        path: redact(url).into(),
                        source,
                    },
                });
            }
        }
    }
}

pub fn get(
    client: &reqwest::blocking::Client,
    url: &str,
) -> Result<reqwest::blocking::Response, HttpError> {
    let creds = credentials_for(url)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut rb = client.get(url);
        if let Some((user, pass)) = &creds {
            rb = rb.basic_auth(user, Some(pass));
        }
        match rb.send() {
            Ok(resp) if resp.status().is_success() => return Ok(resp),
            Ok(resp) if attempt < ATTEMPTS && is_transient(resp.status()) => backoff(attempt),
            Ok(resp) => {
                return Err(HttpError::Status {
                    url: redact(url),
                    status: resp.status(),
                });
            }
            Err(e) if attempt < ATTEMPTS && (e.is_connect() || e.is_timeout()) => backoff(attempt),
            Err(e) => return Err(error(url, "no answer", e)),
        }
    }
}

/// Reads a whole answer body of at most `limit` bytes: a server that sends more (an endless
/// manifest, a huge error page) gets an error, not our memory.
pub fn read_limited(body: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    body.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the answer is larger than {limit} bytes"),
        ));
    }
    Ok(out)
}

/// A body reader that remembers whether a read timed out (the server stopped sending).
pub struct StallReader<R> {
    inner: R,
    pub stalled: bool,
}

impl<R> StallReader<R> {
    pub fn new(inner: R) -> Self {
        StallReader {
            inner,
            stalled: false,
        }
    }
}

impl<R: Read> Read for StallReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            let timed_out = e.kind() == io::ErrorKind::TimedOut
                || e.get_ref()
                    .and_then(|i| i.downcast_ref::<reqwest::Error>())
                    .is_some_and(reqwest::Error::is_timeout)
                || e.to_string().contains("timed out");
            self.stalled |= timed_out;
        })
    }
}

/// Makes sure the cache holds `sha256`, downloading `url` if not. Nothing is stored unless
/// the content matches. A body that stalls is fetched again ([`ATTEMPTS`] in all).
pub fn fetch(
    client: &reqwest::blocking::Client,
    cache: &Cache,
    url: &str,
    sha256: &Digest,
    reporter: &dyn Reporter,
) -> Result<(), HttpError> {
    let shown = redact(url);
    if cache.has_blob(sha256) {
        match cache.check_blob(sha256) {
            Ok(_) => return Ok(()),
            Err(e) => reporter.report(Event::Warning(&format!("{e}; downloading again"))),
        }
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let resp = get(client, url)?;
        let size = resp.content_length();
        let mut body = StallReader::new(resp);
        match store_reporting(cache, &mut body, size, sha256, &shown, reporter) {
            Ok(_) => return Ok(()),
            Err(CacheError::DigestMismatch { found, .. }) => {
                return Err(HttpError::Mismatch {
                    url: shown,
                    expected: sha256.clone(),
                    found,
                });
            }
            Err(_) if body.stalled && attempt < ATTEMPTS => {
                backoff(attempt);
                continue;
            }
            Err(_) if body.stalled => {
                return Err(HttpError::Stalled {
                    url: shown,
                    what: "no data",
                    secs: timeout().as_secs(),
                });
            }
            Err(source) => return Err(HttpError::Cache { url: shown, source }),
        }
    }
}

/// Fetches every `(url, sha256)` the cache lacks, `parallel` at a time (each once): downloads,
/// .debs and wheels alike.
pub fn fetch_all(
    cache: &Cache,
    items: &[(&str, &Digest)],
    parallel: usize,
    reporter: &dyn Reporter,
) -> Result<(), HttpError> {
    fetch_each(cache, items, parallel, reporter, &|_| {})
}

/// [`fetch_all`], calling `ready` with each digest as soon as its file is in the cache and
/// verified (those already there first), so its users can start before the rest arrives.
/// Missing files are fetched in the order of `items`.
pub fn fetch_each(
    cache: &Cache,
    items: &[(&str, &Digest)],
    parallel: usize,
    reporter: &dyn Reporter,
    ready: &(dyn Fn(&Digest) + Sync),
) -> Result<(), HttpError> {
    let mut seen = std::collections::HashSet::new();
    // A cached file counts when it still is what was verified (its stamp, or a re-hash): a
    // file changed in the cache is removed and fetched again here, before any step uses it.
    let usable = |d: &Digest| {
        cache.has_blob(d)
            && match cache.check_blob(d) {
                Ok(_) => true,
                Err(e) => {
                    reporter.report(Event::Warning(&format!("{e}; downloading again")));
                    false
                }
            }
    };
    let mut missing: Vec<&(&str, &Digest)> = Vec::new();
    for item in items.iter().filter(|(_, d)| seen.insert(*d)) {
        if usable(item.1) {
            ready(item.1);
        } else {
            missing.push(item);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let client = client().map_err(|source| HttpError::Http {
        url: "(client)".into(),
        source,
    })?;
    crate::parallel::try_for_each(&missing, parallel, |(url, sha)| {
        fetch(&client, cache, url, sha, reporter)?;
        ready(sha);
        Ok(())
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Streams `body` (of `size` bytes, when known) into the cache as `digest` (verified), with
/// transfer events under the name `shown`: downloads and registry blobs alike.
pub fn store_reporting(
    cache: &Cache,
    body: &mut dyn Read,
    size: Option<u64>,
    digest: &Digest,
    shown: &str,
    reporter: &dyn Reporter,
) -> Result<u64, CacheError> {
    reporter.report(Event::TransferStart {
        dir: Dir::Down,
        url: shown,
        total: size,
    });
    let mut progress = |bytes| {
        reporter.report(Event::TransferProgress {
            dir: Dir::Down,
            url: shown,
            bytes,
        })
    };
    let total = cache.store_stream(body, digest, shown, &mut progress)?;
    reporter.report(Event::TransferDone {
        dir: Dir::Down,
        url: shown,
        bytes: total,
    });
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_and_detects_credentials() {
        assert_eq!(redact("https://u:p@h.example/x?y"), "https://h.example/x?y");
        assert_eq!(redact("http://h:1/a"), "http://h:1/a");
        assert!(has_userinfo("http://user:pass@host/x"));
        assert!(has_userinfo("https://token@host"));
        assert!(!has_userinfo("https://host/a@b"));
        assert!(!has_userinfo("https://host/x?u=a@b"));
    }

    #[test]
    fn netrc_machines_default_and_macdef() {
        let text = "machine a.example login ua password pa\n\
                    macdef init\nmachine evil login x password y\n\n\
                    machine B.example\n  login ub\n  password pb\n\
                    default login anon password none\n";
        assert_eq!(
            netrc_lookup(text, "a.example"),
            Some(("ua".into(), "pa".into()))
        );
        assert_eq!(
            netrc_lookup(text, "b.example"),
            Some(("ub".into(), "pb".into()))
        );
        assert_eq!(
            netrc_lookup(text, "evil"),
            Some(("anon".into(), "none".into()))
        );
        assert_eq!(netrc_lookup("machine a login u", "b"), None);
    }

    proptest::proptest! {
        #[test]
        fn netrc_survives_arbitrary_text(text in ".*", host in "[a-z.]{0,12}") {
            let _ = netrc_lookup(&text, &host);
        }
    }
}
