//! `imgbuild login HOST -u USER --password-stdin`: check registry credentials against the
//! registry's `/v2/` (token flow included), then store them where Docker would.

use std::io::Read;

use anyhow::{Context, Result};
use imgbuild::registry::auth::{self, Credentials};
use imgbuild::registry::client::RegistryClient;

use crate::cli::Global;

pub fn run(g: &Global, registry: &str, username: &str) -> Result<()> {
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("reading the password from stdin")?;
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(super::UsageError("empty password on stdin".into()).into());
    }
    // A registry given as `user:password@host` is refused before anything is echoed.
    imgbuild::registry::reference::Reference::parse(&format!("{registry}/x"))
        .map_err(|e| super::UsageError(e.to_string()))?;
    let creds = Credentials {
        username: username.to_string(),
        password,
    };
    RegistryClient::check_login(registry, &creds, &super::client_options(g))
        .with_context(|| format!("checking the credentials against {registry}/v2/"))?;
    let path = auth::store(registry, &creds).context("storing the credentials")?;
    super::progress::Progress::new(g).line(&format!(
        "credentials for {registry} stored in {}",
        path.display()
    ));
    Ok(())
}
