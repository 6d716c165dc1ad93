//! A room's dedup memory (`streams.core._room.Room.seen` and its chunks), each order key held once.
//!
//! The keys are kept in their chunks, packed into one string per chunk (the checkpoint writes a
//! chunk as a record, so the text is needed). Membership is a set of 128-bit keyed hashes of the
//! keys (16 bytes a key, and the set's own slack) instead of a second copy of each. Two keys of a
//! room that share a hash would make the second a duplicate it is not, so an order would go
//! uncounted: the chance is about n² / 2¹²⁹ for n keys in a room (`dedup_max_per_room`, 100 000 by
//! default, give or take the keys taken since the room's last window close). The hash key is
//! drawn at random per process, so input cannot be made to collide. Held as two boxed strings a key
//! (the set's and the chunk's), 600 000 keys over 25 000 rooms took 113 bytes a key of 19
//! characters and 180 of 41 (a UUID's order id); held once, 75 and 106 (RESULTS, session 39).

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use crate::rooms::Fnv;

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

    /// A full chunk, sealed: it takes no more keys, so its buffers give back what doubling left.
    pub fn seal(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
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

/// The keys remembered, as their hashes (see the module's note).
#[derive(Default)]
pub struct Seen(HashSet<u128, BuildHasherDefault<Prehashed>>);

impl Seen {
    /// Remembers `key`; false if it was remembered already.
    pub fn insert(&mut self, key: &str) -> bool {
        self.0.insert(fingerprint(key))
    }

    pub fn remove(&mut self, key: &str) {
        self.0.remove(&fingerprint(key));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// 128 bits of a key: SipHash-1-3 under one random key, of the key behind two different tags
/// (two `RandomState`s of a thread would have related keys: std adds one to the first).
fn fingerprint(key: &str) -> u128 {
    static HASHER: OnceLock<RandomState> = OnceLock::new();
    let hasher = HASHER.get_or_init(RandomState::new);
    (u128::from(hasher.hash_one((0u8, key))) << 64) | u128::from(hasher.hash_one((1u8, key)))
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
        // only fingerprints are hashed here; anything else is folded in as the room map hashes
        let mut fnv = Fnv(self.0);
        fnv.write(bytes);
        self.0 = fnv.finish();
    }
}
