//! An async store client behind a read model's blocking contract: the store's own small
//! tokio runtime, waited on from whatever thread calls (a blocking-pool worker, a query).

use std::future::Future;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot start the store's runtime: {0}")]
    Start(#[from] std::io::Error),
    #[error("the store's runtime stopped")]
    Stopped,
}

/// A private runtime. Dropped, it shuts down in the background: dropping a runtime the
/// ordinary way blocks, which panics inside another runtime's worker.
pub struct Bridge {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    /// Two worker threads named `name`.
    pub fn new(name: &str) -> Result<Bridge, BridgeError> {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name(name).enable_all().build()?;
        Ok(Bridge { runtime: Some(runtime) })
    }

    /// Runs `fut` on the bridge's runtime and waits for it.
    pub fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Result<T, BridgeError> {
        let runtime = self.runtime.as_ref().ok_or(BridgeError::Stopped)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| BridgeError::Stopped)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
