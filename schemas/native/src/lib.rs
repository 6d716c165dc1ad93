//! The native fast path of livepulse's batch decoders (`schemas._batch`).
//!
//! It accepts a strict subset of what the Python decoders accept (`flat`: one flat JSON object
//! of strings, integers and literals whose required fields hold valid values), and hands
//! everything else back untouched, in order, for them to judge (and name the reason of): the
//! Python decoders and orjson stay the definition of what is valid, this only takes the common
//! case faster. `tests/unit/test_batch_decoders.py` holds both to the strict decoder's verdicts.

mod flat;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple, PyType};

/// A fixed set of strings (viewer types, order statuses) as bytes to match, and as the caller's
/// own objects to put in the records.
type Names<'py> = (Vec<Vec<u8>>, Vec<Bound<'py, PyString>>);

fn names_of<'py>(names: &Bound<'py, PyTuple>) -> PyResult<Names<'py>> {
    let mut bytes = Vec::new();
    let mut objects = Vec::new();
    for n in names.iter() {
        let s = n.cast_into::<PyString>()?;
        bytes.push(s.to_str()?.as_bytes().to_vec());
        objects.push(s);
    }
    Ok((bytes, objects))
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
    let b = flat::Bounds {
        max_id,
        ts_low,
        ts_high,
    };
    batch(py, items, max_bytes, |raw| {
        let Some(v) = flat::viewer(raw, &b, &kinds.0) else {
            return Ok(None);
        };
        let fields = vec![
            kinds.1[v.kind].clone().into_any(),
            text(py, &v.room),
            text(py, &v.user),
            int(py, v.ts),
        ];
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
    let b = flat::Bounds {
        max_id,
        ts_low,
        ts_high,
    };
    batch(py, items, max_bytes, |raw| {
        let Some(o) = flat::order(raw, &b, &statuses.0, max_amount) else {
            return Ok(None);
        };
        let fields = vec![
            text(py, &o.order),
            text(py, &o.room),
            text(py, &o.user),
            int(py, o.ts),
            statuses.1[o.status].clone().into_any(),
            int(py, o.amount),
            text(py, &o.currency),
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
    let b = flat::Bounds {
        max_id,
        ts_low,
        ts_high,
    };
    batch(py, items, max_bytes, |raw| {
        let Some(g) = flat::gift(raw, &b, max_amount, max_count) else {
            return Ok(None);
        };
        let fields = vec![
            text(py, &g.gift),
            text(py, &g.room),
            text(py, &g.user),
            int(py, g.ts),
            int(py, g.count),
            int(py, g.value),
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
