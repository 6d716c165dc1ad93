//! Fetched record batches read natively: the consumer path's per-record cost without a Python
//! object per record (issue 13).
//!
//! aiokafka turns every fetched record into a `ConsumerRecord` (a C record object, its key and
//! value as `bytes`, a dataclass built in Python, a generator step): about 1.6-2 µs a record on
//! the build machine, most of what a plain consumer loop costs. `FetchedRecords` reads the same
//! fetch response (one partition's record batches, as the broker sent them) the way aiokafka's
//! `PartitionRecords` does, and hands the records over as a `RecordRun`: offsets and positions in
//! the response's bytes. The fused decoder (`NativeRooms.apply_raw`) reads the values from there;
//! anything else that indexes, slices or iterates the run gets `FetchedRecord` objects, which
//! carry what the pipeline reads of a message (`offset`, `timestamp`, `key`, `value`, `headers`).
//!
//! Only what aiokafka would read the same way is read here: record batches of the v2 format
//! (magic 2), uncompressed. `readable` says whether a response is all such batches; the caller
//! (`streams._fetch`) leaves any other to aiokafka. Transactions are read as aiokafka reads
//! them: in read_committed, the batches of a producer whose transaction the response lists as
//! aborted are skipped up to its abort marker, and control batches are never returned.

use std::collections::{HashSet, VecDeque};

use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PySlice, PyString, PyTuple};

use crate::batches::{ATTRIBUTES_OFFSET, CRC_OFFSET, HEADER_SIZE, TRANSACTIONAL};

/// BaseOffset, Length: what precedes a batch's length-counted part (aiokafka's LOG_OVERHEAD).
const LOG_OVERHEAD: usize = 8 + 4;
const MAGIC_OFFSET: usize = CRC_OFFSET - 1;
const COMPRESSION_MASK: i16 = 0x07;
const LOG_APPEND_TIME: i16 = 0x08;
const CONTROL: i16 = 0x20;

fn corrupt(what: &str) -> PyErr {
    PyValueError::new_err(format!("corrupt record batch: {what}"))
}

fn i16_at(raw: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([raw[at], raw[at + 1]])
}

fn i32_at(raw: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(raw[at..at + 4].try_into().expect("four bytes"))
}

fn i64_at(raw: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(raw[at..at + 8].try_into().expect("eight bytes"))
}

/// The length-counted extent of the batch at `at` (`at..end`), or None when the response ends
/// before it does (a fetch cut at its size bound; aiokafka stops there too).
fn batch_end(raw: &[u8], at: usize) -> Option<usize> {
    if raw.len() - at < LOG_OVERHEAD {
        return None;
    }
    let length = i32_at(raw, at + 8);
    let end = at + LOG_OVERHEAD + usize::try_from(length).ok()?;
    (end <= raw.len()).then_some(end)
}

/// Whether the length of the batch at `at` is shorter than a v2 header (negative included): a
/// corrupt response, which aiokafka's reader refuses with an error.
fn short_length(raw: &[u8], at: usize) -> bool {
    raw.len() - at >= LOG_OVERHEAD
        && i64::from(i32_at(raw, at + 8)) < (HEADER_SIZE - LOG_OVERHEAD) as i64
}

/// Whether every whole batch of a fetch response is one this module reads (v2, uncompressed).
/// A batch whose length is shorter than its header is not: aiokafka reads the response and
/// raises, where taking it for the end of the response would fetch the same offset forever.
#[pyfunction]
pub fn readable(raw: &[u8]) -> bool {
    let mut at = 0;
    loop {
        if short_length(raw, at) {
            return false;
        }
        let Some(end) = batch_end(raw, at) else {
            return true;
        };
        if raw[at + MAGIC_OFFSET] != 2
            || i16_at(raw, at + ATTRIBUTES_OFFSET) & COMPRESSION_MASK != 0
        {
            return false;
        }
        at = end;
    }
}

/// Kafka's varint (zigzag) at `*at`, which moves past it.
fn varint(raw: &[u8], at: &mut usize) -> PyResult<i64> {
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *raw
            .get(*at)
            .ok_or_else(|| corrupt("a record runs past its batch"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
        shift += 7;
        if shift > 63 {
            return Err(corrupt("a varint longer than ten bytes"));
        }
    }
}

/// A length-prefixed run of bytes at `*at` (length -1: null): its start and length.
fn span(raw: &[u8], at: &mut usize, end: usize) -> PyResult<(u32, i32)> {
    let length = varint(raw, at)?;
    let start = *at;
    if length < 0 {
        return Ok((start as u32, -1));
    }
    let stop = start.checked_add(length as usize).filter(|s| *s <= end);
    *at = stop.ok_or_else(|| corrupt("a field runs past its batch"))?;
    Ok((start as u32, length as i32))
}

/// One record of a run: where its parts are in the response.
#[derive(Clone, Copy)]
struct Rec {
    offset: i64,
    timestamp: i64,
    key: (u32, i32),
    value: (u32, i32),
    /// where the headers begin, and how many
    headers: (u32, u32),
}

/// The batch being read: its header's facts and the next record's position.
struct Open {
    base_offset: i64,
    next_offset: i64,
    first_timestamp: i64,
    max_timestamp: i64,
    log_append_time: bool,
    end: usize,
    at: usize,
    left: i32,
}

/// One partition's fetch response, read a run of records at a time.
#[pyclass(module = "streams.core._fastcore")]
pub struct FetchedRecords {
    raw: Py<PyBytes>,
    /// where the next batch begins
    at: usize,
    open: Option<Open>,
    next_offset: i64,
    /// aborted transactions the response lists, (producer id, first offset), by first offset
    aborted: VecDeque<(i64, i64)>,
    aborted_producers: HashSet<i64>,
    read_committed: bool,
    check_crcs: bool,
}

#[pymethods]
impl FetchedRecords {
    /// `raw`: the response's record batches; `fetch_offset`: the offset fetched from (records
    /// before it, as in a batch that begins earlier, are not returned); `aborted`: the response's
    /// aborted transactions as (producer id, first offset).
    #[new]
    fn new(
        raw: Bound<'_, PyBytes>,
        fetch_offset: i64,
        aborted: Vec<(i64, i64)>,
        read_committed: bool,
        check_crcs: bool,
    ) -> PyResult<Self> {
        if !readable(raw.as_bytes()) {
            return Err(PyValueError::new_err(
                "not v2 uncompressed record batches: aiokafka's to read",
            ));
        }
        let mut aborted = aborted;
        aborted.sort_by_key(|(_, first)| *first);
        Ok(Self {
            raw: raw.unbind(),
            at: 0,
            open: None,
            next_offset: fetch_offset,
            aborted: aborted.into(),
            aborted_producers: HashSet::new(),
            read_committed,
            check_crcs,
        })
    }

    /// The offset after what has been read (a consumer's position once the run is taken).
    #[getter]
    fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Whether every record of the response has been read.
    #[getter]
    fn exhausted(&self, py: Python<'_>) -> bool {
        self.open.is_none() && batch_end(self.raw.bind(py).as_bytes(), self.at).is_none()
    }

    /// The next up to `max_records` records (fewer at the end of the response).
    fn take(&mut self, py: Python<'_>, max_records: usize) -> PyResult<RecordRun> {
        let raw_obj = self.raw.clone_ref(py);
        let raw = raw_obj.bind(py).as_bytes();
        let mut recs = Vec::with_capacity(max_records.min(4096));
        while recs.len() < max_records {
            let Some(open) = self.open.as_mut() else {
                if !self.open_batch(raw)? {
                    break;
                }
                continue;
            };
            if open.left <= 0 {
                self.next_offset = self.next_offset.max(open.next_offset);
                self.open = None;
                continue;
            }
            open.left -= 1;
            let rec = read_record(raw, open)?;
            if rec.offset < self.next_offset {
                continue;
            }
            self.next_offset = rec.offset + 1;
            recs.push(rec);
        }
        if let Some(open) = &self.open {
            if open.left <= 0 {
                self.next_offset = self.next_offset.max(open.next_offset);
                self.open = None;
            }
        }
        Ok(RecordRun { raw: raw_obj, recs })
    }
}

impl FetchedRecords {
    /// Opens the next batch to read records from, passing over those not returned (control
    /// batches, aborted transactions); false at the end of the response.
    fn open_batch(&mut self, raw: &[u8]) -> PyResult<bool> {
        loop {
            let at = self.at;
            if short_length(raw, at) {
                return Err(corrupt("a batch length shorter than its header"));
            }
            let Some(end) = batch_end(raw, at) else {
                return Ok(false);
            };
            self.at = end;
            if end - at < HEADER_SIZE || raw[at + MAGIC_OFFSET] != 2 {
                return Err(corrupt("not a v2 record batch"));
            }
            if self.check_crcs {
                let crc = u32::from_be_bytes(
                    raw[at + CRC_OFFSET..at + CRC_OFFSET + 4]
                        .try_into()
                        .expect("4"),
                );
                if crc32c::crc32c(&raw[at + ATTRIBUTES_OFFSET..end]) != crc {
                    return Err(corrupt("CRC mismatch"));
                }
            }
            let attributes = i16_at(raw, at + ATTRIBUTES_OFFSET);
            let base_offset = i64_at(raw, at);
            let next_offset = base_offset + i64::from(i32_at(raw, at + 23)) + 1;
            let producer_id = i64_at(raw, at + 43);
            let control = attributes & CONTROL != 0;
            if self.read_committed {
                while let Some(&(producer, first)) = self.aborted.front() {
                    if first > base_offset {
                        break;
                    }
                    self.aborted_producers.insert(producer);
                    self.aborted.pop_front();
                }
                if control && abort_marker(raw, at + HEADER_SIZE, end)? {
                    self.aborted_producers.remove(&producer_id);
                }
                if attributes & TRANSACTIONAL != 0 && self.aborted_producers.contains(&producer_id)
                {
                    self.next_offset = next_offset;
                    continue;
                }
            }
            if control {
                self.next_offset = next_offset;
                continue;
            }
            self.open = Some(Open {
                base_offset,
                next_offset,
                first_timestamp: i64_at(raw, at + 27),
                max_timestamp: i64_at(raw, at + 35),
                log_append_time: attributes & LOG_APPEND_TIME != 0,
                end,
                at: at + HEADER_SIZE,
                left: i32_at(raw, at + 57),
            });
            return Ok(true);
        }
    }
}

/// Whether the control batch whose records begin at `at` holds an abort marker (its first
/// record's key: version 0, type 0), as aiokafka's `_contains_abort_marker` reads it.
fn abort_marker(raw: &[u8], at: usize, end: usize) -> PyResult<bool> {
    let mut open = Open {
        base_offset: 0,
        next_offset: 0,
        first_timestamp: 0,
        max_timestamp: 0,
        log_append_time: false,
        end,
        at,
        left: 1,
    };
    let rec = read_record(raw, &mut open)?;
    let (start, length) = rec.key;
    if length < 4 {
        return Err(corrupt("a control record's key is shorter than four bytes"));
    }
    let start = start as usize;
    Ok(i16_at(raw, start) == 0 && i16_at(raw, start + 2) == 0)
}

/// The record at `open.at`, which moves past it.
fn read_record(raw: &[u8], open: &mut Open) -> PyResult<Rec> {
    let mut at = open.at;
    let length = varint(raw, &mut at)?;
    let end = usize::try_from(length)
        .ok()
        .and_then(|l| at.checked_add(l))
        .filter(|e| *e <= open.end)
        .ok_or_else(|| corrupt("a record runs past its batch"))?;
    at += 1; // attributes
    let timestamp_delta = varint(raw, &mut at)?;
    let offset_delta = varint(raw, &mut at)?;
    let key = span(raw, &mut at, end)?;
    let value = span(raw, &mut at, end)?;
    let count = varint(raw, &mut at)?;
    let headers = (
        at as u32,
        u32::try_from(count).map_err(|_| corrupt("a negative header count"))?,
    );
    for _ in 0..count {
        span(raw, &mut at, end)?;
        span(raw, &mut at, end)?;
    }
    if at != end {
        return Err(corrupt("a record's length does not match its fields"));
    }
    open.at = end;
    let timestamp = if open.log_append_time {
        open.max_timestamp
    } else {
        open.first_timestamp + timestamp_delta
    };
    Ok(Rec {
        offset: open.base_offset + offset_delta,
        timestamp,
        key,
        value,
        headers,
    })
}

/// Records of one fetch response, in offset order: a sequence of `FetchedRecord`, made only
/// when asked for; `NativeRooms.apply_raw` reads offsets and values without them.
#[pyclass(module = "streams.core._fastcore", frozen, sequence)]
pub struct RecordRun {
    raw: Py<PyBytes>,
    recs: Vec<Rec>,
}

impl RecordRun {
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    /// The `i`-th record's offset and value (None: a null value).
    pub fn offset_value<'a>(&self, raw: &'a [u8], i: usize) -> (i64, Option<&'a [u8]>) {
        let rec = &self.recs[i];
        (rec.offset, slice(raw, rec.value))
    }

    pub fn raw<'py>(&self, py: Python<'py>) -> &Bound<'py, PyBytes> {
        self.raw.bind(py)
    }

    fn record(&self, py: Python<'_>, i: usize) -> PyResult<FetchedRecord> {
        let raw = self.raw.bind(py).as_bytes();
        let rec = &self.recs[i];
        let bytes = |s: (u32, i32)| slice(raw, s).map(|b| PyBytes::new(py, b).unbind());
        let mut at = rec.headers.0 as usize;
        let mut headers = Vec::with_capacity(rec.headers.1 as usize);
        for _ in 0..rec.headers.1 {
            let name = span(raw, &mut at, raw.len())?;
            let value = span(raw, &mut at, raw.len())?;
            let name = std::str::from_utf8(slice(raw, name).unwrap_or_default())
                .map_err(|_| corrupt("a header name that is not UTF-8"))?;
            let pair = (PyString::new(py, name), bytes(value));
            headers.push(
                PyTuple::new(
                    py,
                    [pair.0.into_any(), pair.1.into_pyobject(py)?.into_any()],
                )?
                .unbind(),
            );
        }
        Ok(FetchedRecord {
            offset: rec.offset,
            timestamp: rec.timestamp,
            key: bytes(rec.key),
            value: bytes(rec.value),
            headers: PyTuple::new(py, headers)?.unbind(),
        })
    }
}

fn slice(raw: &[u8], (start, length): (u32, i32)) -> Option<&[u8]> {
    let start = start as usize;
    (length >= 0).then(|| &raw[start..start + length as usize])
}

#[pymethods]
impl RecordRun {
    fn __len__(&self) -> usize {
        self.recs.len()
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        index: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if let Ok(range) = index.cast::<PySlice>() {
            let indices = range.indices(self.recs.len() as isize)?;
            let list = PyList::empty(py);
            let mut i = indices.start;
            for _ in 0..indices.slicelength {
                list.append(self.record(py, i as usize)?)?;
                i += indices.step;
            }
            return Ok(list.into_any());
        }
        let i: isize = index.extract()?;
        let n = self.recs.len() as isize;
        let at = if i < 0 { i + n } else { i };
        if at < 0 || at >= n {
            return Err(PyIndexError::new_err("record run index out of range"));
        }
        Ok(Bound::new(py, self.record(py, at as usize)?)?.into_any())
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let list = PyList::empty(py);
        for i in 0..self.recs.len() {
            list.append(self.record(py, i)?)?;
        }
        Ok(list.try_iter()?.into_any())
    }

    /// The offsets of the run, in order.
    #[getter]
    fn offsets(&self) -> Vec<i64> {
        self.recs.iter().map(|r| r.offset).collect()
    }
}

/// One fetched record, as the pipeline reads a consumed message.
#[pyclass(module = "streams.core._fastcore", frozen, get_all)]
pub struct FetchedRecord {
    offset: i64,
    timestamp: i64,
    key: Option<Py<PyBytes>>,
    value: Option<Py<PyBytes>>,
    headers: Py<PyTuple>,
}

#[pymethods]
impl FetchedRecord {
    fn __repr__(&self) -> String {
        format!(
            "FetchedRecord(offset={}, timestamp={})",
            self.offset, self.timestamp
        )
    }
}
