//! Servers that stall (accept and never answer; answer headers and then go silent) and servers
//! that want credentials: every client gives up after `--network-timeout`, retries reads, and
//! names the URL; credentials never sit in a recipe, a reference or anything imgbuild writes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{Work, assert_ok, stderr, stdout};

#[derive(Clone, Copy)]
pub enum Stall {
    /// Accepts, reads the request, never answers.
    Silent,
    /// Answers 200 with a Content-Length, sends a few bytes, then nothing.
    Body,
}

/// A server on 127.0.0.1 that stalls every connection; counts connections.
pub struct Staller {
    pub url: String,
    pub connections: Arc<AtomicUsize>,
}

impl Staller {
    pub fn start(how: Stall) -> Staller {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut line = String::new();
                    while r.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                        line.clear();
                    }
                    let mut s = s;
                    if let Stall::Body = how {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial");
                    }
                    std::thread::sleep(Duration::from_secs(300));
                });
            }
        });
        Staller { url, connections }
    }
}

fn recipe(work: &Work, name: &str, body: &str) -> std::path::PathBuf {
    let p = work.path(&format!("recipes/{name}.toml"));
    std::fs::write(
        &p,
        format!("[image]\nname = \"{name}\"\nbase = \"scratch\"\n{body}"),
    )
    .unwrap();
    p
}

fn download_recipe(work: &Work, url: &str) -> std::path::PathBuf {
    recipe(
        work,
        "stall",
        &format!(
            "\n[[download]]\nurl = \"{url}/file\"\nsha256 = \"sha256:{}\"\ndest = \"/file\"\n",
            "0".repeat(64)
        ),
    )
}

#[test]
fn a_download_that_stalls_fails_after_the_timeout_with_retries() {
    for (how, what) in [(Stall::Silent, "no answer"), (Stall::Body, "no data")] {
        let work = Work::setup();
        let server = Staller::start(how);
        let r = download_recipe(&work, &server.url);
        let started = Instant::now();
        let o = work
            .cmd()
            .args(["--network-timeout", "1", "build"])
            .arg(&r)
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(&format!("{}/file stalled: {what} for 1 s", server.url)),
            "{e}"
        );
        assert_eq!(server.connections.load(Ordering::SeqCst), 3, "three tries");
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}

#[test]
fn the_network_timeout_comes_from_the_environment_too() {
    let work = Work::setup();
    let server = Staller::start(Stall::Silent);
    let r = download_recipe(&work, &server.url);
    let o = work
        .cmd()
        .env("IMGBUILD_NETWORK_TIMEOUT", "1")
        .arg("build")
        .arg(&r)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("stalled: no answer for 1 s"),
        "{}",
        stderr(&o)
    );
    let o = work
        .cmd()
        .args(["--network-timeout", "0", "check"])
        .arg(&r)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn an_apt_index_that_stalls_fails_the_lock() {
    let work = Work::setup();
    let server = Staller::start(Stall::Body);
    std::fs::write(work.path("recipes/k.asc"), "unused").unwrap();
    let r = recipe(
        &work,
        "aptstall",
        &format!(
            "\n[apt]\npackages = [\"xx\"]\n\n[[apt.sources]]\nname = \"s\"\nuri = \"{}\"\nsuite = \"test\"\ncomponents = [\"main\"]\nkey = \"k.asc\"\n",
            server.url
        ),
    );
    let o = work
        .cmd()
        .args(["--network-timeout", "1", "lock"])
        .arg(&r)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("{}/dists/test/InRelease", server.url)),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("InRelease stalled: no data for 1 s"),
        "{}",
        stderr(&o)
    );
    assert_eq!(server.connections.load(Ordering::SeqCst), 3, "three tries");
}

#[test]
fn a_registry_that_stalls_fails_the_push() {
    let work = Work::setup();
    work.build("out/hello");
    let server = Staller::start(Stall::Silent);
    let host = server.url.trim_start_matches("http://").to_string();
    let o = work
        .cmd()
        .args([
            "--network-timeout",
            "1",
            "--insecure-registry",
            &host,
            "push",
        ])
        .arg(work.path("out/hello"))
        .arg(format!("{host}/hello:1"))
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the registry stalled"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn cache_gc_says_it_waits_for_a_running_build() {
    let work = Work::setup();
    let server = Staller::start(Stall::Silent);
    let r = download_recipe(&work, &server.url);
    let mut build = work
        .spawnable(&work.path("cache"))
        .args(["--network-timeout", "60", "build"])
        .arg(&r)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while server.connections.load(Ordering::SeqCst) == 0 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut gc = work
        .spawnable(&work.path("cache"))
        .args(["cache", "gc", "--max-size", "1G"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        gc.try_wait().unwrap().is_none(),
        "gc waits while the build runs"
    );
    build.kill().unwrap();
    build.wait().unwrap();
    let out = gc.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("waiting for running builds"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file server that wants `Authorization: Basic base64(user:pass)`; serves one body.
fn auth_server(user: &str, pass: &str, body: &'static [u8]) -> String {
    use base64::Engine as _;
    let want = format!(
        "authorization: basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
    .to_ascii_lowercase();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut authed = false;
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                authed |= line.trim().to_ascii_lowercase() == want;
                line.clear();
            }
            let mut s = s;
            if authed {
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(body);
            } else {
                let _ = s.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        }
    });
    url
}

fn tree_contains(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if !e.file_type().is_file() {
            continue;
        }
        let mut data = Vec::new();
        std::fs::File::open(e.path())
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        // Layers are gzip: look inside them too.
        let mut plain = Vec::new();
        if flate2::read::GzDecoder::new(&data[..])
            .read_to_end(&mut plain)
            .is_ok()
        {
            data.extend(plain);
        }
        if data.windows(needle.len()).any(|w| w == needle) {
            hits.push(e.path().display().to_string());
        }
    }
    hits
}

#[test]
fn credentials_in_urls_are_refused_and_netrc_is_used_instead() {
    let work = Work::setup();
    let url = auth_server("builder", "s3cret-pw", b"private bytes\n");
    let authority = url.trim_start_matches("http://");
    // In a recipe: check refuses it, says where credentials go, never prints them.
    let r = recipe(
        &work,
        "creds",
        &format!(
            "\n[[download]]\nurl = \"http://builder:s3cret-pw@{authority}/f\"\ndest = \"/f\"\n"
        ),
    );
    let o = work.cmd().arg("check").arg(&r).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("creds.toml:6:"), "{}", stderr(&o));
    assert!(stderr(&o).contains("~/.netrc"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("s3cret"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("s3cret"));

    // Through a netrc file: the download works and the password is nowhere in the outputs.
    let netrc = work.path("netrc");
    std::fs::write(
        &netrc,
        "machine 127.0.0.1 login builder password s3cret-pw\n",
    )
    .unwrap();
    let sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(b"private bytes\n"))
    };
    let r = recipe(
        &work,
        "netrc",
        &format!("\n[[download]]\nurl = \"{url}/f\"\nsha256 = \"{sha}\"\ndest = \"/f\"\n"),
    );
    let o = work
        .cmd()
        .arg("build")
        .arg(&r)
        .arg("--out")
        .arg(work.path("out/n"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "without credentials: 401");
    assert!(stderr(&o).contains("401"), "{}", stderr(&o));
    let meta = work.path("meta.json");
    let o = work
        .cmd()
        .env("IMGBUILD_NETRC", &netrc)
        .arg("build")
        .arg(&r)
        .arg("--out")
        .arg(work.path("out/n"))
        .arg("--metadata-file")
        .arg(&meta)
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(!stderr(&o).contains("s3cret"));
    for d in ["out", "cache"] {
        let hits = tree_contains(&work.path(d), b"s3cret");
        assert!(hits.is_empty(), "the password is in {hits:?}");
    }
    assert!(!std::fs::read_to_string(&meta).unwrap().contains("s3cret"));
}

#[test]
fn registry_references_with_credentials_are_refused_without_echoing_them() {
    let work = Work::setup();
    work.build("out/hello");
    let bad = "admin:s3cret-pw@127.0.0.1:5999/hello:1";
    let runs: Vec<Vec<String>> = vec![
        vec![
            "push".into(),
            work.path("out/hello").display().to_string(),
            bad.into(),
        ],
        vec![
            "build".into(),
            work.recipe().display().to_string(),
            "--push".into(),
            bad.into(),
        ],
        vec![
            "login".into(),
            "admin:s3cret-pw@127.0.0.1:5999".into(),
            "-u".into(),
            "a".into(),
            "--password-stdin".into(),
        ],
    ];
    for args in runs {
        let o = work.cmd().args(&args).write_stdin("pw\n").output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("s3cret"), "{args:?}: {}", stderr(&o));
        assert!(!stdout(&o).contains("s3cret"));
        assert!(
            stderr(&o).contains("credentials"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn a_registry_base_that_stalls_fails_the_pull() {
    let work = Work::setup();
    let server = Staller::start(Stall::Silent);
    let host = server.url.trim_start_matches("http://").to_string();
    let r = recipe(&work, "pullstall", "");
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("base = \"scratch\"", &format!("base = \"{host}/base:1\""));
    std::fs::write(&r, text).unwrap();
    let o = work
        .cmd()
        .args([
            "--network-timeout",
            "1",
            "--insecure-registry",
            &host,
            "build",
        ])
        .arg(&r)
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the registry stalled"),
        "{}",
        stderr(&o)
    );
}
