//! A Gavel ledger replica: openraft orders ledger commands, RocksDB makes them durable, the
//! `ledger` state machine applies them, and gRPC carries Raft, clients and the event feed.
//!
//! - [`raft`]: the openraft adapter (type configuration, protobuf conversions).
//! - [`store`]: RocksDB log store and state-machine store.
//! - [`network`]: the Raft transport over tonic.
//! - [`proposer`]: the batched write path and the leader's clock.
//! - [`server`]: the gRPC services (Raft, client, admin).
//! - [`config`]: what a node is told at start.
//! - `replica`: the core the services and background tasks share.
//! - [`node`]: a running node: wiring, bootstrap, the lot-closing timer.
//! - [`client`]: the client library (leader discovery, retries, deadlines).
//! - [`follow`]: a resumable, gap-checked follower of the committed-event feed.
//! - [`subscribe`]: a read model's loop on that feed: batches, retries, dead letters.
//! - [`bridge`]: an async store client behind a read model's blocking contract.
//! - [`limits`]: every bound the node enforces.

pub mod bridge;
pub mod client;
pub mod config;
pub mod follow;
pub mod limits;
pub mod network;
pub mod node;
pub mod proposer;
pub mod raft;
mod replica;
pub mod server;
pub mod store;
pub mod subscribe;

/// Generated protobuf types and gRPC stubs (`proto/gavel/node/v1/node.proto`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("gavel.node.v1");
}

pub use bridge::{Bridge, BridgeError};
pub use client::{Client, ClientError, StateExport};
pub use config::{NodeConfig, UnsafeModes};
pub use follow::{FollowError, Follower};
pub use node::{Node, NodeError};
pub use store::FeedRetention;
pub use subscribe::{
    BlockingHandler, DeadLetter, HandleError, Handler, OnBlockingPool, Progress, SubscribeError, Subscriber,
};
