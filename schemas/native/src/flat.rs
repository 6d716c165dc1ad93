//! The flat-JSON parser of livepulse's hot path, shared by the native decoders
//! (`schemas/native`, which build the event records) and the native room table
//! (`streams/native`, which applies events straight from the bytes; it includes this file).
//!
//! It accepts a strict subset of what the Python decoders accept: one flat JSON object whose
//! required fields hold valid values, where every string is valid UTF-8 (escapes decoded; no raw
//! control character or DEL, no lone surrogate), every number an integer of at most 18 digits,
//! every other value `true`, `false` or `null`, and no required key appears twice. Anything else
//! is `None`: the caller hands it to the Python decoders, which stay the definition of what is
//! valid (and name the reason of what is not).

use std::borrow::Cow;

/// A value of the object's top level, as far as the fast path cares.
pub enum Val<'a> {
    Missing,
    Str(Cow<'a, str>),
    Int(i64),
    Other,
}

pub const MAX_FIELDS: usize = 7;
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
pub fn parse<'a>(raw: &'a [u8], keys: &[&[u8]]) -> Option<[Val<'a>; MAX_FIELDS]> {
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
pub struct Bounds {
    pub max_id: usize,
    pub ts_low: i64,
    pub ts_high: i64,
}

impl Bounds {
    /// An id: 1 to `max_id` characters, none of them a control character (the strict decoder's
    /// rule: U+0000-U+001F, U+007F-U+009F).
    pub fn id<'a>(&self, v: Val<'a>) -> Option<Cow<'a, str>> {
        let Val::Str(s) = v else { return None };
        let clean = |c: char| !matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}');
        let ok = if s.is_ascii() {
            // the usual case: bytes are characters
            !s.is_empty() && s.len() <= self.max_id && s.bytes().all(|c| (0x20..0x7f).contains(&c))
        } else {
            let n = s.chars().count();
            0 < n && n <= self.max_id && s.chars().all(clean)
        };
        ok.then_some(s)
    }

    pub fn ts(&self, v: &Val<'_>) -> Option<i64> {
        match *v {
            Val::Int(t) if self.ts_low <= t && t <= self.ts_high => Some(t),
            _ => None,
        }
    }

    pub fn int_in(v: &Val<'_>, low: i64, high: i64) -> Option<i64> {
        match *v {
            Val::Int(n) if low <= n && n <= high => Some(n),
            _ => None,
        }
    }
}

/// The position of `v` among a fixed set of strings (viewer types, order statuses).
pub fn one_of<T: AsRef<[u8]>>(v: &Val<'_>, names: &[T]) -> Option<usize> {
    match v {
        Val::Str(s) => names.iter().position(|n| n.as_ref() == s.as_bytes()),
        _ => None,
    }
}

/// A `live.viewer` event: its type (a position in the caller's `kinds`), room, user and time.
pub struct Viewer<'a> {
    pub kind: usize,
    pub room: Cow<'a, str>,
    pub user: Cow<'a, str>,
    pub ts: i64,
}

/// `raw` as a `live.viewer` event, or `None` (outside the fast path, or invalid).
pub fn viewer<'a, T: AsRef<[u8]>>(raw: &'a [u8], b: &Bounds, kinds: &[T]) -> Option<Viewer<'a>> {
    const KEYS: [&[u8]; 4] = [b"type", b"room_id", b"user_id", b"ts"];
    let [kind, room, user, ts, ..] = parse(raw, &KEYS)?;
    Some(Viewer {
        kind: one_of(&kind, kinds)?,
        room: b.id(room)?,
        user: b.id(user)?,
        ts: b.ts(&ts)?,
    })
}

/// A `live.order` event (`status`: a position in the caller's `statuses`).
pub struct Order<'a> {
    pub order: Cow<'a, str>,
    pub room: Cow<'a, str>,
    pub user: Cow<'a, str>,
    pub ts: i64,
    pub status: usize,
    pub amount: i64,
    pub currency: Cow<'a, str>,
}

/// `raw` as a `live.order` event, or `None`.
pub fn order<'a, T: AsRef<[u8]>>(
    raw: &'a [u8],
    b: &Bounds,
    statuses: &[T],
    max_amount: i64,
) -> Option<Order<'a>> {
    const KEYS: [&[u8]; 7] = [
        b"order_id",
        b"room_id",
        b"user_id",
        b"ts",
        b"status",
        b"amount_minor",
        b"currency",
    ];
    let [order, room, user, ts, status, amount, currency] = parse(raw, &KEYS)?;
    Some(Order {
        order: b.id(order)?,
        room: b.id(room)?,
        user: b.id(user)?,
        ts: b.ts(&ts)?,
        status: one_of(&status, statuses)?,
        amount: Bounds::int_in(&amount, 0, max_amount)?,
        currency: match currency {
            Val::Str(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => c,
            _ => return None,
        },
    })
}

/// A `live.gift` event.
pub struct Gift<'a> {
    pub gift: Cow<'a, str>,
    pub room: Cow<'a, str>,
    pub user: Cow<'a, str>,
    pub ts: i64,
    pub count: i64,
    pub value: i64,
}

/// `raw` as a `live.gift` event, or `None`.
pub fn gift<'a>(raw: &'a [u8], b: &Bounds, max_amount: i64, max_count: i64) -> Option<Gift<'a>> {
    const KEYS: [&[u8]; 6] = [
        b"gift_id",
        b"room_id",
        b"user_id",
        b"ts",
        b"count",
        b"value_minor",
    ];
    let [gift, room, user, ts, count, value, _] = parse(raw, &KEYS)?;
    Some(Gift {
        gift: b.id(gift)?,
        room: b.id(room)?,
        user: b.id(user)?,
        ts: b.ts(&ts)?,
        count: Bounds::int_in(&count, 1, max_count)?,
        value: Bounds::int_in(&value, 0, max_amount)?,
    })
}
