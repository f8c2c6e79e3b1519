//! The HTTP side of the distribution API: TLS and CA choice, auth challenges (basic and
//! bearer tokens), and retries with backoff on connection errors, 408, 429 and 5xx.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::{Method, StatusCode, header};

use super::RegistryError;
use super::auth::{self, Challenge, Credentials};
use super::reference::Reference;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Extra CA certificates (PEM), from `--ca-cert`.
    pub ca_certs: Vec<PathBuf>,
    /// Hosts (`host` or `host:port`) to reach over plain HTTP.
    pub insecure: Vec<String>,
    /// Where Docker keeps per-registry CAs (`HOST:PORT/ca.crt`); default `/etc/docker/certs.d`.
    pub certs_d: Option<PathBuf>,
}

const ATTEMPTS: u32 = 5;

/// A client for one registry, scoped to the repositories it works on.
pub struct RegistryClient {
    http: Client,
    pub base: String,
    host: String,
    creds: Option<Credentials>,
    /// `Authorization` value that last worked.
    auth: Mutex<Option<String>>,
    /// Token scope: `repository:NAME:pull,push` for each repository used.
    scope: String,
}

fn http_err(action: &str, url: &str) -> impl FnOnce(reqwest::Error) -> RegistryError {
    let (action, url) = (action.to_string(), url.to_string());
    move |source| {
        if source.is_timeout() {
            RegistryError::Stalled {
                action,
                url: crate::http::redact(&url),
                secs: crate::http::timeout().as_secs(),
            }
        } else {
            RegistryError::Http {
                action,
                url: crate::http::redact(&url),
                source,
            }
        }
    }
}

impl RegistryClient {
    /// A client for `r`'s registry, with push and pull on `r`'s repository and pull on `also`.
    pub fn new(
        r: &Reference,
        opts: &ClientOptions,
        push: bool,
        also: &[String],
    ) -> Result<Self, RegistryError> {
        let host = r.api_host().to_string();
        let mut builder = crate::http::builder().pool_max_idle_per_host(8);
        let certs_d = opts
            .certs_d
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/docker/certs.d"));
        let mut cas: Vec<PathBuf> = opts.ca_certs.clone();
        let docker_ca = certs_d.join(&host).join("ca.crt");
        if docker_ca.is_file() {
            cas.push(docker_ca);
        }
        for ca in &cas {
            let pem = std::fs::read(ca).map_err(|source| RegistryError::Io {
                action: "read CA certificate",
                path: ca.clone(),
                source,
            })?;
            let cert =
                reqwest::Certificate::from_pem(&pem).map_err(|source| RegistryError::Http {
                    action: "load CA certificate".into(),
                    url: ca.display().to_string(),
                    source,
                })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(http_err("create HTTP client for", &host))?;
        let name = r.host_name();
        let loopback = name == "127.0.0.1" || name == "localhost" || name == "::1";
        let plain = if opts.insecure.iter().any(|h| h == &host || h == name) {
            true
        } else if loopback && cas.is_empty() {
            // Like Docker, a loopback registry may speak plain HTTP: probe HTTPS first, use
            // HTTP if the server does not speak TLS, but never skip verifying a certificate.
            match http
                .get(format!("https://{host}/v2/"))
                .timeout(Duration::from_secs(5))
                .send()
            {
                Ok(_) => false,
                Err(e) if is_certificate_error(&e) => {
                    return Err(RegistryError::Certificate {
                        host,
                        detail: root_cause(&e),
                    });
                }
                Err(_) => true,
            }
        } else {
            false
        };
        let scheme = if plain { "http" } else { "https" };
        let actions = if push { "pull,push" } else { "pull" };
        let mut scope = format!("repository:{}:{actions}", r.repository);
        for repo in also {
            scope.push_str(&format!(" repository:{repo}:pull"));
        }
        Ok(RegistryClient {
            http,
            base: format!("{scheme}://{host}"),
            creds: auth::lookup(&r.registry),
            host,
            auth: Mutex::new(None),
            scope,
        })
    }

    /// Checks `creds` against `registry`'s `/v2/`, answering its challenge (basic, or a
    /// bearer token from its token service) as a push would: `login` stores nothing else.
    pub fn check_login(
        registry: &str,
        creds: &Credentials,
        opts: &ClientOptions,
    ) -> Result<(), RegistryError> {
        let r = Reference::parse(&format!("{registry}/imgbuild-login-check"))?;
        let mut client = RegistryClient::new(&r, opts, false, &[])?;
        client.creds = Some(creds.clone());
        client.scope = String::new();
        let url = client.url("/v2/");
        client.send("log in to", Method::GET, &url, &|rb| Ok(rb))?;
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Resolves a `Location` header (absolute or relative) against the registry.
    pub fn resolve(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            self.url(location)
        }
    }

    /// Sends a request built by `build` (called again for each retry), handling auth
    /// challenges and retrying transient failures. Returns any response that is not a
    /// transient failure; the caller judges its status.
    pub fn send(
        &self,
        action: &str,
        method: Method,
        url: &str,
        build: &dyn Fn(RequestBuilder) -> Result<RequestBuilder, RegistryError>,
    ) -> Result<Response, RegistryError> {
        let mut authed_once = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut rb = self.http.request(method.clone(), url);
            if let Some(a) = self.auth.lock().ok().and_then(|g| g.clone()) {
                rb = rb.header(header::AUTHORIZATION, a);
            }
            let result = build(rb)?.send();
            let resp = match result {
                Ok(r) => r,
                Err(e)
                    if attempt < ATTEMPTS
                        && (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()) =>
                {
                    backoff(attempt);
                    continue;
                }
                Err(e) if is_certificate_error(&e) => {
                    return Err(RegistryError::Certificate {
                        host: self.host.clone(),
                        detail: root_cause(&e),
                    });
                }
                Err(e) => return Err(http_err(action, url)(e)),
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !authed_once {
                authed_once = true;
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(auth::parse_challenge);
                let value = self.authenticate(challenge)?;
                if let Ok(mut g) = self.auth.lock() {
                    *g = Some(value);
                }
                attempt -= 1;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(RegistryError::Denied {
                    host: self.host.clone(),
                    status: status.as_u16(),
                    with_credentials: self.creds.is_some(),
                });
            }
            let transient = status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error();
            if transient && attempt < ATTEMPTS {
                backoff(attempt);
                continue;
            }
            return Ok(resp);
        }
    }

    /// Answers a challenge: basic credentials, or a bearer token from the realm.
    fn authenticate(&self, challenge: Option<Challenge>) -> Result<String, RegistryError> {
        let denied = || RegistryError::Denied {
            host: self.host.clone(),
            status: 401,
            with_credentials: self.creds.is_some(),
        };
        match challenge {
            Some(Challenge::Basic) | None => self
                .creds
                .as_ref()
                .map(Credentials::basic_header)
                .ok_or_else(denied),
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let mut query: Vec<(&str, String)> = Vec::new();
                if let Some(s) = service {
                    query.push(("service", s));
                }
                let scopes = scope
                    .map(|s| format!("{s} {}", self.scope))
                    .unwrap_or_else(|| self.scope.clone());
                for s in scopes.split(' ').filter(|s| !s.is_empty()) {
                    query.push(("scope", s.to_string()));
                }
                let mut url = realm.clone();
                for (i, (k, v)) in query.iter().enumerate() {
                    url.push(if i == 0 && !realm.contains('?') {
                        '?'
                    } else {
                        '&'
                    });
                    url.push_str(&format!("{k}={}", crate::http::percent_encode(v)));
                }
                let mut rb = self.http.get(&url);
                if let Some(c) = &self.creds {
                    rb = rb.header(header::AUTHORIZATION, c.basic_header());
                }
                let resp = rb.send().map_err(http_err("get a token from", &realm))?;
                if !resp.status().is_success() {
                    return Err(denied());
                }
                let text = crate::http::read_limited(resp, 1 << 20).map_err(|source| {
                    RegistryError::Io {
                        action: "read the token from",
                        path: realm.clone().into(),
                        source,
                    }
                })?;
                let v: serde_json::Value = serde_json::from_slice(&text).map_err(|_| denied())?;
                let token = v
                    .get("token")
                    .or_else(|| v.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(denied)?;
                Ok(format!("Bearer {token}"))
            }
        }
    }
}

/// True when `e` failed on the server's certificate (rather than on TLS itself).
pub fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = format!("{err:?}");
        if s.contains("InvalidCertificate")
            || s.contains("UnknownIssuer")
            || s.contains("certificate")
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The innermost error's message.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn backoff(attempt: u32) {
    std::thread::sleep(Duration::from_millis(100 * (1 << attempt.min(6))));
}

/// The first `errors[].message` of a registry error body, for messages.
pub fn error_message(resp: Response) -> String {
    let status = resp.status();
    let text =
        String::from_utf8_lossy(&crate::http::read_limited(resp, 64 << 10).unwrap_or_default())
            .into_owned();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string())
}
