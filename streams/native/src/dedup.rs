//! A room's dedup memory (`streams.core._room.Room.seen` and its chunks), each order key held once.
//!
//! The keys are kept in their chunks, packed into one string per chunk (the checkpoint writes a
//! chunk as a record, so the text is needed). Membership is a set of 128-bit keyed hashes of the
//! keys: 16 bytes a key instead of a second copy of it. Two keys share a hash with probability
//! about n² / 2¹²⁹ (n keys in a room, at most `dedup_max_per_room`), and the hash keys are drawn
//! at random per process, so input cannot be made to collide. Held as two boxed strings a key
//! (the set's and the chunk's), 600 000 keys over 25 000 rooms took 113 bytes a key of 19
//! characters and 180 of 41 (a UUID's order id); held once, 75 and 106 (RESULTS, session 39).

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::OnceLock;

/// The order keys of one chunk, in the order they came, packed end to end.
#[derive(Default)]
pub struct Keys {
    text: String,
    ends: Vec<usize>,
}

impl Keys {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn push(&mut self, key: &str) {
        self.text.push_str(key);
        self.ends.push(self.text.len());
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let key = &self.text[start..end];
            start = end;
            key
        })
    }
}

impl<S: AsRef<str>> FromIterator<S> for Keys {
    fn from_iter<I: IntoIterator<Item = S>>(keys: I) -> Keys {
        let mut out = Keys::default();
        for key in keys {
            out.push(key.as_ref());
        }
        out
    }
}

/// The keys remembered, as their hashes (see the module's note).
#[derive(Default)]
pub struct Seen(HashSet<u128, BuildHasherDefault<Prehashed>>);

impl Seen {
    pub fn contains(&self, key: &str) -> bool {
        self.0.contains(&fingerprint(key))
    }

    pub fn insert(&mut self, key: &str) {
        self.0.insert(fingerprint(key));
    }

    pub fn remove(&mut self, key: &str) {
        self.0.remove(&fingerprint(key));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// 128 bits of a key: two SipHash-1-3 hashes under independent random keys.
fn fingerprint(key: &str) -> u128 {
    static HASHERS: OnceLock<(RandomState, RandomState)> = OnceLock::new();
    let (high, low) = HASHERS.get_or_init(|| (RandomState::new(), RandomState::new()));
    (u128::from(high.hash_one(key)) << 64) | u128::from(low.hash_one(key))
}

/// The set's hasher: a fingerprint is already uniform, so its low 64 bits are the hash.
#[derive(Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }

    fn write(&mut self, bytes: &[u8]) {
        // only fingerprints are hashed here; anything else is folded in, FNV-1a
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}
