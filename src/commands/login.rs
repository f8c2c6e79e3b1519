//! `imgbuild login HOST -u USER --password-stdin`: check and store registry credentials.

use std::io::Read;

use anyhow::{Context, Result};
use imgbuild::registry::auth::{self, Credentials};

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
    let creds = Credentials {
        username: username.to_string(),
        password,
    };
    let path = auth::store(registry, &creds).context("storing the credentials")?;
    super::progress::Progress::new(g).line(&format!(
        "credentials for {registry} stored in {}",
        path.display()
    ));
    Ok(())
}
