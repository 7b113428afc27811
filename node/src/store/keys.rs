//! Keys: the state machine's per-entity records in `sm_state`, and log and feed indexes.

use std::io;

use super::db::corrupt;

pub(super) fn user_key(id: &str) -> Vec<u8> {
    [b"u/", id.as_bytes()].concat()
}
pub(super) fn lot_key(id: &str) -> Vec<u8> {
    [b"l/", id.as_bytes()].concat()
}
pub(super) fn auction_key(id: &str) -> Vec<u8> {
    [b"a/", id.as_bytes()].concat()
}
pub(super) fn recorded_key(bidder: &str, bid_id: &str) -> Vec<u8> {
    [b"r/", bidder.as_bytes(), b"\0", bid_id.as_bytes()].concat()
}
pub(super) fn category_key(id: &str) -> Vec<u8> {
    [b"c/", id.as_bytes()].concat()
}
pub(super) fn content_key(lot_id: &str) -> Vec<u8> {
    [b"k/", lot_id.as_bytes()].concat()
}
pub(super) fn comment_key(lot_id: &str, comment_id: &str) -> Vec<u8> {
    [b"m/", lot_id.as_bytes(), b"\0", comment_id.as_bytes()].concat()
}
pub(super) fn history_prefix(lot_id: &str) -> Vec<u8> {
    [b"h/", lot_id.as_bytes(), b"\0"].concat()
}
pub(super) fn history_key(lot_id: &str, seq: usize) -> Vec<u8> {
    [history_prefix(lot_id).as_slice(), &(seq as u64).to_be_bytes()].concat()
}

/// The big-endian key of a log or feed index: keys sort as the indexes do.
pub(super) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(super) fn index_of(key: &[u8]) -> io::Result<u64> {
    <[u8; 8]>::try_from(key).map(u64::from_be_bytes).map_err(|_| corrupt("log key is not 8 bytes"))
}
