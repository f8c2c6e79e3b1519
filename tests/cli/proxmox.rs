//! The proxmox target through the CLI: cloud-init output checked by `cloud-init schema` and read
//! back from the seed ISO with `xorriso`; a VM disk built from Debian packages (the machine's
//! own apt mirror, read from its apt configuration) booted under qemu-system-x86_64 (TCG, OVMF)
//! to a cloud-init runcmd marker and a power-off, built twice to the same bytes; and the
//! template flow against a FAKE Proxmox API server (tests/support/fake_proxmox.rs), with every
//! call's failure cleaned up.

use std::path::{Path, PathBuf};
use std::process::Command as Std;
use std::sync::OnceLock;

use crate::fake_proxmox::{self, FakeProxmox, Profile};
use crate::{Work, assert_ok, repo, stderr, stdout, tool};

/// Required variables of the mirror recipes, for commands that do not fetch anything.
const VARS: [&str; 4] = [
    "--var",
    "mirror=http://127.0.0.1:9/debian",
    "--var",
    "security_mirror=http://127.0.0.1:9/debian-security",
];

/// Splits user-data into its parts `(content type, body)` with Python's `email` (what
/// cloud-init itself uses); plain `#cloud-config` is one part.
fn mime_parts(user_data: &Path) -> Vec<(String, String)> {
    let script = r##"
import email, json, sys
raw = open(sys.argv[1]).read()
if raw.startswith("#cloud-config"):
    print(json.dumps([["text/cloud-config", raw]]))
else:
    msg = email.message_from_string(raw)
    assert msg.is_multipart(), "not multipart"
    print(json.dumps([[p.get_content_type(), p.get_payload(decode=True).decode()] for p in msg.walk() if not p.is_multipart()]))
"##;
    let out = tool("python3", &["-c", script, user_data.to_str().unwrap()]);
    serde_json::from_str::<Vec<(String, String)>>(&out).unwrap()
}

/// `cloud-init schema -c` on one cloud-config document.
fn schema_ok(doc: &str, dir: &Path, label: &str) {
    let f = dir.join(format!("{label}.cloud-config"));
    std::fs::write(&f, doc).unwrap();
    let o = Std::new("cloud-init")
        .args(["schema", "-c"])
        .arg(&f)
        .output()
        .expect("cloud-init (Debian package cloud-init) is needed: .ci/run installs it");
    assert!(
        o.status.success(),
        "{label}: cloud-init schema rejects it:\n{}\n{}\n{doc}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Reads a file back out of a seed ISO with xorriso.
fn iso_file(iso: &Path, name: &str, into: &Path) -> String {
    let dest = into.join(format!("extracted-{name}"));
    let o = Std::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", &format!("/{name}")])
        .arg(&dest)
        .output()
        .expect("xorriso");
    assert_ok(&o);
    std::fs::read_to_string(&dest).unwrap()
}

#[test]
fn every_recipe_compiles_to_cloud_config_that_cloud_init_accepts() {
    let w = Work::setup();
    let mut checked = 0;
    let mut recipes: Vec<PathBuf> = std::fs::read_dir(w.path("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    recipes.sort();
    assert!(recipes.len() >= 4, "{recipes:?}");
    for recipe in &recipes {
        let stem = recipe.file_stem().unwrap().to_string_lossy().into_owned();
        for flavor in ["install", "clone"] {
            let out = w.path(&format!("ci/{stem}-{flavor}"));
            let mut cmd = w.cmd();
            cmd.args(VARS)
                .arg("cloud-init")
                .arg(recipe)
                .arg("--out")
                .arg(&out);
            if flavor == "clone" {
                cmd.arg("--clone");
            }
            let o = cmd.output().unwrap();
            assert_ok(&o);
            let listed: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
            assert_eq!(listed.len(), 4, "{listed:?}");
            for (i, part) in mime_parts(&out.join("user-data")).iter().enumerate() {
                if part.0 == "text/cloud-config" {
                    schema_ok(&part.1, &out, &format!("{stem}-{flavor}-{i}"));
                    checked += 1;
                }
            }
            // The seed ISO is a NoCloud seed: label cidata, the three files as written.
            let iso = out.join("seed.iso");
            let pvd = tool("xorriso", &["-indev", iso.to_str().unwrap(), "-pvd_info"]);
            assert!(pvd.contains("Volume Id    : cidata"), "{pvd}");
            for name in ["user-data", "meta-data", "network-config"] {
                assert_eq!(
                    iso_file(&iso, name, &out),
                    std::fs::read_to_string(out.join(name)).unwrap(),
                    "{stem}-{flavor}: {name} in the seed"
                );
            }
        }
    }
    assert_eq!(checked, recipes.len() * 2);
}

#[test]
fn cloud_config_carries_the_recipe() {
    let w = Work::setup();
    let out = w.path("ci-hello");
    let o = w
        .cmd()
        .arg("cloud-init")
        .arg(w.recipe())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_ok(&o);
    // Parsed back as YAML by Python (cloud-init's own parser): exact strings survive.
    let script = r#"
import json, sys, yaml
print(json.dumps(yaml.safe_load(open(sys.argv[1]))))
"#;
    let user_data = out.join("user-data");
    let v: serde_json::Value = serde_json::from_str(&tool(
        "python3",
        &["-c", script, user_data.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(v["hostname"], "hello");
    let eric = &v["users"][0];
    assert_eq!(eric["name"], "eric");
    assert_eq!(eric["sudo"], "ALL=(ALL) NOPASSWD:ALL");
    assert_eq!(eric["groups"], "docker");
    let files = v["write_files"].as_array().unwrap();
    let motd = files.iter().find(|f| f["path"] == "/etc/motd").unwrap();
    assert_eq!(motd["content"], "hello from imgbuild\n");
    let env = files
        .iter()
        .find(|f| f["path"] == "/etc/profile.d/imgbuild-env.sh")
        .unwrap();
    // [env] values as the image has them: Docker ENV expansion applied.
    assert!(
        env["content"]
            .as_str()
            .unwrap()
            .contains("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/go/bin\n"),
        "{env}"
    );
    let notes = files.iter().find(|f| f["owner"] == "eric:docker").unwrap();
    assert_eq!(notes["defer"], true);
    assert_eq!(notes["permissions"], "0600");
    let runcmd: Vec<&str> = v["runcmd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let fixtures = &w.server.url;
    assert!(
        runcmd[0].starts_with("curl -fsSL --retry 3 -o /var/tmp/imgbuild-")
            && runcmd[0].contains(&format!("{fixtures}/tool-amd64.tar.gz"))
            && runcmd[0].contains("| sha256sum -c -")
            && runcmd[0].contains("--strip-components=1"),
        "{}",
        runcmd[0]
    );
    assert!(
        runcmd.contains(&"systemctl enable --now hello"),
        "{runcmd:?}"
    );
    let meta = std::fs::read_to_string(out.join("meta-data")).unwrap();
    assert!(meta.starts_with("instance-id: imgbuild-") && meta.contains("local-hostname: hello"));

    // The coderall recipe's clone snippet: multipart, the agent script with its variable
    // exported after the shebang, the Terraform placeholders left for templatefile().
    let out = w.path("ci-coderall");
    let o = w
        .cmd()
        .arg("cloud-init")
        .arg(w.path("recipes/coderall.toml"))
        .args(["--clone", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_ok(&o);
    let parts = mime_parts(&out.join("user-data"));
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[1].0, "text/x-shellscript");
    assert!(
        parts[1]
            .1
            .starts_with("#!/bin/bash\nexport CODER_AGENT_TOKEN='${agent_token}'\n")
            && parts[1]
                .1
                .contains("<<'CODER_INIT_SCRIPT_END'\n${init_script}\nCODER_INIT_SCRIPT_END\n")
            && parts[1]
                .1
                .contains("sudo --preserve-env=CODER_AGENT_TOKEN -u coder /opt/coder/init"),
        "{}",
        parts[1].1
    );
    assert!(
        parts[0].1.contains("- - scripts-user\n  - always\n"),
        "{}",
        parts[0].1
    );
}

#[test]
fn bad_cloud_init_settings_exit_2_with_their_line() {
    let w = Work::setup();
    let recipe = w.path("recipes/bad-ci.toml");
    std::fs::write(
        &recipe,
        r#"[image]
name = "bad_name"

[target.proxmox]
disk_size = "lots"

[target.proxmox.cloud_init]
power_state = "halt"
ssh_authorized_keys = ["ssh-ed25519 AAAA... me@laptop"]

[[target.proxmox.cloud_init.parts]]
filename = "x.sh"
content_type = "text/x-unknown"
content = "echo"
src = "x.sh"
"#,
    )
    .unwrap();
    let o = w.cmd().arg("cloud-init").arg(&recipe).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    for want in [
        "bad-ci.toml:5:13: `target.proxmox.disk_size`",
        "bad-ci.toml:8:15: `target.proxmox.cloud_init.power_state`",
        "`target.proxmox.cloud_init.parts[0]`: a part needs exactly one of `content` and `src`",
        "`target.proxmox.cloud_init.parts[0].content_type`",
        "bad-ci.toml:2:8: `image.name`: `bad_name` cannot name a Proxmox VM",
        "bad-ci.toml:9:24: `target.proxmox.cloud_init.ssh_authorized_keys[0]`: not an SSH public key (the key is not base64)",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

/// The VM recipe of the live tests: Debian bookworm minbase from the machine's mirror, a user,
/// and a first boot that prints a marker on the serial console and powers off.
const VM_RECIPE: &str = r##"
[image]
name = "bootvm"
base = "scratch"
platform = "linux/amd64"

[apt]
bootstrap = "minbase"
packages = ["iputils-ping"]   # its postinst gives ping a file capability

[[apt.sources]]
name = "debian"
uri = "${var.mirror}"
suite = "bookworm"
components = ["main"]
key = "keys/debian-archive-keyring.gpg"

[[user]]
name = "coder"
groups = ["sudo"]
shell = "/bin/bash"
sudo = "nopasswd"

[target.oci]
compression = "zstd"

[target.proxmox]
node = "pve"
storage = "local"
disk_storage = "local-lvm"
vmid = 9000
disk_size = "2G"
memory = 2048

[target.proxmox.cloud_init]
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ1kJ3n4Gd5BLVhBD5Cx0i0kqN8pq1C5G8c1bV0o3Y5b test@imgbuild"]
runcmd = ["echo IMGBUILD-BOOT-MARKER-$(hostname) > /dev/ttyS0"]
power_state = "poweroff"

[target.proxmox.cloud_init.vars]
CODER_AGENT_TOKEN = "$${agent_token}"

# What a Coder agent part does, visibly: runs as the user with the per-workspace token.
[[target.proxmox.cloud_init.parts]]
filename = "agent.sh"
content_type = "text/x-shellscript"
content = """#!/bin/bash
sudo --preserve-env=CODER_AGENT_TOKEN -u coder /bin/bash -c 'echo "AGENT-RAN as $(id -un) token=$CODER_AGENT_TOKEN"' > /dev/ttyS0
"""
"##;

struct VmBuild {
    work: Work,
    dir: PathBuf,
}

/// The machine's Debian mirror, from its own apt configuration.
pub(crate) fn mirror() -> String {
    let o = Std::new(repo().join("scripts/mirror")).output().unwrap();
    assert_ok(&o);
    stdout(&o).trim().to_string()
}

/// The VM variant built once for the live tests (the first test to ask builds it).
fn vm_build() -> &'static VmBuild {
    static BUILD: OnceLock<VmBuild> = OnceLock::new();
    BUILD.get_or_init(|| {
        let work = Work::setup();
        std::fs::write(work.path("recipes/bootvm.toml"), VM_RECIPE).unwrap();
        let o = work
            .cmd()
            .args(["--var", &format!("mirror={}", mirror())])
            .arg("build")
            .arg(work.path("recipes/bootvm.toml"))
            .args(["--target", "proxmox", "--out"])
            .arg(work.path("out/bootvm"))
            .output()
            .unwrap();
        assert_ok(&o);
        let dir = work.path("out/bootvm/proxmox");
        assert_eq!(
            stdout(&o).trim(),
            dir.join("bootvm.qcow2").display().to_string()
        );
        VmBuild { work, dir }
    })
}

#[test]
fn vm_disk_boots_to_cloud_init_and_is_reproducible() {
    let vm = vm_build();
    let disk = vm.dir.join("bootvm.qcow2");
    let info = tool(
        "qemu-img",
        &["info", "--output=json", disk.to_str().unwrap()],
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 2u64 << 30);
    // The ext4 root keeps the file capability iputils-ping's postinst set (read with
    // debugfs from the root partition of a raw copy).
    let raw = vm.work.path("bootvm.raw");
    tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            disk.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let part = tool("sgdisk", &["-i", "2", raw.to_str().unwrap()]);
    let start: u64 = part
        .lines()
        .find_map(|l| l.strip_prefix("First sector: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no root partition: {part}"));
    let ea = tool(
        "debugfs",
        &[
            "-R",
            "ea_list /usr/bin/ping",
            &format!("{}?offset={}", raw.display(), start * 512),
        ],
    );
    assert!(ea.contains("security.capability"), "{ea}");
    std::fs::remove_file(&raw).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vm.dir.join("manifest.json")).unwrap()).unwrap();
    assert!(
        manifest["kernel"]
            .as_str()
            .unwrap()
            .ends_with("-cloud-amd64"),
        "{manifest}"
    );

    // A clone's per-workspace user-data: the snippet with its token filled in as Terraform's
    // templatefile() would, on a NoCloud seed (what Proxmox's cloud-init drive is).
    let seed_dir = vm.work.path("workspace-seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let snippet = std::fs::read_to_string(vm.dir.join("user-data")).unwrap();
    assert!(snippet.contains("${agent_token}"), "{snippet}");
    std::fs::write(
        seed_dir.join("user-data"),
        snippet.replace("${agent_token}", "WS-TOKEN-5f3a9c"),
    )
    .unwrap();
    for f in ["meta-data", "network-config"] {
        std::fs::copy(vm.dir.join(f), seed_dir.join(f)).unwrap();
    }
    let seed = vm.work.path("workspace-seed.iso");
    tool(
        "xorriso",
        &[
            "-as",
            "mkisofs",
            "-quiet",
            "-output",
            seed.to_str().unwrap(),
            "-volid",
            "cidata",
            "-joliet",
            "-rock",
            seed_dir.join("user-data").to_str().unwrap(),
            seed_dir.join("meta-data").to_str().unwrap(),
            seed_dir.join("network-config").to_str().unwrap(),
        ],
    );

    // Boot it with `imgbuild boot`: UEFI firmware, the UKI from the ESP, systemd, cloud-init
    // from the NoCloud seed; done when the marker, the agent's line and the power-off are on
    // the serial console.
    let started = std::time::Instant::now();
    // A guard against a hang, not a speed limit: emulated (TCG) on two cores shared with the
    // other tests, a boot and power-off has taken close to 300 s.
    let o = vm
        .work
        .cmd()
        .arg("boot")
        .arg("--dir")
        .arg(&vm.dir)
        .arg("--seed")
        .arg(&seed)
        .args([
            "--timeout",
            "600s",
            "--expect",
            "IMGBUILD-BOOT-MARKER-bootvm",
            "--expect",
            "AGENT-RAN as coder token=WS-TOKEN-5f3a9c",
            "--expect",
            "reboot: Power down",
        ])
        .output()
        .unwrap();
    let log = stdout(&o);
    let tail: String = log.lines().rev().take(40).collect::<Vec<_>>().join("\n");
    assert!(
        o.status.success(),
        "boot failed after {:?}: {}\n{tail}",
        started.elapsed(),
        stderr(&o)
    );
    assert!(stderr(&o).contains("==> SSH: ssh -p "), "{}", stderr(&o));
    assert!(log.contains("IMGBUILD-BOOT-MARKER-bootvm"), "{tail}");
    eprintln!(
        "booted to the marker and powered off in {:?}",
        started.elapsed()
    );
    // The image file was not written: the VM ran on a throwaway overlay.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vm.dir.join("manifest.json")).unwrap()).unwrap();
    let disk_sha = tool("sha256sum", &[disk.to_str().unwrap()]);
    assert_eq!(
        disk_sha.split_whitespace().next().unwrap(),
        manifest["disk"]["sha256"].as_str().unwrap()
    );

    // Built again into another directory: the same bytes.
    let o = vm
        .work
        .cmd()
        .args(["--var", &format!("mirror={}", mirror())])
        .arg("build")
        .arg(vm.work.path("recipes/bootvm.toml"))
        .args(["--target", "proxmox", "--out"])
        .arg(vm.work.path("out/again"))
        .output()
        .unwrap();
    assert_ok(&o);
    for f in ["bootvm.qcow2", "seed.iso", "user-data", "manifest.json"] {
        let a = std::fs::read(vm.dir.join(f)).unwrap();
        let b = std::fs::read(vm.work.path("out/again/proxmox").join(f)).unwrap();
        assert!(a == b, "{f} differs between two builds");
    }
}

fn deploy(vm: &VmBuild, api: &FakeProxmox, token: &str, extra: &[&str]) -> std::process::Output {
    vm.work
        .cmd()
        .env("PROXMOX_URL", &api.url)
        .env("PROXMOX_TOKEN", token)
        .env("IMGBUILD_PROXMOX_POLL_MS", "10")
        .args(["--var", "mirror=http://127.0.0.1:9/unused"])
        .arg("deploy")
        .arg(vm.work.path("recipes/bootvm.toml"))
        .arg("--dir")
        .arg(&vm.dir)
        .args(extra)
        .output()
        .unwrap()
}

fn calls(api: &FakeProxmox, from: usize) -> Vec<String> {
    api.requests()[from..]
        .iter()
        .filter(|r| !r.path.contains("/tasks/"))
        .map(|r| format!("{} {}", r.method, r.path.trim_start_matches("/api2/json")))
        .collect()
}

fn names(api: &FakeProxmox) -> Vec<(u64, String, bool)> {
    api.vms()
        .into_iter()
        .map(|(id, vm)| (id, vm.name, vm.template))
        .collect()
}

/// The calls every deploy starts with: the version, the token's privileges on each path it
/// needs, the storages, then the VMs.
const PREFLIGHT: [&str; 7] = [
    "GET /version",
    "GET /access/permissions",
    "GET /access/permissions",
    "GET /access/permissions",
    "GET /access/permissions",
    "GET /nodes/pve/storage",
    "GET /nodes/pve/qemu",
];

fn with_preflight(rest: &[&str]) -> Vec<String> {
    PREFLIGHT
        .iter()
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn deploy_makes_a_template_through_the_api() {
    let vm = vm_build();
    let api = FakeProxmox::start();
    let o = deploy(vm, &api, fake_proxmox::TOKEN, &[]);
    assert_ok(&o);
    assert_eq!(stdout(&o).trim(), "9000");
    let log = stderr(&o);
    assert!(
        log.contains("proxmox: POST /nodes/pve/qemu (create VM 9000): ok"),
        "{log}"
    );
    assert!(log.contains("Proxmox VE 8.4.1"), "{log}");
    assert!(
        log.contains("clones get the recipe's user-data only through a cicustom snippet"),
        "{log}"
    );

    let reqs = api.requests();
    let auth = format!("PVEAPIToken={}", fake_proxmox::TOKEN);
    assert!(
        reqs.iter()
            .all(|r| r.auth.as_deref() == Some(auth.as_str()))
    );
    assert!(reqs.iter().all(|r| r.status == 200), "{reqs:#?}");
    assert_eq!(
        calls(&api, 0),
        with_preflight(&[
            "GET /nodes/pve/storage/local/content",
            "POST /nodes/pve/storage/local/upload",
            "POST /nodes/pve/qemu",
            "POST /nodes/pve/qemu/9000/template",
            "PUT /nodes/pve/qemu/9000/config",
        ])
    );
    let perm_paths: Vec<String> = reqs
        .iter()
        .filter(|r| r.path.ends_with("/access/permissions"))
        .map(|r| r.query["path"].clone())
        .collect();
    assert_eq!(
        perm_paths,
        [
            "/storage/local",
            "/storage/local-lvm",
            "/vms",
            "/sdn/zones/localnetwork/vmbr0"
        ]
    );
    // Every task was polled to its end.
    let polls = reqs.iter().filter(|r| r.path.ends_with("/status")).count();
    assert_eq!(polls, 6, "two polls for each of three tasks");

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vm.dir.join("manifest.json")).unwrap()).unwrap();
    let disk_sha = manifest["disk"]["sha256"].as_str().unwrap();
    let uploads: Vec<_> = reqs
        .iter()
        .filter(|r| r.path.ends_with("/upload"))
        .collect();
    assert_eq!(
        uploads.len(),
        1,
        "the disk only: a seed ISO would reach no clone"
    );
    assert_eq!(
        uploads[0].parts,
        ["content", "checksum-algorithm", "checksum", "filename"],
        "the file part last, as pve-http-server reads it"
    );
    assert_eq!(uploads[0].form["content"], "import");
    assert_eq!(uploads[0].form["checksum-algorithm"], "sha256");
    assert_eq!(uploads[0].form["checksum"], disk_sha);
    assert_eq!(
        uploads[0].form["filename"],
        format!("bootvm-{}.qcow2", &disk_sha[..12])
    );

    let vms = api.vms();
    let t = &vms[&9000];
    assert!(t.template);
    assert_eq!(t.name, "bootvm");
    let c = &t.config;
    assert_eq!(c["name"], "bootvm-building", "made under a temporary name");
    assert_eq!(c["tags"], "imgbuild;imgbuild-bootvm");
    assert_eq!(
        c["scsi0"],
        format!(
            "local-lvm:0,import-from=local:import/bootvm-{}.qcow2,discard=on",
            &disk_sha[..12]
        )
    );
    assert_eq!(c["efidisk0"], "local-lvm:1,efitype=4m,pre-enrolled-keys=0");
    assert_eq!(c["ide2"], "local-lvm:cloudinit");
    assert_eq!(c["bios"], "ovmf");
    assert_eq!(c["serial0"], "socket");
    assert_eq!(c["agent"], "enabled=1");
    assert_eq!(c["memory"], "2048");
    assert_eq!(c["ciuser"], "coder");
    assert!(
        c["sshkeys"].starts_with("ssh-ed25519%20AAAA"),
        "{}",
        c["sshkeys"]
    );
    assert!(
        !c.contains_key("cicustom"),
        "no snippets unless snippets_via = ssh"
    );

    // Again: a new template with a new id; the disk is not sent twice; the old one steps
    // aside under NAME-VMID (keep = 2 by default).
    let before = api.requests().len();
    let o = deploy(vm, &api, fake_proxmox::TOKEN, &[]);
    assert_ok(&o);
    assert_eq!(stdout(&o).trim(), "100");
    assert_eq!(
        calls(&api, before),
        with_preflight(&[
            "GET /cluster/nextid",
            "GET /nodes/pve/storage/local/content",
            "POST /nodes/pve/qemu",
            "POST /nodes/pve/qemu/100/template",
            "PUT /nodes/pve/qemu/100/config",
            "GET /nodes/pve/qemu/9000/config",
            "PUT /nodes/pve/qemu/9000/config",
        ])
    );
    assert_eq!(
        names(&api),
        [
            (100, "bootvm".into(), true),
            (9000, "bootvm-9000".into(), true)
        ]
    );

    // A third time: the oldest (by creation time, not id) goes.
    let o = deploy(vm, &api, fake_proxmox::TOKEN, &[]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("older templates kept: [100], removed: [9000]"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        names(&api),
        [
            (100, "bootvm-100".into(), true),
            (101, "bootvm".into(), true)
        ]
    );
    let del = api
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .unwrap();
    assert!(del.path.ends_with("/qemu/9000"));
    assert_eq!(del.query["purge"], "1");
    assert_eq!(del.query["destroy-unreferenced-disks"], "1");

    // A VM of that name that imgbuild did not make is never touched.
    api.state.lock().unwrap().vms.insert(
        555,
        fake_proxmox::Vm {
            name: "bootvm".into(),
            template: false,
            config: Default::default(),
        },
    );
    let before = api.requests().len();
    let o = deploy(vm, &api, fake_proxmox::TOKEN, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("VM 555 on pve is named `bootvm` but imgbuild did not make it"),
        "{}",
        stderr(&o)
    );
    assert!(
        calls(&api, before).iter().all(|c| c.starts_with("GET ")),
        "nothing changed: {:?}",
        calls(&api, before)
    );
}

#[test]
fn deploy_works_on_8_4_and_9_and_stops_early_on_older_nodes() {
    let vm = vm_build();
    for profile in [Profile::V8_4, Profile::V9_0] {
        let api = FakeProxmox::with_profile(profile);
        api.state.lock().unwrap().prepared_storages();
        let o = deploy(vm, &api, fake_proxmox::TOKEN, &[]);
        assert_ok(&o);
        assert!(api.vms()[&9000].template, "{profile:?}");
    }
    for (profile, version) in [(Profile::V8_2, "8.2.7"), (Profile::V8_3, "8.3.5")] {
        let api = FakeProxmox::with_profile(profile);
        api.state.lock().unwrap().prepared_storages();
        let o = deploy(vm, &api, fake_proxmox::TOKEN, &[]);
        assert_eq!(o.status.code(), Some(1), "{profile:?}");
        let e = stderr(&o);
        assert!(
            e.contains(&format!("the node runs Proxmox VE {version}, which cannot take a qcow2 disk as `import` content"))
                && e.contains("apt update && apt dist-upgrade"),
            "{profile:?}: {e}"
        );
        assert_eq!(
            calls(&api, 0),
            ["GET /version"],
            "{profile:?}: nothing else"
        );
    }
    // What the fake does on those versions is what the check spares the user: 8.3 takes only
    // .ova as import content, 8.2 has no import content at all.
    for (profile, words) in [
        (Profile::V8_3, "invalid filename or wrong extension"),
        (
            Profile::V8_2,
            "does not have a value in the enumeration 'iso, vztmpl'",
        ),
    ] {
        let api = FakeProxmox::with_profile(profile);
        api.state.lock().unwrap().prepared_storages();
        let o = std::process::Command::new("curl")
            .args(["-s", "-H"])
            .arg(format!(
                "Authorization: PVEAPIToken={}",
                fake_proxmox::TOKEN
            ))
            .args([
                "-F",
                "content=import",
                "-F",
                "filename=@/etc/hostname;filename=d.qcow2",
            ])
            .arg(format!(
                "{}/api2/json/nodes/pve/storage/local/upload",
                api.url
            ))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(body.contains(words), "{profile:?}: {body}");
    }
}

#[test]
fn deploy_names_what_a_stock_node_lacks() {
    let vm = vm_build();
    let api = FakeProxmox::start();
    api.state.lock().unwrap().stock_storages();
    let o = deploy(vm, &api, fake_proxmox::TOKEN, &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("storage `local` has content iso,vztmpl,backup but needs import: pvesm set local --content backup,import,iso,vztmpl"),
        "{e}"
    );
    assert!(
        api.requests().iter().all(|r| r.method == "GET"),
        "nothing sent before the check"
    );
    // A disk storage without images (the README recipe without disk_storage used `local`).
    let api = FakeProxmox::start();
    {
        let mut s = api.state.lock().unwrap();
        s.storages.get_mut("local-lvm").unwrap().content = vec!["rootdir".into()];
    }
    let o = deploy(vm, &api, fake_proxmox::TOKEN, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("storage `local-lvm` has content rootdir but needs images: pvesm set local-lvm --content images,rootdir"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn deploy_checks_the_token_privileges_first() {
    let vm = vm_build();
    let api = FakeProxmox::start();
    let token_id = fake_proxmox::USER_TOKEN.split_once('=').unwrap().0;
    {
        // A privilege-separated token: the user has broad rights, the token only some.
        let mut s = api.state.lock().unwrap();
        s.grant("imgbuild@pve", "/", fake_proxmox::ALL_PRIVS);
        s.grant(
            token_id,
            "/storage",
            &["Datastore.Audit", "Datastore.AllocateSpace"],
        );
        s.grant(
            token_id,
            "/vms",
            &[
                "VM.Audit",
                "VM.Config.CDROM",
                "VM.Config.CPU",
                "VM.Config.Cloudinit",
                "VM.Config.Disk",
                "VM.Config.HWType",
                "VM.Config.Memory",
                "VM.Config.Network",
                "VM.Config.Options",
            ],
        );
    }
    let o = deploy(vm, &api, fake_proxmox::USER_TOKEN, &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("/storage/local: Datastore.AllocateTemplate"),
        "{e}"
    );
    assert!(e.contains("/vms: VM.Allocate"), "{e}");
    assert!(e.contains("/sdn/zones/localnetwork/vmbr0: SDN.Use"), "{e}");
    assert!(
        !e.contains("/storage/local-lvm:"),
        "that one is granted: {e}"
    );
    assert!(e.contains("pveum role add ImgbuildDeploy --privs '"), "{e}");
    assert!(
        e.contains("pveum acl modify /vms --tokens 'imgbuild@pve!ci' --roles ImgbuildDeploy"),
        "{e}"
    );
    assert!(!e.contains("5ecr3t"), "the secret is never printed: {e}");
    assert!(
        api.requests().iter().all(|r| r.method == "GET"),
        "nothing sent before the check"
    );
    // Granted as the message says: the same token deploys.
    {
        let mut s = api.state.lock().unwrap();
        let all: Vec<&str> = fake_proxmox::ALL_PRIVS.to_vec();
        for path in ["/storage/local", "/vms", "/sdn/zones/localnetwork/vmbr0"] {
            s.grant(token_id, path, &all);
        }
    }
    let o = deploy(vm, &api, fake_proxmox::USER_TOKEN, &[]);
    assert_ok(&o);
}

#[test]
fn a_task_that_ends_with_warnings_succeeded() {
    let vm = vm_build();
    let api = FakeProxmox::start();
    api.state.lock().unwrap().warn_task = Some((
        "qmcreate".into(),
        vec!["disk image was resized to fit the target storage".into()],
    ));
    let o = deploy(vm, &api, fake_proxmox::TOKEN, &[]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("WARN: disk image was resized to fit the target storage"),
        "{}",
        stderr(&o)
    );
    assert!(api.vms()[&9000].template);
}

#[test]
fn an_upload_whose_checksum_fails_in_its_task_stops_the_deploy() {
    let vm = vm_build();
    let api = FakeProxmox::start();
    api.state.lock().unwrap().fail_task = Some((
        "imgcopy".into(),
        "checksum mismatch: got 'aa' != expect 'bb'".into(),
    ));
    let o = deploy(vm, &api, fake_proxmox::TOKEN, &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("waiting for the upload of bootvm-"), "{e}");
    assert!(e.contains("checksum mismatch"), "{e}");
    assert!(api.vms().is_empty());
}

#[test]
fn errors_are_read_from_the_status_line_and_from_the_body() {
    let vm = vm_build();
    for profile in [Profile::V8_2, Profile::V9_0] {
        let api = FakeProxmox::with_profile(profile);
        api.state.lock().unwrap().fail_http.push((
            "GET".into(),
            "/version".into(),
            500,
            "node is fenced".into(),
        ));
        let o = deploy(vm, &api, fake_proxmox::TOKEN, &[]);
        assert_eq!(o.status.code(), Some(1));
        let e = stderr(&o);
        assert!(
            e.contains("GET /version: HTTP 500: node is fenced"),
            "{profile:?}: {e}"
        );
        assert!(
            !e.contains("node is fenced: node is fenced"),
            "said once: {e}"
        );
    }
}

#[test]
fn deploy_failures_are_clear_and_leave_the_previous_template_intact() {
    let vm = vm_build();

    // A wrong token: 401, nothing made.
    let api = FakeProxmox::start();
    let o = deploy(vm, &api, "root@pam!imgbuild=wrong", &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("GET /version: HTTP 401") && e.contains("authentication failure"),
        "{e}"
    );
    assert!(!e.contains("wrong"), "the secret is never printed: {e}");
    assert!(api.vms().is_empty());

    // A malformed token is a usage error.
    let o = deploy(vm, &api, "not-a-token", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    // Each failing call of a second deploy: the error names it, a VM this deploy made is
    // removed again unless it is already a complete template, and the previous template
    // (9000, `bootvm`) is untouched.
    /// (label, (method, path suffix) answered 500, task type that fails, what is left)
    type Left = &'static [(u64, &'static str)];
    type Case = (
        &'static str,
        Option<(&'static str, &'static str)>,
        Option<&'static str>,
        Left,
    );
    let cases: [Case; 11] = [
        (
            "version",
            Some(("GET", "/version")),
            None,
            &[(9000, "bootvm")],
        ),
        (
            "storages",
            Some(("GET", "/nodes/pve/storage")),
            None,
            &[(9000, "bootvm")],
        ),
        (
            "permissions",
            Some(("GET", "/access/permissions")),
            None,
            &[(9000, "bootvm")],
        ),
        (
            "list",
            Some(("GET", "/nodes/pve/qemu")),
            None,
            &[(9000, "bootvm")],
        ),
        (
            "next id",
            Some(("GET", "/cluster/nextid")),
            None,
            &[(9000, "bootvm")],
        ),
        (
            "create refused",
            Some(("POST", "/nodes/pve/qemu")),
            None,
            &[(9000, "bootvm")],
        ),
        (
            "create task fails",
            None,
            Some("qmcreate"),
            &[(9000, "bootvm")],
        ),
        (
            "template refused",
            Some(("POST", "/template")),
            None,
            &[(9000, "bootvm")],
        ),
        (
            "template task fails",
            None,
            Some("qmtemplate"),
            &[(9000, "bootvm")],
        ),
        (
            "naming the new one",
            Some(("PUT", "/qemu/100/config")),
            None,
            &[(100, "bootvm-building"), (9000, "bootvm")],
        ),
        (
            "reading the old one",
            Some(("GET", "/qemu/9000/config")),
            None,
            &[(100, "bootvm"), (9000, "bootvm")],
        ),
    ];
    for (label, http, task, left) in cases {
        let api = FakeProxmox::start();
        assert_ok(&deploy(vm, &api, fake_proxmox::TOKEN, &[]));
        {
            let mut s = api.state.lock().unwrap();
            if let Some((method, suffix)) = http {
                s.fail_http
                    .push((method.into(), suffix.into(), 500, "injected failure".into()));
            }
            if let Some(kind) = task {
                s.fail_task = Some((kind.into(), "command 'qm' failed: exit code 255".into()));
            }
        }
        let o = deploy(vm, &api, fake_proxmox::TOKEN, &[]);
        assert_eq!(o.status.code(), Some(1), "{label}: {}", stderr(&o));
        let e = stderr(&o);
        if http.is_some() {
            assert!(
                e.contains("HTTP 500") && e.contains("injected failure"),
                "{label}: {e}"
            );
        } else {
            assert!(
                e.contains("ended with `command 'qm' failed: exit code 255`"),
                "{label}: {e}"
            );
            assert!(
                e.contains("TASK ERROR"),
                "{label}: the task log is quoted: {e}"
            );
            assert!(e.contains("removing the half-made VM 100"), "{label}: {e}");
        }
        let got: Vec<(u64, String)> = names(&api).into_iter().map(|(id, n, _)| (id, n)).collect();
        let want: Vec<(u64, String)> = left.iter().map(|(id, n)| (*id, n.to_string())).collect();
        assert_eq!(got, want, "{label}: what is left on the node");
        assert!(
            api.vms()[&9000].template,
            "{label}: the previous template stays one"
        );
    }
}

#[test]
fn a_proxmox_node_that_stalls_fails_the_deploy() {
    let vm = vm_build();
    let server = crate::network::Staller::start(crate::network::Stall::Silent);
    let started = std::time::Instant::now();
    let o = vm
        .work
        .cmd()
        .env("PROXMOX_URL", &server.url)
        .env("PROXMOX_TOKEN", fake_proxmox::TOKEN)
        .args([
            "--network-timeout",
            "1",
            "--var",
            "mirror=http://127.0.0.1:9/unused",
        ])
        .arg("deploy")
        .arg(vm.work.path("recipes/bootvm.toml"))
        .arg("--dir")
        .arg(&vm.dir)
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("GET /version: the node stalled (no answer or no data for 1 s"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "GETs are tried three times"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// The README's two Terraform examples, checked without Terraform: HCL parses, providers are
/// pinned, every name exists in the pinned providers' sources (examples/terraform/schemas.json,
/// from scripts/tf-schemas), templatefile() fills every placeholder of imgbuild's snippet, and
/// the rendered per-workspace user-data passes `cloud-init schema`.
#[test]
fn terraform_examples_match_their_providers_and_render_valid_user_data() {
    let w = Work::setup();
    let out = w.path("ci");
    let o = w
        .cmd()
        .args(VARS)
        .arg("cloud-init")
        .arg(w.path("recipes/coderall-bookworm.toml"))
        .args(["--clone", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_ok(&o);
    let python = repo().join("target/py-hcl2/bin/python");
    assert!(
        python.exists(),
        "scripts/deps installs python-hcl2 into target/py-hcl2"
    );
    let check = |tf: &Path, rendered: &Path| {
        Std::new(&python)
            .arg(repo().join("tests/terraform/check.py"))
            .arg(tf)
            .arg(repo().join("examples/terraform/schemas.json"))
            .arg(out.join("user-data"))
            .arg(rendered)
            .output()
            .unwrap()
    };
    for example in ["bpg", "telmate"] {
        let tf = repo().join(format!("examples/terraform/{example}/main.tf"));
        let rendered = w.path(&format!("rendered-{example}"));
        let o = check(&tf, &rendered);
        assert_ok(&o);
        let parts = mime_parts(&rendered);
        assert_eq!(parts.len(), 2, "{example}: {parts:?}");
        schema_ok(&parts[0].1, &w.path(""), &format!("terraform-{example}"));
        assert!(
            parts[1]
                .1
                .contains("export CODER_AGENT_TOKEN='TEST-AGENT-TOKEN-1234'")
                && parts[1]
                    .1
                    .contains("<<'CODER_INIT_SCRIPT_END'\necho coder agent init\n"),
            "{example}: {}",
            parts[1].1
        );
    }
    // The checker fails on what Terraform would refuse: an attribute the provider does not
    // have, and the coder provider 2.x's removed `owner`.
    let text = std::fs::read_to_string(repo().join("examples/terraform/bpg/main.tf")).unwrap();
    let bad = w.path("bad.tf");
    std::fs::write(
        &bad,
        text.replace(
            "data.coder_workspace_owner.me.name",
            "data.coder_workspace.me.owner",
        )
        .replace("user_data_file_id", "user_data_file"),
    )
    .unwrap();
    let o = check(&bad, &w.path("rendered-bad"));
    assert_eq!(o.status.code(), Some(1));
    let msg = stdout(&o);
    assert!(
        msg.contains("`owner` is not an attribute of coder_workspace"),
        "{msg}"
    );
    assert!(
        msg.contains("`user_data_file` is not an argument or block"),
        "{msg}"
    );
}

#[test]
fn boot_names_what_is_missing() {
    let w = Work::setup();
    let o = w
        .cmd()
        .args(["boot", "--dir"])
        .arg(w.path("out/none"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("manifest.json") && stderr(&o).contains("build the proxmox target"),
        "{}",
        stderr(&o)
    );
    let o = w.cmd().arg("boot").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = w
        .cmd()
        .args(["boot", "--dir", "x", "--timeout", "soon"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--timeout `soon`"), "{}", stderr(&o));
}
