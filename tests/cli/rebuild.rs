//! `imgbuild rebuild`, the nightly job, against the fixture apt repository and the real
//! registry: after a build and push, a rebuild with nothing new builds and uploads nothing,
//! and a new package version rebuilds only the layers that hold it, is pushed, and is
//! reported; into an empty repository it pushes.

use serde_json::Value;

use crate::apt_repo::{fixture_repo, pkg, recipe};
use crate::servers::{Mode, Registry};
use crate::{FileServer, Work, assert_ok, stderr, stdout, tool};

fn report(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn rebuild_builds_and_pushes_only_what_changed() {
    let mut repo = fixture_repo();
    repo.publish(None);
    let server = FileServer::start(repo.root.path());
    let work = Work::setup();
    repo.signer.export(&work.path("recipes/fixture.asc"), true);
    let r = recipe(&work, &server, "fixture.asc");
    let reg = Registry::start(Mode::Plain);
    let dest = format!("{}/nightly/fixture:latest", reg.host);
    let rebuild = |n: u32, extra: &[&str]| {
        let o = work
            .cmd()
            .args(reg.imgbuild_flags())
            .arg("rebuild")
            .arg(&r)
            .args(["--push", &dest, "--exit-code", "--report"])
            .arg(work.path(&format!("report{n}.json")))
            .args(extra)
            .output()
            .unwrap();
        (o, report(&work.path(&format!("report{n}.json"))))
    };

    // The image as built and pushed by hand (this also writes the lock).
    let o = work
        .cmd()
        .args(reg.imgbuild_flags())
        .arg("build")
        .arg(&r)
        .args(["--push", &dest])
        .output()
        .unwrap();
    assert_ok(&o);
    let digest1 = stdout(&o).trim().to_string();

    // A rebuild of a recipe with no lock and an empty repository pushes what it built.
    let fresh = format!("{}/nightly/other:latest", reg.host);
    let o = work
        .cmd()
        .args(reg.imgbuild_flags())
        .arg("rebuild")
        .arg(&r)
        .args(["--push", &fresh, "--exit-code", "--report"])
        .arg(work.path("report1.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "pushed: {}", stderr(&o));
    let first = report(&work.path("report1.json"));
    assert_eq!(first["status"], "pushed");
    assert_eq!(first["previous_digest"], Value::Null);
    // (Its blobs are mounted from the first repository: pushed, though nothing is uploaded.)
    assert_eq!(first["pushed_tags"], serde_json::json!([fresh]));
    assert_eq!(first["digest"], digest1.as_str(), "the same image");

    // Second night, nothing new: no step built, nothing uploaded, exit 0.
    let (o, second) = rebuild(2, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(second["status"], "unchanged");
    assert_eq!(second["changes"], serde_json::json!([]));
    assert_eq!(second["steps"]["built"], serde_json::json!([]));
    assert_eq!(second["bytes"]["uploaded"], 0);
    assert_eq!(second["digest"], digest1.as_str());
    assert_eq!(second["previous_digest"], digest1.as_str());

    // A new version of one package: only its layer, the dpkg database and the configure
    // step are built; the new image is pushed, also under a date tag; the report says why.
    let mut lib = pkg("fixture-lib", "1.3", "Multi-Arch: same\n");
    lib.files
        .push(("usr/lib/fixture/version".into(), b"1.3\n".to_vec(), 0o644));
    repo.add(lib);
    repo.publish(None);
    // A night whose push fails (the registry is down) changes nothing on disk: the lock stays
    // that of the last pushed image, and the report says what would have changed.
    let lock_path = r.with_extension("lock");
    let lock_before = std::fs::read(&lock_path).unwrap();
    // (Its own cache, so the next night still shows which steps an update builds.)
    let o = work
        .cmd_with_cache(&work.path("cache-failed"))
        .args(["--insecure-registry", "127.0.0.1:9", "rebuild"])
        .arg(&r)
        .args(["--push", "127.0.0.1:9/nightly/fixture:latest", "--report"])
        .arg(work.path("report-failed.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let failed = report(&work.path("report-failed.json"));
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["changes"],
        serde_json::json!(["fixture-lib: 1.2~rc1 -> 1.3"])
    );
    assert!(
        failed["error"].as_str().unwrap().contains("127.0.0.1:9"),
        "{failed}"
    );
    assert_eq!(
        std::fs::read(&lock_path).unwrap(),
        lock_before,
        "lock untouched"
    );
    assert!(!r.with_extension("lock.rebuild").exists());
    let shared = format!("{}/nightly/cache:fixture", reg.host);
    let (o, third) = rebuild(3, &["--tag-date", "--cache-to", &shared]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("exported 8 cached steps to {shared}@sha256:")),
        "{}",
        stderr(&o)
    );
    assert_eq!(third["status"], "pushed");
    assert_eq!(
        third["changes"],
        serde_json::json!(["fixture-lib: 1.2~rc1 -> 1.3"])
    );
    let built: Vec<&str> = third["steps"]["built"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(built.len(), 3, "{built:?}");
    assert!(
        built[0].starts_with("apt layer ") && built[0].contains("fixture-lib"),
        "{built:?}"
    );
    assert!(built[1].starts_with("dpkg database"), "{built:?}");
    assert!(built[2].starts_with("dpkg --configure"), "{built:?}");
    // Why each was built (`plan --explain`'s reasons), in the report and the night's log.
    let why = &third["steps"]["why"];
    assert_eq!(why[0]["step"], built[0]);
    assert_eq!(
        why[0]["why"],
        serde_json::json!([{"kind": "package", "text": "package fixture-lib 1.2~rc1 -> 1.3"}])
    );
    assert_eq!(
        why[1]["why"][0]["text"],
        "package fixture-lib 1.2~rc1 -> 1.3"
    );
    assert_eq!(why[2]["why"][0]["kind"], "earlier-step");
    assert!(
        why[2]["why"][0]["text"]
            .as_str()
            .unwrap()
            .contains("(dpkg database"),
        "{why}"
    );
    assert!(
        stderr(&o).contains(&format!(
            "==> built {}: package fixture-lib 1.2~rc1 -> 1.3",
            built[0]
        )),
        "{}",
        stderr(&o)
    );
    assert!(third["steps"]["cached"].as_u64().unwrap() >= 2, "{third}");
    let digest3 = stdout(&o).trim().to_string();
    assert_ne!(digest3, digest1);
    assert_eq!(third["previous_digest"], digest1.as_str());
    // The registry serves the new image, under both tags.
    let mut args = vec!["inspect".to_string()];
    args.extend(reg.skopeo_flags(""));
    args.push(format!("docker://{dest}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let v: Value = serde_json::from_str(&tool("skopeo", &args)).unwrap();
    assert_eq!(v["Digest"], digest3.as_str());
    let tags: Vec<&str> = third["pushed_tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tags.len(), 2);
    assert!(tags[1].starts_with(&format!("{dest}-20")), "{tags:?}");

    // `plan --explain` after a lock that picks up another version names it too.
    let mut lib = pkg("fixture-lib", "1.4", "Multi-Arch: same\n");
    lib.files
        .push(("usr/lib/fixture/version".into(), b"1.4\n".to_vec(), 0o644));
    repo.add(lib);
    repo.publish(None);
    assert_ok(&work.cmd().arg("lock").arg(&r).output().unwrap());
    let o = work
        .cmd()
        .args(["plan", "--explain"])
        .arg(&r)
        .output()
        .unwrap();
    assert_ok(&o);
    let plan = stdout(&o);
    assert!(
        plan.contains("why: package fixture-lib 1.3 -> 1.4"),
        "{plan}"
    );
}
