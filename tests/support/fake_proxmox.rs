//! A FAKE Proxmox VE API server for the tests (axum on 127.0.0.1), written from the API
//! documentation (pve-docs `api-viewer`, `/api2/json`), not from a real node. It keeps just
//! enough state (VMs, storage volumes, tasks) to answer the calls imgbuild makes, and it is
//! strict where the real API is: the token header, the documented form fields and their
//! formats, volume ids that must exist, content types per storage, upload checksums. Every
//! request is recorded so tests can check method, path, auth and fields. Failures can be
//! injected: an HTTP status for one call, or a task that ends in error.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const NODE: &str = "pve";
pub const TOKEN: &str = "root@pam!imgbuild=5ecr3t-0000-1111";
/// File storage (`dir` type): import, iso, snippets.
pub const FILE_STORAGE: &str = "local";
/// Block storage for VM disks (`lvmthin` type): images only.
pub const DISK_STORAGE: &str = "local-lvm";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// Form fields (urlencoded or multipart; a file part records its file name).
    pub form: BTreeMap<String, String>,
    pub auth: Option<String>,
    pub status: u16,
}

#[derive(Debug, Clone)]
pub struct Vm {
    pub name: String,
    pub template: bool,
    pub config: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct Task {
    node: String,
    exit: String,
    polls_left: u32,
    log: Vec<String>,
}

#[derive(Debug, Default)]
pub struct State {
    pub requests: Vec<Recorded>,
    pub vms: BTreeMap<u64, Vm>,
    /// volid -> (size, sha256)
    pub volumes: BTreeMap<String, (u64, String)>,
    tasks: BTreeMap<String, Task>,
    /// Answer `(METHOD, path suffix)` with this status and message (once per match).
    pub fail_http: Vec<(String, String, u16, String)>,
    /// Tasks of this type (`qmcreate`, `qmtemplate`, `imgcopy`) end with this exit status.
    pub fail_task: Option<(String, String)>,
    task_seq: u64,
    /// The token's privileges by ACL path (`GET /access/permissions`); `None`: every one.
    pub permissions: Option<BTreeMap<String, Vec<String>>>,
    /// Creation times handed out (`meta: ctime=`), increasing.
    clock: u64,
}

pub struct FakeProxmox {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    _rt: tokio::runtime::Runtime,
}

impl FakeProxmox {
    pub fn start() -> FakeProxmox {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let state = Arc::new(Mutex::new(State::default()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let st = state.clone();
        // Disk images are large: no body limit.
        let app = axum::Router::new()
            .fallback(move |req: Request| {
                let st = st.clone();
                async move { handle(st, req).await }
            })
            .layer(axum::extract::DefaultBodyLimit::disable());
        rt.spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        FakeProxmox {
            url,
            state,
            _rt: rt,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn vms(&self) -> BTreeMap<u64, Vm> {
        self.state.lock().unwrap().vms.clone()
    }
}

fn err(status: StatusCode, msg: &str) -> Response {
    // Proxmox answers errors with the reason in the status line and `{"data":null}`; our
    // HTTP stack cannot set a custom reason, so the message also goes into `message`.
    (
        status,
        axum::Json(json!({"data": null, "message": format!("{msg}\n")})),
    )
        .into_response()
}

fn param_err(errors: BTreeMap<String, String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(
            json!({"data": null, "errors": errors, "message": "Parameter verification failed.\n"}),
        ),
    )
        .into_response()
}

fn ok(data: Value) -> Response {
    axum::Json(json!({ "data": data })).into_response()
}

async fn handle(st: Arc<Mutex<State>>, req: Request) -> Response {
    let method = req.method().clone();
    // Path segments arrive percent-encoded (UPIDs carry `:`, `@`, `!`).
    let path = req
        .uri()
        .path()
        .split('/')
        .map(decode)
        .collect::<Vec<_>>()
        .join("/");
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .collect::<BTreeMap<String, String>>()
        })
        .unwrap_or_default();
    let headers: HeaderMap = req.headers().clone();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // The form: multipart (uploads) or urlencoded.
    let mut form = BTreeMap::new();
    let mut file: Option<(String, Bytes)> = None;
    if ctype.starts_with("multipart/form-data") {
        let mut mp = match Multipart::from_request(req, &()).await {
            Ok(m) => m,
            Err(e) => return err(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        while let Ok(Some(field)) = mp.next_field().await {
            let name = field.name().unwrap_or("").to_string();
            if let Some(fname) = field.file_name().map(str::to_string) {
                let data = field.bytes().await.unwrap_or_default();
                form.insert(name, fname.clone());
                file = Some((fname, data));
            } else {
                form.insert(name, field.text().await.unwrap_or_default());
            }
        }
    } else {
        let body = axum::body::to_bytes(req.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        for (k, v) in url_pairs(&String::from_utf8_lossy(&body)) {
            form.insert(k, v);
        }
    }
    let expected = format!("PVEAPIToken={TOKEN}");
    let response = if auth.as_deref() != Some(expected.as_str()) {
        err(StatusCode::UNAUTHORIZED, "authentication failure")
    } else {
        let mut s = st.lock().unwrap();
        let injected = s
            .fail_http
            .iter()
            .position(|(m, p, _, _)| *m == method.as_str() && path.ends_with(p.as_str()));
        match injected {
            Some(i) => {
                let (_, _, code, msg) = s.fail_http.remove(i);
                err(StatusCode::from_u16(code).unwrap(), &msg)
            }
            None => route(&mut s, &method, &path, &query, &form, file),
        }
    };
    st.lock().unwrap().requests.push(Recorded {
        method: method.to_string(),
        path,
        query,
        form,
        auth,
        status: response.status().as_u16(),
    });
    response
}

fn url_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?');
                out.push(h);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn new_task(s: &mut State, node: &str, kind: &str, id: &str, log: Vec<String>) -> String {
    s.task_seq += 1;
    let upid = format!(
        "UPID:{node}:{:08X}:{:08X}:{:08X}:{kind}:{id}:root@pam!imgbuild:",
        1000 + s.task_seq,
        s.task_seq,
        0x6940_0000 + s.task_seq
    );
    let exit = match &s.fail_task {
        Some((k, status)) if k == kind => status.clone(),
        _ => "OK".to_string(),
    };
    s.tasks.insert(
        upid.clone(),
        Task {
            node: node.to_string(),
            exit,
            polls_left: 1,
            log,
        },
    );
    upid
}

fn route(
    s: &mut State,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    form: &BTreeMap<String, String>,
    file: Option<(String, Bytes)>,
) -> Response {
    let Some(rest) = path.strip_prefix("/api2/json/") else {
        return err(StatusCode::NOT_FOUND, "not found");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let m = method.as_str();
    match (m, parts.as_slice()) {
        ("GET", ["access", "permissions"]) => {
            // `path`: only that path's effective privileges, as `{path: {priv: 1}}`.
            let Some(p) = query.get("path") else {
                return ok(json!({}));
            };
            let privs: Vec<String> = match &s.permissions {
                None => ["Datastore.Audit", "Datastore.AllocateTemplate", "Datastore.AllocateSpace", "VM.Allocate", "VM.Audit", "VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Cloudinit", "VM.Config.Disk", "VM.Config.HWType", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options", "Sys.Audit"].iter().map(|x| x.to_string()).collect(),
                Some(m) => m.get(p).cloned().unwrap_or_default(),
            };
            let map: serde_json::Map<String, Value> = privs.into_iter().map(|x| (x, json!(1))).collect();
            ok(json!({ p.clone(): map }))
        }
        ("GET", ["nodes", _, "qemu", vmid, "config"]) => {
            let Some(vm) = vmid.parse::<u64>().ok().and_then(|id| s.vms.get(&id)) else {
                return err(StatusCode::INTERNAL_SERVER_ERROR, &format!("Configuration file 'nodes/{NODE}/qemu-server/{vmid}.conf' does not exist"));
            };
            let mut c: serde_json::Map<String, Value> = vm.config.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            c.remove("vmid");
            c.insert("name".into(), json!(vm.name));
            if vm.template {
                c.insert("template".into(), json!(1));
            }
            ok(Value::Object(c))
        }
        ("PUT", ["nodes", _, "qemu", vmid, "config"]) => {
            let mut errors = BTreeMap::new();
            for k in form.keys() {
                if !["name", "description", "tags"].contains(&k.as_str()) {
                    errors.insert(k.clone(), "not supported by this fake".to_string());
                }
            }
            if let Some(n) = form.get("name")
                && (n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
            {
                errors.insert("name".into(), format!("invalid format - value '{n}' does not look like a valid DNS name"));
            }
            if !errors.is_empty() {
                return param_err(errors);
            }
            let Some(vm) = vmid.parse::<u64>().ok().and_then(|id| s.vms.get_mut(&id)) else {
                return err(StatusCode::INTERNAL_SERVER_ERROR, &format!("Configuration file 'nodes/{NODE}/qemu-server/{vmid}.conf' does not exist"));
            };
            if let Some(n) = form.get("name") {
                vm.name = n.clone();
            }
            ok(Value::Null)
        }
        ("GET", ["cluster", "nextid"]) => {
            let id = (100u64..).find(|i| !s.vms.contains_key(i)).unwrap_or(100);
            // The API returns the id as a string.
            ok(json!(id.to_string()))
        }
        ("GET", ["storage", storage]) => match *storage {
            FILE_STORAGE => ok(json!({"storage": FILE_STORAGE, "type": "dir", "path": "/var/lib/vz", "content": "iso,vztmpl,import,snippets,backup"})),
            DISK_STORAGE => ok(json!({"storage": DISK_STORAGE, "type": "lvmthin", "content": "images,rootdir"})),
            other => err(StatusCode::INTERNAL_SERVER_ERROR, &format!("storage '{other}' does not exist")),
        },
        (_, ["nodes", node, ..]) if *node != NODE => err(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("hostname lookup '{node}' failed - failed to get address info"),
        ),
        ("GET", ["nodes", _, "qemu"]) => ok(Value::Array(
            s.vms
                .iter()
                .map(|(id, vm)| {
                    let mut v = json!({"vmid": id, "name": vm.name, "status": "stopped", "template": if vm.template { 1 } else { 0 }});
                    if let Some(t) = vm.config.get("tags") {
                        v["tags"] = json!(t);
                    }
                    v
                })
                .collect(),
        )),
        ("GET", ["nodes", _, "storage", storage, "content"]) => {
            if *storage != FILE_STORAGE && *storage != DISK_STORAGE {
                return err(StatusCode::INTERNAL_SERVER_ERROR, &format!("storage '{storage}' does not exist"));
            }
            let prefix = format!("{storage}:");
            ok(Value::Array(
                s.volumes
                    .iter()
                    .filter(|(v, _)| v.starts_with(&prefix))
                    .map(|(v, (size, _))| {
                        let content = v[prefix.len()..].split('/').next().unwrap_or("");
                        json!({"volid": v, "size": size, "content": content, "format": v.rsplit('.').next()})
                    })
                    .collect(),
            ))
        }
        ("POST", ["nodes", node, "storage", storage, "upload"]) => {
            let mut errors = BTreeMap::new();
            let content = form.get("content").cloned().unwrap_or_default();
            if !["iso", "vztmpl", "import"].contains(&content.as_str()) {
                errors.insert("content".into(), format!("value '{content}' does not have a value in the enumeration 'iso, vztmpl, import'"));
            }
            if let Some(a) = form.get("checksum-algorithm")
                && !["md5", "sha1", "sha224", "sha256", "sha384", "sha512"].contains(&a.as_str())
            {
                errors.insert("checksum-algorithm".into(), "value not in enumeration".into());
            }
            let Some((fname, data)) = file else {
                errors.insert("filename".into(), "property is missing and it is not optional".into());
                return param_err(errors);
            };
            if !errors.is_empty() {
                return param_err(errors);
            }
            if *storage != FILE_STORAGE {
                return err(StatusCode::INTERNAL_SERVER_ERROR, &format!("storage '{storage}' does not support '{content}' content"));
            }
            let ok_ext = match content.as_str() {
                "iso" => fname.ends_with(".iso") || fname.ends_with(".img"),
                "import" => [".qcow2", ".raw", ".vmdk", ".ova"].iter().any(|e| fname.ends_with(e)),
                _ => fname.ends_with(".tar.gz") || fname.ends_with(".tar.xz") || fname.ends_with(".tar.zst"),
            };
            if !ok_ext {
                return err(StatusCode::BAD_REQUEST, &format!("wrong file extension for content '{content}': {fname}"));
            }
            let sha = hex::encode(Sha256::digest(&data));
            if let Some(want) = form.get("checksum")
                && *want != sha
            {
                return err(StatusCode::INTERNAL_SERVER_ERROR, &format!("checksum mismatch: got '{sha}' != expected '{want}'"));
            }
            let volid = format!("{storage}:{content}/{fname}");
            s.volumes.insert(volid.clone(), (data.len() as u64, sha));
            let node = node.to_string();
            let upid = new_task(s, &node, "imgcopy", "", vec![format!("target file: /var/lib/vz/{content}/{fname}"), "TASK OK".into()]);
            ok(json!(upid))
        }
        ("POST", ["nodes", node, "qemu"]) => create_vm(s, node, form),
        ("POST", ["nodes", node, "qemu", vmid, "template"]) => {
            let Ok(id) = vmid.parse::<u64>() else {
                return param_err(BTreeMap::from([("vmid".into(), "type check ('integer') failed".into())]));
            };
            match s.vms.get_mut(&id) {
                None => err(StatusCode::INTERNAL_SERVER_ERROR, &format!("Configuration file 'nodes/{NODE}/qemu-server/{id}.conf' does not exist")),
                Some(vm) => {
                    vm.template = true;
                    let node = node.to_string();
                    let upid = new_task(s, &node, "qmtemplate", vmid, vec!["TASK OK".into()]);
                    ok(json!(upid))
                }
            }
        }
        ("DELETE", ["nodes", node, "qemu", vmid]) => {
            let Ok(id) = vmid.parse::<u64>() else {
                return param_err(BTreeMap::from([("vmid".into(), "type check ('integer') failed".into())]));
            };
            for (k, v) in query {
                if !["purge", "destroy-unreferenced-disks", "skiplock"].contains(&k.as_str()) || !["0", "1"].contains(&v.as_str()) {
                    return param_err(BTreeMap::from([(k.clone(), "property is not defined in schema".into())]));
                }
            }
            if s.vms.remove(&id).is_none() {
                return err(StatusCode::INTERNAL_SERVER_ERROR, &format!("Configuration file 'nodes/{NODE}/qemu-server/{id}.conf' does not exist"));
            }
            let node = node.to_string();
            let upid = new_task(s, &node, "qmdestroy", vmid, vec!["TASK OK".into()]);
            ok(json!(upid))
        }
        ("GET", ["nodes", node, "tasks", upid, "status"]) => match s.tasks.get_mut(*upid) {
            Some(t) if t.node == *node => {
                if t.polls_left > 0 {
                    t.polls_left -= 1;
                    ok(json!({"upid": upid, "node": node, "status": "running"}))
                } else {
                    ok(json!({"upid": upid, "node": node, "status": "stopped", "exitstatus": t.exit}))
                }
            }
            _ => err(StatusCode::INTERNAL_SERVER_ERROR, "no such task"),
        },
        ("GET", ["nodes", _, "tasks", upid, "log"]) => match s.tasks.get(*upid) {
            Some(t) => {
                let mut lines = t.log.clone();
                if t.exit != "OK" {
                    lines.retain(|l| l != "TASK OK");
                    lines.push(format!("TASK ERROR: {}", t.exit));
                }
                ok(Value::Array(
                    lines.iter().enumerate().map(|(i, l)| json!({"n": i + 1, "t": l})).collect(),
                ))
            }
            None => err(StatusCode::INTERNAL_SERVER_ERROR, "no such task"),
        },
        _ => err(StatusCode::NOT_IMPLEMENTED, &format!("Method '{m} /{rest}' not implemented")),
    }
}

/// `POST /nodes/{node}/qemu`, checked against the documented parameters.
fn create_vm(s: &mut State, node: &str, form: &BTreeMap<String, String>) -> Response {
    const KNOWN: &[&str] = &[
        "vmid",
        "name",
        "ostype",
        "machine",
        "bios",
        "efidisk0",
        "scsihw",
        "scsi0",
        "ide2",
        "boot",
        "serial0",
        "vga",
        "agent",
        "memory",
        "cores",
        "net0",
        "ipconfig0",
        "ciuser",
        "sshkeys",
        "cicustom",
        "description",
        "tags",
    ];
    let mut errors = BTreeMap::new();
    for k in form.keys() {
        if !KNOWN.contains(&k.as_str()) {
            errors.insert(k.clone(), "property is not defined in schema and the schema does not allow additional properties".into());
        }
    }
    let vmid = form.get("vmid").and_then(|v| v.parse::<u64>().ok());
    match vmid {
        Some(v) if (100..=999_999_999).contains(&v) => {}
        _ => {
            errors.insert(
                "vmid".into(),
                "value must be an integer between 100 and 999999999".into(),
            );
        }
    }
    let check = |k: &str, ok: &dyn Fn(&str) -> bool, errors: &mut BTreeMap<String, String>| {
        if let Some(v) = form.get(k)
            && !ok(v)
        {
            errors.insert(k.into(), format!("invalid format - {v}"));
        }
    };
    check("ostype", &|v| v == "l26", &mut errors);
    check("bios", &|v| ["ovmf", "seabios"].contains(&v), &mut errors);
    check(
        "machine",
        &|v| v.starts_with("q35") || v.starts_with("pc"),
        &mut errors,
    );
    check(
        "scsihw",
        &|v| ["virtio-scsi-single", "virtio-scsi-pci", "lsi"].contains(&v),
        &mut errors,
    );
    check(
        "serial0",
        &|v| v == "socket" || v.starts_with("/dev/"),
        &mut errors,
    );
    check(
        "vga",
        &|v| v.starts_with("serial0") || v.starts_with("std") || v == "virtio",
        &mut errors,
    );
    check(
        "agent",
        &|v| v == "1" || v.starts_with("enabled=1") || v == "0",
        &mut errors,
    );
    check(
        "memory",
        &|v| v.parse::<u32>().is_ok_and(|m| m >= 16),
        &mut errors,
    );
    check(
        "cores",
        &|v| v.parse::<u32>().is_ok_and(|c| c >= 1),
        &mut errors,
    );
    check(
        "net0",
        &|v| v.starts_with("virtio,bridge=") || v.starts_with("virtio="),
        &mut errors,
    );
    check(
        "ipconfig0",
        &|v| v.starts_with("ip=dhcp") || v.starts_with("ip="),
        &mut errors,
    );
    check("boot", &|v| v.starts_with("order="), &mut errors);
    check(
        "efidisk0",
        &|v| {
            v.starts_with(&format!("{DISK_STORAGE}:1,"))
                || v.starts_with(&format!("{FILE_STORAGE}:1,"))
        },
        &mut errors,
    );
    check(
        "ide2",
        &|v| v.ends_with(":cloudinit") || v.contains(",media=cdrom"),
        &mut errors,
    );
    check(
        "cicustom",
        &|v| {
            v.split(',').all(|p| {
                ["user=", "meta=", "network=", "vendor="]
                    .iter()
                    .any(|k| p.starts_with(k))
            })
        },
        &mut errors,
    );
    // sshkeys must be URL-encoded: no raw spaces or newlines survive.
    check(
        "sshkeys",
        &|v| !v.contains(' ') && !v.contains('\n'),
        &mut errors,
    );
    if !errors.is_empty() {
        return param_err(errors);
    }
    let vmid = vmid.unwrap_or(0);
    if s.vms.contains_key(&vmid) {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("unable to create VM {vmid} - VM {vmid} already exists on node '{node}'"),
        );
    }
    // scsi0: STORAGE:0,import-from=VOLID — the volume must exist, on a storage with images.
    let mut log = vec![format!("create VM {vmid}")];
    if let Some(scsi0) = form.get("scsi0") {
        let mut opts = scsi0.split(',');
        let target = opts.next().unwrap_or("");
        let import = opts.find_map(|o| o.strip_prefix("import-from="));
        if !target.ends_with(":0") || import.is_none() {
            return param_err(BTreeMap::from([(
                "scsi0".into(),
                format!("invalid format - expected STORAGE:0,import-from=VOLID, got {scsi0}"),
            )]));
        }
        let import = import.unwrap_or("");
        if !s.volumes.contains_key(import) {
            // The real API accepts the call and the task fails.
            let upid = new_task(
                s,
                node,
                "qmcreate",
                &vmid.to_string(),
                vec![format!("volume '{import}' does not exist")],
            );
            if let Some(t) = s.tasks.get_mut(&upid) {
                t.exit = format!("unable to create VM {vmid} - volume '{import}' does not exist");
            }
            s.vms.insert(
                vmid,
                Vm {
                    name: form.get("name").cloned().unwrap_or_default(),
                    template: false,
                    config: form.clone(),
                },
            );
            return ok(json!(upid));
        }
        log.push(format!("importing disk '{import}' to VM {vmid} ..."));
    }
    // The VM's config exists from here on, even if the task then fails; Proxmox records
    // when it was made in `meta`.
    s.clock += 1;
    let mut config = form.clone();
    config.insert(
        "meta".into(),
        format!("creation-qemu=8.1.2,ctime={}", 1_700_000_000 + s.clock),
    );
    s.vms.insert(
        vmid,
        Vm {
            name: form.get("name").cloned().unwrap_or_default(),
            template: false,
            config,
        },
    );
    log.push("TASK OK".into());
    let upid = new_task(s, node, "qmcreate", &vmid.to_string(), log);
    ok(json!(upid))
}
