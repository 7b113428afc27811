//! Snapshot files: the state machine's only persisted form.
//!
//! One file per snapshot, `<index, 20 digits>.snapshot`, holding a `pb::SnapshotData`. A file is
//! written under a temporary name, fsync'd, renamed into place and the directory fsync'd, so a
//! crash leaves either the whole new file or none of it. Only the newest is kept: the log after
//! it is what re-applies the rest.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

use super::db::{at, create_durable_dir, sync_dir};

const SUFFIX: &str = ".snapshot";
const TMP_SUFFIX: &str = ".tmp";

/// The directory of snapshot files.
#[derive(Debug)]
pub(super) struct SnapshotDir {
    path: PathBuf,
    /// Distinguishes the temporary files of two writes in flight (a build and an install).
    next_tmp: AtomicU64,
    /// Held while the set of files changes or the newest is read: a reader never lists a file
    /// a concurrent write then removes before it is read.
    files: Mutex<()>,
}

impl SnapshotDir {
    /// Opens (creating it if needed) the directory and removes temporary files a crash left.
    pub(super) fn open(path: &Path) -> io::Result<SnapshotDir> {
        create_durable_dir(path)?;
        for entry in fs::read_dir(path).map_err(|e| at(path, e))? {
            let entry = entry.map_err(|e| at(path, e))?;
            if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
                fs::remove_file(entry.path()).map_err(|e| at(&entry.path(), e))?;
            }
        }
        Ok(SnapshotDir { path: path.to_owned(), next_tmp: AtomicU64::new(0), files: Mutex::new(()) })
    }

    /// The snapshot files present, by index.
    fn indexes(&self) -> io::Result<Vec<u64>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(|e| at(&self.path, e))? {
            let name = entry.map_err(|e| at(&self.path, e))?.file_name();
            let name = name.to_string_lossy();
            if let Some(index) = name.strip_suffix(SUFFIX).and_then(|n| n.parse::<u64>().ok()) {
                found.push(index);
            }
        }
        found.sort_unstable();
        Ok(found)
    }

    fn file(&self, index: u64) -> PathBuf {
        self.path.join(format!("{index:020}{SUFFIX}"))
    }

    /// The newest snapshot's bytes, if any. An unreadable newest file is an error, never a
    /// reason to fall back to an older one: the log it would need may be purged.
    pub(super) fn latest(&self) -> io::Result<Option<Vec<u8>>> {
        let _files = self.lock()?;
        match self.indexes()?.last() {
            Some(&index) => {
                let file = self.file(index);
                fs::read(&file).map(Some).map_err(|e| at(&file, e))
            }
            None => Ok(None),
        }
    }

    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, ()>> {
        self.files.lock().map_err(|_| io::Error::other("the snapshot directory lock was poisoned"))
    }

    /// Writes the snapshot of the state after `index`, durably, then drops older ones.
    pub(super) fn write(&self, index: u64, bytes: &[u8]) -> io::Result<()> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.path.join(format!("{index:020}.{n}{TMP_SUFFIX}"));
        let written = File::create(&tmp).and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
        written.map_err(|e| at(&tmp, e))?;
        let _files = self.lock()?;
        fs::rename(&tmp, self.file(index)).map_err(|e| at(&tmp, e))?;
        // The rename is durable only once the directory entry is.
        sync_dir(&self.path)?;
        for older in self.indexes()?.into_iter().filter(|&i| i < index) {
            if let Err(e) = fs::remove_file(self.file(older)) {
                warn!(error = %e, index = older, "could not remove an older snapshot file");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn the_newest_whole_file_wins_and_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::open(dir.path()).unwrap();
        assert_eq!(snaps.latest().unwrap(), None);
        snaps.write(9, b"nine").unwrap();
        snaps.write(10, b"ten").unwrap();
        assert_eq!(snaps.latest().unwrap().as_deref(), Some(&b"ten"[..]), "10 sorts after 9");
        assert_eq!(snaps.indexes().unwrap(), [10], "older files are removed");
        // A crash mid-write leaves a temporary file: never read, removed on the next open.
        fs::write(dir.path().join(format!("{:020}.7{TMP_SUFFIX}", 11)), b"torn").unwrap();
        let snaps = SnapshotDir::open(dir.path()).unwrap();
        assert_eq!(snaps.latest().unwrap().as_deref(), Some(&b"ten"[..]));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
