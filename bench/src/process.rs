//! Child processes: start with a log file, stop with SIGTERM then SIGKILL.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `command` with stdout and stderr appended to `log`.
pub fn spawn_logged(command: &mut Command, log: &Path) -> Result<Child, String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|error| format!("{}: {error}", log.display()))?;
    let clone = file.try_clone().map_err(|error| error.to_string())?;
    command
        .stdin(Stdio::null())
        .stdout(clone)
        .stderr(file)
        .spawn()
        .map_err(|error| format!("cannot start {:?}: {error}", command.get_program()))
}

/// Sends SIGTERM, waits up to `grace` for the exit, then SIGKILLs.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's PID has no memory effects.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An error if `child` has exited, with the tail of its log.
pub fn check_alive(child: &mut Child, name: &str, log: &Path) -> Result<(), String> {
    match child.try_wait() {
        Ok(Some(status)) => Err(format!(
            "{name} exited ({status}); log tail:\n{}",
            log_tail(log, 20)
        )),
        _ => Ok(()),
    }
}
