//! A full disk, end to end through the real binary: a node whose ledger and snapshot
//! directories live on a small filesystem takes writes until the filesystem fills, then stops
//! with a clear error (exit status 2, "No space left on device" in its log) instead of going on
//! from a state its disk does not hold. Once there is room again it restarts from its ledger
//! with every write it had reported committed, and the ledger verifies offline. In a 3-node
//! network, a follower whose disk fills stops the same way while the other two go on
//! committing, and it catches up once restarted.
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

/// The status `/node/tx` on node `index` reports for `tx_id`, or `None` if it does not answer.
async fn tx_status(network: &Network, index: usize, tx_id: &str) -> Option<String> {
    let json = network
        .get(index, &format!("/node/tx?transaction_id={tx_id}"))
        .await?;
    json["status"].as_str().map(str::to_owned)
}

/// Waits up to `timeout` for `tx_id` to be Committed on node `index` (Pending, or Unknown on a
/// node catching up, or no answer yet, all mean "not yet"); whether it was.
async fn committed_on(network: &Network, index: usize, tx_id: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match tx_status(network, index, tx_id).await.as_deref() {
            Some("Committed") => return true,
            Some("Invalid") => return false,
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => return false,
        }
    }
}

/// A 32 KiB value.
fn big_value() -> Vec<u8> {
    vec![b'v'; 32 * 1024]
}

/// `PUT /app/kv/{key}` of a 32 KiB value on node `index`, on a fresh connection: the TxID, or
/// why the node did not take it.
async fn put_big(network: &Network, index: usize, key: &str) -> Result<String, String> {
    let mut client = charter_host::client::Client::connect(
        network.nodes[index].rpc_address,
        "127.0.0.1",
        network.tls(Some("user0")),
    )
    .await
    .map_err(|error| format!("connect: {error}"))?;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.request("PUT", &format!("/app/kv/{key}"), &[], big_value()),
    )
    .await;
    match answer {
        Ok(Ok(response)) if response.status == 200 => Ok(response.json().unwrap()
            ["transaction_id"]
            .as_str()
            .unwrap()
            .to_owned()),
        other => Err(format!("{other:?}")),
    }
}

/// Checks that every `(key, tx_id)` in `writes` reads back through `client` with the 32 KiB
/// value it was written with; `what` names a failure.
async fn assert_all_read_back(
    client: &mut charter_host::client::Client,
    writes: &[(String, String)],
    what: &str,
) {
    for (key, tx_id) in writes {
        let response = client
            .request("GET", &format!("/app/kv/{key}"), &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{key} ({tx_id}) {what}");
        assert_eq!(response.body, big_value(), "{key}");
    }
}

/// Puts node `index`'s ledger and snapshots on a small disk with `room` bytes free beyond what
/// they hold, and restarts it from there.
fn restart_on_small_disk(
    network: &mut Network,
    index: usize,
    mount_point: &Path,
    room: u64,
) -> (SmallDisk, u64) {
    network.kill(index);
    let node_dir = network.nodes[index].dir.clone();
    let used = bytes_under(&node_dir.join("ledger")) + bytes_under(&node_dir.join("snapshots"));
    let disk = match SmallDisk::mount(mount_point, used + room) {
        Ok(disk) => disk,
        Err(error) => panic!("cannot mount a tmpfs as root: {error}"),
    };
    move_onto(&node_dir.join("ledger"), &disk);
    move_onto(&node_dir.join("snapshots"), &disk);
    network.restart(index);
    (disk, used)
}

/// Whether node `index` (one we started) has exited; panics if it exited otherwise than a
/// node on a full disk does: status 2 with the reason in its log.
fn stopped_for_a_full_disk(network: &mut Network, index: usize) -> bool {
    let node = &mut network.nodes[index];
    let child = node.own_child.as_mut().expect("a node this test started");
    let Some(status) = child.try_wait().unwrap() else {
        return false;
    };
    let log = std::fs::read_to_string(node.dir.join("node.log")).unwrap();
    let tail = &log[log.len().saturating_sub(1_500)..];
    assert_eq!(
        status.code(),
        Some(2),
        "{}: {status}; log tail: {tail}",
        node.name
    );
    assert!(
        tail.contains("fatal:") && tail.contains("No space left on device"),
        "{}: log tail: {tail}",
        node.name
    );
    node.own_child = None;
    node.pid = None;
    true
}

/// Whether this process may mount a filesystem; says why not if it may not.
fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: mounting a small filesystem needs root");
    }
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_node_cleanly_and_loses_nothing_committed() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("ws");
    let mut network = Network::start(&workspace, 1, &["--snapshot-interval-txs", "50"]);
    network
        .wait_for_primary(&[0], Duration::from_secs(10))
        .await;
    // Room for about a hundred of the writes below.
    let (disk, used) = restart_on_small_disk(&mut network, 0, &dir.path().join("disk"), 4 << 20);
    network
        .wait_for_primary(&[0], Duration::from_secs(20))
        .await;

    // Write until the node stops answering; keep the writes it reported committed.
    let mut committed: Vec<(String, String)> = Vec::new();
    let mut refused = None;
    for sequence in 0..2_000 {
        let key = format!("k{sequence:05}");
        match put_big(&network, 0, &key).await {
            Ok(tx_id) => {
                if committed_on(&network, 0, &tx_id, Duration::from_secs(5)).await {
                    committed.push((key, tx_id));
                }
            }
            Err(error) => {
                refused = Some(format!("write {sequence}: {error}"));
                break;
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stopped_for_a_full_disk(&mut network, 0) {
        assert!(
            Instant::now() < deadline,
            "the node still runs on a full disk ({refused})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // With room again, the node restarts from its ledger with everything it committed.
    disk.resize(used + (64 << 20));
    network.restart(0);
    network
        .wait_for_primary(&[0], Duration::from_secs(30))
        .await;
    let mut client = network.client(0, Some("user0")).await;
    assert_all_read_back(&mut client, &committed, "lost after the restart").await;
    // It takes writes again.
    let response = client
        .request("PUT", "/app/kv/after", &[], b"room again".to_vec())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", text(&response.body));
    network.stop();

    let node_dir = network.nodes[0].dir.clone();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_full_disk_stops_and_the_others_go_on() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("ws");
    let mut network = Network::start(&workspace, 3, &["--snapshot-interval-txs", "50"]);
    let primary = network
        .wait_for_primary(&[0, 1, 2], Duration::from_secs(10))
        .await;
    let follower = (primary + 1) % 3;
    let (disk, used) =
        restart_on_small_disk(&mut network, follower, &dir.path().join("disk"), 3 << 20);

    // Write through the primary until the follower has stopped, then some more: every write
    // commits, with or without it.
    let mut written: Vec<(String, String)> = Vec::new();
    let mut after_stop = 0;
    for sequence in 0..2_000 {
        let key = format!("k{sequence:05}");
        let tx_id = put_big(&network, primary, &key)
            .await
            .unwrap_or_else(|error| panic!("write {sequence} refused: {error}"));
        assert!(
            committed_on(&network, primary, &tx_id, Duration::from_secs(10)).await,
            "write {sequence} ({tx_id}) did not commit:\n{}",
            network.diagnostics()
        );
        written.push((key, tx_id));
        if network.nodes[follower].own_child.is_none() {
            after_stop += 1;
            if after_stop == 20 {
                break;
            }
        } else if stopped_for_a_full_disk(&mut network, follower) {
            eprintln!("the follower stopped after {} writes", written.len());
        }
    }
    assert_eq!(after_stop, 20, "the follower's disk never filled");

    // With room again, it restarts and catches up with everything.
    disk.resize(used + (128 << 20));
    network.restart(follower);
    let (_, last_tx_id) = written.last().unwrap();
    assert!(
        committed_on(&network, follower, last_tx_id, Duration::from_secs(60)).await,
        "the follower did not catch up:\n{}",
        network.diagnostics()
    );
    let mut client = network.client(follower, Some("user0")).await;
    assert_all_read_back(&mut client, &written, "missing on the follower").await;
}
