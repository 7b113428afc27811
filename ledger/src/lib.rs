//! Gavel's bid ledger: a deterministic state machine for live art auctions.
//!
//! Every replica applies the same Raft-ordered [`pb::Command`]s to a [`Ledger`] and so reaches
//! the same state and emits the same [`pb::Event`]s. The crate does no I/O, reads no clock
//! and draws no random numbers: time arrives inside each command (`at_ms`), stamped by the
//! Raft leader. Money is integer minor units; maps are ordered (`BTreeMap`).
//!
//! - [`money`]: currencies and overflow-checked amounts.
//! - [`ladder`]: increment ladders, the default ones per currency.
//! - [`lifecycle`]: the 12 lot states and the moves allowed between them.
//! - [`bidding`]: proxy bidding, reserve and soft close on one lot's book.
//! - [`content`]: the category tree and each lot's attributes, comments and images.
//! - [`error`]: rejections with stable machine codes.
//! - [`state`]: the [`Ledger`] and its `apply`.
//! - [`snapshot`]: canonical encoding, restore and the state digest.
//! - [`limits`]: the bound on every input.
//! - [`checks`]: input checks (ids, texts, amounts, windows) shared with the gateway.
//! - [`time`]: RFC 3339 at the edge, Unix milliseconds inside.
//! - [`view`]: public views as JSON (API.md field names), for the CLI and the gateway.
//! - [`json`]: commands as JSON, the replay format.

pub mod bidding;
pub mod checks;
pub mod content;
pub mod error;
pub mod json;
pub mod ladder;
pub mod lifecycle;
pub mod limits;
pub mod money;
pub mod snapshot;
pub mod state;
pub mod time;
pub mod view;

/// Generated protobuf types (`proto/gavel/ledger/v1/ledger.proto`): commands, outcomes,
/// events and snapshots as they are written to the Raft log and sent on the wire.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/gavel.ledger.v1.rs"));
}

pub use error::{Code, Rejection};
pub use money::{Currency, Money};
pub use snapshot::{Digest, SnapshotError};
pub use state::{Applied, Ledger};
