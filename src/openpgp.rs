//! OpenPGP keyrings and detached signatures (the `pgp` crate does the cryptography): the keys
//! of a file an apt source or a download names, and the check that a download was signed by
//! the key a recipe pins by fingerprint.

use std::io::Read;

use pgp::composed::{Deserializable, DetachedSignature, PublicOrSecret, SignedPublicKey};
use pgp::types::KeyDetails;

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("the key file holds no usable OpenPGP key: {0}")]
    Keyring(String),
    #[error("the key file has no key with fingerprint {0}")]
    NoSuchSigner(String),
    #[error("not an OpenPGP signature: {0}")]
    Unreadable(String),
    #[error("the signature was made by a key other than {0}")]
    OtherSigner(String),
    #[error("the signature does not match the file (made by {0}): the file was altered")]
    Mismatch(String),
    #[error("cannot read the signed file: {0}")]
    Io(#[from] std::io::Error),
}

/// Every public key in `bytes` (armored or binary; secret keys give their public half).
pub fn keyring(bytes: &[u8]) -> Result<Vec<SignedPublicKey>, SignatureError> {
    let (iter, _) = PublicOrSecret::from_reader_many(bytes)
        .map_err(|e| SignatureError::Keyring(e.to_string()))?;
    let mut out = Vec::new();
    for k in iter {
        match k.map_err(|e| SignatureError::Keyring(e.to_string()))? {
            PublicOrSecret::Public(k) => out.push(k),
            PublicOrSecret::Secret(k) => out.push(k.to_public_key()),
        }
    }
    if out.is_empty() {
        return Err(SignatureError::Keyring("the file holds no key".into()));
    }
    Ok(out)
}

/// A fingerprint as people write it: hex, any case, spaces allowed.
pub fn normalize_fingerprint(f: &str) -> String {
    f.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Checks the detached signature `sig` (armored or binary) over `data`: it must be made by a
/// key of `keys` (the primary key or one of its subkeys) and, with `signer`, by the key with
/// that primary fingerprint. Returns the primary fingerprint of the key that signed.
pub fn verify_detached(
    keys: &[SignedPublicKey],
    signer: Option<&str>,
    sig: &[u8],
    data: impl Read,
) -> Result<String, SignatureError> {
    let (sig, _) = DetachedSignature::from_reader_single(sig)
        .map_err(|e| SignatureError::Unreadable(e.to_string()))?;
    let want = signer.map(normalize_fingerprint);
    let keys: Vec<&SignedPublicKey> = keys
        .iter()
        .filter(|k| {
            want.as_deref()
                .is_none_or(|w| format!("{:X}", k.primary_key.fingerprint()) == w)
        })
        .collect();
    if keys.is_empty() {
        return Err(SignatureError::NoSuchSigner(want.unwrap_or_default()));
    }
    let fps = sig.signature.issuer_fingerprint();
    let ids = sig.signature.issuer_key_id();
    let named = |k: &dyn KeyDetails| {
        fps.iter().any(|f| **f == k.fingerprint()) || ids.iter().any(|i| **i == k.legacy_key_id())
    };
    // The signing key: the one the signature names as its issuer, so the data is read once.
    for k in keys {
        let primary = format!("{:X}", k.primary_key.fingerprint());
        if named(&k.primary_key) {
            return match sig.signature.verify(&k.primary_key, data) {
                Ok(()) => Ok(primary),
                Err(_) => Err(SignatureError::Mismatch(primary)),
            };
        }
        for s in &k.public_subkeys {
            if named(&s.key) {
                return match sig.signature.verify(&s.key, data) {
                    Ok(()) => Ok(primary),
                    Err(_) => Err(SignatureError::Mismatch(primary)),
                };
            }
        }
    }
    Err(SignatureError::OtherSigner(
        signer
            .map(normalize_fingerprint)
            .unwrap_or_else(|| "the key file's".into()),
    ))
}
