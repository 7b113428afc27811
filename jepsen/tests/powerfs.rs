//! The power-loss filesystem, mounted for real (FUSE; needs root and `/dev/fuse`, as CI has):
//! what was fsync'd survives a power loss, what was not is gone, and the kernel's caches do
//! not hide the difference.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;

use jepsen::powerfs::PowerFs;

fn read(path: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    File::open(path).unwrap().read_to_end(&mut out).unwrap();
    out
}

#[test]
fn a_power_loss_keeps_what_was_fsynced_and_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let fs = PowerFs::mount(&dir.path().join("disk")).unwrap();
    let root = fs.dir().to_owned();

    // A log: one fsync'd record, then one written but never fsync'd.
    std::fs::create_dir(root.join("wal")).unwrap();
    let log_path = root.join("wal/000001.log");
    let mut log = File::create(&log_path).unwrap();
    log.write_all(b"record-1;").unwrap();
    log.sync_data().unwrap();
    log.write_all(b"record-2;").unwrap();
    // An fsync'd file overwritten in place afterwards, and a file never fsync'd at all.
    let mut meta = File::create(root.join("CURRENT")).unwrap();
    meta.write_all(b"MANIFEST-1").unwrap();
    meta.sync_all().unwrap();
    meta.seek(SeekFrom::Start(9)).unwrap();
    meta.write_all(b"2").unwrap();
    std::fs::write(root.join("scratch"), b"never synced").unwrap();
    // Opened O_DSYNC: every write is durable when it returns, with no fsync call.
    let mut dsync =
        OpenOptions::new().create(true).write(true).custom_flags(nix::libc::O_DSYNC).open(root.join("dsync")).unwrap();
    dsync.write_all(b"durable at once").unwrap();
    drop((log, meta, dsync));

    // Before the power goes, everything reads back (the page cache would hide nothing).
    assert_eq!(read(&log_path), b"record-1;record-2;");
    assert_eq!(read(&root.join("CURRENT")), b"MANIFEST-2");

    let loss = fs.lose_unsynced().unwrap();
    assert_eq!(loss.files, 3, "{loss:?}");
    assert_eq!(read(&log_path), b"record-1;", "the unsynced record is gone");
    assert_eq!(read(&root.join("CURRENT")), b"MANIFEST-1", "the overwrite is rolled back");
    assert_eq!(read(&root.join("scratch")), b"", "names survive, unsynced bytes do not");
    assert_eq!(read(&root.join("dsync")), b"durable at once");
    assert_eq!(std::fs::metadata(&log_path).unwrap().len(), 9, "the size the kernel reports follows");

    // The disk keeps working after the loss: append, rename over, delete, list.
    let mut log = OpenOptions::new().append(true).open(&log_path).unwrap();
    log.write_all(b"record-3;").unwrap();
    log.sync_all().unwrap();
    std::fs::rename(&log_path, root.join("wal/000002.log")).unwrap();
    std::fs::remove_file(root.join("scratch")).unwrap();
    std::fs::remove_file(root.join("dsync")).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["CURRENT", "wal"]);
    assert_eq!(fs.lose_unsynced().unwrap().files, 0, "everything left was fsync'd");
    assert_eq!(read(&root.join("wal/000002.log")), b"record-1;record-3;");
}
