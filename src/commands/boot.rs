//! `imgbuild boot RECIPE | --dir DIR`: the proxmox target's disk under QEMU with its NoCloud
//! seed, on a throwaway overlay; with `--expect` a smoke test (exit 0 once every text is on
//! the serial console, 1 when the VM stops or the timeout passes first).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use imgbuild::proxmox::boot::{self, BootOptions, Outcome};

use super::UsageError;
use super::progress::Progress;
use crate::cli::{self, BootArgs, Global};

pub fn run(g: &Global, args: &BootArgs) -> Result<ExitCode> {
    let progress = Progress::new(g);
    let dir = match (&args.dir, &args.recipe) {
        (Some(d), _) => d.clone(),
        (None, Some(r)) => {
            let loaded = super::load(g, r)?;
            PathBuf::from("out")
                .join(&loaded.recipe.image.name)
                .join("proxmox")
        }
        (None, None) => return Err(UsageError("give a RECIPE or --dir DIR".into()).into()),
    };
    let timeout = match &args.timeout {
        None => None,
        Some(t) => Some(humantime::parse_duration(t).map_err(|e| {
            UsageError(format!(
                "--timeout `{t}` is not a duration such as 300s or 10m: {e}"
            ))
        })?),
    };
    if args.expect.iter().any(String::is_empty) {
        return Err(UsageError("--expect needs a text".into()).into());
    }
    let mut opts = BootOptions {
        dir: dir.clone(),
        seed: args.seed.clone(),
        memory_mib: args.memory,
        cpus: args.cpus,
        ssh_port: args.ssh_port,
        timeout,
        expect: args.expect.clone(),
        firmware: args.firmware.clone(),
        accel: match args.accel {
            cli::Accel::Auto => boot::Accel::Auto,
            cli::Accel::Kvm => boot::Accel::Kvm,
            cli::Accel::Tcg => boot::Accel::Tcg,
        },
    };
    let context = || format!("booting {}", dir.display());
    let outcome = loop {
        let vm = boot::prepare(&opts)
            .map_err(|e| match e {
                // What the user has to fix: the directory, the seed, the firmware or a tool.
                boot::BootError::Io { .. } => anyhow::Error::new(e),
                other => UsageError(format!("{}: {other}", context())).into(),
            })
            .with_context(context)?;
        progress.line(&format!(
            "==> booting {} on a throwaway overlay ({}), seed {}",
            vm.disk.display(),
            if vm.kvm { "KVM" } else { "TCG: emulated, slow" },
            vm.seed.display()
        ));
        progress.line(&format!("==> SSH: ssh -p {} USER@127.0.0.1", vm.ssh_port));
        if opts.expect.is_empty() {
            progress.line("==> serial console below; Ctrl-A x stops the VM");
        }
        let outcome = boot::run(vm, &opts, &mut std::io::stdout(), &mut std::io::stderr())
            .with_context(context)?;
        match outcome {
            Outcome::KvmFailed if opts.accel == boot::Accel::Auto => {
                progress.line("==> KVM cannot run this guest here (nested virtualization?): booting again with TCG");
                opts.accel = boot::Accel::Tcg;
            }
            other => break other,
        }
    };
    let waited = |t: &Option<std::time::Duration>| {
        t.map(|d| humantime::format_duration(d).to_string())
            .unwrap_or_default()
    };
    Ok(match outcome {
        Outcome::Expected { elapsed } => {
            progress.line(&format!(
                "==> seen on the console after {:.1?}: {}",
                elapsed,
                opts.expect.join(", ")
            ));
            ExitCode::SUCCESS
        }
        Outcome::Exited { status, missing } if missing.is_empty() => {
            progress.line(&format!("==> the VM stopped ({status})"));
            if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Outcome::Exited { status, missing } => {
            eprintln!(
                "error: the VM stopped ({status}) before the console showed: {}",
                missing.join(", ")
            );
            ExitCode::FAILURE
        }
        Outcome::TimedOut { missing } if missing.is_empty() => {
            progress.line(&format!(
                "==> stopped the VM after {}",
                waited(&opts.timeout)
            ));
            ExitCode::SUCCESS
        }
        Outcome::KvmFailed => {
            eprintln!(
                "error: KVM cannot run this guest here (\"KVM internal error\"): try --accel tcg"
            );
            ExitCode::FAILURE
        }
        Outcome::TimedOut { missing } => {
            eprintln!(
                "error: not on the console within {}: {}",
                waited(&opts.timeout),
                missing.join(", ")
            );
            ExitCode::FAILURE
        }
    })
}
