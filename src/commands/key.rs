//! `imgbuild key generate --out DIR`: a key pair for sigstore image signatures, in the cosign
//! format the container tools read.

use anyhow::{Context, Result};
use imgbuild::fsutil;

use super::UsageError;
use crate::cli::{Global, KeyCommand};

pub fn run(g: &Global, cmd: &KeyCommand) -> Result<()> {
    let KeyCommand::Generate { out } = cmd;
    let private = out.join("imgbuild.key");
    let public = out.join("imgbuild.pub");
    for p in [&private, &public] {
        if p.exists() {
            return Err(UsageError(format!(
                "{} exists: imgbuild does not overwrite a key (remove it first)",
                p.display()
            ))
            .into());
        }
    }
    let password = super::key_password()?;
    let pair =
        imgbuild::sigstore::generate(password.as_bytes()).context("generating a key pair")?;
    // The private key is written 0600 from the start (temp file, then rename).
    fsutil::write_atomic_mode(&private, pair.private_pem.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", private.display()))?;
    fsutil::write_atomic(&public, pair.public_pem.as_bytes())
        .with_context(|| format!("writing {}", public.display()))?;
    super::progress::Progress::new(g).line(&format!(
        "==> wrote {} (private, encrypted with IMGBUILD_KEY_PASSWORD) and {} (public)",
        private.display(),
        public.display()
    ));
    outln!("{}", public.display());
    Ok(())
}
