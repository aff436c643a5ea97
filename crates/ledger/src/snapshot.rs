//! Snapshots: the whole key-value state at a signature transaction, and what a node needs
//! besides to continue the ledger from the next seqno.
//!
//! A node starting from a snapshot at seqno `S` holds no ledger entry up to `S`. It needs the
//! store after `S`, the Merkle leaves of seqnos `1..=S` (to extend the tree and to build
//! receipts for old transactions), the signature records (receipts name the signature after a
//! transaction), the views (a TxID's view decides its status) and Raft's configuration
//! changes (to know the voters at `S`).
//!
//! # Format
//!
//! All integers are little endian; every node produces the same bytes for the same `S`.
//!
//! ```text
//! header      magic "CHSNAPSH" | version u32 (= 2) | flags u32 (= 0) | seqno u64 | view u64
//! public      u64 length | write set encoding of the public maps (values only, no removals)
//! leaves      u64 count (= seqno) | count × (write_set_digest 32 | claims_digest 32 | leaf 32)
//! signatures  u32 count | count × (seqno u64 | u32 length | JSON SignatureRecord)
//! views       u32 count | count × (view u64 | first seqno u64)
//! changes     u32 count | count × (seqno u64 | u32 length | protobuf ConfChangeV2)
//! private     u64 length | AES-256-GCM(write set encoding of the private maps) | tag
//! ```
//!
//! The write set encoding is `charter_kv::WriteSet`'s. The private section is always present
//! (it encrypts an empty write set when no private map has a key); its associated data is the
//! SHA-256 of every byte before the ciphertext, so a holder of the ledger secret detects any
//! change anywhere. (Version 1, still read, authenticated those bytes themselves: GHASH over a
//! prefix of megabytes cost a fifth of encoding a snapshot, while the SHA-256 is the first half
//! of the snapshot's digest, computed anyway.)
//! Its key is derived from the ledger secret for snapshots only, and its nonce from `S`, so it
//! never shares a key and nonce with a ledger entry.
//!
//! # Committed snapshots
//!
//! Once the evidence transaction recording the snapshot's SHA-256 digest (as its claims
//! digest) is committed, the node writes the *committed* form: the snapshot followed by the
//! receipt of that transaction (CCF's JSON receipt).
//!
//! ```text
//! magic "CHSNAPCM" | u64 snapshot length | snapshot | u32 receipt length | receipt JSON
//! ```
//!
//! [`verify_committed_snapshot`] checks one against the service certificate alone.

use std::collections::BTreeMap;

use charter_crypto::{
    hmac_sha256, sha256, Certificate, LedgerSecret, AEAD_NONCE_BYTES, AEAD_TAG_BYTES,
};
use charter_kv::{is_public_map, WriteSet};
use sha2::{Digest as _, Sha256};

use crate::merkle::MerkleTree;
use crate::{Digest, Receipt, SignatureRecord, SnapshotLeaves, TxId};

/// First bytes of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"CHSNAPSH";
/// First bytes of every committed snapshot file.
pub const COMMITTED_SNAPSHOT_MAGIC: [u8; 8] = *b"CHSNAPCM";
/// Version of the snapshot format written by this code.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;
/// The earlier format version, still decoded: the private section's associated data is the
/// prefix itself rather than its SHA-256.
pub const SNAPSHOT_FORMAT_VERSION_1: u32 = 1;
/// Bytes of the fixed header.
pub const SNAPSHOT_HEADER_BYTES: usize = 8 + 4 + 4 + 8 + 8;
/// Bytes of one leaf record: write set digest, claims digest, leaf.
pub const SNAPSHOT_LEAF_BYTES: usize = 96;
/// Longest signature record accepted (they are a few hundred bytes).
pub const SIGNATURE_RECORD_BYTES_MAX: usize = 16 << 10;
/// Longest configuration change accepted.
pub const CONF_CHANGE_BYTES_MAX: usize = 64 << 10;
/// Longest evidence receipt accepted in a committed snapshot.
pub const EVIDENCE_BYTES_MAX: usize = 1 << 20;
/// Largest snapshot accepted; larger states need a streaming format.
pub const SNAPSHOT_BYTES_MAX: u64 = 16 << 30;

const _: () = assert!(SNAPSHOT_HEADER_BYTES == 32);
const _: () = assert!(EVIDENCE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(SIGNATURE_RECORD_BYTES_MAX <= u32::MAX as usize);

/// Why snapshot bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The bytes end inside a field.
    #[error("snapshot truncated in its {0}")]
    Truncated(&'static str),
    /// A field has an impossible value.
    #[error("malformed snapshot: {0}")]
    Malformed(String),
    /// Written by a format version this code does not read.
    #[error("snapshot format version {0} is not supported (this node reads version 1)")]
    UnsupportedVersion(u32),
    /// The private maps do not decrypt: some byte was altered, or the ledger secret is wrong.
    #[error("snapshot at seqno {0} does not decrypt: altered bytes or the wrong ledger secret")]
    Decrypt(u64),
    /// The parts of the snapshot disagree with each other (e.g. the Merkle root over its leaves
    /// is not the one its signature transaction signed).
    #[error("inconsistent snapshot: {0}")]
    Inconsistent(String),
    /// The evidence receipt of a committed snapshot is invalid or does not match.
    #[error("snapshot evidence: {0}")]
    Evidence(String),
}

/// What a node remembers of one transaction for receipts, as a snapshot carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotLeaf {
    /// SHA-256 of the transaction's entry.
    pub write_set_digest: Digest,
    /// The transaction's claims digest.
    pub claims_digest: Digest,
    /// The transaction's Merkle leaf.
    pub leaf: Digest,
}

/// What a snapshot is made of, as the node core hands it over for encoding.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotContents<'a> {
    /// Seqno of the signature transaction the snapshot is taken at.
    pub seqno: u64,
    /// View of that transaction.
    pub view: u64,
    /// The store after applying every entry up to `seqno`.
    pub store: &'a charter_kv::Snapshot,
    /// One leaf per seqno `1..=seqno`.
    pub leaves: &'a SnapshotLeaves,
    /// Every signature record up to `seqno`, by increasing seqno (the last one at `seqno`).
    pub signatures: &'a [SignatureRecord],
    /// `(view, first seqno of that view)` pairs up to `seqno`, increasing.
    pub views: &'a [(u64, u64)],
    /// Raft configuration changes up to `seqno`: `(seqno, protobuf ConfChangeV2)`.
    pub conf_changes: &'a [(u64, Vec<u8>)],
}

/// A decoded snapshot, its private maps still encrypted.
#[derive(Clone, Debug)]
pub struct DecodedSnapshot<'a> {
    /// Seqno of the signature transaction the snapshot is taken at.
    pub seqno: u64,
    /// View of that transaction.
    pub view: u64,
    /// The public maps.
    pub public: WriteSet,
    /// One leaf per seqno `1..=seqno`.
    pub leaves: Vec<SnapshotLeaf>,
    /// Signature records by seqno.
    pub signatures: BTreeMap<u64, SignatureRecord>,
    /// `(view, first seqno of that view)` pairs, increasing.
    pub views: Vec<(u64, u64)>,
    /// Raft configuration changes: `(seqno, protobuf ConfChangeV2)`, increasing seqnos.
    pub conf_changes: Vec<(u64, Vec<u8>)>,
    /// Every byte before the private ciphertext (its associated data, or in version 2 that of
    /// its SHA-256).
    authenticated: &'a [u8],
    /// The format version.
    version: u32,
    /// The private ciphertext and tag.
    private: &'a [u8],
}

/// The key that encrypts snapshots' private maps, derived from the ledger secret so that it
/// never encrypts a ledger entry.
fn snapshot_key(secret: &LedgerSecret) -> LedgerSecret {
    LedgerSecret::from_bytes(hmac_sha256(secret.as_bytes(), b"charter snapshot key"))
}

/// The nonce of the snapshot at `seqno`: seqno (8 bytes LE) ‖ `snap`. One snapshot exists per
/// committed seqno, so a nonce never repeats under the snapshot key.
fn snapshot_nonce(seqno: u64) -> [u8; AEAD_NONCE_BYTES] {
    let mut nonce = [0u8; AEAD_NONCE_BYTES];
    nonce[..8].copy_from_slice(&seqno.to_le_bytes());
    nonce[8..].copy_from_slice(b"snap");
    nonce
}

/// Tag of an entry that sets a value in the write set encoding.
const TAG_VALUE: u8 = 1;

fn put_u32(out: &mut Vec<u8>, value: usize) {
    // Counts and lengths here are bounded by named maxima far below u32::MAX.
    let value = u32::try_from(value).expect("count fits in u32");
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Appends the write set encoding of the store's public (or private) maps, straight from the
/// store, without building a write set.
fn encode_maps(store: &charter_kv::Snapshot, public: bool, out: &mut Vec<u8>) {
    let names: Vec<String> = store
        .map_names()
        .into_iter()
        .filter(|name| is_public_map(name) == public)
        .collect();
    put_u32(out, names.len());
    for name in &names {
        put_u32(out, name.len());
        out.extend_from_slice(name.as_bytes());
        // One pass over the map (imbl's iterator compares keys at every step): the count is
        // patched in after the entries.
        let count_at = out.len();
        put_u32(out, 0);
        let mut count = 0usize;
        for (key, value) in store.entries(name) {
            put_u32(out, key.len());
            out.extend_from_slice(key);
            out.push(TAG_VALUE);
            put_u32(out, value.len());
            out.extend_from_slice(value);
            count += 1;
        }
        let count = u32::try_from(count).expect("entries per map fit in u32");
        out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    }
}

/// Encodes a snapshot, encrypting its private maps with a key derived from `secret`.
///
/// # Panics
/// If the contents are not those of a snapshot at a signature (a bug in the caller): fewer or
/// more leaves than `seqno`, no signature record at `seqno`, or records, views or changes out
/// of order or beyond `seqno`.
pub fn encode_snapshot(contents: &SnapshotContents<'_>, secret: &LedgerSecret) -> Vec<u8> {
    let mut out = Vec::new();
    encode_snapshot_into(contents, secret, &mut out);
    out
}

/// Appends the encoding of [`encode_snapshot`] to `out` and returns its SHA-256 digest (the
/// digest its evidence records), computed along the way.
///
/// Snapshots of a large state are megabytes: a writer that reuses one buffer (and puts its
/// own header in front) saves the page faults of a fresh allocation and the copies of a
/// growing one. The private maps are encrypted where they were encoded.
///
/// # Panics
/// As [`encode_snapshot`].
pub fn encode_snapshot_into(
    contents: &SnapshotContents<'_>,
    secret: &LedgerSecret,
    out: &mut Vec<u8>,
) -> Digest {
    let seqno = contents.seqno;
    assert!(seqno > 0, "a snapshot follows at least one entry");
    assert_eq!(contents.leaves.len() as u64, seqno, "one leaf per seqno");
    assert_eq!(
        contents.signatures.last().map(|record| record.seqno),
        Some(seqno),
        "a snapshot is taken at a signature"
    );
    assert!(contents
        .signatures
        .windows(2)
        .all(|pair| pair[0].seqno < pair[1].seqno));
    assert!(contents
        .views
        .windows(2)
        .all(|p| p[0].0 < p[1].0 && p[0].1 < p[1].1));
    assert!(contents
        .views
        .last()
        .is_some_and(|(view, first)| *view == contents.view && *first <= seqno));
    assert!(contents.conf_changes.windows(2).all(|p| p[0].0 < p[1].0));
    assert!(contents.conf_changes.iter().all(|(at, _)| *at <= seqno));

    let start = out.len();
    out.reserve(SNAPSHOT_HEADER_BYTES + contents.leaves.len() * SNAPSHOT_LEAF_BYTES + 4096);
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    put_u64(out, seqno);
    put_u64(out, contents.view);
    assert_eq!(out.len() - start, SNAPSHOT_HEADER_BYTES);

    // The public maps are encoded in place behind a length patched afterwards: encoding them
    // apart and copying them in, with the reallocations of both buffers, made memcpy most of
    // the cost of a snapshot of a large store.
    let length_at = out.len();
    put_u64(out, 0);
    encode_maps(contents.store, true, out);
    let public_bytes = (out.len() - length_at - 8) as u64;
    out[length_at..length_at + 8].copy_from_slice(&public_bytes.to_le_bytes());
    out.reserve(
        8 + contents.leaves.len() * SNAPSHOT_LEAF_BYTES
            + 4
            + contents.signatures.len() * (12 + SIGNATURE_RECORD_BYTES_MAX.min(512)),
    );

    put_u64(out, contents.leaves.len() as u64);
    for chunk in contents.leaves.chunks() {
        for leaf in chunk {
            out.extend_from_slice(&leaf.write_set_digest);
            out.extend_from_slice(&leaf.claims_digest);
            out.extend_from_slice(&leaf.leaf);
        }
    }

    put_u32(out, contents.signatures.len());
    for record in contents.signatures {
        // Serializing a struct of strings and integers cannot fail; field order is fixed.
        let json = serde_json::to_vec(record).expect("signature record serializes");
        assert!(json.len() <= SIGNATURE_RECORD_BYTES_MAX);
        put_u64(out, record.seqno);
        put_u32(out, json.len());
        out.extend_from_slice(&json);
    }

    put_u32(out, contents.views.len());
    for (view, first) in contents.views {
        put_u64(out, *view);
        put_u64(out, *first);
    }

    put_u32(out, contents.conf_changes.len());
    for (at, change) in contents.conf_changes {
        assert!(change.len() <= CONF_CHANGE_BYTES_MAX);
        put_u64(out, *at);
        put_u32(out, change.len());
        out.extend_from_slice(change);
    }

    // The private maps are encoded behind their length (patched afterwards) and encrypted in
    // place; the associated data is the SHA-256 of every byte of the snapshot before them,
    // which is also the first part of the snapshot's digest.
    let length_at = out.len();
    put_u64(out, 0);
    let private_at = out.len();
    encode_maps(contents.store, false, out);
    let sealed_bytes = (out.len() - private_at + AEAD_TAG_BYTES) as u64;
    out[length_at..private_at].copy_from_slice(&sealed_bytes.to_le_bytes());
    let mut digest = Sha256::new();
    digest.update(&out[start..private_at]);
    let associated: Digest = digest.clone().finalize().into();
    let tag = snapshot_key(secret).encrypt_in_place(
        &snapshot_nonce(seqno),
        &associated,
        &mut out[private_at..],
    );
    out.extend_from_slice(&tag);
    digest.update(&out[private_at..]);
    digest.finalize().into()
}

/// A cursor over snapshot bytes whose reads fail with [`SnapshotError::Truncated`].
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], SnapshotError> {
        let remaining = self.bytes.len() - self.position;
        let len = usize::try_from(len).map_err(|_| SnapshotError::Truncated(what))?;
        if len > remaining {
            return Err(SnapshotError::Truncated(what));
        }
        let slice = &self.bytes[self.position..self.position + len];
        self.position += len;
        Ok(slice)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, SnapshotError> {
        let bytes = self.take(4, what)?;
        let mut array = [0u8; 4];
        array.copy_from_slice(bytes);
        Ok(u32::from_le_bytes(array))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, SnapshotError> {
        let bytes = self.take(8, what)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }

    fn digest(&mut self, what: &'static str) -> Result<Digest, SnapshotError> {
        let bytes = self.take(32, what)?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(bytes);
        Ok(digest)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }
}

fn malformed(reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Malformed(reason.into())
}

/// Checks that a decoded map section holds only values, of maps of the right domain.
fn check_maps(maps: &WriteSet, public: bool) -> Result<(), SnapshotError> {
    for (name, entries) in &maps.maps {
        if is_public_map(name) != public {
            let section = if public { "public" } else { "private" };
            return Err(malformed(format!("map {name:?} in the {section} section")));
        }
        if entries.is_empty() {
            return Err(malformed(format!("map {name:?} has no entries")));
        }
        if entries.values().any(Option::is_none) {
            return Err(malformed(format!("map {name:?} holds a removal")));
        }
    }
    Ok(())
}

/// Decodes a snapshot and checks its structure, without decrypting its private maps.
///
/// # Errors
/// [`SnapshotError`] naming what is wrong; never panics, whatever the bytes.
pub fn decode_snapshot(bytes: &[u8]) -> Result<DecodedSnapshot<'_>, SnapshotError> {
    if bytes.len() as u64 > SNAPSHOT_BYTES_MAX {
        return Err(malformed(format!(
            "{} bytes, above the limit of {SNAPSHOT_BYTES_MAX}",
            bytes.len()
        )));
    }
    let mut reader = Reader { bytes, position: 0 };
    if reader.take(8, "magic")? != SNAPSHOT_MAGIC {
        return Err(malformed("not a snapshot (bad magic)"));
    }
    let version = reader.u32("header")?;
    if version != SNAPSHOT_FORMAT_VERSION && version != SNAPSHOT_FORMAT_VERSION_1 {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    if reader.u32("header")? != 0 {
        return Err(malformed("flags are not zero"));
    }
    let seqno = reader.u64("header")?;
    let view = reader.u64("header")?;
    if seqno == 0 {
        return Err(malformed("seqno 0"));
    }

    let public_len = reader.u64("public maps")?;
    let public = WriteSet::decode(reader.take(public_len, "public maps")?)
        .map_err(|error| malformed(format!("public maps: {error}")))?;
    check_maps(&public, true)?;

    let leaf_count = reader.u64("leaves")?;
    if leaf_count != seqno {
        return Err(malformed(format!(
            "{leaf_count} leaves for a snapshot at seqno {seqno}"
        )));
    }
    // Bounded by the input before anything is allocated.
    let leaf_bytes = leaf_count
        .checked_mul(SNAPSHOT_LEAF_BYTES as u64)
        .ok_or(SnapshotError::Truncated("leaves"))?;
    if leaf_bytes > reader.remaining() as u64 {
        return Err(SnapshotError::Truncated("leaves"));
    }
    let mut leaves = Vec::with_capacity(leaf_count as usize);
    for _ in 0..leaf_count {
        leaves.push(SnapshotLeaf {
            write_set_digest: reader.digest("leaves")?,
            claims_digest: reader.digest("leaves")?,
            leaf: reader.digest("leaves")?,
        });
    }

    let signature_count = reader.u32("signatures")?;
    let mut signatures = BTreeMap::new();
    for _ in 0..signature_count {
        let at = reader.u64("signatures")?;
        let len = reader.u32("signatures")? as usize;
        if len > SIGNATURE_RECORD_BYTES_MAX {
            return Err(malformed(format!("signature record of {len} bytes")));
        }
        let json = reader.take(len as u64, "signatures")?;
        let record: SignatureRecord = serde_json::from_slice(json)
            .map_err(|error| malformed(format!("signature record at {at}: {error}")))?;
        if record.seqno != at {
            return Err(malformed(format!(
                "signature record for seqno {} listed at {at}",
                record.seqno
            )));
        }
        if signatures
            .last_key_value()
            .is_some_and(|(last, _)| *last >= at)
            || at > seqno
        {
            return Err(malformed(format!("signature seqno {at} out of order")));
        }
        signatures.insert(at, record);
    }
    match signatures.get(&seqno) {
        Some(record) if record.view == view => {}
        Some(record) => {
            return Err(malformed(format!(
                "signature at {seqno} is of view {} but the snapshot says {view}",
                record.view
            )))
        }
        None => {
            return Err(malformed(format!(
                "no signature record at the snapshot's seqno {seqno}"
            )))
        }
    }

    let view_count = reader.u32("views")?;
    if u64::from(view_count) * 16 > reader.remaining() as u64 {
        return Err(SnapshotError::Truncated("views"));
    }
    let mut views: Vec<(u64, u64)> = Vec::with_capacity(view_count as usize);
    for _ in 0..view_count {
        let entry = (reader.u64("views")?, reader.u64("views")?);
        let ordered = match views.last() {
            None => entry.1 == 1,
            Some(last) => last.0 < entry.0 && last.1 < entry.1,
        };
        if !ordered || entry.1 > seqno {
            return Err(malformed(format!(
                "view {} from seqno {} out of order",
                entry.0, entry.1
            )));
        }
        views.push(entry);
    }
    if views.last().map(|(last, _)| *last) != Some(view) {
        return Err(malformed(format!(
            "the view history does not end with the snapshot's view {view}"
        )));
    }
    for (at, record) in &signatures {
        if view_at(&views, *at) != Some(record.view) {
            return Err(malformed(format!(
                "signature at {at} is of view {} against the view history",
                record.view
            )));
        }
    }

    let change_count = reader.u32("configuration changes")?;
    let mut conf_changes: Vec<(u64, Vec<u8>)> = Vec::new();
    for _ in 0..change_count {
        let at = reader.u64("configuration changes")?;
        let len = reader.u32("configuration changes")? as usize;
        if len > CONF_CHANGE_BYTES_MAX {
            return Err(malformed(format!("configuration change of {len} bytes")));
        }
        let change = reader.take(len as u64, "configuration changes")?;
        if conf_changes.last().is_some_and(|(last, _)| *last >= at) || at > seqno || at == 0 {
            return Err(malformed(format!(
                "configuration change at seqno {at} out of order"
            )));
        }
        conf_changes.push((at, change.to_vec()));
    }

    let private_len = reader.u64("private maps")?;
    let authenticated = &bytes[..reader.position];
    let private = reader.take(private_len, "private maps")?;
    if private.len() < AEAD_TAG_BYTES {
        return Err(malformed("private section shorter than its tag"));
    }
    if reader.remaining() != 0 {
        return Err(malformed(format!(
            "{} trailing bytes after the private maps",
            reader.remaining()
        )));
    }
    Ok(DecodedSnapshot {
        seqno,
        view,
        public,
        leaves,
        signatures,
        views,
        conf_changes,
        authenticated,
        version,
        private,
    })
}

/// The view of `seqno` according to a view history of `(view, first seqno)` pairs.
pub fn view_at(views: &[(u64, u64)], seqno: u64) -> Option<u64> {
    if seqno == 0 {
        return None;
    }
    let index = views.partition_point(|(_, first)| *first <= seqno);
    index.checked_sub(1).map(|index| views[index].0)
}

impl DecodedSnapshot<'_> {
    /// Decrypts and decodes the private maps.
    ///
    /// # Errors
    /// [`SnapshotError::Decrypt`] if any byte of the snapshot was altered or the secret is
    /// wrong; [`SnapshotError::Malformed`] if the decrypted maps do not decode.
    pub fn decrypt_private(&self, secret: &LedgerSecret) -> Result<WriteSet, SnapshotError> {
        let hashed: Digest;
        let associated = if self.version == SNAPSHOT_FORMAT_VERSION_1 {
            self.authenticated
        } else {
            hashed = sha256(self.authenticated);
            &hashed[..]
        };
        let plain = snapshot_key(secret)
            .decrypt(&snapshot_nonce(self.seqno), associated, self.private)
            .map_err(|_| SnapshotError::Decrypt(self.seqno))?;
        let private = WriteSet::decode(&plain)
            .map_err(|error| malformed(format!("private maps: {error}")))?;
        check_maps(&private, false)?;
        Ok(private)
    }

    /// Builds the Merkle tree over the snapshot's leaves and checks that the signature at the
    /// snapshot's seqno signed its root (over the leaves before it).
    ///
    /// # Errors
    /// [`SnapshotError::Inconsistent`] if the roots differ.
    pub fn tree(&self) -> Result<MerkleTree, SnapshotError> {
        let mut tree = MerkleTree::new();
        for leaf in &self.leaves {
            tree.append(leaf.leaf);
        }
        assert_eq!(tree.len(), self.seqno);
        let signed = self
            .signatures
            .get(&self.seqno)
            .ok_or_else(|| SnapshotError::Inconsistent("no signature at its seqno".into()))?
            .root_digest()
            .map_err(|error| SnapshotError::Inconsistent(format!("signature root: {error}")))?;
        if self.seqno < 2 || tree.root_at(self.seqno - 1) != Some(signed) {
            return Err(SnapshotError::Inconsistent(format!(
                "the Merkle root over the leaves before seqno {} is not the root its signature \
                 signed",
                self.seqno
            )));
        }
        Ok(tree)
    }
}

/// The committed form of a snapshot: the snapshot followed by the receipt of its evidence
/// transaction.
pub fn encode_committed_snapshot(snapshot: &[u8], evidence: &[u8]) -> Vec<u8> {
    assert!(
        evidence.len() <= EVIDENCE_BYTES_MAX,
        "evidence receipt too large"
    );
    let mut out =
        Vec::with_capacity(COMMITTED_SNAPSHOT_PREFIX_BYTES + snapshot.len() + 4 + evidence.len());
    out.extend_from_slice(&committed_snapshot_prefix(snapshot.len() as u64));
    out.extend_from_slice(snapshot);
    put_u32(&mut out, evidence.len());
    out.extend_from_slice(evidence);
    out
}

/// Bytes of a committed snapshot file before the snapshot: magic and snapshot length.
pub const COMMITTED_SNAPSHOT_PREFIX_BYTES: usize = 16;

/// The first bytes of the committed snapshot file of a snapshot of `snapshot_len` bytes; the
/// evidence (u32 LE length and receipt JSON) follows the snapshot, so a writer can lay the file
/// out before the evidence exists and append it later.
pub fn committed_snapshot_prefix(snapshot_len: u64) -> [u8; COMMITTED_SNAPSHOT_PREFIX_BYTES] {
    let mut prefix = [0u8; COMMITTED_SNAPSHOT_PREFIX_BYTES];
    prefix[..8].copy_from_slice(&COMMITTED_SNAPSHOT_MAGIC);
    prefix[8..].copy_from_slice(&snapshot_len.to_le_bytes());
    prefix
}

/// The u32 LE length in front of `evidence` in a committed snapshot file.
///
/// # Panics
/// If the evidence is over [`EVIDENCE_BYTES_MAX`] (receipts are a few kilobytes).
pub fn committed_snapshot_evidence_length(evidence: &[u8]) -> [u8; 4] {
    assert!(
        evidence.len() <= EVIDENCE_BYTES_MAX,
        "evidence receipt too large"
    );
    (evidence.len() as u32).to_le_bytes()
}

/// A committed snapshot file split into its parts (nothing verified yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommittedSnapshot<'a> {
    /// The snapshot bytes.
    pub snapshot: &'a [u8],
    /// The JSON receipt of the evidence transaction.
    pub evidence: &'a [u8],
}

/// Splits a committed snapshot file.
///
/// # Errors
/// [`SnapshotError::Malformed`] or [`SnapshotError::Truncated`] unless the file is exactly
/// magic, snapshot and receipt.
pub fn split_committed_snapshot(bytes: &[u8]) -> Result<CommittedSnapshot<'_>, SnapshotError> {
    let mut reader = Reader { bytes, position: 0 };
    if reader.take(8, "committed snapshot magic")? != COMMITTED_SNAPSHOT_MAGIC {
        return Err(malformed("not a committed snapshot file (bad magic)"));
    }
    let snapshot_len = reader.u64("committed snapshot")?;
    let snapshot = reader.take(snapshot_len, "committed snapshot")?;
    let evidence_len = reader.u32("evidence receipt")? as usize;
    if evidence_len > EVIDENCE_BYTES_MAX {
        return Err(malformed(format!(
            "evidence receipt of {evidence_len} bytes"
        )));
    }
    let evidence = reader.take(evidence_len as u64, "evidence receipt")?;
    if reader.remaining() != 0 {
        return Err(malformed(format!(
            "{} trailing bytes after the evidence receipt",
            reader.remaining()
        )));
    }
    Ok(CommittedSnapshot { snapshot, evidence })
}

/// A committed snapshot whose evidence verified.
#[derive(Clone, Debug)]
pub struct VerifiedSnapshot<'a> {
    /// The decoded snapshot (private maps still encrypted).
    pub snapshot: DecodedSnapshot<'a>,
    /// The Merkle tree over its leaves.
    pub tree: MerkleTree,
    /// The receipt of the evidence transaction.
    pub evidence: Receipt,
    /// The evidence transaction's ID (from its commit evidence).
    pub evidence_tx_id: TxId,
    /// SHA-256 of the snapshot bytes.
    pub digest: Digest,
}

/// The TxID that a commit evidence string (`ce:VIEW.SEQNO:HEX`) names.
fn evidence_tx_id(commit_evidence: &str) -> Option<TxId> {
    let rest = commit_evidence.strip_prefix("ce:")?;
    let (tx_id, _) = rest.split_once(':')?;
    tx_id.parse().ok()
}

/// The one JSON spelling of a receipt that nodes write: snake_case keys, lowercase hex,
/// certificates re-encoded from their DER, canonical base64.
fn canonical_receipt_json(receipt: &Receipt) -> Result<Vec<u8>, SnapshotError> {
    use base64::Engine as _;
    let bad = |what: &str, error: String| SnapshotError::Evidence(format!("{what}: {error}"));
    let pem = |text: &str| -> Result<String, SnapshotError> {
        Certificate::from_pem(text)
            .map(|cert| cert.to_pem())
            .map_err(|error| bad("certificate", error.to_string()))
    };
    let mut normal = receipt.clone();
    normal.cert = pem(&normal.cert)?;
    for endorsement in &mut normal.service_endorsements {
        *endorsement = pem(endorsement)?;
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let signature = engine
        .decode(&normal.signature)
        .map_err(|error| bad("signature", error.to_string()))?;
    normal.signature = engine.encode(signature);
    normal.node_id.make_ascii_lowercase();
    normal
        .leaf_components
        .write_set_digest
        .make_ascii_lowercase();
    normal.leaf_components.claims_digest.make_ascii_lowercase();
    for element in &mut normal.proof {
        for digest in [&mut element.left, &mut element.right]
            .into_iter()
            .flatten()
        {
            digest.make_ascii_lowercase();
        }
    }
    serde_json::to_vec(&normal.to_json()).map_err(|error| bad("receipt", error.to_string()))
}

/// Verifies a committed snapshot file with nothing but the service certificate: the evidence
/// receipt verifies (its signer is endorsed by the service), its claims digest is the SHA-256
/// of the snapshot, its transaction comes after the snapshot, and the snapshot decodes with
/// a Merkle root equal to the one signed at its seqno.
///
/// Holders of the ledger secret should also call [`DecodedSnapshot::decrypt_private`] and
/// compare the receipt's commit evidence with [`crate::commit_evidence`].
///
/// # Errors
/// [`SnapshotError`] naming the first problem found.
pub fn verify_committed_snapshot<'a>(
    bytes: &'a [u8],
    service_cert: &Certificate,
) -> Result<VerifiedSnapshot<'a>, SnapshotError> {
    let parts = split_committed_snapshot(bytes)?;
    let json: serde_json::Value = serde_json::from_slice(parts.evidence)
        .map_err(|error| SnapshotError::Evidence(format!("receipt is not JSON: {error}")))?;
    let evidence =
        Receipt::from_json(&json).map_err(|error| SnapshotError::Evidence(error.to_string()))?;
    // Receipt parsing ignores unknown fields and accepts several spellings of one value (key
    // case, hex case, PEM layout); the file must hold the one canonical form, so that no byte
    // of it can change unnoticed.
    if canonical_receipt_json(&evidence)? != parts.evidence {
        return Err(SnapshotError::Evidence(
            "the receipt is not in its canonical JSON form".into(),
        ));
    }
    // The cheap checks come first; the signature last.
    let digest = sha256(parts.snapshot);
    if evidence.leaf_components.claims_digest != hex::encode(digest) {
        return Err(SnapshotError::Evidence(format!(
            "the receipt's claims digest {} is not the snapshot's digest {}",
            evidence.leaf_components.claims_digest,
            hex::encode(digest)
        )));
    }
    let evidence_tx_id = evidence_tx_id(&evidence.leaf_components.commit_evidence)
        .ok_or_else(|| SnapshotError::Evidence("commit evidence names no TxID".into()))?;
    let snapshot = decode_snapshot(parts.snapshot)?;
    if evidence_tx_id.seqno <= snapshot.seqno {
        return Err(SnapshotError::Evidence(format!(
            "evidence transaction {evidence_tx_id} does not come after the snapshot at {}",
            snapshot.seqno
        )));
    }
    evidence
        .verify(service_cert)
        .map_err(|error| SnapshotError::Evidence(error.to_string()))?;
    let tree = snapshot.tree()?;
    Ok(VerifiedSnapshot {
        snapshot,
        tree,
        evidence,
        evidence_tx_id,
        digest,
    })
}

/// The record an evidence transaction writes in
/// [`SNAPSHOT_EVIDENCE_MAP`](crate::tables::SNAPSHOT_EVIDENCE_MAP), under the snapshot's seqno
/// in decimal.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotEvidence {
    /// Seqno of the snapshot.
    pub seqno: u64,
    /// Hex SHA-256 of the snapshot bytes.
    pub digest: String,
}

impl SnapshotEvidence {
    /// The digest as bytes, if it is 64 hex digits.
    pub fn digest_bytes(&self) -> Option<Digest> {
        if self.digest.len() != 64 {
            return None;
        }
        hex::decode(&self.digest).ok()?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use charter_crypto::{CertificateSpec, SigningKey, Validity};
    use charter_kv::Store;

    fn secret() -> LedgerSecret {
        LedgerSecret::from_bytes([9; 32])
    }

    struct Sample {
        store: Store,
        leaves: SnapshotLeaves,
        signatures: Vec<SignatureRecord>,
        views: Vec<(u64, u64)>,
        conf_changes: Vec<(u64, Vec<u8>)>,
    }

    impl Sample {
        fn contents<'a>(&'a self, store: &'a charter_kv::Snapshot) -> SnapshotContents<'a> {
            SnapshotContents {
                seqno: self.leaves.len() as u64,
                view: 2,
                store,
                leaves: &self.leaves,
                signatures: &self.signatures,
                views: &self.views,
                conf_changes: &self.conf_changes,
            }
        }
    }

    /// Five entries: a signature at 3 (view 1) and at 5 (view 2); a node key signs roots.
    fn sample(key: &SigningKey) -> Sample {
        let mut store = Store::new();
        let mut write_set = WriteSet::new();
        write_set.put("public:charter.internal.nodes", b"n1", b"{}");
        write_set.put("public:kv", b"a", b"1");
        write_set.put("kv", b"secret-key", b"SECRET-MARKER");
        write_set.put("kv", b"b", b"");
        store.apply(&write_set, 4);
        let mut removal = WriteSet::new();
        removal.remove("public:kv", b"gone");
        removal.put("public:kv", b"gone", b"x");
        store.apply(&removal, 5);
        let mut gone = WriteSet::new();
        gone.remove("public:kv", b"gone");
        store.apply(&gone, 6);
        let mut tree = MerkleTree::new();
        let mut leaves = Vec::new();
        let mut signatures = Vec::new();
        for seqno in 1..=5u64 {
            let view = if seqno <= 3 { 1 } else { 2 };
            if seqno == 3 || seqno == 5 {
                let root = tree.root().unwrap();
                let signature = key.sign_digest(&root).unwrap();
                signatures.push(SignatureRecord {
                    view,
                    seqno,
                    root: hex::encode(root),
                    node_id: key.verifying_key().id_hex(),
                    signature: base64::engine::general_purpose::STANDARD.encode(signature),
                });
            }
            let leaf = SnapshotLeaf {
                write_set_digest: [seqno as u8; 32],
                claims_digest: [0; 32],
                leaf: sha256(&seqno.to_le_bytes()),
            };
            tree.append(leaf.leaf);
            leaves.push(leaf);
        }
        Sample {
            store,
            leaves: leaves.into_iter().collect(),
            signatures,
            views: vec![(1, 1), (2, 4)],
            conf_changes: vec![(2, vec![1, 2, 3])],
        }
    }

    fn encode(sample: &Sample) -> Vec<u8> {
        let snapshot = sample.store.snapshot();
        encode_snapshot(&sample.contents(&snapshot), &secret())
    }

    fn key() -> SigningKey {
        SigningKey::from_seed(&[4; 32]).unwrap()
    }

    #[test]
    fn round_trip_and_determinism() {
        let sample = sample(&key());
        let bytes = encode(&sample);
        assert_eq!(bytes, encode(&sample), "encoding is deterministic");
        assert!(!bytes.windows(13).any(|w| w == b"SECRET-MARKER"));
        let decoded = decode_snapshot(&bytes).unwrap();
        assert_eq!(decoded.seqno, 5);
        assert_eq!(decoded.view, 2);
        assert_eq!(
            decoded.leaves,
            sample.leaves.iter().copied().collect::<Vec<_>>()
        );
        assert_eq!(decoded.views, sample.views);
        assert_eq!(decoded.conf_changes, sample.conf_changes);
        assert_eq!(
            decoded.signatures.values().cloned().collect::<Vec<_>>(),
            sample.signatures
        );
        // Removed keys are not in a snapshot; every present one is, in its domain.
        let public = &decoded.public;
        assert_eq!(public.get("public:kv", b"a"), Some(Some(&b"1"[..])));
        assert_eq!(public.get("public:kv", b"gone"), None);
        assert!(!public.maps.contains_key("kv"));
        let private = decoded.decrypt_private(&secret()).unwrap();
        assert_eq!(
            private.get("kv", b"secret-key"),
            Some(Some(&b"SECRET-MARKER"[..]))
        );
        assert_eq!(private.get("kv", b"b"), Some(Some(&b""[..])));
        assert_eq!(private.len(), 2);
        let tree = decoded.tree().unwrap();
        assert_eq!(tree.len(), 5);
        assert!(matches!(
            decoded.decrypt_private(&LedgerSecret::from_bytes([8; 32])),
            Err(SnapshotError::Decrypt(5))
        ));
        assert_eq!(view_at(&decoded.views, 3), Some(1));
        assert_eq!(view_at(&decoded.views, 4), Some(2));
        assert_eq!(view_at(&decoded.views, 0), None);
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let sample = sample(&key());
        let bytes = encode(&sample);
        for index in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[index] ^= 0x01;
            let refused = match decode_snapshot(&altered) {
                Err(_) => true,
                Ok(decoded) => decoded.decrypt_private(&secret()).is_err(),
            };
            assert!(refused, "a flip of byte {index} went unnoticed");
        }
    }

    #[test]
    fn truncations_and_garbage_never_panic() {
        let bytes = encode(&sample(&key()));
        for len in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..len]).is_err(), "length {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_snapshot(&longer).is_err());
        for length in 0..300 {
            let garbage: Vec<u8> = (0..length).map(|i| (i * 31 % 251) as u8).collect();
            let _ = decode_snapshot(&garbage);
            let _ = split_committed_snapshot(&garbage);
        }
        // A huge leaf count does not allocate before the input runs out.
        let mut huge = bytes[..SNAPSHOT_HEADER_BYTES].to_vec();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        huge.extend_from_slice(&4u64.to_le_bytes());
        huge.extend_from_slice(&0u32.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_snapshot(&huge).is_err());
    }

    #[test]
    fn the_digest_is_the_sha256_of_the_bytes_and_version_1_still_decodes() {
        let sample = sample(&key());
        let store = sample.store.snapshot();
        let mut out = b"kept".to_vec();
        let digest = encode_snapshot_into(&sample.contents(&store), &secret(), &mut out);
        assert_eq!(&out[..4], b"kept");
        let bytes = &out[4..];
        assert_eq!(bytes, encode(&sample));
        assert_eq!(digest, sha256(bytes));

        // A version 1 snapshot: the same prefix, its private maps sealed with the prefix
        // itself as associated data.
        let decoded = decode_snapshot(bytes).unwrap();
        let private = decoded.decrypt_private(&secret()).unwrap();
        let mut old = decoded.authenticated.to_vec();
        old[8..12].copy_from_slice(&SNAPSHOT_FORMAT_VERSION_1.to_le_bytes());
        let sealed = snapshot_key(&secret()).encrypt(
            &snapshot_nonce(decoded.seqno),
            &old,
            &private.to_bytes(),
        );
        old.extend_from_slice(&sealed);
        let decoded_old = decode_snapshot(&old).unwrap();
        assert_eq!(decoded_old.public, decoded.public);
        assert_eq!(decoded_old.decrypt_private(&secret()).unwrap(), private);
        // Version 2 associated data does not open a version 1 snapshot, and the other way round.
        let mut relabelled = old.clone();
        relabelled[8..12].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        assert!(matches!(
            decode_snapshot(&relabelled)
                .unwrap()
                .decrypt_private(&secret()),
            Err(SnapshotError::Decrypt(_))
        ));
    }

    #[test]
    fn a_wrong_version_or_root_is_named() {
        let sample = sample(&key());
        let mut bytes = encode(&sample);
        bytes[8] = 3;
        assert_eq!(
            decode_snapshot(&bytes).unwrap_err(),
            SnapshotError::UnsupportedVersion(3)
        );
        // Leaves that do not hash to the signed root are caught even without the secret.
        let mut bad = sample;
        let mut leaves: Vec<SnapshotLeaf> = bad.leaves.iter().copied().collect();
        leaves[0].leaf = [0xaa; 32];
        bad.leaves = leaves.into_iter().collect();
        let bytes = encode(&bad);
        let decoded = decode_snapshot(&bytes).unwrap();
        assert!(matches!(
            decoded.tree(),
            Err(SnapshotError::Inconsistent(_))
        ));
    }

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

    /// A committed file whose evidence is a one-transaction tree: the evidence transaction at
    /// seqno 7 with the snapshot digest as claims digest, signed by an endorsed node.
    fn committed(snapshot: &[u8], claims: Digest) -> (Certificate, Vec<u8>) {
        let service_key = SigningKey::from_seed(&[1; 32]).unwrap();
        let service = Certificate::self_signed(&service_key, &spec("service", true)).unwrap();
        let node_key = key();
        let node_cert = Certificate::issue(
            &node_key.verifying_key(),
            &spec("node", false),
            &service_key,
            &service,
        )
        .unwrap();
        let evidence = crate::commit_evidence(&secret(), TxId::new(2, 7));
        let write_set_digest = [7; 32];
        let leaf = crate::leaf_hash(
            &write_set_digest,
            &crate::commit_evidence_digest(&evidence),
            &claims,
        );
        let signature = node_key.sign_digest(&leaf).unwrap();
        let receipt = Receipt::new(
            &node_cert,
            &signature,
            &[],
            &write_set_digest,
            &evidence,
            &claims,
            Vec::new(),
        );
        let json = serde_json::to_vec(&receipt.to_json()).unwrap();
        (service, encode_committed_snapshot(snapshot, &json))
    }

    #[test]
    fn committed_snapshots_verify_against_the_service_certificate() {
        let bytes = encode(&sample(&key()));
        let (service, file) = committed(&bytes, sha256(&bytes));
        let verified = verify_committed_snapshot(&file, &service).unwrap();
        assert_eq!(verified.snapshot.seqno, 5);
        assert_eq!(verified.evidence_tx_id, TxId::new(2, 7));
        assert_eq!(verified.digest, sha256(&bytes));
        let parts = split_committed_snapshot(&file).unwrap();
        assert_eq!(parts.snapshot, &bytes[..]);

        // Evidence for other bytes.
        let (service, file) = committed(&bytes, [0; 32]);
        let error = verify_committed_snapshot(&file, &service).unwrap_err();
        assert!(error.to_string().contains("claims digest"), "{error}");

        // Another service.
        let other_key = SigningKey::from_seed(&[2; 32]).unwrap();
        let other = Certificate::self_signed(&other_key, &spec("other", true)).unwrap();
        let (_, file) = committed(&bytes, sha256(&bytes));
        let error = verify_committed_snapshot(&file, &other).unwrap_err();
        assert!(matches!(error, SnapshotError::Evidence(_)), "{error}");

        // Every flipped byte of the committed file is refused by verification or decryption.
        let (service, file) = committed(&bytes, sha256(&bytes));
        for index in (0..file.len()).step_by(3) {
            let mut altered = file.clone();
            // 0x20 turns letters into their other case: hex and PEM must not be case-blind.
            altered[index] ^= if index % 2 == 0 { 0x20 } else { 0x01 };
            let refused = match verify_committed_snapshot(&altered, &service) {
                Err(_) => true,
                Ok(verified) => verified.snapshot.decrypt_private(&secret()).is_err(),
            };
            assert!(refused, "byte {index}");
        }
    }

    #[test]
    fn evidence_records_parse() {
        let record = SnapshotEvidence {
            seqno: 5,
            digest: hex::encode([3u8; 32]),
        };
        assert_eq!(record.digest_bytes(), Some([3; 32]));
        let bad = SnapshotEvidence {
            seqno: 5,
            digest: "zz".into(),
        };
        assert_eq!(bad.digest_bytes(), None);
        assert_eq!(evidence_tx_id("ce:2.7:abcd"), Some(TxId::new(2, 7)));
        assert_eq!(evidence_tx_id("ce:2.7"), None);
        assert_eq!(evidence_tx_id("xx:2.7:ab"), None);
    }
}
