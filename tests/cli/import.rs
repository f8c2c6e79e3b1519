//! `imgbuild import`: Dockerfiles converted into recipes that `imgbuild check` accepts.

use std::fs;

use super::{Work, assert_ok, repo, stderr, stdout};

/// The seed user's Dockerfile (a copy of ../shared/seeds/coderall.Dockerfile) against the
/// checked-in expected recipe. Constructs covered: FROM, SHELL, ARG (as a var used in RUN,
/// USER, WORKDIR, ENV), ENV in both forms with `$PATH` folded, USER, WORKDIR, COPY of a
/// keyring and a sources list (an apt source with its key), `apt-get update/upgrade/install`
/// with DEBIAN_FRONTEND prefixes and continuations, `rm -rf /var/lib/apt/lists/*`,
/// `add-apt-repository ppa:...`, `systemctl enable`, `curl -L URL -o DEST` + `chmod +x`,
/// `$(uname -s)`/`$(uname -m)`/`$(dpkg --print-architecture)`, `curl URL | tar -C DIR -x`,
/// `ln -s`, `curl KEY | gpg --dearmor -o` + `echo "deb [signed-by=...] ... $(lsb_release -cs)
/// main" | tee` (an apt source; the key to fetch is reported), `pip3 install --upgrade pip;
/// pip3 install ansible`, `useradd` with flags, and a sudoers line.
#[test]
fn the_seed_dockerfile_becomes_the_expected_recipe() {
    let w = Work::setup();
    let dir = w.path("ctx");
    fs::create_dir_all(dir.join("keys")).unwrap();
    fs::copy(
        repo().join("fixtures/import/coderall.Dockerfile"),
        dir.join("Dockerfile"),
    )
    .unwrap();
    // The build context's files that the Dockerfile copies, and the key it fetches.
    fs::write(dir.join("docker-archive-keyring.gpg"), b"key").unwrap();
    fs::write(
        dir.join("docker.list"),
        "deb [arch=amd64 signed-by=/usr/share/keyrings/docker-archive-keyring.gpg] https://docker-repo.example.invalid/linux/ubuntu jammy stable\n",
    )
    .unwrap();
    fs::write(dir.join("keys/hashicorp-archive-keyring.gpg"), b"key").unwrap();
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
    let expected =
        fs::read_to_string(repo().join("fixtures/import/coderall.expected.toml")).unwrap();
    assert_eq!(recipe, expected, "imported recipe differs from the fixture");
    assert_eq!(recipe.matches("[[run]]").count(), 0);
    let e = stderr(&o);
    assert!(e.contains("keys/hashicorp-archive-keyring.gpg"), "{e}");
    assert!(e.contains("Dockerfile:43: $(uname -s) became ${os}"), "{e}");
    let o = w.cmd().arg("check").arg(&out).output().unwrap();
    assert_ok(&o);
    assert!(stdout(&o).contains(": ok"));
    // Unpinned downloads are warned about, naming the recipe line.
    assert!(stderr(&o).contains("coderall.toml:"), "{}", stderr(&o));
    assert!(stderr(&o).contains("imgbuild lock"), "{}", stderr(&o));
}

#[test]
fn stages_and_unmapped_instructions_are_reported() {
    let w = Work::setup();
    let df = w.path("Dockerfile");
    fs::write(
        &df,
        "ARG BASE=ubuntu:22.04\nFROM golang AS build\nRUN go build -o /app .\nFROM ${BASE}\nCOPY --from=build /app /app\nEXPOSE 80\nRUN make -j4 && ln -sf /app /usr/bin/app\nCMD [\"/app\"]\nHEALTHCHECK CMD /app --check\n",
    )
    .unwrap();
    let o = w.cmd().arg("import").arg(&df).output().unwrap();
    assert_ok(&o);
    let recipe = stdout(&o);
    assert!(recipe.contains("base = \"${var.BASE}\""), "{recipe}");
    assert!(recipe.contains("\"BASE\" = \"ubuntu:22.04\""), "{recipe}");
    assert!(recipe.contains("cmd = [\"/app\"]"), "{recipe}");
    // The symlink comes after make in the RUN: it stays in the run, in its order.
    assert!(
        recipe.contains("command = \"make -j4 && ln -sf /app /usr/bin/app\""),
        "{recipe}"
    );
    assert!(!recipe.contains("[[symlink]]"), "{recipe}");
    let e = stderr(&o);
    assert!(
        e.contains("Dockerfile:2: build stage 0 is not imported"),
        "{e}"
    );
    assert!(
        e.contains("Dockerfile:5: COPY --from another stage is not imported"),
        "{e}"
    );
    assert!(recipe.contains("expose = [\"80\"]"), "{recipe}");
    // The OCI configuration has no health check: it becomes a label.
    assert!(
        recipe.contains("\"imgbuild.healthcheck\" = \"CMD /app --check\""),
        "{recipe}"
    );
    assert!(
        e.contains("Dockerfile:7: kept as a [[run]] step: make -j4 && ln -sf"),
        "{e}"
    );
}

#[test]
fn malformed_dockerfiles_name_the_line_and_exit_2() {
    let w = Work::setup();
    for (text, line) in [
        ("FROM ubuntu\nRUN echo hi\nBOGUS\n", 3),
        ("FROM ubuntu\nSHELL /bin/bash -c\n", 2),
        ("FROM ubuntu\nRUN <<EOF\necho hi\n", 2),
        ("FROM ubuntu\nCOPY <<EOF /x\nhi\nEOF\n", 2),
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

/// (case, Dockerfile after `FROM debian:12\n`, fragments the recipe must hold, `[[run]]` count)
const SNIPPETS: &[(&str, &str, &[&str], usize)] = &[
    (
        "apt install",
        "RUN apt-get update && apt-get install -y curl git\n",
        &["packages = [\"curl\", \"git\"]"],
        0,
    ),
    (
        "apt flags and env prefix",
        "RUN DEBIAN_FRONTEND=noninteractive apt-get install --no-install-recommends -y vim\n",
        &["packages = [\"vim\"]"],
        0,
    ),
    (
        "apt install continuation",
        "RUN apt-get install -y \\\n  a \\\n  b\n",
        &["packages = [\"a\", \"b\"]"],
        0,
    ),
    (
        "apt upgrade",
        "RUN apt-get update && apt-get upgrade -y\n",
        &["upgrade = true"],
        0,
    ),
    (
        "apt lists removed",
        "RUN apt-get install -y x && rm -rf /var/lib/apt/lists/*\n",
        &["packages = [\"x\"]"],
        0,
    ),
    (
        "apt clean",
        "RUN apt-get install -y x; apt-get clean\n",
        &["packages = [\"x\"]"],
        0,
    ),
    (
        "ppa",
        "RUN add-apt-repository -y ppa:deadsnakes/ppa && apt-get install -y python3.12\n",
        &["uri = \"ppa:deadsnakes/ppa\"", "\"python3.12\""],
        0,
    ),
    (
        "curl -o",
        "RUN curl -fsSL https://x.example/tool -o /usr/local/bin/tool\n",
        &["url = \"https://x.example/tool\"\ndest = \"/usr/local/bin/tool\""],
        0,
    ),
    (
        "curl --output",
        "RUN curl -L --output /opt/a.bin https://x.example/a.bin\n",
        &["dest = \"/opt/a.bin\""],
        0,
    ),
    (
        "wget -O",
        "RUN wget -q -O /usr/bin/jq https://x.example/jq\n",
        &["url = \"https://x.example/jq\"\ndest = \"/usr/bin/jq\""],
        0,
    ),
    (
        "chmod after download",
        "RUN curl -L https://x.example/t -o /usr/bin/t && chmod +x /usr/bin/t\n",
        &["dest = \"/usr/bin/t\"\nmode = 0o755"],
        0,
    ),
    (
        "chmod octal",
        "RUN curl -L https://x.example/t -o /usr/bin/t\nRUN chmod 0750 /usr/bin/t\n",
        &["mode = 0o750"],
        0,
    ),
    (
        "chmod of something else",
        "RUN chmod +x /entry.sh\n",
        &["command = \"chmod +x /entry.sh\""],
        1,
    ),
    (
        "curl | tar",
        "RUN curl -L https://x.example/go.tar.gz | tar -C /usr/local -xzf -\n",
        &["extract = \"/usr/local\""],
        0,
    ),
    (
        "curl | tar strip",
        "RUN curl -fsSL https://x.example/n.tgz | tar -xz --strip-components=1 -C /opt/n\n",
        &["extract = \"/opt/n\"\nstrip_components = 1"],
        0,
    ),
    (
        "uname substitution",
        "RUN curl -L \"https://x.example/c-$(uname -s)-$(uname -m)\" -o /usr/bin/c\n",
        &["c-${os}-${uname_m}"],
        0,
    ),
    (
        "dpkg arch substitution",
        "RUN curl -L https://x.example/t_$(dpkg --print-architecture) -o /t\n",
        &["t_${arch}"],
        0,
    ),
    (
        "ARG before FROM",
        "",
        &["base = \"${var.IMG}\"", "\"IMG\" = \"debian:12\""],
        0,
    ),
    (
        "ARG as var",
        "ARG VER=1.2\nRUN curl -L https://x.example/v${VER}/t -o /t\n",
        &["\"VER\" = \"1.2\"", "https://x.example/v${var.VER}/t"],
        0,
    ),
    (
        "ARG plain $",
        "ARG V=3\nRUN curl -L https://x.example/$V/t -o /t\n",
        &["https://x.example/${var.V}/t"],
        0,
    ),
    (
        "ENV both forms",
        "ENV A=1 B=\"two words\"\nENV C 3\n",
        &["\"A\" = \"1\"", "\"B\" = \"two words\"", "\"C\" = \"3\""],
        0,
    ),
    (
        "ENV PATH folded",
        "ENV PATH $PATH:/a\nENV PATH $PATH:/b\n",
        &["\"PATH\" = \"$PATH:/a:/b\""],
        0,
    ),
    (
        "ln -s",
        "RUN ln -s /usr/bin/python3 /usr/bin/python\n",
        &["path = \"/usr/bin/python\"\ntarget = \"/usr/bin/python3\""],
        0,
    ),
    (
        "ln -sf",
        "RUN ln -sf /a /b\n",
        &["path = \"/b\"\ntarget = \"/a\""],
        0,
    ),
    (
        "useradd with flags",
        "RUN useradd -m -s /bin/zsh -G wheel,docker dev\n",
        &["name = \"dev\"\nshell = \"/bin/zsh\"\ngroups = [\"wheel\", \"docker\"]"],
        0,
    ),
    (
        "adduser",
        "RUN adduser --disabled-password --gecos '' app\n",
        &["name = \"app\""],
        0,
    ),
    (
        "sudoers",
        "RUN useradd -m u && echo \"u ALL=(ALL) NOPASSWD:ALL\" >> /etc/sudoers.d/u\n",
        &["name = \"u\"\nsudo = \"nopasswd\""],
        0,
    ),
    (
        "systemctl enable",
        "RUN systemctl enable ssh nginx\n",
        &["enable = [\"ssh\", \"nginx\"]"],
        0,
    ),
    (
        "pip",
        "RUN pip3 install --upgrade pip; pip3 install requests flask\n",
        &["upgrade_pip = true\npackages = [\"requests\", \"flask\"]"],
        0,
    ),
    (
        "python -m pip",
        "RUN python3 -m pip install black\n",
        &["packages = [\"black\"]"],
        0,
    ),
    (
        "unknown command",
        "RUN make install\n",
        &["command = \"make install\""],
        1,
    ),
    (
        "mixed known and unknown",
        "RUN apt-get install -y a && ./configure && make\n",
        &["packages = [\"a\"]", "command = \"./configure && make\""],
        1,
    ),
    (
        "exec form RUN",
        "RUN [\"/bin/echo\", \"hi\"]\n",
        &["command = \"/bin/echo hi\""],
        1,
    ),
    (
        "heredoc RUN",
        "RUN <<EOF\napt-get install -y tree\ntouch /x\nEOF\n",
        // Lines run one after another whatever fails: an unrecognized one keeps them whole.
        &["apt-get install -y tree\ntouch /x"],
        1,
    ),
    (
        "heredoc RUN, every line recognized",
        "RUN <<EOF\napt-get update\napt-get install -y tree\nEOF\n",
        &["packages = [\"tree\"]"],
        0,
    ),
    (
        "useradd options are read, not taken for the name",
        "RUN useradd --uid 1000 --create-home --shell /bin/bash node\n",
        &["name = \"node\"\nuid = 1000\nshell = \"/bin/bash\""],
        0,
    ),
    (
        "useradd short options run together",
        "RUN useradd -md /home/x -s /bin/zsh xuser\n",
        &["name = \"xuser\"\nhome = \"/home/x\"\nshell = \"/bin/zsh\""],
        0,
    ),
    (
        "a system user",
        "RUN useradd -r -s /usr/sbin/nologin svc\n",
        &["name = \"svc\"\nsystem = true\nshell = \"/usr/sbin/nologin\""],
        0,
    ),
    (
        "a user without a home",
        "RUN useradd -s /bin/bash nohome\n",
        &["name = \"nohome\"\ncreate_home = false\nshell = \"/bin/bash\""],
        0,
    ),
    (
        "groupadd then useradd into that group (the devcontainer pattern)",
        "ARG USERNAME=dev\nARG UID=1001\nRUN groupadd --gid $UID $USERNAME && useradd --uid $UID --gid $UID -m $USERNAME && usermod -aG sudo $USERNAME\n",
        &[
            "[[group]]\nname = \"${var.USERNAME}\"",
            "[[user]]\nname = \"${var.USERNAME}\"",
            "groups = [\"sudo\"]",
        ],
        0,
    ),
    (
        "a primary group other than the user's own stays a run",
        "RUN useradd -m -g users dev\n",
        &["command = \"useradd -m -g users dev\""],
        1,
    ),
    (
        "a group added after a user, without a gid, stays a run",
        "RUN useradd -m dev && groupadd docker\n",
        &["[[user]]\nname = \"dev\"", "command = \"groupadd docker\""],
        1,
    ),
    (
        "mkdir, chown and chmod of the directory",
        "RUN useradd -m app && mkdir -p /srv/app/data /var/cache/app && chown -R app:app /srv/app/data && chmod 700 /var/cache/app\n",
        &[
            "[[directory]]\npath = \"/srv/app/data\"\nowner = \"app:app\"",
            "[[directory]]\npath = \"/var/cache/app\"\nmode = 0o700",
        ],
        0,
    ),
    (
        "lines added to files",
        "RUN echo 'export EDITOR=vim' >> /etc/bash.bashrc && echo \"alias ll='ls -l'\" >>/etc/bash.bashrc && echo en_US.UTF-8 UTF-8 >> /etc/locale.gen\n",
        &[
            "dest = \"/etc/bash.bashrc\"\ncontent = \"\"\"\nexport EDITOR=vim\nalias ll='ls -l'\n\"\"\"\nappend = true",
            "dest = \"/etc/locale.gen\"\ncontent = \"\"\"\nen_US.UTF-8 UTF-8\n\"\"\"\nappend = true",
        ],
        0,
    ),
    (
        "echo with escapes or variables, or into the account files, stays a run",
        "RUN echo 'a\\tb' >> /etc/x && echo $HOME >> /etc/y\nRUN echo 'x:1000:' >> /etc/group\n",
        &[
            "command = '''echo 'a\\tb' >> /etc/x && echo $HOME >> /etc/y'''",
            "command = \"echo 'x:1000:' >> /etc/group\"",
        ],
        2,
    ),
    (
        "chown of something not made here stays a run",
        "RUN chown -R nobody /opt\n",
        &["command = \"chown -R nobody /opt\""],
        1,
    ),
    (
        "a build argument in a ${X%%pattern} form stays for the shell, defined",
        "ARG PG=16.2\nRUN curl -fsSLo /tmp/pg.tgz https://example.org/pg/${PG%%.*}/pg.tgz\n",
        &[
            "command = \"\"\"\nPG='${var.PG}'\ncurl -fsSLo /tmp/pg.tgz https://example.org/pg/${PG%%.*}/pg.tgz\"\"\"",
        ],
        1,
    ),
    (
        "an ENV in a ${X%%pattern} form is expanded where Docker expands it",
        "ENV GO_VERSION=1.22.5\nWORKDIR /opt/go-${GO_VERSION%.*}\nLABEL version=\"${GO_VERSION%%.*}\"\n",
        &["workdir = \"/opt/go-1.22\"", "\"version\" = \"1\""],
        0,
    ),
    (
        "a primary group stays a run",
        "RUN useradd --uid 1000 --gid node --create-home node2\n",
        &["command = \"useradd --uid 1000 --gid node --create-home node2\""],
        1,
    ),
    (
        "adduser with Debian's defaults",
        "RUN adduser --disabled-password --gecos '' dev\n",
        &["name = \"dev\"\nshell = \"/bin/bash\""],
        0,
    ),
    (
        "quotes in FROM are Docker's, not the image name's",
        "ARG X=12\nFROM debian:\"${X}\" AS y\n",
        &["base = \"debian:${var.X}\""],
        0,
    ),
    (
        "several names on one ARG, over continuation lines",
        "ARG A=1 \\\n    B=\"two words\"\nRUN echo $A $B > /x\n",
        &[
            "\"A\" = \"1\"",
            "\"B\" = \"two words\"",
            "echo ${var.A} ${var.B} > /x",
        ],
        1,
    ),
    (
        "ENV values reach the commands import lifts",
        "ENV PG_MAJOR=15 BIN=/opt/bin\nRUN apt-get install -y postgresql-$PG_MAJOR && ln -s /usr/lib/postgresql/${PG_MAJOR}/bin/psql $BIN/psql\n",
        &[
            "packages = [\"postgresql-15\"]",
            "path = \"/opt/bin/psql\"\ntarget = \"/usr/lib/postgresql/15/bin/psql\"",
        ],
        0,
    ),
    (
        "relative paths in lifted commands are the WORKDIR's",
        "WORKDIR /opt/tools\nRUN curl -fsSL -o tool.tgz https://files.example.invalid/tool.tgz && ln -s tool.tgz current\n",
        &[
            "dest = \"/opt/tools/tool.tgz\"",
            "path = \"/opt/tools/current\"\ntarget = \"tool.tgz\"",
        ],
        0,
    ),
    (
        "COPY destinations relative to WORKDIR and into existing directories",
        "WORKDIR /app\nCOPY run.sh .\nCOPY tool.sh /usr/local/bin\nCOPY a.txt b.txt ./data/\n",
        &[
            "dest = \"/app/run.sh\"",
            "dest = \"/usr/local/bin/tool.sh\"",
            "dest = \"/app/data/a.txt\"",
            "dest = \"/app/data/b.txt\"",
        ],
        0,
    ),
    (
        "|| keeps the RUN whole",
        "RUN apt-get install -y fortune || true\n",
        &["command = \"apt-get install -y fortune || true\""],
        1,
    ),
    (
        "if keeps the RUN whole",
        "RUN if [ -f /x ]; then apt-get install -y b; fi\n",
        &["command = \"if [ -f /x ]; then apt-get install -y b; fi\""],
        1,
    ),
    (
        "case branches stay conditional",
        "RUN case \"$(uname -m)\" in x86_64) apt-get install -y c ;; *) apt-get install -y d ;; esac\n",
        &["esac"],
        1,
    ),
    (
        "a variable assignment keeps its users",
        "RUN V=1.2 && curl -fsSLo /opt/x https://files.example.invalid/x-$V\n",
        &["V=1.2 && curl -fsSLo /opt/x"],
        1,
    ),
    (
        "braces and subshells stay whole",
        "RUN { echo a; echo b; } > /etc/ab && (cd /tmp && touch y)\n",
        &["{ echo a; echo b; } > /etc/ab"],
        1,
    ),
    (
        "after a run, later commands stay runs in order",
        "RUN ./configure\nRUN groupadd -g 1500 devs\nRUN useradd -m -G devs alice\n",
        &[
            "command = \"groupadd -g 1500 devs\"",
            "command = \"useradd -m -G devs alice\"",
        ],
        3,
    ),
    (
        "runs keep USER and WORKDIR, and get the network",
        "USER alice\nWORKDIR /src/app\nRUN make install\n",
        &[
            "user = \"alice\"",
            "mkdir -p /src/app && cd /src/app || exit 1\nmake install",
            "network = true",
        ],
        1,
    ),
    (
        "USER WORKDIR",
        "USER app\nWORKDIR /srv\n",
        &["user = \"app\"", "workdir = \"/srv\""],
        0,
    ),
    (
        "SHELL",
        "SHELL [\"/bin/bash\", \"-o\", \"pipefail\", \"-c\"]\n",
        &["shell = [\"/bin/bash\", \"-o\", \"pipefail\", \"-c\"]"],
        0,
    ),
    (
        "ENTRYPOINT and CMD json",
        "ENTRYPOINT [\"/tini\", \"--\"]\nCMD [\"app\"]\n",
        &["entrypoint = [\"/tini\", \"--\"]", "cmd = [\"app\"]"],
        0,
    ),
    (
        "CMD shell form",
        "CMD echo hi\n",
        &["cmd = [\"/bin/sh\", \"-c\", \"echo hi\"]"],
        0,
    ),
    (
        "LABEL",
        "LABEL org.opencontainers.image.title=\"x\"\n",
        &["\"org.opencontainers.image.title\" = \"x\""],
        0,
    ),
    (
        "COPY file",
        "COPY motd /etc/motd\n",
        &["src = \"motd\"\ndest = \"/etc/motd\""],
        0,
    ),
    (
        "COPY into dir",
        "COPY a.sh b.sh /usr/local/bin/\n",
        &[
            "dest = \"/usr/local/bin/a.sh\"",
            "dest = \"/usr/local/bin/b.sh\"",
        ],
        0,
    ),
    (
        "ADD url",
        "ADD https://x.example/f.txt /opt/f.txt\n",
        &["url = \"https://x.example/f.txt\"\ndest = \"/opt/f.txt\""],
        0,
    ),
    (
        "multi-stage",
        "RUN true\nFROM alpine:3\nRUN apk add curl\n",
        &["base = \"alpine:3\"", "command = \"apk add curl\""],
        1,
    ),
];

#[test]
fn snippets_map_to_recipe_fragments() {
    assert!(SNIPPETS.len() >= 30);
    let w = Work::setup();
    for (case, body, want, runs) in SNIPPETS {
        let text = if *case == "ARG before FROM" {
            "ARG IMG=debian:12\nFROM ${IMG}\n".to_string()
        } else if body.contains("FROM ") {
            body.to_string()
        } else {
            format!("FROM debian:12\n{body}")
        };
        let df = w.path("Dockerfile");
        fs::write(&df, &text).unwrap();
        let o = w.cmd().arg("import").arg(&df).output().unwrap();
        assert_ok(&o);
        let recipe = stdout(&o);
        for f in *want {
            assert!(recipe.contains(f), "{case}: recipe lacks {f}:\n{recipe}");
        }
        assert_eq!(
            recipe.matches("[[run]]").count(),
            *runs,
            "{case}: [[run]] steps in\n{recipe}"
        );
        // Every run is valid shell.
        crate::assert_runs_parse(&recipe, case);
        if *runs > 0 {
            assert!(stderr(&o).contains("Dockerfile:"), "{case}: {}", stderr(&o));
        }
    }
}

#[test]
fn a_copied_directory_becomes_one_copy_entry_without_what_dockerignore_leaves_out() {
    let w = Work::setup();
    let ctx = w.path("ctx");
    fs::create_dir_all(ctx.join("conf/sub")).unwrap();
    fs::write(ctx.join("conf/a.conf"), "a").unwrap();
    fs::write(ctx.join("conf/sub/b.conf"), "b").unwrap();
    fs::write(ctx.join("conf/debug.log"), "log").unwrap();
    fs::write(ctx.join("conf/sub/x.tmp"), "tmp").unwrap();
    fs::write(ctx.join("conf/run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(
        ctx.join("conf/run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // Docker reads these against the context's root: `*.md` names only root files.
    fs::write(
        ctx.join(".dockerignore"),
        "# build junk\nconf/*.log\n**/*.tmp\n*.md\n",
    )
    .unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY conf /etc/app\nCOPY --chown=1000:1000 --chmod=750 conf /opt/conf/\n",
    )
    .unwrap();
    let out = ctx.join("r.toml");
    let o = w
        .cmd()
        .arg("import")
        .arg(ctx.join("Dockerfile"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_ok(&o);
    let r = fs::read_to_string(&out).unwrap();
    assert!(
        r.contains(
            "[[copy]]\nsrc = \"conf\"\ndest = \"/etc/app\"\nexclude = [\"/*.log\", \"**/*.tmp\"]\npreserve_mode = true\n"
        ),
        "{r}"
    );
    assert!(
        r.contains("dest = \"/opt/conf\"")
            && r.contains("owner = \"1000:1000\"\nmode = 0o750\ndir_mode = 0o750\n"),
        "{r}"
    );
    assert!(!r.contains("[[file]]"), "{r}");

    // The recipe builds: the layers hold the directory as Docker would have copied it.
    let o = w
        .cmd()
        .arg("build")
        .arg(&out)
        .arg("--out")
        .arg(w.path("out/imported"))
        .output()
        .unwrap();
    assert_ok(&o);
    let bundle = w.path("bundle");
    crate::tool(
        "umoci",
        &[
            "raw",
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:latest", w.path("out/imported").display()),
            bundle.to_str().unwrap(),
        ],
    );
    let mode = |p: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(bundle.join(p)).unwrap().permissions(),
        ) & 0o7777
    };
    assert_eq!(
        fs::read_to_string(bundle.join("etc/app/sub/b.conf")).unwrap(),
        "b"
    );
    assert!(!bundle.join("etc/app/debug.log").exists());
    assert!(!bundle.join("etc/app/sub/x.tmp").exists());
    assert_eq!(mode("etc/app/a.conf"), 0o644);
    assert_eq!(mode("etc/app/run.sh"), 0o755);
    assert_eq!(mode("opt/conf/a.conf"), 0o750);
    assert_eq!(mode("opt/conf/sub"), 0o750);
}

/// Docker's ENV, simulated: each value expanded (`$X`, `${X}`) against what is set so far
/// (ARGs and earlier ENVs), in order.
fn docker_env(dockerfile: &str) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut env: Vec<(String, String)> = Vec::new();
    let expand = |v: &str, known: &[(String, String)]| {
        let mut out = String::new();
        let mut rest = v;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, tail) = if let Some(b) = after.strip_prefix('{') {
                let end = b.find('}').unwrap();
                (&b[..end], &b[end + 1..])
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            let value = known
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            out.push_str(&value);
            rest = tail;
        }
        out.push_str(rest);
        out
    };
    for line in dockerfile.lines() {
        let line = line.trim();
        if let Some(a) = line.strip_prefix("ARG ") {
            let (k, v) = a.split_once('=').unwrap_or((a, ""));
            vars.push((k.to_string(), v.to_string()));
        } else if let Some(e) = line.strip_prefix("ENV ") {
            let (k, v) = e.split_once(' ').unwrap();
            let known: Vec<(String, String)> = vars.iter().chain(env.iter()).cloned().collect();
            let v = expand(v, &known);
            env.retain(|(k2, _)| k2 != k);
            env.push((k.to_string(), v));
        }
    }
    env
}

#[test]
fn imported_env_is_the_environment_docker_would_give() {
    let w = Work::setup();
    // The seed's ENV sequence: PATH set, then variables it later refers to, then PATH again.
    let dockerfile = "FROM scratch\nARG USER=coder\nENV GOROOT /usr/local/go\nENV PATH $PATH:$GOROOT/bin\nENV GOPATH /home/${USER}/go\nENV GOBIN $GOPATH/bin\nENV PATH $PATH:$GOBIN\n";
    let df = w.path("Dockerfile");
    fs::write(&df, dockerfile).unwrap();
    let recipe = w.path("recipes/envtest.toml");
    let o = w
        .cmd()
        .arg("import")
        .arg(&df)
        .arg("-o")
        .arg(&recipe)
        .output()
        .unwrap();
    assert_ok(&o);
    let o = w
        .cmd()
        .arg("build")
        .arg(&recipe)
        .arg("--out")
        .arg(w.path("out/envtest"))
        .output()
        .unwrap();
    assert_ok(&o);
    let config = crate::layout::config(&w, "out/envtest", "latest");
    let got: Vec<String> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = docker_env(dockerfile)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for w in &want {
        assert!(
            got.contains(w),
            "Docker's {w} is not in the image's Env {got:?}"
        );
    }
    assert!(
        got.iter()
            .any(|e| e == "PATH=:/usr/local/go/bin:/home/coder/go/bin"),
        "GOBIN is on the final PATH: {got:?}"
    );
}

#[test]
fn a_bare_dockerfile_name_keeps_its_context_and_sources_outside_it_are_refused() {
    let w = Work::setup();
    let ctx = w.path("ctx");
    fs::create_dir_all(ctx.join("conf")).unwrap();
    fs::write(ctx.join("conf/a.conf"), "a").unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM debian:12\nCOPY conf /etc/app\n",
    )
    .unwrap();
    // `imgbuild import Dockerfile` from the context directory: the directory is found.
    let o = w
        .cmd()
        .current_dir(&ctx)
        .args(["import", "Dockerfile"])
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(
        stdout(&o).contains("[[copy]]\nsrc = \"conf\"\ndest = \"/etc/app\""),
        "{}",
        stdout(&o)
    );
    // A source outside the context is refused, as Docker refuses it, naming the line.
    fs::write(
        ctx.join("Dockerfile"),
        "FROM debian:12\nCOPY conf/../../secret /etc/app/\n",
    )
    .unwrap();
    let o = w
        .cmd()
        .current_dir(&ctx)
        .args(["import", "Dockerfile"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("Dockerfile:2: COPY source `conf/../../secret` is outside the build context"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_recipe_written_above_the_context_is_rebased_and_beside_it_is_refused() {
    let w = Work::setup();
    let ctx = w.path("app/ctx");
    fs::create_dir_all(ctx.join("conf")).unwrap();
    fs::create_dir_all(w.path("recipes")).unwrap();
    fs::write(ctx.join("conf/a.conf"), "a").unwrap();
    fs::write(ctx.join("motd"), "hello").unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY conf /etc/app\nCOPY motd /etc/motd\n",
    )
    .unwrap();
    let import = |out: &std::path::Path| {
        w.cmd()
            .arg("import")
            .arg(ctx.join("Dockerfile"))
            .arg("-o")
            .arg(out)
            .output()
            .unwrap()
    };
    // Above the context: the paths lead into it, and the plan digests those files.
    let out = w.path("app/app.toml");
    assert_ok(&import(&out));
    let recipe = fs::read_to_string(&out).unwrap();
    assert!(
        recipe.contains("src = \"ctx/conf\"") && recipe.contains("src = \"ctx/motd\""),
        "{recipe}"
    );
    let o = w.cmd().arg("plan").arg(&out).output().unwrap();
    assert_ok(&o);
    // Next to the Dockerfile, the paths stay as they are.
    assert_ok(&import(&ctx.join("app.toml")));
    let recipe = fs::read_to_string(ctx.join("app.toml")).unwrap();
    assert!(recipe.contains("src = \"motd\""), "{recipe}");
    // Beside it: a recipe may not read outside its directory, so the import says so
    // (exit 2) and writes nothing, rather than a recipe that fails later.
    let out = w.path("recipes/app.toml");
    let o = import(&out);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("would read `motd` from the build context"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}
