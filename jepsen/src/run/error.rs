//! Why a run could not finish (a run that finds violations still finishes: see `Report`).

use crate::cluster::ClusterError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("setup failed: {0}")]
    Setup(String),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
}
