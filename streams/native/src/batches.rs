//! Kafka record batches written natively: the producer path's per-record cost without a Python
//! call per record (issue 13).
//!
//! `Outbox` gathers records per (topic, partition) into record batches of the v2 format (magic 2,
//! uncompressed), byte for byte what aiokafka's own `DefaultRecordBatchBuilder` writes for the
//! same records and timestamps (its compiled builder, the one the producer uses;
//! `tests/unit/test_native_batches.py` compares them): a batch holds
//! as many records as fit in `batch_size` bytes (always at least one), then the next one opens.
//! The native room table writes its room-stats, rollups, sessions, partials and changelog
//! records straight into it (`NativeRooms.publish_into`, `checkpoint_into`), Python code through
//! `add`. `take` hands the batches over as `RecordBatch` objects, which aiokafka's producer sends
//! as it sends its own (`send_batch`): they answer what its accumulator and sender ask of a batch
//! builder (`record_count`, `closed`, `close`, `_set_producer_state`, `_build`, `size`, and
//! `append`, which refuses: a handed-over batch is closed).
//!
//! Compression is not written here: a producer configured to compress keeps aiokafka's builder
//! (`streams._outbound.Outbound` chooses).

use std::time::{SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyByteArray, PyBytes};

/// BaseOffset, Length, PartitionLeaderEpoch, Magic, CRC, Attributes, LastOffsetDelta,
/// FirstTimestamp, MaxTimestamp, ProducerId, ProducerEpoch, BaseSequence, RecordsCount
pub(crate) const HEADER_SIZE: usize = 8 + 4 + 4 + 1 + 4 + 2 + 4 + 8 + 8 + 8 + 2 + 4 + 4;
pub(crate) const CRC_OFFSET: usize = 8 + 4 + 4 + 1;
pub(crate) const ATTRIBUTES_OFFSET: usize = CRC_OFFSET + 4;
pub(crate) const TRANSACTIONAL: i16 = 0x10;
const NO_PARTITION_LEADER_EPOCH: i32 = -1;

/// Kafka's varint: zigzag, then 7 bits a byte, least significant first.
fn write_varint(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_size(value: i64) -> usize {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// The bytes `write_bytes` writes for `bytes`.
fn bytes_size(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => 1,
        Some(b) => varint_size(b.len() as i64) + b.len(),
    }
}

fn write_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => write_varint(out, -1),
        Some(b) => {
            write_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Milliseconds since the epoch, now: a record's timestamp when the producer sets none.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A record's headers: name (UTF-8) and value (None: a null value).
pub type Headers<'a> = [(&'a str, Option<&'a [u8]>)];

/// One record batch being written.
pub struct Batch {
    buf: Vec<u8>,
    count: i32,
    first_ts: i64,
    max_ts: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    transactional: bool,
}

impl Batch {
    /// An empty batch with room for `capacity` bytes.
    fn new(transactional: bool, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity.max(HEADER_SIZE));
        buf.resize(HEADER_SIZE, 0);
        Batch {
            buf,
            count: 0,
            first_ts: 0,
            max_ts: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: 0,
            transactional,
        }
    }

    /// Append a record; false (nothing written) if the batch would reach `limit` bytes with it and
    /// holds one already (the first record always goes in): the bound of aiokafka's compiled
    /// builder, which the producer uses (its pure-Python one lets a batch reach `limit` exactly).
    fn append(
        &mut self,
        ts: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &Headers<'_>,
        limit: usize,
    ) -> bool {
        let first = self.count == 0;
        let delta = if first { 0 } else { ts - self.first_ts };
        // the record's length first, then the record written straight into the batch (no copy
        // of its value through a buffer of its own)
        let mut length = 1 // attributes
            + varint_size(delta)
            + varint_size(self.count as i64) // offset delta
            + bytes_size(key)
            + bytes_size(value)
            + varint_size(headers.len() as i64);
        for (name, value) in headers {
            length += bytes_size(Some(name.as_bytes())) + bytes_size(*value);
        }
        if !first && self.buf.len() + length + varint_size(length as i64) >= limit {
            return false;
        }
        if first {
            self.first_ts = ts;
            self.max_ts = ts;
        } else {
            self.max_ts = self.max_ts.max(ts);
        }
        let out = &mut self.buf;
        write_varint(out, length as i64);
        out.push(0); // attributes
        write_varint(out, delta);
        write_varint(out, self.count as i64);
        write_bytes(out, key);
        write_bytes(out, value);
        write_varint(out, headers.len() as i64);
        for (name, value) in headers {
            write_bytes(out, Some(name.as_bytes()));
            write_bytes(out, *value);
        }
        self.count += 1;
        true
    }

    /// The batch's bytes: the header written over the space kept for it, the CRC-32C last.
    fn build(mut self) -> Vec<u8> {
        let length = (self.buf.len() - 12) as i32;
        let attributes = if self.transactional { TRANSACTIONAL } else { 0 };
        let mut header = Vec::with_capacity(HEADER_SIZE);
        header.extend_from_slice(&0i64.to_be_bytes());
        header.extend_from_slice(&length.to_be_bytes());
        header.extend_from_slice(&NO_PARTITION_LEADER_EPOCH.to_be_bytes());
        header.push(2); // magic
        header.extend_from_slice(&0u32.to_be_bytes()); // CRC, below
        header.extend_from_slice(&attributes.to_be_bytes());
        header.extend_from_slice(&(self.count - 1).max(0).to_be_bytes());
        header.extend_from_slice(&self.first_ts.to_be_bytes());
        header.extend_from_slice(&self.max_ts.to_be_bytes());
        header.extend_from_slice(&self.producer_id.to_be_bytes());
        header.extend_from_slice(&self.producer_epoch.to_be_bytes());
        header.extend_from_slice(&self.base_sequence.to_be_bytes());
        header.extend_from_slice(&self.count.to_be_bytes());
        self.buf[..HEADER_SIZE].copy_from_slice(&header);
        let crc = crc32c::crc32c(&self.buf[ATTRIBUTES_OFFSET..]);
        self.buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        self.buf
    }
}

/// Records gathered per (topic, partition) into record batches (see the module documentation).
#[pyclass(module = "streams.core._fastcore")]
pub struct Outbox {
    batch_size: usize,
    transactional: bool,
    /// the topics written to, each named once: batches are kept by its index
    topics: Vec<String>,
    open: IndexMap<(usize, i32), Batch>,
    full: Vec<(usize, i32, Batch)>,
    /// the bytes each partition's open batch held when last taken: its next one's buffer is
    /// made that size (and a quarter) at once, not grown from nothing by doubling, a copy of all
    /// it holds at each step (realloc under `Batch::append` in a 100 000-room catch-up's profile;
    /// no gain measured offline, session 37)
    last_open: IndexMap<(usize, i32), usize>,
}

impl Outbox {
    /// Append a record (timestamp `ts`, ms) to the open batch of (topic, partition), the batch
    /// full before it set aside for `take`.
    pub fn append(
        &mut self,
        topic: &str,
        partition: i32,
        ts: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &Headers<'_>,
    ) {
        let limit = self.batch_size;
        let topic = match self.topics.iter().position(|t| t == topic) {
            Some(index) => index,
            None => {
                self.topics.push(topic.to_owned());
                self.topics.len() - 1
            }
        };
        let transactional = self.transactional;
        let last_open = &self.last_open;
        let batch = self.open.entry((topic, partition)).or_insert_with(|| {
            let last = last_open.get(&(topic, partition)).copied().unwrap_or(0);
            Batch::new(transactional, (last + last / 4).min(limit))
        });
        if batch.append(ts, key, value, headers, limit) {
            return;
        }
        // the next batch of a partition that filled one is likely to fill too: its buffer is
        // made whole at once, not grown by doubling (a copy of all it holds at every step: 2-3 %
        // of a catch-up's CPU at 100 000 rooms, session 36)
        let full = std::mem::replace(batch, Batch::new(transactional, limit));
        batch.append(ts, key, value, headers, limit); // the first record always goes in
        self.full.push((topic, partition, full));
    }
}

#[pymethods]
impl Outbox {
    /// `batch_size`: the most bytes a batch takes (the producer's `max_batch_size`);
    /// `transactional`: batches written inside a transaction (the producer has a transactional id).
    #[new]
    fn new(batch_size: usize, transactional: bool) -> PyResult<Self> {
        if batch_size <= HEADER_SIZE {
            return Err(PyValueError::new_err(format!(
                "batch_size {batch_size} leaves no room past a batch header"
            )));
        }
        Ok(Outbox {
            batch_size,
            transactional,
            topics: Vec::new(),
            open: IndexMap::new(),
            full: Vec::new(),
            last_open: IndexMap::new(),
        })
    }

    /// One record, its timestamp now (what aiokafka's builder writes for a record without one).
    #[pyo3(signature = (topic, partition, key, value, headers=None))]
    fn add(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<PyBackedBytes>,
        value: Option<PyBackedBytes>,
        headers: Option<Vec<(String, Option<PyBackedBytes>)>>,
    ) -> PyResult<()> {
        self.add_at(topic, partition, now_ms(), key, value, headers)
    }

    /// `add` with the record's timestamp given (ms): what the tests compare with aiokafka's builder.
    #[pyo3(signature = (topic, partition, timestamp, key, value, headers=None))]
    fn add_at(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp: i64,
        key: Option<PyBackedBytes>,
        value: Option<PyBackedBytes>,
        headers: Option<Vec<(String, Option<PyBackedBytes>)>>,
    ) -> PyResult<()> {
        let headers = headers.unwrap_or_default();
        let listed: Vec<(&str, Option<&[u8]>)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_deref()))
            .collect();
        self.append(
            topic,
            partition,
            timestamp,
            key.as_deref(),
            value.as_deref(),
            &listed,
        );
        Ok(())
    }

    /// Whether any record is gathered.
    #[getter]
    fn pending(&self) -> bool {
        !self.full.is_empty() || !self.open.is_empty()
    }

    /// Every batch gathered, full ones first then the open ones, each partition's in the order
    /// written: (topic, partition, batch) to hand to the producer. The outbox is empty after.
    fn take(&mut self) -> Vec<(String, i32, RecordBatch)> {
        let topics = &self.topics;
        let mut out: Vec<(String, i32, RecordBatch)> = std::mem::take(&mut self.full)
            .into_iter()
            .map(|(topic, partition, batch)| {
                (topics[topic].clone(), partition, RecordBatch::new(batch))
            })
            .collect();
        let last_open = &mut self.last_open;
        out.extend(std::mem::take(&mut self.open).into_iter().map(
            |((topic, partition), batch)| {
                last_open.insert((topic, partition), batch.buf.len());
                (topics[topic].clone(), partition, RecordBatch::new(batch))
            },
        ));
        out
    }
}

/// A batch handed to the producer: the interface aiokafka's accumulator and sender use of their
/// `BatchBuilder` (closed: it takes no more records).
#[pyclass(module = "streams.core._fastcore")]
pub struct RecordBatch {
    batch: Option<Batch>,
    count: i32,
    built: Option<Py<PyByteArray>>,
}

impl RecordBatch {
    fn new(mut batch: Batch) -> Self {
        // held until the producer's sender builds it: no more than its records (a batch's buffer
        // is made larger than it may need, or grows by doubling)
        batch.buf.shrink_to_fit();
        let count = batch.count;
        RecordBatch {
            batch: Some(batch),
            count,
            built: None,
        }
    }
}

#[pymethods]
impl RecordBatch {
    fn record_count(&self) -> i32 {
        self.count
    }

    fn closed(&self) -> bool {
        true
    }

    fn close(&self) {}

    /// Refused: the producer opens a batch of its own for a record sent to the partition.
    #[pyo3(signature = (*, timestamp, key, value, headers=None))]
    fn append(
        &self,
        timestamp: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Option<Bound<'_, PyAny>>,
    ) -> Option<i32> {
        let _ = (timestamp, key, value, headers);
        None
    }

    /// The idempotent producer's numbers, set before the batch is built (once).
    fn _set_producer_state(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> PyResult<()> {
        let batch = self
            .batch
            .as_mut()
            .ok_or_else(|| PyValueError::new_err("the batch is built already"))?;
        batch.producer_id = producer_id;
        batch.producer_epoch = producer_epoch;
        batch.base_sequence = base_sequence;
        Ok(())
    }

    /// The batch's bytes (built once; the same object on a retry).
    fn _build(&mut self, py: Python<'_>) -> Py<PyByteArray> {
        if let Some(batch) = self.batch.take() {
            let bytes = batch.build();
            self.built = Some(PyByteArray::new(py, &bytes).unbind());
        }
        self.built.as_ref().expect("built above").clone_ref(py)
    }

    fn size(&self, py: Python<'_>) -> usize {
        match (&self.batch, &self.built) {
            (Some(batch), _) => batch.buf.len(),
            (None, Some(built)) => built.bind(py).len(),
            (None, None) => 0,
        }
    }

    /// The built bytes as `bytes` (for the tests).
    fn build_bytes<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let built = self._build(py);
        PyBytes::new(py, &built.bind(py).to_vec())
    }
}
