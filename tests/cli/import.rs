//! `imgbuild import`: Dockerfiles converted into recipes that `imgbuild check` accepts.

use std::fs;

use super::{Work, assert_ok, repo, stderr, stdout};

#[test]
fn the_seed_dockerfile_becomes_a_checked_recipe() {
    let w = Work::setup();
    let dir = w.path("ctx");
    fs::create_dir_all(&dir).unwrap();
    // A copy of the seed user's Dockerfile (../shared/seeds/coderall.Dockerfile).
    fs::copy(
        repo().join("fixtures/import/coderall.Dockerfile"),
        dir.join("Dockerfile"),
    )
    .unwrap();
    // The build context's files that the Dockerfile copies.
    fs::write(dir.join("docker-archive-keyring.gpg"), b"key").unwrap();
    fs::write(
        dir.join("docker.list"),
        b"deb https://example.invalid/ubuntu jammy stable\n",
    )
    .unwrap();
    let out = dir.join("coderall.toml");
    let o = w
        .cmd()
        .arg("import")
        .arg(dir.join("Dockerfile"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_ok(&o);
    let recipe = fs::read_to_string(&out).unwrap();
    for want in [
        "base = \"ubuntu:22.04\"",
        "upgrade = true",
        "\"docker-ce\"",
        "\"ripgrep\"",
        "\"vagrant\"",
        "uri = \"ppa:git-core/ppa\"",
        "uri = \"ppa:fish-shell/release-3\"",
        "docker-compose-${os}-${uname_m}\"\ndest = \"/usr/local/bin/docker-compose\"\nmode = 0o755",
        "extract = \"/usr/local\"",
        "upgrade_pip = true\npackages = [\"ansible\"]",
        "name = \"${var.USER}\"\nshell = \"/bin/bash\"\ngroups = [\"docker\", \"sudo\"]\nsudo = \"nopasswd\"",
        "path = \"/usr/bin/bat\"\ntarget = \"/usr/bin/batcat\"",
        "enable = [\"docker\"]",
        "\"GOPATH\" = \"/home/${var.USER}/go\"",
        "\"USER\" = \"coder\"",
        "user = \"${var.USER}\"",
        "shell = [\"/bin/bash\", \"-c\"]",
    ] {
        assert!(recipe.contains(want), "recipe lacks {want}:\n{recipe}");
    }
    // Only the HashiCorp key and source lines have no declarative form (yet), and each is
    // reported with its line.
    assert_eq!(recipe.matches("[[run]]").count(), 2, "{recipe}");
    let e = stderr(&o);
    assert!(e.contains("Dockerfile:74: kept as a [[run]] step"), "{e}");
    assert!(e.contains("Dockerfile:75: kept as a [[run]] step"), "{e}");
    let o = w.cmd().arg("check").arg(&out).output().unwrap();
    assert_ok(&o);
    assert!(stdout(&o).contains(": ok"));
}

#[test]
fn stages_and_unmapped_instructions_are_reported() {
    let w = Work::setup();
    let df = w.path("Dockerfile");
    fs::write(
        &df,
        "ARG BASE=ubuntu:22.04\nFROM golang AS build\nRUN go build -o /app .\nFROM ${BASE}\nCOPY --from=build /app /app\nEXPOSE 80\nRUN make -j4 && ln -sf /app /usr/bin/app\nCMD [\"/app\"]\n",
    )
    .unwrap();
    let o = w.cmd().arg("import").arg(&df).output().unwrap();
    assert_ok(&o);
    let recipe = stdout(&o);
    assert!(recipe.contains("base = \"${var.BASE}\""), "{recipe}");
    assert!(recipe.contains("\"BASE\" = \"ubuntu:22.04\""), "{recipe}");
    assert!(recipe.contains("cmd = [\"/app\"]"), "{recipe}");
    assert!(
        recipe.contains("path = \"/usr/bin/app\"\ntarget = \"/app\""),
        "{recipe}"
    );
    assert!(recipe.contains("command = \"make -j4\""), "{recipe}");
    let e = stderr(&o);
    assert!(
        e.contains("Dockerfile:2: build stage 0 is not imported"),
        "{e}"
    );
    assert!(
        e.contains("Dockerfile:5: COPY --from another stage is not imported"),
        "{e}"
    );
    assert!(e.contains("Dockerfile:6: EXPOSE is not imported"), "{e}");
    assert!(
        e.contains("Dockerfile:7: kept as a [[run]] step: make -j4"),
        "{e}"
    );
}

#[test]
fn malformed_dockerfiles_name_the_line_and_exit_2() {
    let w = Work::setup();
    for (text, line) in [
        ("FROM ubuntu\nRUN echo hi\nBOGUS\n", 3),
        ("FROM ubuntu\nSHELL /bin/bash -c\n", 2),
        ("FROM ubuntu\nRUN <<EOF\necho hi\nEOF\n", 2),
        ("RUN echo no from\n", 1),
    ] {
        let df = w.path("Dockerfile");
        fs::write(&df, text).unwrap();
        let o = w.cmd().arg("import").arg(&df).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{text}\n{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("Dockerfile:{line}: ")),
            "{text}\n{}",
            stderr(&o)
        );
    }
}
