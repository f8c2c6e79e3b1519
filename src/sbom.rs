//! The image's software bill of materials as an SPDX 2.3 JSON document: every Debian package
//! the image holds (the base image's, from its dpkg status, and those imgbuild installed, from
//! the lock, with their .deb sha256), the pip distributions and the downloads, each with
//! a package URL, related to the image by `CONTAINS`. Deterministic: the creation date is
//! `SOURCE_DATE_EPOCH` and the document namespace is derived from the manifest digest.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::apt::universe;
use crate::base::BaseImage;
use crate::cache::Cache;
use crate::digest::Digest;
use crate::lock::Lock;
use crate::lower::LowerFs;

/// The media type of an SPDX JSON document (as an OCI artifact type and layer type).
pub const MEDIA_TYPE: &str = "application/spdx+json";

/// A Debian package of the base image: name, version, architecture.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BasePackage {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// Why the base image's packages cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum BaseStatusError {
    #[error("cannot read the base image's layers")]
    Layers(#[source] std::io::Error),
    #[error("the base image's /var/lib/dpkg/status cannot be read")]
    Status(#[source] crate::apt::universe::ParagraphError),
}

/// The packages the base image's dpkg status lists as installed (none for scratch or an image
/// without dpkg); an error when the image has a status that cannot be read.
pub fn base_packages(cache: &Cache, base: &BaseImage) -> Result<Vec<BasePackage>, BaseStatusError> {
    // Read once per base image: the list is kept in the cache under the layers' digests.
    let ids: Vec<&str> = base.layers.iter().map(|l| l.digest.as_str()).collect();
    let key = crate::digest::Digest::of(format!("base-packages\n{}", ids.join("\n")).as_bytes());
    if let Some(list) = cache
        .fact(&key)
        .and_then(|b| serde_json::from_slice::<Vec<BasePackage>>(&b).ok())
    {
        return Ok(list);
    }
    let list = read_base_packages(cache, base)?;
    if let Ok(bytes) = serde_json::to_vec(&list) {
        // Only a shortcut: a build whose cache cannot take it reads the layers next time too.
        let _ = cache.put_fact(&key, &bytes);
    }
    Ok(list)
}

fn read_base_packages(
    cache: &Cache,
    base: &BaseImage,
) -> Result<Vec<BasePackage>, BaseStatusError> {
    let mut lower = LowerFs::default();
    lower
        .advance(cache, &base.layers)
        .map_err(BaseStatusError::Layers)?;
    let Some(status) = lower.read(b"var/lib/dpkg/status") else {
        return Ok(Vec::new());
    };
    let status = String::from_utf8_lossy(status).into_owned();
    Ok(universe::installed(&status)
        .map_err(BaseStatusError::Status)?
        .into_iter()
        .map(|p| BasePackage {
            name: p.name.clone(),
            version: p.version.to_string(),
            arch: p.arch.clone(),
        })
        .collect())
}

/// An SPDX id: letters, digits, `.` and `-` only.
fn spdx_id(kind: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{kind}-{clean}")
}

/// Percent-encodes a package URL component.
fn purl_part(s: &str) -> String {
    crate::http::percent_encode(s)
}

/// Whether SPDX accepts `url` as a download location: its pattern wants a host name with a
/// top-level domain (so `http://127.0.0.1:8080/...` is not one).
fn spdx_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let host = rest.split(['/', ':', '?']).next().unwrap_or("");
    let tld = host.rsplit('.').next().unwrap_or("");
    ["http", "https", "ftp", "sftp"].contains(&scheme)
        && host.contains('.')
        && (2..=5).contains(&tld.len())
        && tld.chars().all(|c| c.is_ascii_lowercase())
}

fn deb_purl(name: &str, version: &str, arch: &str) -> String {
    format!(
        "pkg:deb/debian/{}@{}?arch={}",
        purl_part(name),
        purl_part(version),
        purl_part(arch)
    )
}

fn package(
    id: String,
    name: &str,
    version: Option<&str>,
    location: &str,
    sha256: Option<&Digest>,
    purl: Option<String>,
) -> Value {
    let mut p = json!({
        "SPDXID": id,
        "name": name,
        "downloadLocation": if spdx_url(location) { location } else { "NOASSERTION" },
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "supplier": "NOASSERTION",
    });
    if let Some(v) = version {
        p["versionInfo"] = json!(v);
    }
    if !spdx_url(location) && location.contains("://") {
        p["sourceInfo"] = json!(format!("downloaded from {location}"));
    }
    if let Some(d) = sha256 {
        p["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": d.hex() }]);
    }
    if let Some(purl) = purl {
        p["externalRefs"] = json!([{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": purl,
        }]);
    }
    p
}

/// The SPDX document of image `name` with manifest `manifest`.
pub fn document(
    name: &str,
    manifest: &Digest,
    created: &str,
    lock: Option<&Lock>,
    base: &[BasePackage],
    downloads: &[(String, Digest)],
) -> Value {
    let image_id = "SPDXRef-Image".to_string();
    let mut packages = vec![{
        let mut p = package(
            image_id.clone(),
            name,
            Some(manifest.as_str()),
            "NOASSERTION",
            Some(manifest),
            Some(format!(
                "pkg:oci/{}@{}",
                purl_part(name),
                purl_part(manifest.as_str())
            )),
        );
        p["primaryPackagePurpose"] = json!("CONTAINER");
        p
    }];
    // Debian packages: the lock's (what imgbuild installed or upgraded) over the base's.
    // Keyed by name and architecture: a multi-arch image has `libc6` for amd64 and i386.
    let mut debs: BTreeMap<(String, String), Value> = BTreeMap::new();
    for b in base {
        let purl = deb_purl(&b.name, &b.version, &b.arch);
        debs.insert(
            (b.name.clone(), b.arch.clone()),
            package(
                spdx_id("deb", &format!("{}-{}", b.name, b.arch)),
                &b.name,
                Some(&b.version),
                "NOASSERTION",
                None,
                Some(purl),
            ),
        );
    }
    if let Some(l) = lock {
        for p in &l.packages {
            let purl = deb_purl(&p.name, &p.version, &p.arch);
            debs.insert(
                (p.name.clone(), p.arch.clone()),
                package(
                    spdx_id("deb", &format!("{}-{}", p.name, p.arch)),
                    &p.name,
                    Some(&p.version),
                    &p.url,
                    Some(&p.sha256),
                    Some(purl),
                ),
            );
        }
        packages.extend(debs.into_values());
        for p in &l.pip {
            packages.push(package(
                spdx_id("pypi", &p.name),
                &p.name,
                Some(&p.version),
                &p.url,
                Some(&p.sha256),
                Some(format!(
                    "pkg:pypi/{}@{}",
                    purl_part(&p.name.to_lowercase()),
                    purl_part(&p.version)
                )),
            ));
        }
    } else {
        packages.extend(debs.into_values());
    }
    for (i, (url, sha256)) in downloads.iter().enumerate() {
        let file = url.rsplit('/').next().unwrap_or(url);
        packages.push(package(
            spdx_id("download", &format!("{i}-{file}")),
            file,
            None,
            url,
            Some(sha256),
            None,
        ));
    }
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    for p in &packages[1..] {
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": p["SPDXID"],
        }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": format!(
            "https://imgbuild.invalid/spdx/{}/{}",
            purl_part(name),
            manifest.hex()
        ),
        "creationInfo": {
            "created": created,
            "creators": [concat!("Tool: imgbuild-", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn download_locations_spdx_accepts() {
        assert!(super::spdx_url("http://deb.debian.org/debian/pool/a.deb"));
        assert!(super::spdx_url("https://go.dev:443/dl/go.tar.gz"));
        assert!(!super::spdx_url("http://127.0.0.1:8080/a.deb"));
        assert!(!super::spdx_url("file:///x"));
    }

    #[test]
    fn ids_and_purls_are_clean() {
        assert_eq!(
            super::spdx_id("deb", "libc6:amd64+x"),
            "SPDXRef-deb-libc6-amd64-x"
        );
        assert_eq!(super::purl_part("2:1.0~rc1+b1"), "2%3A1.0~rc1%2Bb1");
    }
}
