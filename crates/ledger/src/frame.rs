//! Framing of ledger entries in chunk files, with torn-tail and corruption detection.
//!
//! A chunk file is a sequence of frames. A frame is a 16-byte header followed by the payload:
//!
//! ```text
//! u32 LE payload length ‖ u32 LE CRC32 ‖ u64 LE seqno ‖ payload
//! ```
//!
//! The CRC32 (`crc32fast`) covers the length field, the seqno field and the payload, in that
//! order, so that a flipped bit anywhere in a frame is caught, including in the seqno. The seqno
//! lets a reader check that the frames of a file are consecutive.
//!
//! Chunk files are named `ledger_<first>` while open and `ledger_<first>-<last>.committed` once
//! complete; see [`ChunkName`].

/// Maximum size of one frame's payload.
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = 16 << 20;

/// Size of a frame header: length, CRC32 and seqno.
pub const FRAME_HEADER_BYTES: usize = 16;

const _: () = assert!(FRAME_HEADER_BYTES == 4 + 4 + 8);
const _: () =
    assert!(FRAME_PAYLOAD_BYTES_MAX as u64 + FRAME_HEADER_BYTES as u64 <= u32::MAX as u64);

/// Returns the CRC32 stored in a frame: over the length field, the seqno field and the payload.
fn frame_crc(length_bytes: [u8; 4], seqno_bytes: [u8; 8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&length_bytes);
    hasher.update(&seqno_bytes);
    hasher.update(payload);
    hasher.finalize()
}

/// Appends one frame carrying `payload` for `seqno` to `out`.
///
/// # Panics
///
/// If `payload` is longer than [`FRAME_PAYLOAD_BYTES_MAX`]; callers bound entries well below it.
pub fn encode_frame(seqno: u64, payload: &[u8], out: &mut Vec<u8>) {
    assert!(
        payload.len() <= FRAME_PAYLOAD_BYTES_MAX as usize,
        "frame payload over the limit"
    );
    let length = payload.len() as u32;
    let length_bytes = length.to_le_bytes();
    let seqno_bytes = seqno.to_le_bytes();
    let crc = frame_crc(length_bytes, seqno_bytes, payload);
    let start = out.len();
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&length_bytes);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&seqno_bytes);
    out.extend_from_slice(payload);
    assert!(out.len() == start + FRAME_HEADER_BYTES + payload.len());
}

/// One frame parsed from a chunk file, borrowing its payload from the file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// The seqno recorded in the frame header.
    pub seqno: u64,
    /// Byte offset of the frame's start (its header) in the file.
    pub offset: u64,
    /// The frame's payload.
    pub payload: &'a [u8],
}

/// Why a chunk file's bytes stop parsing as frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The file ends inside a frame (header or payload cut short): a torn write at the tail.
    #[error("torn tail at byte {offset} after {complete_frames} complete frames")]
    TornTail {
        /// Byte offset of the incomplete frame's start; the good prefix ends here.
        offset: u64,
        /// Number of complete, valid frames before it.
        complete_frames: usize,
    },
    /// A complete frame whose CRC does not match, or whose length is over the limit: corruption.
    #[error("corrupt frame at byte {offset} (seqno {seqno:?}): {reason}")]
    Corrupt {
        /// Byte offset of the corrupt frame's start.
        offset: u64,
        /// The seqno the frame should carry, when known from the previous frame or from
        /// `first_seqno`; the header's own seqno is not trusted once the frame fails its check.
        seqno: Option<u64>,
        /// What check failed.
        reason: &'static str,
    },
    /// Seqnos are not consecutive.
    #[error("seqno gap at byte {offset}: expected {expected}, found {found}")]
    Gap {
        /// Byte offset of the frame with the unexpected seqno.
        offset: u64,
        /// The seqno that should have come next.
        expected: u64,
        /// The seqno the frame carries.
        found: u64,
    },
}

/// Parses a whole chunk file's bytes. On error returns the frames parsed before the problem AND
/// the error, so callers can keep the good prefix.
///
/// `first_seqno`, when given, is the seqno the first frame must carry (from the file name);
/// otherwise the first frame's seqno is accepted and later ones must follow it consecutively.
/// Checks, in order, for each frame: the header is complete (else [`FrameError::TornTail`]); the
/// length is within [`FRAME_PAYLOAD_BYTES_MAX`] (else [`FrameError::Corrupt`]); the payload is
/// complete (else `TornTail`); the CRC matches (else `Corrupt`, even for the file's last frame:
/// a torn write that stops exactly at the declared end is indistinguishable from corruption and
/// far less likely); the seqno is the expected one (else [`FrameError::Gap`]).
pub fn parse_frames(
    bytes: &[u8],
    first_seqno: Option<u64>,
) -> (Vec<FrameRef<'_>>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut expected = first_seqno;
    let mut position: usize = 0;
    // Each iteration consumes at least FRAME_HEADER_BYTES or returns, bounding the loop.
    let iterations_max = bytes.len() / FRAME_HEADER_BYTES + 1;
    for _ in 0..iterations_max {
        if position == bytes.len() {
            return (frames, None);
        }
        assert!(position < bytes.len());
        let offset = position as u64;
        let rest = &bytes[position..];
        let Some((header, body)) = rest.split_first_chunk::<FRAME_HEADER_BYTES>() else {
            let error = torn(offset, &frames);
            return (frames, Some(error));
        };
        let (length_bytes, crc_bytes, seqno_bytes) = split_header(header);
        let length = u32::from_le_bytes(length_bytes);
        if length > FRAME_PAYLOAD_BYTES_MAX {
            let error = FrameError::Corrupt {
                offset,
                seqno: expected,
                reason: "payload length over the limit",
            };
            return (frames, Some(error));
        }
        // `length` is at most FRAME_PAYLOAD_BYTES_MAX, which fits in usize on every target.
        let length = length as usize;
        let Some(payload) = body.get(..length) else {
            let error = torn(offset, &frames);
            return (frames, Some(error));
        };
        if frame_crc(length_bytes, seqno_bytes, payload) != u32::from_le_bytes(crc_bytes) {
            let error = FrameError::Corrupt {
                offset,
                seqno: expected,
                reason: "CRC mismatch",
            };
            return (frames, Some(error));
        }
        let seqno = u64::from_le_bytes(seqno_bytes);
        if let Some(expected) = expected {
            if seqno != expected {
                return (
                    frames,
                    Some(FrameError::Gap {
                        offset,
                        expected,
                        found: seqno,
                    }),
                );
            }
        }
        frames.push(FrameRef {
            seqno,
            offset,
            payload,
        });
        position += FRAME_HEADER_BYTES + length;
        assert!(position <= bytes.len());
        expected = match seqno.checked_add(1) {
            Some(next) => Some(next),
            None if position == bytes.len() => None,
            None => {
                let reason = "frame after seqno u64::MAX";
                return (
                    frames,
                    Some(FrameError::Corrupt {
                        offset: position as u64,
                        seqno: None,
                        reason,
                    }),
                );
            }
        };
    }
    unreachable!("every iteration consumes a header or returns");
}

fn torn(offset: u64, frames: &[FrameRef<'_>]) -> FrameError {
    FrameError::TornTail {
        offset,
        complete_frames: frames.len(),
    }
}

fn split_header(header: &[u8; FRAME_HEADER_BYTES]) -> ([u8; 4], [u8; 4], [u8; 8]) {
    let mut length = [0; 4];
    let mut crc = [0; 4];
    let mut seqno = [0; 8];
    length.copy_from_slice(&header[0..4]);
    crc.copy_from_slice(&header[4..8]);
    seqno.copy_from_slice(&header[8..16]);
    (length, crc, seqno)
}

/// The name of a chunk file: `ledger_<first>` (open chunk) or `ledger_<first>-<last>.committed`
/// (complete chunk).
///
/// Seqnos start at 1 and are written in decimal without leading zeros, so every accepted name
/// formats back to itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChunkName {
    /// Seqno of the chunk's first entry.
    pub first: u64,
    /// Seqno of the chunk's last entry once the chunk is complete; `None` while it is open.
    pub last: Option<u64>,
}

const CHUNK_PREFIX: &str = "ledger_";
const CHUNK_COMPLETE_SUFFIX: &str = ".committed";

impl ChunkName {
    /// Parses a chunk file name; returns `None` for anything that is not a chunk name (wrong
    /// prefix or suffix, non-canonical or zero seqnos, `last < first`).
    pub fn parse(file_name: &str) -> Option<ChunkName> {
        let rest = file_name.strip_prefix(CHUNK_PREFIX)?;
        let name = match rest.strip_suffix(CHUNK_COMPLETE_SUFFIX) {
            Some(range) => {
                let (first, last) = range.split_once('-')?;
                let (first, last) = (parse_seqno(first)?, parse_seqno(last)?);
                if last < first {
                    return None;
                }
                ChunkName {
                    first,
                    last: Some(last),
                }
            }
            None => ChunkName {
                first: parse_seqno(rest)?,
                last: None,
            },
        };
        Some(name)
    }

    /// Formats the chunk's file name.
    ///
    /// # Panics
    ///
    /// If `first` is 0 or `last < first`, which no chunk the ledger writes has.
    pub fn file_name(&self) -> String {
        assert!(self.first > 0, "seqnos start at 1");
        match self.last {
            Some(last) => {
                assert!(last >= self.first, "chunk ends before it starts");
                format!("{CHUNK_PREFIX}{}-{last}{CHUNK_COMPLETE_SUFFIX}", self.first)
            }
            None => format!("{CHUNK_PREFIX}{}", self.first),
        }
    }

    /// Returns true for a complete (`.committed`) chunk.
    pub fn is_complete(&self) -> bool {
        self.last.is_some()
    }
}

/// Parses a canonical decimal seqno: ASCII digits only, no leading zero, not 0.
fn parse_seqno(text: &str) -> Option<u64> {
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a file of `count` frames starting at `first`, with varied payload sizes (some
    /// empty), and returns it with each frame's start offset.
    fn build_file(first: u64, count: usize) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for i in 0..count {
            offsets.push(bytes.len());
            let payload: Vec<u8> = (0..(i * 7) % 23).map(|j| (i * 31 + j) as u8).collect();
            encode_frame(first + i as u64, &payload, &mut bytes);
        }
        (bytes, offsets)
    }

    #[test]
    fn round_trip_many_frames() {
        let mut bytes = Vec::new();
        let payloads: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8; i * 3]).collect();
        for (i, payload) in payloads.iter().enumerate() {
            encode_frame(100 + i as u64, payload, &mut bytes);
        }
        for first in [Some(100), None] {
            let (frames, error) = parse_frames(&bytes, first);
            assert_eq!(error, None);
            assert_eq!(frames.len(), payloads.len());
            let mut offset = 0;
            for (i, frame) in frames.iter().enumerate() {
                assert_eq!(frame.seqno, 100 + i as u64);
                assert_eq!(frame.offset, offset);
                assert_eq!(frame.payload, &payloads[i][..]);
                offset += (FRAME_HEADER_BYTES + payloads[i].len()) as u64;
            }
            assert_eq!(offset, bytes.len() as u64);
        }
    }

    #[test]
    fn empty_file_has_no_frames() {
        assert_eq!(parse_frames(&[], Some(1)), (vec![], None));
        assert_eq!(parse_frames(&[], None), (vec![], None));
    }

    #[test]
    fn header_layout() {
        let mut bytes = Vec::new();
        encode_frame(0x0102_0304_0506_0708, b"abc", &mut bytes);
        assert_eq!(bytes.len(), FRAME_HEADER_BYTES + 3);
        assert_eq!(&bytes[0..4], &3u32.to_le_bytes());
        assert_eq!(&bytes[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&bytes[16..], b"abc");
        let mut covered = Vec::new();
        covered.extend_from_slice(&bytes[0..4]);
        covered.extend_from_slice(&bytes[8..]);
        assert_eq!(&bytes[4..8], &crc32fast::hash(&covered).to_le_bytes());
    }

    #[test]
    fn every_truncation_keeps_the_good_prefix() {
        let (bytes, offsets) = build_file(1, 12);
        for cut in 0..=bytes.len() {
            let (frames, error) = parse_frames(&bytes[..cut], Some(1));
            // Frames that end at or before the cut are complete.
            let complete = offsets
                .iter()
                .enumerate()
                .filter(|(i, _)| offsets.get(i + 1).copied().unwrap_or(bytes.len()) <= cut)
                .count();
            assert_eq!(frames.len(), complete, "cut = {cut}");
            let boundary = offsets.contains(&cut) || cut == bytes.len();
            if boundary {
                assert_eq!(error, None, "cut = {cut}");
            } else {
                let expected = FrameError::TornTail {
                    offset: offsets[complete] as u64,
                    complete_frames: complete,
                };
                assert_eq!(error, Some(expected), "cut = {cut}");
            }
            for (i, frame) in frames.iter().enumerate() {
                assert_eq!(frame.seqno, 1 + i as u64);
                assert_eq!(frame.offset, offsets[i] as u64);
            }
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let (bytes, offsets) = build_file(5, 8);
        let (good, _) = parse_frames(&bytes, Some(5));
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                let (frames, error) = parse_frames(&damaged, Some(5));
                // The frame containing the flipped byte.
                let frame = offsets
                    .iter()
                    .rposition(|&o| o <= byte)
                    .expect("offsets start at 0");
                let frame_offset = offsets[frame] as u64;
                assert_eq!(frames[..], good[..frame], "byte {byte} bit {bit}");
                let within = byte - offsets[frame];
                match error {
                    Some(FrameError::Corrupt { offset, seqno, .. }) => {
                        assert_eq!(offset, frame_offset, "byte {byte} bit {bit}");
                        assert_eq!(seqno, Some(5 + frame as u64));
                    }
                    // Only a longer length field can make the frame run past the end.
                    Some(FrameError::TornTail {
                        offset,
                        complete_frames,
                    }) if within < 4 => {
                        assert_eq!(offset, frame_offset, "byte {byte} bit {bit}");
                        assert_eq!(complete_frames, frame);
                    }
                    other => panic!("byte {byte} bit {bit}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn gaps_are_reported() {
        let mut bytes = Vec::new();
        encode_frame(3, b"a", &mut bytes);
        let second = bytes.len() as u64;
        encode_frame(5, b"b", &mut bytes);
        let (frames, error) = parse_frames(&bytes, None);
        assert_eq!(frames.len(), 1);
        assert_eq!(
            error,
            Some(FrameError::Gap {
                offset: second,
                expected: 4,
                found: 5
            })
        );

        let (frames, error) = parse_frames(&bytes, Some(2));
        assert!(frames.is_empty());
        assert_eq!(
            error,
            Some(FrameError::Gap {
                offset: 0,
                expected: 2,
                found: 3
            })
        );
    }

    #[test]
    fn length_over_limit_is_corrupt() {
        let mut bytes = Vec::new();
        encode_frame(1, b"x", &mut bytes);
        bytes[0..4].copy_from_slice(&(FRAME_PAYLOAD_BYTES_MAX + 1).to_le_bytes());
        let (frames, error) = parse_frames(&bytes, Some(1));
        assert!(frames.is_empty());
        assert!(matches!(
            error,
            Some(FrameError::Corrupt {
                offset: 0,
                seqno: Some(1),
                ..
            })
        ));
    }

    #[test]
    fn zero_filled_tail_is_corrupt() {
        // A preallocated or zeroed region must not parse as an empty frame.
        let (mut bytes, _) = build_file(1, 3);
        let end = bytes.len() as u64;
        bytes.extend_from_slice(&[0; 64]);
        let (frames, error) = parse_frames(&bytes, Some(1));
        assert_eq!(frames.len(), 3);
        assert!(
            matches!(error, Some(FrameError::Corrupt { offset, seqno: Some(4), .. }) if offset == end)
        );
    }

    #[test]
    fn seqno_overflow_is_rejected() {
        let mut bytes = Vec::new();
        encode_frame(u64::MAX, b"last", &mut bytes);
        let (frames, error) = parse_frames(&bytes, None);
        assert_eq!((frames.len(), error), (1, None));
        let end = bytes.len() as u64;
        encode_frame(0, b"wrapped", &mut bytes);
        let (frames, error) = parse_frames(&bytes, None);
        assert_eq!(frames.len(), 1);
        assert!(
            matches!(error, Some(FrameError::Corrupt { offset, seqno: None, .. }) if offset == end)
        );
    }

    #[test]
    #[should_panic(expected = "over the limit")]
    fn encoding_an_oversized_payload_panics() {
        let payload = vec![0; FRAME_PAYLOAD_BYTES_MAX as usize + 1];
        encode_frame(1, &payload, &mut Vec::new());
    }

    #[test]
    fn chunk_names_round_trip() {
        let cases = [
            (
                "ledger_1",
                ChunkName {
                    first: 1,
                    last: None,
                },
            ),
            (
                "ledger_42",
                ChunkName {
                    first: 42,
                    last: None,
                },
            ),
            (
                "ledger_1-10.committed",
                ChunkName {
                    first: 1,
                    last: Some(10),
                },
            ),
            (
                "ledger_7-7.committed",
                ChunkName {
                    first: 7,
                    last: Some(7),
                },
            ),
            (
                "ledger_18446744073709551615-18446744073709551615.committed",
                ChunkName {
                    first: u64::MAX,
                    last: Some(u64::MAX),
                },
            ),
        ];
        for (text, name) in cases {
            assert_eq!(ChunkName::parse(text), Some(name), "{text}");
            assert_eq!(name.file_name(), text);
            assert_eq!(name.is_complete(), name.last.is_some());
        }
    }

    #[test]
    fn bad_chunk_names_are_rejected() {
        let bad = [
            "",
            "ledger",
            "ledger_",
            "ledger_x",
            "ledger_1-2",
            "ledger_5-3.committed",
            "ledger_0",
            "ledger_0-3.committed",
            "ledger_01",
            "ledger_1-02.committed",
            "ledger_+1",
            "ledger_-1",
            "ledger_1-.committed",
            "ledger_-2.committed",
            "ledger_1-2-3.committed",
            "ledger_.committed",
            "ledger_1.committed",
            "ledger_1-2.committed.tmp",
            "ledger_1-2.recovery",
            "Ledger_1",
            "ledger_ 1",
            "ledger_18446744073709551616",
            "xledger_1",
            "ledger_1 ",
            "ledger_１",
        ];
        for text in bad {
            assert_eq!(ChunkName::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn chunk_names_order_by_first_seqno() {
        let mut names = [
            ChunkName {
                first: 11,
                last: None,
            },
            ChunkName {
                first: 1,
                last: Some(10),
            },
        ];
        names.sort();
        assert_eq!(names[0].first, 1);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            first in proptest::option::of(any::<u64>()),
        ) {
            let (frames, error) = parse_frames(&bytes, first);
            let mut end = 0;
            for frame in &frames {
                prop_assert_eq!(frame.offset, end);
                end += (FRAME_HEADER_BYTES + frame.payload.len()) as u64;
            }
            prop_assert!(end <= bytes.len() as u64);
            prop_assert_eq!(error.is_none(), end == bytes.len() as u64);
        }

        #[test]
        fn random_valid_files_round_trip_and_truncate(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20),
            first in 1u64..1_000_000,
            cut_seed in any::<usize>(),
        ) {
            let mut bytes = Vec::new();
            for (i, payload) in payloads.iter().enumerate() {
                encode_frame(first + i as u64, payload, &mut bytes);
            }
            let (frames, error) = parse_frames(&bytes, Some(first));
            prop_assert_eq!(error, None);
            let parsed: Vec<&[u8]> = frames.iter().map(|f| f.payload).collect();
            let expected: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(parsed, expected);

            let cut = cut_seed % (bytes.len() + 1);
            let (prefix, error) = parse_frames(&bytes[..cut], Some(first));
            prop_assert_eq!(&prefix[..], &frames[..prefix.len()]);
            if let Some(error) = error {
                let is_torn = matches!(error, FrameError::TornTail { .. });
                prop_assert!(is_torn);
            }
        }

        #[test]
        fn chunk_name_strings_never_panic(text in "ledger_[0-9a-z.+-]{0,24}") {
            if let Some(name) = ChunkName::parse(&text) {
                prop_assert_eq!(name.file_name(), text);
            }
        }

        #[test]
        fn chunk_name_values_round_trip(first in 1u64.., extra in proptest::option::of(any::<u64>())) {
            let last = extra.map(|extra| first.saturating_add(extra));
            let name = ChunkName { first, last };
            prop_assert_eq!(ChunkName::parse(&name.file_name()), Some(name));
        }
    }
}
