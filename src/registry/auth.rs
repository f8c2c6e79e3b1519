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
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("config.json");
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

/// Credentials for `registry`: the environment first, then the Docker config file.
pub fn lookup(registry: &str) -> Option<Credentials> {
    if let (Ok(u), Ok(p)) = (
        std::env::var("IMGBUILD_REGISTRY_USER"),
        std::env::var("IMGBUILD_REGISTRY_PASSWORD"),
    ) {
        return Some(Credentials {
            username: u,
            password: p,
        });
    }
    let text = std::fs::read_to_string(docker_config_path()).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = v.get("auths")?.as_object()?;
    keys(registry).iter().find_map(|k| {
        let auth = auths.get(k)?.get("auth")?.as_str()?;
        let raw = String::from_utf8(STANDARD.decode(auth).ok()?).ok()?;
        let (u, p) = raw.split_once(':')?;
        Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        })
    })
}

/// Stores credentials in the Docker config file (mode 0600), keeping everything else in it.
pub fn store(registry: &str, creds: &Credentials) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = docker_config_path();
    let mut v: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    let auth = STANDARD.encode(format!("{}:{}", creds.username, creds.password));
    if !v.get("auths").is_some_and(|a| a.is_object()) {
        v["auths"] = serde_json::json!({});
    }
    v["auths"][registry] = serde_json::json!({ "auth": auth });
    let bytes = serde_json::to_vec_pretty(&v).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&path, &bytes)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
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
