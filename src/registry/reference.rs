//! Image references, parsed as Docker does: `ubuntu:22.04` is
//! `docker.io/library/ubuntu:22.04`; `host:port/repo:tag`; `repo@sha256:...`.

use std::fmt;

use crate::digest::Digest;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as written (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
#[error("`{reference}` is not an image reference: {why}")]
pub struct BadReference {
    pub reference: String,
    pub why: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self, BadReference> {
        // `user:password@host/repo`: refused without echoing what came before the `@`.
        let first = s.split('/').next().unwrap_or(s);
        if let Some((_, after)) = first.rsplit_once('@')
            && (s.contains("://")
                || !(after.starts_with("sha256:") || after.starts_with("sha512:")))
        {
            let shown = s.rsplit_once("@").map_or("", |(_, h)| h);
            return Err(BadReference {
                reference: format!("***@{shown}"),
                why: "it holds credentials, which would end up in logs and shell history; \
                      run `imgbuild login HOST` (stored in ~/.docker/config.json) instead"
                    .into(),
            });
        }
        let bad = |why: &str| BadReference {
            reference: s.to_string(),
            why: why.to_string(),
        };
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|e| bad(&e.to_string()))?)),
            None => (s, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path)
            }
            _ => ("docker.io".to_string(), rest),
        };
        let (path, tag) = match path.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, Some(t.to_string())),
            _ => (path, None),
        };
        if path.is_empty() {
            return Err(bad("no repository"));
        }
        let ok_path = path.split('/').all(|c| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
        });
        if !ok_path {
            return Err(bad(
                "repository names are lowercase letters, digits, `.`, `_`, `-` and `/`",
            ));
        }
        if let Some(t) = &tag {
            let ok = t.len() <= 128
                && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !ok {
                return Err(bad("invalid tag"));
            }
        }
        let repository = if registry == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host that serves the API (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// The manifest reference: the digest if given, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// `HOST` without a port, for TLS and insecure-registry decisions.
    pub fn host_name(&self) -> &str {
        self.api_host()
            .rsplit_once(':')
            .map_or(self.api_host(), |(h, _)| h)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_style_references() {
        let r = Reference::parse("ubuntu:22.04").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/ubuntu", Some("22.04"))
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = Reference::parse("127.0.0.1:5000/team/app").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", Some("latest"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost/x@{d}")).unwrap();
        assert_eq!(r.digest.unwrap().to_string(), d);
        assert_eq!(r.tag, None);
        assert!(Reference::parse("UPPER/case").is_err());
        assert_eq!(
            Reference::parse("ecshreve/coderall:eric")
                .unwrap()
                .to_string(),
            "docker.io/ecshreve/coderall:eric"
        );
    }
}
