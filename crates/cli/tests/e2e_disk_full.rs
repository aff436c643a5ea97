//! A full disk, end to end through the real binary: a node whose ledger and snapshot
//! directories live on a small filesystem takes writes until the filesystem fills, then stops
//! with a clear error (exit status 2, "No space left on device" in its log) instead of going on
//! from a state its disk does not hold. Once there is room again it restarts from its ledger
//! with every write it had reported committed, and the ledger verifies offline.
//!
//! The small filesystem is a tmpfs mounted for the test, which needs root (as CI has); without
//! it the test says so and passes without running.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::network::Network;
use common::{charter, path_str, text};

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk {
    mount_point: PathBuf,
}

impl SmallDisk {
    fn mount(mount_point: &Path, bytes: u64) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(mount_point).map_err(|error| error.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(mount_point)
            .output()
            .map_err(|error| error.to_string())?;
        if !output.status.success() {
            return Err(text(&output.stderr));
        }
        Ok(SmallDisk {
            mount_point: mount_point.to_owned(),
        })
    }

    fn resize(&self, bytes: u64) {
        let output = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.mount_point)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .output();
    }
}

/// Bytes under `dir`, recursively (0 if it does not exist).
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            bytes_under(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// Moves `dir` (if it exists) onto the small disk and leaves a symbolic link in its place.
fn move_onto(dir: &Path, disk: &SmallDisk) {
    let name = dir.file_name().unwrap();
    let target = disk.mount_point.join(name);
    std::fs::create_dir_all(&target).unwrap();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
    std::os::unix::fs::symlink(&target, dir).unwrap();
}

/// The status `/node/tx` reports for `tx_id`, or `None` if the node does not answer.
async fn tx_status(network: &Network, tx_id: &str) -> Option<String> {
    let json = network
        .get(0, &format!("/node/tx?transaction_id={tx_id}"))
        .await?;
    json["status"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_node_cleanly_and_loses_nothing_committed() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small filesystem needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("ws");
    let mut network = Network::start(&workspace, 1, &["--snapshot-interval-txs", "50"]);
    network
        .wait_for_primary(&[0], Duration::from_secs(10))
        .await;
    network.kill(0);

    let node_dir = network.nodes[0].dir.clone();
    let used = bytes_under(&node_dir.join("ledger")) + bytes_under(&node_dir.join("snapshots"));
    // Room for about a hundred of the writes below.
    let disk = match SmallDisk::mount(&dir.path().join("disk"), used + 4 * 1024 * 1024) {
        Ok(disk) => disk,
        Err(error) => panic!("cannot mount a tmpfs as root: {error}"),
    };
    move_onto(&node_dir.join("ledger"), &disk);
    move_onto(&node_dir.join("snapshots"), &disk);
    network.restart(0);
    network
        .wait_for_primary(&[0], Duration::from_secs(20))
        .await;

    // Write 32 KiB values until the node stops answering; keep those it reported committed.
    let value = "v".repeat(32 * 1024);
    let mut committed: Vec<(String, String)> = Vec::new();
    let mut refused = None;
    for sequence in 0..2_000 {
        let key = format!("k{sequence:05}");
        let Ok(mut client) = charter_host::client::Client::connect(
            network.nodes[0].rpc_address,
            "127.0.0.1",
            network.tls(Some("user0")),
        )
        .await
        else {
            refused = Some(format!("connect refused at write {sequence}"));
            break;
        };
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(
                "PUT",
                &format!("/app/kv/{key}"),
                &[],
                value.clone().into_bytes(),
            ),
        )
        .await;
        let tx_id = match answer {
            Ok(Ok(response)) if response.status == 200 => response.json().unwrap()
                ["transaction_id"]
                .as_str()
                .unwrap()
                .to_owned(),
            other => {
                refused = Some(format!("write {sequence}: {other:?}"));
                break;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tx_status(&network, &tx_id).await.as_deref() {
                Some("Committed") => {
                    committed.push((key.clone(), tx_id.clone()));
                    break;
                }
                Some("Pending") if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                _ => break,
            }
        }
    }
    let refused = refused.expect("the disk never filled");
    eprintln!("{} writes committed, then {refused}", committed.len());
    assert!(
        committed.len() >= 20,
        "only {} writes committed before the disk filled ({refused})",
        committed.len()
    );

    // The node stops by itself, with status 2 and the reason in its log.
    let child = network.nodes[0].own_child.as_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the node still runs on a full disk ({refused})"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(2), "{status}");
    network.nodes[0].own_child = None;
    network.nodes[0].pid = None;
    let log = std::fs::read_to_string(node_dir.join("node.log")).unwrap();
    eprintln!("node log tail: {}", &log[log.len().saturating_sub(600)..]);
    assert!(
        log.contains("fatal:") && log.contains("No space left on device"),
        "log tail: {}",
        &log[log.len().saturating_sub(2_000)..]
    );

    // With room again, the node restarts from its ledger with everything it committed.
    disk.resize(used + 64 * 1024 * 1024);
    network.restart(0);
    network
        .wait_for_primary(&[0], Duration::from_secs(30))
        .await;
    let mut client = network.client(0, Some("user0")).await;
    for (key, tx_id) in &committed {
        let response = client
            .request("GET", &format!("/app/kv/{key}"), &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(
            response.status, 200,
            "{key} ({tx_id}) lost after the restart"
        );
        assert_eq!(response.body.len(), value.len(), "{key}");
    }
    // It takes writes again.
    let response = client
        .request("PUT", "/app/kv/after", &[], b"room again".to_vec())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", text(&response.body));
    network.stop();

    let verified = charter(&[
        "ledger",
        "verify",
        path_str(&node_dir.join("ledger")),
        "--service-cert",
        path_str(&workspace.join("service_cert.pem")),
    ]);
    assert!(
        verified.status.success(),
        "{}{}",
        text(&verified.stdout),
        text(&verified.stderr)
    );
}
