//! Helpers shared by the end-to-end tests that run the real `charter` binary: running
//! commands, free ports, and finding and signalling the processes a sandbox starts.
#![allow(dead_code)]

pub mod network;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};

pub fn charter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_charter"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run charter")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().unwrap().port()
}

/// PIDs of the processes whose parent is `parent`, from `/proc/*/stat`.
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut children = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": the command may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|index| &stat[index + 1..]) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let _state = fields.next();
        if fields.next().and_then(|ppid| ppid.parse::<i32>().ok()) == Some(parent) {
            children.push(pid);
        }
    }
    children
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|index| stat[index + 1..].split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

pub fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) with a PID and a signal number has no memory effects.
    unsafe {
        libc::kill(pid, signal);
    }
}
