//! Sigstore image signatures in the form the container tools read (cosign, skopeo, podman):
//! ECDSA P-256 keys in the cosign file format, the "simple signing" payload naming a manifest
//! digest and a docker reference, and the signature over it. Where a signature is stored (the
//! `sha256-<hex>.sig` attachment in a registry) is `registry::signatures`' business.
//!
//! The private key file is what go-securesystemslib's `encrypted` package writes inside a PEM
//! block `ENCRYPTED COSIGN PRIVATE KEY`: JSON naming scrypt (the key derivation) and NaCl
//! secretbox (the cipher) with their parameters, and the PKCS#8 key as the ciphertext. No
//! crate reads that envelope, so it is written here on RustCrypto's primitives (`scrypt`,
//! `crypto_secretbox`, `p256`).
//!
//! ```
//! use imgbuild::sigstore::{self, Claim};
//! let pair = sigstore::generate(b"correct horse").unwrap();
//! let key = sigstore::SigningKey::from_pem(pair.private_pem.as_bytes(), b"correct horse").unwrap();
//! let claim = Claim {
//!     manifest_digest: "sha256:".to_string() + &"ab".repeat(32),
//!     reference: "registry.example:5000/app:1".into(),
//! };
//! let (payload, signature) = key.sign(&claim);
//! let public = sigstore::PublicKey::from_pem(pair.public_pem.as_bytes()).unwrap();
//! assert_eq!(public.verify(&payload, &signature).unwrap(), claim);
//! ```

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

/// The media type of a signature payload (a layer of the attachment manifest).
pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation on that layer carrying the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of every payload.
const PAYLOAD_TYPE: &str = "cosign container image signature";
/// The PEM label imgbuild writes: the older of the two cosign accepts, and the only one the
/// container tools before 2023 (skopeo 1.9 in Debian 12) read.
const PRIVATE_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// The label cosign writes since 2.0; read too.
const PRIVATE_LABEL_NEW: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// scrypt's parameters for a new key: go-securesystemslib's defaults (N = 2^15, r = 8, p = 1).
const SCRYPT_LOG_N: u8 = 15;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;
/// The most memory a key file may make scrypt use (128 * r * N bytes): a hostile file cannot
/// ask for gigabytes.
const SCRYPT_MAX_MEMORY: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SigstoreError {
    #[error("not a sigstore private key: {0}")]
    BadPrivateKey(String),
    #[error("the password does not open this private key (IMGBUILD_KEY_PASSWORD)")]
    WrongPassword,
    #[error("not an ECDSA P-256 public key in PEM: {0}")]
    BadPublicKey(String),
    #[error(
        "the signature does not verify with the key (payload or signature altered, or another key)"
    )]
    BadSignature,
    #[error("not a signature payload: {0}")]
    BadPayload(String),
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

/// What a signature claims: this manifest digest is the image known as this reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub manifest_digest: String,
    /// A docker reference, `HOST[:PORT]/REPO[:TAG]`.
    pub reference: String,
}

/// A new key pair, both halves in PEM.
pub struct KeyPair {
    /// Encrypted with the password given to [`generate`].
    pub private_pem: String,
    pub public_pem: String,
}

/// A private key, opened.
pub struct SigningKey(p256::ecdsa::SigningKey);

/// A public key.
#[derive(Debug, Clone)]
pub struct PublicKey(p256::ecdsa::VerifyingKey);

#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: KdfParams,
    salt: String,
}

#[derive(Serialize, Deserialize)]
struct KdfParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

/// A new ECDSA P-256 key pair; the private half encrypted with `password`.
pub fn generate(password: &[u8]) -> Result<KeyPair, SigstoreError> {
    let key = p256::ecdsa::SigningKey::random(&mut OsRng);
    let der = key
        .to_pkcs8_der()
        .map_err(|e| SigstoreError::Generate(e.to_string()))?;
    let mut salt = [0u8; 32];
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut salt);
    OsRng.fill_bytes(&mut nonce);
    let secret = derive(password, &salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)?;
    let ciphertext = XSalsa20Poly1305::new(&secret.into())
        .encrypt(Nonce::from_slice(&nonce), der.as_bytes())
        .map_err(|e| SigstoreError::Generate(e.to_string()))?;
    let envelope = Envelope {
        kdf: Kdf {
            name: "scrypt".into(),
            params: KdfParams {
                n: 1 << SCRYPT_LOG_N,
                r: SCRYPT_R,
                p: SCRYPT_P,
            },
            salt: B64.encode(salt),
        },
        cipher: Cipher {
            name: "nacl/secretbox".into(),
            nonce: B64.encode(nonce),
        },
        ciphertext: B64.encode(ciphertext),
    };
    let json = serde_json::to_vec(&envelope).map_err(|e| SigstoreError::Generate(e.to_string()))?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| SigstoreError::Generate(e.to_string()))?;
    Ok(KeyPair {
        private_pem: pem_encode(PRIVATE_LABEL, &json),
        public_pem,
    })
}

fn derive(
    password: &[u8],
    salt: &[u8],
    log_n: u8,
    r: u32,
    p: u32,
) -> Result<[u8; 32], SigstoreError> {
    let params = scrypt::Params::new(log_n, r, p, 32)
        .map_err(|e| SigstoreError::BadPrivateKey(format!("scrypt parameters: {e}")))?;
    let mut out = [0u8; 32];
    scrypt::scrypt(password, salt, &params, &mut out)
        .map_err(|e| SigstoreError::BadPrivateKey(format!("scrypt: {e}")))?;
    Ok(out)
}

/// PEM with 64-column base64 lines (RFC 7468).
fn pem_encode(label: &str, bytes: &[u8]) -> String {
    let b64 = B64.encode(bytes);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The label and contents of the first PEM block in `text`.
fn pem_decode(text: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(text).ok()?;
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + "-----BEGIN ".len()..];
    let (label, rest) = rest.split_once("-----")?;
    let end_marker = format!("-----END {label}-----");
    let body = &rest[..rest.find(&end_marker)?];
    // Headers (`Proc-Type: ...`) are not part of these files; a line with a colon is refused
    // by the base64 decoder below.
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = B64.decode(b64).ok()?;
    Some((label.to_string(), bytes))
}

/// Checks that `pem` is an encrypted sigstore private key, without opening it (no password).
pub fn check_private_pem(pem: &[u8]) -> Result<(), SigstoreError> {
    envelope(pem).map(drop)
}

fn envelope(pem: &[u8]) -> Result<Envelope, SigstoreError> {
    let (label, json) =
        pem_decode(pem).ok_or_else(|| SigstoreError::BadPrivateKey("no PEM block".into()))?;
    if label != PRIVATE_LABEL && label != PRIVATE_LABEL_NEW {
        return Err(SigstoreError::BadPrivateKey(format!(
            "the PEM block is `{label}`, not `{PRIVATE_LABEL}`"
        )));
    }
    serde_json::from_slice(&json)
        .map_err(|e| SigstoreError::BadPrivateKey(format!("the envelope: {e}")))
}

impl SigningKey {
    /// Opens a private key file's contents with `password`.
    pub fn from_pem(pem: &[u8], password: &[u8]) -> Result<Self, SigstoreError> {
        let bad = |m: &str| SigstoreError::BadPrivateKey(m.to_string());
        let env = envelope(pem)?;
        if env.kdf.name != "scrypt" || env.cipher.name != "nacl/secretbox" {
            return Err(SigstoreError::BadPrivateKey(format!(
                "key derivation `{}` and cipher `{}` (imgbuild reads scrypt + nacl/secretbox)",
                env.kdf.name, env.cipher.name
            )));
        }
        let KdfParams { n, r, p } = env.kdf.params;
        if !n.is_power_of_two() || n < 2 || r == 0 || p == 0 || p > 16 {
            return Err(bad("scrypt parameters out of range"));
        }
        if 128u64.saturating_mul(r as u64).saturating_mul(n) > SCRYPT_MAX_MEMORY {
            return Err(bad("scrypt parameters ask for more than 256 MiB"));
        }
        let salt = B64
            .decode(&env.kdf.salt)
            .map_err(|_| bad("the salt is not base64"))?;
        let nonce = B64
            .decode(&env.cipher.nonce)
            .map_err(|_| bad("the nonce is not base64"))?;
        if nonce.len() != 24 {
            return Err(bad("the nonce is not 24 bytes"));
        }
        let ciphertext = B64
            .decode(&env.ciphertext)
            .map_err(|_| bad("the ciphertext is not base64"))?;
        let secret = derive(password, &salt, n.trailing_zeros() as u8, r, p)?;
        let der = XSalsa20Poly1305::new(&secret.into())
            .decrypt(Nonce::from_slice(&nonce), ciphertext.as_slice())
            .map_err(|_| SigstoreError::WrongPassword)?;
        let key = p256::ecdsa::SigningKey::from_pkcs8_der(&der)
            .map_err(|e| SigstoreError::BadPrivateKey(format!("not an ECDSA P-256 key: {e}")))?;
        Ok(SigningKey(key))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(*self.0.verifying_key())
    }

    /// The payload for `claim` and its signature (base64 of the ASN.1 DER ECDSA signature).
    /// Both are deterministic (RFC 6979 nonces, no timestamp in the payload): signing an image
    /// again gives the same attachment, which the registry then holds once.
    pub fn sign(&self, claim: &Claim) -> (Vec<u8>, String) {
        let payload = payload(claim);
        let sig: p256::ecdsa::Signature = self.0.sign(&payload);
        (payload, B64.encode(sig.to_der().as_bytes()))
    }
}

impl PublicKey {
    /// A `PUBLIC KEY` PEM block (SubjectPublicKeyInfo) holding a P-256 key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, SigstoreError> {
        let (label, der) =
            pem_decode(pem).ok_or_else(|| SigstoreError::BadPublicKey("no PEM block".into()))?;
        if label != "PUBLIC KEY" {
            return Err(SigstoreError::BadPublicKey(format!(
                "the PEM block is `{label}`, not `PUBLIC KEY`"
            )));
        }
        p256::ecdsa::VerifyingKey::from_public_key_der(&der)
            .map(PublicKey)
            .map_err(|e| SigstoreError::BadPublicKey(e.to_string()))
    }

    pub fn to_pem(&self) -> String {
        self.0
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap_or_default()
    }

    /// Checks `signature` (base64 DER) over `payload`, then reads the claim the payload makes.
    /// The claim is only trustworthy after the signature checked, so it is read after.
    pub fn verify(&self, payload: &[u8], signature: &str) -> Result<Claim, SigstoreError> {
        let der = B64
            .decode(signature.trim())
            .map_err(|_| SigstoreError::BadSignature)?;
        let sig =
            p256::ecdsa::Signature::from_der(&der).map_err(|_| SigstoreError::BadSignature)?;
        self.0
            .verify(payload, &sig)
            .map_err(|_| SigstoreError::BadSignature)?;
        parse_payload(payload)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    critical: Critical,
    /// Anything (cosign writes `null`, the container tools `{"creator": ..}`); not trusted.
    optional: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Critical {
    identity: Identity,
    image: ImageRef,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageRef {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The simple-signing payload for `claim`, keys sorted.
pub fn payload(claim: &Claim) -> Vec<u8> {
    let p = Payload {
        critical: Critical {
            identity: Identity {
                docker_reference: claim.reference.clone(),
            },
            image: ImageRef {
                docker_manifest_digest: claim.manifest_digest.clone(),
            },
            kind: PAYLOAD_TYPE.into(),
        },
        optional: serde_json::json!({ "creator": format!("imgbuild {}", env!("CARGO_PKG_VERSION")) }),
    };
    crate::canonical::to_vec(&p).unwrap_or_default()
}

/// Reads a payload strictly: exactly the fields the format has, the cosign type.
pub fn parse_payload(bytes: &[u8]) -> Result<Claim, SigstoreError> {
    let p: Payload =
        serde_json::from_slice(bytes).map_err(|e| SigstoreError::BadPayload(e.to_string()))?;
    if p.critical.kind != PAYLOAD_TYPE {
        return Err(SigstoreError::BadPayload(format!(
            "type `{}`, not `{PAYLOAD_TYPE}`",
            p.critical.kind
        )));
    }
    Ok(Claim {
        manifest_digest: p.critical.image.docker_manifest_digest,
        reference: p.critical.identity.docker_reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> Claim {
        Claim {
            manifest_digest: format!("sha256:{}", "0f".repeat(32)),
            reference: "127.0.0.1:5000/app:1".into(),
        }
    }

    #[test]
    fn a_generated_key_signs_and_its_public_half_verifies() {
        let pair = generate(b"pw").unwrap();
        assert!(
            pair.private_pem
                .starts_with("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n")
        );
        assert!(pair.public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let key = SigningKey::from_pem(pair.private_pem.as_bytes(), b"pw").unwrap();
        let (payload, sig) = key.sign(&claim());
        let public = PublicKey::from_pem(pair.public_pem.as_bytes()).unwrap();
        assert_eq!(public.verify(&payload, &sig).unwrap(), claim());
        // Deterministic: the same claim, the same bytes.
        assert_eq!(key.sign(&claim()), (payload.clone(), sig.clone()));
        // Another key does not verify it; a changed payload does not verify.
        let other = SigningKey::from_pem(generate(b"x").unwrap().private_pem.as_bytes(), b"x")
            .unwrap()
            .public();
        assert!(matches!(
            other.verify(&payload, &sig),
            Err(SigstoreError::BadSignature)
        ));
        let mut changed = payload.clone();
        let at = changed.iter().position(|&b| b == b'1').unwrap();
        changed[at] = b'2';
        assert!(matches!(
            public.verify(&changed, &sig),
            Err(SigstoreError::BadSignature)
        ));
    }

    #[test]
    fn a_wrong_password_is_named() {
        let pair = generate(b"right").unwrap();
        assert!(matches!(
            SigningKey::from_pem(pair.private_pem.as_bytes(), b"wrong"),
            Err(SigstoreError::WrongPassword)
        ));
    }

    #[test]
    fn a_key_asking_scrypt_for_gigabytes_is_refused_before_deriving() {
        let env = serde_json::json!({
            "kdf": {"name": "scrypt", "params": {"N": 1u64 << 24, "r": 8, "p": 1}, "salt": "AAAA"},
            "cipher": {"name": "nacl/secretbox", "nonce": B64.encode([0u8; 24])},
            "ciphertext": "AAAA",
        });
        let pem = pem_encode(PRIVATE_LABEL, env.to_string().as_bytes());
        let e = SigningKey::from_pem(pem.as_bytes(), b"pw").err().unwrap();
        assert!(e.to_string().contains("256 MiB"), "{e}");
    }

    #[test]
    fn payloads_are_read_strictly() {
        assert_eq!(parse_payload(&payload(&claim())).unwrap(), claim());
        // cosign's own payloads: `optional: null`.
        let cosign = br#"{"critical":{"identity":{"docker-reference":"r/a"},"image":{"docker-manifest-digest":"sha256:00"},"type":"cosign container image signature"},"optional":null}"#;
        assert_eq!(parse_payload(cosign).unwrap().reference, "r/a");
        for bad in [
            &br#"{"critical":{"identity":{"docker-reference":"r"},"image":{"docker-manifest-digest":"d"},"type":"other"},"optional":null}"#[..],
            br#"{"critical":{"identity":{"docker-reference":"r"},"image":{"docker-manifest-digest":"d"},"type":"cosign container image signature","extra":1},"optional":null}"#,
            br#"{"critical":{"identity":{"docker-reference":"r"},"image":{"docker-manifest-digest":"d"},"type":"cosign container image signature"}}"#,
            b"\xff\x00",
        ] {
            assert!(parse_payload(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse_payload(&bytes);
            let _ = PublicKey::from_pem(&bytes);
            let _ = pem_decode(&bytes);
            let mut pem = b"-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n".to_vec();
            pem.extend_from_slice(&bytes);
            let _ = SigningKey::from_pem(&pem, b"pw");
        }
    }
}
