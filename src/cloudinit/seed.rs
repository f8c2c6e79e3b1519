//! The NoCloud seed: an ISO 9660 image with volume label `cidata` holding user-data,
//! meta-data and network-config, written with `xorriso` (Rock Ridge and Joliet names, as
//! `cloud-localds` makes them) and reproducible (every volume and file date set).

use std::fs;
use std::path::{Path, PathBuf};

use super::Snippets;
use crate::tool::{self, ToolError, XORRISO};

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("writing the seed files in {dir}")]
    Write {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making the seed ISO {path}")]
    Tool {
        path: PathBuf,
        #[source]
        source: ToolError,
    },
}

/// Writes `snippets` as files into `dir` and the seed ISO to `iso` (temp file, then rename).
pub fn write(snippets: &Snippets, dir: &Path, iso: &Path, mtime: u64) -> Result<(), SeedError> {
    let werr = |source| SeedError::Write {
        dir: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(werr)?;
    let staging = tempfile::Builder::new()
        .prefix(".seed-")
        .tempdir_in(dir)
        .map_err(werr)?;
    let time = filetime(mtime);
    for (name, content) in snippets.files() {
        crate::fsutil::write_atomic(&dir.join(name), content.as_bytes()).map_err(werr)?;
        let p = staging.path().join(name);
        fs::write(&p, content).map_err(werr)?;
        fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_times(fs::FileTimes::new().set_accessed(time).set_modified(time)))
            .map_err(werr)?;
    }
    let tmp = dir.join(format!(".{}.tmp", file_name(iso)));
    let _ = fs::remove_file(&tmp);
    let terr = |source| SeedError::Tool {
        path: iso.to_path_buf(),
        source,
    };
    let mut cmd = XORRISO.command().map_err(terr)?;
    // Every date of the volume set explicitly (xorriso 1.5.4 does not read SOURCE_DATE_EPOCH
    // for all of them); a time of 0 reads as "unset" to it, so start at 1 s.
    let stamp: String = crate::oci::image::rfc3339(mtime.max(1))
        .chars()
        .filter(char::is_ascii_digit)
        .chain("00".chars())
        .collect();
    cmd.env("SOURCE_DATE_EPOCH", mtime.max(1).to_string())
        .args(["-no_rc", "-outdev"])
        .arg(&tmp)
        .args(["-volid", "cidata", "-joliet", "on", "-rockridge", "on"])
        .args(["-volume_date", "all_file_dates", "set_to_mtime"])
        .args(["-volume_date", "c", &stamp, "-volume_date", "m", &stamp])
        .args(["-volume_date", "uuid", &stamp]);
    for (name, _) in snippets.files() {
        cmd.arg("-map")
            .arg(staging.path().join(name))
            .arg(format!("/{name}"));
    }
    tool::run(&mut cmd).map_err(terr)?;
    fs::rename(&tmp, iso).map_err(werr)?;
    Ok(())
}

fn filetime(mtime: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "seed.iso".into())
}
