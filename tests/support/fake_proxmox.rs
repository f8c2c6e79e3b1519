//! A FAKE Proxmox VE API server for the tests (axum on 127.0.0.1). Not a real node: it answers
//! the calls imgbuild makes the way Proxmox's own code does, each rule written from the source
//! named in its comment (pve-storage, qemu-server, pve-common, pve-http-server,
//! pve-access-control, pve-guest-common, read at their heads with the library's `fetch`).
//! Anything the real API refuses, the fake refuses.
//!
//! - **Version profiles** ([`Profile`]): 8.2 (no `import` upload), 8.3 (`import` uploads of
//!   `.ova` only), 8.4 and 9.0 (`.qcow2` too); errors in the status line only before
//!   libpve-http-server-perl 5.2 (8.2, 8.3), also as the JSON body's `message` after.
//! - **Privileges**: users and API tokens (privilege-separated or not) with ACL entries on paths,
//!   inherited when propagated, the most specific path winning; root@pam holds everything. Each
//!   endpoint checks what its Perl handler checks; a refusal is HTTP 403 "Permission check
//!   failed (PATH, PRIV)".
//! - **Storages** with their types and content; a stock node's `local` is `iso,vztmpl,backup`.
//! - **Tasks** (UPIDs) that run a few polls, end `OK`, `WARNINGS: N` or with an error, and keep
//!   a log; upload checksums are verified inside the upload task.
//!
//! Every request is recorded so tests can check method, path, auth and fields. Failures can be
//! injected: an HTTP status for one call, a task type that fails, a task type that warns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const NODE: &str = "pve";
/// root@pam's token without privilege separation: every privilege.
pub const TOKEN: &str = "root@pam!imgbuild=5ecr3t-0000-1111";
/// A privilege-separated token of a non-root user: what the ACLs give.
pub const USER_TOKEN: &str = "imgbuild@pve!ci=5ecr3t-2222-3333";
/// File storage (`dir` type).
pub const FILE_STORAGE: &str = "local";
/// Block storage for VM disks (`lvmthin` type).
pub const DISK_STORAGE: &str = "local-lvm";

/// Every privilege the fake knows (pve-access-control `AccessControl.pm`, `$privgroups`, the
/// ones these calls use).
pub const ALL_PRIVS: &[&str] = &[
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    "Datastore.Audit",
    "SDN.Use",
    "Sys.Audit",
    "Sys.Modify",
    "VM.Allocate",
    "VM.Audit",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
];

/// A Proxmox VE release as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    V8_2,
    V8_3,
    V8_4,
    V9_0,
}

impl Profile {
    fn version(self) -> (&'static str, &'static str) {
        match self {
            Profile::V8_2 => ("8.2.7", "8.2"),
            Profile::V8_3 => ("8.3.5", "8.3"),
            Profile::V8_4 => ("8.4.1", "8.4"),
            Profile::V9_0 => ("9.0.3", "9.0"),
        }
    }

    /// pve-storage `API2/Storage/Status.pm`, `upload`: the `content` enum and the `import`
    /// file name pattern (`UPLOAD_IMPORT_EXT_RE_1`): none before libpve-storage-perl 8.2.8,
    /// `ova` in 8.2.8 (PVE 8.3), `ova|qcow2|raw|vmdk` from 8.3.6 (PVE 8.4).
    fn import_extensions(self) -> Option<&'static [&'static str]> {
        match self {
            Profile::V8_2 => None,
            Profile::V8_3 => Some(&["ova"]),
            Profile::V8_4 | Profile::V9_0 => Some(&["ova", "qcow2", "raw", "vmdk"]),
        }
    }

    /// pve-http-server `Formatter/Standard.pm`, `prepare_response_data`: the JSON body carries
    /// `message` since 5.2.0 ("return api handler errors in the json body", 2025-01).
    fn message_in_body(self) -> bool {
        matches!(self, Profile::V8_4 | Profile::V9_0)
    }
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// Form fields (urlencoded or multipart; a file part records its file name).
    pub form: BTreeMap<String, String>,
    /// Multipart field names in the order they came.
    pub parts: Vec<String>,
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
pub struct Storage {
    pub kind: &'static str,
    pub content: Vec<String>,
    pub path: Option<String>,
}

/// One ACL entry (`/etc/pve/user.cfg`'s `acl:` lines): privileges for a user or a token on a
/// path, inherited by sub-paths when `propagate`.
#[derive(Debug, Clone)]
pub struct Acl {
    pub path: String,
    /// `USER@REALM` or `USER@REALM!TOKEN`.
    pub subject: String,
    pub privs: Vec<String>,
    pub propagate: bool,
}

#[derive(Debug, Clone)]
struct Task {
    node: String,
    exit: String,
    polls_left: u32,
    log: Vec<String>,
}

#[derive(Debug)]
pub struct State {
    pub profile: Profile,
    pub requests: Vec<Recorded>,
    pub vms: BTreeMap<u64, Vm>,
    /// volid -> (size, sha256)
    pub volumes: BTreeMap<String, (u64, String)>,
    pub storages: BTreeMap<String, Storage>,
    /// token id -> (secret, privilege separated)
    pub tokens: BTreeMap<String, (String, bool)>,
    pub acl: Vec<Acl>,
    tasks: BTreeMap<String, Task>,
    /// Answer `(METHOD, path suffix)` with this status and message (once per match).
    pub fail_http: Vec<(String, String, u16, String)>,
    /// Tasks of this type (`qmcreate`, `qmtemplate`, `imgcopy`) end with this exit status.
    pub fail_task: Option<(String, String)>,
    /// Tasks of this type end `WARNINGS: N` with these `WARN:` lines.
    pub warn_task: Option<(String, Vec<String>)>,
    task_seq: u64,
    /// Creation times handed out (`meta: ctime=`), increasing.
    clock: u64,
}

impl State {
    fn new(profile: Profile) -> State {
        let mut tokens = BTreeMap::new();
        for t in [TOKEN, USER_TOKEN] {
            let (id, secret) = t.split_once('=').unwrap();
            tokens.insert(
                id.to_string(),
                (secret.to_string(), id != "root@pam!imgbuild"),
            );
        }
        State {
            profile,
            requests: Vec::new(),
            vms: BTreeMap::new(),
            volumes: BTreeMap::new(),
            storages: BTreeMap::new(),
            tokens,
            acl: Vec::new(),
            tasks: BTreeMap::new(),
            fail_http: Vec::new(),
            fail_task: None,
            warn_task: None,
            task_seq: 0,
            clock: 0,
        }
    }

    /// A fresh installation's storages (pve-manager's default `storage.cfg`).
    pub fn stock_storages(&mut self) {
        self.storages.insert(
            FILE_STORAGE.into(),
            Storage {
                kind: "dir",
                content: vec!["iso".into(), "vztmpl".into(), "backup".into()],
                path: Some("/var/lib/vz".into()),
            },
        );
        self.storages.insert(
            DISK_STORAGE.into(),
            Storage {
                kind: "lvmthin",
                content: vec!["images".into(), "rootdir".into()],
                path: None,
            },
        );
    }

    /// The storages as the README prepares them (`pvesm set local --content ...`).
    pub fn prepared_storages(&mut self) {
        self.stock_storages();
        if let Some(s) = self.storages.get_mut(FILE_STORAGE) {
            s.content = ["iso", "vztmpl", "backup", "import", "snippets"]
                .iter()
                .map(|c| c.to_string())
                .collect();
        }
    }

    /// Grants `privs` on `path` to `subject` (propagating), as `pveum acl modify` would with
    /// a role holding them.
    pub fn grant(&mut self, subject: &str, path: &str, privs: &[&str]) {
        self.acl.push(Acl {
            path: path.into(),
            subject: subject.into(),
            privs: privs.iter().map(|p| p.to_string()).collect(),
            propagate: true,
        });
    }

    /// The privileges `subject` holds on `path` from the ACL alone: the entry on the most
    /// specific path that has one for it (pve-access-control `AccessControl.pm`,
    /// `permission()`: a more specific path overrides inherited ones; entries above apply
    /// only when propagated).
    fn acl_privs(&self, subject: &str, path: &str) -> Vec<String> {
        let mut best: Option<(usize, Vec<String>)> = None;
        for a in self.acl.iter().filter(|a| a.subject == subject) {
            let applies = a.path == path
                || (a.propagate && (a.path == "/" || path.starts_with(&format!("{}/", a.path))));
            if applies && best.as_ref().is_none_or(|(len, _)| a.path.len() >= *len) {
                let len = a.path.len();
                match &mut best {
                    Some((l, p)) if *l == len => p.extend(a.privs.iter().cloned()),
                    _ => best = Some((len, a.privs.clone())),
                }
            }
        }
        best.map(|(_, p)| p).unwrap_or_default()
    }

    /// The token's effective privileges on `path`: its user's (everything for root@pam), and
    /// with privilege separation only those the token's own ACLs also give (pve-access-control
    /// `AccessControl.pm`, `permission()` for tokens).
    fn privs(&self, token: &str, path: &str) -> Vec<String> {
        let user = token.split('!').next().unwrap_or("");
        let user_privs: Vec<String> = if user == "root@pam" {
            ALL_PRIVS.iter().map(|p| p.to_string()).collect()
        } else {
            self.acl_privs(user, path)
        };
        let privsep = self.tokens.get(token).is_some_and(|(_, sep)| *sep);
        if !privsep {
            return user_privs;
        }
        let own = self.acl_privs(token, path);
        user_privs.into_iter().filter(|p| own.contains(p)).collect()
    }

    fn has(&self, token: &str, path: &str, privilege: &str) -> bool {
        self.privs(token, path).iter().any(|p| p == privilege)
    }
}

pub struct FakeProxmox {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    _rt: tokio::runtime::Runtime,
}

impl FakeProxmox {
    /// An 8.4 node prepared as the README says (storages with `import`), root's token.
    pub fn start() -> FakeProxmox {
        let f = FakeProxmox::with_profile(Profile::V8_4);
        f.state.lock().unwrap().prepared_storages();
        f
    }

    /// A node of `profile` with no storages yet (call `stock_storages` or
    /// `prepared_storages`).
    pub fn with_profile(profile: Profile) -> FakeProxmox {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let state = Arc::new(Mutex::new(State::new(profile)));
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

/// An error answer: pve-http-server `AnyEvent.pm`, `error()`, puts the message in the status
/// line's reason phrase; the JSON body has `data: null` and, since 5.2, `message`.
fn err(profile: Profile, status: StatusCode, msg: &str) -> Response {
    let body = if profile.message_in_body() {
        json!({"data": null, "message": format!("{msg}\n")})
    } else {
        json!({"data": null})
    };
    let mut r = (status, axum::Json(body)).into_response();
    let reason = msg.lines().next().unwrap_or("").replace(['\r', '\n'], " ");
    if let Ok(p) = hyper::ext::ReasonPhrase::try_from(reason.into_bytes()) {
        r.extensions_mut().insert(p);
    }
    r
}

/// pve-common `JSONSchema.pm` / `Exception.pm`, `raise_param_exc`: HTTP 400 "Parameter
/// verification failed." with `errors: {param: message}`.
fn param_err(profile: Profile, errors: BTreeMap<String, String>) -> Response {
    let mut body = json!({"data": null, "errors": errors});
    if profile.message_in_body() {
        body["message"] = json!("Parameter verification failed.\n");
    }
    let mut r = (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    if let Ok(p) = hyper::ext::ReasonPhrase::try_from(&b"Parameter verification failed."[..]) {
        r.extensions_mut().insert(p);
    }
    r
}

/// pve-access-control `RPCEnvironment.pm`, `check`: HTTP 403 "Permission check failed
/// (PATH, PRIV)".
fn perm_err(profile: Profile, path: &str, privilege: &str) -> Response {
    err(
        profile,
        StatusCode::FORBIDDEN,
        &format!("Permission check failed ({path}, {privilege})"),
    )
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
    let has_length = headers.contains_key("content-length");
    let profile = st.lock().unwrap().profile;
    // The form: multipart (uploads) or urlencoded.
    let mut form = BTreeMap::new();
    let mut parts = Vec::new();
    let mut file: Option<(String, Bytes)> = None;
    let mut early: Option<Response> = None;
    if ctype.starts_with("multipart/form-data") {
        // pve-http-server `AnyEvent.pm`: "upload without content length header not supported".
        if !has_length {
            early = Some(err(
                profile,
                StatusCode::NOT_IMPLEMENTED,
                "upload without content length header not supported",
            ));
        }
        let mut mp = match Multipart::from_request(req, &()).await {
            Ok(m) => m,
            Err(e) => return err(profile, StatusCode::BAD_REQUEST, &e.to_string()),
        };
        while let Ok(Some(field)) = mp.next_field().await {
            let name = field.name().unwrap_or("").to_string();
            parts.push(name.clone());
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
    // `PVEAPIToken=USER@REALM!TOKENID=SECRET` (pve-access-control `AccessControl.pm`,
    // `verify_token`).
    let token = {
        let s = st.lock().unwrap();
        auth.as_deref()
            .and_then(|a| a.strip_prefix("PVEAPIToken="))
            .and_then(|t| t.split_once('='))
            .filter(|(id, secret)| s.tokens.get(*id).is_some_and(|(sec, _)| sec == secret))
            .map(|(id, _)| id.to_string())
    };
    let response = if let Some(r) = early {
        r
    } else if let Some(token) = token {
        let mut s = st.lock().unwrap();
        let injected = s
            .fail_http
            .iter()
            .position(|(m, p, _, _)| *m == method.as_str() && path.ends_with(p.as_str()));
        match injected {
            Some(i) => {
                let (_, _, code, msg) = s.fail_http.remove(i);
                err(profile, StatusCode::from_u16(code).unwrap(), &msg)
            }
            None => route(&mut s, &token, &method, &path, &query, &form, &parts, file),
        }
    } else {
        err(profile, StatusCode::UNAUTHORIZED, "authentication failure")
    };
    st.lock().unwrap().requests.push(Recorded {
        method: method.to_string(),
        path,
        query,
        form,
        parts,
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

/// Starts a task (pve-common `RESTEnvironment.pm`, `fork_worker`): its UPID (pve-common
/// `Tools.pm`, `upid_encode`: `UPID:node:pid:pstart:starttime:type:id:user:`). It ends `OK`,
/// `WARNINGS: N` when it logged warnings, or with its error.
fn new_task(
    s: &mut State,
    node: &str,
    kind: &str,
    id: &str,
    user: &str,
    mut log: Vec<String>,
    error: Option<String>,
) -> String {
    s.task_seq += 1;
    let upid = format!(
        "UPID:{node}:{:08X}:{:08X}:{:08X}:{kind}:{id}:{user}:",
        1000 + s.task_seq,
        s.task_seq,
        0x6940_0000 + s.task_seq
    );
    let mut exit = match &s.fail_task {
        Some((k, status)) if k == kind => status.clone(),
        _ => error.unwrap_or_else(|| "OK".to_string()),
    };
    if exit == "OK"
        && let Some((k, warnings)) = &s.warn_task
        && k == kind
    {
        log.extend(warnings.iter().map(|w| format!("WARN: {w}")));
        exit = format!("WARNINGS: {}", warnings.len());
    }
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

#[allow(clippy::too_many_arguments)]
fn route(
    s: &mut State,
    token: &str,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    form: &BTreeMap<String, String>,
    parts: &[String],
    file: Option<(String, Bytes)>,
) -> Response {
    let profile = s.profile;
    let Some(rest) = path.strip_prefix("/api2/json/") else {
        return err(profile, StatusCode::NOT_FOUND, "not found");
    };
    let parts_path: Vec<&str> = rest.split('/').collect();
    let m = method.as_str();
    match (m, parts_path.as_slice()) {
        // pve-manager `API2/Version.pm`: any authenticated user.
        ("GET", ["version"]) => {
            let (version, release) = profile.version();
            ok(json!({"version": version, "release": release, "repoid": "0000000a"}))
        }
        // pve-access-control `API2/AccessControl.pm`, `permissions`: the caller's own;
        // `{path: {priv: propagate}}`.
        ("GET", ["access", "permissions"]) => {
            let Some(p) = query.get("path") else {
                return ok(json!({}));
            };
            let map: serde_json::Map<String, Value> = s
                .privs(token, p)
                .into_iter()
                .map(|x| (x, json!(1)))
                .collect();
            ok(json!({ p.clone(): map }))
        }
        ("GET", ["cluster", "nextid"]) => {
            let id = (100u64..).find(|i| !s.vms.contains_key(i)).unwrap_or(100);
            // The API returns the id as a string.
            ok(json!(id.to_string()))
        }
        (_, ["nodes", node, ..]) if *node != NODE => err(
            profile,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("hostname lookup '{node}' failed - failed to get address info"),
        ),
        // pve-storage `API2/Storage/Status.pm`, `index`: the storages the caller may see
        // (Datastore.Audit or Datastore.AllocateSpace).
        ("GET", ["nodes", _, "storage"]) => ok(Value::Array(
            s.storages
                .iter()
                .filter(|(id, _)| {
                    let p = format!("/storage/{id}");
                    s.has(token, &p, "Datastore.Audit") || s.has(token, &p, "Datastore.AllocateSpace")
                })
                .map(|(id, st)| {
                    json!({"storage": id, "type": st.kind, "content": st.content.join(","), "enabled": 1, "active": 1, "shared": 0})
                })
                .collect(),
        )),
        // pve-storage `API2/Storage/Content.pm`, `index`: Datastore.Audit or AllocateSpace.
        ("GET", ["nodes", _, "storage", storage, "content"]) => {
            if !s.storages.contains_key(*storage) {
                return err(profile, StatusCode::INTERNAL_SERVER_ERROR, &format!("storage '{storage}' does not exist"));
            }
            let p = format!("/storage/{storage}");
            if !s.has(token, &p, "Datastore.Audit") && !s.has(token, &p, "Datastore.AllocateSpace") {
                return perm_err(profile, &p, "Datastore.Audit|Datastore.AllocateSpace");
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
            upload(s, token, node, storage, form, parts, file)
        }
        // qemu-server `API2/Qemu.pm`, `vmlist`: VMs the caller has VM.Audit on.
        ("GET", ["nodes", _, "qemu"]) => ok(Value::Array(
            s.vms
                .iter()
                .filter(|(id, _)| s.has(token, &format!("/vms/{id}"), "VM.Audit"))
                .map(|(id, vm)| {
                    let mut v = json!({"vmid": id, "name": vm.name, "status": "stopped", "template": if vm.template { 1 } else { 0 }});
                    if let Some(t) = vm.config.get("tags") {
                        v["tags"] = json!(t);
                    }
                    v
                })
                .collect(),
        )),
        ("POST", ["nodes", node, "qemu"]) => create_vm(s, token, node, form),
        // qemu-server `API2/Qemu.pm`, `vm_config`: VM.Audit.
        ("GET", ["nodes", _, "qemu", vmid, "config"]) => {
            if !s.has(token, &format!("/vms/{vmid}"), "VM.Audit") {
                return perm_err(profile, &format!("/vms/{vmid}"), "VM.Audit");
            }
            let Some(vm) = vmid.parse::<u64>().ok().and_then(|id| s.vms.get(&id)) else {
                return err(profile, StatusCode::INTERNAL_SERVER_ERROR, &format!("Configuration file 'nodes/{NODE}/qemu-server/{vmid}.conf' does not exist"));
            };
            let mut c: serde_json::Map<String, Value> = vm.config.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            c.remove("vmid");
            c.insert("name".into(), json!(vm.name));
            if vm.template {
                c.insert("template".into(), json!(1));
            }
            ok(Value::Object(c))
        }
        // qemu-server `API2/Qemu.pm`, `update_vm` (PUT, synchronous): `name` and `tags` need
        // VM.Config.Options; `name` is a `dns-name`.
        ("PUT", ["nodes", _, "qemu", vmid, "config"]) => {
            if !s.has(token, &format!("/vms/{vmid}"), "VM.Config.Options") {
                return perm_err(profile, &format!("/vms/{vmid}"), "VM.Config.Options");
            }
            let mut errors = BTreeMap::new();
            for k in form.keys() {
                if !["name", "description", "tags"].contains(&k.as_str()) {
                    errors.insert(k.clone(), "not supported by this fake".to_string());
                }
            }
            if let Some(n) = form.get("name")
                && !dns_name(n)
            {
                errors.insert("name".into(), "invalid format - value does not look like a valid DNS name\n".to_string());
            }
            if !errors.is_empty() {
                return param_err(profile, errors);
            }
            let Some(vm) = vmid.parse::<u64>().ok().and_then(|id| s.vms.get_mut(&id)) else {
                return err(profile, StatusCode::INTERNAL_SERVER_ERROR, &format!("Configuration file 'nodes/{NODE}/qemu-server/{vmid}.conf' does not exist"));
            };
            if let Some(n) = form.get("name") {
                vm.name = n.clone();
            }
            ok(Value::Null)
        }
        // qemu-server `API2/Qemu.pm`, `template`: VM.Allocate.
        ("POST", ["nodes", node, "qemu", vmid, "template"]) => {
            let Ok(id) = vmid.parse::<u64>() else {
                return param_err(profile, BTreeMap::from([("vmid".into(), "type check ('integer') failed".into())]));
            };
            if !s.has(token, &format!("/vms/{id}"), "VM.Allocate") {
                return perm_err(profile, &format!("/vms/{id}"), "VM.Allocate");
            }
            match s.vms.get_mut(&id) {
                None => err(profile, StatusCode::INTERNAL_SERVER_ERROR, &format!("Configuration file 'nodes/{NODE}/qemu-server/{id}.conf' does not exist")),
                Some(vm) => {
                    vm.template = true;
                    let node = node.to_string();
                    let upid = new_task(s, &node, "qmtemplate", vmid, token, vec![], None);
                    ok(json!(upid))
                }
            }
        }
        // qemu-server `API2/Qemu.pm`, `destroy_vm`: VM.Allocate; `purge` and
        // `destroy-unreferenced-disks` are booleans.
        ("DELETE", ["nodes", node, "qemu", vmid]) => {
            let Ok(id) = vmid.parse::<u64>() else {
                return param_err(profile, BTreeMap::from([("vmid".into(), "type check ('integer') failed".into())]));
            };
            for (k, v) in query {
                if !["purge", "destroy-unreferenced-disks", "skiplock"].contains(&k.as_str()) || !["0", "1"].contains(&v.as_str()) {
                    return param_err(profile, BTreeMap::from([(k.clone(), "property is not defined in schema".into())]));
                }
            }
            if !s.has(token, &format!("/vms/{id}"), "VM.Allocate") {
                return perm_err(profile, &format!("/vms/{id}"), "VM.Allocate");
            }
            if s.vms.remove(&id).is_none() {
                return err(profile, StatusCode::INTERNAL_SERVER_ERROR, &format!("Configuration file 'nodes/{NODE}/qemu-server/{id}.conf' does not exist"));
            }
            let node = node.to_string();
            let upid = new_task(s, &node, "qmdestroy", vmid, token, vec![], None);
            ok(json!(upid))
        }
        // pve-manager `API2/Tasks.pm`: the task's own user may read it.
        ("GET", ["nodes", node, "tasks", upid, "status"]) => match s.tasks.get_mut(*upid) {
            Some(t) if t.node == *node => {
                if t.polls_left > 0 {
                    t.polls_left -= 1;
                    ok(json!({"upid": upid, "node": node, "status": "running"}))
                } else {
                    ok(json!({"upid": upid, "node": node, "status": "stopped", "exitstatus": t.exit}))
                }
            }
            _ => err(profile, StatusCode::INTERNAL_SERVER_ERROR, "no such task"),
        },
        ("GET", ["nodes", _, "tasks", upid, "log"]) => match s.tasks.get(*upid) {
            Some(t) => {
                let mut lines = t.log.clone();
                if t.exit == "OK" {
                    lines.push("TASK OK".into());
                } else if let Some(n) = t.exit.strip_prefix("WARNINGS: ") {
                    lines.push(format!("TASK WARNINGS: {n}"));
                } else {
                    lines.push(format!("TASK ERROR: {}", t.exit));
                }
                ok(Value::Array(
                    lines.iter().enumerate().map(|(i, l)| json!({"n": i + 1, "t": l})).collect(),
                ))
            }
            None => err(profile, StatusCode::INTERNAL_SERVER_ERROR, "no such task"),
        },
        _ => err(profile, StatusCode::NOT_IMPLEMENTED, &format!("Method '{m} /{rest}' not implemented")),
    }
}

/// pve-common `JSONSchema.pm`, `pve_verify_dns_name`.
fn dns_name(n: &str) -> bool {
    !n.is_empty()
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// `POST /nodes/{node}/storage/{storage}/upload`.
fn upload(
    s: &mut State,
    token: &str,
    node: &str,
    storage: &str,
    form: &BTreeMap<String, String>,
    parts: &[String],
    file: Option<(String, Bytes)>,
) -> Response {
    let profile = s.profile;
    // pve-http-server `AnyEvent.pm`, `file_upload_multipart`: the form fields `content`,
    // `checksum-algorithm`, `checksum` are read before the file, whose part must be named
    // `filename` and come last; anything after it is file data.
    let fields: Vec<&str> = parts.iter().map(String::as_str).collect();
    let order_ok = fields.last() == Some(&"filename")
        && fields[..fields.len().saturating_sub(1)]
            .iter()
            .all(|f| ["content", "checksum-algorithm", "checksum"].contains(f));
    if !order_ok {
        return err(
            profile,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("wrong field order {fields:?}: the file part named 'filename' must come last"),
        );
    }
    // `upload`'s parameter schema.
    let mut errors = BTreeMap::new();
    let content = form.get("content").cloned().unwrap_or_default();
    let enum_ = if profile.import_extensions().is_some() {
        vec!["iso", "vztmpl", "import"]
    } else {
        vec!["iso", "vztmpl"]
    };
    if !enum_.contains(&content.as_str()) {
        errors.insert(
            "content".into(),
            format!(
                "value '{content}' does not have a value in the enumeration '{}'",
                enum_.join(", ")
            ),
        );
    }
    if let Some(a) = form.get("checksum-algorithm")
        && !["md5", "sha1", "sha224", "sha256", "sha384", "sha512"].contains(&a.as_str())
    {
        errors.insert(
            "checksum-algorithm".into(),
            "value not in enumeration".into(),
        );
    }
    let Some((fname, data)) = file else {
        errors.insert(
            "filename".into(),
            "property is missing and it is not optional".into(),
        );
        return param_err(profile, errors);
    };
    if !errors.is_empty() {
        return param_err(profile, errors);
    }
    // Permission: Datastore.AllocateTemplate on /storage/{storage}.
    let p = format!("/storage/{storage}");
    if !s.has(token, &p, "Datastore.AllocateTemplate") {
        return perm_err(profile, &p, "Datastore.AllocateTemplate");
    }
    let Some(scfg) = s.storages.get(storage).cloned() else {
        return err(
            profile,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("storage '{storage}' does not exist"),
        );
    };
    if scfg.path.is_none() {
        return err(
            profile,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("can't upload to storage type '{}'", scfg.kind),
        );
    }
    // The file name checks (`ISO_EXT_RE_0`, `VZTMPL_EXT_RE_1`, `SAFE_CHAR_CLASS_RE` +
    // `UPLOAD_IMPORT_EXT_RE_1`).
    let safe = |n: &str| {
        n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.+=_".contains(c))
    };
    let ext = fname
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match content.as_str() {
        "iso" if !["iso", "img"].contains(&ext.as_str()) => {
            return param_err(
                profile,
                BTreeMap::from([("filename".into(), "wrong file extension".into())]),
            );
        }
        "import" => {
            let exts = profile.import_extensions().unwrap_or(&[]);
            if !safe(&fname) || !exts.contains(&ext.as_str()) {
                return param_err(
                    profile,
                    BTreeMap::from([(
                        "filename".into(),
                        "invalid filename or wrong extension".into(),
                    )]),
                );
            }
        }
        _ => {}
    }
    if !scfg.content.contains(&content) {
        return err(
            profile,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("storage '{storage}' does not support '{content}' content"),
        );
    }
    // The checksum is checked inside the `imgcopy` task, which then fails.
    let sha = hex::encode(Sha256::digest(&data));
    let mut log = vec!["starting file import from: /var/tmp/pveupload-0123abcd".to_string()];
    let mut error = None;
    if let Some(want) = form.get("checksum") {
        log.push("calculating checksum...".into());
        if want.to_ascii_lowercase() != sha {
            error = Some(format!("checksum mismatch: got '{sha}' != expect '{want}'"));
        } else {
            log.push("OK, checksum verified".into());
        }
    }
    if error.is_none() {
        let dir = if content == "import" {
            "import"
        } else {
            content.as_str()
        };
        log.push(format!(
            "target file: {}/{dir}/{fname}",
            scfg.path.clone().unwrap_or_default()
        ));
        s.volumes.insert(
            format!("{storage}:{content}/{fname}"),
            (data.len() as u64, sha),
        );
        log.push("finished file import successfully".into());
    }
    let node = node.to_string();
    let upid = new_task(s, &node, "imgcopy", "", token, log, error);
    ok(json!(upid))
}

/// Which privilege a `create_vm` option needs (qemu-server `API2/Qemu.pm`,
/// `$check_vm_modify_config_perm`: the cpu, memory, network, cloud-init, hardware and disk
/// option sets; everything else is VM.Config.Options).
fn option_priv(key: &str) -> Option<&'static str> {
    Some(match key {
        "vmid" => return None,
        "cores" | "sockets" | "cpu" => "VM.Config.CPU",
        "memory" | "balloon" => "VM.Config.Memory",
        "net0" => "VM.Config.Network",
        "ciuser" | "cipassword" | "sshkeys" | "ipconfig0" | "cicustom" | "nameserver"
        | "searchdomain" => "VM.Config.Cloudinit",
        "machine" | "bios" | "scsihw" | "vga" | "serial0" => "VM.Config.HWType",
        "efidisk0" | "scsi0" => "VM.Config.Disk",
        "ide2" => "VM.Config.CDROM",
        _ => "VM.Config.Options",
    })
}

/// `POST /nodes/{node}/qemu`, checked against the documented parameters and the handler.
fn create_vm(s: &mut State, token: &str, node: &str, form: &BTreeMap<String, String>) -> Response {
    let profile = s.profile;
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
    // pve-common `JSONSchema.pm`, `pve_verify_vmid`.
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
    check("name", &|v| dns_name(v), &mut errors);
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
    check("efidisk0", &|v| v.contains(":1,"), &mut errors);
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
    // pve-common `JSONSchema.pm`, `pve-tag-list`.
    check(
        "tags",
        &|v| {
            v.split([';', ',', ' ']).filter(|t| !t.is_empty()).all(|t| {
                t.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-+.".contains(c))
            })
        },
        &mut errors,
    );
    if !errors.is_empty() {
        return param_err(profile, errors);
    }
    // qemu-server `API2/Qemu.pm`, `create_vm`: `sshkeys` is URI-unescaped and each line
    // checked with `ssh-keygen -l` (pve-common `Tools.pm`, `validate_ssh_public_keys`).
    if let Some(keys) = form.get("sshkeys") {
        for line in decode(keys).lines().filter(|l| !l.trim().is_empty()) {
            let t = tempfile::NamedTempFile::new().expect("temp file");
            std::fs::write(t.path(), format!("{line}\n")).expect("write key");
            let ok = std::process::Command::new("ssh-keygen")
                .arg("-l")
                .arg("-f")
                .arg(t.path())
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                return err(
                    profile,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "SSH public key validation error",
                );
            }
        }
    }
    let vmid = vmid.unwrap_or(0);
    // Permissions: VM.Allocate on /vms/{vmid}, the options' VM.Config.*, SDN.Use on the
    // bridge (pve-guest-common `check_vnet_access`), AllocateSpace on new-disk storages.
    let vmpath = format!("/vms/{vmid}");
    if !s.has(token, &vmpath, "VM.Allocate") {
        return perm_err(profile, &vmpath, "VM.Allocate");
    }
    for k in form.keys() {
        if let Some(p) = option_priv(k)
            && !s.has(token, &vmpath, p)
        {
            return perm_err(profile, &vmpath, p);
        }
    }
    if let Some(net) = form.get("net0")
        && let Some(bridge) = net.split(',').find_map(|o| o.strip_prefix("bridge="))
    {
        let p = format!("/sdn/zones/localnetwork/{bridge}");
        if !token.starts_with("root@pam!") && !s.has(token, &p, "SDN.Use") {
            return perm_err(profile, &p, "SDN.Use");
        }
    }
    // New disks (`STORAGE:SIZE`, cloudinit drives): the storage needs `images` content
    // (qemu-server `API2/Qemu.pm`, `$check_storage_access`: "storage '...' does not support vm
    // images") and the caller Datastore.AllocateSpace on it.
    for k in ["efidisk0", "scsi0", "ide2"] {
        let Some(v) = form.get(k) else { continue };
        let storage = v.split(':').next().unwrap_or("");
        let p = format!("/storage/{storage}");
        if !s.has(token, &p, "Datastore.AllocateSpace") {
            return perm_err(profile, &p, "Datastore.AllocateSpace");
        }
        match s.storages.get(storage) {
            None => {
                return err(
                    profile,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("storage '{storage}' does not exist"),
                );
            }
            Some(st) if !st.content.iter().any(|c| c == "images") => {
                return param_err(
                    profile,
                    BTreeMap::from([(
                        "storage".into(),
                        format!("storage '{storage}' does not support vm images"),
                    )]),
                );
            }
            _ => {}
        }
    }
    if s.vms.contains_key(&vmid) {
        return err(
            profile,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("unable to create VM {vmid} - VM {vmid} already exists on node '{node}'"),
        );
    }
    // scsi0: STORAGE:0,import-from=VOLID: `import-from` needs that syntax; the source must be
    // an `images` or `import` volume the caller may read (pve-storage `Storage.pm`,
    // `check_volume_access`: Datastore.Allocate, or AllocateSpace/Audit for `import`).
    let mut log = vec![format!("create VM {vmid}")];
    let mut error = None;
    if let Some(scsi0) = form.get("scsi0") {
        let mut opts = scsi0.split(',');
        let target = opts.next().unwrap_or("");
        let import = opts.find_map(|o| o.strip_prefix("import-from="));
        if !target.ends_with(":0") || import.is_none() {
            return param_err(profile, BTreeMap::from([("scsi0".into(), "'import-from' requires special syntax - use <storage ID>:0,import-from=<source>".into())]));
        }
        let import = import.unwrap_or("");
        let (src_storage, volname) = import.split_once(':').unwrap_or(("", import));
        let vtype = volname.split('/').next().unwrap_or("");
        if vtype != "images" && vtype != "import" {
            return param_err(
                profile,
                BTreeMap::from([(
                    "scsi0".into(),
                    format!("{import} has wrong type '{vtype}' - needs to be 'images' or 'import'"),
                )]),
            );
        }
        let p = format!("/storage/{src_storage}");
        if !s.has(token, &p, "Datastore.Allocate")
            && !s.has(token, &p, "Datastore.AllocateSpace")
            && !s.has(token, &p, "Datastore.Audit")
        {
            return perm_err(profile, &p, "Datastore.AllocateSpace|Datastore.Audit");
        }
        if s.volumes.contains_key(import) {
            log.push(format!("importing disk '{import}' to VM {vmid} ..."));
        } else {
            // The API accepts the call; the task fails.
            error = Some(format!(
                "unable to create VM {vmid} - volume '{import}' does not exist"
            ));
        }
    }
    // The VM's config exists from here on, even if the task then fails; Proxmox records when
    // it was made in `meta` (qemu-server `QemuServer.pm`, `new_meta_info_string`).
    s.clock += 1;
    let mut config = form.clone();
    config.insert(
        "meta".into(),
        format!("creation-qemu=9.0.2,ctime={}", 1_700_000_000 + s.clock),
    );
    s.vms.insert(
        vmid,
        Vm {
            name: form.get("name").cloned().unwrap_or_default(),
            template: false,
            config,
        },
    );
    let upid = new_task(s, node, "qmcreate", &vmid.to_string(), token, log, error);
    ok(json!(upid))
}
