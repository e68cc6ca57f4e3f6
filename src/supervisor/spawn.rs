//! Starting one child process.
//!
//! Each child gets its own process group (so a terminal's Ctrl-C reaches
//! only the supervisor, which then stops children in order, and so nginx's
//! workers can be killed with their master), a parent-death signal (so no
//! child outlives even a SIGKILLed supervisor), and, when it serves on a
//! socket the supervisor owns, that socket as fd 3 with `LISTEN_FDS=1`
//! (systemd's convention, read by `crate::listen`). `LISTEN_PID` is left
//! unset, which readers of the convention (`listenfd`) take as "meant for
//! you": setting it to the child's own pid would take a `setenv` between
//! fork and exec, which is not async-signal-safe.
//!
//! The write ends of a child's stdout and stderr pipes are non-blocking: if
//! the supervisor cannot drain them for a while (it is stopped, say), a
//! child's log write fails and the line is lost instead of the child
//! stalling with a request half answered. (Our servers and nginx both carry
//! on after a failed log write.)
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so
//! every child is spawned from the supervisor's single runtime thread, which
//! lives as long as the supervisor.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::Stdio;

use nix::sys::signal::Signal;

/// Everything needed to start one generation of a child.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Variables set in the child's environment (a secret such as a
    /// database password goes here: an argument list is public in `ps`).
    pub env: Vec<(OsString, OsString)>,
    /// A listening socket to hand over as fd 3.
    pub listen_fd: Option<RawFd>,
    /// Sent to the child when the supervisor dies: SIGKILL for our servers,
    /// SIGTERM for nginx so its master takes its workers down with it.
    pub parent_death_signal: Signal,
    /// The (uid, gid) to run as, with no supplementary groups (`None`: as
    /// the supervisor). The parent-death signal is set after the switch,
    /// which would otherwise clear it.
    pub user: Option<(u32, u32)>,
}

/// The fd a passed socket gets in the child (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

pub fn spawn(launch: &Launch) -> std::io::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(&launch.program);
    command
        .args(&launch.args)
        .envs(launch.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        // systemd's socket is the supervisor's to notify, not its children's.
        .env_remove("NOTIFY_SOCKET");
    if launch.listen_fd.is_some() {
        command.env("LISTEN_FDS", "1");
    }
    if let Some((uid, gid)) = launch.user {
        // std drops the supplementary groups when root switches user.
        command.uid(uid).gid(gid);
    }
    let supervisor = nix::unistd::getpid();
    let listen_fd = launch.listen_fd;
    let death_signal = launch.parent_death_signal;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, fcntl, dup2, _exit); it
    // allocates nothing and touches no lock.
    unsafe {
        command.pre_exec(move || {
            use nix::libc;
            nix::sys::prctl::set_pdeathsig(death_signal)?;
            if nix::unistd::getppid() != supervisor {
                // The supervisor died between fork and prctl.
                libc::_exit(1);
            }
            for output in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
                let flags = libc::fcntl(output, libc::F_GETFL);
                if flags < 0 || libc::fcntl(output, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = listen_fd {
                if fd == LISTEN_FDS_START {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, LISTEN_FDS_START) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn()
}
