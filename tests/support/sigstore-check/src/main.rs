//! `sigstore-check verify KEY.pub REF` and `sigstore-check sign KEY REF` (password in
//! `COSIGN_PASSWORD`), against a plain-HTTP registry, with sigstore-rs's cosign client: the
//! same triangulation (`sha256-<hex>.sig`), payload and signature checks cosign makes.
//! Exit 0: verified or signed; 1: not verified (the reason on stderr); 2: usage.

use sigstore::cosign::constraint::PrivateKeySigner;
use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
use sigstore::cosign::{Constraint, CosignCapabilities, SignatureLayer};
use sigstore::crypto::SigningScheme;
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};
use sigstore::trust::ManualTrustRoot;

fn client() -> sigstore::cosign::Client {
    let config = ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    };
    let trust = Box::leak(Box::new(ManualTrustRoot::default()));
    sigstore::cosign::ClientBuilder::default()
        .with_oci_client_config(config)
        .with_trust_repository(trust)
        .and_then(|b| b.build())
        .unwrap_or_else(|e| fail(2, &format!("client: {e}")))
}

fn fail(code: i32, msg: &str) -> ! {
    eprintln!("sigstore-check: {msg}");
    std::process::exit(code)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (cmd, key, image) = match args.as_slice() {
        [_, c, k, i] => (c.as_str(), k, i),
        _ => fail(2, "usage: sigstore-check verify|sign KEY REF"),
    };
    let image: OciReference = image
        .parse()
        .unwrap_or_else(|e| fail(2, &format!("reference: {e}")));
    let key = std::fs::read(key).unwrap_or_else(|e| fail(2, &format!("key: {e}")));
    let auth = &Auth::Anonymous;
    let mut client = client();
    let (sig_image, digest) = client
        .triangulate(&image, auth)
        .await
        .unwrap_or_else(|e| fail(1, &format!("triangulate: {e}")));
    match cmd {
        "verify" => {
            let layers = client
                .trusted_signature_layers(auth, &digest, &sig_image)
                .await
                .unwrap_or_else(|e| fail(1, &format!("signature layers: {e}")));
            let verifier = PublicKeyVerifier::try_from(&key)
                .unwrap_or_else(|e| fail(2, &format!("public key: {e}")));
            let constraints: VerificationConstraintVec = vec![Box::new(verifier)];
            match sigstore::cosign::verify_constraints(&layers, constraints.iter()) {
                Ok(()) => println!("verified {image} ({digest}): {} signature(s)", layers.len()),
                Err(e) => fail(1, &format!("not verified: {e:?}")),
            }
        }
        "sign" => {
            let password = std::env::var("COSIGN_PASSWORD").unwrap_or_default();
            let mut layer = SignatureLayer::new_unsigned(&image, &digest)
                .unwrap_or_else(|e| fail(1, &format!("payload: {e}")));
            let signer = PrivateKeySigner::new_with_raw(
                zeroize::Zeroizing::new(key),
                zeroize::Zeroizing::new(password.into_bytes()),
                &SigningScheme::default(),
            )
            .unwrap_or_else(|e| fail(2, &format!("private key: {e}")));
            signer
                .add_constraint(&mut layer)
                .unwrap_or_else(|e| fail(1, &format!("sign: {e}")));
            client
                .push_signature(None, auth, &sig_image, vec![layer])
                .await
                .unwrap_or_else(|e| fail(1, &format!("push signature: {e}")));
            println!("signed {image} ({digest})");
        }
        _ => fail(2, "usage: sigstore-check verify|sign KEY REF"),
    }
}
