//! Gavel's chaos and linearizability harness: real `gavel-node` processes, real faults, a
//! recorded history, and checkers that can fail.
//!
//! - [`cluster`]: start, kill -9, restart, pause and resume node processes, and cut their
//!   power.
//! - [`powerfs`]: the in-memory FUSE filesystem under each node that forgets what was not
//!   fsync'd when the power goes.
//! - [`net`]: a host per node (network namespaces, or loopback behind a proxy) and the links
//!   partitions cut.
//! - [`run`]: one test: workload + nemesis, heal, check, report directory.
//! - [`bench`]: the `gavel-bench` load driver (closed and open loop), etcd side by side,
//!   failover, plots.
//! - [`linear`]: the linearizability checker for one lot's history, with the ledger's own
//!   bidding rules as the sequential model.

pub mod bench;
pub mod cluster;
pub mod linear;
pub mod net;
pub mod powerfs;
pub mod run;
