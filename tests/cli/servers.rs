//! Servers the registry tests run: the real `docker-registry` (plain, htpasswd, TLS with a
//! test CA), a fault-injecting proxy in front of it, and a token issuer speaking the Docker
//! registry token protocol.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tool;

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Plain,
    Basic,
    Tls,
}

/// A running registry; stopped on drop. Its access log is kept to count requests.
pub struct Registry {
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
    pub fn start(mode: Mode) -> Registry {
        Self::start_full(mode, None)
    }

    /// A plain-HTTP registry with this `auth:` section.
    pub fn start_with_auth(auth: &str) -> Registry {
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

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Requests in the access log matching `method path-prefix`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Flags imgbuild needs to reach this registry.
    pub fn imgbuild_flags(&self) -> Vec<String> {
        match self.mode {
            Mode::Tls => vec!["--ca-cert".into(), p(self.dir.path(), "ca.crt").into()],
            _ => vec![],
        }
    }

    /// skopeo flags for a docker:// source (`src`) or destination (`dest`).
    pub fn skopeo_flags(&self, side: &str) -> Vec<String> {
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

pub fn p<'a>(d: &'a Path, name: &str) -> &'a str {
    Box::leak(
        d.join(name)
            .into_os_string()
            .into_string()
            .unwrap()
            .into_boxed_str(),
    )
}

/// Which faults a [`FaultProxy`] injects.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Faults {
    /// The first HEAD gets a 503, and the first blob upload body over 64 KiB is cut off
    /// halfway (connection dropped).
    CutFirstUpload,
    /// The first PATCH after an upload's first chunk is answered 503, five times (as often as
    /// the registry client tries a request), without reaching the registry, which keeps the
    /// session.
    RefuseLaterChunks,
}

/// A proxy in front of a registry that parses requests and injects faults (see [`Faults`]).
/// Everything else is forwarded untouched.
pub struct FaultProxy {
    pub host: String,
    pub injected: std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>,
    /// The request line of the request that was cut.
    pub cut: std::sync::Arc<std::sync::Mutex<String>>,
    /// Each request forwarded: `METHOD PATH [Content-Range]`.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FaultProxy {
    pub fn start(upstream: String, kind: Faults) -> FaultProxy {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let injected: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let faults = injected.clone();
        let cut: Arc<Mutex<String>> = Arc::default();
        let cut_line = cut.clone();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let log_w = log.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let upstream = upstream.clone();
                let faults = faults.clone();
                let cut_line = cut_line.clone();
                let log_w = log_w.clone();
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
                        let range = text.lines().find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-range:")
                                .map(|v| v.trim().to_string())
                        });
                        let first = text.lines().next().unwrap_or("").to_string();
                        let request = match &range {
                            Some(r) => format!("{first} {r}"),
                            None => first,
                        };
                        if kind == Faults::RefuseLaterChunks {
                            let later = text.starts_with("PATCH ")
                                && range.as_deref().is_some_and(|r| !r.starts_with("0-"));
                            if later && f.iter().filter(|x| **x == "503").count() < 5 {
                                f.push("503");
                                drop(f);
                                log_w.lock().unwrap().push(format!("REFUSED {request}"));
                                *cut_line.lock().unwrap() = request;
                                let mut c = client.try_clone().unwrap();
                                let _ = c.write_all(
                                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                                );
                                continue;
                            }
                            drop(f);
                            log_w.lock().unwrap().push(request);
                            if server.write_all(&head).is_err() || server.write_all(&body).is_err()
                            {
                                return;
                            }
                            continue;
                        }
                        log_w.lock().unwrap().push(request);
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
            log,
        }
    }
}

/// A token issuer for the Docker registry token protocol (what Docker Hub's auth service
/// does): `GET /token?service=..&scope=..` answers a JWT signed (RS256, via openssl) by a key
/// whose certificate the registry trusts. Records the scopes it was asked for.
pub struct TokenServer {
    pub realm: String,
    pub scopes: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl TokenServer {
    pub fn start(dir: &Path) -> TokenServer {
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
