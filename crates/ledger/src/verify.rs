//! Offline verification of a ledger directory (`charter ledger verify DIR --service-cert FILE`).
//!
//! The caller reads the files; [`verify_ledger`] checks, with nothing but the service
//! certificate:
//!
//! - the chunk files are contiguous from seqno 1, and each complete chunk holds exactly the
//!   seqnos its name says;
//! - every frame is intact (CRC) and every entry decodes, carries its frame's seqno, and no view
//!   goes back;
//! - every signature transaction signs the Merkle root over all earlier entries, with the key of
//!   a node that the nodes table (replayed from the public domains) lists and whose certificate
//!   the service certificate signed.
//!
//! Private domains cannot be decrypted without the ledger secret, but each entry's Merkle leaf
//! covers every byte of it, so the signatures cover them too. Entries after the last signature
//! are checked for framing and decoding only and are reported as the unsigned tail; a torn
//! write at the end of the open chunk is reported, not failed.
//!
//! [`verify_ledger_with_snapshots`] also checks committed snapshot files
//! (`snapshot_<S>.committed`): each one's evidence receipt verifies against the service
//! certificate and binds the snapshot's digest, and the Merkle root over its leaves is the one
//! signed at S. Where the chunk files cover S, the replay must agree with the snapshot: the same
//! Merkle root over seqnos 1 to S, public maps, view history, signature records and
//! configuration changes. A ledger whose chunks start after seqno 1 (a node that started from
//! a snapshot) is verified from the oldest committed snapshot at or after its start: entries
//! up to that snapshot must have the leaves it records.

use std::collections::BTreeMap;
use std::fmt;

use charter_crypto::{Certificate, VerifyingKey};
use charter_kv::WriteSet;

use crate::frame::{parse_frames, ChunkName, FrameError, FrameRef};
use crate::merkle::MerkleTree;
use crate::snapshot::{verify_committed_snapshot, view_at, VerifiedSnapshot};
use crate::tables::{NODES_MAP, SIGNATURES_MAP, SIGNATURE_KEY};
use crate::{decode_entry, Digest, EntryKind, NodeInfo, SignatureRecord, TxId};

/// One file of a ledger directory, read by the caller.
#[derive(Clone, PartialEq, Eq)]
pub struct LedgerFile {
    /// The file's name within the directory (`ledger_1-10.committed`, `ledger_11`, ...).
    pub name: String,
    /// Its contents.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for LedgerFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LedgerFile({}, {} bytes)", self.name, self.bytes.len())
    }
}

/// What a successful verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifySummary {
    /// Entries of the chunk files verified, of every kind.
    pub transactions: u64,
    /// Signature transactions verified.
    pub signatures: u64,
    /// TxID of the last signature transaction.
    pub last_signed: Option<TxId>,
    /// Entries after the last signature, which no signature covers yet.
    pub unsigned_tail: u64,
    /// File and byte offset where a torn write cut the open chunk short, if one did.
    pub torn_tail: Option<(String, u64)>,
    /// Chunk files verified (files with other names are ignored).
    pub files: usize,
    /// Committed snapshot files verified.
    pub snapshots: usize,
    /// The snapshot the replay started from, when the chunk files start after seqno 1.
    pub started_from: Option<u64>,
}

impl fmt::Display for VerifySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} transactions, {} signatures, ",
            self.transactions, self.signatures
        )?;
        match self.last_signed {
            Some(tx_id) => write!(f, "last signed TxID {tx_id}")?,
            None => write!(f, "no signed TxID")?,
        }
        if self.unsigned_tail > 0 {
            write!(f, ", unsigned tail {}", self.unsigned_tail)?;
        }
        if let Some((file, offset)) = &self.torn_tail {
            write!(f, ", torn tail in {file} at byte {offset}")?;
        }
        if self.snapshots > 0 {
            write!(f, ", {} committed snapshots", self.snapshots)?;
        }
        if let Some(seqno) = self.started_from {
            write!(f, ", verified from the snapshot at seqno {seqno}")?;
        }
        Ok(())
    }
}

/// Where and why verification failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyFailure {
    /// The TxID of the offending entry, when its header could be read.
    pub tx_id: Option<TxId>,
    /// The seqno of the offending entry, when known.
    pub seqno: Option<u64>,
    /// The file (empty when no file is to blame).
    pub file: String,
    /// Byte offset in `file` of the offending frame.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ledger verification failed")?;
        match (self.tx_id, self.seqno) {
            (Some(tx_id), _) => write!(f, " at TxID {tx_id}")?,
            (None, Some(seqno)) => write!(f, " at seqno {seqno}")?,
            (None, None) => {}
        }
        if !self.file.is_empty() {
            write!(f, " ({}, byte {})", self.file, self.offset)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for VerifyFailure {}

/// Verifies a ledger's chunk files against the service certificate; see the module
/// documentation for what is checked.
///
/// Files whose names are not chunk names are ignored; the rest may come in any order.
///
/// # Errors
/// A [`VerifyFailure`] naming the first problem in seqno order: its file, the offset of its
/// frame, its seqno and TxID when known, and the reason.
pub fn verify_ledger(
    files: &[LedgerFile],
    service_cert: &Certificate,
) -> Result<VerifySummary, VerifyFailure> {
    verify_ledger_with_snapshots(files, &[], service_cert)
}

/// A failure that concerns a whole file (a snapshot), not a frame.
fn file_failure(file: &str, seqno: Option<u64>, reason: String) -> VerifyFailure {
    VerifyFailure {
        tx_id: None,
        seqno,
        file: file.to_owned(),
        offset: 0,
        reason,
    }
}

/// The seqno a committed snapshot file name (`snapshot_<S>.committed`) names.
fn committed_snapshot_seqno(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot_")?.strip_suffix(".committed")?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Verifies a ledger's chunk files and committed snapshot files against the service
/// certificate; see the module documentation for what is checked.
///
/// Snapshot files whose names are not `snapshot_<S>.committed` are ignored.
///
/// # Errors
/// As [`verify_ledger`]; a snapshot that does not verify, or disagrees with the replay, is
/// named by its file.
pub fn verify_ledger_with_snapshots(
    files: &[LedgerFile],
    snapshot_files: &[LedgerFile],
    service_cert: &Certificate,
) -> Result<VerifySummary, VerifyFailure> {
    verify_recovered_ledger(files, snapshot_files, service_cert, &[])
}

/// Like [`verify_ledger_with_snapshots`] for the ledger of a recovered service: node
/// certificates endorsed by the current service certificate or by one of the `previous`
/// service identities it recovered (the old ledger's nodes) are accepted.
///
/// # Errors
/// As [`verify_ledger_with_snapshots`].
pub fn verify_recovered_ledger(
    files: &[LedgerFile],
    snapshot_files: &[LedgerFile],
    service_cert: &Certificate,
    previous: &[Certificate],
) -> Result<VerifySummary, VerifyFailure> {
    let mut snapshots: BTreeMap<u64, (&str, VerifiedSnapshot<'_>)> = BTreeMap::new();
    for file in snapshot_files {
        let Some(seqno) = committed_snapshot_seqno(&file.name) else {
            continue;
        };
        let verified = verify_committed_snapshot(&file.bytes, service_cert).map_err(|error| {
            file_failure(
                &file.name,
                Some(seqno),
                format!("invalid snapshot: {error}"),
            )
        })?;
        if verified.snapshot.seqno != seqno {
            let reason = format!(
                "the file holds the snapshot at seqno {}",
                verified.snapshot.seqno
            );
            return Err(file_failure(&file.name, Some(seqno), reason));
        }
        snapshots.insert(seqno, (file.name.as_str(), verified));
    }
    let mut chunks: Vec<(ChunkName, &LedgerFile)> = files
        .iter()
        .filter_map(|file| ChunkName::parse(&file.name).map(|name| (name, file)))
        .collect();
    if chunks.is_empty() {
        return Err(VerifyFailure {
            tx_id: None,
            seqno: None,
            file: String::new(),
            offset: 0,
            reason: "no ledger files".to_owned(),
        });
    }
    chunks.sort_by_key(|(name, _)| name.first);
    let service_key = service_cert.public_key().map_err(|error| VerifyFailure {
        tx_id: None,
        seqno: None,
        file: String::new(),
        offset: 0,
        reason: format!("service certificate: {error}"),
    })?;
    let mut verifier = Verifier::new(service_key);
    for cert in previous {
        verifier
            .previous_service_keys
            .push(cert.public_key().map_err(|error| VerifyFailure {
                tx_id: None,
                seqno: None,
                file: String::new(),
                offset: 0,
                reason: format!("previous service certificate: {error}"),
            })?);
    }
    let first = chunks[0].0.first;
    let mut started_from = None;
    if first > 1 {
        // The oldest snapshot at or after the ledger's start checks the most entries.
        let Some((seqno, (_, base))) = snapshots.range(first - 1..).next() else {
            let reason = format!(
                "the ledger starts at seqno {first} instead of 1, and no committed snapshot \
                 covers the seqnos before it"
            );
            return Err(fail_at(Some(first), &chunks[0].1.name, 0, reason));
        };
        verifier.start_from(base, first);
        started_from = Some(*seqno);
    }
    // The replay compares itself with every snapshot it passes.
    for (seqno, (name, verified)) in &snapshots {
        if *seqno > verifier.base_seqno {
            verifier.expect_snapshot(name, verified);
        }
    }
    let last = chunks.len() - 1;
    for (index, (name, file)) in chunks.iter().enumerate() {
        verifier.verify_file(name, file, index == last)?;
    }
    if verifier.next <= verifier.base_seqno {
        let reason = format!(
            "the ledger ends at seqno {}, before the snapshot at {} it is verified from",
            verifier.next - 1,
            verifier.base_seqno
        );
        return Err(fail_at(None, &chunks[last].1.name, 0, reason));
    }
    assert!(verifier.unsigned_tail <= verifier.entries);
    Ok(VerifySummary {
        transactions: verifier.entries,
        signatures: verifier.signatures,
        last_signed: verifier.last_signed,
        unsigned_tail: verifier.unsigned_tail,
        torn_tail: verifier.torn_tail,
        files: chunks.len(),
        snapshots: snapshots.len(),
        started_from,
    })
}

/// What the replay must have reached at a snapshot's seqno.
struct SnapshotCheck {
    file: String,
    root: Digest,
    public: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    views: Vec<(u64, u64)>,
    records: BTreeMap<u64, SignatureRecord>,
    conf_changes: Vec<(u64, Vec<u8>)>,
}

/// The public maps of a snapshot as plain maps.
fn public_maps(snapshot: &VerifiedSnapshot<'_>) -> BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>> {
    let maps = snapshot.snapshot.public.maps.iter().map(|(name, entries)| {
        let values = entries
            .iter()
            .filter_map(|(key, value)| Some((key.clone(), value.clone()?)));
        (name.clone(), values.collect())
    });
    maps.collect()
}

/// Where an entry is.
#[derive(Clone, Copy, Debug)]
struct Location<'a> {
    tx_id: TxId,
    file: &'a str,
    offset: u64,
}

impl Location<'_> {
    fn fail(&self, reason: String) -> VerifyFailure {
        VerifyFailure {
            tx_id: Some(self.tx_id),
            seqno: Some(self.tx_id.seqno),
            file: self.file.to_owned(),
            offset: self.offset,
            reason,
        }
    }
}

/// A failure before the entry's TxID is known.
fn fail_at(seqno: Option<u64>, file: &str, offset: u64, reason: String) -> VerifyFailure {
    VerifyFailure {
        tx_id: None,
        seqno,
        file: file.to_owned(),
        offset,
        reason,
    }
}

/// The state of a replay, entry by entry, in seqno order.
struct Verifier<'a> {
    service_key: VerifyingKey,
    /// Keys of service identities the current one recovered from.
    previous_service_keys: Vec<VerifyingKey>,
    /// Leaves of every entry so far; leaf `i` is seqno `i + 1`.
    tree: MerkleTree,
    /// Highest view so far.
    view: u64,
    /// The nodes table: node ID to JSON [`NodeInfo`], as of the current entry.
    nodes: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Node certificates (PEM) already found endorsed by the service, with their keys, so that
    /// each is checked once.
    endorsed: BTreeMap<String, VerifyingKey>,
    signatures: u64,
    last_signed: Option<TxId>,
    unsigned_tail: u64,
    /// The first entry that no verified root covers yet.
    uncovered_first: Option<Location<'a>>,
    /// The last entry replayed.
    previous: Option<Location<'a>>,
    torn_tail: Option<(String, u64)>,
    /// The seqno the next frame must carry.
    next: u64,
    /// Entries of the chunk files verified.
    entries: u64,
    /// The snapshot the replay started from (0: none) and its leaves, which the entries the
    /// files hold up to it must match.
    base_seqno: u64,
    base_leaves: Vec<Digest>,
    base_views: Vec<(u64, u64)>,
    /// Replayed state, kept only while a snapshot lies ahead to compare it with.
    track: bool,
    public: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    views: Vec<(u64, u64)>,
    records: BTreeMap<u64, SignatureRecord>,
    conf_changes: Vec<(u64, Vec<u8>)>,
    /// Snapshots to compare with the replay, by seqno.
    checks: BTreeMap<u64, SnapshotCheck>,
}

impl<'a> Verifier<'a> {
    fn new(service_key: VerifyingKey) -> Verifier<'a> {
        Verifier {
            service_key,
            previous_service_keys: Vec::new(),
            tree: MerkleTree::new(),
            view: 0,
            nodes: BTreeMap::new(),
            endorsed: BTreeMap::new(),
            signatures: 0,
            last_signed: None,
            unsigned_tail: 0,
            uncovered_first: None,
            previous: None,
            torn_tail: None,
            next: 1,
            entries: 0,
            base_seqno: 0,
            base_leaves: Vec::new(),
            base_views: Vec::new(),
            track: false,
            public: BTreeMap::new(),
            views: Vec::new(),
            records: BTreeMap::new(),
            conf_changes: Vec::new(),
            checks: BTreeMap::new(),
        }
    }

    /// Starts the replay from a verified snapshot, for chunk files that begin at `first`.
    fn start_from(&mut self, base: &VerifiedSnapshot<'_>, first: u64) {
        let snapshot = &base.snapshot;
        assert!(first >= 1 && first <= snapshot.seqno + 1);
        self.tree = base.tree.clone();
        self.view = snapshot.view;
        self.nodes = snapshot
            .public
            .maps
            .get(NODES_MAP)
            .map(|entries| {
                let present = entries
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.clone()?)));
                present.collect()
            })
            .unwrap_or_default();
        self.last_signed = Some(TxId::new(snapshot.view, snapshot.seqno));
        self.next = first;
        self.base_seqno = snapshot.seqno;
        self.base_leaves = snapshot.leaves.iter().map(|leaf| leaf.leaf).collect();
        self.base_views = snapshot.views.clone();
        self.public = public_maps(base);
        self.views = snapshot.views.clone();
        self.records = snapshot.signatures.clone();
        self.conf_changes = snapshot.conf_changes.clone();
    }

    /// Remembers a snapshot to compare the replay with at its seqno.
    fn expect_snapshot(&mut self, file: &str, verified: &VerifiedSnapshot<'_>) {
        let snapshot = &verified.snapshot;
        let Some(root) = verified.tree.root() else {
            return;
        };
        self.track = true;
        self.checks.insert(
            snapshot.seqno,
            SnapshotCheck {
                file: file.to_owned(),
                root,
                public: public_maps(verified),
                views: snapshot.views.clone(),
                records: snapshot.signatures.clone(),
                conf_changes: snapshot.conf_changes.clone(),
            },
        );
    }

    /// The seqno the next entry must carry.
    fn next_seqno(&self) -> u64 {
        self.next
    }

    /// Checks an entry the snapshot the replay started from already covers: its leaf must be
    /// the one the snapshot records.
    fn verify_covered_entry(
        &mut self,
        file: &'a LedgerFile,
        frame: &FrameRef<'_>,
    ) -> Result<(), VerifyFailure> {
        let seqno = frame.seqno;
        let entry = decode_entry(frame.payload).map_err(|error| {
            fail_at(
                Some(seqno),
                &file.name,
                frame.offset,
                format!("undecodable entry: {error}"),
            )
        })?;
        let location = Location {
            tx_id: entry.tx_id,
            file: &file.name,
            offset: frame.offset,
        };
        if entry.tx_id.seqno != seqno || view_at(&self.base_views, seqno) != Some(entry.tx_id.view)
        {
            return Err(location.fail(format!(
                "entry carries TxID {} where the snapshot at {} records seqno {seqno} in view {:?}",
                entry.tx_id,
                self.base_seqno,
                view_at(&self.base_views, seqno)
            )));
        }
        // Seqnos up to the base are below `base_leaves.len()`, which equals the base seqno.
        if self.base_leaves[(seqno - 1) as usize] != entry.leaf() {
            return Err(location.fail(format!(
                "entry differs from the one the snapshot at {} records (Merkle leaf mismatch)",
                self.base_seqno
            )));
        }
        self.next += 1;
        self.entries += 1;
        Ok(())
    }

    /// Compares the replay, which just reached `seqno`, with the snapshot taken there.
    fn compare_snapshot(
        &mut self,
        seqno: u64,
        location: &Location<'a>,
    ) -> Result<(), VerifyFailure> {
        let Some(check) = self.checks.remove(&seqno) else {
            return Ok(());
        };
        let differs = |what: String| VerifyFailure {
            tx_id: Some(location.tx_id),
            seqno: Some(seqno),
            file: check.file.clone(),
            offset: 0,
            reason: format!("snapshot disagrees with the ledger at seqno {seqno}: {what}"),
        };
        if self.tree.root() != Some(check.root) {
            return Err(differs(format!("Merkle root over seqnos 1-{seqno}")));
        }
        if self.public != check.public {
            let names: std::collections::BTreeSet<&String> =
                self.public.keys().chain(check.public.keys()).collect();
            let name = names
                .into_iter()
                .find(|name| self.public.get(*name) != check.public.get(*name))
                .cloned()
                .unwrap_or_default();
            return Err(differs(format!("public map {name}")));
        }
        if self.views != check.views {
            return Err(differs("view history".to_owned()));
        }
        if self.records != check.records {
            return Err(differs("signature records".to_owned()));
        }
        if self.conf_changes != check.conf_changes {
            return Err(differs("configuration changes".to_owned()));
        }
        self.track = !self.checks.is_empty();
        Ok(())
    }

    fn verify_file(
        &mut self,
        name: &ChunkName,
        file: &'a LedgerFile,
        is_last: bool,
    ) -> Result<(), VerifyFailure> {
        let expected = self.next_seqno();
        if name.first != expected {
            let reason = if expected == 1 {
                format!(
                    "the ledger starts at seqno {} instead of 1 (a chunk is missing)",
                    name.first
                )
            } else {
                format!(
                    "chunk starts at seqno {} but seqno {expected} comes next (chunks missing, \
                     duplicated or overlapping)",
                    name.first
                )
            };
            return Err(fail_at(Some(expected), &file.name, 0, reason));
        }
        let (frames, error) = parse_frames(&file.bytes, Some(name.first));
        for frame in &frames {
            self.verify_frame(name, file, frame)?;
        }
        let next = self.next_seqno();
        if let Some(error) = error {
            match error {
                FrameError::TornTail { offset, .. } if is_last && !name.is_complete() => {
                    self.torn_tail = Some((file.name.clone(), offset));
                }
                FrameError::TornTail { offset, .. } => {
                    let reason = if name.is_complete() {
                        "torn frame in a complete chunk"
                    } else {
                        "torn frame in an open chunk that later chunks follow"
                    };
                    return Err(fail_at(Some(next), &file.name, offset, reason.to_owned()));
                }
                FrameError::Corrupt {
                    offset,
                    seqno,
                    reason,
                } => {
                    let reason = format!("corrupt frame: {reason}");
                    return Err(fail_at(seqno.or(Some(next)), &file.name, offset, reason));
                }
                FrameError::Gap {
                    offset,
                    expected,
                    found,
                } => {
                    let reason = format!("frame carries seqno {found} where {expected} comes next");
                    return Err(fail_at(Some(expected), &file.name, offset, reason));
                }
            }
        }
        if let Some(last) = name.last {
            let found = next - 1;
            if found != last {
                let reason = format!(
                    "complete chunk is named for seqnos {}-{last} but holds seqnos up to {found}",
                    name.first
                );
                let end = file.bytes.len() as u64;
                return Err(fail_at(Some(found + 1), &file.name, end, reason));
            }
        }
        Ok(())
    }

    fn verify_frame(
        &mut self,
        name: &ChunkName,
        file: &'a LedgerFile,
        frame: &FrameRef<'_>,
    ) -> Result<(), VerifyFailure> {
        let seqno = frame.seqno;
        // parse_frames checked the frames against the chunk's first seqno, which
        // verify_file checked against the replay.
        assert_eq!(seqno, self.next_seqno(), "frames are consecutive");
        if seqno <= self.base_seqno {
            return self.verify_covered_entry(file, frame);
        }
        if name.last.is_some_and(|last| seqno > last) {
            let reason = format!(
                "complete chunk is named for seqnos {}-{} but holds seqno {seqno}",
                name.first,
                name.last.unwrap_or_default()
            );
            return Err(fail_at(Some(seqno), &file.name, frame.offset, reason));
        }
        let entry = decode_entry(frame.payload).map_err(|error| {
            fail_at(
                Some(seqno),
                &file.name,
                frame.offset,
                format!("undecodable entry: {error}"),
            )
        })?;
        let location = Location {
            tx_id: entry.tx_id,
            file: &file.name,
            offset: frame.offset,
        };
        if entry.tx_id.seqno != seqno {
            return Err(location.fail(format!(
                "entry carries TxID {} in a frame for seqno {seqno}",
                entry.tx_id
            )));
        }
        if entry.tx_id.view < self.view {
            return Err(location.fail(format!(
                "view goes back from {} to {}",
                self.view, entry.tx_id.view
            )));
        }
        self.view = entry.tx_id.view;
        if self.uncovered_first.is_none() {
            self.uncovered_first = Some(location);
        }
        // A configuration change's public domain is Raft's protobuf, not a write set.
        let write_set = if entry.public.is_empty() || entry.kind == EntryKind::ConfChange {
            None
        } else {
            let write_set = WriteSet::decode(entry.public)
                .map_err(|error| location.fail(format!("undecodable public write set: {error}")))?;
            Some(write_set)
        };
        if let Some(nodes) = write_set.as_ref().and_then(|ws| ws.maps.get(NODES_MAP)) {
            for (node_id, info) in nodes {
                match info {
                    Some(info) => self.nodes.insert(node_id.clone(), info.clone()),
                    None => self.nodes.remove(node_id),
                };
            }
        }
        if self.track {
            self.track_entry(&entry, write_set.as_ref());
        }
        if entry.kind == EntryKind::Signature {
            self.verify_signature(&location, write_set.as_ref())?;
            self.signatures += 1;
            self.last_signed = Some(entry.tx_id);
            self.unsigned_tail = 0;
            // The signature's own leaf is covered only by the next signature.
            self.uncovered_first = Some(location);
        } else {
            self.unsigned_tail += 1;
        }
        self.tree.append(entry.leaf());
        self.previous = Some(location);
        assert_eq!(self.tree.len(), seqno);
        self.next += 1;
        self.entries += 1;
        self.compare_snapshot(seqno, &location)
    }

    /// Applies an entry to the replayed state that snapshots are compared with.
    fn track_entry(&mut self, entry: &crate::Entry<'_>, write_set: Option<&WriteSet>) {
        let tx_id = entry.tx_id;
        if self.views.last().map(|(view, _)| *view) != Some(tx_id.view) {
            self.views.push((tx_id.view, tx_id.seqno));
        }
        if entry.kind == EntryKind::ConfChange {
            self.conf_changes.push((tx_id.seqno, entry.public.to_vec()));
            return;
        }
        let Some(write_set) = write_set else {
            return;
        };
        let recovered_at = write_set
            .get(crate::tables::RAFT_MAP, crate::tables::RECOVERED_AT_KEY)
            .flatten()
            .and_then(|bytes| std::str::from_utf8(bytes).ok()?.parse::<u64>().ok());
        if let Some(end) = recovered_at {
            // A recovered service starts a new configuration after the old ledger.
            self.conf_changes.retain(|(seqno, _)| *seqno > end);
        }
        for (name, entries) in &write_set.maps {
            let map = self.public.entry(name.clone()).or_default();
            for (key, value) in entries {
                match value {
                    Some(value) => map.insert(key.clone(), value.clone()),
                    None => map.remove(key),
                };
            }
            if map.is_empty() {
                self.public.remove(name);
            }
        }
        if entry.kind == EntryKind::Signature {
            let record = write_set
                .get(SIGNATURES_MAP, SIGNATURE_KEY)
                .flatten()
                .and_then(|bytes| serde_json::from_slice::<SignatureRecord>(bytes).ok());
            if let Some(record) = record {
                self.records.insert(tx_id.seqno, record);
            }
        }
    }

    /// Checks a signature transaction, before its own leaf joins the tree.
    fn verify_signature(
        &mut self,
        location: &Location<'a>,
        write_set: Option<&WriteSet>,
    ) -> Result<(), VerifyFailure> {
        let tx_id = location.tx_id;
        let record_bytes = write_set
            .and_then(|ws| ws.get(SIGNATURES_MAP, SIGNATURE_KEY))
            .flatten()
            .ok_or_else(|| {
                location.fail("signature transaction without a signature record".into())
            })?;
        let record: SignatureRecord = serde_json::from_slice(record_bytes)
            .map_err(|error| location.fail(format!("unreadable signature record: {error}")))?;
        if record.view != tx_id.view || record.seqno != tx_id.seqno {
            return Err(location.fail(format!(
                "signature record is for TxID {}.{}",
                record.view, record.seqno
            )));
        }
        assert_eq!(self.tree.len() + 1, tx_id.seqno);
        let Some(expected_root) = self.tree.root_at(self.tree.len()) else {
            return Err(location.fail("signature with no earlier transaction to sign".into()));
        };
        let root = record
            .root_digest()
            .map_err(|error| location.fail(format!("signature record: {error}")))?;
        if root != expected_root {
            // The root covers the entries from the first uncovered one to the previous one; one
            // of them, or the record itself, was rewritten (frames with matching CRCs).
            let first = self.uncovered_first.unwrap_or(*location);
            let previous = self.previous.unwrap_or(*location);
            return Err(first.fail(format!(
                "Merkle root mismatch: an entry between TxID {} and {} was altered, or the \
                 signature record at TxID {tx_id} was rewritten",
                first.tx_id, previous.tx_id
            )));
        }
        let key = self.signer_key(location, &record.node_id)?;
        let signature = record
            .signature_der()
            .map_err(|error| location.fail(format!("signature record: {error}")))?;
        key.verify_digest(&root, &signature).map_err(|_| {
            location.fail(format!(
                "signature of node {} over the Merkle root does not verify",
                record.node_id
            ))
        })
    }

    /// The key of a signing node: listed in the nodes table, with a certificate the service
    /// signed, whose key hashes to its ID.
    fn signer_key(
        &mut self,
        location: &Location<'a>,
        node_id: &str,
    ) -> Result<VerifyingKey, VerifyFailure> {
        let info = self.nodes.get(node_id.as_bytes()).ok_or_else(|| {
            location.fail(format!("signing node {node_id} is not in the nodes table"))
        })?;
        let info: NodeInfo = serde_json::from_slice(info).map_err(|error| {
            location.fail(format!(
                "unreadable nodes table entry for {node_id}: {error}"
            ))
        })?;
        let key = match self.endorsed.get(&info.cert) {
            Some(key) => *key,
            None => {
                let cert = Certificate::from_pem(&info.cert).map_err(|error| {
                    location.fail(format!("certificate of node {node_id}: {error}"))
                })?;
                let endorsed = std::iter::once(&self.service_key)
                    .chain(&self.previous_service_keys)
                    .any(|key| cert.verify_signed_by(key).is_ok());
                endorsed.then_some(()).ok_or(()).map_err(|_| {
                    location.fail(format!(
                        "certificate of node {node_id} is not endorsed by the service certificate"
                    ))
                })?;
                let key = cert.public_key().map_err(|error| {
                    location.fail(format!("certificate of node {node_id}: {error}"))
                })?;
                self.endorsed.insert(info.cert, key);
                key
            }
        };
        if key.id_hex() != node_id {
            return Err(location.fail(format!(
                "node ID {node_id} is not the hash of its certificate's public key"
            )));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_frame;
    use crate::tables::{SERVICE_KEY, SERVICE_MAP};
    use crate::{encode_entry, encode_noop, EntryParts, NodeStatus, ServiceInfo, ServiceStatus};
    use base64::Engine as _;
    use charter_crypto::{CertificateSpec, LedgerSecret, SigningKey, Validity};

    fn spec(name: &str, is_ca: bool) -> CertificateSpec<'_> {
        CertificateSpec {
            common_name: name,
            is_ca,
            subject_alt_names: &[],
            validity: Validity {
                not_before_unix: 1_700_000_000,
                days: 365,
            },
        }
    }

    struct Identities {
        service_key: SigningKey,
        service_cert: Certificate,
        node_key: SigningKey,
        node_cert: Certificate,
    }

    fn identities() -> Identities {
        let service_key = SigningKey::from_seed(&[1; 32]).unwrap();
        let service_cert = Certificate::self_signed(&service_key, &spec("service", true)).unwrap();
        let node_key = SigningKey::from_seed(&[2; 32]).unwrap();
        let node_cert = Certificate::issue(
            &node_key.verifying_key(),
            &spec("node", false),
            &service_key,
            &service_cert,
        )
        .unwrap();
        Identities {
            service_key,
            service_cert,
            node_key,
            node_cert,
        }
    }

    /// Builds entries the way the core does, keeping the Merkle tree alongside.
    struct Builder {
        secret: LedgerSecret,
        tree: MerkleTree,
        entries: Vec<Vec<u8>>,
        view: u64,
    }

    impl Builder {
        fn new() -> Builder {
            Builder {
                secret: LedgerSecret::from_bytes([7; 32]),
                tree: MerkleTree::new(),
                entries: Vec::new(),
                view: 1,
            }
        }

        fn push(&mut self, kind: EntryKind, public: &WriteSet, private: &WriteSet) {
            let public = if public.is_empty() {
                Vec::new()
            } else {
                public.to_bytes()
            };
            let private = if private.is_empty() {
                Vec::new()
            } else {
                private.to_bytes()
            };
            let tx_id = TxId::new(self.view, self.entries.len() as u64 + 1);
            let bytes = encode_entry(
                &EntryParts {
                    kind,
                    tx_id,
                    claims_digest: [0; 32],
                    public: &public,
                    private_plain: &private,
                },
                &self.secret,
            )
            .unwrap();
            self.tree.append(decode_entry(&bytes).unwrap().leaf());
            self.entries.push(bytes);
        }

        fn genesis(&mut self, node_cert: &Certificate, service_cert: &Certificate) {
            let node_id = node_cert.public_key().unwrap().id_hex();
            let info = NodeInfo {
                cert: node_cert.to_pem(),
                status: NodeStatus::Trusted,
                rpc_address: "127.0.0.1:8000".into(),
                node_address: None,
                evidence: None,
            };
            let service = ServiceInfo {
                cert: service_cert.to_pem(),
                status: ServiceStatus::Open,
            };
            let mut public = WriteSet::new();
            public.put(
                NODES_MAP,
                node_id.as_bytes(),
                &serde_json::to_vec(&info).unwrap(),
            );
            public.put(
                SERVICE_MAP,
                SERVICE_KEY,
                &serde_json::to_vec(&service).unwrap(),
            );
            self.push(EntryKind::Transaction, &public, &WriteSet::new());
        }

        fn transaction(&mut self, label: &str) {
            let mut public = WriteSet::new();
            public.put("public:app.log", label.as_bytes(), b"public value");
            let mut private = WriteSet::new();
            private.put("app.secrets", label.as_bytes(), b"SECRET-MARKER");
            self.push(EntryKind::Transaction, &public, &private);
        }

        fn noop(&mut self) {
            let tx_id = TxId::new(self.view, self.entries.len() as u64 + 1);
            let bytes = encode_noop(tx_id);
            self.tree.append(decode_entry(&bytes).unwrap().leaf());
            self.entries.push(bytes);
        }

        fn record(&self, key: &SigningKey, root: [u8; 32]) -> SignatureRecord {
            let signature = key.sign_digest(&root).unwrap();
            SignatureRecord {
                view: self.view,
                seqno: self.entries.len() as u64 + 1,
                root: hex::encode(root),
                node_id: key.verifying_key().id_hex(),
                signature: base64::engine::general_purpose::STANDARD.encode(signature),
            }
        }

        fn signature_with(&mut self, record: &SignatureRecord) {
            let mut public = WriteSet::new();
            public.put(
                SIGNATURES_MAP,
                SIGNATURE_KEY,
                &serde_json::to_vec(record).unwrap(),
            );
            self.push(EntryKind::Signature, &public, &WriteSet::new());
        }

        fn signature(&mut self, key: &SigningKey) {
            let root = self.tree.root().unwrap();
            let record = self.record(key, root);
            self.signature_with(&record);
        }

        /// Frames entries `[from, to)` (0-based) into one file's bytes.
        fn file(&self, from: usize, to: usize) -> Vec<u8> {
            let mut bytes = Vec::new();
            for (index, entry) in self.entries[from..to].iter().enumerate() {
                encode_frame((from + index + 1) as u64, entry, &mut bytes);
            }
            bytes
        }
    }

    /// Seqnos 1-5 (signature at 5) in `ledger_1-5.committed`; seqnos 6-10 (signature at 8 in
    /// view 2, unsigned 9-10) in the open `ledger_6`.
    fn standard(ids: &Identities) -> (Builder, Vec<LedgerFile>) {
        let mut builder = Builder::new();
        builder.genesis(&ids.node_cert, &ids.service_cert);
        builder.transaction("a");
        builder.transaction("b");
        builder.transaction("c");
        builder.signature(&ids.node_key);
        builder.view = 2;
        builder.noop();
        builder.transaction("d");
        builder.signature(&ids.node_key);
        builder.transaction("e");
        builder.transaction("f");
        let files = vec![
            LedgerFile {
                name: "ledger_1-5.committed".into(),
                bytes: builder.file(0, 5),
            },
            LedgerFile {
                name: "ledger_6".into(),
                bytes: builder.file(5, 10),
            },
        ];
        (builder, files)
    }

    /// Byte positions to damage in a file: every byte in optimized builds; in debug builds
    /// (where each verification costs tens of milliseconds of P-384) the first 24 bytes of
    /// every frame, its last byte, and every 7th byte in between.
    fn positions(len: usize, offsets: &[u64]) -> Vec<usize> {
        if !cfg!(debug_assertions) {
            return (0..len).collect();
        }
        (0..len)
            .filter(|&at| {
                let frame = offsets.iter().rposition(|&o| o as usize <= at).unwrap();
                let within = at - offsets[frame] as usize;
                let end = offsets.get(frame + 1).map_or(len, |&o| o as usize);
                within < 24 || at + 1 == end || at % 7 == 0
            })
            .collect()
    }

    fn frame_offsets(bytes: &[u8]) -> Vec<u64> {
        let (frames, error) = parse_frames(bytes, None);
        assert_eq!(error, None);
        frames.iter().map(|frame| frame.offset).collect()
    }

    #[test]
    fn a_good_ledger_verifies() {
        let ids = identities();
        let (_, files) = standard(&ids);
        let summary = verify_ledger(&files, &ids.service_cert).unwrap();
        assert_eq!(
            summary,
            VerifySummary {
                transactions: 10,
                signatures: 2,
                last_signed: Some(TxId::new(2, 8)),
                unsigned_tail: 2,
                torn_tail: None,
                files: 2,
                snapshots: 0,
                started_from: None,
            }
        );
        assert_eq!(
            summary.to_string(),
            "10 transactions, 2 signatures, last signed TxID 2.8, unsigned tail 2"
        );
        // Private data stays encrypted in the files.
        for file in &files {
            assert!(!file.bytes.windows(13).any(|w| w == b"SECRET-MARKER"));
        }
    }

    #[test]
    fn order_of_files_and_other_names_do_not_matter() {
        let ids = identities();
        let (_, mut files) = standard(&ids);
        files.reverse();
        files.push(LedgerFile {
            name: "ledger_1-5.committed.tmp".into(),
            bytes: b"junk".to_vec(),
        });
        files.push(LedgerFile {
            name: "snapshot_5".into(),
            bytes: b"junk".to_vec(),
        });
        let summary = verify_ledger(&files, &ids.service_cert).unwrap();
        assert_eq!(summary.transactions, 10);
        assert_eq!(summary.files, 2);
    }

    #[test]
    fn every_flipped_byte_is_caught_in_its_frame() {
        let ids = identities();
        let (_, files) = standard(&ids);
        for (file_index, file) in files.iter().enumerate() {
            let offsets = frame_offsets(&file.bytes);
            for byte in positions(file.bytes.len(), &offsets) {
                let mut damaged = files.clone();
                damaged[file_index].bytes[byte] ^= 0x04;
                let frame = offsets.iter().rposition(|&o| o as usize <= byte).unwrap();
                let frame_offset = offsets[frame];
                let within = byte - frame_offset as usize;
                match verify_ledger(&damaged, &ids.service_cert) {
                    Err(failure) => {
                        assert_eq!(failure.file, file.name, "{} byte {byte}", file.name);
                        assert_eq!(failure.offset, frame_offset, "{} byte {byte}", file.name);
                        let seqno = if file_index == 0 { 1 } else { 6 } + frame as u64;
                        assert_eq!(failure.seqno, Some(seqno), "{} byte {byte}", file.name);
                    }
                    // Only a longer length field of a frame of the open chunk reads as a torn
                    // tail: indistinguishable from a torn write.
                    Ok(summary) => {
                        assert!(file_index == 1 && within < 4, "{} byte {byte}", file.name);
                        assert_eq!(
                            summary.torn_tail,
                            Some((file.name.clone(), frame_offset)),
                            "byte {byte}"
                        );
                        assert_eq!(summary.transactions, 5 + frame as u64);
                    }
                }
            }
        }
    }

    #[test]
    fn a_truncated_open_chunk_reports_a_torn_tail() {
        let ids = identities();
        let (_, files) = standard(&ids);
        let offsets = frame_offsets(&files[1].bytes);
        for cut in positions(files[1].bytes.len(), &offsets) {
            let mut cut_files = files.clone();
            cut_files[1].bytes.truncate(cut);
            let summary = verify_ledger(&cut_files, &ids.service_cert).unwrap();
            let complete = offsets
                .iter()
                .enumerate()
                .filter(|&(i, _)| {
                    offsets
                        .get(i + 1)
                        .map_or(files[1].bytes.len(), |&o| o as usize)
                        <= cut
                })
                .count() as u64;
            assert_eq!(summary.transactions, 5 + complete, "cut {cut}");
            if offsets.contains(&(cut as u64)) {
                assert_eq!(summary.torn_tail, None, "cut {cut}");
            } else {
                assert_eq!(
                    summary.torn_tail,
                    Some(("ledger_6".to_owned(), offsets[complete as usize])),
                    "cut {cut}"
                );
            }
            let signed = if complete >= 3 { 8 } else { 5 };
            assert_eq!(summary.last_signed.map(|t| t.seqno), Some(signed));
        }
        let mut torn = files.clone();
        let cut = offsets[3] as usize + 5;
        torn[1].bytes.truncate(cut);
        let summary = verify_ledger(&torn, &ids.service_cert).unwrap();
        assert_eq!(
            summary.to_string(),
            format!(
                "8 transactions, 2 signatures, last signed TxID 2.8, torn tail in ledger_6 at \
                 byte {}",
                offsets[3]
            )
        );
    }

    #[test]
    fn a_truncated_complete_chunk_fails() {
        let ids = identities();
        let (_, files) = standard(&ids);
        let offsets = frame_offsets(&files[0].bytes);
        let mut torn = files.clone();
        torn[0].bytes.truncate(offsets[4] as usize + 3);
        let failure = verify_ledger(&torn, &ids.service_cert).unwrap_err();
        assert_eq!(failure.file, "ledger_1-5.committed");
        assert_eq!(failure.offset, offsets[4]);
        assert_eq!(failure.seqno, Some(5));
        // Cut at a frame boundary: the name promises more.
        let mut short = files.clone();
        short[0].bytes.truncate(offsets[4] as usize);
        let failure = verify_ledger(&short, &ids.service_cert).unwrap_err();
        assert!(failure.reason.contains("named for seqnos 1-5"), "{failure}");
        // A torn open chunk followed by another chunk is not a tail.
        let (builder, _) = standard(&ids);
        let mut bytes = builder.file(5, 7);
        bytes.truncate(bytes.len() - 1);
        let middle = vec![
            files[0].clone(),
            LedgerFile {
                name: "ledger_6".into(),
                bytes,
            },
            LedgerFile {
                name: "ledger_8".into(),
                bytes: builder.file(7, 10),
            },
        ];
        let failure = verify_ledger(&middle, &ids.service_cert).unwrap_err();
        assert_eq!(failure.file, "ledger_6");
    }

    #[test]
    fn missing_overlapping_or_misnamed_chunks_fail() {
        let ids = identities();
        let (builder, files) = standard(&ids);
        let failure = verify_ledger(&files[1..], &ids.service_cert).unwrap_err();
        assert!(failure.reason.contains("instead of 1"), "{failure}");

        let mut overlapping = files.clone();
        overlapping.push(LedgerFile {
            name: "ledger_1".into(),
            bytes: builder.file(0, 5),
        });
        assert!(verify_ledger(&overlapping, &ids.service_cert).is_err());

        let mut misnamed = files.clone();
        misnamed[0].name = "ledger_1-4.committed".into();
        let failure = verify_ledger(&misnamed, &ids.service_cert).unwrap_err();
        assert_eq!(failure.seqno, Some(5));
        assert_eq!(failure.file, "ledger_1-4.committed");

        let mut gap = files.clone();
        gap[1].name = "ledger_7".into();
        let failure = verify_ledger(&gap, &ids.service_cert).unwrap_err();
        assert_eq!(failure.file, "ledger_7");

        let failure = verify_ledger(&[], &ids.service_cert).unwrap_err();
        assert_eq!(failure.reason, "no ledger files");
        assert_eq!(
            failure.to_string(),
            "ledger verification failed: no ledger files"
        );
        let only_junk = [LedgerFile {
            name: "README".into(),
            bytes: Vec::new(),
        }];
        assert!(verify_ledger(&only_junk, &ids.service_cert).is_err());
    }

    #[test]
    fn a_consistently_rewritten_signature_root_fails() {
        let ids = identities();
        let mut builder = Builder::new();
        builder.genesis(&ids.node_cert, &ids.service_cert);
        builder.transaction("a");
        builder.transaction("b");
        builder.signature(&ids.node_key);
        builder.transaction("c");
        // The attacker signs a root of their choosing with... the node's key is not theirs, so
        // the record keeps a valid-looking signature over the wrong root.
        let mut wrong_root = builder.tree.root().unwrap();
        wrong_root[0] ^= 1;
        let record = builder.record(&ids.node_key, wrong_root);
        builder.signature_with(&record);
        let files = [LedgerFile {
            name: "ledger_1".into(),
            bytes: builder.file(0, builder.entries.len()),
        }];
        let offsets = frame_offsets(&files[0].bytes);
        let failure = verify_ledger(&files, &ids.service_cert).unwrap_err();
        assert!(
            failure.reason.starts_with("Merkle root mismatch"),
            "{failure}"
        );
        // The range starts at the previous signature, whose leaf the first root did not cover.
        assert_eq!(failure.tx_id, Some(TxId::new(1, 4)));
        assert_eq!(failure.offset, offsets[3]);
        assert_eq!(
            failure.to_string(),
            format!(
                "ledger verification failed at TxID 1.4 (ledger_1, byte {}): Merkle root \
                 mismatch: an entry between TxID 1.4 and 1.5 was altered, or the signature \
                 record at TxID 1.6 was rewritten",
                offsets[3]
            )
        );
    }

    #[test]
    fn a_consistently_rewritten_transaction_fails_at_its_range() {
        let ids = identities();
        let (builder, files) = standard(&ids);
        // Rewrite seqno 3's public value and reframe it with a good CRC.
        let mut forged = Builder::new();
        forged.entries = builder.entries.clone();
        let mut public = WriteSet::new();
        public.put("public:app.log", b"b", b"forged value");
        let mut private = WriteSet::new();
        private.put("app.secrets", b"b", b"SECRET-MARKER");
        let bytes = encode_entry(
            &EntryParts {
                kind: EntryKind::Transaction,
                tx_id: TxId::new(1, 3),
                claims_digest: [0; 32],
                public: &public.to_bytes(),
                private_plain: &private.to_bytes(),
            },
            &forged.secret,
        )
        .unwrap();
        forged.entries[2] = bytes;
        let mut altered = files.clone();
        altered[0].bytes = forged.file(0, 5);
        let failure = verify_ledger(&altered, &ids.service_cert).unwrap_err();
        assert!(
            failure.reason.starts_with("Merkle root mismatch"),
            "{failure}"
        );
        assert_eq!(failure.tx_id, Some(TxId::new(1, 1)));
        assert_eq!(
            (failure.file.as_str(), failure.offset),
            ("ledger_1-5.committed", 0)
        );

        // In the second range: seqno 7, covered by the signature at 8, whose range starts at
        // the signature at 5.
        let mut forged = Builder::new();
        forged.entries = builder.entries.clone();
        forged.entries[6] = encode_entry(
            &EntryParts {
                kind: EntryKind::Transaction,
                tx_id: TxId::new(2, 7),
                claims_digest: [1; 32],
                public: &public.to_bytes(),
                private_plain: b"",
            },
            &forged.secret,
        )
        .unwrap();
        let mut altered = files.clone();
        altered[1].bytes = forged.file(5, 10);
        let failure = verify_ledger(&altered, &ids.service_cert).unwrap_err();
        assert!(
            failure.reason.starts_with("Merkle root mismatch"),
            "{failure}"
        );
        assert_eq!(failure.tx_id, Some(TxId::new(1, 5)));
        assert_eq!(failure.file, "ledger_1-5.committed");

        // In the unsigned tail nothing can tell.
        let mut forged = Builder::new();
        forged.entries = builder.entries.clone();
        forged.entries[9] = encode_entry(
            &EntryParts {
                kind: EntryKind::Transaction,
                tx_id: TxId::new(2, 10),
                claims_digest: [1; 32],
                public: b"",
                private_plain: b"",
            },
            &forged.secret,
        )
        .unwrap();
        let mut altered = files.clone();
        altered[1].bytes = forged.file(5, 10);
        assert_eq!(
            verify_ledger(&altered, &ids.service_cert)
                .unwrap()
                .unsigned_tail,
            2
        );
    }

    #[test]
    fn an_unendorsed_node_or_wrong_service_fails() {
        let ids = identities();
        let (_, files) = standard(&ids);
        let other_key = SigningKey::from_seed(&[3; 32]).unwrap();
        let other_service = Certificate::self_signed(&other_key, &spec("service", true)).unwrap();
        let failure = verify_ledger(&files, &other_service).unwrap_err();
        assert!(failure.reason.contains("not endorsed"), "{failure}");
        assert_eq!(failure.tx_id, Some(TxId::new(1, 5)));

        // A node whose certificate another key issued.
        let rogue = Certificate::issue(
            &ids.node_key.verifying_key(),
            &spec("node", false),
            &other_key,
            &other_service,
        )
        .unwrap();
        let mut builder = Builder::new();
        builder.genesis(&rogue, &ids.service_cert);
        builder.transaction("a");
        builder.signature(&ids.node_key);
        let files = [LedgerFile {
            name: "ledger_1".into(),
            bytes: builder.file(0, 3),
        }];
        let failure = verify_ledger(&files, &ids.service_cert).unwrap_err();
        assert!(failure.reason.contains("not endorsed"), "{failure}");
        assert_eq!(failure.seqno, Some(3));

        // The service certificate's key signing as a node it never listed.
        let mut builder = Builder::new();
        builder.genesis(&ids.node_cert, &ids.service_cert);
        builder.signature(&ids.service_key);
        let files = [LedgerFile {
            name: "ledger_1".into(),
            bytes: builder.file(0, 2),
        }];
        let failure = verify_ledger(&files, &ids.service_cert).unwrap_err();
        assert!(
            failure.reason.contains("not in the nodes table"),
            "{failure}"
        );
    }

    #[test]
    fn signature_checks() {
        let ids = identities();
        let imposter = SigningKey::from_seed(&[4; 32]).unwrap();

        // Signed by another key under the listed node's ID.
        let mut builder = Builder::new();
        builder.genesis(&ids.node_cert, &ids.service_cert);
        let root = builder.tree.root().unwrap();
        let mut record = builder.record(&imposter, root);
        record.node_id = ids.node_key.verifying_key().id_hex();
        builder.signature_with(&record);
        let files = [LedgerFile {
            name: "ledger_1".into(),
            bytes: builder.file(0, 2),
        }];
        let failure = verify_ledger(&files, &ids.service_cert).unwrap_err();
        assert!(failure.reason.contains("does not verify"), "{failure}");

        // A record for another TxID.
        let mut builder = Builder::new();
        builder.genesis(&ids.node_cert, &ids.service_cert);
        let root = builder.tree.root().unwrap();
        let mut record = builder.record(&ids.node_key, root);
        record.seqno = 9;
        builder.signature_with(&record);
        let files = [LedgerFile {
            name: "ledger_1".into(),
            bytes: builder.file(0, 2),
        }];
        let failure = verify_ledger(&files, &ids.service_cert).unwrap_err();
        assert!(
            failure.reason.contains("record is for TxID 1.9"),
            "{failure}"
        );

        // A signature entry without a record, and one at seqno 1.
        let mut builder = Builder::new();
        builder.push(EntryKind::Signature, &WriteSet::new(), &WriteSet::new());
        let files = [LedgerFile {
            name: "ledger_1".into(),
            bytes: builder.file(0, 1),
        }];
        let failure = verify_ledger(&files, &ids.service_cert).unwrap_err();
        assert!(
            failure.reason.contains("without a signature record"),
            "{failure}"
        );
        let mut builder = Builder::new();
        let record = builder.record(&ids.node_key, [0; 32]);
        builder.signature_with(&record);
        let files = [LedgerFile {
            name: "ledger_1".into(),
            bytes: builder.file(0, 1),
        }];
        let failure = verify_ledger(&files, &ids.service_cert).unwrap_err();
        assert!(
            failure.reason.contains("no earlier transaction"),
            "{failure}"
        );

        // A node removed from the table can no longer sign.
        let mut builder = Builder::new();
        builder.genesis(&ids.node_cert, &ids.service_cert);
        let mut public = WriteSet::new();
        public.remove(NODES_MAP, ids.node_key.verifying_key().id_hex().as_bytes());
        builder.push(EntryKind::Transaction, &public, &WriteSet::new());
        builder.signature(&ids.node_key);
        let files = [LedgerFile {
            name: "ledger_1".into(),
            bytes: builder.file(0, 3),
        }];
        let failure = verify_ledger(&files, &ids.service_cert).unwrap_err();
        assert!(
            failure.reason.contains("not in the nodes table"),
            "{failure}"
        );
    }

    #[test]
    fn entry_level_checks() {
        let ids = identities();
        // A view that goes back.
        let mut builder = Builder::new();
        builder.view = 3;
        builder.genesis(&ids.node_cert, &ids.service_cert);
        builder.view = 2;
        builder.transaction("a");
        let files = [LedgerFile {
            name: "ledger_1".into(),
            bytes: builder.file(0, 2),
        }];
        let failure = verify_ledger(&files, &ids.service_cert).unwrap_err();
        assert!(failure.reason.contains("view goes back"), "{failure}");
        assert_eq!(failure.tx_id, Some(TxId::new(2, 2)));

        // An entry whose TxID disagrees with its frame.
        let mut builder = Builder::new();
        builder.genesis(&ids.node_cert, &ids.service_cert);
        let mut bytes = Vec::new();
        encode_frame(1, &builder.entries[0], &mut bytes);
        encode_frame(2, &builder.entries[0], &mut bytes);
        let files = [LedgerFile {
            name: "ledger_1".into(),
            bytes,
        }];
        let failure = verify_ledger(&files, &ids.service_cert).unwrap_err();
        assert_eq!(failure.seqno, Some(1));
        assert_eq!(failure.tx_id, Some(TxId::new(1, 1)));
        assert!(failure.reason.contains("frame for seqno 2"), "{failure}");

        // An undecodable entry and an undecodable public write set, with good CRCs.
        let mut bytes = Vec::new();
        encode_frame(1, b"not an entry", &mut bytes);
        let files = [LedgerFile {
            name: "ledger_1".into(),
            bytes,
        }];
        let failure = verify_ledger(&files, &ids.service_cert).unwrap_err();
        assert!(failure.reason.contains("undecodable entry"), "{failure}");
        assert_eq!(
            failure.to_string(),
            format!(
                "ledger verification failed at seqno 1 (ledger_1, byte 0): {}",
                failure.reason
            )
        );
        let entry = encode_entry(
            &EntryParts {
                kind: EntryKind::Transaction,
                tx_id: TxId::new(1, 1),
                claims_digest: [0; 32],
                public: b"garbage",
                private_plain: b"",
            },
            &LedgerSecret::from_bytes([0; 32]),
        )
        .unwrap();
        let mut bytes = Vec::new();
        encode_frame(1, &entry, &mut bytes);
        let files = [LedgerFile {
            name: "ledger_1".into(),
            bytes,
        }];
        let failure = verify_ledger(&files, &ids.service_cert).unwrap_err();
        assert!(failure.reason.contains("public write set"), "{failure}");
    }

    #[test]
    fn empty_and_unsigned_ledgers() {
        let ids = identities();
        let files = [LedgerFile {
            name: "ledger_1".into(),
            bytes: Vec::new(),
        }];
        let summary = verify_ledger(&files, &ids.service_cert).unwrap();
        assert_eq!(summary.transactions, 0);
        assert_eq!(
            summary.to_string(),
            "0 transactions, 0 signatures, no signed TxID"
        );
        let mut builder = Builder::new();
        builder.genesis(&ids.node_cert, &ids.service_cert);
        builder.transaction("a");
        let files = [LedgerFile {
            name: "ledger_1".into(),
            bytes: builder.file(0, 2),
        }];
        let summary = verify_ledger(&files, &ids.service_cert).unwrap();
        assert_eq!((summary.transactions, summary.unsigned_tail), (2, 2));
        assert_eq!(summary.last_signed, None);
    }

    #[test]
    fn garbage_never_panics() {
        let ids = identities();
        let (_, files) = standard(&ids);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200 {
            let mut damaged = files.clone();
            // Several random changes, truncations and garbage files.
            for _ in 0..(round % 5 + 1) {
                let file = (next() % 2) as usize;
                let len = damaged[file].bytes.len();
                if len == 0 {
                    continue;
                }
                let at = (next() % len as u64) as usize;
                match next() % 3 {
                    0 => damaged[file].bytes[at] = next() as u8,
                    1 => damaged[file].bytes.truncate(at),
                    _ => damaged[file].bytes.insert(at, next() as u8),
                }
            }
            let garbage: Vec<u8> = (0..(next() % 300)).map(|_| next() as u8).collect();
            damaged.push(LedgerFile {
                name: format!("ledger_{}", next() % 20 + 1),
                bytes: garbage,
            });
            let _ = verify_ledger(&damaged, &ids.service_cert);
        }
    }
}
