//! Registry credentials (`~/.docker/config.json`, `IMGBUILD_REGISTRY_USER`/`_PASSWORD`) and
//! `WWW-Authenticate` challenges. Secrets never reach a `Debug` or `Display`.

use std::fmt;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> PathBuf {
    if let Some(d) = &crate::settings::get().docker_config_dir {
        return d.join("config.json");
    }
    crate::fsutil::home_dir()
        .join(".docker")
        .join("config.json")
}

/// The keys Docker uses for a registry in `auths`.
fn keys(registry: &str) -> Vec<String> {
    let mut k = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == "docker.io" {
        k.push("https://index.docker.io/v1/".into());
        k.push("index.docker.io".into());
    }
    k
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the Docker config {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the Docker config {path} is not a JSON object ({message}): fix it by hand; imgbuild \
         does not rewrite a file it cannot read, so the credentials in it are kept"
    )]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write the Docker config {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the credential helper docker-credential-{helper} failed to {action}: {message}")]
    Helper {
        helper: String,
        action: &'static str,
        message: String,
    },
}

/// The Docker config as a JSON object; `None` when the file does not exist.
fn read_config(
    path: &std::path::Path,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, AuthError> {
    let bytes = match crate::fsutil::read_bounded(path, 4 << 20) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AuthError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(AuthError::Invalid {
            path: path.to_path_buf(),
            message: "not an object".into(),
        }),
        Err(e) => Err(AuthError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// The registry's own credential helper (`credHelpers`).
fn registry_helper(
    config: &serde_json::Map<String, serde_json::Value>,
    registry: &str,
) -> Option<String> {
    let helpers = config.get("credHelpers")?.as_object()?;
    keys(registry)
        .iter()
        .find_map(|k| helpers.get(k).and_then(|v| v.as_str()).map(str::to_string))
}

/// The credential helper Docker would use for `registry`: `credHelpers` first, then
/// `credsStore`.
fn helper_for(
    config: &serde_json::Map<String, serde_json::Value>,
    registry: &str,
) -> Option<String> {
    registry_helper(config, registry).or_else(|| {
        config
            .get("credsStore")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    })
}

/// Runs `docker-credential-HELPER ACTION` with `input` on stdin; its stdout. Bounded by the
/// network timeout (a helper may ask a keychain over D-Bus).
fn run_helper(helper: &str, action: &'static str, input: &str) -> Result<String, AuthError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let fail = |message: String| AuthError::Helper {
        helper: helper.to_string(),
        action,
        message,
    };
    if !helper
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(fail("not a helper name".into()));
    }
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let deadline = std::time::Instant::now() + crate::http::timeout();
    loop {
        match child.try_wait().map_err(|e| fail(e.to_string()))? {
            Some(_) => break,
            None if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail("no answer within the network timeout".into()));
            }
            None => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        // Helpers print their reason on stdout ("credentials not found in native keychain").
        return Err(fail(text.trim().to_string()));
    }
    Ok(text)
}

/// Credentials for `registry`: the environment first, then the Docker config file (its
/// `credHelpers` for the registry, its `auths`, then its `credsStore`).
pub fn lookup(registry: &str) -> Option<Credentials> {
    if let Some((u, p)) = &crate::settings::get().registry_credentials {
        return Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        });
    }
    let config = read_config(&docker_config_path()).ok()??;
    let from_auths = || {
        let auths = config.get("auths")?.as_object()?;
        keys(registry).iter().find_map(|k| {
            let auth = auths.get(k)?.get("auth")?.as_str()?;
            let raw = String::from_utf8(STANDARD.decode(auth).ok()?).ok()?;
            let (u, p) = raw.split_once(':')?;
            Some(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            })
        })
    };
    let from_helper = |helper: &str| {
        let text = run_helper(helper, "get", registry).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(Credentials {
            username: v.get("Username")?.as_str()?.to_string(),
            password: v.get("Secret")?.as_str()?.to_string(),
        })
    };
    if let Some(h) = registry_helper(&config, registry) {
        return from_helper(&h);
    }
    from_auths().or_else(|| helper_for(&config, registry).and_then(|h| from_helper(&h)))
}

/// Stores credentials where Docker would: the registry's credential helper (`credHelpers`,
/// else `credsStore`), else `auths` in the Docker config, created 0600 and written atomically,
/// everything else in it kept. A config that cannot be parsed is never rewritten.
pub fn store(registry: &str, creds: &Credentials) -> Result<PathBuf, AuthError> {
    let path = docker_config_path();
    let mut config = read_config(&path)?.unwrap_or_default();
    if let Some(helper) = helper_for(&config, registry) {
        let input = serde_json::json!({
            "ServerURL": registry,
            "Username": creds.username,
            "Secret": creds.password,
        })
        .to_string();
        run_helper(&helper, "store", &input)?;
        return Ok(PathBuf::from(format!("docker-credential-{helper}")));
    }
    let auth = STANDARD.encode(format!("{}:{}", creds.username, creds.password));
    let auths = config
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}));
    if !auths.is_object() {
        *auths = serde_json::json!({});
    }
    auths[registry] = serde_json::json!({ "auth": auth });
    let bytes = serde_json::to_vec_pretty(&serde_json::Value::Object(config)).map_err(|e| {
        AuthError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        }
    })?;
    crate::fsutil::write_atomic_mode(&path, &bytes, 0o600).map_err(|source| AuthError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    // key="value" pairs; values may contain commas (scopes), so split on `",`.
    let mut rest = params.trim();
    while let Some((k, after)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim();
        let (val, next) = match after.strip_prefix('"') {
            Some(q) => q.split_once('"').unwrap_or((q, "")),
            None => after.split_once(',').unwrap_or((after, "")),
        };
        match k {
            "realm" => realm = Some(val.to_string()),
            "service" => service = Some(val.to_string()),
            "scope" => scope = Some(val.to_string()),
            _ => {}
        }
        rest = next.trim_start_matches(',').trim();
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
        scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into())
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        let c = Credentials {
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
