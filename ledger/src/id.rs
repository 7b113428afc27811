//! Shared ids: a user, lot or bid id is allocated once and then shared by reference count.
//!
//! A bid's id and its bidder's id appear in the lot's leader, its history and its
//! exactly-once record; sharing them keeps the hot path free of per-bid string copies. An
//! `Id` compares, hashes and borrows as the `str` it holds.

use std::sync::Arc;

pub type Id = Arc<str>;
