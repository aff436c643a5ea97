//! The ledger directory: chunk files of framed entries, and Raft's hard state.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

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
    /// Entries from seqno 1, in order (Raft's no-op entries have empty data).
    pub entries: Vec<LogEntry>,
    /// Raft's hard state.
    pub hard_state: HardStateRecord,
    /// Bytes of a torn tail that were discarded, if any.
    pub torn_tail_bytes: u64,
}

/// Writes ledger chunks. Appends are buffered until [`LedgerFiles::sync`].
pub struct LedgerFiles {
    dir: PathBuf,
    open: Option<(File, u64)>,
    /// Byte offset of each entry of the open chunk, to truncate at.
    offsets: Vec<(u64, u64)>,
    open_len: u64,
    buffer: Vec<u8>,
    next_seqno: u64,
}

const HARD_STATE_FILE: &str = "raft_state.json";

impl LedgerFiles {
    /// Opens `dir` (created if missing), reads every chunk back, cuts a torn tail off the open
    /// chunk, and positions for appending.
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
        let mut files = LedgerFiles {
            dir: dir.to_owned(),
            open: None,
            offsets: Vec::new(),
            open_len: 0,
            buffer: Vec::new(),
            next_seqno: 1,
        };
        let count = chunks.len();
        for (index, (name, path)) in chunks.into_iter().enumerate() {
            let is_last = index + 1 == count;
            if name.first != files.next_seqno {
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
                files.open = Some((file, name.first));
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
        let mut chunks: Vec<ChunkName> = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let item = item.map_err(io(&self.dir))?;
            if let Some(name) = item.file_name().to_str().and_then(ChunkName::parse) {
                chunks.push(name);
            }
        }
        chunks.sort();
        let mut found: std::collections::BTreeMap<u64, Vec<u8>> = std::collections::BTreeMap::new();
        for name in chunks {
            let last = name.last.unwrap_or(u64::MAX);
            if last < from || name.first > to {
                continue;
            }
            let path = self.dir.join(name.file_name());
            let Ok(bytes) = fs::read(&path) else { continue };
            let (frames, _) = parse_frames(&bytes, Some(name.first));
            for frame in frames {
                if (from..=to).contains(&frame.seqno) {
                    found.insert(frame.seqno, frame.payload.to_vec());
                }
            }
        }
        Ok((from..=to)
            .map(|seqno| (seqno, found.remove(&seqno)))
            .collect())
    }

    /// Seqno the next append must have.
    pub fn next_seqno(&self) -> u64 {
        self.next_seqno
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
            self.open = Some((file, self.next_seqno));
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
        file.write_all(&self.buffer).map_err(io(&path))?;
        self.open_len += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Writes buffered entries and makes them durable (one fsync for the whole batch).
    ///
    /// # Errors
    /// [`FilesError::Io`]; the caller must stop the node, nothing acknowledged is lost.
    pub fn sync(&mut self) -> Result<(), FilesError> {
        self.flush()?;
        if let Some((file, first)) = &self.open {
            let path = self.dir.join(
                ChunkName {
                    first: *first,
                    last: None,
                }
                .file_name(),
            );
            file.sync_data().map_err(io(&path))?;
        }
        Ok(())
    }

    /// Drops entries from `from_seqno` on; they must all be in the open chunk.
    ///
    /// # Errors
    /// [`FilesError::Io`], or [`FilesError::Corrupt`] if they are in a completed chunk.
    pub fn truncate(&mut self, from_seqno: u64) -> Result<(), FilesError> {
        self.flush()?;
        if from_seqno >= self.next_seqno {
            return Ok(());
        }
        let Some(&(_, offset)) = self.offsets.iter().find(|(seqno, _)| *seqno == from_seqno) else {
            return Err(FilesError::Corrupt {
                path: self.dir.clone(),
                offset: 0,
                reason: format!("cannot truncate at {from_seqno}: it is in a completed chunk"),
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
        let path = self.dir.join(HARD_STATE_FILE);
        let temporary = self.dir.join("raft_state.json.tmp");
        let text =
            serde_json::json!({"term": state.term, "vote": state.vote, "commit": state.commit})
                .to_string();
        let mut file = File::create(&temporary).map_err(io(&temporary))?;
        file.write_all(text.as_bytes()).map_err(io(&temporary))?;
        file.sync_data().map_err(io(&temporary))?;
        fs::rename(&temporary, &path).map_err(io(&path))?;
        Ok(())
    }
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
}
