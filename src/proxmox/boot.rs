//! `imgbuild boot`: the proxmox target's disk started on this machine under QEMU, as Proxmox
//! would start a clone of the template (q35, OVMF, virtio disk and network, the NoCloud seed as
//! a second drive), for a look or a smoke test.
//!
//! The image file is never written: the VM runs on a throwaway qcow2 overlay (`qemu-img create
//! -b`) in a temporary directory removed afterwards. KVM when `/dev/kvm` opens, TCG (emulation)
//! otherwise (and, by the caller, when KVM then fails: nested virtualization often does). User-mode networking with the guest's SSH port forwarded to a port of 127.0.0.1.
//! With `expect` texts the serial console is read (and copied to the caller's writer) until
//! every text has appeared (the VM is then stopped), the VM stops by itself, or the timeout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::target::{self, TargetError};
use crate::tool::{self, Tool, ToolError};

/// QEMU for x86-64 guests.
pub const QEMU: Tool = Tool {
    name: "qemu-system-x86_64",
    package: "qemu-system-x86",
};

/// Where Debian's `ovmf` package puts the UEFI firmware.
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("the UEFI firmware {0} is missing: install the Debian package `ovmf`")]
    Firmware(PathBuf),
    #[error("the NoCloud seed {0} is missing")]
    Seed(PathBuf),
    #[error("cannot {action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> BootError {
    let action = action.into();
    move |source| BootError::Io { action, source }
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// The proxmox output directory (`out/NAME/proxmox`).
    pub dir: PathBuf,
    /// Another NoCloud seed (an ISO labelled `cidata`) instead of the one built.
    pub seed: Option<PathBuf>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// The host port the guest's SSH (22) is forwarded to; a free one when `None`.
    pub ssh_port: Option<u16>,
    /// Stop the VM after this long.
    pub timeout: Option<Duration>,
    /// Texts to wait for on the serial console; empty: the console is the terminal's.
    pub expect: Vec<String>,
    pub firmware: PathBuf,
    pub accel: Accel,
}

/// A VM ready to start: its QEMU command line and the overlay it runs on.
#[derive(Debug)]
pub struct Prepared {
    pub kvm: bool,
    pub ssh_port: u16,
    /// The image file the overlay is backed by (never written).
    pub disk: PathBuf,
    pub seed: PathBuf,
    command: Command,
    _scratch: tempfile::TempDir,
}

/// How a boot ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every expected text appeared (the VM was then stopped).
    Expected { elapsed: Duration },
    /// QEMU exited by itself (the guest powered off, or QEMU failed); the texts still missing.
    Exited {
        status: ExitStatus,
        missing: Vec<String>,
    },
    /// The timeout passed; the VM was stopped. The texts still missing.
    TimedOut { missing: Vec<String> },
    /// KVM could not run the guest (QEMU said "KVM internal error"); the VM was stopped.
    KvmFailed,
}

/// How QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when `/dev/kvm` opens, else TCG; the caller boots again with TCG when KVM fails.
    Auto,
    Kvm,
    /// Emulation: slow, works everywhere.
    Tcg,
}

/// Checks the inputs, makes the overlay and the QEMU command line.
pub fn prepare(opts: &BootOptions) -> Result<Prepared, BootError> {
    let manifest = target::read_manifest(&opts.dir)?;
    let disk = std::path::absolute(opts.dir.join(&manifest.disk.file))
        .map_err(io_err("resolve the disk's path"))?;
    let seed = match &opts.seed {
        Some(s) => s.clone(),
        None => opts.dir.join(&manifest.seed.file),
    };
    if !seed.is_file() {
        return Err(BootError::Seed(seed));
    }
    if !opts.firmware.is_file() {
        return Err(BootError::Firmware(opts.firmware.clone()));
    }
    let qemu = QEMU.command()?;
    let scratch = tempfile::Builder::new()
        .prefix("imgbuild-boot.")
        .tempdir()
        .map_err(io_err("create a temporary directory for the overlay"))?;
    let overlay = scratch.path().join("overlay.qcow2");
    let format = if manifest.disk_format == "raw" {
        "raw"
    } else {
        "qcow2"
    };
    tool::run(
        tool::QEMU_IMG
            .command()?
            .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
            .arg(&disk)
            .arg(&overlay),
    )?;
    let ssh_port = match opts.ssh_port {
        Some(p) => p,
        None => free_port().map_err(io_err("find a free port for SSH"))?,
    };
    let kvm = match opts.accel {
        Accel::Tcg => false,
        Accel::Kvm => true,
        Accel::Auto => std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
    };
    let mut command = qemu;
    command.args(["-machine", "q35"]);
    if kvm {
        command.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        command.args(["-accel", "tcg", "-cpu", "max"]);
    }
    command
        .args(["-m", &opts.memory_mib.to_string()])
        .args(["-smp", &opts.cpus.to_string()])
        .arg("-bios")
        .arg(&opts.firmware)
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=qcow2",
            drive_path(&overlay)
        ))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            drive_path(&seed)
        ))
        .args([
            "-nic",
            &format!("user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"),
        ])
        .arg("-no-reboot");
    if opts.expect.is_empty() {
        // The serial console (and QEMU's monitor, Ctrl-A c; Ctrl-A x quits) on the terminal.
        command.arg("-nographic");
    } else {
        command.args(["-display", "none", "-monitor", "none", "-serial", "stdio"]);
    }
    Ok(Prepared {
        kvm,
        ssh_port,
        disk,
        seed,
        command,
        _scratch: scratch,
    })
}

/// A path as a QEMU `-drive file=` value: commas doubled (QEMU's option escaping).
fn drive_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What QEMU prints when the host's KVM cannot run the guest (nested virtualization often
/// opens `/dev/kvm` and then fails so); QEMU then pauses the VM rather than exit.
const KVM_FAILURE: &str = "KVM internal error";

enum Msg {
    Out(Vec<u8>),
    Err(Vec<u8>),
}

/// Forwards what `r` reads to `tx` as `wrap`ped chunks until the end.
fn pump(
    mut r: impl Read + Send + 'static,
    tx: mpsc::Sender<Msg>,
    wrap: fn(Vec<u8>) -> Msg,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(wrap(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Starts the VM and waits for the end (see [`Outcome`]). With `expect` texts the serial
/// console is copied to `console`; without, QEMU has the terminal. QEMU's own messages go to
/// `diag`.
pub fn run(
    mut vm: Prepared,
    opts: &BootOptions,
    console: &mut dyn Write,
    diag: &mut dyn Write,
) -> Result<Outcome, BootError> {
    let started = Instant::now();
    let deadline = opts.timeout.map(|t| started + t);
    let watching = !opts.expect.is_empty();
    if watching {
        vm.command.stdin(Stdio::null()).stdout(Stdio::piped());
    }
    let mut child = vm
        .command
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err("start qemu-system-x86_64"))?;
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(pump(out, tx.clone(), Msg::Out));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(pump(err, tx.clone(), Msg::Err));
    }
    drop(tx);
    let mut watch = Watch::new(&opts.expect);
    let mut kvm = Watch::new(&[KVM_FAILURE.to_string()]);
    let outcome = loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            stop(&mut child);
            break Outcome::TimedOut {
                missing: watch.missing(),
            };
        }
        let wait = deadline.map_or(Duration::from_millis(200), |d| {
            d.saturating_duration_since(now)
                .min(Duration::from_millis(200))
        });
        match rx.recv_timeout(wait) {
            Ok(Msg::Out(chunk)) => {
                // The console is a copy for people: a closed stdout does not stop the boot.
                let _ = console.write_all(&chunk).and_then(|()| console.flush());
                if watch.feed(&chunk) {
                    stop(&mut child);
                    break Outcome::Expected {
                        elapsed: started.elapsed(),
                    };
                }
            }
            Ok(Msg::Err(chunk)) => {
                let _ = diag.write_all(&chunk).and_then(|()| diag.flush());
                if vm.kvm && kvm.feed(&chunk) {
                    stop(&mut child);
                    break Outcome::KvmFailed;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Without a console pipe the end shows only here.
                if let Some(status) = child.try_wait().map_err(io_err("wait for QEMU"))? {
                    break Outcome::Exited {
                        status,
                        missing: watch.missing(),
                    };
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().map_err(io_err("wait for QEMU"))?;
                break Outcome::Exited {
                    status,
                    missing: watch.missing(),
                };
            }
        }
    };
    for p in pumps {
        let _ = p.join();
    }
    Ok(outcome)
}

/// Stops QEMU (it holds nothing worth a clean shutdown: the overlay is thrown away).
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Which expected texts have appeared in a stream read in chunks (a text may straddle two).
#[derive(Debug)]
struct Watch {
    texts: Vec<(Vec<u8>, bool)>,
    tail: Vec<u8>,
    keep: usize,
}

impl Watch {
    fn new(texts: &[String]) -> Watch {
        let keep = texts.iter().map(String::len).max().unwrap_or(0);
        Watch {
            texts: texts
                .iter()
                .map(|t| (t.as_bytes().to_vec(), t.is_empty()))
                .collect(),
            tail: Vec::new(),
            keep,
        }
    }

    /// Takes the next chunk; `true` once every text has appeared.
    fn feed(&mut self, chunk: &[u8]) -> bool {
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(chunk);
        for (text, seen) in &mut self.texts {
            if !*seen && window.windows(text.len()).any(|w| w == text.as_slice()) {
                *seen = true;
            }
        }
        let from = window.len().saturating_sub(self.keep.saturating_sub(1));
        self.tail = window[from..].to_vec();
        self.texts.iter().all(|(_, seen)| *seen)
    }

    fn missing(&self) -> Vec<String> {
        self.texts
            .iter()
            .filter(|(_, seen)| !seen)
            .map(|(t, _)| String::from_utf8_lossy(t).into_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_found_across_chunks_and_in_any_order() {
        let mut w = Watch::new(&["login:".into(), "MARKER-42".into()]);
        assert!(!w.feed(b"booting... MARK"));
        assert!(!w.feed(b"ER-"));
        assert_eq!(w.missing(), ["login:", "MARKER-42"]);
        assert!(!w.feed(b"42 done\r\n"));
        assert_eq!(w.missing(), ["login:"]);
        assert!(w.feed(b"debian login: "));
        let mut w = Watch::new(&["abc".into()]);
        for b in b"xxabc" {
            let done = w.feed(&[*b]);
            assert_eq!(done, *b == b'c');
        }
    }

    #[test]
    fn a_missing_manifest_or_firmware_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let opts = BootOptions {
            dir: dir.path().to_path_buf(),
            seed: None,
            memory_mib: 512,
            cpus: 1,
            ssh_port: None,
            timeout: None,
            expect: Vec::new(),
            firmware: PathBuf::from(OVMF),
            accel: Accel::Auto,
        };
        let e = prepare(&opts).unwrap_err();
        assert!(
            e.to_string().contains("manifest.json"),
            "{e}: build the proxmox target first"
        );
    }
}
