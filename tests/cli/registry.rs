//! Push and pull against the real CNCF distribution registry (`docker-registry`) on
//! 127.0.0.1, in three configurations: plain HTTP, htpasswd basic auth, and TLS with a CA
//! made by the test. Read back with skopeo.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Work, assert_ok, stderr, stdout, tool};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Basic,
    Tls,
}

/// A running registry; stopped on drop. Its access log is kept to count requests.
struct Registry {
    child: Child,
    pub host: String,
    pub dir: tempfile::TempDir,
    pub mode: Mode,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    fn start(mode: Mode) -> Registry {
        Self::start_full(mode, None)
    }

    /// A plain-HTTP registry with this `auth:` section.
    fn start_with_auth(auth: &str) -> Registry {
        Self::start_full(Mode::Plain, Some(auth))
    }

    fn start_full(mode: Mode, auth: Option<&str>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let d = dir.path();
        let mut http = format!("{{addr: {host}, secret: test");
        let mut extra = String::new();
        if mode == Mode::Tls {
            let ca = |args: &[&str]| tool("openssl", args);
            ca(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                p(d, "ca.key"),
                "-out",
                p(d, "ca.crt"),
                "-days",
                "2",
                "-subj",
                "/CN=imgbuild test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
            ]);
            ca(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                p(d, "server.key"),
                "-out",
                p(d, "server.csr"),
                "-subj",
                "/CN=127.0.0.1",
            ]);
            fs::write(
                d.join("san.ext"),
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
            )
            .unwrap();
            ca(&[
                "x509",
                "-req",
                "-in",
                p(d, "server.csr"),
                "-CA",
                p(d, "ca.crt"),
                "-CAkey",
                p(d, "ca.key"),
                "-CAcreateserial",
                "-out",
                p(d, "server.crt"),
                "-days",
                "2",
                "-extfile",
                p(d, "san.ext"),
            ]);
            fs::create_dir(d.join("certs")).unwrap();
            fs::copy(d.join("ca.crt"), d.join("certs/ca.crt")).unwrap();
            http.push_str(&format!(
                ", tls: {{certificate: {}, key: {}}}",
                p(d, "server.crt"),
                p(d, "server.key")
            ));
        }
        if mode == Mode::Basic {
            let h = tool("htpasswd", &["-Bbn", "tester", "s3cret"]);
            fs::write(d.join("htpasswd"), h).unwrap();
            extra = format!(
                "auth: {{htpasswd: {{realm: test, path: {}}}}}\n",
                p(d, "htpasswd")
            );
        }
        http.push('}');
        if let Some(a) = auth {
            extra = a.to_string();
        }
        let cfg = format!(
            "version: 0.1\nlog: {{level: info, accesslog: {{disabled: false}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {http}\n{extra}",
            p(d, "data")
        );
        fs::write(d.join("config.yml"), cfg).unwrap();
        let log = fs::File::create(d.join("access.log")).unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", p(d, "config.yml")])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("docker-registry is needed for this test (.ci/run installs it)");
        let reg = Registry {
            child,
            host,
            dir,
            mode,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(&reg.host).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "registry did not start:\n{}",
                reg.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        reg
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Requests in the access log matching `method path-prefix`.
    fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Flags imgbuild needs to reach this registry.
    fn imgbuild_flags(&self) -> Vec<String> {
        match self.mode {
            Mode::Tls => vec!["--ca-cert".into(), p(self.dir.path(), "ca.crt").into()],
            _ => vec![],
        }
    }

    /// skopeo flags for a docker:// source (`src`) or destination (`dest`).
    fn skopeo_flags(&self, side: &str) -> Vec<String> {
        let mut f = match self.mode {
            Mode::Tls => vec![
                format!("--{side}cert-dir"),
                p(self.dir.path(), "certs").into(),
            ],
            _ => vec![format!("--{side}tls-verify=false")],
        };
        if self.mode == Mode::Basic {
            f.push(format!("--{side}creds"));
            f.push("tester:s3cret".into());
        }
        f
    }
}

fn p<'a>(d: &'a Path, name: &str) -> &'a str {
    Box::leak(
        d.join(name)
            .into_os_string()
            .into_string()
            .unwrap()
            .into_boxed_str(),
    )
}

fn with_creds(mut c: assert_cmd::Command, reg: &Registry) -> assert_cmd::Command {
    if reg.mode == Mode::Basic {
        c.env("IMGBUILD_REGISTRY_USER", "tester")
            .env("IMGBUILD_REGISTRY_PASSWORD", "s3cret");
    }
    c.env("HOME", "/nonexistent-home");
    c
}

fn skopeo(args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tool("skopeo", &args)
}

fn push_and_read_back(mode: Mode) {
    let reg = Registry::start(mode);
    let w = Work::setup();
    let dest = format!("{}/hello:1", reg.host);
    let o = with_creds(w.cmd(), &reg)
        .args(reg.imgbuild_flags())
        .arg("build")
        .arg(w.recipe())
        .arg("--out")
        .arg(w.path("out/hello"))
        .args(["--push", &dest])
        .output()
        .unwrap();
    assert_ok(&o);
    let digest = stdout(&o).trim().to_string();

    let mut args = vec!["inspect".to_string()];
    args.extend(reg.skopeo_flags(""));
    args.push(format!("docker://{dest}"));
    let v: Value = serde_json::from_str(&skopeo(&args)).unwrap();
    assert_eq!(
        v["Digest"],
        digest.as_str(),
        "skopeo sees the digest build printed"
    );

    // skopeo copy back into a layout: identical blobs.
    let back = w.path("back");
    let mut args = vec!["copy".to_string()];
    args.extend(reg.skopeo_flags("src-"));
    args.push(format!("docker://{dest}"));
    args.push(format!("oci:{}:1", back.display()));
    skopeo(&args);
    let ours = w.path("out/hello/blobs/sha256");
    for e in fs::read_dir(back.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        assert_eq!(
            fs::read(e.path()).unwrap(),
            fs::read(ours.join(e.file_name())).unwrap(),
            "{:?}",
            e.file_name()
        );
    }

    // A second push uploads no blob; a push to another repository mounts instead.
    let uploads_before = reg.count("\"POST /v2/");
    let o = with_creds(w.cmd(), &reg)
        .args(reg.imgbuild_flags())
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(&dest)
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(
        reg.count("\"POST /v2/"),
        uploads_before,
        "re-push starts no upload:\n{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("0 uploaded"), "{}", stderr(&o));
    let other = format!("{}/other:1", reg.host);
    let o = with_creds(w.cmd(), &reg)
        .args(reg.imgbuild_flags())
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(&other)
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(reg.count("mount=sha256:") > 0, "mounted");
    assert_eq!(
        reg.count("\"PUT /v2/other/blobs/uploads/"),
        0,
        "nothing uploaded to the second repository"
    );
    assert!(stderr(&o).contains("7 mounted"), "{}", stderr(&o));
}

#[test]
fn push_plain_http() {
    push_and_read_back(Mode::Plain);
}

#[test]
fn push_with_basic_auth() {
    push_and_read_back(Mode::Basic);
}

#[test]
fn push_over_tls_with_a_private_ca() {
    push_and_read_back(Mode::Tls);
}

#[test]
fn a_registry_base_is_pulled_and_its_layers_reused_byte_for_byte() {
    let reg = Registry::start(Mode::Plain);
    let w = Work::setup();
    let hello = w.path("out/hello");
    w.build("out/hello");
    skopeo(&[
        "copy".into(),
        "--dest-tls-verify=false".into(),
        format!("oci:{}:latest", hello.display()),
        format!("docker://{}/base:1", reg.host),
    ]);
    let recipe = format!(
        "[image]\nname = \"child\"\nbase = \"{}/base:1\"\n\n[[file]]\ndest = \"/etc/child\"\ncontent = \"child\\n\"\n",
        reg.host
    );
    fs::write(w.path("recipes/child.toml"), recipe).unwrap();
    let meta = w.path("child.json");
    let build = |out: &str| {
        // Its own cache: hello's layers are not there yet, they must come from the registry.
        let o = w
            .cmd_with_cache(&w.path("child-cache"))
            .arg("build")
            .arg(w.path("recipes/child.toml"))
            .arg("--out")
            .arg(w.path(out))
            .arg("--metadata-file")
            .arg(&meta)
            .output()
            .unwrap();
        assert_ok(&o);
        serde_json::from_slice::<Value>(&fs::read(&meta).unwrap()).unwrap()
    };
    let m = build("out/child");
    let base_blobs_fetched = reg.count("\"GET /v2/base/blobs/");
    assert!(base_blobs_fetched >= 7, "config and 6 layers fetched");
    for l in m["base_layers"].as_array().unwrap() {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        assert_eq!(
            fs::read(hello.join("blobs/sha256").join(hex)).unwrap(),
            fs::read(w.path("out/child/blobs/sha256").join(hex)).unwrap()
        );
    }
    assert_eq!(m["base_layers"].as_array().unwrap().len(), 6);
    // Cached: a second build fetches no blob again, only the manifest.
    let again = build("out/child2");
    assert_eq!(again["manifest"], m["manifest"]);
    assert_eq!(
        reg.count("\"GET /v2/base/blobs/"),
        base_blobs_fetched,
        "blobs are never fetched twice"
    );
}

#[test]
fn bad_credentials_unknown_ca_and_missing_repository_fail_clearly() {
    let basic = Registry::start(Mode::Basic);
    let w = Work::setup();
    w.build("out/hello");
    let o = w
        .cmd()
        .env("IMGBUILD_REGISTRY_USER", "tester")
        .env("IMGBUILD_REGISTRY_PASSWORD", "wrong")
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/hello:1", basic.host))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("access denied") && err.contains("check the user name and password"),
        "{err}"
    );
    assert!(!err.contains("wrong"), "the password never appears: {err}");

    let tls = Registry::start(Mode::Tls);
    let o = w
        .cmd()
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/hello:1", tls.host))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is not trusted"), "{}", stderr(&o));
    assert_eq!(
        tls.count("PUT /v2/hello/manifests"),
        0,
        "no tag left behind"
    );

    let plain = Registry::start(Mode::Plain);
    let recipe = format!(
        "[image]\nname = \"child\"\nbase = \"{}/nosuch:1\"\n",
        plain.host
    );
    fs::write(w.path("recipes/missing.toml"), recipe).unwrap();
    let o = w
        .cmd()
        .arg("build")
        .arg(w.path("recipes/missing.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot pull the base image") && stderr(&o).contains("404"),
        "{}",
        stderr(&o)
    );
}

/// A proxy in front of a registry that parses requests and injects faults: the first HEAD
/// gets a 503, and the first blob upload body over 64 KiB is cut off halfway (connection
/// dropped). Everything else is forwarded untouched.
struct FaultProxy {
    host: String,
    injected: std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>,
    /// The request line of the request that was cut.
    cut: std::sync::Arc<std::sync::Mutex<String>>,
}

impl FaultProxy {
    fn start(upstream: String) -> FaultProxy {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let injected: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let faults = injected.clone();
        let cut: Arc<Mutex<String>> = Arc::default();
        let cut_line = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let upstream = upstream.clone();
                let faults = faults.clone();
                let cut_line = cut_line.clone();
                std::thread::spawn(move || {
                    let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                        return;
                    };
                    let (mut s_read, mut c_write) =
                        (server.try_clone().unwrap(), client.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut s_read, &mut c_write);
                    });
                    let mut reader = BufReader::new(client.try_clone().unwrap());
                    let mut server = server;
                    loop {
                        let mut head = Vec::new();
                        loop {
                            let mut line = Vec::new();
                            if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            head.extend_from_slice(&line);
                            if line == b"\r\n" {
                                break;
                            }
                        }
                        let text = String::from_utf8_lossy(&head).to_string();
                        let len: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        let mut body = vec![0u8; len];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let mut f = faults.lock().unwrap();
                        if text.starts_with("HEAD ") && !f.contains(&"503") {
                            f.push("503");
                            drop(f);
                            let mut c = client.try_clone().unwrap();
                            let _ = c.write_all(
                                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                            );
                            continue;
                        }
                        if text.contains("/blobs/uploads/")
                            && len > 64 * 1024
                            && !f.contains(&"drop")
                        {
                            f.push("drop");
                            drop(f);
                            *cut_line.lock().unwrap() =
                                text.lines().next().unwrap_or("").to_string();
                            let _ = server.write_all(&head);
                            let _ = server.write_all(&body[..len / 2]);
                            let _ = client.shutdown(std::net::Shutdown::Both);
                            let _ = server.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        drop(f);
                        if server.write_all(&head).is_err() || server.write_all(&body).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FaultProxy {
            host,
            injected,
            cut,
        }
    }
}

/// Adds `size` bytes of incompressible data to the example and builds it.
fn build_with_noise(w: &Work, size: usize) -> String {
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let noise: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(w.path("recipes/files/noise.bin"), noise).unwrap();
    let text = fs::read_to_string(w.recipe()).unwrap()
        + "\n[[file]]\ndest = \"/opt/noise.bin\"\nsrc = \"files/noise.bin\"\n";
    fs::write(w.recipe(), text).unwrap();
    w.build("out/hello")
}

/// Pushes through a fault proxy, then checks the image straight from the registry.
fn push_through_faults(size: usize, method: &str) {
    let reg = Registry::start(Mode::Plain);
    let proxy = FaultProxy::start(reg.host.clone());
    let w = Work::setup();
    let digest = build_with_noise(&w, size);
    let o = w
        .cmd()
        .args(["--insecure-registry", &proxy.host])
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/faulty:1", proxy.host))
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(stdout(&o).trim(), digest);
    let injected = proxy.injected.lock().unwrap().clone();
    assert!(
        injected.contains(&"503") && injected.contains(&"drop"),
        "faults injected: {injected:?}"
    );
    assert!(
        proxy.cut.lock().unwrap().starts_with(method),
        "cut a {method}: {:?}",
        proxy.cut.lock().unwrap()
    );
    // Straight from the registry: the image is complete and every blob is intact
    // (skopeo verifies each blob's digest as it copies).
    let dest = format!("docker://{}/faulty:1", reg.host);
    let v: Value = serde_json::from_str(&skopeo(&[
        "inspect".into(),
        "--tls-verify=false".into(),
        dest.clone(),
    ]))
    .unwrap();
    assert_eq!(v["Digest"], digest.as_str());
    skopeo(&[
        "copy".into(),
        "--src-tls-verify=false".into(),
        dest,
        format!("oci:{}:x", w.path("back").display()),
    ]);
}

#[test]
fn a_dropped_connection_and_a_503_still_give_a_complete_push() {
    // 1 MiB: a monolithic PUT, cut halfway; the upload restarts on a fresh session.
    push_through_faults(1 << 20, "PUT");
}

#[test]
fn a_chunked_upload_cut_midway_still_completes() {
    // 40 MiB: chunked PATCHes of 32 MiB; the first is cut. Distribution drops a session after a
    // cut PATCH (a Range query answers 404), so the blob starts over on a fresh session.
    push_through_faults(40 << 20, "PATCH");
}

#[test]
fn login_stores_credentials_that_push_then_uses() {
    let reg = Registry::start(Mode::Basic);
    let w = Work::setup();
    w.build("out/hello");
    let home = w.path("home");
    fs::create_dir(&home).unwrap();
    let o = w
        .cmd()
        .env("HOME", &home)
        .args(["login", &reg.host, "-u", "tester", "--password-stdin"])
        .write_stdin("s3cret\n")
        .output()
        .unwrap();
    assert_ok(&o);
    let cfg = fs::read_to_string(home.join(".docker/config.json")).unwrap();
    assert!(
        cfg.contains(&reg.host) && !cfg.contains("s3cret"),
        "stored base64-encoded: {cfg}"
    );
    let o = w
        .cmd()
        .env("HOME", &home)
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/hello:1", reg.host))
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(!stderr(&o).contains("s3cret"));
}

#[test]
fn a_ca_in_docker_certs_d_is_trusted() {
    let reg = Registry::start(Mode::Tls);
    let w = Work::setup();
    w.build("out/hello");
    let certs_d = w.path("certs.d");
    fs::create_dir_all(certs_d.join(&reg.host)).unwrap();
    fs::copy(
        reg.dir.path().join("ca.crt"),
        certs_d.join(&reg.host).join("ca.crt"),
    )
    .unwrap();
    let o = w
        .cmd()
        .env("IMGBUILD_CERTS_D", &certs_d)
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/hello:1", reg.host))
        .output()
        .unwrap();
    assert_ok(&o);
}

/// A token issuer for the Docker registry token protocol (what Docker Hub's auth service
/// does): `GET /token?service=..&scope=..` answers a JWT signed (RS256, via openssl) by a key
/// whose certificate the registry trusts. Records the scopes it was asked for.
struct TokenServer {
    realm: String,
    scopes: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl TokenServer {
    fn start(dir: &Path) -> TokenServer {
        use base64::Engine;
        use std::io::{BufRead, BufReader, Write};
        tool(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                p(dir, "token.key"),
                "-out",
                p(dir, "token.crt"),
                "-days",
                "2",
                "-subj",
                "/CN=imgbuild test token issuer",
            ],
        );
        let der = Command::new("openssl")
            .args(["x509", "-in", p(dir, "token.crt"), "-outform", "DER"])
            .output()
            .unwrap()
            .stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let key = dir.join("token.key");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let scopes: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let seen = scopes.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut line = String::new();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                reader.read_line(&mut line).unwrap();
                let mut h = String::new();
                while reader.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
                    h.clear();
                }
                let query = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .split_once('?')
                    .map(|(_, q)| q.to_string())
                    .unwrap_or_default();
                let mut access = Vec::new();
                for kv in query.split('&') {
                    if let Some(s) = kv.strip_prefix("scope=") {
                        let s = s
                            .replace("%3A", ":")
                            .replace("%2C", ",")
                            .replace("%2F", "/");
                        seen.lock().unwrap().push(s.clone());
                        let parts: Vec<&str> = s.split(':').collect();
                        if parts.len() == 3 {
                            access.push(serde_json::json!({"type": parts[0], "name": parts[1], "actions": parts[2].split(',').collect::<Vec<_>>()}));
                        }
                    }
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [x5c]});
                let claims = serde_json::json!({"iss": "imgbuild-test", "sub": "tester", "aud": "test-registry",
                    "exp": now + 600, "nbf": now - 60, "iat": now, "jti": format!("{now}-{}", access.len()), "access": access});
                let signing_input = format!(
                    "{}.{}",
                    b64url(header.to_string().as_bytes()),
                    b64url(claims.to_string().as_bytes())
                );
                let mut child = Command::new("openssl")
                    .args(["dgst", "-sha256", "-sign", key.to_str().unwrap()])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(signing_input.as_bytes())
                    .unwrap();
                let sig = child.wait_with_output().unwrap().stdout;
                let token = format!("{signing_input}.{}", b64url(&sig));
                let body =
                    serde_json::json!({"token": token, "access_token": token, "expires_in": 600})
                        .to_string();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenServer { realm, scopes }
    }
}

#[test]
fn bearer_tokens_from_a_token_service_push_and_pull() {
    let tokens_dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(tokens_dir.path());
    let reg = Registry::start_with_auth(&format!(
        "auth: {{token: {{realm: \"{}\", service: test-registry, issuer: imgbuild-test, rootcertbundle: {}}}}}\n",
        tokens.realm,
        p(tokens_dir.path(), "token.crt")
    ));
    let w = Work::setup();
    let dest = format!("{}/team/hello:1", reg.host);
    let o = w
        .cmd()
        .arg("build")
        .arg(w.recipe())
        .arg("--out")
        .arg(w.path("out/hello"))
        .args(["--push", &dest])
        .output()
        .unwrap();
    assert_ok(&o);
    let digest = stdout(&o).trim().to_string();
    assert!(
        tokens
            .scopes
            .lock()
            .unwrap()
            .iter()
            .any(|s| s == "repository:team/hello:pull,push"),
        "{:?}",
        tokens.scopes.lock().unwrap()
    );
    // Pull it back as a base, with a fresh cache: tokens for pull.
    fs::write(
        w.path("recipes/child.toml"),
        format!("[image]\nname = \"child\"\nbase = \"{dest}\"\n"),
    )
    .unwrap();
    let meta = w.path("child.json");
    let o = w
        .cmd_with_cache(&w.path("c2"))
        .arg("build")
        .arg(w.path("recipes/child.toml"))
        .arg("--out")
        .arg(w.path("out/child"))
        .arg("--metadata-file")
        .arg(&meta)
        .output()
        .unwrap();
    assert_ok(&o);
    let m: Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m["base_layers"].as_array().unwrap().len(), 6);
    assert!(!digest.is_empty());
}

#[test]
fn an_unknown_ca_is_named_in_a_one_line_error() {
    let tls = Registry::start(Mode::Tls);
    let w = Work::setup();
    w.build("out/hello");
    let o = w
        .cmd()
        .arg("push")
        .arg(w.path("out/hello"))
        .arg(format!("{}/hello:1", tls.host))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: pushing to") && last.to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[test]
fn a_multi_platform_base_is_resolved_through_its_index() {
    let reg = Registry::start(Mode::Plain);
    let w = Work::setup();
    let hello = w.path("out/hello");
    w.build("out/hello");
    // Wrap hello's manifest in an image index for linux/amd64 and tag it `multi`.
    let idx: Value = serde_json::from_slice(&fs::read(hello.join("index.json")).unwrap()).unwrap();
    let m = &idx["manifests"][0];
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
                       "platform": {"architecture": "amd64", "os": "linux"}}]
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let hex = {
        use sha2::Digest as _;
        format!("{:x}", sha2::Sha256::digest(&bytes))
    };
    fs::write(hello.join("blobs/sha256").join(&hex), &bytes).unwrap();
    let mut top = idx.clone();
    top["manifests"] = serde_json::json!([{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": format!("sha256:{hex}"), "size": bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}
    }]);
    fs::write(hello.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    skopeo(&[
        "copy".into(),
        "--all".into(),
        "--dest-tls-verify=false".into(),
        format!("oci:{}:multi", hello.display()),
        format!("docker://{}/multi:1", reg.host),
    ]);

    for (platform, ok) in [("linux/amd64", true), ("linux/arm64", false)] {
        let recipe = format!(
            "[image]\nname = \"child\"\nbase = \"{}/multi:1\"\nplatform = \"{platform}\"\n",
            reg.host
        );
        fs::write(w.path("recipes/child.toml"), recipe).unwrap();
        let meta = w.path("child.json");
        let o = w
            .cmd_with_cache(&w.path("c2"))
            .arg("build")
            .arg(w.path("recipes/child.toml"))
            .arg("--out")
            .arg(w.path("out/child"))
            .arg("--metadata-file")
            .arg(&meta)
            .output()
            .unwrap();
        if ok {
            assert_ok(&o);
            let meta: Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
            assert_eq!(meta["base_layers"].as_array().unwrap().len(), 6);
        } else {
            assert_eq!(o.status.code(), Some(1));
            assert!(
                stderr(&o).contains("has no image for linux/arm64"),
                "{}",
                stderr(&o)
            );
        }
    }
}
