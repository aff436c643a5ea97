//! Write sets: the buffered writes of one transaction, and their deterministic encoding.

use std::collections::BTreeMap;

use crate::{is_public_map, KvError, KEY_BYTES_MAX, MAP_NAME_BYTES_MAX, VALUE_BYTES_MAX};

/// Tag byte of an encoded entry that removes its key.
const TAG_REMOVED: u8 = 0;
/// Tag byte of an encoded entry that sets its key to a value.
const TAG_VALUE: u8 = 1;

/// The writes of one transaction, ordered by map name then key. `None` is a removal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteSet {
    /// Map name to (key to new value, or `None` for a removal).
    pub maps: BTreeMap<String, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

/// Checks a map name, key and optional value against the named maxima.
///
/// # Errors
///
/// [`KvError::MapNameEmpty`] or [`KvError::TooLarge`].
pub fn check_limits(map: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), KvError> {
    if map.is_empty() {
        return Err(KvError::MapNameEmpty);
    }
    check_len("map name", map.len(), MAP_NAME_BYTES_MAX)?;
    check_len("key", key.len(), KEY_BYTES_MAX)?;
    if let Some(value) = value {
        check_len("value", value.len(), VALUE_BYTES_MAX)?;
    }
    Ok(())
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), KvError> {
    if len > max {
        return Err(KvError::TooLarge { what, len, max });
    }
    Ok(())
}

/// Asserts the limits for our own state (callers that want an `Err` use [`check_limits`]).
fn assert_limits(map: &str, key: &[u8], value: Option<&[u8]>) {
    if let Err(error) = check_limits(map, key, value) {
        panic!("write set limit violated: {error}");
    }
}

impl WriteSet {
    /// An empty write set.
    pub fn new() -> WriteSet {
        WriteSet::default()
    }

    /// Records that `key` in `map` is set to `value`, replacing any earlier write of it.
    ///
    /// # Panics
    ///
    /// If the map name is empty or any length is above its maximum; use [`WriteSet::try_put`]
    /// for outside input.
    pub fn put(&mut self, map: &str, key: &[u8], value: &[u8]) {
        assert_limits(map, key, Some(value));
        self.insert(map, key, Some(value.to_vec()));
    }

    /// Like [`WriteSet::put`], but returns an error instead of panicking.
    ///
    /// # Errors
    ///
    /// [`KvError::MapNameEmpty`] or [`KvError::TooLarge`].
    pub fn try_put(&mut self, map: &str, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        check_limits(map, key, Some(value))?;
        self.insert(map, key, Some(value.to_vec()));
        Ok(())
    }

    /// Records that `key` in `map` is removed (even if it does not exist).
    ///
    /// # Panics
    ///
    /// If the map name is empty or any length is above its maximum; use
    /// [`WriteSet::try_remove`] for outside input.
    pub fn remove(&mut self, map: &str, key: &[u8]) {
        assert_limits(map, key, None);
        self.insert(map, key, None);
    }

    /// Like [`WriteSet::remove`], but returns an error instead of panicking.
    ///
    /// # Errors
    ///
    /// [`KvError::MapNameEmpty`] or [`KvError::TooLarge`].
    pub fn try_remove(&mut self, map: &str, key: &[u8]) -> Result<(), KvError> {
        check_limits(map, key, None)?;
        self.insert(map, key, None);
        Ok(())
    }

    fn insert(&mut self, map: &str, key: &[u8], value: Option<Vec<u8>>) {
        match self.maps.get_mut(map) {
            Some(entries) => {
                entries.insert(key.to_vec(), value);
            }
            None => {
                let entries = BTreeMap::from([(key.to_vec(), value)]);
                self.maps.insert(map.to_owned(), entries);
            }
        }
    }

    /// The write of `key` in `map`, if any: `Some(None)` is a removal.
    pub fn get(&self, map: &str, key: &[u8]) -> Option<Option<&[u8]>> {
        let value = self.maps.get(map)?.get(key)?;
        Some(value.as_deref())
    }

    /// True if no map has any entry.
    pub fn is_empty(&self) -> bool {
        self.maps.values().all(BTreeMap::is_empty)
    }

    /// The number of entries over all maps.
    pub fn len(&self) -> usize {
        self.maps.values().map(BTreeMap::len).sum()
    }

    /// Splits into (public maps, private maps) by [`is_public_map`].
    pub fn split_domains(self) -> (WriteSet, WriteSet) {
        let (public, private) = self
            .maps
            .into_iter()
            .partition(|(name, _)| is_public_map(name));
        (WriteSet { maps: public }, WriteSet { maps: private })
    }

    /// Merges another write set's maps into this one; on the same key, `other` wins.
    ///
    /// Used to rejoin the public and private domains after decoding.
    pub fn merge(&mut self, other: WriteSet) {
        for (name, entries) in other.maps {
            match self.maps.get_mut(&name) {
                Some(existing) => existing.extend(entries),
                None => {
                    self.maps.insert(name, entries);
                }
            }
        }
    }

    /// Appends the deterministic binary encoding of this write set to `out`.
    ///
    /// Format (all integers little-endian): `u32` map count, then per map: `u32` name length,
    /// name UTF-8, `u32` entry count, then per entry: `u32` key length, key, `u8` tag (0 =
    /// removed, 1 = value), and if the tag is 1: `u32` value length, value.
    ///
    /// # Panics
    ///
    /// If a map name is empty or a length is above its maximum (possible only by filling
    /// [`WriteSet::maps`] directly), since such an encoding could not be decoded.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_maps(out, |_| true);
    }

    /// The encoding of the maps of one domain (public if `public`, else private): the same
    /// bytes as [`WriteSet::split_domains`] then [`WriteSet::to_bytes`] of that half, without
    /// taking the write set apart. Empty if no map of the domain has an entry.
    pub fn domain_to_bytes(&self, public: bool) -> Vec<u8> {
        let in_domain = |name: &str| is_public_map(name) == public;
        if !self
            .maps
            .iter()
            .any(|(name, entries)| in_domain(name) && !entries.is_empty())
        {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_maps(&mut out, in_domain);
        out
    }

    fn encode_maps(&self, out: &mut Vec<u8>, include: impl Fn(&str) -> bool) {
        let start = out.len();
        put_u32(out, self.maps.keys().filter(|name| include(name)).count());
        for (name, entries) in self.maps.iter().filter(|(name, _)| include(name)) {
            assert!(
                !name.is_empty() && name.len() <= MAP_NAME_BYTES_MAX,
                "bad map name"
            );
            put_u32(out, name.len());
            out.extend_from_slice(name.as_bytes());
            put_u32(out, entries.len());
            for (key, value) in entries {
                assert_limits(name, key, value.as_deref());
                put_u32(out, key.len());
                out.extend_from_slice(key);
                match value {
                    None => out.push(TAG_REMOVED),
                    Some(value) => {
                        out.push(TAG_VALUE);
                        put_u32(out, value.len());
                        out.extend_from_slice(value);
                    }
                }
            }
        }
        assert!(out.len() - start >= 4);
    }

    /// The encoding of this write set (see [`WriteSet::encode`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        assert_eq!(out.len(), self.encoded_len());
        out
    }

    /// The exact length of the encoding in bytes.
    pub fn encoded_len(&self) -> usize {
        let mut len = 4;
        for (name, entries) in &self.maps {
            len += 4 + name.len() + 4;
            for (key, value) in entries {
                len += 4 + key.len() + 1 + value.as_ref().map_or(0, |value| 4 + value.len());
            }
        }
        len
    }

    /// Strictly decodes an encoding made by [`WriteSet::encode`]. Never panics.
    ///
    /// # Errors
    ///
    /// [`KvError::Truncated`] if the input ends early; [`KvError::TooLarge`] for a length above
    /// its maximum; [`KvError::MapNameEmpty`]; [`KvError::Malformed`] for trailing bytes,
    /// invalid UTF-8, unsorted or duplicate names or keys, or an unknown tag.
    pub fn decode(bytes: &[u8]) -> Result<WriteSet, KvError> {
        let mut reader = Reader { bytes };
        let mut maps = BTreeMap::new();
        let map_count = reader.u32()?;
        // Each map takes at least 8 bytes, so the loop below is bounded by the input length.
        let mut previous_name: Option<String> = None;
        for _ in 0..map_count {
            let name_len = reader.u32()? as usize;
            check_len("map name", name_len, MAP_NAME_BYTES_MAX)?;
            let name =
                std::str::from_utf8(reader.take(name_len)?).map_err(|_| KvError::Malformed {
                    what: "map name is not UTF-8",
                })?;
            if name.is_empty() {
                return Err(KvError::MapNameEmpty);
            }
            if previous_name
                .as_deref()
                .is_some_and(|previous| previous >= name)
            {
                return Err(KvError::Malformed {
                    what: "map names unsorted or duplicate",
                });
            }
            let entries = decode_entries(&mut reader)?;
            previous_name = Some(name.to_owned());
            maps.insert(name.to_owned(), entries);
        }
        if !reader.bytes.is_empty() {
            return Err(KvError::Malformed {
                what: "trailing bytes",
            });
        }
        Ok(WriteSet { maps })
    }
}

fn decode_entries(reader: &mut Reader<'_>) -> Result<BTreeMap<Vec<u8>, Option<Vec<u8>>>, KvError> {
    let entry_count = reader.u32()?;
    let mut entries: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    // Each entry takes at least 5 bytes, so the loop is bounded by the input length.
    for _ in 0..entry_count {
        let key_len = reader.u32()? as usize;
        check_len("key", key_len, KEY_BYTES_MAX)?;
        let key = reader.take(key_len)?;
        if entries
            .last_key_value()
            .is_some_and(|(previous, _)| previous.as_slice() >= key)
        {
            return Err(KvError::Malformed {
                what: "keys unsorted or duplicate",
            });
        }
        let value = match reader.u8()? {
            TAG_REMOVED => None,
            TAG_VALUE => {
                let value_len = reader.u32()? as usize;
                check_len("value", value_len, VALUE_BYTES_MAX)?;
                Some(reader.take(value_len)?.to_vec())
            }
            _ => {
                return Err(KvError::Malformed {
                    what: "unknown entry tag",
                })
            }
        };
        entries.insert(key.to_vec(), value);
    }
    Ok(entries)
}

fn put_u32(out: &mut Vec<u8>, value: usize) {
    // The limits keep every length and count far below u32::MAX; a failure here is our bug.
    let value = u32::try_from(value).expect("length fits in u32");
    out.extend_from_slice(&value.to_le_bytes());
}

/// A cursor over input bytes whose reads fail with `Truncated` instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], KvError> {
        if len > self.bytes.len() {
            return Err(KvError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, KvError> {
        let [byte] = self.take(1)? else {
            return Err(KvError::Truncated);
        };
        Ok(*byte)
    }

    fn u32(&mut self) -> Result<u32, KvError> {
        let array: [u8; 4] = self.take(4)?.try_into().map_err(|_| KvError::Truncated)?;
        Ok(u32::from_le_bytes(array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> WriteSet {
        let mut ws = WriteSet::new();
        ws.put("public:a", b"k1", b"v1");
        ws.remove("public:a", b"k0");
        ws.put("private", b"", b"");
        ws
    }

    #[test]
    fn encoding_is_exact() {
        let mut ws = WriteSet::new();
        ws.put("m", b"k", b"v");
        ws.remove("m", b"j");
        let expected: Vec<u8> = [
            &1u32.to_le_bytes()[..],
            &1u32.to_le_bytes(),
            b"m",
            &2u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            b"j",
            &[0],
            &1u32.to_le_bytes(),
            b"k",
            &[1],
            &1u32.to_le_bytes(),
            b"v",
        ]
        .concat();
        assert_eq!(ws.to_bytes(), expected);
        assert_eq!(WriteSet::decode(&expected).expect("valid"), ws);
    }

    #[test]
    fn empty_round_trips() {
        let ws = WriteSet::new();
        assert!(ws.is_empty());
        assert_eq!(ws.to_bytes(), vec![0, 0, 0, 0]);
        assert_eq!(WriteSet::decode(&ws.to_bytes()).expect("valid"), ws);
        assert!(matches!(WriteSet::decode(&[]), Err(KvError::Truncated)));
    }

    #[test]
    fn decode_rejects_trailing_bytes() {
        let mut bytes = sample().to_bytes();
        bytes.push(0);
        assert!(matches!(
            WriteSet::decode(&bytes),
            Err(KvError::Malformed { .. })
        ));
    }

    #[test]
    fn decode_rejects_bad_tag() {
        let mut ws = WriteSet::new();
        ws.remove("m", b"k");
        let mut bytes = ws.to_bytes();
        let last = bytes.len() - 1;
        bytes[last] = 2;
        assert!(matches!(
            WriteSet::decode(&bytes),
            Err(KvError::Malformed { .. })
        ));
    }

    #[test]
    fn decode_rejects_unsorted_and_duplicate() {
        let entry = |key: &[u8]| [&1u32.to_le_bytes()[..], key, &[0]].concat();
        let map = |name: &[u8], keys: &[&[u8]]| {
            let mut out = [&(name.len() as u32).to_le_bytes()[..], name].concat();
            out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
            for key in keys {
                out.extend(entry(key));
            }
            out
        };
        let maps = |parts: &[Vec<u8>]| {
            let mut out = (parts.len() as u32).to_le_bytes().to_vec();
            for part in parts {
                out.extend_from_slice(part);
            }
            out
        };
        assert!(WriteSet::decode(&maps(&[map(b"a", &[b"x", b"y"])])).is_ok());
        for bad in [
            maps(&[map(b"a", &[b"y", b"x"])]),
            maps(&[map(b"a", &[b"x", b"x"])]),
            maps(&[map(b"b", &[]), map(b"a", &[])]),
            maps(&[map(b"a", &[]), map(b"a", &[])]),
            maps(&[map(b"\xff", &[])]),
        ] {
            assert!(
                matches!(WriteSet::decode(&bad), Err(KvError::Malformed { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            WriteSet::decode(&maps(&[map(b"", &[])])),
            Err(KvError::MapNameEmpty)
        ));
    }

    #[test]
    fn decode_rejects_lengths_above_limits() {
        let mut bytes = 1u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&(MAP_NAME_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(
            WriteSet::decode(&bytes),
            Err(KvError::TooLarge {
                what: "map name",
                ..
            })
        ));
        let mut bytes = [&1u32.to_le_bytes()[..], &1u32.to_le_bytes(), b"m"].concat();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            WriteSet::decode(&bytes),
            Err(KvError::TooLarge { what: "key", .. })
        ));
        let mut bytes = [&1u32.to_le_bytes()[..], &1u32.to_le_bytes(), b"m"].concat();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.push(TAG_VALUE);
        bytes.extend_from_slice(&(VALUE_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(
            WriteSet::decode(&bytes),
            Err(KvError::TooLarge { what: "value", .. })
        ));
        // A huge count with no data behind it is truncation, not an allocation.
        assert!(matches!(
            WriteSet::decode(&u32::MAX.to_le_bytes()),
            Err(KvError::Truncated)
        ));
    }

    #[test]
    fn try_put_rejects_over_limits() {
        let mut ws = WriteSet::new();
        assert!(matches!(
            ws.try_put("", b"k", b"v"),
            Err(KvError::MapNameEmpty)
        ));
        let key = vec![0; KEY_BYTES_MAX + 1];
        assert!(matches!(
            ws.try_put("m", &key, b"v"),
            Err(KvError::TooLarge { .. })
        ));
        assert!(matches!(
            ws.try_remove("m", &key),
            Err(KvError::TooLarge { .. })
        ));
        let name = "n".repeat(MAP_NAME_BYTES_MAX + 1);
        assert!(matches!(
            ws.try_remove(&name, b"k"),
            Err(KvError::TooLarge { .. })
        ));
        assert!(ws.is_empty());
        ws.try_put("m", &key[..KEY_BYTES_MAX], b"v")
            .expect("at the limit");
        assert_eq!(ws.len(), 1);
    }

    #[test]
    #[should_panic(expected = "limit violated")]
    fn put_panics_over_limits() {
        WriteSet::new().put("m", &vec![0; KEY_BYTES_MAX + 1], b"v");
    }

    #[test]
    fn later_write_wins() {
        let mut ws = WriteSet::new();
        ws.put("m", b"k", b"1");
        ws.remove("m", b"k");
        assert_eq!(ws.get("m", b"k"), Some(None));
        ws.put("m", b"k", b"2");
        assert_eq!(ws.get("m", b"k"), Some(Some(&b"2"[..])));
        assert_eq!(ws.get("m", b"x"), None);
        assert_eq!(ws.len(), 1);
    }

    #[test]
    fn split_and_merge() {
        let ws = sample();
        let (public, private) = ws.clone().split_domains();
        assert_eq!(public.maps.keys().collect::<Vec<_>>(), ["public:a"]);
        assert_eq!(private.maps.keys().collect::<Vec<_>>(), ["private"]);
        let mut rejoined = private.clone();
        rejoined.merge(public.clone());
        assert_eq!(rejoined, ws);
        let mut rejoined = public;
        rejoined.merge(private);
        assert_eq!(rejoined, ws);

        let mut a = WriteSet::new();
        a.put("m", b"1", b"a");
        a.put("m", b"2", b"a");
        let mut b = WriteSet::new();
        b.remove("m", b"2");
        b.put("m", b"3", b"b");
        a.merge(b);
        assert_eq!(a.get("m", b"1"), Some(Some(&b"a"[..])));
        assert_eq!(a.get("m", b"2"), Some(None));
        assert_eq!(a.get("m", b"3"), Some(Some(&b"b"[..])));
    }

    pub(crate) fn arb_write_set() -> impl Strategy<Value = WriteSet> {
        let name = prop_oneof!["[a-c]{1,3}", "public:[a-c]{0,3}", "\\PC{1,8}"];
        let key = proptest::collection::vec(any::<u8>(), 0..6);
        let value = proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12));
        let entries = proptest::collection::btree_map(key, value, 0..6);
        proptest::collection::btree_map(name, entries, 0..5).prop_map(|maps| WriteSet { maps })
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity(ws in arb_write_set()) {
            let bytes = ws.to_bytes();
            prop_assert_eq!(bytes.len(), ws.encoded_len());
            prop_assert_eq!(WriteSet::decode(&bytes).expect("valid"), ws.clone());
            let mut again = vec![7];
            ws.encode(&mut again);
            prop_assert_eq!(&again[1..], &bytes[..]);
        }

        #[test]
        fn a_domains_bytes_are_its_half_encoded(ws in arb_write_set()) {
            let (public, private) = ws.clone().split_domains();
            let encoded = |half: &WriteSet| {
                if half.is_empty() { Vec::new() } else { half.to_bytes() }
            };
            prop_assert_eq!(ws.domain_to_bytes(true), encoded(&public));
            prop_assert_eq!(ws.domain_to_bytes(false), encoded(&private));
        }

        #[test]
        fn split_then_merge_is_identity(ws in arb_write_set()) {
            let (mut public, private) = ws.clone().split_domains();
            prop_assert!(public.maps.keys().all(|name| is_public_map(name)));
            prop_assert!(private.maps.keys().all(|name| !is_public_map(name)));
            public.merge(private);
            prop_assert_eq!(public, ws);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = WriteSet::decode(&bytes);
        }

        #[test]
        fn decode_rejects_every_truncation(ws in arb_write_set()) {
            let bytes = ws.to_bytes();
            for len in 0..bytes.len() {
                prop_assert!(WriteSet::decode(&bytes[..len]).is_err());
            }
        }

        #[test]
        fn decode_survives_every_mutation(ws in arb_write_set(), xor in 1u8..) {
            let bytes = ws.to_bytes();
            for index in 0..bytes.len() {
                let mut mutated = bytes.clone();
                mutated[index] ^= xor;
                // A mutation may still decode (e.g. in a value byte), but then it must
                // re-encode to exactly the mutated bytes: the encoding is canonical.
                if let Ok(decoded) = WriteSet::decode(&mutated) {
                    prop_assert_eq!(decoded.to_bytes(), mutated);
                }
            }
        }
    }
}
