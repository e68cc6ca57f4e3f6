//! One supervisor per run directory: an exclusive `flock` on
//! `RUN_DIR/supervisor.lock`, held for the supervisor's lifetime, with the
//! holder's pid inside so a second supervisor can say who is in the way.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

pub struct RunDirLock {
    _lock: Flock<File>,
}

pub fn acquire(run_dir: &Path) -> anyhow::Result<RunDirLock> {
    let path = run_dir.join("supervisor.lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, _)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            anyhow::bail!(
                "another gallery-supervisor{who} is already running with run directory {}",
                run_dir.display()
            );
        }
    };
    lock.set_len(0)?;
    lock.rewind()?;
    writeln!(lock, "{}", std::process::id())?;
    Ok(RunDirLock { _lock: lock })
}
