//! The native fast path of livepulse's batch decoders (`schemas._batch`).
//!
//! It accepts a strict subset of what the Python decoders accept, and hands everything else back
//! untouched, in order, for them to judge (and name the reason of). Accepted: one flat JSON
//! object whose required fields hold valid values, where every string is valid UTF-8 (escapes
//! decoded; no raw control character or DEL, no lone surrogate), every number an integer of at
//! most 18 digits, every other value `true`, `false` or `null`, and no required key appears
//! twice. Anything else (invalid messages, and valid ones with floats or nested values) goes
//! back: the Python decoders and orjson stay the definition of what is valid, this only takes
//! the common case faster.
//! `tests/unit/test_batch_decoders.py` holds both to the strict decoder's verdicts.

use std::borrow::Cow;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple, PyType};

/// A value of the object's top level, as far as the fast path cares.
enum Val<'a> {
    Missing,
    Str(Cow<'a, str>),
    Int(i64),
    Other,
}

const MAX_FIELDS: usize = 7;
const MAX_DIGITS: usize = 18;

/// Bytes the parser has checked to be printable ASCII (0x20-0x7e), as the `str` they are.
fn ascii(bytes: &[u8]) -> &str {
    debug_assert!(bytes.iter().all(|b| (0x20..=0x7e).contains(b)));
    // SAFETY: ASCII is valid UTF-8; the callers pass only bytes their loop matched as 0x20-0x7e.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// The rest of a string (its opening quote eaten), decoded; `None` for a raw control
    /// character or DEL, invalid UTF-8, an unknown escape or a lone surrogate.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.i;
        // the usual case: printable ASCII, borrowed as it is
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    let s = ascii(&self.b[start..self.i]);
                    self.i += 1;
                    return Some(Cow::Borrowed(s));
                }
                b'\\' => break,
                0x20..=0x7e => self.i += 1,
                _ => break,
            }
        }
        let mut out = String::from(ascii(&self.b[start..self.i]));
        loop {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => return Some(Cow::Owned(out)),
                b'\\' => out.push(self.escape()?),
                0x20..=0x7e => out.push(char::from(c)),
                0xc2..=0xf4 => {
                    let len = if c < 0xe0 {
                        2
                    } else if c < 0xf0 {
                        3
                    } else {
                        4
                    };
                    let seq = self.b.get(self.i - 1..self.i - 1 + len)?;
                    out.push_str(std::str::from_utf8(seq).ok()?);
                    self.i += len - 1;
                }
                _ => return None,
            }
        }
    }

    /// The character of the escape after a backslash.
    fn escape(&mut self) -> Option<char> {
        let e = *self.b.get(self.i)?;
        self.i += 1;
        Some(match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = self.hex4()?;
                if (0xd800..0xdc00).contains(&high) {
                    if !(self.eat(b'\\') && self.eat(b'u')) {
                        return None;
                    }
                    let low = self.hex4()?;
                    if !(0xdc00..0xe000).contains(&low) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00))?
                } else {
                    char::from_u32(high)? // a lone low surrogate is no char: None
                }
            }
            _ => return None,
        })
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = std::str::from_utf8(self.b.get(self.i..self.i + 4)?).ok()?;
        if !digits.bytes().all(|d| d.is_ascii_hexdigit()) {
            return None;
        }
        self.i += 4;
        u32::from_str_radix(digits, 16).ok()
    }

    /// An integer: `-?(0|[1-9][0-9]*)` of at most 18 digits, not `-0`. A fraction or an
    /// exponent after it is refused by the caller, which wants a separator next.
    fn int(&mut self) -> Option<i64> {
        let negative = self.eat(b'-');
        let start = self.i;
        let mut value: i64 = 0;
        while let Some(&c @ b'0'..=b'9') = self.b.get(self.i) {
            if self.i - start == MAX_DIGITS {
                return None;
            }
            value = value * 10 + i64::from(c - b'0');
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || (digits > 1 && self.b[start] == b'0') || (negative && value == 0) {
            return None;
        }
        Some(if negative { -value } else { value })
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Option<Val<'a>> {
        match *self.b.get(self.i)? {
            b'"' => {
                self.i += 1;
                self.string().map(Val::Str)
            }
            b'-' | b'0'..=b'9' => self.int().map(Val::Int),
            b't' if self.literal(b"true") => Some(Val::Other),
            b'f' if self.literal(b"false") => Some(Val::Other),
            b'n' if self.literal(b"null") => Some(Val::Other),
            _ => None,
        }
    }
}

/// The values of `keys` in the flat object `raw`, or `None` if `raw` is not in the fast path's
/// subset (a missing key is `Val::Missing`: the caller's checks hand it back).
fn parse<'a>(raw: &'a [u8], keys: &[&[u8]]) -> Option<[Val<'a>; MAX_FIELDS]> {
    let mut vals: [Val<'a>; MAX_FIELDS] = std::array::from_fn(|_| Val::Missing);
    let mut p = Parser { b: raw, i: 0 };
    p.ws();
    if !p.eat(b'{') {
        return None;
    }
    p.ws();
    if !p.eat(b'}') {
        loop {
            if !p.eat(b'"') {
                return None;
            }
            let key = p.string()?;
            p.ws();
            if !p.eat(b':') {
                return None;
            }
            p.ws();
            let v = p.value()?;
            if let Some(j) = keys.iter().position(|k| *k == key.as_bytes()) {
                if !matches!(vals[j], Val::Missing) {
                    return None;
                }
                vals[j] = v;
            }
            p.ws();
            if p.eat(b',') {
                p.ws();
                continue;
            }
            if p.eat(b'}') {
                break;
            }
            return None;
        }
    }
    p.ws();
    if p.i != raw.len() {
        return None;
    }
    Some(vals)
}

/// Bounds of one batch, as `schemas.Limits` and the caller's clock give them.
#[derive(Clone, Copy)]
struct Bounds {
    max_id: usize,
    ts_low: i64,
    ts_high: i64,
}

impl Bounds {
    /// An id: 1 to `max_id` characters, none of them a control character (the strict decoder's
    /// rule: U+0000-U+001F, U+007F-U+009F).
    fn id<'v>(&self, v: &'v Val<'_>) -> Option<&'v str> {
        let Val::Str(s) = v else { return None };
        let clean = |c: char| !matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}');
        if s.is_ascii() {
            // the usual case: bytes are characters
            let ok = !s.is_empty()
                && s.len() <= self.max_id
                && s.bytes().all(|c| (0x20..0x7f).contains(&c));
            return ok.then_some(s);
        }
        let n = s.chars().count();
        (0 < n && n <= self.max_id && s.chars().all(clean)).then_some(s)
    }

    fn ts(&self, v: &Val<'_>) -> Option<i64> {
        match *v {
            Val::Int(t) if self.ts_low <= t && t <= self.ts_high => Some(t),
            _ => None,
        }
    }

    fn int_in(v: &Val<'_>, low: i64, high: i64) -> Option<i64> {
        match *v {
            Val::Int(n) if low <= n && n <= high => Some(n),
            _ => None,
        }
    }
}

/// One of a fixed set of strings (viewer types, order statuses), as the caller's own objects.
fn one_of<'py>(
    v: &Val<'_>,
    names: &[(Vec<u8>, Bound<'py, PyString>)],
) -> Option<Bound<'py, PyString>> {
    match v {
        Val::Str(s) => names
            .iter()
            .find(|(n, _)| n == s.as_bytes())
            .map(|(_, o)| o.clone()),
        _ => None,
    }
}

fn names_of<'py>(names: &Bound<'py, PyTuple>) -> PyResult<Vec<(Vec<u8>, Bound<'py, PyString>)>> {
    names
        .iter()
        .map(|n| {
            let s = n.cast_into::<PyString>()?;
            Ok((s.to_str()?.as_bytes().to_vec(), s))
        })
        .collect()
}

fn text<'py>(py: Python<'py>, s: &str) -> Bound<'py, PyAny> {
    PyString::new(py, s).into_any()
}

fn int<'py>(py: Python<'py>, n: i64) -> Bound<'py, PyAny> {
    n.into_pyobject(py).expect("infallible").into_any()
}

/// `cls` must be a tuple subclass laid out as a tuple (a `NamedTuple`): its records are built
/// as `tuple.__new__(cls, fields)` would build them.
fn check_record_type(cls: &Bound<'_, PyType>) -> PyResult<()> {
    let tp = cls.as_type_ptr();
    // SAFETY: reading the fields of a live type object; PyTuple_Type is a static.
    let ok = unsafe {
        ffi::PyType_IsSubtype(tp, std::ptr::addr_of_mut!(ffi::PyTuple_Type)) != 0
            && (*tp).tp_basicsize == ffi::PyTuple_Type.tp_basicsize
            && (*tp).tp_itemsize == ffi::PyTuple_Type.tp_itemsize
            && (*tp).tp_dictoffset == 0
    };
    if ok {
        Ok(())
    } else {
        Err(PyTypeError::new_err(
            "record type must be a NamedTuple (a tuple subclass without __dict__)",
        ))
    }
}

/// A record of type `cls` (checked by `check_record_type`) holding `fields`.
fn record<'py>(
    py: Python<'py>,
    cls: &Bound<'py, PyType>,
    fields: Vec<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let tp = cls.as_type_ptr();
    // SAFETY: `tp` is a tuple subclass with a tuple's layout; tp_alloc returns a zeroed tuple of
    // `fields.len()` items (or NULL with an exception set), and each slot is set once with a
    // reference we own.
    unsafe {
        let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
        let obj = alloc(tp, fields.len() as ffi::Py_ssize_t);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        for (i, f) in fields.into_iter().enumerate() {
            ffi::PyTuple_SET_ITEM(obj, i as ffi::Py_ssize_t, f.into_ptr());
        }
        Ok(Bound::from_owned_ptr(py, obj))
    }
}

fn pair<'py>(
    py: Python<'py>,
    a: Bound<'py, PyAny>,
    b: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyTuple::new(py, [a, b])?.into_any())
}

/// What a batch gives back: `(offset, record)` for each accepted item; the items handed back,
/// as they were; and for each of those, the position in the first list where it belongs.
type Taken<'py> = (Bound<'py, PyList>, Bound<'py, PyList>, Bound<'py, PyList>);

/// An item's offset and value: of an `(offset, raw)` pair, or of a consumed message (its
/// `offset` and `value` attributes, a value of None read as empty, as the pipeline reads it).
fn offset_and_value<'py>(
    py: Python<'py>,
    item: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, bool)> {
    if let Ok(t) = item.cast::<PyTuple>() {
        if t.len() == 2 {
            return Ok((t.get_item(0)?, t.get_item(1)?, true));
        }
    }
    let offset = item.getattr(pyo3::intern!(py, "offset"))?;
    let value = item.getattr(pyo3::intern!(py, "value"))?;
    let value = if value.is_none() {
        PyBytes::new(py, b"").into_any()
    } else {
        value
    };
    Ok((offset, value, false))
}

/// Runs `take` over `items`: `(offset, raw)` pairs, or consumed messages (anything with `offset`
/// and `value`). Every item it does not accept (a value that is not `bytes`, over `max_bytes`,
/// or refused) is handed back as an `(offset, raw)` pair.
fn batch<'py, F>(
    py: Python<'py>,
    items: &Bound<'py, PyList>,
    max_bytes: usize,
    mut take: F,
) -> PyResult<Taken<'py>>
where
    F: FnMut(&[u8]) -> PyResult<Option<Bound<'py, PyAny>>>,
{
    let good = PyList::empty(py);
    let rest = PyList::empty(py);
    let rest_at = PyList::empty(py);
    for item in items.iter() {
        let (offset, value, is_pair) = offset_and_value(py, &item)?;
        let accepted = match value.cast::<PyBytes>() {
            Ok(raw) if raw.as_bytes().len() <= max_bytes => take(raw.as_bytes())?,
            _ => None,
        };
        match accepted {
            Some(rec) => good.append(pair(py, offset, rec)?)?,
            None => {
                rest_at.append(good.len())?;
                if is_pair {
                    rest.append(item)?;
                } else {
                    rest.append(pair(py, offset, value)?)?;
                }
            }
        }
    }
    Ok((good, rest, rest_at))
}

/// `live.viewer`: `(type, room_id, user_id, ts)`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn viewer_batch<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyList>,
    cls: &Bound<'py, PyType>,
    kinds: &Bound<'py, PyTuple>,
    max_bytes: usize,
    max_id: usize,
    ts_low: i64,
    ts_high: i64,
) -> PyResult<Taken<'py>> {
    check_record_type(cls)?;
    let kinds = names_of(kinds)?;
    let b = Bounds {
        max_id,
        ts_low,
        ts_high,
    };
    const KEYS: [&[u8]; 4] = [b"type", b"room_id", b"user_id", b"ts"];
    batch(py, items, max_bytes, |raw| {
        let Some(v) = parse(raw, &KEYS) else {
            return Ok(None);
        };
        let (Some(kind), Some(room), Some(user), Some(ts)) =
            (one_of(&v[0], &kinds), b.id(&v[1]), b.id(&v[2]), b.ts(&v[3]))
        else {
            return Ok(None);
        };
        let fields = vec![kind.into_any(), text(py, room), text(py, user), int(py, ts)];
        record(py, cls, fields).map(Some)
    })
}

/// `live.order`: `(order_id, room_id, user_id, ts, status, amount_minor, currency)`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn order_batch<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyList>,
    cls: &Bound<'py, PyType>,
    statuses: &Bound<'py, PyTuple>,
    max_bytes: usize,
    max_id: usize,
    ts_low: i64,
    ts_high: i64,
    max_amount: i64,
) -> PyResult<Taken<'py>> {
    check_record_type(cls)?;
    let statuses = names_of(statuses)?;
    let b = Bounds {
        max_id,
        ts_low,
        ts_high,
    };
    const KEYS: [&[u8]; 7] = [
        b"order_id",
        b"room_id",
        b"user_id",
        b"ts",
        b"status",
        b"amount_minor",
        b"currency",
    ];
    batch(py, items, max_bytes, |raw| {
        let Some(v) = parse(raw, &KEYS) else {
            return Ok(None);
        };
        let (Some(order), Some(room), Some(user), Some(ts), Some(status), Some(amount)) = (
            b.id(&v[0]),
            b.id(&v[1]),
            b.id(&v[2]),
            b.ts(&v[3]),
            one_of(&v[4], &statuses),
            Bounds::int_in(&v[5], 0, max_amount),
        ) else {
            return Ok(None);
        };
        let currency = match &v[6] {
            Val::Str(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => c,
            _ => return Ok(None),
        };
        let fields = vec![
            text(py, order),
            text(py, room),
            text(py, user),
            int(py, ts),
            status.into_any(),
            int(py, amount),
            text(py, currency),
        ];
        record(py, cls, fields).map(Some)
    })
}

/// `live.gift`: `(gift_id, room_id, user_id, ts, count, value_minor)`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn gift_batch<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyList>,
    cls: &Bound<'py, PyType>,
    max_bytes: usize,
    max_id: usize,
    ts_low: i64,
    ts_high: i64,
    max_amount: i64,
    max_count: i64,
) -> PyResult<Taken<'py>> {
    check_record_type(cls)?;
    let b = Bounds {
        max_id,
        ts_low,
        ts_high,
    };
    const KEYS: [&[u8]; 6] = [
        b"gift_id",
        b"room_id",
        b"user_id",
        b"ts",
        b"count",
        b"value_minor",
    ];
    batch(py, items, max_bytes, |raw| {
        let Some(v) = parse(raw, &KEYS) else {
            return Ok(None);
        };
        let (Some(gift), Some(room), Some(user), Some(ts), Some(count), Some(value)) = (
            b.id(&v[0]),
            b.id(&v[1]),
            b.id(&v[2]),
            b.ts(&v[3]),
            Bounds::int_in(&v[4], 1, max_count),
            Bounds::int_in(&v[5], 0, max_amount),
        ) else {
            return Ok(None);
        };
        let fields = vec![
            text(py, gift),
            text(py, room),
            text(py, user),
            int(py, ts),
            int(py, count),
            int(py, value),
        ];
        record(py, cls, fields).map(Some)
    })
}

#[pymodule]
fn _fastdecode(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(viewer_batch, m)?)?;
    m.add_function(wrap_pyfunction!(order_batch, m)?)?;
    m.add_function(wrap_pyfunction!(gift_batch, m)?)?;
    Ok(())
}
