//! Native room state (issue 13, item 1): a task's rooms as Rust structs instead of Python objects.
//!
//! Why. At 100 000 rooms a message costs the worker ~28 µs of CPU against ~2.9 µs for the plain
//! consumer loop; ~75 % of it is per-room work at window boundaries (close, fold into the session
//! and rollups, records, checkpoint encoding), spread thin over attribute reads and object
//! construction of per-room Python objects. Kernels that read and write those objects through the
//! C API gain little (session 14 and 2026-12-04: a native `encode_room` / `encode_room_tail` over
//! the Python room was 6.6 against 7.0 µs, and 4.6 against 4.2 µs for the tail alone): the room
//! state itself has to be native.
//!
//! The plan, in steps that each keep the Python `TaskAggregator` as the oracle (the same streams
//! through both, `tests/unit/test_native_rooms.py`, as `tests/unit/test_fastcore.py` does for the
//! detector's quiet path). Status, 2026-12-04 (session 29: wired in, `LIVEPULSE_NATIVE_ROOMS`;
//! session 30: on by default, the records written straight into the producer's record batches,
//! `publish_into` and `checkpoint_into` with `crate::batches::Outbox`; RESULTS.md):
//!
//! 1. Done. The state and its changelog records: a room's open-window counters and unique
//!    viewer sketches (Apache DataSketches' Rust HLL, whose sketches are the Python binding's,
//!    coupon for coupon and register for register), its offsets, its broadcast session and open
//!    rollups, its spike detector's state, read from and written to the `r/` (version 6) and
//!    `t/` (version 1) records the Python codec writes.
//! 2. Done: `apply` over a decoded batch (the watermark moved per event and handed back when
//!    windows are due, rooms opened or refused at the cap, replays skipped, late events charged
//!    at the watermark, order dedup chunks, counters, window registration, sketches; the offsets
//!    of refused events, a room back after expiry; re-routed events, which never move the
//!    watermark, and the first room one opens before the task watches anything), and
//!    `apply_raw`, the same per event (`take_event`) fused with the decoders' parser (`flat`,
//!    shared with `schemas/native`) and the routing check: a fetch's events applied as they are
//!    parsed, up to the first message the pipeline has to take the split way.
//! 3. Done: the window close, the fold into sessions and rollups, the rollup windows and
//!    sessions due on the watermark (`close_due`), the room-stats, rollup and session records
//!    as bytes; the spike detector (`detect`): the native path (`crate::fold_quiet`, the kernel
//!    the Python detector uses) on the room's native state, seasonal term included (decoded
//!    from its base64 once, when the room's `t/` record is read), the other windows (an alert
//!    slot open, a rule that might be met) handed back with
//!    the state to the Python detector (`streams.core._native_rooms.NativeSpikes`), which
//!    hands the state back; idle expiry (`close_due` scans, the Python half evaluates the leaving rooms'
//!    last windows and resolves their alerts, `expire` finishes; expired rooms' tombstones at
//!    the checkpoint); what the closes leave taken as numbers (`take_closed`) or as the records
//!    the pipeline publishes (`take_encoded`: room-stats, rollup and session records, the
//!    leaderboard partials).
//! 4. Begun: the restore of version-6 records (`restore_progress`, `restore_room`,
//!    `restore_tail`, `adopt`, `restore_chunk`, `finish_restore`: open windows, rollups and
//!    sessions back in the due indexes, those due at the restored watermark dropped, sessions
//!    turned off since) and the checkpoint's room records (`checkpoint`: offsets merged, `r/`,
//!    `t/` and `d/` records and their tombstones, in the order rooms changed). Left: older record
//!    versions (the Python codec migrates them; an older detector state is kept as read and
//!    migrated by the Python detector at its next window, but one it would refuse is refused
//!    only then, not at the restore), orphan tails and chunks, quarantine; the query view (and
//!    a room's last closed window with it: today only whether there is one); and
//!    `TaskAggregator` on this table when `native_core` is on: the per-room work here, the
//!    control (inputs, idleness, stalls, markers, the wall clock, the metadata record) in
//!    Python, setting the watermark here. Then the load test's table and the fault suite.

use std::io::Write;

use datasketches::hll::{HllSketch, HllType, HllUnion};
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::batches::{now_ms, Outbox};
use crate::dedup::{Keys, Seen};
use crate::fetched::RecordRun;
use crate::{fold_quiet, Quiet, QuietPlan, QuietState};
use serde_json::value::RawValue;
use serde_json::Value;

pub const N_COUNTERS: usize = 11;

/// A room's buckets (bucket number -> counters) in insertion order (a Python dict's, which the
/// `r/` record keeps): a few for each open window, found from the newest, as events come in time
/// order mostly. Room-sized at first: most rooms of a sparse task hold one bucket (an index
/// map's smallest table held three, 400 bytes a room).
#[derive(Default)]
pub struct Buckets(Vec<(i64, Counters)>);

impl Buckets {
    /// The counters of `bucket`, created at zero (last) if new.
    fn counters(&mut self, bucket: i64) -> &mut Counters {
        let at = match self.0.iter().rposition(|(b, _)| *b == bucket) {
            Some(at) => at,
            None => {
                room_for_one(&mut self.0);
                self.0.push((bucket, [0; N_COUNTERS]));
                self.0.len() - 1
            }
        };
        &mut self.0[at].1
    }

    fn iter(&self) -> impl Iterator<Item = &(i64, Counters)> {
        self.0.iter()
    }

    fn retain(&mut self, keep: impl FnMut(&(i64, Counters)) -> bool) {
        self.0.retain(keep);
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Room for one more item in a full vector, by half again what it holds (its own growth makes
/// room for four at first, then doubles): a room of a sparse task holds one or two buckets, and
/// one or two windows' sketches.
fn room_for_one<T>(items: &mut Vec<T>) {
    if items.len() == items.capacity() {
        items.reserve_exact(1 + items.len() / 2);
    }
}

/// A room id: held inline up to 24 bytes (room ids are short), so the table's entries hold their
/// keys and copying one into an index allocates nothing.
pub type RoomId = compact_str::CompactString;

/// A bucket's or window's counters (`streams.core._room`'s positions), held inline.
pub type Counters = [i64; N_COUNTERS];

/// Drops the first `n` of `items`, and their memory once none is left: a boundary's closed
/// windows, held to the next boundary, took ~40 MB at 100 000 rooms.
fn drop_front<T>(items: &mut Vec<T>, n: usize) {
    if n == items.len() {
        *items = Vec::new();
    } else {
        items.drain(..n);
    }
}

/// What a record of a closed window is (`NativeRooms::encode_closed`).
enum Out {
    Window,
    Rollup(i64),
    Session,
    Partial,
}
/// `ROOM_FORMAT_VERSION` and `TAIL_FORMAT_VERSION` of `streams.core._state_codec`
const ROOM_VERSION: i64 = 6;
const TAIL_VERSION: i64 = 1;

/// Unique viewers of a session or rollup: a closed window's sketch, or a union once there are two
/// (`streams.core._room.union_of`).
pub enum Held {
    Sketch(HllSketch),
    Union(HllUnion),
}

impl Held {
    pub fn estimate(&self) -> f64 {
        match self {
            Held::Sketch(sketch) => sketch.estimate(),
            Held::Union(union) => union.estimate(),
        }
    }

    /// The bytes `serialize_compact` gives in Python (of a union: its HLL_8 result).
    pub fn serialize(&self) -> Vec<u8> {
        match self {
            Held::Sketch(sketch) => compact_bytes(sketch),
            Held::Union(union) => compact_bytes(&union.to_sketch(HllType::Hll8)),
        }
    }

    /// `union_of(self, sketch)`
    pub fn absorb(self, sketch: &HllSketch, lg_k: u8) -> Result<Held, String> {
        let mut union = match self {
            Held::Union(union) => union,
            Held::Sketch(held) => {
                let mut union = HllUnion::new(lg_k).map_err(|e| e.to_string())?;
                union.update(&held);
                union
            }
        };
        union.update(sketch);
        Ok(Held::Union(union))
    }
}

/// A sketch as the Python binding's `serialize_compact` writes it. The Rust crate writes the
/// updatable image, which for HLL_8 registers is the same layout without the compact flag; the
/// flag is set so the bytes are the same.
pub fn compact_bytes(sketch: &HllSketch) -> Vec<u8> {
    const MODE_BYTE: usize = 7;
    const FLAGS_BYTE: usize = 5;
    const COMPACT_FLAG: u8 = 8;
    let mut bytes = sketch.serialize();
    // the low two bits of the mode byte: 0 list, 1 set, 2 HLL registers
    if bytes.len() > MODE_BYTE && bytes[MODE_BYTE] & 3 == 2 {
        bytes[FLAGS_BYTE] |= COMPACT_FLAG;
    }
    bytes
}

pub struct Session {
    pub start: i64,
    pub last_end: i64,
    pub totals: Counters,
    pub uniques: Option<Held>,
    pub peak: i64,
    pub peak_ws: i64,
    pub updated_at: i64,
    /// the due slot (a window end) the session is indexed under, or None
    pub due: Option<i64>,
}

pub struct Rollup {
    pub length: i64,
    pub start: i64,
    pub totals: Counters,
    pub uniques: Option<Held>,
    pub concurrent: i64,
}

pub struct Room {
    pub room_id: RoomId,
    pub concurrent: i64,
    pub last_ts: i64,
    /// source -> offset up to which the room holds every event, in the record's order
    pub offsets: Vec<(i64, i64)>,
    /// bucket number -> counters, for buckets of open windows, in insertion order (a Python
    /// dict's, which the `r/` record keeps)
    pub buckets: Buckets,
    /// window start -> unique viewers, per open window
    pub uniques: Vec<(i64, HllSketch)>,
    pub open_ws: Vec<i64>,
    /// the spike detector's state (None: no window evaluated yet)
    pub detector: Option<Detector>,
    /// the quiet path's plan for this room's rules, and the planner epoch it was asked at
    pub plan: Option<(u64, Option<Py<QuietPlan>>)>,
    pub session: Option<Session>,
    /// open rollup windows by position in the configured lengths (None: none open; an all-None
    /// list is written as `[]`, as in Python)
    pub rollups: Option<Vec<Option<Rollup>>>,
    /// the window this room was last registered for (the fast-path check of `apply`)
    pub reg_ws: i64,
    /// changed since the last checkpoint
    pub dirty: bool,
    /// dedup memory: `"<status>:<order_id>"` of every order remembered, in chunks by window
    /// (`Room.remember`), the chunks changed and forgotten since the last checkpoint
    pub seen: Seen,
    pub seen_chunks: Vec<(i64, Keys)>,
    pub seen_dirty: Vec<i64>,
    pub seen_gone: Vec<i64>,
    /// its `t/` record is written at the next checkpoint (the detector, session or rollups changed)
    pub tail_dirty: bool,
    /// ends of rollups its `t/` record held at a length no longer configured (until `adopt`)
    pub unconfigured_ends: Vec<i64>,
    /// when the table took it (the task's rooms are a Python dict: expiry visits them in this
    /// order)
    pub seq: u64,
    /// its last closed window (`Room.last_closed`; None: none since it was created, restored or
    /// reset)
    pub last_closed: Option<Stats>,
}

/// order keys per dedup chunk (`streams.core._room.CHUNK_KEYS`)
const CHUNK_KEYS: usize = 1_024;

impl Room {
    pub fn new(room_id: &str) -> Room {
        Room {
            room_id: room_id.into(),
            concurrent: 0,
            last_ts: -1,
            offsets: Vec::new(),
            buckets: Buckets::default(),
            uniques: Vec::new(),
            open_ws: Vec::new(),
            detector: None,
            plan: None,
            session: None,
            rollups: None,
            reg_ws: -1,
            dirty: false,
            seen: Seen::default(),
            seen_chunks: Vec::new(),
            seen_dirty: Vec::new(),
            seen_gone: Vec::new(),
            tail_dirty: false,
            unconfigured_ends: Vec::new(),
            seq: 0,
            last_closed: None,
        }
    }

    /// `Room.counters`: the counters of `bucket`, created at zero if new.
    fn counters(&mut self, bucket: i64) -> &mut Counters {
        self.buckets.counters(bucket)
    }

    /// `Room.sketch`: the unique-viewer sketch of window `ws`, created empty if new.
    fn sketch(&mut self, ws: i64, lg_k: u8) -> Result<&mut HllSketch, String> {
        let at = match self.uniques.iter().rposition(|(w, _)| *w == ws) {
            Some(at) => at,
            None => {
                let sketch = HllSketch::new(lg_k, HllType::Hll8).map_err(|e| e.to_string())?;
                room_for_one(&mut self.uniques);
                self.uniques.push((ws, sketch));
                self.uniques.len() - 1
            }
        };
        Ok(&mut self.uniques[at].1)
    }

    /// `Room.remember`: an order key into the open chunk of window `ws` (a full chunk sealed
    /// first), unless it is remembered already (a duplicate: false, nothing changes).
    fn remember(&mut self, key: &str, ws: i64) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        let at = match self.seen_chunks.iter().rposition(|(w, _)| *w == ws) {
            None => {
                self.seen_chunks.push((ws, Keys::default()));
                self.unforget(ws);
                self.seen_chunks.len() - 1
            }
            Some(at) if self.seen_chunks[at].1.len() >= CHUNK_KEYS => {
                let mut sealed = ws + 1;
                while self.seen_chunks.iter().any(|(w, _)| *w == sealed) {
                    sealed += 1;
                }
                let mut full = std::mem::take(&mut self.seen_chunks[at].1);
                full.seal();
                self.seen_chunks.push((sealed, full));
                mark(&mut self.seen_dirty, sealed);
                self.unforget(sealed);
                at
            }
            Some(at) => at,
        };
        self.seen_chunks[at].1.push(key);
        mark(&mut self.seen_dirty, ws);
        true
    }

    /// `Room.forget_chunks_before`: chunks of windows starting before `cutoff_ws`, then the oldest
    /// while the room remembers more than `cap` keys.
    fn forget_chunks_before(&mut self, cutoff_ws: i64, cap: usize) {
        while let Some(at) = (0..self.seen_chunks.len()).min_by_key(|&i| self.seen_chunks[i].0) {
            let oldest = self.seen_chunks[at].0;
            if oldest >= cutoff_ws && self.seen.len() <= cap {
                return;
            }
            let (_, keys) = self.seen_chunks.remove(at);
            for key in keys.iter() {
                self.seen.remove(key);
            }
            self.seen_dirty.retain(|&w| w != oldest);
            self.seen_gone.push(oldest);
        }
    }

    fn unforget(&mut self, chunk_id: i64) {
        if let Some(at) = self.seen_gone.iter().position(|&w| w == chunk_id) {
            self.seen_gone.remove(at);
        }
    }
}

/// `set.add` on a small set kept as a list
fn mark(set: &mut Vec<i64>, value: i64) {
    if !set.contains(&value) {
        set.push(value);
    }
}

// -- encoding --------------------------------------------------------------------------------

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn write_base64(out: &mut Vec<u8>, data: &[u8]) {
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(BASE64[(n >> 18) as usize & 63]);
        out.push(BASE64[(n >> 12) as usize & 63]);
        out.push(if chunk.len() > 1 {
            BASE64[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if chunk.len() > 2 {
            BASE64[n as usize & 63]
        } else {
            b'='
        });
    }
}

fn read_base64(text: &str) -> Result<Vec<u8>, String> {
    let mut value = [255u8; 256];
    for (i, &c) in BASE64.iter().enumerate() {
        value[c as usize] = i as u8;
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return Err("base64 text of a length not a multiple of 4".into());
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (k, quad) in bytes.chunks(4).enumerate() {
        let last = k == bytes.len() / 4 - 1;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err("misplaced base64 padding".into());
        }
        let mut n: u32 = 0;
        for &c in &quad[..4 - pad] {
            let v = value[c as usize];
            if v == 255 {
                return Err(format!("{:?} is not a base64 character", c as char));
            }
            n = n << 6 | u32::from(v);
        }
        n <<= 6 * pad as u32;
        out.push((n >> 16) as u8);
        if pad < 2 {
            out.push((n >> 8) as u8);
        }
        if pad < 1 {
            out.push(n as u8);
        }
    }
    Ok(out)
}

/// A float as orjson writes it: the shortest round-trip digits, fixed notation for decimal
/// exponents -5..15 (with at least one decimal), otherwise `d.ddde+N` / `d.ddde-N`.
fn write_float(out: &mut Vec<u8>, x: f64) {
    if !x.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    // ryu's shortest digits, laid out again: it writes "1e16", "6.1911e-5", "0.1", "1.0"
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(x).as_bytes();
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let mut digits = [0u8; 24];
    let mut n = 0;
    let mut point: Option<i32> = None; // digits before the decimal point
    let mut exp: i32 = 0;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'.' => point = Some(n as i32),
            b'e' | b'E' => {
                exp = std::str::from_utf8(&text[i + 1..])
                    .unwrap()
                    .parse()
                    .unwrap();
                break;
            }
            c => {
                digits[n] = c;
                n += 1;
            }
        }
        i += 1;
    }
    // value = 0.d1d2... x 10^(point + exp): strip leading zeros ("0.0001" -> "1", point -3)
    let mut point = point.unwrap_or(n as i32) + exp;
    let mut start = 0;
    while start + 1 < n && digits[start] == b'0' {
        start += 1;
        point -= 1;
    }
    let mut end = n;
    while end > start + 1 && digits[end - 1] == b'0' {
        end -= 1;
    }
    let digits = &digits[start..end];
    if digits == b"0" {
        point = 1;
    }
    let exp = point - 1; // decimal exponent of the first digit
    if negative {
        out.push(b'-');
    }
    if (-5..16).contains(&exp) {
        if exp >= 0 {
            let whole = exp as usize + 1;
            if digits.len() <= whole {
                out.extend_from_slice(digits);
                out.extend(std::iter::repeat_n(b'0', whole - digits.len()));
                out.extend_from_slice(b".0");
            } else {
                out.extend_from_slice(&digits[..whole]);
                out.push(b'.');
                out.extend_from_slice(&digits[whole..]);
            }
        } else {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-exp - 1) as usize));
            out.extend_from_slice(digits);
        }
    } else {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        out.extend_from_slice(itoa::Buffer::new().format(exp.unsigned_abs()).as_bytes());
    }
}

/// `write_float` as bytes, for the tests against orjson.
#[pyfunction]
pub fn format_float<'py>(py: Python<'py>, x: f64) -> Bound<'py, PyBytes> {
    let mut out = Vec::new();
    write_float(&mut out, x);
    PyBytes::new(py, &out)
}

/// A string as orjson escapes it.
fn write_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    for &c in text.as_bytes() {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0..=0x1f => {
                let _ = write!(out, "\\u{:04x}", c);
            }
            _ => out.push(c),
        }
    }
    out.push(b'"');
}

fn write_int(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn write_ints(out: &mut Vec<u8>, values: &[i64]) {
    out.push(b'[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_int(out, *v);
    }
    out.push(b']');
}

/// `a,b,...` without brackets
fn write_ints_bare(out: &mut Vec<u8>, values: &[i64]) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_int(out, *v);
    }
}

/// `bytes` as a JSON string of their base64 (a sketch, a seasonal term).
fn write_base64_text(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    write_base64(out, bytes);
    out.push(b'"');
}

fn write_held(out: &mut Vec<u8>, held: &Option<Held>) {
    match held {
        None => out.extend_from_slice(b"null"),
        Some(held) => write_base64_text(out, &held.serialize()),
    }
}

impl Room {
    /// The `r/` record (`encode_room`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write(&mut out);
        out
    }

    /// `encode`, appended to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        write_int(out, ROOM_VERSION);
        out.push(b',');
        write_str(out, &self.room_id);
        out.push(b',');
        write_ints_bare(out, &[self.concurrent, self.last_ts]);
        out.extend_from_slice(b",[");
        for (i, (source, offset)) in self.offsets.iter().enumerate() {
            out.extend_from_slice(if i > 0 { b",[" } else { b"[" });
            write_ints_bare(out, &[*source, *offset]);
            out.push(b']');
        }
        out.extend_from_slice(b"],[");
        for (i, (bucket, counters)) in self.buckets.iter().enumerate() {
            out.extend_from_slice(if i > 0 { b",[" } else { b"[" });
            write_int(out, *bucket);
            out.push(b',');
            write_ints(out, counters);
            out.push(b']');
        }
        out.extend_from_slice(b"],[");
        for (i, (ws, sketch)) in self.uniques.iter().enumerate() {
            out.extend_from_slice(if i > 0 { b",[" } else { b"[" });
            write_int(out, *ws);
            out.push(b',');
            write_base64_text(out, &compact_bytes(sketch));
            out.push(b']');
        }
        out.extend_from_slice(b"],");
        write_ints(out, &self.open_ws);
        out.push(b']');
    }

    /// The `t/` record (`encode_room_tail`), None when the room has no detector, session or rollup.
    pub fn encode_tail(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        self.write_tail(&mut out).then_some(out)
    }

    /// `encode_tail`, appended to `out`; false (nothing written) when there is no such record.
    pub fn write_tail(&self, out: &mut Vec<u8>) -> bool {
        if self.detector.is_none() && self.session.is_none() && self.rollups.is_none() {
            return false;
        }
        out.push(b'[');
        write_int(out, TAIL_VERSION);
        out.push(b',');
        write_str(out, &self.room_id);
        out.push(b',');
        match &self.detector {
            None => out.extend_from_slice(b"null"),
            Some(detector) => detector.write(out, &self.room_id),
        }
        out.push(b',');
        match &self.session {
            None => out.extend_from_slice(b"null"),
            Some(s) => {
                out.push(b'[');
                write_ints_bare(out, &[s.start, s.last_end]);
                out.push(b',');
                write_ints(out, &s.totals);
                out.push(b',');
                write_held(out, &s.uniques);
                out.push(b',');
                write_ints_bare(out, &[s.peak, s.peak_ws, s.updated_at]);
                out.push(b']');
            }
        }
        out.push(b',');
        match &self.rollups {
            None => out.extend_from_slice(b"null"),
            Some(rollups) => {
                out.push(b'[');
                for (i, r) in rollups.iter().flatten().enumerate() {
                    out.extend_from_slice(if i > 0 { b",[" } else { b"[" });
                    write_ints_bare(out, &[r.length, r.start]);
                    out.push(b',');
                    write_ints(out, &r.totals);
                    out.push(b',');
                    write_held(out, &r.uniques);
                    out.push(b',');
                    write_int(out, r.concurrent);
                    out.push(b']');
                }
                out.push(b']');
            }
        }
        out.push(b']');
        true
    }
}

// -- decoding --------------------------------------------------------------------------------

fn int(value: &Value, what: &str) -> Result<i64, String> {
    value
        .as_i64()
        .ok_or_else(|| format!("{what} is not an integer: {value}"))
}

fn array<'a>(value: &'a Value, what: &str) -> Result<&'a Vec<Value>, String> {
    value
        .as_array()
        .ok_or_else(|| format!("{what} is not a list: {value}"))
}

fn fields<'a>(value: &'a Value, n: usize, what: &str) -> Result<&'a Vec<Value>, String> {
    let items = array(value, what)?;
    if items.len() != n {
        return Err(format!("{what} has {} fields, not {n}", items.len()));
    }
    Ok(items)
}

fn counters(value: &Value) -> Result<Counters, String> {
    let items = array(value, "counters")?;
    if items.len() != N_COUNTERS {
        return Err(format!("{N_COUNTERS} integer counters expected"));
    }
    let mut out = [0; N_COUNTERS];
    for (slot, c) in out.iter_mut().zip(items) {
        *slot = int(c, "a counter")?;
    }
    Ok(out)
}

fn sketch(value: &Value) -> Result<HllSketch, String> {
    let text = value
        .as_str()
        .ok_or("a unique-viewer sketch is a base64 string")?;
    HllSketch::deserialize(&read_base64(text)?).map_err(|e| e.to_string())
}

fn held(value: &Value) -> Result<Option<Held>, String> {
    Ok(if value.is_null() {
        None
    } else {
        Some(Held::Sketch(sketch(value)?))
    })
}

impl Room {
    /// A room from its `r/` record of version 6 (`decode_room`; older versions are migrated by the
    /// Python codec and written again as version 6).
    pub fn decode(raw: &[u8]) -> Result<Room, String> {
        let obj: Value =
            serde_json::from_slice(raw).map_err(|e| format!("undecodable room state: {e}"))?;
        let items = fields(&obj, 8, "a room record")?;
        if items[0].as_i64() != Some(ROOM_VERSION) {
            return Err(format!(
                "room state version {} is not {ROOM_VERSION}",
                items[0]
            ));
        }
        let room_id = items[1]
            .as_str()
            .ok_or("the room id is not a string")?
            .to_owned();
        let mut offsets = Vec::new();
        for pair in array(&items[4], "offsets")? {
            let pair = fields(pair, 2, "an offset")?;
            offsets.push((int(&pair[0], "a source")?, int(&pair[1], "an offset")?));
        }
        let mut buckets = Buckets::default();
        for pair in array(&items[5], "buckets")? {
            let pair = fields(pair, 2, "a bucket")?;
            // a number twice: the last counters, in the first one's place (`dict(pairs)`)
            *buckets.counters(int(&pair[0], "a bucket number")?) = counters(&pair[1])?;
        }
        let mut uniques = Vec::new();
        for pair in array(&items[6], "uniques")? {
            let pair = fields(pair, 2, "a window's sketch")?;
            uniques.push((int(&pair[0], "a window start")?, sketch(&pair[1])?));
        }
        let open_ws = array(&items[7], "open windows")?
            .iter()
            .map(|ws| int(ws, "a window start"))
            .collect::<Result<_, _>>()?;
        Ok(Room {
            concurrent: int(&items[2], "concurrent")?,
            last_ts: int(&items[3], "last_ts")?,
            offsets,
            buckets,
            uniques,
            open_ws,
            ..Room::new(&room_id)
        })
    }

    /// Its `t/` record (version 1) into the room (`decode_room_tail`); nothing changes unless the
    /// whole record decodes.
    pub fn decode_tail(&mut self, raw: &[u8], lengths: &[i64]) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Tail<'a>(
            i64,
            String,
            #[serde(borrow)] Option<&'a RawValue>,
            Value,
            Value,
        );
        let Tail(version, room_id, detector, session, rollups) =
            serde_json::from_slice(raw).map_err(|e| format!("undecodable room tail: {e}"))?;
        if version != TAIL_VERSION {
            return Err(format!("room tail version {version} is not {TAIL_VERSION}"));
        }
        if room_id != self.room_id {
            return Err(format!(
                "the tail of room {room_id:?}, read for room {:?}",
                self.room_id
            ));
        }
        let detector = detector
            .filter(|raw| raw.get() != "null")
            .map(|raw| Detector::read(raw, &room_id));
        let session = if session.is_null() {
            None
        } else {
            let s = fields(&session, 7, "a session")?;
            Some(Session {
                start: int(&s[0], "a session start")?,
                last_end: int(&s[1], "a session end")?,
                totals: counters(&s[2])?,
                uniques: held(&s[3])?,
                peak: int(&s[4], "a peak")?,
                peak_ws: int(&s[5], "a peak window")?,
                updated_at: int(&s[6], "updated_at")?,
                due: None,
            })
        };
        let mut decoded: Option<Vec<Option<Rollup>>> = None;
        let listed = if rollups.is_null() {
            &[][..]
        } else {
            &array(&rollups, "rollups")?[..]
        };
        let mut unconfigured = Vec::new();
        for r in listed {
            let r = fields(r, 5, "a rollup")?;
            let rollup = Rollup {
                length: int(&r[0], "a rollup length")?,
                start: int(&r[1], "a rollup start")?,
                totals: counters(&r[2])?,
                uniques: held(&r[3])?,
                concurrent: int(&r[4], "concurrent")?,
            };
            // placed by length (a length twice: the last); one of a length no longer configured
            // is dropped, as the Python restore drops it, and its end kept for `adopt`, which
            // rewrites the record if it was still open
            match lengths.iter().position(|&l| l == rollup.length) {
                Some(position) => {
                    let placed =
                        decoded.get_or_insert_with(|| lengths.iter().map(|_| None).collect());
                    placed[position] = Some(rollup);
                }
                None => unconfigured.push(rollup.start + rollup.length),
            }
        }
        self.detector = detector;
        self.session = session;
        self.rollups = decoded;
        self.unconfigured_ends = unconfigured;
        Ok(())
    }
}

// -- the spike detector's state --------------------------------------------------------------

/// `SPIKE_STATE_VERSION` of `streams.core._spikes`, and its `len(METRICS)`
const DETECTOR_VERSION: i64 = 3;
const N_METRICS: usize = 6;

/// A room's spike-detector state (`DetectorState`).
pub enum Detector {
    /// version 3, as the quiet path reads and writes it
    Native(NativeDetector),
    /// anything else as it was read (an older version, another room's id, a field of an
    /// unexpected type): the Python detector reads it, migrates or refuses it
    Raw(Box<RawValue>),
}

/// `DetectorState`'s numbers the native path moves (the seasonal term among them); the alert
/// slots and the drift test (which it never touches) as they were written.
pub struct NativeDetector {
    pub last_end: Option<i64>,
    pub history_ms: i64,
    pub last_concurrent: f64,
    pub baselines: Vec<f64>,
    pub alerts: Box<RawValue>,
    pub season: Season,
    pub drift: Box<RawValue>,
}

/// A detector's seasonal term (`DetectorState.season`, `season_since_ms`).
pub enum Season {
    /// not allocated yet (`null` on the wire)
    Unset,
    /// `[season_since_ms, base64 of the float32 bins, little-endian]`
    Learned { since: i64, bins: Vec<f32> },
    /// anything else as it was written: the Python detector reads or refuses it
    Raw(Box<RawValue>),
}

impl Season {
    fn read(wire: &RawValue) -> Season {
        if wire.get() == "null" {
            return Season::Unset;
        }
        let Ok((since, text)) = serde_json::from_str::<(i64, &str)>(wire.get()) else {
            return Season::Raw(wire.to_owned());
        };
        match read_base64(text) {
            Ok(bytes) if bytes.len().is_multiple_of(4) => Season::Learned {
                since,
                bins: bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            },
            _ => Season::Raw(wire.to_owned()),
        }
    }

    /// As `DetectorState.to_wire` writes it.
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Season::Unset => out.extend_from_slice(b"null"),
            Season::Raw(wire) => out.extend_from_slice(wire.get().as_bytes()),
            Season::Learned { since, bins } => {
                out.push(b'[');
                write_int(out, *since);
                out.push(b',');
                let bytes: Vec<u8> = bins.iter().flat_map(|x| x.to_le_bytes()).collect();
                write_base64_text(out, &bytes);
                out.push(b']');
            }
        }
    }
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).expect("valid JSON")
}

impl NativeDetector {
    /// `DetectorState(room_id)`: no window observed, zero baselines.
    fn new() -> NativeDetector {
        NativeDetector {
            last_end: None,
            history_ms: 0,
            last_concurrent: 0.0,
            baselines: vec![0.0; 2 * N_METRICS],
            alerts: raw("[]"),
            season: Season::Unset,
            drift: raw("null"),
        }
    }

    /// No alert slot, and a seasonal term the native path reads: a window may take it.
    fn native_capable(&self) -> bool {
        self.alerts.get() == "[]" && !matches!(self.season, Season::Raw(_))
    }
}

impl Detector {
    /// The detector's part of a `t/` record (`DetectorState.to_wire`, as JSON).
    fn read(wire: &RawValue, room_id: &str) -> Detector {
        #[derive(serde::Deserialize)]
        struct Wire<'a>(
            i64,
            String,
            Option<i64>,
            i64,
            f64,
            Vec<f64>,
            #[serde(borrow)] &'a RawValue,
            #[serde(borrow)] &'a RawValue,
            #[serde(borrow)] &'a RawValue,
        );
        match serde_json::from_str::<Wire>(wire.get()) {
            Ok(Wire(DETECTOR_VERSION, id, last_end, history_ms, level, baselines, a, s, d))
                if id == room_id && baselines.len() == 2 * N_METRICS =>
            {
                Detector::Native(NativeDetector {
                    last_end,
                    history_ms,
                    last_concurrent: level,
                    baselines,
                    alerts: a.to_owned(),
                    season: Season::read(s),
                    drift: d.to_owned(),
                })
            }
            _ => Detector::Raw(wire.to_owned()),
        }
    }

    /// `DetectorState.to_wire()` as orjson writes it.
    fn write(&self, out: &mut Vec<u8>, room_id: &str) {
        let d = match self {
            Detector::Raw(wire) => return out.extend_from_slice(wire.get().as_bytes()),
            Detector::Native(d) => d,
        };
        out.push(b'[');
        write_int(out, DETECTOR_VERSION);
        out.push(b',');
        write_str(out, room_id);
        out.push(b',');
        match d.last_end {
            None => out.extend_from_slice(b"null"),
            Some(end) => write_int(out, end),
        }
        out.push(b',');
        write_int(out, d.history_ms);
        out.push(b',');
        write_float(out, d.last_concurrent);
        out.extend_from_slice(b",[");
        for (i, &x) in d.baselines.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_float(out, x);
        }
        out.extend_from_slice(b"],");
        out.extend_from_slice(d.alerts.get().as_bytes());
        out.push(b',');
        d.season.write(out);
        out.push(b',');
        out.extend_from_slice(d.drift.get().as_bytes());
        out.push(b']');
    }
}

/// Where a detector metric (a `RoomStats` attribute) is in a natively closed window's numbers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StatField {
    Counter(usize),
    Unique,
    Concurrent,
    OrdersPerSec,
}

impl StatField {
    /// The `RoomStats` attribute `name` (None: one the native numbers do not hold).
    pub fn of(name: &str) -> Option<StatField> {
        Some(match name {
            "views" => StatField::Counter(JOINS),
            "likes" => StatField::Counter(LIKES),
            "comments" => StatField::Counter(COMMENTS),
            "orders" => StatField::Counter(ORDERS),
            "gmv_minor" => StatField::Counter(GMV),
            "refunds_minor" => StatField::Counter(REFUNDS),
            "gifts" => StatField::Counter(GIFTS),
            "gift_value_minor" => StatField::Counter(GIFT_VALUE),
            "late_events" => StatField::Counter(LATE),
            "shares" => StatField::Counter(SHARES),
            "unique_viewers" => StatField::Unique,
            "concurrent_viewers" => StatField::Concurrent,
            "orders_per_sec" => StatField::OrdersPerSec,
            _ => return None,
        })
    }
}

/// `streams.core._spikes.observe` over a natively closed window: the quiet path on the room's
/// native state where it applies (True: taken), False where the Python detector must take it
/// (the state untouched).
fn observe_quiet_natively(
    detector: &mut NativeDetector,
    plan: &QuietPlan,
    stats: &Stats,
    window_ms: i64,
    max_gap_ms: i64,
) -> bool {
    let Some(sources) = plan.sources else {
        return false;
    };
    if !detector.native_capable() {
        return false;
    }
    // metric_values: per-second metrics over the window's seconds, the others as they are
    let seconds = window_ms as f64 / 1_000.0;
    let mut values = [0.0f64; crate::MAX_METRICS];
    for (i, slot) in values.iter_mut().enumerate().take(plan.n) {
        let x = match sources[i] {
            StatField::Counter(at) => stats.totals[at] as f64,
            StatField::Unique => stats.unique_viewers as f64,
            StatField::Concurrent => stats.concurrent as f64,
            StatField::OrdersPerSec => orders_per_sec(&stats.totals, window_ms),
        };
        *slot = if plan.per_second[i] { x / seconds } else { x };
    }
    let (season, season_since_ms) = match &mut detector.season {
        Season::Learned { since, bins } => (Some(bins.as_mut_slice()), *since),
        _ => (None, 0),
    };
    let mut state = QuietState {
        last_end: detector.last_end,
        history_ms: detector.history_ms,
        last_concurrent: Some(detector.last_concurrent),
        baselines: &mut detector.baselines,
        season,
        season_since_ms,
    };
    let outcome = fold_quiet(
        plan,
        &values[..plan.n],
        stats.start,
        window_ms,
        max_gap_ms,
        &mut state,
    );
    let (last_end, history_ms, level) = (state.last_end, state.history_ms, state.last_concurrent);
    match outcome {
        Quiet::Python => false,
        Quiet::Ignored => true,
        Quiet::Folded => {
            detector.last_end = last_end;
            detector.history_ms = history_ms;
            detector.last_concurrent = level.expect("set by the fold");
            true
        }
    }
}

/// `room_stats`' orders per second: `total[ORDERS] / (window_ms / 1_000)`
fn orders_per_sec(totals: &[i64], window_ms: i64) -> f64 {
    totals[ORDERS] as f64 / (window_ms as f64 / 1_000.0)
}

// -- the window close (step 3) ----------------------------------------------------------------

/// Counter positions (`streams.core._room`).
const JOINS: usize = 0;
const LEAVES: usize = 1;

/// What the close of one room-window reads from the task's configuration (`CoreConfig`).
pub struct Config {
    pub bucket_ms: i64,
    pub window_ms: i64,
    pub session_gap_ms: i64,
    pub sessions: bool,
    /// `rollup_windows_ms`, and its positions longest first (the order rollups fold in)
    pub rollup_lengths: Vec<i64>,
    pub longest_first: Vec<usize>,
    pub lg_k: u8,
    pub grace_ms: i64,
    pub max_rooms: usize,
    pub dedup_ttl_ms: i64,
    pub dedup_max_per_room: usize,
}

/// A room-stats record's numbers (`streams.core._room.room_stats`): room id, window start and
/// end, counters, unique viewers, concurrent viewers.
#[derive(Clone)]
pub struct Stats {
    pub start: i64,
    pub end: i64,
    pub totals: Counters,
    pub unique_viewers: i64,
    pub concurrent: i64,
}

/// A session record's numbers (`Session.record`): ended or live.
pub struct SessionRecord {
    pub ended: bool,
    pub start: i64,
    pub last_end: i64,
    pub totals: Counters,
    pub unique_viewers: i64,
    pub peak: i64,
    pub peak_ws: i64,
    pub updated_at: i64,
}

/// What closing one room-window yields: its room-stats, the rollup windows it closed first, the
/// session records (an ended one, then the live one), and what the task indexes (rollup ends
/// opened, the session's state for its due slot).
pub struct Closed {
    pub stats: Stats,
    pub rollups_closed: Vec<(i64, Stats)>,
    pub sessions: Vec<SessionRecord>,
    pub rollup_ends_opened: Vec<i64>,
}

/// `round()` of an estimate, as Python rounds (half to even)
fn rounded(estimate: f64) -> i64 {
    estimate.round_ties_even() as i64
}

fn held_estimate(held: &Option<Held>) -> i64 {
    held.as_ref().map_or(0, |h| rounded(h.estimate()))
}

fn fold_sketch(
    held: Option<Held>,
    sketch: Option<&HllSketch>,
    lg_k: u8,
) -> Result<Option<Held>, String> {
    Ok(match (held, sketch) {
        (held, None) => held,
        (None, Some(sketch)) => Some(Held::Sketch(sketch.clone())),
        (Some(held), Some(sketch)) => Some(held.absorb(sketch, lg_k)?),
    })
}

fn add_into(into: &mut Counters, more: &Counters) {
    for (x, y) in into.iter_mut().zip(more) {
        *x += y;
    }
}

impl Session {
    fn record(&self, ended: bool) -> SessionRecord {
        SessionRecord {
            ended,
            start: self.start,
            last_end: self.last_end,
            totals: self.totals,
            unique_viewers: held_estimate(&self.uniques),
            peak: self.peak.max(0),
            peak_ws: self.peak_ws,
            updated_at: self.updated_at,
        }
    }
}

impl Rollup {
    fn record(&self) -> Stats {
        Stats {
            start: self.start,
            end: self.start + self.length,
            totals: self.totals,
            unique_viewers: held_estimate(&self.uniques),
            concurrent: self.concurrent,
        }
    }
}

impl Room {
    /// `Room.take_window`: sum and drop the counters of buckets `first <= bucket < end`, with the
    /// first and last active bucket (-1, -1: none).
    fn take_window(&mut self, first: i64, end: i64) -> (Counters, i64, i64) {
        let mut total = [0i64; N_COUNTERS];
        let mut active: Option<(i64, i64)> = None;
        self.buckets.retain(|&(bucket, ref counters)| {
            if first <= bucket && bucket < end {
                for (t, c) in total.iter_mut().zip(counters.iter()) {
                    *t += c;
                }
                active = Some(match active {
                    None => (bucket, bucket),
                    Some((lo, hi)) => (lo.min(bucket), hi.max(bucket)),
                });
                false
            } else {
                true
            }
        });
        let (lo, hi) = active.unwrap_or((-1, -1));
        (total, lo, hi)
    }

    /// `TaskAggregator._close_room_window` and `_fold`: close window `ws` (its end at or before
    /// the watermark): its counters and sketch, the concurrent level, the session and the rollups.
    pub fn close_window(
        &mut self,
        ws: i64,
        cfg: &Config,
        watermark: i64,
    ) -> Result<Closed, String> {
        let at = self
            .open_ws
            .iter()
            .position(|&w| w == ws)
            .ok_or_else(|| format!("window {ws} is not open"))?; // checked before anything changes
        self.open_ws.remove(at);
        let first = ws.div_euclid(cfg.bucket_ms);
        let end = first + cfg.window_ms / cfg.bucket_ms;
        let (total, active_first, active_last) = self.take_window(first, end);
        let concurrent = (self.concurrent + total[JOINS] - total[LEAVES]).max(0);
        self.concurrent = concurrent;
        let sketch = self
            .uniques
            .iter()
            .position(|(w, _)| *w == ws)
            .map(|i| self.uniques.remove(i).1);
        if !self.seen_chunks.is_empty() {
            // a chunk goes once every key in it is older than the dedup TTL
            self.forget_chunks_before(
                watermark - cfg.dedup_ttl_ms - cfg.window_ms + 1,
                cfg.dedup_max_per_room,
            );
        }
        let unique_viewers = sketch.as_ref().map_or(0, |s| rounded(s.estimate()));
        let mut closed = Closed {
            stats: Stats {
                start: ws,
                end: ws + cfg.window_ms,
                totals: total,
                unique_viewers,
                concurrent,
            },
            rollups_closed: Vec::new(),
            sessions: Vec::new(),
            rollup_ends_opened: Vec::new(),
        };
        self.last_closed = Some(closed.stats.clone());
        // rollups that end before this window: every base window in them is in
        if let Some(held) = self.rollups.as_mut() {
            for slot in held.iter_mut() {
                if slot.as_ref().is_some_and(|r| r.start + r.length <= ws) {
                    let rollup = slot.take().expect("checked");
                    closed.rollups_closed.push((rollup.length, rollup.record()));
                }
            }
        }
        let mut fold_session = self.session.is_some();
        if active_first >= 0 && cfg.sessions {
            let start = active_first * cfg.bucket_ms;
            let new = match &self.session {
                None => true,
                Some(s) => start - s.last_end >= cfg.session_gap_ms,
            };
            if new {
                if let Some(mut old) = self.session.take() {
                    old.updated_at = due_slot(old.last_end, cfg.session_gap_ms, cfg.window_ms);
                    closed.sessions.push(old.record(true));
                }
                self.session = Some(Session {
                    start,
                    last_end: start,
                    totals: total,
                    uniques: sketch.as_ref().map(|s| Held::Sketch(s.clone())),
                    peak: -1,
                    peak_ws: start,
                    updated_at: start,
                    due: None,
                });
                fold_session = false;
            }
            let session = self.session.as_mut().expect("just set");
            let last = (active_last + 1) * cfg.bucket_ms;
            if last > session.last_end {
                session.last_end = last;
            }
        }
        if fold_session {
            let session = self.session.as_mut().expect("checked");
            add_into(&mut session.totals, &total);
            session.uniques = fold_sketch(session.uniques.take(), sketch.as_ref(), cfg.lg_k)?;
        }
        if !cfg.rollup_lengths.is_empty() {
            let held = self
                .rollups
                .get_or_insert_with(|| cfg.rollup_lengths.iter().map(|_| None).collect());
            for &i in &cfg.longest_first {
                let length = cfg.rollup_lengths[i];
                match held[i].as_mut() {
                    Some(rollup) => {
                        rollup.concurrent = concurrent;
                        add_into(&mut rollup.totals, &total);
                        rollup.uniques =
                            fold_sketch(rollup.uniques.take(), sketch.as_ref(), cfg.lg_k)?;
                    }
                    None => {
                        let start = ws - ws.rem_euclid(length);
                        held[i] = Some(Rollup {
                            length,
                            start,
                            totals: total,
                            uniques: sketch.as_ref().map(|s| Held::Sketch(s.clone())),
                            concurrent,
                        });
                        closed.rollup_ends_opened.push(start + length);
                    }
                }
            }
        }
        if let Some(session) = self.session.as_mut() {
            if concurrent > session.peak {
                session.peak = concurrent;
                session.peak_ws = ws;
            }
            session.updated_at = ws + cfg.window_ms;
            closed.sessions.push(session.record(false));
        }
        Ok(closed)
    }
}

/// `streams.core._sessions.due_slot`: the first window end at or after `last_end + gap_ms`.
fn due_slot(last_end: i64, gap_ms: i64, window_ms: i64) -> i64 {
    -((-(last_end + gap_ms)).div_euclid(window_ms)) * window_ms
}

// -- output records ------------------------------------------------------------------------

/// Counter positions of the published fields (`streams.core._room`).
const LIKES: usize = 2;
const COMMENTS: usize = 3;
const ORDERS: usize = 4;
const GMV: usize = 5;
const REFUNDS: usize = 6;
const GIFTS: usize = 7;
const GIFT_VALUE: usize = 8;
const LATE: usize = 9;
const SHARES: usize = 10;

fn write_field(out: &mut Vec<u8>, name: &str, value: i64) {
    out.push(b',');
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    write_int(out, value);
}

impl Stats {
    /// The room-stats record (`encode_room_stats`: orjson's layout of the `RoomStats` dataclass).
    pub fn encode(&self, room_id: &str, window_ms: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(320);
        self.write(&mut out, room_id, window_ms);
        out
    }

    /// `encode`, appended to `out`.
    pub fn write(&self, out: &mut Vec<u8>, room_id: &str, window_ms: i64) {
        let t = &self.totals;
        out.extend_from_slice(b"{\"room_id\":");
        write_str(out, room_id);
        write_field(out, "window_start", self.start);
        write_field(out, "window_end", self.end);
        write_field(out, "views", t[JOINS]);
        write_field(out, "unique_viewers", self.unique_viewers);
        write_field(out, "concurrent_viewers", self.concurrent);
        write_field(out, "likes", t[LIKES]);
        write_field(out, "comments", t[COMMENTS]);
        write_field(out, "orders", t[ORDERS]);
        out.extend_from_slice(b",\"orders_per_sec\":");
        write_float(out, orders_per_sec(t, window_ms));
        write_field(out, "gmv_minor", t[GMV]);
        write_field(out, "refunds_minor", t[REFUNDS]);
        write_field(out, "gifts", t[GIFTS]);
        write_field(out, "gift_value_minor", t[GIFT_VALUE]);
        write_field(out, "late_events", t[LATE]);
        write_field(out, "shares", t[SHARES]);
        out.push(b'}');
    }
}

impl SessionRecord {
    /// The session record (`encode_room_session`).
    pub fn encode(&self, room_id: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(360);
        self.write(&mut out, room_id);
        out
    }

    /// `encode`, appended to `out`.
    pub fn write(&self, out: &mut Vec<u8>, room_id: &str) {
        let t = &self.totals;
        out.extend_from_slice(b"{\"room_id\":");
        write_str(out, room_id);
        write_field(out, "session_start", self.start);
        if self.ended {
            write_field(out, "session_end", self.last_end);
            out.extend_from_slice(b",\"status\":\"ended\"");
        } else {
            out.extend_from_slice(b",\"session_end\":null,\"status\":\"live\"");
        }
        write_field(out, "views", t[JOINS]);
        write_field(out, "unique_viewers", self.unique_viewers);
        write_field(out, "peak_concurrent_viewers", self.peak);
        write_field(out, "peak_window_start", self.peak_ws);
        write_field(out, "likes", t[LIKES]);
        write_field(out, "comments", t[COMMENTS]);
        write_field(out, "shares", t[SHARES]);
        write_field(out, "orders", t[ORDERS]);
        write_field(out, "gmv_minor", t[GMV]);
        write_field(out, "refunds_minor", t[REFUNDS]);
        write_field(out, "gifts", t[GIFTS]);
        write_field(out, "gift_value_minor", t[GIFT_VALUE]);
        write_field(out, "late_events", t[LATE]);
        write_field(out, "updated_at", self.updated_at);
        out.push(b'}');
    }
}

// -- the platform leaderboard's partials ---------------------------------------------------------

/// `streams.core._leaderboard.is_live`: any activity besides late events and the concurrent level.
fn is_live(stats: &Stats) -> bool {
    let t = &stats.totals;
    stats.unique_viewers != 0
        || [
            JOINS, LIKES, COMMENTS, SHARES, ORDERS, GMV, REFUNDS, GIFTS, GIFT_VALUE,
        ]
        .iter()
        .any(|&at| t[at] != 0)
}

/// `rank_rooms`: the top `n` of (room id, value) by value descending, then room id ascending
/// (Python's string order is the code points', which is UTF-8's byte order); zeros left out.
fn rank(mut entries: Vec<(&str, i64)>, n: usize) -> Vec<(&str, i64)> {
    entries.retain(|&(_, value)| value > 0);
    let order = |a: &(&str, i64), b: &(&str, i64)| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0));
    if entries.len() > n {
        entries.select_nth_unstable_by(n, order);
        entries.truncate(n);
    }
    entries.sort_unstable_by(order);
    entries
}

/// One window's partial (`leaderboard_partials` for one window start, as orjson writes it), from
/// the task's closed room-windows of that window; None when no room in it is live.
fn leaderboard_partial(task: i64, n: usize, group: &[&(RoomId, Stats)]) -> Option<Vec<u8>> {
    let live: Vec<&(RoomId, Stats)> = group.iter().copied().filter(|(_, s)| is_live(s)).collect();
    let (_, first) = live.first()?;
    let (start, end) = (&first.start, &first.end);
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"kind\":\"partial\"");
    write_field(&mut out, "task", task);
    write_field(&mut out, "window_start", *start);
    write_field(&mut out, "window_end", *end);
    for (name, at) in [("top_gmv", GMV), ("top_views", JOINS)] {
        let ranked = rank(
            live.iter()
                .map(|(id, s)| (id.as_str(), s.totals[at]))
                .collect(),
            n,
        );
        let _ = write!(out, ",\"{name}\":[");
        for (i, (room_id, value)) in ranked.iter().enumerate() {
            out.extend_from_slice(if i > 0 { b",[" } else { b"[" });
            write_str(&mut out, room_id);
            out.push(b',');
            write_int(&mut out, *value);
            out.push(b']');
        }
        out.push(b']');
    }
    let mut totals = [0i64; 4]; // events, rooms live, GMV, orders
    for (_, s) in &live {
        let t = &s.totals;
        totals[0] += t[JOINS] + t[LIKES] + t[COMMENTS] + t[SHARES] + t[ORDERS] + t[GIFTS];
        totals[1] += 1;
        totals[2] += t[GMV];
        totals[3] += t[ORDERS];
    }
    out.extend_from_slice(b",\"totals\":");
    write_ints(&mut out, &totals);
    out.push(b'}');
    Some(out)
}

/// A changelog key into `out` (cleared first): `<prefix><room id>`, or `d/<chunk>/<room id>`
/// for a dedup chunk (`streams.core._state_codec`'s keys).
fn state_key(out: &mut Vec<u8>, prefix: &[u8], chunk: Option<i64>, room_id: &str) {
    out.clear();
    out.extend_from_slice(prefix);
    if let Some(chunk) = chunk {
        write_int(out, chunk);
        out.push(b'/');
    }
    out.extend_from_slice(room_id.as_bytes());
}

// -- the table Python holds ------------------------------------------------------------------

/// A task's rooms (steps 1 and 3: restored from and written to changelog records, windows closed).
/// Python subclasses it as a mapping of its rooms (`streams.core._native_rooms.RoomTable`).
#[pyclass(subclass, module = "streams.core._fastcore")]
pub struct NativeRooms {
    rooms: RoomMap,
    config: Config,
    /// the task's event-time progress (`TaskAggregator._max_ts`, `_watermark`, `_src_max`)
    max_ts: i64,
    watermark: i64,
    /// (in the order inputs first delivered: the metadata record lists them so)
    src_max: indexmap::IndexMap<i64, i64>,
    /// window start -> rooms with that window open, in registration order; the watermark at which
    /// the oldest is due (`_by_window`, `_next_close`)
    by_window: std::collections::BTreeMap<i64, Vec<RoomId>>,
    next_close: i64,
    /// due indexes: rollup window ends, session due slots -> rooms (`_rollup_ends`, `_session_due`)
    rollup_ends: std::collections::BTreeMap<i64, Vec<RoomId>>,
    session_due: std::collections::BTreeMap<i64, Vec<RoomId>>,
    /// rooms changed since the last checkpoint, in the order they changed
    changed: Vec<RoomId>,
    /// the spike detector: windows closed and not yet evaluated, in closing order
    /// (`_undetected`); the longest silence replayed as idle windows; what gives a room's quiet
    /// plan (a Python callable: room id -> `QuietPlan` or None) and how often it was replaced
    detect_spikes: bool,
    undetected: Vec<(RoomId, Stats)>,
    max_gap_ms: i64,
    planner: Option<Py<PyAny>>,
    plan_epoch: u64,
    /// idle expiry (`_expire_idle_rooms`): rooms idle this long go; the watermark of the last
    /// scan; a scan's rooms (leaving, kept but reset) until `expire`; rooms gone since the last
    /// checkpoint (their records deleted then, unless they came back) and their chunks' keys
    room_idle_ms: i64,
    last_expiry_scan: i64,
    expiring: Option<(Vec<RoomId>, Vec<RoomId>)>,
    expired: std::collections::BTreeSet<RoomId>,
    gone_keys: Vec<String>,
    rooms_expired: i64,
    /// the order rooms were taken in (`Room.seq`)
    next_seq: u64,
    /// offsets of events refused at the room cap since the last `take_overflow`
    overflow: Vec<i64>,
    /// the time of the first event that opened a room while the task was not yet watching
    first_room_ts: Option<i64>,
    /// what the closes left since the last take (`take_closed`, `take_encoded`)
    closed_windows: Vec<(RoomId, Stats)>,
    closed_rollups: Vec<(RoomId, i64, Stats)>,
    closed_sessions: Vec<(RoomId, SessionRecord)>,
    /// how many of `closed_windows`, from the first, the leaderboard partials written cover
    /// (`encode_closed` with a budget leaves the rest of a boundary for its next call)
    partials_done: usize,
}

/// `streams.core._task.NO_TIME` and `NEVER`
const NO_TIME: i64 = -(1 << 62);
const NEVER: i64 = 1 << 62;

/// What `apply` counted: applied, late, duplicate, replayed, over the room cap.
#[derive(Default)]
struct Applied {
    applied: i64,
    late: i64,
    duplicate: i64,
    replayed: i64,
    overflow: i64,
}

/// The task's open-window index (`TaskAggregator._by_window`, `_next_close`).
struct Windows<'a> {
    by_window: &'a mut std::collections::BTreeMap<i64, Vec<RoomId>>,
    next_close: &'a mut i64,
    window_ms: i64,
}

impl Windows<'_> {
    /// `TaskAggregator._register`: the room has window `ws` open, indexed once.
    fn register(&mut self, room: &mut Room, ws: i64) {
        room.reg_ws = ws;
        if ws > room.last_ts {
            room.last_ts = ws;
        }
        if room.open_ws.contains(&ws) {
            return;
        }
        room.open_ws.push(ws);
        let members = self.by_window.entry(ws).or_insert_with(|| {
            let end = ws + self.window_ms;
            if end < *self.next_close {
                *self.next_close = end;
            }
            Vec::new()
        });
        members.push(room.room_id.clone());
    }
}

/// FNV-1a: room ids are short, and SipHash (the standard map's, DoS-resistant) costs more than
/// the rest of an event's lookup. The ids come from producers: a flood of colliding ids degrades
/// lookups, which the room cap bounds (`max_rooms`).
#[derive(Default, Clone, Copy)]
pub struct Fnv(pub(crate) u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Rooms by id, each in its own allocation: the table's empty slots (an eighth of them at best,
/// more than half right after it doubles) then cost a pointer instead of a whole room, and a
/// resize moves pointers (at 100 000 rooms a table of rooms inline held 131 072 room-sized slots).
type RoomMap = std::collections::HashMap<RoomId, Box<Room>, std::hash::BuildHasherDefault<Fnv>>;

/// open windows' (start, estimate), the session's and each rollup's (None: no sketch held)
type Estimates = (Vec<(i64, f64)>, Option<f64>, Vec<Option<f64>>);
/// a room-stats record's numbers: start, end, counters, unique viewers, concurrent viewers
type StatsTuple = (i64, i64, Vec<i64>, i64, i64);
/// a session record's numbers: ended, start, last end, counters, unique viewers, peak, its window, as of
type SessionTuple = (bool, i64, i64, Vec<i64>, i64, i64, i64, i64);

/// a closed room-window: its room-stats, the rollups it closed, its session records, rollup ends opened
type ClosedTuple = (
    StatsTuple,
    Vec<(i64, StatsTuple)>,
    Vec<SessionTuple>,
    Vec<i64>,
);

fn session_tuple(s: SessionRecord) -> SessionTuple {
    (
        s.ended,
        s.start,
        s.last_end,
        s.totals.to_vec(),
        s.unique_viewers,
        s.peak,
        s.peak_ws,
        s.updated_at,
    )
}

fn stats_tuple(s: Stats) -> StatsTuple {
    (
        s.start,
        s.end,
        s.totals.to_vec(),
        s.unique_viewers,
        s.concurrent,
    )
}

fn value_error(message: String) -> PyErr {
    PyValueError::new_err(message)
}

/// What `apply` counts: applied, late, duplicate, replayed, over the room cap.
type Counts = (i64, i64, i64, i64, i64);

/// One event as the table takes it, read from a decoded record (`apply`) or parsed from its
/// bytes (`apply_raw`).
enum Event<'a> {
    /// a viewer event: the counter its type adds to (None: a heartbeat), its room and user
    Viewer {
        position: Option<usize>,
        room: &'a str,
        user: &'a str,
    },
    Order {
        room: &'a str,
        order_id: &'a str,
        status: &'a str,
        amount: i64,
    },
    Gift {
        room: &'a str,
        count: i64,
        value: i64,
    },
}

impl Event<'_> {
    fn room(&self) -> &str {
        match self {
            Event::Viewer { room, .. } | Event::Order { room, .. } | Event::Gift { room, .. } => {
                room
            }
        }
    }
}

/// The counter a viewer event's type adds to (None: a type counted nowhere but the sketch).
fn viewer_position(kind: &str) -> Option<usize> {
    match kind {
        "join" => Some(JOINS),
        "leave" => Some(LEAVES),
        "like" => Some(LIKES),
        "comment" => Some(COMMENTS),
        "share" => Some(SHARES),
        _ => None,
    }
}

/// One `apply` call's input: its source, that source's newest event time so far (`NEVER` for
/// re-routed events, which never move the watermark), the other inputs' limit, the replay bound,
/// whether the task watches, and what it counted.
struct Pass {
    source: i64,
    moves_watermark: bool,
    source_max: i64,
    others: i64,
    replay_until: i64,
    watching: bool,
    n: Applied,
}

/// How `apply_raw` reads a batch's messages: the input's kind (0, 1, 2: viewer, order, gift),
/// the decoders' bounds, the viewer types (or order statuses) accepted and the counter each
/// viewer type adds to, the currencies taken without a look, and where rooms belong.
struct Reader {
    kind: u8,
    bounds: crate::flat::Bounds,
    max_bytes: usize,
    max_amount: i64,
    max_count: i64,
    names: Vec<String>,
    positions: Vec<Option<usize>>,
    currencies: Vec<String>,
    partitions: i32,
    here: i32,
}

/// A message as the decoders' fast path parsed it.
enum Parsed<'a> {
    Viewer(crate::flat::Viewer<'a>),
    Order(crate::flat::Order<'a>),
    Gift(crate::flat::Gift<'a>),
}

impl Reader {
    /// The message's value as an event this pass takes, or None (not bytes, over the size
    /// bound, outside the fast path, an order in a currency not taken without a look).
    fn parse<'a>(&self, value: Option<&'a [u8]>) -> Option<Parsed<'a>> {
        let raw = value?;
        if raw.len() > self.max_bytes {
            return None;
        }
        let b = &self.bounds;
        Some(match self.kind {
            0 => Parsed::Viewer(crate::flat::viewer(raw, b, &self.names)?),
            1 => {
                let order = crate::flat::order(raw, b, &self.names, self.max_amount)?;
                if !self.currencies.iter().any(|c| *c == order.currency) {
                    return None;
                }
                Parsed::Order(order)
            }
            _ => Parsed::Gift(crate::flat::gift(raw, b, self.max_amount, self.max_count)?),
        })
    }
}

impl<'a> Parsed<'a> {
    /// The event's time, and the event as the table takes it.
    fn event(&'a self, reader: &'a Reader) -> (i64, Event<'a>) {
        match self {
            Parsed::Viewer(v) => (
                v.ts,
                Event::Viewer {
                    position: reader.positions[v.kind],
                    room: &v.room,
                    user: &v.user,
                },
            ),
            Parsed::Order(o) => (
                o.ts,
                Event::Order {
                    room: &o.room,
                    order_id: &o.order,
                    status: &reader.names[o.status],
                    amount: o.amount,
                },
            ),
            Parsed::Gift(g) => (
                g.ts,
                Event::Gift {
                    room: &g.room,
                    count: g.count,
                    value: g.value,
                },
            ),
        }
    }
}

/// The messages `apply_raw` reads: fetched natively (`streams._fetch`), or a list of message
/// objects (aiokafka's `ConsumerRecord`s, or (offset, value) pairs).
enum Messages<'a, 'py> {
    Run(&'a RecordRun, &'a [u8]),
    List(&'a Bound<'py, PyList>),
}

/// A message's value as `apply_raw` reads it: in place in a fetch response, or the message
/// object's (None: null, or not `bytes`).
enum MessageValue<'a, 'py> {
    InPlace(Option<&'a [u8]>),
    Object(Option<Bound<'py, PyBytes>>),
}

impl MessageValue<'_, '_> {
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            MessageValue::InPlace(value) => *value,
            MessageValue::Object(value) => value.as_ref().map(|b| b.as_bytes()),
        }
    }
}

impl<'a, 'py> Messages<'a, 'py> {
    fn len(&self) -> usize {
        match self {
            Messages::Run(run, _) => run.len(),
            Messages::List(list) => list.len(),
        }
    }

    /// The `i`-th message's offset and value.
    fn get(&self, i: usize) -> PyResult<(i64, MessageValue<'a, 'py>)> {
        match self {
            Messages::Run(run, raw) => {
                let (offset, value) = run.offset_value(raw, i);
                Ok((offset, MessageValue::InPlace(value)))
            }
            Messages::List(list) => {
                let (offset, value) = offset_and_value(&list.get_item(i)?)?;
                Ok((
                    offset.extract()?,
                    MessageValue::Object(value.cast_into::<PyBytes>().ok()),
                ))
            }
        }
    }
}

/// A consumed message's offset and value (an `(offset, raw)` pair's, or the `offset` and
/// `value` attributes of anything else, as aiokafka's `ConsumerRecord`).
fn offset_and_value<'py>(
    item: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    if let Ok(pair) = item.cast::<PyTuple>() {
        if pair.len() == 2 {
            return Ok((pair.get_item(0)?, pair.get_item(1)?));
        }
    }
    let py = item.py();
    Ok((
        item.getattr(pyo3::intern!(py, "offset"))?,
        item.getattr(pyo3::intern!(py, "value"))?,
    ))
}

impl NativeRooms {
    /// A pass over one batch of `source` (`apply`, `apply_raw`).
    fn pass(
        &self,
        source: i64,
        others: i64,
        replay_until: i64,
        moves_watermark: bool,
        watching: bool,
    ) -> PyResult<Pass> {
        if self.expiring.is_some() {
            return Err(value_error(
                "an expiry scan is pending: expire() first".to_owned(),
            ));
        }
        let source_max = if moves_watermark {
            *self.src_max.get(&source).unwrap_or(&NO_TIME)
        } else {
            NEVER
        };
        Ok(Pass {
            source,
            moves_watermark,
            source_max,
            others,
            replay_until,
            watching,
            n: Applied::default(),
        })
    }

    /// Whether a room's events are this task's: it holds the room, or Kafka's default
    /// partitioner puts it here (`Pipeline._keep_local`).
    fn local(&self, reader: &Reader, room: &str) -> bool {
        self.rooms.contains_key(room)
            || crate::partition_of(room.as_bytes(), reader.partitions) == reader.here
    }

    /// The pass's counts; its source's newest event time kept if it went to the end (`whole`; a
    /// pass stopped for due windows kept it when it stopped).
    fn end_pass(&mut self, pass: Pass, whole: bool) -> Counts {
        if whole && pass.moves_watermark {
            self.src_max.insert(pass.source, pass.source_max);
        }
        let n = pass.n;
        (n.applied, n.late, n.duplicate, n.replayed, n.overflow)
    }

    /// One event of `TaskAggregator.apply`'s loop: the watermark moved by its time, then the
    /// event applied to its room (opened, or refused at the cap; skipped as a replay, charged
    /// late, deduplicated). False, with nothing taken, when its time made windows due: the
    /// caller closes them and offers it again.
    fn take_event(&mut self, pass: &mut Pass, offset: i64, ts: i64, ev: &Event) -> PyResult<bool> {
        let cfg_bucket = self.config.bucket_ms;
        let window_ms = self.config.window_ms;
        let n = &mut pass.n;
        if ts > pass.source_max {
            pass.source_max = ts;
            if ts > self.max_ts {
                self.max_ts = ts;
            }
            let limit = ts.min(pass.others);
            if limit - self.config.grace_ms > self.watermark {
                self.watermark = limit - self.config.grace_ms;
                if self.watermark >= self.next_close {
                    self.src_max.insert(pass.source, pass.source_max);
                    return Ok(false);
                }
            }
        }
        let room_id = ev.room();
        let wm = self.watermark;
        let held = self.rooms.len();
        let mut windows = Windows {
            by_window: &mut self.by_window,
            next_close: &mut self.next_close,
            window_ms,
        };
        let room = match self.rooms.get_mut(room_id) {
            Some(room) => room,
            None => {
                if ts < wm {
                    n.late += 1;
                    return Ok(true);
                }
                if held >= self.config.max_rooms {
                    n.overflow += 1;
                    self.overflow.push(offset);
                    return Ok(true);
                }
                let mut room = Room::new(room_id);
                room.seq = self.next_seq;
                self.next_seq += 1;
                // its records were to be deleted at the next checkpoint: they are written
                // instead, its t/ record too
                room.tail_dirty = self.expired.remove(room_id);
                if !pass.watching && self.first_room_ts.is_none() {
                    self.first_room_ts = Some(ts);
                }
                self.rooms.entry(room_id.into()).or_insert(Box::new(room))
            }
        };
        if offset <= pass.replay_until {
            let held = room
                .offsets
                .iter()
                .find(|(s, _)| *s == pass.source)
                .map_or(-1, |(_, o)| *o);
            if offset <= held {
                n.replayed += 1;
                return Ok(true);
            }
        }
        if !room.dirty {
            room.dirty = true;
            self.changed.push(room_id.into());
        }
        if ts < wm {
            n.late += 1;
            if let Event::Viewer { position, .. } = ev {
                match position {
                    Some(JOINS) => room.concurrent += 1,
                    Some(LEAVES) => room.concurrent -= 1,
                    _ => {}
                }
            }
            // `_charge_late`: the late event counts in the room's bucket at the watermark
            room.counters(wm.div_euclid(cfg_bucket))[LATE] += 1;
            if wm > room.last_ts {
                room.last_ts = wm;
            }
            let late_ws = wm - wm.rem_euclid(window_ms);
            if late_ws != room.reg_ws {
                windows.register(room, late_ws);
            }
            return Ok(true);
        }
        let ws = ts - ts.rem_euclid(window_ms);
        if let Event::Order {
            order_id, status, ..
        } = ev
        {
            let key = format!("{status}:{order_id}");
            if !room.remember(&key, ws) {
                n.duplicate += 1;
                return Ok(true);
            }
        }
        let bucket = ts.div_euclid(cfg_bucket);
        room.counters(bucket);
        if ws != room.reg_ws {
            windows.register(room, ws);
        }
        match *ev {
            Event::Viewer { position, user, .. } => {
                if let Some(position) = position {
                    room.counters(bucket)[position] += 1;
                }
                room.sketch(ws, self.config.lg_k)
                    .map_err(value_error)?
                    .update(datasketches::hash::value::raw_bytes::from_str(user));
            }
            Event::Order { status, amount, .. } => match status {
                "paid" => {
                    let c = room.counters(bucket);
                    c[ORDERS] += 1;
                    c[GMV] += amount;
                }
                "refunded" => room.counters(bucket)[REFUNDS] += amount,
                _ => {}
            },
            Event::Gift { count, value, .. } => {
                let c = room.counters(bucket);
                c[GIFTS] += count;
                c[GIFT_VALUE] += value;
            }
        }
        n.applied += 1;
        Ok(true)
    }

    /// The records of what the table closed since the last call, each handed to `out` (what it
    /// is, key, value) as it is encoded: the leaderboard partials of each window start of the
    /// windows closed since the last partials (rooms in closing order), then room-stats, rollups
    /// and sessions, each in closing order, until `budget` bytes of keys and values are written
    /// (None: all of them); what is left is the next call's. Returns the windows written, their
    /// orders and GMV.
    fn encode_closed(
        &mut self,
        task: i64,
        leaderboard_size: usize,
        budget: Option<usize>,
        mut out: impl FnMut(Out, &[u8], &[u8]),
    ) -> (i64, i64, i64) {
        let window_ms = self.config.window_ms;
        // a slice's partials cover a whole boundary: a partial is a window's top rooms of the task
        let fresh = &self.closed_windows[self.partials_done..];
        if leaderboard_size > 0 && !fresh.is_empty() {
            let mut by_start: Vec<&(RoomId, Stats)> = fresh.iter().collect();
            by_start.sort_by_key(|(_, s)| s.start); // stable: rooms in closing order
            for group in by_start.chunk_by(|a, b| a.1.start == b.1.start) {
                if let Some(partial) = leaderboard_partial(task, leaderboard_size, group) {
                    out(Out::Partial, b"", &partial);
                }
            }
        }
        self.partials_done = self.closed_windows.len();
        let left = std::cell::Cell::new(budget.unwrap_or(usize::MAX));
        let spend = |key: &[u8], value: &[u8]| {
            left.set(left.get().saturating_sub(key.len() + value.len()));
            left.get() > 0
        };
        let (mut orders, mut gmv) = (0, 0);
        // one buffer for every record's key and one for its value, cleared before each
        let (mut key, mut value) = (Vec::with_capacity(64), Vec::with_capacity(512));
        let mut n = 0;
        for (id, s) in &self.closed_windows {
            n += 1;
            orders += s.totals[ORDERS];
            gmv += s.totals[GMV];
            value.clear();
            s.write(&mut value, id, window_ms);
            out(Out::Window, id.as_bytes(), &value);
            if !spend(id.as_bytes(), &value) {
                break;
            }
        }
        drop_front(&mut self.closed_windows, n);
        self.partials_done -= n;
        let mut taken = 0;
        if self.closed_windows.is_empty() && left.get() > 0 {
            for (id, length, s) in &self.closed_rollups {
                taken += 1;
                value.clear();
                s.write(&mut value, id, *length);
                out(Out::Rollup(*length), id.as_bytes(), &value);
                if !spend(id.as_bytes(), &value) {
                    break;
                }
            }
        }
        drop_front(&mut self.closed_rollups, taken);
        taken = 0;
        if self.closed_rollups.is_empty() && self.closed_windows.is_empty() && left.get() > 0 {
            for (id, s) in &self.closed_sessions {
                taken += 1;
                key.clear();
                key.extend_from_slice(id.as_bytes());
                key.push(b':');
                write_int(&mut key, s.start);
                value.clear();
                s.write(&mut value, id);
                out(Out::Session, &key, &value);
                if !spend(&key, &value) {
                    break;
                }
            }
        }
        drop_front(&mut self.closed_sessions, taken);
        (n as i64, orders, gmv)
    }

    /// The body of `checkpoint`: each upsert handed to `upsert` (key, value) as it is encoded,
    /// until the records of the rooms written so far hold `budget` bytes of keys and values
    /// (None: every room changed); the rooms left are the next call's. Returns the tombstone
    /// keys, and whether every room is written (then the expired rooms' tombstones are in them).
    fn checkpoint_with(
        &mut self,
        consumed: Vec<(i64, i64)>,
        budget: Option<usize>,
        mut upsert: impl FnMut(&[u8], &[u8]),
    ) -> (Vec<Vec<u8>>, bool) {
        let mut deletes = Vec::new();
        // the upserts' keys and values, each written into one buffer cleared before it (a
        // tombstone's key is copied out of it)
        let (mut k, mut value) = (Vec::with_capacity(64), Vec::with_capacity(1024));
        let left = std::cell::Cell::new(budget.unwrap_or(usize::MAX));
        let mut upsert = |key: &[u8], value: &[u8]| {
            left.set(left.get().saturating_sub(key.len() + value.len()));
            upsert(key, value);
        };
        let mut changed = std::mem::take(&mut self.changed).into_iter();
        for room_id in changed.by_ref() {
            let Some(room) = self.rooms.get_mut(&room_id) else {
                continue;
            };
            if !room.dirty {
                continue;
            }
            room.dirty = false;
            // every event taken so far is in the state: `{**held, **consumed}`, or `consumed`
            // itself when it holds every source the room held
            let covered = room
                .offsets
                .iter()
                .all(|(s, _)| consumed.iter().any(|(c, _)| c == s));
            let offsets = if covered {
                consumed.clone()
            } else {
                let mut merged = room.offsets.clone();
                for &(source, offset) in &consumed {
                    match merged.iter_mut().find(|(s, _)| *s == source) {
                        Some(slot) => slot.1 = offset,
                        None => merged.push((source, offset)),
                    }
                }
                merged
            };
            room.offsets = offsets;
            state_key(&mut k, b"r/", None, &room_id);
            value.clear();
            room.write(&mut value);
            upsert(&k, &value);
            if room.tail_dirty {
                room.tail_dirty = false;
                value.clear();
                if room.write_tail(&mut value) {
                    state_key(&mut k, b"t/", None, &room_id);
                    upsert(&k, &value);
                } else {
                    state_key(&mut k, b"t/", None, &room_id);
                    deletes.push(k.clone());
                }
            }
            for ws in std::mem::take(&mut room.seen_dirty) {
                let Some((_, keys)) = room.seen_chunks.iter().find(|(w, _)| *w == ws) else {
                    continue;
                };
                value.clear();
                value.push(b'[');
                for (i, order) in keys.iter().enumerate() {
                    if i > 0 {
                        value.push(b',');
                    }
                    write_str(&mut value, order);
                }
                value.push(b']');
                state_key(&mut k, b"d/", Some(ws), &room_id);
                upsert(&k, &value);
            }
            for ws in std::mem::take(&mut room.seen_gone) {
                state_key(&mut k, b"d/", Some(ws), &room_id);
                deletes.push(k.clone());
            }
            if left.get() == 0 {
                break;
            }
        }
        self.changed = changed.collect();
        if !self.changed.is_empty() {
            return (deletes, false);
        }
        for room_id in std::mem::take(&mut self.expired) {
            for prefix in [b"r/", b"t/"] {
                state_key(&mut k, prefix, None, &room_id);
                deletes.push(k.clone());
            }
        }
        for gone in std::mem::take(&mut self.gone_keys) {
            deletes.push(gone.into_bytes());
        }
        (deletes, true)
    }

    /// `_expire_idle_rooms`' scan: the rooms with no open window and no event for `room_idle_ms`
    /// of event time, in the order the table took them; dedup chunks past their TTL forgotten;
    /// those with a chunk left, a session or a rollup kept (reset), the rest leaving. Pending
    /// until `expire` (the caller evaluates the leaving rooms' windows and resolves alerts first).
    fn scan_idle(&mut self) {
        let wm = self.watermark;
        self.last_expiry_scan = wm;
        let cfg = &self.config;
        let cutoff = wm - self.room_idle_ms;
        let mut idle: Vec<(u64, &RoomId)> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.open_ws.is_empty() && r.last_ts < cutoff)
            .map(|(id, r)| (r.seq, id))
            .collect();
        if idle.is_empty() {
            return;
        }
        idle.sort_unstable();
        let idle: Vec<RoomId> = idle.into_iter().map(|(_, id)| id.clone()).collect();
        // dedup memory lives its full TTL even when the room expires sooner
        let dedup_cutoff = wm - cfg.dedup_ttl_ms - cfg.window_ms + 1;
        let (mut leaving, mut keeping) = (Vec::new(), Vec::new());
        for room_id in idle {
            let room = self.rooms.get_mut(&room_id).expect("just seen");
            if !room.seen_chunks.is_empty() {
                let before = room.seen_gone.len();
                room.forget_chunks_before(dedup_cutoff, cfg.dedup_max_per_room);
                if room.seen_gone.len() != before && !room.dirty {
                    room.dirty = true;
                    self.changed.push(room_id.clone());
                }
            }
            if room.seen_chunks.is_empty() && room.session.is_none() && room.rollups.is_none() {
                leaving.push(room_id);
            } else {
                keeping.push(room_id);
            }
        }
        self.expiring = Some((leaving, keeping));
    }

    /// Close window `ws` of one room, outside `close_due` (for the tests and benchmarks).
    fn close_one(&mut self, room_id: &str, ws: i64) -> PyResult<Closed> {
        let wm = self.watermark;
        let NativeRooms { rooms, config, .. } = self;
        let room = rooms
            .get_mut(room_id)
            .ok_or_else(|| PyKeyError::new_err(room_id.to_owned()))?;
        room.close_window(ws, config, wm).map_err(value_error)
    }

    fn room(&self, room_id: &str) -> PyResult<&Room> {
        self.rooms
            .get(room_id)
            .map(|room| &**room)
            .ok_or_else(|| PyKeyError::new_err(room_id.to_owned()))
    }

    fn room_mut(&mut self, room_id: &str) -> PyResult<&mut Room> {
        self.rooms
            .get_mut(room_id)
            .map(|room| &mut **room)
            .ok_or_else(|| PyKeyError::new_err(room_id.to_owned()))
    }
}

#[pymethods]
impl NativeRooms {
    /// The defaults are `CoreConfig`'s.
    #[new]
    #[pyo3(signature = (
        bucket_ms=1_000,
        window_ms=10_000,
        session_gap_ms=1_800_000,
        sessions=true,
        rollup_windows_ms=vec![60_000, 3_600_000],
        lg_k=12,
        grace_ms=2_000,
        max_rooms=200_000,
        dedup_ttl_ms=600_000,
        dedup_max_per_room=100_000,
        detect_spikes=false,
        max_gap_ms=0,
        room_idle_ms=300_000,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        bucket_ms: i64,
        window_ms: i64,
        session_gap_ms: i64,
        sessions: bool,
        rollup_windows_ms: Vec<i64>,
        lg_k: u8,
        grace_ms: i64,
        max_rooms: usize,
        dedup_ttl_ms: i64,
        dedup_max_per_room: usize,
        detect_spikes: bool,
        max_gap_ms: i64,
        room_idle_ms: i64,
    ) -> PyResult<Self> {
        if bucket_ms <= 0 || window_ms <= 0 || window_ms % bucket_ms != 0 {
            return Err(value_error(format!(
                "window_ms {window_ms} is not a positive multiple of bucket_ms {bucket_ms}"
            )));
        }
        let mut longest_first: Vec<usize> = (0..rollup_windows_ms.len()).collect();
        longest_first.sort_by_key(|&i| std::cmp::Reverse(rollup_windows_ms[i]));
        Ok(NativeRooms {
            rooms: RoomMap::default(),
            max_ts: NO_TIME,
            watermark: NO_TIME,
            src_max: indexmap::IndexMap::new(),
            by_window: std::collections::BTreeMap::new(),
            next_close: NEVER,
            rollup_ends: std::collections::BTreeMap::new(),
            session_due: std::collections::BTreeMap::new(),
            changed: Vec::new(),
            detect_spikes,
            undetected: Vec::new(),
            max_gap_ms,
            planner: None,
            plan_epoch: 0,
            room_idle_ms,
            last_expiry_scan: NO_TIME,
            expiring: None,
            expired: Default::default(),
            gone_keys: Vec::new(),
            rooms_expired: 0,
            next_seq: 0,
            overflow: Vec::new(),
            first_room_ts: None,
            closed_windows: Vec::new(),
            closed_rollups: Vec::new(),
            closed_sessions: Vec::new(),
            partials_done: 0,
            config: Config {
                bucket_ms,
                window_ms,
                session_gap_ms,
                sessions,
                rollup_lengths: rollup_windows_ms,
                longest_first,
                lg_k,
                grace_ms,
                max_rooms,
                dedup_ttl_ms,
                dedup_max_per_room,
            },
        })
    }

    fn __len__(&self) -> usize {
        self.rooms.len()
    }

    /// Whether the table holds the room (the pipeline asks for every event it routes).
    fn __contains__(&self, room_id: &str) -> bool {
        self.rooms.contains_key(room_id)
    }

    /// The position of the first of `items` (`(offset, event)` pairs) whose room the table does
    /// not hold and Kafka's default partitioner puts on another of `partitions` than `here`;
    /// None when every room is local (`Pipeline._keep_local`'s check, without a Python step per
    /// event).
    fn first_foreign(
        &self,
        items: &Bound<'_, PyList>,
        partitions: i32,
        here: i32,
    ) -> PyResult<Option<usize>> {
        if partitions < 1 {
            return Err(value_error("partitions must be at least 1".to_owned()));
        }
        for (at, item) in items.iter().enumerate() {
            let item = item.cast::<PyTuple>()?;
            let ev = item.get_item(1)?;
            let room_obj = ev.cast::<PyTuple>()?.get_item(1)?;
            let room_id = room_obj.cast::<PyString>()?.to_str()?;
            if !self.rooms.contains_key(room_id)
                && crate::partition_of(room_id.as_bytes(), partitions) != here
            {
                return Ok(Some(at));
            }
        }
        Ok(None)
    }

    /// Take a room's `r/` record (version 6); returns its room id.
    fn restore_room(&mut self, value: &[u8]) -> PyResult<String> {
        let mut room = Room::decode(value).map_err(value_error)?;
        let room_id = room.room_id.clone();
        room.seq = self.next_seq;
        self.next_seq += 1;
        self.rooms.insert(room_id.clone(), Box::new(room));
        Ok(room_id.into())
    }

    /// Take a room's `t/` record (version 1).
    fn restore_tail(&mut self, room_id: &str, value: &[u8]) -> PyResult<()> {
        let lengths = self.config.rollup_lengths.clone();
        let room = self.room_mut(room_id)?;
        room.decode_tail(value, &lengths).map_err(value_error)
    }

    fn encode_room<'py>(&self, py: Python<'py>, room_id: &str) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.room(room_id)?.encode()))
    }

    fn encode_tail<'py>(
        &self,
        py: Python<'py>,
        room_id: &str,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        Ok(self
            .room(room_id)?
            .encode_tail()
            .map(|raw| PyBytes::new(py, &raw)))
    }

    /// Unique viewers of the room's open window `ws` (None: no sketch), and of its session and
    /// rollups (None where they hold none), as the estimates the Python sketches give.
    fn estimates(&self, room_id: &str) -> PyResult<Estimates> {
        let room = self.room(room_id)?;
        Ok((
            room.uniques
                .iter()
                .map(|(ws, s)| (*ws, s.estimate()))
                .collect(),
            room.session
                .as_ref()
                .and_then(|s| s.uniques.as_ref())
                .map(Held::estimate),
            room.rollups
                .iter()
                .flatten()
                .flatten()
                .map(|r| r.uniques.as_ref().map(Held::estimate))
                .collect(),
        ))
    }

    /// Fold a window's sketch (base64 compact bytes) into the room's session unique viewers, as
    /// `union_of` does: for the tests of the union until the fold itself is native (step 3).
    fn fold_into_session(&mut self, room_id: &str, sketch_b64: &str, lg_k: u8) -> PyResult<()> {
        let window = sketch(&Value::String(sketch_b64.to_owned())).map_err(value_error)?;
        let room = self.room_mut(room_id)?;
        let session = room
            .session
            .as_mut()
            .ok_or_else(|| value_error("the room has no session".into()))?;
        session.uniques = Some(match session.uniques.take() {
            None => Held::Sketch(window),
            Some(held) => held.absorb(&window, lg_k).map_err(value_error)?,
        });
        Ok(())
    }

    /// Close window `ws` of a room (`_close_room_window` and `_fold`): its room-stats, the rollup
    /// windows closed first (length, room-stats), the session records (an ended one, then the live
    /// one), the ends of the rollup windows it opened.
    fn close_window(&mut self, room_id: &str, ws: i64) -> PyResult<ClosedTuple> {
        let closed = self.close_one(room_id, ws)?;
        Ok((
            stats_tuple(closed.stats),
            closed
                .rollups_closed
                .into_iter()
                .map(|(length, s)| (length, stats_tuple(s)))
                .collect(),
            closed.sessions.into_iter().map(session_tuple).collect(),
            closed.rollup_ends_opened,
        ))
    }

    /// `close_window` with the records as published: the room-stats record, the closed rollups'
    /// (length, room-stats record), the session records (`encode_room_stats`,
    /// `encode_room_session`: the same bytes).
    #[allow(clippy::type_complexity)]
    fn close_window_records<'py>(
        &mut self,
        py: Python<'py>,
        room_id: &str,
        ws: i64,
    ) -> PyResult<(
        Bound<'py, PyBytes>,
        Vec<(i64, Bound<'py, PyBytes>)>,
        Vec<Bound<'py, PyBytes>>,
    )> {
        let closed = self.close_one(room_id, ws)?;
        let window_ms = self.config.window_ms;
        Ok((
            PyBytes::new(py, &closed.stats.encode(room_id, window_ms)),
            closed
                .rollups_closed
                .iter()
                .map(|(length, s)| (*length, PyBytes::new(py, &s.encode(room_id, *length))))
                .collect(),
            closed
                .sessions
                .iter()
                .map(|s| PyBytes::new(py, &s.encode(room_id)))
                .collect(),
        ))
    }

    /// `TaskAggregator.apply`'s loop over `items[start:]` (`(offset, event)` pairs of input
    /// `source`, events as decoded: `ViewerEvent`, `OrderEvent`, `GiftEvent`), with `others` the
    /// time the other inputs let the watermark move to and `replay_until` the offset up to which
    /// events may be ones the state holds. Returns where it stopped (`len(items)`, or the event
    /// whose time made windows due: `close_due`, then `apply` again from there) and what it counted:
    /// applied, late, duplicate, replayed, over the room cap.
    ///
    /// `moves_watermark`: false for re-routed events (a source not among the task's inputs), which
    /// are applied but never move the watermark. `watching`: false while the task's state has no
    /// start (`watch_start` None): the time of the first event that opens a room is kept for
    /// `take_first_room_ts` (`_first_delivery`).
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    #[pyo3(signature = (source, items, start, others, replay_until, moves_watermark=true, watching=true))]
    fn apply(
        &mut self,
        source: i64,
        items: &Bound<'_, PyList>,
        start: usize,
        others: i64,
        replay_until: i64,
        moves_watermark: bool,
        watching: bool,
    ) -> PyResult<(usize, Counts)> {
        let mut pass = self.pass(source, others, replay_until, moves_watermark, watching)?;
        let mut at = start;
        let total = items.len();
        while at < total {
            let item = items.get_item(at)?;
            let item = item.cast::<PyTuple>()?;
            let offset: i64 = item.get_item(0)?.extract()?;
            let ev = item.get_item(1)?;
            let ev = ev.cast::<PyTuple>()?;
            let ts: i64 = ev.get_item(3)?.extract()?;
            let room = ev.get_item(1)?;
            let room = room.cast::<PyString>()?.to_str()?;
            let (first, second) = (ev.get_item(0)?, ev.get_item(2)?);
            let first = first.cast::<PyString>()?.to_str()?;
            let status;
            let event = match ev.len() {
                4 => Event::Viewer {
                    position: viewer_position(first),
                    room,
                    user: second.cast::<PyString>()?.to_str()?,
                },
                7 => {
                    status = ev.get_item(4)?;
                    Event::Order {
                        room,
                        order_id: first,
                        status: status.cast::<PyString>()?.to_str()?,
                        amount: ev.get_item(5)?.extract()?,
                    }
                }
                _ => Event::Gift {
                    room,
                    count: ev.get_item(4)?.extract()?,
                    value: ev.get_item(5)?.extract()?,
                },
            };
            if !self.take_event(&mut pass, offset, ts, &event)? {
                break; // windows are due: the caller closes them, then goes on here
            }
            at += 1;
        }
        Ok((at, self.end_pass(pass, at >= total)))
    }

    /// `apply` fused with the batch decoder and the pipeline's routing check
    /// (`Pipeline._keep_local`): `messages[start:]` of input `source` (`kind` 0, 1, 2: viewer,
    /// order, gift; consumed messages, or `(offset, raw)` pairs) parsed by the decoders' native
    /// fast path (`flat`) and applied as they are parsed, with no Python object per event.
    ///
    /// It stops at the first message it does not take: one outside the fast path (not bytes,
    /// over `limits`' size, refused by the parser; an order in a currency not among
    /// `currencies`), or one of a room the table does not hold and Kafka's default partitioner
    /// puts on another of `partitions` than `here`. The caller takes that message, and those
    /// after it up to the next this pass would take, the split way (decoders, dead letters,
    /// re-routing, `apply`), then calls again from there. `names`: the viewer types (or order
    /// statuses) the decoders accept.
    ///
    /// `others`: the time the other inputs let the watermark move to, or None before the input
    /// delivered in this batch: then `delivery(ts)` is called before the first event is taken
    /// (`ts` its time) and returns `(others, watching)` (`TaskAggregator._delivery` and
    /// `_first_delivery`), so a batch with no event taken leaves the input as it was.
    ///
    /// Returns where it stopped, why (0: the end; 1: windows are due, as `apply`; 2: a message it
    /// does not take), `apply`'s counts, the `others` in use (None: no event taken yet), the
    /// offset of the last message taken (None: none), and where the messages it does not take
    /// end (the next it would take, or the end; the stop itself when it stopped for another reason).
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn apply_raw(
        &mut self,
        source: i64,
        kind: u8,
        messages: &Bound<'_, PyAny>,
        start: usize,
        others: Option<i64>,
        watching: bool,
        delivery: &Bound<'_, PyAny>,
        replay_until: i64,
        limits: (usize, usize, i64, i64, i64, i64),
        names: Vec<String>,
        currencies: Vec<String>,
        partitions: i32,
        here: i32,
    ) -> PyResult<(usize, u8, Counts, Option<i64>, Option<i64>, usize)> {
        if partitions < 1 {
            return Err(value_error("partitions must be at least 1".to_owned()));
        }
        let (max_bytes, max_id, ts_low, ts_high, max_amount, max_count) = limits;
        let reader = Reader {
            kind,
            bounds: crate::flat::Bounds {
                max_id,
                ts_low,
                ts_high,
            },
            max_bytes,
            max_amount,
            max_count,
            positions: names.iter().map(|n| viewer_position(n)).collect(),
            names,
            currencies,
            partitions,
            here,
        };
        let mut pass = match others {
            Some(others) => Some(self.pass(source, others, replay_until, true, watching)?),
            None => None,
        };
        let py = messages.py();
        let messages = match messages.cast::<RecordRun>() {
            Ok(run) => Messages::Run(run.get(), run.get().raw(py).as_bytes()),
            Err(_) => Messages::List(messages.cast::<PyList>()?),
        };
        let mut at = start;
        let mut last = None;
        let total = messages.len();
        let stop = loop {
            if at >= total {
                break 0;
            }
            let (offset, value) = messages.get(at)?;
            let Some(parsed) = reader.parse(value.bytes()) else {
                break 2;
            };
            let (ts, event) = parsed.event(&reader);
            if !self.local(&reader, event.room()) {
                break 2;
            }
            let pass = match &mut pass {
                Some(pass) => pass,
                None => {
                    let (others, watching): (i64, bool) = delivery.call1((ts,))?.extract()?;
                    pass.insert(self.pass(source, others, replay_until, true, watching)?)
                }
            };
            if !self.take_event(pass, offset, ts, &event)? {
                break 1;
            }
            last = Some(offset);
            at += 1;
        };
        let mut resume = at;
        if stop == 2 {
            resume += 1;
            while resume < total {
                let (_, value) = messages.get(resume)?;
                if let Some(parsed) = reader.parse(value.bytes()) {
                    if self.local(&reader, parsed.event(&reader).1.room()) {
                        break;
                    }
                }
                resume += 1;
            }
        }
        let used = pass.as_ref().map(|p| p.others);
        let counts = match pass {
            Some(pass) => self.end_pass(pass, stop != 1),
            None => (0, 0, 0, 0, 0),
        };
        Ok((at, stop, counts, used, last, resume))
    }

    /// `_close_due`: every open window whose end is at or before the watermark, oldest first,
    /// each window's rooms in the order they opened it; then the rollup windows and the sessions
    /// due. Returns the room-stats records' numbers, the rollup records' (room, length, numbers)
    /// and the session records' (room, numbers), each in the order Python writes them.
    #[allow(clippy::type_complexity)]
    fn close_due(&mut self) -> PyResult<usize> {
        let before = self.closed_windows.len();
        let windows = &mut self.closed_windows;
        let rollups = &mut self.closed_rollups;
        let sessions = &mut self.closed_sessions;
        let cfg = &self.config;
        let wm = self.watermark;
        while let Some((&ws, _)) = self.by_window.iter().next() {
            if ws + cfg.window_ms > wm {
                break;
            }
            let members = self.by_window.remove(&ws).expect("just seen");
            // room for the window's rooms before they close: at most one reallocation a
            // boundary, not one at each doubling as they close one by one
            windows.reserve(members.len());
            if self.detect_spikes {
                self.undetected.reserve(members.len());
            }
            for room_id in members {
                let room = self
                    .rooms
                    .get_mut(&room_id)
                    .expect("registered rooms exist");
                let closed = room.close_window(ws, cfg, wm).map_err(value_error)?;
                // both records at the next checkpoint (`_tail_changed`): the fold, the detector
                room.tail_dirty = true;
                if !room.dirty {
                    room.dirty = true;
                    self.changed.push(room_id.clone());
                }
                for end in closed.rollup_ends_opened {
                    self.rollup_ends
                        .entry(end)
                        .or_default()
                        .push(room_id.clone());
                }
                if let Some(session) = room.session.as_mut() {
                    if session.due.is_none() {
                        let due = due_slot(session.last_end, cfg.session_gap_ms, cfg.window_ms);
                        session.due = Some(due);
                        self.session_due
                            .entry(due)
                            .or_default()
                            .push(room_id.clone());
                    }
                }
                for (length, stats) in closed.rollups_closed {
                    rollups.push((room_id.clone(), length, stats));
                }
                for record in closed.sessions {
                    sessions.push((room_id.clone(), record));
                }
                if self.detect_spikes {
                    self.undetected
                        .push((room_id.clone(), closed.stats.clone()));
                }
                windows.push((room_id, closed.stats));
            }
        }
        // `_close_rollups`: rollup windows whose end is at or before the watermark
        while let Some((&end, _)) = self.rollup_ends.iter().next() {
            if end > wm {
                break;
            }
            for room_id in self.rollup_ends.remove(&end).expect("just seen") {
                let Some(room) = self.rooms.get_mut(&room_id) else {
                    continue;
                };
                if let Some(held) = room.rollups.as_mut() {
                    for slot in held.iter_mut() {
                        if slot.as_ref().is_some_and(|r| r.start + r.length == end) {
                            let rollup = slot.take().expect("checked");
                            rollups.push((room_id.clone(), rollup.length, rollup.record()));
                        }
                    }
                    if held.iter().all(Option::is_none) {
                        room.rollups = None;
                    }
                }
            }
        }
        // `_end_sessions`: sessions due whose room has no open window that could extend them
        while let Some((&slot, _)) = self.session_due.iter().next() {
            if slot > wm {
                break;
            }
            for room_id in self.session_due.remove(&slot).expect("just seen") {
                let Some(room) = self.rooms.get_mut(&room_id) else {
                    continue;
                };
                let Some(session) = room.session.as_mut() else {
                    continue;
                };
                if session.due != Some(slot) {
                    continue; // ended, or replaced by a newer session, since it was indexed
                }
                let now_due = due_slot(session.last_end, cfg.session_gap_ms, cfg.window_ms);
                if now_due > wm {
                    session.due = Some(now_due);
                    self.session_due
                        .entry(now_due)
                        .or_default()
                        .push(room_id.clone());
                    continue;
                }
                session.due = None;
                let extensible = room
                    .open_ws
                    .iter()
                    .min()
                    .is_some_and(|&first| first < session.last_end + cfg.session_gap_ms);
                if !extensible {
                    let mut ended = room.session.take().expect("checked");
                    ended.updated_at = now_due;
                    sessions.push((room_id.clone(), ended.record(true)));
                }
            }
        }
        let first = |index: &std::collections::BTreeMap<i64, Vec<RoomId>>| {
            index.keys().next().copied().unwrap_or(NEVER)
        };
        self.next_close = self
            .by_window
            .keys()
            .next()
            .map_or(NEVER, |ws| ws + cfg.window_ms)
            .min(first(&self.rollup_ends))
            .min(first(&self.session_due));
        // a scan visits every room: a tenth of the idle time is precise enough for freeing memory
        if wm - self.last_expiry_scan >= cfg.window_ms.max(self.room_idle_ms / 10) {
            self.scan_idle();
        }
        Ok(self.closed_windows.len() - before)
    }

    /// What the closes since the last take left, as numbers (`drain`, `drain_rollups`,
    /// `drain_sessions`): room-stats (room id, numbers), rollup windows (room id, length,
    /// numbers), session records (room id, numbers), each in closing order.
    #[allow(clippy::type_complexity)]
    fn take_closed(
        &mut self,
    ) -> (
        Vec<(String, StatsTuple)>,
        Vec<(String, i64, StatsTuple)>,
        Vec<(String, SessionTuple)>,
    ) {
        let windows = std::mem::take(&mut self.closed_windows);
        let rollups = std::mem::take(&mut self.closed_rollups);
        let sessions = std::mem::take(&mut self.closed_sessions);
        // the caller writes the partials of all of them (a sliced publish is finished first)
        self.partials_done = 0;
        (
            windows
                .into_iter()
                .map(|(id, s)| (id.into(), stats_tuple(s)))
                .collect(),
            rollups
                .into_iter()
                .map(|(id, length, s)| (id.into(), length, stats_tuple(s)))
                .collect(),
            sessions
                .into_iter()
                .map(|(id, s)| (id.into(), session_tuple(s)))
                .collect(),
        )
    }

    /// What the closes since the last take left, as the records the pipeline publishes
    /// (`TaskAggregator.drain_encoded`): room-stats (key, record), the paid orders and GMV in
    /// them, the leaderboard partials of task `task` (top `leaderboard_size`; none if 0), rollup
    /// windows (length, key, record), session records (key, record).
    #[allow(clippy::type_complexity)]
    fn take_encoded<'py>(
        &mut self,
        py: Python<'py>,
        task: i64,
        leaderboard_size: usize,
    ) -> (
        Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>,
        i64,
        i64,
        Vec<Bound<'py, PyBytes>>,
        Vec<(i64, Bound<'py, PyBytes>, Bound<'py, PyBytes>)>,
        Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>,
    ) {
        let (mut windows, mut partials, mut rollups, mut sessions) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (_, orders, gmv) =
            self.encode_closed(task, leaderboard_size, None, |out, key, value| {
                let (key, value) = (PyBytes::new(py, key), PyBytes::new(py, value));
                match out {
                    Out::Window => windows.push((key, value)),
                    Out::Rollup(length) => rollups.push((length, key, value)),
                    Out::Session => sessions.push((key, value)),
                    Out::Partial => partials.push(value),
                }
            });
        (windows, orders, gmv, partials, rollups, sessions)
    }

    /// Whether closed windows, rollups or sessions are left to publish (`publish_into` with a
    /// budget stopped before them).
    #[getter]
    fn has_closed(&self) -> bool {
        !(self.closed_windows.is_empty()
            && self.closed_rollups.is_empty()
            && self.closed_sessions.is_empty())
    }

    /// `take_encoded`'s records written into `outbox` (timestamp now): room-stats to
    /// (`room_stats`, `partition`), rollups to `rollups[length]`, sessions to `sessions`, the
    /// leaderboard partials to (`partials`, 0) keyed by the task; with a `budget`, until that
    /// many bytes of keys and values are written (`encode_closed`; `has_closed` tells whether
    /// some are left). Returns the windows written, their orders and GMV.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (outbox, partition, task, leaderboard_size, room_stats, rollups, sessions, partials, budget=None))]
    fn publish_into(
        &mut self,
        mut outbox: PyRefMut<'_, Outbox>,
        partition: i32,
        task: i64,
        leaderboard_size: usize,
        room_stats: &str,
        rollups: std::collections::HashMap<i64, String>,
        sessions: &str,
        partials: &str,
        budget: Option<usize>,
    ) -> PyResult<(i64, i64, i64)> {
        if let Some(length) = self
            .config
            .rollup_lengths
            .iter()
            .find(|l| !rollups.contains_key(l))
        {
            return Err(PyValueError::new_err(format!(
                "no topic for the {length} ms rollups"
            )));
        }
        let ts = now_ms();
        let task_key = task.to_string();
        Ok(
            self.encode_closed(task, leaderboard_size, budget, |out, key, value| {
                let (topic, partition, key) = match out {
                    Out::Window => (room_stats, partition, key),
                    Out::Rollup(length) => (rollups[&length].as_str(), partition, key),
                    Out::Session => (sessions, partition, key),
                    Out::Partial => (partials, 0, task_key.as_bytes()),
                };
                outbox.append(topic, partition, ts, Some(key), Some(value), &[]);
            }),
        )
    }

    /// The quiet plan of a room is `planner(room_id)` (a `QuietPlan`, or None: every window of
    /// the room goes to the Python detector), asked again for every room after each call
    /// (new rules or categories). None: no quiet path at all.
    #[pyo3(signature = (planner))]
    fn set_planner(&mut self, planner: Option<Py<PyAny>>) {
        self.planner = planner;
        self.plan_epoch += 1;
    }

    /// `TaskAggregator.detect` over the windows closed since the last call, in closing order:
    /// each takes the quiet path on the room's native state where it can; the rest are handed
    /// back, with the state of each room they belong to (once, as of the first: every later
    /// window of that room is handed back too, in order). Returns the windows evaluated, the
    /// windows handed back (room id, room-stats numbers) and the states (room id, the detector's
    /// JSON); the caller runs the Python detector over them in that order and hands each room's
    /// state back (`set_detector`).
    ///
    /// `rooms`: only these rooms' windows (those leaving at an expiry); the others wait.
    #[allow(clippy::type_complexity)]
    #[pyo3(signature = (rooms=None))]
    fn detect<'py>(
        &mut self,
        py: Python<'py>,
        rooms: Option<std::collections::HashSet<String>>,
    ) -> PyResult<(
        i64,
        Vec<(String, StatsTuple)>,
        Vec<(String, Bound<'py, PyBytes>)>,
    )> {
        let mut pending = std::mem::take(&mut self.undetected);
        if let Some(only) = &rooms {
            let (taken, waiting) = pending
                .into_iter()
                .partition(|(id, _)| only.contains(id.as_str()));
            pending = taken;
            self.undetected = waiting;
        }
        let mut evaluated = 0;
        let mut handed = Vec::new();
        let mut states = Vec::new();
        let mut python_rooms: std::collections::HashSet<RoomId> = Default::default();
        let window_ms = self.config.window_ms;
        for (room_id, stats) in pending {
            let Some(room) = self.rooms.get_mut(&room_id) else {
                continue;
            };
            evaluated += 1;
            if !python_rooms.contains(&room_id) {
                if let Some(planner) = &self.planner {
                    if !matches!(&room.plan, Some((epoch, _)) if *epoch == self.plan_epoch) {
                        let plan: Option<Py<QuietPlan>> =
                            planner.call1(py, (room_id.as_str(),))?.extract(py)?;
                        room.plan = Some((self.plan_epoch, plan));
                    }
                }
                let detector = room
                    .detector
                    .get_or_insert_with(|| Detector::Native(NativeDetector::new()));
                if let (Some((_, Some(plan))), Detector::Native(state)) = (&room.plan, detector) {
                    if observe_quiet_natively(state, plan.get(), &stats, window_ms, self.max_gap_ms)
                    {
                        continue;
                    }
                }
                let mut wire = Vec::with_capacity(256);
                room.detector
                    .as_ref()
                    .expect("just set")
                    .write(&mut wire, &room_id);
                states.push((room_id.to_string(), PyBytes::new(py, &wire)));
                python_rooms.insert(room_id.clone());
            }
            handed.push((room_id.into(), stats_tuple(stats)));
        }
        Ok((evaluated, handed, states))
    }

    /// A room's detector state after the Python detector (`DetectorState.to_wire()` as JSON);
    /// written at the next checkpoint.
    fn set_detector(&mut self, room_id: &str, wire: &[u8]) -> PyResult<()> {
        let wire = std::str::from_utf8(wire)
            .map_err(|e| e.to_string())
            .and_then(|text| RawValue::from_string(text.to_owned()).map_err(|e| e.to_string()))
            .map_err(|e| value_error(format!("undecodable detector state: {e}")))?;
        let room = self
            .rooms
            .get_mut(room_id)
            .ok_or_else(|| PyKeyError::new_err(room_id.to_owned()))?;
        room.detector = Some(Detector::read(&wire, room_id));
        room.tail_dirty = true;
        if !room.dirty {
            room.dirty = true;
            self.changed.push(room_id.into());
        }
        Ok(())
    }

    /// Whether a room's detector may have an alert firing (an alert slot open, or a state only
    /// the Python detector reads): `firing` of its `detector_wire` tells.
    fn alert_slots(&self, room_id: &str) -> PyResult<bool> {
        Ok(match &self.room(room_id)?.detector {
            None => false,
            Some(Detector::Native(d)) => d.alerts.get() != "[]",
            Some(Detector::Raw(_)) => true,
        })
    }

    /// A room's detector state as `DetectorState.to_wire()` writes it (None: it has none).
    fn detector_wire<'py>(
        &self,
        py: Python<'py>,
        room_id: &str,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let room = self.room(room_id)?;
        Ok(room.detector.as_ref().map(|detector| {
            let mut wire = Vec::with_capacity(256);
            detector.write(&mut wire, room_id);
            PyBytes::new(py, &wire)
        }))
    }

    /// The rooms of an expiry scan `close_due` began (leaving, kept but reset; None: none
    /// pending). Before `expire`, the caller evaluates the leaving rooms' windows still waiting
    /// for the detector (`detect` with their ids) and resolves the alerts firing in all of them.
    fn expiring(&self) -> Option<(Vec<String>, Vec<String>)> {
        let strings = |ids: &Vec<RoomId>| ids.iter().map(RoomId::to_string).collect();
        self.expiring
            .as_ref()
            .map(|(leaving, keeping)| (strings(leaving), strings(keeping)))
    }

    /// Finish the pending expiry scan: rooms kept lose their activity (concurrent viewers,
    /// detector, open sketches; their dedup memory, session and rollups stay), the others go
    /// (their records deleted at the next checkpoint, unless they come back first). Returns how
    /// many went.
    fn expire(&mut self) -> usize {
        let Some((leaving, keeping)) = self.expiring.take() else {
            return 0;
        };
        for room_id in keeping {
            let room = self
                .rooms
                .get_mut(&room_id)
                .expect("scanned rooms stay until expire");
            // `_reset`: true if anything changed
            if room.detector.is_some()
                || room.concurrent != 0
                || room.last_closed.is_some()
                || !room.uniques.is_empty()
            {
                room.concurrent = 0;
                room.detector = None;
                room.last_closed = None;
                room.uniques.clear();
                room.buckets.clear();
                room.tail_dirty = true;
                if !room.dirty {
                    room.dirty = true;
                    self.changed.push(room_id);
                }
            }
        }
        let gone = leaving.len();
        for room_id in leaving {
            let room = self
                .rooms
                .remove(&room_id)
                .expect("scanned rooms stay until expire");
            for (ws, _) in &room.seen_chunks {
                self.gone_keys.push(format!("d/{ws}/{room_id}"));
            }
            for ws in &room.seen_gone {
                self.gone_keys.push(format!("d/{ws}/{room_id}"));
            }
            self.expired.insert(room_id);
        }
        if gone > 0 {
            let rooms = &self.rooms;
            self.changed
                .retain(|id| rooms.get(id).is_some_and(|room| room.dirty));
            self.rooms_expired += gone as i64;
        }
        gone
    }

    /// Rooms expired so far (`TaskCounters.rooms_expired`).
    #[getter]
    fn rooms_expired(&self) -> i64 {
        self.rooms_expired
    }

    /// The time of the first event that opened a room in an `apply` not `watching` since the
    /// last call (None: none did).
    fn take_first_room_ts(&mut self) -> Option<i64> {
        self.first_room_ts.take()
    }

    /// Offsets of the events refused at the room cap since the last call (`take_overflow`).
    fn take_overflow(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.overflow)
    }

    /// The watermark (`TaskAggregator.watermark_ms`; None before any)
    fn watermark(&self) -> Option<i64> {
        (self.watermark != NO_TIME).then_some(self.watermark)
    }

    /// A room's dedup chunks (window id -> its order keys), in the order they were opened.
    fn dedup_chunks(&self, room_id: &str) -> PyResult<Vec<(i64, Vec<String>)>> {
        Ok(self
            .room(room_id)?
            .seen_chunks
            .iter()
            .map(|(ws, keys)| (*ws, keys.iter().map(str::to_string).collect()))
            .collect())
    }

    /// The `n` rooms with the highest `metric` (a numeric room-stats field) in their last closed
    /// window, highest first, ties by the greater room id (`TaskAggregator.top_closed`).
    fn top_closed(&self, metric: &str, n: usize) -> PyResult<Vec<(String, StatsTuple)>> {
        let field = StatField::of(metric)
            .ok_or_else(|| value_error(format!("unknown metric {metric:?}")))?;
        let window_ms = self.config.window_ms;
        let int = |s: &Stats| match field {
            StatField::Counter(at) => s.totals[at],
            StatField::Unique => s.unique_viewers,
            StatField::Concurrent => s.concurrent,
            StatField::OrdersPerSec => 0,
        };
        let order = |a: &(&RoomId, &Stats), b: &(&RoomId, &Stats)| {
            let by_value = if field == StatField::OrdersPerSec {
                let (x, y) = (
                    orders_per_sec(&a.1.totals, window_ms),
                    orders_per_sec(&b.1.totals, window_ms),
                );
                y.total_cmp(&x)
            } else {
                int(b.1).cmp(&int(a.1))
            };
            by_value.then_with(|| b.0.cmp(a.0))
        };
        let mut ranked: Vec<(&RoomId, &Stats)> = self
            .rooms
            .iter()
            .filter_map(|(id, room)| room.last_closed.as_ref().map(|s| (id, s)))
            .collect();
        if ranked.len() > n {
            if n == 0 {
                return Ok(Vec::new());
            }
            ranked.select_nth_unstable_by(n - 1, order);
            ranked.truncate(n);
        }
        ranked.sort_unstable_by(order);
        Ok(ranked
            .into_iter()
            .map(|(id, s)| (id.to_string(), stats_tuple(s.clone())))
            .collect())
    }

    /// A room's last closed window (`Room.last_closed`), as the room-stats numbers.
    fn last_closed(&self, room_id: &str) -> PyResult<Option<StatsTuple>> {
        Ok(self.room(room_id)?.last_closed.clone().map(stats_tuple))
    }

    /// A restored room's dedup chunks to write again at the next checkpoint (an older record's
    /// dedup memory, moved into chunks).
    fn mark_chunks_changed(&mut self, room_id: &str, chunks: Vec<i64>) -> PyResult<()> {
        let room = self.room_mut(room_id)?;
        for ws in chunks {
            if !room.seen_dirty.contains(&ws) {
                room.seen_dirty.push(ws);
            }
        }
        Ok(())
    }

    /// The rooms held, in the order the table took them (a Python task's dict order).
    fn room_ids(&self) -> Vec<String> {
        let mut ids: Vec<(u64, &RoomId)> = self.rooms.iter().map(|(id, r)| (r.seq, id)).collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id.to_string()).collect()
    }

    /// Rooms to write at the next checkpoint (`TaskAggregator.dirty_rooms`).
    fn dirty_rooms(&self) -> usize {
        self.changed.len()
    }

    /// The task's progress as its metadata record held it (`_restore_meta`): newest event time,
    /// watermark, each input's newest event time.
    fn restore_progress(&mut self, max_ts: i64, watermark: i64, src_max: Vec<(i64, i64)>) {
        self.max_ts = max_ts;
        self.watermark = watermark;
        self.src_max = src_max.into_iter().collect();
    }

    /// The window length (`CoreConfig.window_ms`).
    #[getter]
    fn window_ms(&self) -> i64 {
        self.config.window_ms
    }

    /// The watermark at which something is next due (`_next_close`).
    fn next_close(&self) -> i64 {
        self.next_close
    }

    /// Whether the table holds the room.
    fn has_room(&self, room_id: &str) -> bool {
        self.rooms.contains_key(room_id)
    }

    /// Whether the room holds dedup chunk `ws`.
    fn has_chunk(&self, room_id: &str, ws: i64) -> bool {
        self.rooms
            .get(room_id)
            .is_some_and(|room| room.seen_chunks.iter().any(|(w, _)| *w == ws))
    }

    /// A restored room's records are written at the next checkpoint (`dirty`: its `r/` record,
    /// in the order of these calls), its `t/` record with its next `r/` record (`tail`).
    fn mark_changed(&mut self, room_id: &str, dirty: bool, tail: bool) -> PyResult<()> {
        let room = self
            .rooms
            .get_mut(room_id)
            .ok_or_else(|| PyKeyError::new_err(room_id.to_owned()))?;
        room.tail_dirty |= tail;
        if dirty && !room.dirty {
            room.dirty = true;
            self.changed.push(room_id.into());
        }
        Ok(())
    }

    /// Rooms whose records the next checkpoint deletes unless they come back first (a restore's
    /// `t/` records of no room).
    fn restore_expired(&mut self, room_ids: Vec<String>) {
        self.expired.extend(room_ids.into_iter().map(RoomId::from));
    }

    /// `TaskAggregator.rebase`'s rooms: every room holding input `source` beyond `held` holds it
    /// up to `held`, and is written at the next checkpoint. Returns how many.
    fn rebase(&mut self, source: i64, held: i64) -> usize {
        let mut count = 0;
        let mut lowered: Vec<(u64, RoomId)> = Vec::new();
        for (room_id, room) in self.rooms.iter_mut() {
            if let Some(slot) = room
                .offsets
                .iter_mut()
                .find(|(s, o)| *s == source && *o > held)
            {
                slot.1 = held;
                count += 1;
                if !room.dirty {
                    room.dirty = true;
                    lowered.push((room.seq, room_id.clone()));
                }
            }
        }
        // in the order the task took the rooms, as the Python task visits them
        lowered.sort_unstable();
        self.changed
            .extend(lowered.into_iter().map(|(_, room_id)| room_id));
        count
    }

    /// The task's event-time progress: newest event time, watermark, each input's newest event
    /// time (`_max_ts`, `_watermark`, `_src_max`).
    fn progress(&self) -> (i64, i64, Vec<(i64, i64)>) {
        let src_max = self.src_max.iter().map(|(&s, &t)| (s, t)).collect();
        (self.max_ts, self.watermark, src_max)
    }

    /// A restored room into the task's indexes (`_adopt`), after its records and before its
    /// dedup chunks: its open windows, its rollups still open at the restored watermark, its
    /// session unless it was due and could not be extended. Returns its offsets (the caller's
    /// `replay_until`) and, when sessions are turned off since, its session's ended record (the
    /// last one, unless it had already ended).
    #[allow(clippy::type_complexity)]
    fn adopt(&mut self, room_id: &str) -> PyResult<(Vec<(i64, i64)>, Option<SessionTuple>)> {
        let NativeRooms {
            rooms,
            config: cfg,
            watermark,
            by_window,
            rollup_ends,
            session_due,
            changed,
            ..
        } = self;
        let wm = *watermark;
        let room = rooms
            .get_mut(room_id)
            .ok_or_else(|| PyKeyError::new_err(room_id.to_owned()))?;
        // open rollups of lengths no longer configured: gone from the record too, or they would
        // come back if their length were configured again
        let mut tail_changed = room.unconfigured_ends.drain(..).any(|end| end > wm);
        for &ws in &room.open_ws {
            by_window.entry(ws).or_default().push(room_id.into());
        }
        if let Some(&newest) = room.open_ws.iter().max() {
            room.reg_ws = newest;
        }
        // what was due at the restored watermark was closed, published and committed with it
        if let Some(held) = room.rollups.as_mut() {
            for slot in held.iter_mut() {
                if slot.as_ref().is_some_and(|r| r.start + r.length <= wm) {
                    *slot = None;
                }
            }
            if held.iter().all(Option::is_none) {
                room.rollups = None;
            }
        }
        for rollup in room.rollups.iter().flatten().flatten() {
            rollup_ends
                .entry(rollup.start + rollup.length)
                .or_default()
                .push(room_id.into());
        }
        let extensible = |room: &Room, last_end: i64| {
            room.open_ws
                .iter()
                .min()
                .is_some_and(|&first| first < last_end + cfg.session_gap_ms)
        };
        let mut ended = None;
        if let Some(session) = room.session.as_ref() {
            let due = due_slot(session.last_end, cfg.session_gap_ms, cfg.window_ms);
            let over = due <= wm && !extensible(room, session.last_end);
            if !cfg.sessions {
                if !over {
                    ended = Some(session_tuple(session.record(true)));
                }
                room.session = None;
                tail_changed = true;
            } else if over {
                room.session = None; // ended (see `_end_sessions`)
            } else {
                room.session.as_mut().expect("checked").due = Some(due);
                session_due.entry(due).or_default().push(room_id.into());
            }
        }
        let offsets = room.offsets.clone();
        if tail_changed {
            room.tail_dirty = true;
            if !room.dirty {
                room.dirty = true;
                changed.push(room_id.into());
            }
        }
        Ok((offsets, ended))
    }

    /// A dedup chunk read back (`Room.restore_chunk`); False when the room is not held (its record
    /// was quarantined: the caller deletes the chunk).
    fn restore_chunk(&mut self, room_id: &str, ws: i64, keys: Vec<String>) -> bool {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return false;
        };
        let mut kept = Keys::default();
        for key in &keys {
            room.seen.insert(key);
            kept.push(key);
        }
        match room.seen_chunks.iter_mut().find(|(w, _)| *w == ws) {
            Some(chunk) => chunk.1 = kept,
            None => room.seen_chunks.push((ws, kept)),
        }
        true
    }

    /// The restore done: the watermark at which something is next due (`_next_due`).
    fn finish_restore(&mut self) {
        let first = |index: &std::collections::BTreeMap<i64, Vec<RoomId>>| {
            index.keys().next().copied().unwrap_or(NEVER)
        };
        self.next_close = self
            .by_window
            .keys()
            .next()
            .map_or(NEVER, |ws| ws + self.config.window_ms)
            .min(first(&self.rollup_ends))
            .min(first(&self.session_due));
    }

    /// `TaskAggregator.write_checkpoint`'s records of the rooms changed since the last one, in the
    /// order they changed: each room's `r/` record, its `t/` record when its detector, session or
    /// rollups changed (a tombstone when it has none), its dedup chunks changed; then the
    /// tombstones of its chunks forgotten. `consumed` (source -> the last offset taken, in the
    /// order the task first took each) becomes the offsets of every room written. Returns the
    /// upserts and the tombstone keys; the caller writes the metadata record between them.
    #[allow(clippy::type_complexity)]
    fn checkpoint<'py>(
        &mut self,
        py: Python<'py>,
        consumed: Vec<(i64, i64)>,
    ) -> (
        Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>,
        Vec<Bound<'py, PyBytes>>,
    ) {
        let mut upserts = Vec::new();
        let (deletes, _) = self.checkpoint_with(consumed, None, |key, value| {
            upserts.push((PyBytes::new(py, key), PyBytes::new(py, value)))
        });
        let deletes = deletes.iter().map(|key| PyBytes::new(py, key)).collect();
        (upserts, deletes)
    }

    /// `checkpoint` with the upserts written into `outbox` (to `topic`, `partition`, timestamp
    /// now); with a `budget`, until that many bytes are written (`checkpoint_with`: the next
    /// call goes on with the rooms left, and `consumed` must be the same). Returns how many, the
    /// tombstone keys, and whether every room is written.
    #[pyo3(signature = (outbox, topic, partition, consumed, budget=None))]
    fn checkpoint_into<'py>(
        &mut self,
        py: Python<'py>,
        mut outbox: PyRefMut<'_, Outbox>,
        topic: &str,
        partition: i32,
        consumed: Vec<(i64, i64)>,
        budget: Option<usize>,
    ) -> (usize, Vec<Bound<'py, PyBytes>>, bool) {
        let ts = now_ms();
        let mut written = 0;
        let (deletes, done) = self.checkpoint_with(consumed, budget, |key, value| {
            outbox.append(topic, partition, ts, Some(key), Some(value), &[]);
            written += 1;
        });
        (
            written,
            deletes.iter().map(|key| PyBytes::new(py, key)).collect(),
            done,
        )
    }

    /// The room's open windows, oldest first.
    fn open_windows(&self, room_id: &str) -> PyResult<Vec<i64>> {
        let mut open = self.room(room_id)?.open_ws.clone();
        open.sort_unstable();
        Ok(open)
    }
}
