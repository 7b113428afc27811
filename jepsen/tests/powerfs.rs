//! The power-loss filesystem, mounted for real (FUSE; needs root and `/dev/fuse`, as CI has):
//! what was fsync'd survives a power loss, what was not is gone, and the kernel's caches do
//! not hide the difference.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use jepsen::powerfs::PowerFs;

fn read(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    File::open(path).unwrap().read_to_end(&mut out).unwrap();
    out
}

/// fsync(2) on a directory: makes its entries durable.
fn sync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn a_power_loss_keeps_what_was_fsynced_and_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let fs = PowerFs::mount(&dir.path().join("disk")).unwrap();
    let root = fs.dir().to_owned();

    // A log, named durably: one fsync'd record, then one written but never fsync'd.
    std::fs::create_dir(root.join("wal")).unwrap();
    let log_path = root.join("wal/000001.log");
    let mut log = File::create(&log_path).unwrap();
    sync_dir(&root.join("wal"));
    log.write_all(b"record-1;").unwrap();
    log.sync_data().unwrap();
    log.write_all(b"record-2;").unwrap();
    // An fsync'd file overwritten in place afterwards.
    let mut current = File::create(root.join("CURRENT")).unwrap();
    current.write_all(b"MANIFEST-1").unwrap();
    current.sync_all().unwrap();
    // Opened O_DSYNC: every write is durable when it returns, with no fsync call.
    let mut dsync =
        OpenOptions::new().create(true).write(true).custom_flags(nix::libc::O_DSYNC).open(root.join("dsync")).unwrap();
    dsync.write_all(b"durable at once").unwrap();
    let mut snapshot = File::create(root.join("snap.tmp")).unwrap();
    snapshot.write_all(b"snapshot bytes").unwrap();
    snapshot.sync_all().unwrap();
    sync_dir(&root);
    current.seek(SeekFrom::Start(9)).unwrap();
    current.write_all(b"2").unwrap();
    // After the root's last fsync: a file never fsync'd at all, and a rename whose directory
    // is not fsync'd (the file's own bytes are).
    std::fs::write(root.join("scratch"), b"never synced").unwrap();
    std::fs::rename(root.join("snap.tmp"), root.join("snap")).unwrap();
    drop((log, current, dsync, snapshot));

    // Before the power goes, everything reads back (the page cache would hide nothing).
    assert_eq!(read(&log_path), b"record-1;record-2;");
    assert_eq!(read(&root.join("CURRENT")), b"MANIFEST-2");
    assert_eq!(names(&root), ["CURRENT", "dsync", "scratch", "snap", "wal"]);

    let loss = fs.lose_unsynced().unwrap();
    assert!(loss.files == 3 && loss.names == 3, "scratch and snap gone, snap.tmp back: {loss:?}");
    assert_eq!(read(&log_path), b"record-1;", "the unsynced record is gone");
    assert_eq!(std::fs::metadata(&log_path).unwrap().len(), 9, "the size the kernel reports follows");
    assert_eq!(read(&root.join("CURRENT")), b"MANIFEST-1", "the overwrite is rolled back");
    assert_eq!(read(&root.join("dsync")), b"durable at once");
    assert_eq!(
        names(&root),
        ["CURRENT", "dsync", "snap.tmp", "wal"],
        "the unsynced name is gone and the rename undone"
    );
    assert_eq!(read(&root.join("snap.tmp")), b"snapshot bytes", "under its durable name, with its fsync'd bytes");

    // The disk keeps working after the loss: append, rename over, delete, list.
    let mut log = OpenOptions::new().append(true).open(&log_path).unwrap();
    log.write_all(b"record-3;").unwrap();
    log.sync_all().unwrap();
    std::fs::rename(&log_path, root.join("wal/000002.log")).unwrap();
    sync_dir(&root.join("wal"));
    std::fs::remove_file(root.join("snap.tmp")).unwrap();
    std::fs::remove_file(root.join("dsync")).unwrap();
    sync_dir(&root);
    assert_eq!(names(&root), ["CURRENT", "wal"]);
    let loss = fs.lose_unsynced().unwrap();
    assert_eq!((loss.files, loss.names), (0, 0), "everything left was fsync'd: {loss:?}");
    assert_eq!(read(&root.join("wal/000002.log")), b"record-1;record-3;");
    assert_eq!(names(&root.join("wal")), ["000002.log"]);
}

#[test]
fn a_deleted_file_comes_back_until_its_directory_is_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let fs = PowerFs::mount(&dir.path().join("disk")).unwrap();
    let root = fs.dir().to_owned();
    std::fs::write(root.join("old.sst"), b"table").unwrap();
    File::open(root.join("old.sst")).unwrap().sync_all().unwrap();
    sync_dir(&root);

    std::fs::remove_file(root.join("old.sst")).unwrap();
    fs.lose_unsynced().unwrap();
    assert_eq!(read(&root.join("old.sst")), b"table", "the unlink was not durable");

    std::fs::remove_file(root.join("old.sst")).unwrap();
    sync_dir(&root);
    fs.lose_unsynced().unwrap();
    assert!(names(&root).is_empty(), "the unlink was made durable");
}
