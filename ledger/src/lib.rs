//! Gavel's bid ledger: a deterministic state machine for live art auctions.
//!
//! Every replica applies the same Raft-ordered [`pb::Command`]s to a [`Ledger`] and so reaches
//! the same state and emits the same [`pb::Event`]s. The crate does no I/O, reads no clock
//! and lets no randomness reach its output (its hash maps' seeds are random, and nothing
//! depends on their order): time arrives inside each command (`at_ms`), stamped by the Raft
//! leader. Money is integer minor units; whatever reaches snapshots, digests and views is
//! iterated in key order (ordered maps, or hashed maps by id iterated in id order).
//!
//! - [`money`]: currencies and overflow-checked amounts.
//! - [`ladder`]: increment ladders, the default ones per currency.
//! - [`lifecycle`]: the 12 lot states and the moves allowed between them.
//! - [`bidding`]: proxy bidding, reserve and soft close on one lot's book.
//! - [`content`]: the category tree and each lot's attributes, comments and images.
//! - [`error`]: rejections with stable machine codes.
//! - [`id`]: shared ids (`Arc<str>`) and the maps keyed by them.
//! - `event`: events in a compact form ([`Event`]), encoded straight to protobuf bytes.
//! - `once`: exactly-once bid records, and the compact [`Answer`] to a command.
//! - [`state`]: the [`Ledger`], its `apply` (protobuf out) and `apply_compact` (compact out).
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
mod event;
pub mod id;
pub mod json;
pub mod ladder;
pub mod lifecycle;
pub mod limits;
pub mod money;
mod once;
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
pub use event::Event;
pub use money::{Currency, Money};
pub use once::Answer;
pub use snapshot::{Digest, SnapshotError};
pub use state::{Applied, Ledger};
