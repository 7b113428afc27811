//! Gavel's chaos and linearizability harness (work in progress).
//!
//! - [`linear`]: the linearizability checker for one lot's history, with the ledger's own
//!   bidding rules as the sequential model.
//!
//! Still to come (see the jepsen issue): cluster control in network namespaces, nemeses,
//! the recorded workload, the lost-bid and feed checkers, reports and the
//! `gavel-jepsen test` command.

pub mod linear;
