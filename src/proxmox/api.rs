//! A small Proxmox VE API client (`/api2/json`, API token auth), on blocking reqwest: the calls
//! the template flow needs, each task (UPID) polled to its end, errors that name the call.
//!
//! ```no_run
//! use imgbuild::proxmox::api::{Api, Token};
//! let token = Token::parse("root@pam!imgbuild=0000-1111").unwrap();
//! let api = Api::new("https://pve.lan:8006", &token, None, false).unwrap();
//! let vms = api.get("/nodes/pve/qemu").unwrap();
//! println!("{vms}");
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, multipart};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "the API token must read USER@REALM!TOKENID=SECRET (as `pveum user token add` shows it), \
         not `{0}`"
    )]
    BadToken(String),
    #[error("the Proxmox URL `{0}` is not an http(s) URL")]
    BadUrl(String),
    #[error("reading the CA certificate {path}")]
    Ca {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("{method} {path}: {source}")]
    Transport {
        method: &'static str,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "{method} {path}: the node stalled (no answer or no data for {secs} s, --network-timeout)"
    )]
    Stalled {
        method: &'static str,
        path: String,
        secs: u64,
    },
    #[error("{method} {path}: HTTP {status}: {message}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{method} {path}: the answer is not the API's JSON: {message}")]
    Body {
        method: &'static str,
        path: String,
        message: String,
    },
    #[error("reading {path} for upload")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("task {upid} ended with `{status}`{log}")]
    Task {
        upid: String,
        status: String,
        log: String,
    },
    #[error("task {upid} did not end within {secs} s")]
    TaskTimeout { upid: String, secs: u64 },
}

impl ApiError {
    /// The HTTP status, when the API answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An API token, `USER@REALM!TOKENID=SECRET`.
#[derive(Clone)]
pub struct Token {
    /// `USER@REALM!TOKENID`
    pub id: String,
    secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}=<secret>)", self.id)
    }
}

impl Token {
    pub fn parse(s: &str) -> Result<Token, ApiError> {
        let s = s.trim();
        let bad = || ApiError::BadToken(redact(s));
        let (id, secret) = s.split_once('=').ok_or_else(bad)?;
        let (user, tokenid) = id.split_once('!').ok_or_else(bad)?;
        if !user.contains('@') || tokenid.is_empty() || secret.is_empty() {
            return Err(bad());
        }
        Ok(Token {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The `Authorization` header value.
    fn header(&self) -> String {
        format!("PVEAPIToken={}={}", self.id, self.secret)
    }
}

/// The token with its secret hidden, for messages.
fn redact(s: &str) -> String {
    match s.split_once('=') {
        Some((id, _)) => format!("{id}=..."),
        None => s.to_string(),
    }
}

/// One Proxmox VE node's API.
pub struct Api {
    base: String,
    auth: String,
    /// `USER@REALM!TOKENID`, for messages (never the secret).
    pub token_id: String,
    client: Client,
    /// How often a running task is polled.
    pub poll: Duration,
    /// How long a task may run.
    pub task_timeout: Duration,
}

impl Api {
    /// `url` is the node's address (`https://pve.lan:8006`, with or without `/api2/json`).
    /// Proxmox nodes use self-signed certificates: pass the node's CA (`/etc/pve/pve-root-ca.pem`)
    /// as `ca`, or `insecure` to accept any certificate.
    pub fn new(
        url: &str,
        token: &Token,
        ca: Option<&Path>,
        insecure: bool,
    ) -> Result<Api, ApiError> {
        let url = url.trim_end_matches('/');
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ApiError::BadUrl(url.to_string()));
        }
        let base = if url.ends_with("/api2/json") {
            url.to_string()
        } else {
            format!("{url}/api2/json")
        };
        // Uploads of multi-GiB disks get their own timeout (`http::upload_timeout`).
        let mut b = crate::http::builder();
        if let Some(path) = ca {
            let pem = std::fs::read(path).map_err(|source| ApiError::Ca {
                path: path.to_path_buf(),
                source,
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(ApiError::Client)?;
            b = b.add_root_certificate(cert);
        }
        if insecure {
            b = b.danger_accept_invalid_certs(true);
        }
        Ok(Api {
            base,
            auth: token.header(),
            token_id: token.id.clone(),
            client: b.build().map_err(ApiError::Client)?,
            poll: Duration::from_secs(1),
            task_timeout: Duration::from_secs(30 * 60),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send(
        &self,
        method: &'static str,
        path: &str,
        rb: RequestBuilder,
    ) -> Result<Value, ApiError> {
        let mut rb = Some(rb.header("Authorization", &self.auth));
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            // Reads are idempotent: retried after a connection error or a stall.
            let Some(current) = rb.take() else {
                return Err(ApiError::Stalled {
                    method,
                    path: path.to_string(),
                    secs: crate::http::timeout().as_secs(),
                });
            };
            if method == "GET" && attempt < crate::http::ATTEMPTS {
                rb = current.try_clone();
            }
            match current.send() {
                Ok(r) => break r,
                Err(e)
                    if method == "GET"
                        && attempt < crate::http::ATTEMPTS
                        && (e.is_connect() || e.is_timeout()) =>
                {
                    crate::http::backoff(attempt);
                    continue;
                }
                Err(source) if source.is_timeout() => {
                    return Err(ApiError::Stalled {
                        method,
                        path: path.to_string(),
                        secs: crate::http::timeout().as_secs(),
                    });
                }
                Err(source) => {
                    return Err(ApiError::Transport {
                        method,
                        path: path.to_string(),
                        source,
                    });
                }
            }
        };
        let status = resp.status();
        // Proxmox puts its error text in the HTTP status line's reason phrase (pve-http-server
        // `AnyEvent.pm`, `error()`); newer nodes also put it in the JSON body's `message`.
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).trim().to_string())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
        let text =
            String::from_utf8_lossy(&crate::http::read_limited(resp, 16 << 20).unwrap_or_default())
                .into_owned();
        if !status.is_success() {
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    v.get("errors")
                        .filter(|e| !e.is_null())
                        .map(|e| e.to_string())
                        .or_else(|| {
                            v.get("message")
                                .and_then(|m| m.as_str())
                                .map(str::to_string)
                        })
                })
                .unwrap_or_else(|| text.trim().to_string());
            // The body's message repeats the status line on nodes that send both.
            let detail = if detail.trim() == reason || detail == "{\"data\":null}" {
                String::new()
            } else {
                detail
            };
            let message = [reason, detail]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            return Err(ApiError::Status {
                method,
                path: path.to_string(),
                status: status.as_u16(),
                message,
            });
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| ApiError::Body {
            method,
            path: path.to_string(),
            message: e.to_string(),
        })?;
        Ok(v.get("data").cloned().unwrap_or(Value::Null))
    }

    /// `GET path` (relative to `/api2/json`): the `data` of the answer.
    pub fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.send("GET", path, self.client.get(self.url(path)))
    }

    /// `GET path?query`.
    pub fn get_query(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ApiError> {
        self.send("GET", path, self.client.get(self.url(path)).query(query))
    }

    /// `PUT path` with form fields (synchronous config changes).
    pub fn put(&self, path: &str, form: &[(&str, String)]) -> Result<Value, ApiError> {
        self.send("PUT", path, self.client.put(self.url(path)).form(form))
    }

    /// `POST path` with form fields.
    pub fn post(&self, path: &str, form: &[(&str, String)]) -> Result<Value, ApiError> {
        self.send("POST", path, self.client.post(self.url(path)).form(form))
    }

    /// `DELETE path?query`.
    pub fn delete(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ApiError> {
        self.send(
            "DELETE",
            path,
            self.client.delete(self.url(path)).query(query),
        )
    }

    /// Uploads `file` as `filename` to `storage` on `node` (`content`: `iso` or `import`),
    /// with its sha256 for the node to check. Returns the task's UPID.
    pub fn upload(
        &self,
        node: &str,
        storage: &str,
        content: &str,
        file: &Path,
        filename: &str,
        sha256: &str,
    ) -> Result<String, ApiError> {
        let path = format!("/nodes/{node}/storage/{storage}/upload");
        let f = std::fs::File::open(file).map_err(|source| ApiError::File {
            path: file.to_path_buf(),
            source,
        })?;
        let len = f
            .metadata()
            .map_err(|source| ApiError::File {
                path: file.to_path_buf(),
                source,
            })?
            .len();
        // Streamed from the file: a disk image is never held in memory.
        let part = multipart::Part::reader_with_length(f, len)
            .file_name(filename.to_string())
            .mime_str("application/octet-stream")
            .map_err(ApiError::Client)?;
        let form = multipart::Form::new()
            .text("content", content.to_string())
            .text("checksum-algorithm", "sha256")
            .text("checksum", sha256.to_string())
            .part("filename", part);
        let v = self.send(
            "POST",
            &path,
            self.client
                .post(self.url(&path))
                .timeout(crate::http::upload_timeout(len))
                .multipart(form),
        )?;
        upid(&v, "POST", &path)
    }

    /// Polls the task `upid` on `node` until it stops; an exit status other than `OK` is an
    /// error carrying the end of the task's log.
    ///
    /// A task that ends `WARNINGS: N` succeeded (pve-common `RESTEnvironment.pm`, `fork_worker`:
    /// exit code 0); its `WARN:` log lines are returned.
    pub fn wait(&self, node: &str, upid: &str) -> Result<Vec<String>, ApiError> {
        let started = Instant::now();
        let status_path = format!("/nodes/{node}/tasks/{}/status", encode(upid));
        loop {
            let v = self.get(&status_path)?;
            if v.get("status").and_then(|s| s.as_str()) == Some("stopped") {
                let exit = v
                    .get("exitstatus")
                    .and_then(|s| s.as_str())
                    .unwrap_or("unknown")
                    .to_string();
                if exit == "OK" {
                    return Ok(Vec::new());
                }
                let text: Vec<String> = self
                    .get(&format!("/nodes/{node}/tasks/{}/log", encode(upid)))
                    .ok()
                    .and_then(|l| l.as_array().cloned())
                    .map(|lines| {
                        lines
                            .iter()
                            .filter_map(|l| l.get("t").and_then(|t| t.as_str()))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                if exit.starts_with("WARNINGS: ") {
                    let warnings: Vec<String> = text
                        .iter()
                        .filter(|l| l.starts_with("WARN: "))
                        .cloned()
                        .collect();
                    return Ok(if warnings.is_empty() {
                        vec![exit]
                    } else {
                        warnings
                    });
                }
                let log = {
                    {
                        let tail = &text[text.len().saturating_sub(5)..];
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", tail.join(" | "))
                        }
                    }
                };
                return Err(ApiError::Task {
                    upid: upid.to_string(),
                    status: exit,
                    log,
                });
            }
            if started.elapsed() > self.task_timeout {
                return Err(ApiError::TaskTimeout {
                    upid: upid.to_string(),
                    secs: self.task_timeout.as_secs(),
                });
            }
            std::thread::sleep(self.poll);
        }
    }
}

/// The UPID a task-starting call answers with.
pub fn upid(v: &Value, method: &'static str, path: &str) -> Result<String, ApiError> {
    v.as_str()
        .filter(|s| s.starts_with("UPID:"))
        .map(str::to_string)
        .ok_or_else(|| ApiError::Body {
            method,
            path: path.to_string(),
            message: format!("expected a task id (UPID), got {v}"),
        })
}

/// Percent-encodes everything but unreserved characters: a path segment (UPIDs carry `:`,
/// `@` and `!`), or the `sshkeys` value, which the API wants encoded inside the form.
pub fn encode(s: &str) -> String {
    crate::http::percent_encode(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = Token::parse("root@pam!imgbuild=abc-123").unwrap();
        assert_eq!(t.id, "root@pam!imgbuild");
        assert_eq!(t.header(), "PVEAPIToken=root@pam!imgbuild=abc-123");
        assert!(!format!("{t:?}").contains("abc"));
        for bad in ["root@pam=abc", "root!x=abc", "root@pam!x=", "nothing"] {
            let e = Token::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("abc"), "{e}");
        }
    }

    #[test]
    fn upid_encoding() {
        assert_eq!(
            encode("UPID:pve:0001:qmcreate:100:root@pam!t:"),
            "UPID%3Apve%3A0001%3Aqmcreate%3A100%3Aroot%40pam%21t%3A"
        );
    }
}
