//! What both stores' secondary indexes share: the filter dimensions a lot is indexed under,
//! the index set a query scans, and the cursor that resumes a scan.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::query::{Query, Sort, order_i64};
use crate::store::StoreError;
use crate::summary::LotSummary;

/// The cursor format's version byte.
const CURSOR_V1: u8 = 1;

pub(crate) const SORTS: [Sort; 3] = [Sort::EndsAt, Sort::Price, Sort::Newest];

/// Filter dimensions. `C` and `R` pair the status with the category and the artist: the
/// filters visitors combine most ("open lots in painting"), which a single-dimension index
/// would cover poorly (most lots of a category are long closed).
pub(crate) const DIMS: [u8; 7] = [b'*', b's', b'c', b'r', b'u', b'C', b'R'];

pub(crate) fn sort_slot(sort: Sort) -> usize {
    match sort {
        Sort::EndsAt => 0,
        Sort::Price => 1,
        Sort::Newest => 2,
    }
}

/// A lot's value in dimension `dim` (`None`: not indexed there, a lot outside any sale).
pub(crate) fn dim_value(lot: &LotSummary, dim: u8) -> Option<String> {
    let mut value = String::new();
    dim_value_into(lot, dim, &mut value).then_some(value)
}

/// [`dim_value`] written into `out` (cleared first); false where the lot is not indexed.
pub(crate) fn dim_value_into(lot: &LotSummary, dim: u8, out: &mut String) -> bool {
    use std::fmt::Write;
    out.clear();
    // Writing to a String cannot fail.
    let _ = match dim {
        b'*' => Ok(()),
        b's' => write!(out, "{}", lot.status),
        b'c' => out.write_str(&lot.category),
        b'r' => out.write_str(&lot.artist),
        b'u' if lot.auction_id.is_empty() => return false,
        b'u' => out.write_str(&lot.auction_id),
        b'C' => write!(out, "{}\0{}", lot.status, lot.category),
        b'R' => write!(out, "{}\0{}", lot.status, lot.artist),
        _ => return false,
    };
    true
}

/// Whether `before` and `after` differ in dimension `dim`'s value.
pub(crate) fn dim_changed(before: &LotSummary, after: &LotSummary, dim: u8) -> bool {
    let status = before.status != after.status;
    match dim {
        b's' => status,
        b'c' => before.category != after.category,
        b'r' => before.artist != after.artist,
        b'u' => before.auction_id != after.auction_id,
        b'C' => status || before.category != after.category,
        b'R' => status || before.artist != after.artist,
        _ => false,
    }
}

/// The set a query scans and the sort-key range within it.
pub(crate) fn plan(query: &Query) -> ((u8, String), u64, u64) {
    let status = query.status.map(|s| s as i32);
    let set = match (&query.auction, status, &query.artist, &query.category) {
        (Some(a), ..) => (b'u', a.clone()),
        (None, Some(s), Some(a), _) => (b'R', format!("{s}\0{a}")),
        (None, None, Some(a), _) => (b'r', a.clone()),
        (None, Some(s), None, Some(c)) => (b'C', format!("{s}\0{c}")),
        (None, None, None, Some(c)) => (b'c', c.clone()),
        (None, Some(s), None, None) => (b's', s.to_string()),
        (None, None, None, None) => (b'*', String::new()),
    };
    let (lo, hi) = match query.sort {
        Sort::Price => (query.min_price.map_or(0, order_i64), query.max_price.map_or(u64::MAX, order_i64)),
        Sort::EndsAt => query.ending.map_or((0, u64::MAX), |(from, to)| (order_i64(from), order_i64(to))),
        Sort::Newest => (0, u64::MAX),
    };
    (set, lo, hi)
}

/// What a cursor is bound to: the order and the set it pages through.
pub(crate) fn cursor_scope(sort: Sort, set: &(u8, String)) -> Vec<u8> {
    let mut scope = vec![sort_slot(sort) as u8, set.0];
    scope.extend_from_slice(&(set.1.len() as u64).to_be_bytes());
    scope.extend_from_slice(set.1.as_bytes());
    scope
}

pub(crate) fn encode_cursor(scope: &[u8], key: u64, lot_id: &str) -> String {
    let mut raw = Vec::with_capacity(1 + scope.len() + 8 + lot_id.len());
    raw.push(CURSOR_V1);
    raw.extend_from_slice(scope);
    raw.extend_from_slice(&key.to_be_bytes());
    raw.extend_from_slice(lot_id.as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

/// The entry a cursor resumes after; it must belong to this query's order and set.
pub(crate) fn decode_cursor(cursor: &str, scope: &[u8]) -> Result<(u64, String), StoreError> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| StoreError::BadCursor("not a cursor"))?;
    let Some((&CURSOR_V1, rest)) = raw.split_first() else {
        return Err(StoreError::BadCursor("unknown cursor version"));
    };
    let Some(rest) = rest.strip_prefix(scope) else {
        return Err(StoreError::BadCursor("the cursor belongs to a different filter or order"));
    };
    let (k, id) = rest.split_at_checked(8).ok_or(StoreError::BadCursor("truncated cursor"))?;
    let k = u64::from_be_bytes(k.try_into().map_err(|_| StoreError::BadCursor("truncated cursor"))?);
    let id = std::str::from_utf8(id).map_err(|_| StoreError::BadCursor("not a cursor"))?;
    Ok((k, id.to_owned()))
}
