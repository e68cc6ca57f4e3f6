//! The README's run command, `scripts/run`, on a machine without nginx: it
//! installs nginx with apt-get (a fake one here, which "installs" by linking
//! the real nginx into a private sbin directory), saying so in one line,
//! then builds and starts the stack.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::helpers::supervisor::Supervisor;
use crate::helpers::{bin, client};

fn executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_run_command_installs_nginx_when_it_is_missing_then_serves() {
    let tools = tempfile::tempdir().unwrap();
    let (fake_bin, fake_sbin) = (tools.path().join("bin"), tools.path().join("sbin"));
    std::fs::create_dir(&fake_bin).unwrap();
    std::fs::create_dir(&fake_sbin).unwrap();
    let apt_log = tools.path().join("apt-get.log");
    let cargo_log = tools.path().join("cargo.log");
    executable(
        &fake_bin.join("apt-get"),
        &format!(
            "#!/bin/sh\necho \"$*\" >> {log}\ncase \"$*\" in *install*nginx*) ln -s {nginx} {sbin}/nginx;; esac\n",
            log = apt_log.display(),
            nginx = crate::helpers::nginx().display(),
            sbin = fake_sbin.display(),
        ),
    );
    let fake_cargo = fake_bin.join("cargo");
    executable(
        &fake_cargo,
        &format!("#!/bin/sh\necho \"$*\" >> {}\n", cargo_log.display()),
    );
    // A normal user's PATH, without nginx anywhere on it.
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", fake_bin.display());
    assert!(
        !Command::new("sh")
            .args(["-c", "command -v nginx"])
            .env("PATH", &path)
            .status()
            .unwrap()
            .success(),
        "nginx must not be on the test's PATH"
    );
    let installed = fake_sbin.join("nginx");
    let run = |dir: &Path| {
        let inner = Supervisor::command(
            dir,
            &["--api-workers", "1", "--nginx", installed.to_str().unwrap()],
        );
        let mut command = Command::new("bash");
        command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run"))
            .args(inner.get_args())
            .current_dir(dir)
            .env_remove("DATABASE_URL")
            .env("PATH", &path)
            .env("GALLERY_SBIN_DIRS", &fake_sbin)
            .env("SUDO", "")
            .env("CARGO", &fake_cargo)
            // No rustc: a plain release build, whatever this machine is.
            .env("RUSTC", "/nonexistent/rustc")
            .env("GALLERY_BIN", bin("gallery-supervisor").parent().unwrap());
        command
    };

    let dir = Supervisor::temp_dir();
    let command = run(dir.path());
    let stack = Supervisor::start_command(dir, command);
    let output = stack.proc.output.lines();
    assert_eq!(
        output.first().map(String::as_str),
        Some("gallery: installing nginx (the web server in front of the stack) with apt-get"),
        "{output:?}"
    );
    let apt = std::fs::read_to_string(&apt_log).unwrap();
    assert_eq!(apt, "update -qq\ninstall -y -qq nginx\n");
    let cargo = std::fs::read_to_string(&cargo_log).unwrap();
    assert_eq!(cargo, "build --release --bins --quiet\n");
    let health = client().get(stack.url("/api/health")).send().unwrap();
    assert_eq!(health.status(), 200);
    drop(stack);

    // nginx is there now: nothing is installed and nothing is said.
    let dir = Supervisor::temp_dir();
    let command = run(dir.path());
    let stack = Supervisor::start_command(dir, command);
    assert!(
        !stack.proc.output.text().contains("installing"),
        "{}",
        stack.proc.output.text()
    );
    assert_eq!(std::fs::read_to_string(&apt_log).unwrap(), apt);
}

/// `scripts/release-build`, which `scripts/run` and the bench build with:
/// statically linked for a glibc Linux host whose C compiler has glibc's
/// static library (built in `target/TRIPLE/release`, then put in
/// `target/release`), a plain release build anywhere else. Fake `cargo`, `rustc` and `cc` say which machine
/// this is and record what was asked of them.
#[test]
fn the_release_build_links_statically_only_where_it_can() {
    let tools = tempfile::tempdir().unwrap();
    let cargo_log = tools.path().join("cargo.log");
    let fake = |name: &str, text: &str| {
        let path = tools.path().join(name);
        executable(&path, &format!("#!/bin/sh\n{text}\n"));
        path
    };
    // It logs its arguments and, for a --target build, leaves a program
    // and one of cargo's hashed copies where cargo would.
    let cargo = fake(
        "cargo",
        &format!(
            "echo \"$*\" >> {log}\n\
             case \"$*\" in *--target*) d=target/$4/release; mkdir -p $d; \
             printf new > $d/api-server; printf hashed > $d/api-server-0123456789abcdef; \
             chmod +x $d/api-server $d/api-server-0123456789abcdef;; esac",
            log = cargo_log.display()
        ),
    );
    let release_build = |host: &str, libc: &str| {
        let rustc = fake(
            &format!("rustc-{host}"),
            &format!("echo 'rustc 1.0.0'; echo 'host: {host}'"),
        );
        let cc = fake("cc-for-test", &format!("echo '{libc}'"));
        let _ = std::fs::remove_file(&cargo_log);
        let output = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/release-build"))
            .args(["--bins", "--quiet"])
            .current_dir(tools.path())
            .env("CARGO", &cargo)
            .env("RUSTC", &rustc)
            .env("CC", &cc)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        (
            String::from_utf8(output.stdout).unwrap(),
            std::fs::read_to_string(&cargo_log).unwrap(),
        )
    };

    let (dir, args) = release_build(
        "x86_64-unknown-linux-gnu",
        "/usr/lib/x86_64-linux-gnu/libc.a",
    );
    assert_eq!(dir, "target/release\n");
    let copied = tools.path().join("target/release");
    assert_eq!(
        std::fs::read_to_string(copied.join("api-server")).unwrap(),
        "new"
    );
    assert!(!copied.join("api-server-0123456789abcdef").exists());
    assert_eq!(
        args,
        "build --release --target x86_64-unknown-linux-gnu --config \
         target.x86_64-unknown-linux-gnu.rustflags=[\"-C\", \"target-feature=+crt-static\"] \
         --bins --quiet\n"
    );
    // No libc.a: cc names the file it did not find, without a directory.
    let (dir, args) = release_build("x86_64-unknown-linux-gnu", "libc.a");
    assert_eq!(dir, "target/release\n");
    assert_eq!(args, "build --release --bins --quiet\n");
    // musl, macOS: not glibc.
    for host in ["x86_64-unknown-linux-musl", "aarch64-apple-darwin"] {
        let (dir, args) = release_build(host, "/usr/lib/libc.a");
        assert_eq!(dir, "target/release\n", "{host}");
        assert_eq!(args, "build --release --bins --quiet\n", "{host}");
    }
}
