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
