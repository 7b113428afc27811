//! The log's writer: one thread that writes the log store's batches in the order they were
//! submitted and syncs the WAL once for every group it finds queued (group commit).
//!
//! openraft's core submits an append and goes on: it sends the entries to the followers, takes
//! their answers and applies what is committed while the fsync runs, and learns of the flush
//! from the append's callback. Awaiting the fsync inside `append` would stop the core for every
//! fsync and put the leader's fsync and the followers' round trip in series.

use std::io;
use std::sync::Arc;
use std::sync::mpsc;

use openraft::storage::IOFlushed;
use rocksdb::{DB, WriteBatch, WriteOptions};
use tracing::error;

use crate::raft::TypeConfig;

use super::db::rocks;

/// Batches written per group before the WAL sync, so callbacks of a long queue do not wait for
/// all of it.
const GROUP_OPS_MAX: usize = 256;

/// Who hears that a write is done (synced, if it asked to be).
pub(super) enum Done {
    /// openraft's flush callback of an append.
    Flushed(IOFlushed<TypeConfig>),
    /// A caller awaiting the write.
    Reply(tokio::sync::oneshot::Sender<io::Result<()>>),
    /// Nobody: a hint whose loss costs nothing (its failure still fails what follows).
    Ignored,
}

struct Op {
    batch: WriteBatch,
    sync: bool,
    done: Done,
}

/// Handle to the writer thread. Cheap to clone; dropping the last handle writes what is queued
/// and joins the thread (blocking the dropping thread that long: at shutdown, once), so the
/// database is released when the log store is.
#[derive(Clone)]
pub(super) struct Writer {
    thread: Arc<Thread>,
}

struct Thread {
    tx: Option<mpsc::Sender<Op>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Thread {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            error!("the log writer panicked");
        }
    }
}

impl Writer {
    /// Starts the thread. `fsync: false` is the jepsen harness's unsafe mode: nothing is synced.
    pub(super) fn start(db: Arc<DB>, fsync: bool) -> io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new().name("log writer".into()).spawn(move || run(&db, fsync, &rx))?;
        Ok(Writer { thread: Arc::new(Thread { tx: Some(tx), handle: Some(handle) }) })
    }

    /// Queues `batch`; `done` hears of it once it is written (and synced, with `sync`).
    pub(super) fn submit(&self, batch: WriteBatch, sync: bool, done: Done) -> io::Result<()> {
        let tx = self.thread.tx.as_ref().ok_or_else(stopped)?;
        tx.send(Op { batch, sync, done }).map_err(|_| stopped())
    }

    /// Writes `batch` after everything queued before it, and waits for it.
    pub(super) async fn write(&self, batch: WriteBatch, sync: bool) -> io::Result<()> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.submit(batch, sync, Done::Reply(reply))?;
        done.await.map_err(|_| stopped())?
    }
}

fn stopped() -> io::Error {
    io::Error::other("the log writer has stopped")
}

fn run(db: &DB, fsync: bool, rx: &mpsc::Receiver<Op>) {
    // After a failed write nothing later may be reported written: the log would have a hole.
    let mut failed: Option<(io::ErrorKind, String)> = None;
    let mut group = Vec::with_capacity(GROUP_OPS_MAX);
    while let Ok(first) = rx.recv() {
        group.push(first);
        while group.len() < GROUP_OPS_MAX {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        // A panic in a write fails the group like an error would, rather than leaving its
        // callers waiting for an answer that never comes.
        if failed.is_none()
            && let Err(e) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write_group(db, fsync, &mut group)))
                    .unwrap_or_else(|_| Err(io::Error::other("the log write panicked")))
        {
            error!(error = %e, "log write failed; the log accepts no more writes");
            failed = Some((e.kind(), e.to_string()));
        }
        for op in group.drain(..) {
            let result = match &failed {
                Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
                None => Ok(()),
            };
            match op.done {
                Done::Flushed(callback) => callback.io_completed(result),
                Done::Reply(reply) => {
                    let _ = reply.send(result);
                }
                Done::Ignored => {}
            }
        }
    }
}

/// Writes every batch of the group unsynced, then syncs the WAL once if any asked for it: the
/// sync covers every write before it.
fn write_group(db: &DB, fsync: bool, group: &mut [Op]) -> io::Result<()> {
    let unsynced = WriteOptions::default();
    for op in group.iter_mut().filter(|op| !op.batch.is_empty()) {
        db.write_opt(std::mem::take(&mut op.batch), &unsynced).map_err(rocks)?;
    }
    if fsync && group.iter().any(|op| op.sync) {
        db.flush_wal(true).map_err(rocks)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;
    use crate::store::open_db;

    /// Writes queued together land in submission order (the last write of a key wins), each
    /// caller hears of its own, and dropping the handle releases the database.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_land_in_submission_order_and_dropping_the_handle_releases_the_db() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path(), 1).unwrap();
        let writer = Writer::start(db.clone(), true).unwrap();
        let mut replies = Vec::new();
        for i in 0..500u32 {
            let mut batch = WriteBatch::default();
            batch.put(b"k", i.to_be_bytes());
            batch.put(format!("k{i}"), b"");
            let (reply, done) = tokio::sync::oneshot::channel();
            writer.submit(batch, i % 7 == 0, Done::Reply(reply)).unwrap();
            replies.push(done);
        }
        writer.write(WriteBatch::default(), true).await.unwrap();
        for done in replies {
            done.await.unwrap().unwrap();
        }
        assert_eq!(db.get(b"k").unwrap(), Some(499u32.to_be_bytes().to_vec()));
        assert!((0..500).all(|i| db.get(format!("k{i}")).unwrap().is_some()));
        drop((writer, db));
        open_db(dir.path(), 1).unwrap();
    }

    /// A write that fails fails every write after it, even one that would succeed: the log
    /// must not be reported written past a hole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_fails_every_write_after_it() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_db(dir.path(), 1).unwrap());
        // Read-only: RocksDB refuses every write.
        let opts = rocksdb::Options::default();
        let db = Arc::new(DB::open_cf_for_read_only(&opts, dir.path(), super::super::db::CFS, false).unwrap());
        let writer = Writer::start(db, true).unwrap();
        let mut batch = WriteBatch::default();
        batch.put(b"k", b"v");
        assert!(writer.write(batch, true).await.is_err(), "a read-only database refuses the write");
        assert!(writer.write(WriteBatch::default(), false).await.is_err(), "and everything after it fails too");
    }
}
