//! The ledger directory: chunk files of framed entries, and Raft's hard state; and the
//! snapshot directory next to it.
//!
//! A node directory holds `ledger/` and `snapshots/` side by side. `snapshots/` holds
//! `snapshot_<S>.committed` once the evidence transaction of the snapshot at seqno S is
//! committed: the committed snapshot container of `charter_ledger::snapshot` (magic
//! `CHSNAPCM`, u64 LE snapshot length, the snapshot, u32 LE receipt length, the evidence
//! receipt JSON). Before that it is `snapshot_<S>`, written once S is committed, which is the
//! same file without the evidence: committing appends the evidence, syncs the file and renames
//! it, so the snapshot is written once and a crash leaves no partial `.committed` file. Other
//! files are written to a `.tmp` name, synced and renamed. The newest [`SNAPSHOTS_KEPT`]
//! committed snapshots are kept.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use charter_ledger::{
    committed_snapshot_evidence_length, committed_snapshot_prefix, COMMITTED_SNAPSHOT_PREFIX_BYTES,
};

use charter_core::{HardStateRecord, LogEntry, LogKind};
use charter_ledger::frame::{encode_frame, parse_frames, ChunkName, FrameError};
use charter_ledger::{decode_entry, EntryKind};

/// Errors reading or writing ledger files.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// An I/O operation failed.
    #[error("{path}: {source}")]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The ledger on disk is damaged somewhere other than a torn tail.
    #[error("{path}: corrupt ledger at byte {offset}: {reason}")]
    Corrupt {
        /// File concerned.
        path: PathBuf,
        /// Byte offset of the bad frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What was read back from a ledger directory.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Entries in order, from `first_seqno` (Raft's no-op entries have empty data).
    pub entries: Vec<LogEntry>,
    /// Seqno of the first chunk's first entry: 1 for a whole ledger, more for a node that
    /// started from a snapshot (see [`LedgerFiles::restart_snapshot`]).
    pub first_seqno: u64,
    /// Raft's hard state.
    pub hard_state: HardStateRecord,
    /// Bytes of a torn tail that were discarded, if any.
    pub torn_tail_bytes: u64,
}

/// Writes ledger chunks. Appends are buffered until [`LedgerFiles::sync`] or
/// [`LedgerFiles::write_for_sync`].
pub struct LedgerFiles {
    dir: PathBuf,
    /// The open chunk and its first seqno; shared with [`PendingSync`]s in flight.
    open: Option<(Arc<File>, u64)>,
    /// Byte offset of each entry of the open chunk, to truncate at.
    offsets: Vec<(u64, u64)>,
    open_len: u64,
    buffer: Vec<u8>,
    next_seqno: u64,
    /// Whether any chunk file exists.
    has_chunks: bool,
    snapshots: SnapshotFiles,
    /// Other nodes' ledger directories, read (never written) for entries this one lacks.
    read_only: Vec<PathBuf>,
}

/// Entries written to a chunk but not yet durable (see [`LedgerFiles::write_for_sync`]).
pub struct PendingSync {
    file: Arc<File>,
    path: PathBuf,
}

impl PendingSync {
    /// Makes everything written to the chunk so far durable (fdatasync).
    ///
    /// # Errors
    /// [`FilesError::Io`]; the node must stop, as after a failed [`LedgerFiles::sync`].
    pub fn sync(&self) -> Result<(), FilesError> {
        self.file.sync_data().map_err(io(&self.path))
    }

    /// Whether `other` syncs the same chunk (one fsync then serves both).
    pub fn same_chunk(&self, other: &PendingSync) -> bool {
        Arc::ptr_eq(&self.file, &other.file)
    }
}

const HARD_STATE_FILE: &str = "raft_state.json";

impl LedgerFiles {
    /// Opens `dir` (created if missing), reads every chunk back, cuts a torn tail off the open
    /// chunk, and positions for appending. The chunks must be contiguous; the first may start
    /// after seqno 1 (a node that started from a snapshot), which
    /// [`LedgerFiles::restart_snapshot`] then checks. Snapshots go to [`snapshot_dir_for`]`(dir)`.
    ///
    /// # Errors
    /// [`FilesError`] on I/O errors or corruption other than a torn tail.
    pub fn open(dir: &Path) -> Result<(LedgerFiles, Loaded), FilesError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut chunks: Vec<(ChunkName, PathBuf)> = Vec::new();
        for item in fs::read_dir(dir).map_err(io(dir))? {
            let item = item.map_err(io(dir))?;
            if let Some(name) = item.file_name().to_str().and_then(ChunkName::parse) {
                chunks.push((name, item.path()));
            }
        }
        chunks.sort();
        let mut loaded = Loaded::default();
        let first_seqno = chunks.first().map_or(1, |(name, _)| name.first);
        loaded.first_seqno = first_seqno;
        let mut files = LedgerFiles {
            dir: dir.to_owned(),
            open: None,
            offsets: Vec::new(),
            open_len: 0,
            buffer: Vec::new(),
            next_seqno: first_seqno,
            has_chunks: !chunks.is_empty(),
            snapshots: SnapshotFiles::new(&snapshot_dir_for(dir)),
            read_only: Vec::new(),
        };
        let count = chunks.len();
        for (index, (name, path)) in chunks.into_iter().enumerate() {
            let is_last = index + 1 == count;
            if name.first != files.next_seqno || name.first == 0 {
                return Err(FilesError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!(
                        "chunk starts at {} but {} was expected",
                        name.first, files.next_seqno
                    ),
                });
            }
            let bytes = fs::read(&path).map_err(io(&path))?;
            let (frames, error) = parse_frames(&bytes, Some(name.first));
            let mut good_len = bytes.len() as u64;
            match error {
                None => {}
                Some(FrameError::TornTail { offset, .. }) if is_last && !name.is_complete() => {
                    loaded.torn_tail_bytes = bytes.len() as u64 - offset;
                    good_len = offset;
                }
                Some(error) => {
                    let offset = match &error {
                        FrameError::TornTail { offset, .. }
                        | FrameError::Corrupt { offset, .. }
                        | FrameError::Gap { offset, .. } => *offset,
                        #[allow(unreachable_patterns)]
                        _ => 0,
                    };
                    return Err(FilesError::Corrupt {
                        path,
                        offset,
                        reason: error.to_string(),
                    });
                }
            }
            let mut offsets = Vec::with_capacity(frames.len());
            for frame in &frames {
                let entry = decode_entry(frame.payload).map_err(|error| FilesError::Corrupt {
                    path: path.clone(),
                    offset: frame.offset,
                    reason: error.to_string(),
                })?;
                let (data, kind) = match entry.kind {
                    EntryKind::Noop => (Vec::new(), LogKind::Normal),
                    EntryKind::ConfChange => (entry.public.to_vec(), LogKind::ConfChange),
                    _ => (frame.payload.to_vec(), LogKind::Normal),
                };
                loaded.entries.push(LogEntry {
                    view: entry.tx_id.view,
                    seqno: frame.seqno,
                    data,
                    kind,
                });
                offsets.push((frame.seqno, frame.offset));
            }
            files.next_seqno = name.first + frames.len() as u64;
            if let Some(last) = name.last {
                if last + 1 != files.next_seqno {
                    return Err(FilesError::Corrupt {
                        path,
                        offset: 0,
                        reason: format!(
                            "chunk named up to {last} holds entries up to {}",
                            files.next_seqno - 1
                        ),
                    });
                }
            }
            if !name.is_complete() {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io(&path))?;
                if good_len < bytes.len() as u64 {
                    file.set_len(good_len).map_err(io(&path))?;
                    file.sync_all().map_err(io(&path))?;
                }
                files.open = Some((Arc::new(file), name.first));
                files.open_len = good_len;
                files.offsets = offsets;
            }
        }
        let state_path = dir.join(HARD_STATE_FILE);
        if let Ok(text) = fs::read_to_string(&state_path) {
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|error| FilesError::Corrupt {
                    path: state_path.clone(),
                    offset: 0,
                    reason: error.to_string(),
                })?;
            loaded.hard_state = HardStateRecord {
                term: value["term"].as_u64().unwrap_or(0),
                vote: value["vote"].as_u64().unwrap_or(0),
                commit: value["commit"].as_u64().unwrap_or(0),
            };
        }
        Ok((files, loaded))
    }

    /// Reads entries `from..=to` back from the chunk files (for historical queries): each
    /// seqno with its entry bytes, or `None` where the files do not hold it intact.
    ///
    /// # Errors
    /// [`FilesError::Io`] if the directory cannot be listed.
    pub fn read_range(
        &mut self,
        from: u64,
        to: u64,
    ) -> Result<charter_core::FetchedEntries, FilesError> {
        assert!(from <= to);
        // Entries still in the write buffer are read from the file only once written.
        self.flush()?;
        let mut found: std::collections::BTreeMap<u64, Vec<u8>> = std::collections::BTreeMap::new();
        // This node's own files first; then the read-only directories for what is missing
        // (the core checks every entry against its Merkle tree).
        let own = std::iter::once(self.dir.clone());
        for (index, dir) in own.chain(self.read_only.iter().cloned()).enumerate() {
            if index > 0 && (from..=to).all(|seqno| found.contains_key(&seqno)) {
                break;
            }
            let listing = match fs::read_dir(&dir) {
                Ok(listing) => listing,
                Err(error) if index == 0 => return Err(io(&dir)(error)),
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "read-only ledger directory unreadable");
                    continue;
                }
            };
            let mut chunks: Vec<ChunkName> = Vec::new();
            for item in listing {
                let item = item.map_err(io(&dir))?;
                if let Some(name) = item.file_name().to_str().and_then(ChunkName::parse) {
                    chunks.push(name);
                }
            }
            chunks.sort();
            for name in chunks {
                let last = name.last.unwrap_or(u64::MAX);
                if last < from || name.first > to {
                    continue;
                }
                let path = dir.join(name.file_name());
                let Ok(bytes) = fs::read(&path) else { continue };
                let (frames, _) = parse_frames(&bytes, Some(name.first));
                for frame in frames {
                    if (from..=to).contains(&frame.seqno) {
                        found
                            .entry(frame.seqno)
                            .or_insert_with(|| frame.payload.to_vec());
                    }
                }
            }
        }
        Ok((from..=to)
            .map(|seqno| (seqno, found.remove(&seqno)))
            .collect())
    }

    /// Other nodes' ledger directories to read historical entries from when this node's own
    /// files lack them (it started from a snapshot).
    pub fn set_read_only_dirs(&mut self, dirs: Vec<PathBuf>) {
        self.read_only = dirs;
    }

    /// Seqno the next append must have.
    pub fn next_seqno(&self) -> u64 {
        self.next_seqno
    }

    /// The snapshot files next to this ledger.
    pub fn snapshots(&self) -> &SnapshotFiles {
        &self.snapshots
    }

    /// Makes an empty ledger continue the snapshot at `seqno`: the first append is then
    /// `seqno + 1` (a node that joined from a snapshot, before it appended anything).
    ///
    /// # Panics
    /// If the ledger holds a chunk file: its start is fixed.
    pub fn start_after(&mut self, seqno: u64) {
        assert!(
            !self.has_chunks && self.open.is_none(),
            "only an empty ledger can start after a snapshot"
        );
        self.next_seqno = seqno + 1;
    }

    /// The committed snapshot a restart must start from, with `loaded` trimmed to the entries
    /// after it; `None` for a ledger from seqno 1 (it is replayed whole) or an empty ledger
    /// with no snapshot.
    ///
    /// A ledger that starts at seqno F > 1 needs a committed snapshot at a seqno S with
    /// `F - 1 <= S <= ` its last entry; the newest such one is used. An empty ledger (no chunk
    /// file) starts after the newest committed snapshot, if there is one.
    ///
    /// # Errors
    /// [`FilesError::Corrupt`] if no committed snapshot covers the ledger's start;
    /// [`FilesError::Io`] if the snapshot directory cannot be read.
    pub fn restart_snapshot(&mut self, loaded: &mut Loaded) -> Result<Option<Vec<u8>>, FilesError> {
        if !self.has_chunks {
            let Some((seqno, file)) = self.snapshots.latest_committed()? else {
                return Ok(None);
            };
            self.start_after(seqno);
            loaded.first_seqno = seqno + 1;
            return Ok(Some(file));
        }
        if loaded.first_seqno == 1 {
            return Ok(None);
        }
        let covered = (loaded.first_seqno - 1)..self.next_seqno;
        let chosen = self
            .snapshots
            .committed_seqnos()?
            .into_iter()
            .filter(|seqno| covered.contains(seqno))
            .max();
        let Some(seqno) = chosen else {
            return Err(FilesError::Corrupt {
                path: self.dir.clone(),
                offset: 0,
                reason: format!(
                    "the ledger starts at seqno {} but no committed snapshot in {} covers the \
                     seqnos before it",
                    loaded.first_seqno,
                    self.snapshots.dir().display()
                ),
            });
        };
        let file = self.snapshots.read_committed(seqno)?;
        loaded.entries.retain(|entry| entry.seqno > seqno);
        loaded.first_seqno = seqno + 1;
        Ok(Some(file))
    }

    /// Writes the snapshot at `seqno` durably (see [`SnapshotFiles::write`]).
    ///
    /// # Errors
    /// [`FilesError::Io`].
    pub fn write_snapshot(&mut self, seqno: u64, bytes: &[u8]) -> Result<(), FilesError> {
        self.snapshots.write(seqno, bytes)
    }

    /// The snapshot files next to this ledger, for a writer on another thread.
    pub fn snapshot_files(&self) -> SnapshotFiles {
        self.snapshots.clone()
    }

    /// Commits the snapshot at `seqno` with its evidence (see [`SnapshotFiles::commit`]).
    ///
    /// # Errors
    /// [`FilesError::Io`], e.g. if the snapshot was never written.
    pub fn commit_snapshot(&mut self, seqno: u64, evidence: &[u8]) -> Result<(), FilesError> {
        self.snapshots.commit(seqno, evidence)
    }

    fn ensure_open(&mut self) -> Result<(), FilesError> {
        if self.open.is_none() {
            let name = ChunkName {
                first: self.next_seqno,
                last: None,
            };
            let path = self.dir.join(name.file_name());
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            // The new name must survive a crash as well as the entries synced into it.
            File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io(&self.dir))?;
            self.open = Some((Arc::new(file), self.next_seqno));
            self.open_len = 0;
            self.offsets.clear();
        }
        Ok(())
    }

    /// Buffers an entry for the open chunk.
    ///
    /// # Errors
    /// [`FilesError::Io`] if a new chunk file cannot be created.
    pub fn append(&mut self, seqno: u64, bytes: &[u8]) -> Result<(), FilesError> {
        assert_eq!(seqno, self.next_seqno, "ledger appends are consecutive");
        self.ensure_open()?;
        self.offsets
            .push((seqno, self.open_len + self.buffer.len() as u64));
        encode_frame(seqno, bytes, &mut self.buffer);
        self.next_seqno += 1;
        self.has_chunks = true;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), FilesError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let (file, first) = self.open.as_mut().expect("appends open a chunk");
        let path = self.dir.join(
            ChunkName {
                first: *first,
                last: None,
            }
            .file_name(),
        );
        (&**file).write_all(&self.buffer).map_err(io(&path))?;
        self.open_len += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Writes buffered entries and makes them durable (one fsync for the whole batch).
    ///
    /// # Errors
    /// [`FilesError::Io`]; the caller must stop the node, nothing acknowledged is lost.
    pub fn sync(&mut self) -> Result<(), FilesError> {
        match self.write_for_sync()? {
            Some(pending) => pending.sync(),
            None => Ok(()),
        }
    }

    /// Writes buffered entries to the open chunk (the page cache) and returns what makes them
    /// durable, for another thread to call: the caller goes on appending meanwhile, and an
    /// fsync covers everything written before it. `None` if no chunk is open (nothing to sync).
    ///
    /// # Errors
    /// [`FilesError::Io`] if the write fails.
    pub fn write_for_sync(&mut self) -> Result<Option<PendingSync>, FilesError> {
        self.flush()?;
        Ok(self.open.as_ref().map(|(file, first)| PendingSync {
            file: Arc::clone(file),
            path: self.dir.join(
                ChunkName {
                    first: *first,
                    last: None,
                }
                .file_name(),
            ),
        }))
    }

    /// Drops entries from `from_seqno` on. Chunks complete at signatures as soon as they are
    /// appended, so a signature Raft later replaces can end a completed chunk: such a chunk is
    /// reopened (and the chunks after it deleted) before the cut.
    ///
    /// # Errors
    /// [`FilesError::Io`], or [`FilesError::Corrupt`] if no chunk holds `from_seqno`.
    pub fn truncate(&mut self, from_seqno: u64) -> Result<(), FilesError> {
        self.flush()?;
        if from_seqno >= self.next_seqno {
            return Ok(());
        }
        if !self.offsets.iter().any(|(seqno, _)| *seqno == from_seqno) {
            self.reopen_chunk_holding(from_seqno)?;
        }
        let Some(&(_, offset)) = self.offsets.iter().find(|(seqno, _)| *seqno == from_seqno) else {
            return Err(FilesError::Corrupt {
                path: self.dir.clone(),
                offset: 0,
                reason: format!("cannot truncate at {from_seqno}: no chunk holds it"),
            });
        };
        let (file, first) = self
            .open
            .as_mut()
            .expect("offsets come from the open chunk");
        let path = self.dir.join(
            ChunkName {
                first: *first,
                last: None,
            }
            .file_name(),
        );
        file.set_len(offset).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        self.open_len = offset;
        self.offsets.retain(|(seqno, _)| *seqno < from_seqno);
        self.next_seqno = from_seqno;
        Ok(())
    }

    /// Makes the completed chunk holding `seqno` the open chunk again, deleting every chunk
    /// after it (all their entries come after `seqno`, so the truncation drops them anyway).
    /// Each step leaves files a restart loads: later chunks go first, then the rename.
    fn reopen_chunk_holding(&mut self, seqno: u64) -> Result<(), FilesError> {
        let mut chunks: Vec<ChunkName> = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let item = item.map_err(io(&self.dir))?;
            if let Some(name) = item.file_name().to_str().and_then(ChunkName::parse) {
                chunks.push(name);
            }
        }
        chunks.sort();
        let Some(holder) = chunks
            .iter()
            .copied()
            .find(|name| name.first <= seqno && name.last.is_some_and(|last| last >= seqno))
        else {
            return Ok(());
        };
        self.open = None;
        for name in chunks.iter().rev().filter(|name| name.first > holder.first) {
            let path = self.dir.join(name.file_name());
            fs::remove_file(&path).map_err(io(&path))?;
        }
        let from = self.dir.join(holder.file_name());
        let to = self.dir.join(
            ChunkName {
                first: holder.first,
                last: None,
            }
            .file_name(),
        );
        fs::rename(&from, &to).map_err(io(&from))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(&self.dir))?;
        let bytes = fs::read(&to).map_err(io(&to))?;
        let (frames, _) = parse_frames(&bytes, Some(holder.first));
        let file = OpenOptions::new().append(true).open(&to).map_err(io(&to))?;
        self.offsets = frames
            .iter()
            .map(|frame| (frame.seqno, frame.offset))
            .collect();
        self.open = Some((Arc::new(file), holder.first));
        self.open_len = bytes.len() as u64;
        self.next_seqno = holder.first + frames.len() as u64;
        Ok(())
    }

    /// Completes the open chunk at `last_seqno` (syncing it first) as `ledger_FIRST-LAST.committed`.
    ///
    /// # Errors
    /// [`FilesError::Io`].
    pub fn close_chunk(&mut self, last_seqno: u64) -> Result<(), FilesError> {
        assert_eq!(
            last_seqno + 1,
            self.next_seqno,
            "a chunk ends at the last appended entry"
        );
        self.sync()?;
        if let Some((file, first)) = self.open.take() {
            drop(file);
            let from = self.dir.join(ChunkName { first, last: None }.file_name());
            let to = self.dir.join(
                ChunkName {
                    first,
                    last: Some(last_seqno),
                }
                .file_name(),
            );
            fs::rename(&from, &to).map_err(io(&from))?;
            File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io(&self.dir))?;
        }
        self.offsets.clear();
        self.open_len = 0;
        Ok(())
    }

    /// Saves Raft's hard state (atomically, durable at return).
    ///
    /// # Errors
    /// [`FilesError::Io`].
    pub fn save_hard_state(&mut self, state: HardStateRecord) -> Result<(), FilesError> {
        self.write_hard_state(state, true)
    }

    /// Records a new commit index with an unchanged term and vote, without waiting for the
    /// disk: it survives a killed process (the page cache keeps it), which is what a restarting
    /// replica needs to rebuild its configuration from the committed configuration changes;
    /// term and vote, which Raft's safety rests on, go through [`LedgerFiles::save_hard_state`].
    ///
    /// # Errors
    /// [`FilesError`] if the file cannot be written.
    pub fn save_commit(&mut self, state: HardStateRecord) -> Result<(), FilesError> {
        self.write_hard_state(state, false)
    }

    fn write_hard_state(&mut self, state: HardStateRecord, sync: bool) -> Result<(), FilesError> {
        let path = self.dir.join(HARD_STATE_FILE);
        let temporary = self.dir.join("raft_state.json.tmp");
        let text =
            serde_json::json!({"term": state.term, "vote": state.vote, "commit": state.commit})
                .to_string();
        let mut file = File::create(&temporary).map_err(io(&temporary))?;
        file.write_all(text.as_bytes()).map_err(io(&temporary))?;
        if sync {
            file.sync_data().map_err(io(&temporary))?;
        }
        fs::rename(&temporary, &path).map_err(io(&path))?;
        Ok(())
    }
}

/// Bytes of a snapshot written back to the disk at a time (see [`write_back`]).
const SNAPSHOT_WRITEBACK_BYTES: usize = 1 << 20;

/// Writes `len` bytes of `file` from `offset` to the disk now and waits for them, without
/// making them durable (no journal commit): a snapshot is tens of megabytes, and left to the
/// fsync that commits it, or to the kernel's writeback, it reached the disk in one burst that
/// the ledger's fsyncs queued behind (their wait's p99 went from 6 to 26 ms with snapshots on,
/// in the benchmark). Written a megabyte at a time on the snapshot thread, it paces itself.
/// Durability still comes from [`SnapshotFiles::commit`]'s fsync. Linux only; a hint, so a
/// failure is ignored.
fn write_back(file: &File, offset: u64, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: the descriptor is open for the call (borrowed from `file`); the kernel only
        // reads the integer arguments.
        let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// The snapshot directory of a node whose ledger is in `ledger_dir`: `snapshots/` next to it.
pub fn snapshot_dir_for(ledger_dir: &Path) -> PathBuf {
    ledger_dir
        .parent()
        .unwrap_or_else(|| Path::new(""))
        .join("snapshots")
}

/// How many committed snapshots a node keeps; older ones are deleted.
pub const SNAPSHOTS_KEPT: usize = 2;
const _: () = assert!(SNAPSHOTS_KEPT >= 1);

/// Writes `bytes` as `dir/name` durably: to `name.tmp`, synced, renamed, directory synced.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), FilesError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let temporary = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = File::create(&temporary).map_err(io(&temporary))?;
    file.write_all(bytes).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    drop(file);
    fs::rename(&temporary, &path).map_err(io(&path))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io(dir))
}

/// A snapshot file name: the seqno, and whether it is the committed form.
fn parse_snapshot_name(name: &str) -> Option<(u64, bool)> {
    let rest = name.strip_prefix("snapshot_")?;
    let (digits, committed) = match rest.strip_suffix(".committed") {
        Some(digits) => (digits, true),
        None => (rest, false),
    };
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seqno: u64 = digits.parse().ok()?;
    // One spelling per seqno: no leading zeros.
    (seqno.to_string() == digits && seqno > 0).then_some((seqno, committed))
}

/// Snapshot files in a directory (see the module documentation).
#[derive(Clone, Debug)]
pub struct SnapshotFiles {
    dir: PathBuf,
}

impl SnapshotFiles {
    /// The snapshot files in `dir` (created on the first write).
    pub fn new(dir: &Path) -> SnapshotFiles {
        SnapshotFiles {
            dir: dir.to_owned(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, seqno: u64, committed: bool) -> PathBuf {
        let suffix = if committed { ".committed" } else { "" };
        self.dir.join(format!("snapshot_{seqno}{suffix}"))
    }

    /// Every snapshot file: (seqno, committed), sorted.
    fn list(&self) -> Result<Vec<(u64, bool)>, FilesError> {
        let items = match fs::read_dir(&self.dir) {
            Ok(items) => items,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io(&self.dir)(error)),
        };
        let mut found = Vec::new();
        for item in items {
            let item = item.map_err(io(&self.dir))?;
            if let Some(parsed) = item.file_name().to_str().and_then(parse_snapshot_name) {
                found.push(parsed);
            }
        }
        found.sort_unstable();
        Ok(found)
    }

    /// Seqnos of the committed snapshots, increasing.
    ///
    /// # Errors
    /// [`FilesError::Io`] if the directory cannot be read.
    pub fn committed_seqnos(&self) -> Result<Vec<u64>, FilesError> {
        let list = self.list()?;
        Ok(list
            .into_iter()
            .filter(|(_, committed)| *committed)
            .map(|(seqno, _)| seqno)
            .collect())
    }

    /// The committed snapshot file at `seqno`.
    ///
    /// # Errors
    /// [`FilesError::Io`], e.g. if there is none.
    pub fn read_committed(&self, seqno: u64) -> Result<Vec<u8>, FilesError> {
        let path = self.path(seqno, true);
        fs::read(&path).map_err(io(&path))
    }

    /// The newest committed snapshot: its seqno and the whole file.
    ///
    /// # Errors
    /// [`FilesError::Io`] if the directory or the file cannot be read.
    pub fn latest_committed(&self) -> Result<Option<(u64, Vec<u8>)>, FilesError> {
        match self.committed_seqnos()?.last() {
            Some(&seqno) => Ok(Some((seqno, self.read_committed(seqno)?))),
            None => Ok(None),
        }
    }

    /// Writes `snapshot_<seqno>`: the committed file's layout up to the end of the snapshot
    /// (prefix and snapshot), for [`SnapshotFiles::commit`] to append the evidence to. Does
    /// nothing if that snapshot is already committed here (a restarted node serializes its
    /// newest snapshot point again).
    ///
    /// Not synced: the file counts only once committed, and committing syncs it. A node that
    /// restarts encodes its snapshots again before it commits any.
    ///
    /// # Errors
    /// [`FilesError::Io`]. A write that fails part way (a full disk, say) removes what it
    /// wrote, so that a lost snapshot does not hold space the ledger needs.
    pub fn write(&self, seqno: u64, snapshot: &[u8]) -> Result<(), FilesError> {
        if self.path(seqno, true).exists() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.path(seqno, false);
        let mut file = File::create(&path).map_err(io(&path))?;
        let prefix = committed_snapshot_prefix(snapshot.len() as u64);
        let mut offset = 0;
        for piece in std::iter::once(&prefix[..]).chain(snapshot.chunks(SNAPSHOT_WRITEBACK_BYTES)) {
            if let Err(error) = file.write_all(piece) {
                drop(file);
                let _ = fs::remove_file(&path);
                return Err(io(&path)(error));
            }
            write_back(&file, offset, piece.len());
            offset += piece.len() as u64;
        }
        Ok(())
    }

    /// Appends the evidence to `snapshot_<seqno>`, syncs it and renames it
    /// `snapshot_<seqno>.committed` (the snapshot is neither read back nor copied); then prunes
    /// old snapshots. Does nothing if the committed file exists already.
    ///
    /// # Errors
    /// [`FilesError::Io`], e.g. if `snapshot_<seqno>` was never written or is not whole.
    ///
    /// # Panics
    /// If the evidence is over `EVIDENCE_BYTES_MAX` (receipts are a few kilobytes).
    pub fn commit(&self, seqno: u64, evidence: &[u8]) -> Result<(), FilesError> {
        if self.path(seqno, true).exists() {
            return Ok(());
        }
        let path = self.path(seqno, false);
        let length = committed_snapshot_evidence_length(evidence);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut prefix = [0u8; COMMITTED_SNAPSHOT_PREFIX_BYTES];
        file.read_exact(&mut prefix).map_err(io(&path))?;
        let expected =
            committed_snapshot_prefix(u64::from_le_bytes(prefix[8..].try_into().expect("8 bytes")));
        let whole = COMMITTED_SNAPSHOT_PREFIX_BYTES as u64
            + u64::from_le_bytes(prefix[8..].try_into().expect("8 bytes"));
        let size = file.metadata().map_err(io(&path))?.len();
        if prefix != expected || size != whole {
            return Err(FilesError::Io {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not a whole pending snapshot ({size} bytes)"),
                ),
            });
        }
        file.seek(SeekFrom::End(0)).map_err(io(&path))?;
        file.write_all(&length)
            .and_then(|()| file.write_all(evidence))
            .and_then(|()| file.sync_all())
            .map_err(io(&path))?;
        drop(file);
        let committed = self.path(seqno, true);
        fs::rename(&path, &committed).map_err(io(&committed))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(&self.dir))?;
        self.prune()
    }

    /// Saves a committed snapshot file received from elsewhere (a node that joins from it
    /// keeps it, since its ledger starts after it), durably.
    ///
    /// # Errors
    /// [`FilesError::Io`].
    pub fn save_committed(&self, seqno: u64, file: &[u8]) -> Result<(), FilesError> {
        write_durably(&self.dir, &format!("snapshot_{seqno}.committed"), file)?;
        self.prune()
    }

    /// Keeps the newest [`SNAPSHOTS_KEPT`] committed snapshots; deletes older committed ones
    /// and uncommitted ones older than the newest committed one.
    fn prune(&self) -> Result<(), FilesError> {
        let list = self.list()?;
        let committed: Vec<u64> = list
            .iter()
            .filter(|(_, committed)| *committed)
            .map(|(seqno, _)| *seqno)
            .collect();
        let Some(&newest) = committed.last() else {
            return Ok(());
        };
        let keep_from = committed[committed.len().saturating_sub(SNAPSHOTS_KEPT)];
        for (seqno, is_committed) in list {
            let stale = if is_committed {
                seqno < keep_from
            } else {
                seqno < newest
            };
            if stale {
                let path = self.path(seqno, is_committed);
                fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(())
    }
}

/// The newest committed snapshot in the snapshot directory `dir`: its seqno and the whole
/// `snapshot_<seqno>.committed` file, as a joining node needs it.
///
/// # Errors
/// The I/O error if the directory or the file cannot be read.
pub fn latest_committed_snapshot(dir: &Path) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    SnapshotFiles::new(dir)
        .latest_committed()
        .map_err(|error| match error {
            FilesError::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use charter_ledger::{encode_noop, TxId};

    fn entry(seqno: u64) -> Vec<u8> {
        encode_noop(TxId::new(1, seqno))
    }

    #[test]
    fn append_close_reopen_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let (mut files, loaded) = LedgerFiles::open(dir.path()).unwrap();
        assert!(loaded.entries.is_empty());
        for seqno in 1..=3 {
            files.append(seqno, &entry(seqno)).unwrap();
        }
        files.close_chunk(3).unwrap();
        for seqno in 4..=6 {
            files.append(seqno, &entry(seqno)).unwrap();
        }
        files.sync().unwrap();
        files
            .save_hard_state(HardStateRecord {
                term: 1,
                vote: 1,
                commit: 6,
            })
            .unwrap();
        drop(files);
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|item| item.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["ledger_1-3.committed", "ledger_4", "raft_state.json"]
        );

        let (mut files, loaded) = LedgerFiles::open(dir.path()).unwrap();
        assert_eq!(loaded.entries.len(), 6);
        assert_eq!(loaded.hard_state.term, 1);
        assert_eq!(files.next_seqno(), 7);
        files.truncate(5).unwrap();
        files.append(5, &entry(5)).unwrap();
        files.sync().unwrap();
        drop(files);
        // Appends after reopening extend the chunk instead of overwriting its start.
        let (files, loaded) = LedgerFiles::open(dir.path()).unwrap();
        assert_eq!(
            loaded.entries.iter().map(|e| e.seqno).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(files.next_seqno(), 6);
    }

    #[test]
    fn entries_written_for_another_thread_to_sync_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut files, _) = LedgerFiles::open(dir.path()).unwrap();
        assert!(files.write_for_sync().unwrap().is_none(), "no chunk yet");
        files.append(1, &entry(1)).unwrap();
        files.append(2, &entry(2)).unwrap();
        let first = files.write_for_sync().unwrap().unwrap();
        // Appends go on while the sync is pending; the next sync is of the same chunk.
        files.append(3, &entry(3)).unwrap();
        let second = files.write_for_sync().unwrap().unwrap();
        assert!(first.same_chunk(&second));
        let syncer = std::thread::spawn(move || first.sync());
        syncer.join().unwrap().unwrap();
        second.sync().unwrap();
        // A sync still pending when its chunk completes syncs the renamed file harmlessly.
        files.close_chunk(3).unwrap();
        files.append(4, &entry(4)).unwrap();
        let third = files.write_for_sync().unwrap().unwrap();
        assert!(!third.same_chunk(&second));
        second.sync().unwrap();
        third.sync().unwrap();
        drop(files);
        let (files, loaded) = LedgerFiles::open(dir.path()).unwrap();
        let seqnos: Vec<u64> = loaded.entries.iter().map(|entry| entry.seqno).collect();
        assert_eq!(seqnos, [1, 2, 3, 4]);
        assert_eq!(files.next_seqno(), 5);
    }

    #[test]
    fn truncating_into_a_completed_chunk_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut files, _) = LedgerFiles::open(dir.path()).unwrap();
        for seqno in 1..=3 {
            files.append(seqno, &entry(seqno)).unwrap();
        }
        files.close_chunk(3).unwrap();
        for seqno in 4..=5 {
            files.append(seqno, &entry(seqno)).unwrap();
        }
        files.close_chunk(5).unwrap();
        files.append(6, &entry(6)).unwrap();
        files.sync().unwrap();
        // Raft replaces everything from 3 on: the chunk ending at 3 (completed at an
        // uncommitted signature) is reopened, the later ones go.
        files.truncate(3).unwrap();
        assert_eq!(files.next_seqno(), 3);
        files.append(3, &entry(3)).unwrap();
        files.sync().unwrap();
        drop(files);
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|item| item.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("ledger_"))
            .collect();
        names.sort();
        assert_eq!(names, ["ledger_1"]);
        let (files, loaded) = LedgerFiles::open(dir.path()).unwrap();
        assert_eq!(loaded.entries.len(), 3);
        assert_eq!(files.next_seqno(), 4);
    }

    #[test]
    fn torn_tail_is_cut_and_corruption_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut files, _) = LedgerFiles::open(dir.path()).unwrap();
        for seqno in 1..=4 {
            files.append(seqno, &entry(seqno)).unwrap();
        }
        files.sync().unwrap();
        drop(files);
        let path = dir.path().join("ledger_1");
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let (files, loaded) = LedgerFiles::open(dir.path()).unwrap();
        assert_eq!(loaded.entries.len(), 3);
        assert!(loaded.torn_tail_bytes > 0);
        assert_eq!(files.next_seqno(), 4);
        drop(files);
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 1;
        fs::write(&path, &bytes).unwrap();
        match LedgerFiles::open(dir.path()) {
            Err(FilesError::Corrupt { offset, .. }) => assert_eq!(offset, 0),
            other => panic!(
                "expected corruption, got {:?}",
                other.map(|(_, loaded)| loaded.entries.len())
            ),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|item| item.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_snapshot_written_back_a_megabyte_at_a_time_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = SnapshotFiles::new(dir.path());
        let snapshot: Vec<u8> = (0..SNAPSHOT_WRITEBACK_BYTES * 5 / 2)
            .map(|index| (index % 251) as u8)
            .collect();
        snapshots.write(7, &snapshot).unwrap();
        snapshots.commit(7, b"{\"receipt\":7}").unwrap();
        let file = snapshots.read_committed(7).unwrap();
        let parts = charter_ledger::split_committed_snapshot(&file).unwrap();
        assert!(
            parts.snapshot == snapshot.as_slice(),
            "the snapshot came back different"
        );
        assert_eq!(parts.evidence, b"{\"receipt\":7}");
    }

    #[test]
    fn snapshots_are_written_committed_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let (mut files, _) = LedgerFiles::open(&dir.path().join("ledger")).unwrap();
        let snapshots = dir.path().join("snapshots");
        assert_eq!(files.snapshots().dir(), snapshots);
        assert_eq!(latest_committed_snapshot(&snapshots).unwrap(), None);
        files.write_snapshot(10, b"snapshot ten").unwrap();
        // The pending file is the committed file up to the end of the snapshot.
        let pending = fs::read(snapshots.join("snapshot_10")).unwrap();
        assert_eq!(
            pending,
            charter_ledger::encode_committed_snapshot(b"snapshot ten", b"")[..28]
        );
        // A torn pending file is refused, not committed.
        fs::write(snapshots.join("snapshot_12"), &pending[..20]).unwrap();
        assert!(matches!(
            files.commit_snapshot(12, b"{}"),
            Err(FilesError::Io { .. })
        ));
        fs::remove_file(snapshots.join("snapshot_12")).unwrap();
        files.commit_snapshot(10, b"{\"receipt\":10}").unwrap();
        assert_eq!(names(&snapshots), ["snapshot_10.committed"]);
        let file = fs::read(snapshots.join("snapshot_10.committed")).unwrap();
        let parts = charter_ledger::split_committed_snapshot(&file).unwrap();
        assert_eq!(parts.snapshot, b"snapshot ten");
        assert_eq!(parts.evidence, b"{\"receipt\":10}");
        // Writing or committing a committed snapshot again changes nothing.
        files.write_snapshot(10, b"other").unwrap();
        files.commit_snapshot(10, b"other").unwrap();
        assert_eq!(names(&snapshots), ["snapshot_10.committed"]);
        assert_eq!(
            fs::read(snapshots.join("snapshot_10.committed")).unwrap(),
            file
        );
        // A snapshot never written cannot be committed.
        assert!(matches!(
            files.commit_snapshot(11, b"{}"),
            Err(FilesError::Io { .. })
        ));
        // Older snapshots go once newer ones commit; names that are not snapshots stay.
        fs::write(snapshots.join("snapshot_007"), b"not ours").unwrap();
        fs::write(snapshots.join("notes"), b"not ours").unwrap();
        files.write_snapshot(15, b"never committed").unwrap();
        for seqno in [20, 30] {
            files.write_snapshot(seqno, b"snapshot").unwrap();
            files.commit_snapshot(seqno, b"{}").unwrap();
        }
        files.write_snapshot(40, b"pending").unwrap();
        assert_eq!(
            names(&snapshots),
            [
                "notes",
                "snapshot_007",
                "snapshot_20.committed",
                "snapshot_30.committed",
                "snapshot_40"
            ]
        );
        let (seqno, latest) = latest_committed_snapshot(&snapshots).unwrap().unwrap();
        assert_eq!(seqno, 30);
        assert_eq!(
            latest,
            fs::read(snapshots.join("snapshot_30.committed")).unwrap()
        );
        assert_eq!(files.snapshots().committed_seqnos().unwrap(), [20, 30]);
    }

    #[test]
    fn a_ledger_that_starts_after_a_snapshot_restarts_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger");
        let (mut files, _) = LedgerFiles::open(&ledger).unwrap();
        files.start_after(10);
        assert_eq!(files.next_seqno(), 11);
        for seqno in 11..=13 {
            files.append(seqno, &entry(seqno)).unwrap();
        }
        files.close_chunk(13).unwrap();
        files.append(14, &entry(14)).unwrap();
        files.sync().unwrap();
        drop(files);
        assert_eq!(names(&ledger), ["ledger_11-13.committed", "ledger_14"]);

        // Without a snapshot covering seqnos 1-10 the ledger cannot be used.
        let (mut files, mut loaded) = LedgerFiles::open(&ledger).unwrap();
        assert_eq!(loaded.first_seqno, 11);
        assert_eq!(loaded.entries.len(), 4);
        match files.restart_snapshot(&mut loaded) {
            Err(FilesError::Corrupt { reason, .. }) => {
                assert!(reason.contains("no committed snapshot"), "{reason}")
            }
            other => panic!("expected an error, got {other:?}"),
        }
        let snapshots = SnapshotFiles::new(&dir.path().join("snapshots"));
        snapshots.save_committed(10, b"file ten").unwrap();
        let (mut files, mut loaded) = LedgerFiles::open(&ledger).unwrap();
        let file = files.restart_snapshot(&mut loaded).unwrap();
        assert_eq!(file.as_deref(), Some(&b"file ten"[..]));
        assert_eq!(loaded.entries.first().map(|e| e.seqno), Some(11));
        // A newer committed snapshot inside the ledger is preferred; entries up to it go.
        snapshots.save_committed(12, b"file twelve").unwrap();
        snapshots.save_committed(99, b"beyond the ledger").unwrap();
        let (mut files, mut loaded) = LedgerFiles::open(&ledger).unwrap();
        let file = files.restart_snapshot(&mut loaded).unwrap();
        assert_eq!(file.as_deref(), Some(&b"file twelve"[..]));
        assert_eq!(
            loaded.entries.iter().map(|e| e.seqno).collect::<Vec<_>>(),
            [13, 14]
        );
        assert_eq!(loaded.first_seqno, 13);
        files.append(15, &entry(15)).unwrap();
        files.sync().unwrap();

        // An empty ledger continues its newest committed snapshot.
        let other = tempfile::tempdir().unwrap();
        let (mut files, mut loaded) = LedgerFiles::open(&other.path().join("ledger")).unwrap();
        assert_eq!(files.restart_snapshot(&mut loaded).unwrap(), None);
        SnapshotFiles::new(&other.path().join("snapshots"))
            .save_committed(20, b"file twenty")
            .unwrap();
        let (mut files, mut loaded) = LedgerFiles::open(&other.path().join("ledger")).unwrap();
        let file = files.restart_snapshot(&mut loaded).unwrap();
        assert_eq!(file.as_deref(), Some(&b"file twenty"[..]));
        assert_eq!(files.next_seqno(), 21);
        files.append(21, &entry(21)).unwrap();
        files.sync().unwrap();
        assert_eq!(names(&other.path().join("ledger")), ["ledger_21"]);
    }

    #[test]
    fn a_whole_ledger_restarts_by_replaying_even_with_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let (mut files, _) = LedgerFiles::open(&dir.path().join("ledger")).unwrap();
        for seqno in 1..=3 {
            files.append(seqno, &entry(seqno)).unwrap();
        }
        files.sync().unwrap();
        files.write_snapshot(2, b"two").unwrap();
        files.commit_snapshot(2, b"{}").unwrap();
        drop(files);
        let (mut files, mut loaded) = LedgerFiles::open(&dir.path().join("ledger")).unwrap();
        assert_eq!(files.restart_snapshot(&mut loaded).unwrap(), None);
        assert_eq!(loaded.entries.len(), 3);
    }

    #[test]
    fn snapshot_names_parse_strictly() {
        assert_eq!(parse_snapshot_name("snapshot_12"), Some((12, false)));
        assert_eq!(
            parse_snapshot_name("snapshot_12.committed"),
            Some((12, true))
        );
        for bad in [
            "snapshot_",
            "snapshot_0",
            "snapshot_012",
            "snapshot_1a",
            "snapshot_12.committed.tmp",
            "snapshot_12.tmp",
            "snapshot_99999999999999999999999",
            "ledger_1",
        ] {
            assert_eq!(parse_snapshot_name(bad), None, "{bad}");
        }
    }
}
