//! A filesystem for the power-loss fault. kill -9 cannot catch a missing fsync: the kernel
//! still writes the page cache out after the process dies. So, as Jepsen's LazyFS does, each
//! node's data directory can be a FUSE mount of this in-memory filesystem, which remembers for
//! every file what its last fsync made durable. [`PowerFs::lose_unsynced`], called once the
//! node is killed, puts every file back to exactly that.
//!
//! The model, and its limits:
//! - A file's data is durable once an `fsync` or `fdatasync` of it returns, or once a write to
//!   a file opened `O_SYNC`/`O_DSYNC` returns. Everything else is lost on power loss, all of
//!   it: unsynced appends, overwrites and truncations alike. (A torn tail, or a later unsynced
//!   write kept without an earlier one, is not modelled.) `sync()` and `syncfs()` never reach a
//!   FUSE filesystem, so they make nothing durable here.
//! - A directory's entries are durable once an `fsync` of the directory itself returns, as
//!   Linux's fsync(2) page says ("an explicit fsync() on a file descriptor for the directory is
//!   also needed"): a file created, renamed or unlinked since is back as it was after a power
//!   loss, and a file whose every durable name is gone is gone. This is stricter than ext4,
//!   whose journal makes earlier renames durable with any later fsync. Each directory stands
//!   alone, so a rename across two directories is not atomic here as it is in a journaling
//!   filesystem: after a loss the file may have both names or neither. (Gavel renames only
//!   within one directory.)
//! - Nothing is cached by the kernel: files are opened `direct_io` and attributes and entries
//!   live for 0 s, so a restarted node reads what this filesystem holds, not what the page
//!   cache remembers.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::libc;

/// Attributes and entries are never cached by the kernel (see the module's doc).
const TTL: Duration = Duration::ZERO;

/// Files grow no larger than this (what `statfs` reports as the disk): a bigger write,
/// truncation or allocation is `EFBIG`, not an allocation that aborts the harness.
const FILE_BYTES_MAX: u64 = 1 << 40;

/// A mounted power-loss filesystem; unmounted when dropped.
pub struct PowerFs {
    tree: Arc<Mutex<Tree>>,
    dir: PathBuf,
    /// Dropping it unmounts.
    _session: BackgroundSession,
}

/// What a power loss dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Loss {
    /// Files that had unsynced changes.
    pub files: usize,
    /// Unsynced bytes dropped: a file's unsynced tail, or all of a file whose synced part was
    /// overwritten or truncated since its last fsync.
    pub bytes: u64,
    /// Directory entries put back as they were at their directory's last fsync: names that
    /// appear, disappear or point elsewhere.
    pub names: usize,
}

/// Why this process cannot mount a power-loss filesystem, if it cannot: it mounts with the
/// mount system call, which needs root, and FUSE needs `/dev/fuse`.
pub fn unavailable() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status").ok().is_some_and(|s| {
        s.lines().find(|l| l.starts_with("Uid:")).is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
    });
    match (root, Path::new("/dev/fuse").exists()) {
        (true, true) => None,
        (false, _) => Some("mounting the power-loss filesystem needs root".into()),
        (true, false) => Some("mounting the power-loss filesystem needs /dev/fuse".into()),
    }
}

impl PowerFs {
    /// Mounts an empty power-loss filesystem on `dir` (created if missing). Needs root (or
    /// `fusermount3`) and `/dev/fuse`.
    pub fn mount(dir: &Path) -> io::Result<PowerFs> {
        std::fs::create_dir_all(dir)?;
        let meta = std::fs::metadata(dir)?;
        let tree = Arc::new(Mutex::new(Tree::new(meta.uid(), meta.gid())));
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("gavel-powerfs".into()), MountOption::NoAtime];
        let fs = Fs { tree: tree.clone(), listings: Mutex::default(), next_listing: 1.into() };
        let session = fuser::spawn_mount(fs, dir, &config).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot mount the power-loss filesystem on {}: {e}", dir.display()))
        })?;
        Ok(PowerFs { tree, dir: dir.to_owned(), _session: session })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The power goes out: every file goes back to what its last fsync made durable. Call it
    /// only once every process using the filesystem is dead.
    pub fn lose_unsynced(&self) -> io::Result<Loss> {
        let mut tree = self.tree.lock().map_err(|_| io::Error::other("power-loss filesystem lock poisoned"))?;
        let mut loss = Loss::default();
        for inode in tree.inodes.values_mut() {
            match &mut inode.kind {
                Kind::File(content) => {
                    if let Some(bytes) = content.lose_unsynced() {
                        loss.files += 1;
                        loss.bytes += bytes;
                    }
                }
                Kind::Dir { entries, synced, .. } => {
                    if let Some(synced) = synced.take() {
                        loss.names += entries.iter().filter(|(n, i)| synced.get(*n) != Some(*i)).count();
                        loss.names += synced.keys().filter(|n| !entries.contains_key(*n)).count();
                        *entries = synced;
                    }
                }
            }
        }
        tree.relink();
        Ok(loss)
    }
}

/// A file's bytes, and what of them is durable.
#[derive(Debug, Default)]
struct Content {
    data: Vec<u8>,
    /// `data[..synced_len]` is what the last fsync made durable, unless `synced` holds it.
    synced_len: usize,
    /// The durable bytes, saved before the first change since the last fsync that touched
    /// them (an overwrite or a truncation below `synced_len`). Appends never need it.
    synced: Option<Vec<u8>>,
}

impl Content {
    /// Called before a change from byte `from` on: keeps the durable bytes if it reaches them.
    fn before_change(&mut self, from: usize) {
        if from < self.synced_len && self.synced.is_none() {
            self.synced = Some(self.data[..self.synced_len].to_vec());
        }
    }

    fn write(&mut self, offset: usize, buf: &[u8]) {
        self.before_change(offset);
        let end = offset + buf.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset..end].copy_from_slice(buf);
    }

    fn set_len(&mut self, len: usize) {
        self.before_change(len);
        self.data.resize(len, 0);
    }

    fn sync(&mut self) {
        self.synced = None;
        self.synced_len = self.data.len();
    }

    /// Back to the durable bytes; how many unsynced bytes that dropped, if any changed.
    fn lose_unsynced(&mut self) -> Option<u64> {
        let dropped = match self.synced.take() {
            Some(synced) => {
                let bytes = self.data.len().max(synced.len()) as u64;
                self.data = synced;
                bytes
            }
            None if self.data.len() > self.synced_len => {
                let bytes = (self.data.len() - self.synced_len) as u64;
                self.data.truncate(self.synced_len);
                bytes
            }
            None => return None,
        };
        self.synced_len = self.data.len();
        Some(dropped)
    }
}

#[derive(Debug)]
enum Kind {
    Dir {
        parent: u64,
        entries: BTreeMap<OsString, u64>,
        /// The entries as of the directory's last fsync, saved before the first change since
        /// (`None`: `entries` are all durable).
        synced: Option<BTreeMap<OsString, u64>>,
    },
    File(Content),
}

impl Kind {
    /// A directory made by mkdir: its own entries are durable, empty, until its first fsync.
    fn new_dir(parent: u64) -> Kind {
        Kind::Dir { parent, entries: BTreeMap::new(), synced: None }
    }
}

#[derive(Debug)]
struct Inode {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    /// 0 once unlinked; the inode lives on while it is open.
    nlink: u32,
    open: u32,
}

#[derive(Debug)]
struct Tree {
    inodes: HashMap<u64, Inode>,
    next: u64,
}

type Result<T> = std::result::Result<T, Errno>;

impl Tree {
    fn new(uid: u32, gid: u32) -> Tree {
        let root = Inode {
            kind: Kind::new_dir(INodeNo::ROOT.0),
            perm: 0o755,
            uid,
            gid,
            mtime: SystemTime::now(),
            nlink: 2,
            open: 0,
        };
        Tree { inodes: HashMap::from([(INodeNo::ROOT.0, root)]), next: INodeNo::ROOT.0 + 1 }
    }

    fn get(&self, ino: u64) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn get_mut(&mut self, ino: u64) -> Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn content(&mut self, ino: u64) -> Result<&mut Content> {
        match &mut self.get_mut(ino)?.kind {
            Kind::File(content) => Ok(content),
            Kind::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>> {
        match &self.get(dir)?.kind {
            Kind::Dir { entries, .. } => Ok(entries),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    /// A directory's entries, to change: the durable ones are saved first if they were not.
    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>> {
        match &mut self.get_mut(dir)?.kind {
            Kind::Dir { entries, synced, .. } => {
                if synced.is_none() {
                    *synced = Some(entries.clone());
                }
                Ok(entries)
            }
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    /// Whether any directory names `ino`, now or durably (a power loss would bring the name
    /// back, so the inode must be kept).
    fn named(&self, ino: u64) -> bool {
        self.inodes.values().any(|i| match &i.kind {
            Kind::Dir { entries, synced, .. } => {
                entries.values().any(|&n| n == ino) || synced.as_ref().is_some_and(|s| s.values().any(|&n| n == ino))
            }
            Kind::File(_) => false,
        })
    }

    /// Frees `ino` if nothing can reach it any more: no name, now or durable, and nobody
    /// holding it open. A freed directory's children are looked at in turn.
    fn collect(&mut self, ino: u64) {
        let mut work = vec![ino];
        while let Some(ino) = work.pop() {
            let unreachable = self.inodes.get(&ino).is_some_and(|i| i.nlink == 0 && i.open == 0);
            if ino == INodeNo::ROOT.0 || !unreachable || self.named(ino) {
                continue;
            }
            if let Some(Inode { kind: Kind::Dir { entries, synced, .. }, .. }) = self.inodes.remove(&ino) {
                work.extend(entries.into_values());
                work.extend(synced.into_iter().flat_map(BTreeMap::into_values));
            }
        }
    }

    /// A directory's fsync: its entries become durable; inodes only its old durable entries
    /// kept alive go.
    fn sync_dir(&mut self, dir: u64) -> Result<()> {
        let Kind::Dir { synced, .. } = &mut self.get_mut(dir)?.kind else { return Err(Errno::ENOTDIR) };
        if let Some(old) = synced.take() {
            for ino in old.into_values() {
                self.collect(ino);
            }
        }
        Ok(())
    }

    /// After a power loss: link counts and parents from what is reachable from the root;
    /// everything else is gone, once closed.
    fn relink(&mut self) {
        let mut names: HashMap<u64, u32> = HashMap::new();
        let mut parents = Vec::new();
        // A directory restored under two names (a cross-directory rename half undone) keeps
        // its first: directories have one parent.
        let mut extra_names = Vec::new();
        let mut stack = vec![INodeNo::ROOT.0];
        while let Some(dir) = stack.pop() {
            let Some(Kind::Dir { entries, .. }) = self.inodes.get(&dir).map(|i| &i.kind) else { continue };
            for (name, &child) in entries {
                let is_dir = matches!(self.inodes.get(&child).map(|i| &i.kind), Some(Kind::Dir { .. }));
                let seen = names.entry(child).or_default();
                if is_dir && *seen > 0 {
                    extra_names.push((dir, name.clone()));
                    continue;
                }
                *seen += 1;
                if is_dir && child != INodeNo::ROOT.0 {
                    parents.push((child, dir));
                    stack.push(child);
                }
            }
        }
        for (dir, name) in extra_names {
            if let Some(Inode { kind: Kind::Dir { entries, .. }, .. }) = self.inodes.get_mut(&dir) {
                entries.remove(&name);
            }
        }
        for (child, dir) in parents {
            if let Some(Inode { kind: Kind::Dir { parent, .. }, .. }) = self.inodes.get_mut(&child) {
                *parent = dir;
            }
        }
        let all: Vec<u64> = self.inodes.keys().copied().collect();
        for ino in all {
            if let Some(inode) = self.inodes.get_mut(&ino)
                && ino != INodeNo::ROOT.0
            {
                inode.nlink = match (&inode.kind, names.get(&ino)) {
                    (_, None) => 0,
                    (Kind::Dir { .. }, Some(_)) => 2,
                    (Kind::File(_), Some(&n)) => n,
                };
            }
            self.collect(ino);
        }
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64> {
        self.entries(parent)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr> {
        let inode = self.get(ino)?;
        let (kind, size) = match &inode.kind {
            Kind::Dir { entries, .. } => (FileType::Directory, entries.len() as u64),
            Kind::File(content) => (FileType::RegularFile, content.data.len() as u64),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: inode.mtime,
            mtime: inode.mtime,
            ctime: inode.mtime,
            crtime: inode.mtime,
            kind,
            perm: inode.perm,
            nlink: inode.nlink,
            uid: inode.uid,
            gid: inode.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Adds `name` in `parent`; its inode number.
    fn add(&mut self, req: &Request, parent: u64, name: &OsStr, kind: Kind, mode: u32, umask: u32) -> Result<u64> {
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        let nlink = if matches!(kind, Kind::Dir { .. }) { 2 } else { 1 };
        let perm = (mode & !umask & 0o7777) as u16;
        let inode = Inode { kind, perm, uid: req.uid(), gid: req.gid(), mtime: SystemTime::now(), nlink, open: 0 };
        self.inodes.insert(ino, inode);
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// The inode lost a name: gone for good once it has none, nothing has it open and no
    /// durable name would bring it back.
    fn unlinked(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.nlink = match inode.kind {
                Kind::Dir { .. } => 0,
                Kind::File(_) => inode.nlink.saturating_sub(1),
            };
        }
        self.collect(ino);
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let ino = self.lookup(parent, name)?;
        let moving_dir = matches!(self.get(ino)?.kind, Kind::Dir { .. });
        let replaced = self.entries(new_parent)?.get(new_name).copied();
        if let Some(target) = replaced {
            if target == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (&self.get(target)?.kind, moving_dir) {
                (Kind::Dir { entries, .. }, true) if !entries.is_empty() => {
                    return Err(Errno::from_i32(libc::ENOTEMPTY));
                }
                (Kind::Dir { .. }, false) => return Err(Errno::EISDIR),
                (Kind::File(_), true) => return Err(Errno::ENOTDIR),
                _ => {}
            }
        }
        self.entries_mut(parent)?.remove(name);
        self.entries_mut(new_parent)?.insert(new_name.to_owned(), ino);
        if let Kind::Dir { parent, .. } = &mut self.get_mut(ino)?.kind {
            *parent = new_parent;
        }
        // Only now that its name points elsewhere can the replaced inode be freed.
        if let Some(target) = replaced {
            self.unlinked(target);
        }
        Ok(())
    }

    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        let ino = self.lookup(parent, name)?;
        match (&self.get(ino)?.kind, dir) {
            (Kind::Dir { entries, .. }, true) if !entries.is_empty() => return Err(Errno::from_i32(libc::ENOTEMPTY)),
            (Kind::Dir { .. }, false) => return Err(Errno::EISDIR),
            (Kind::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.entries_mut(parent)?.remove(name);
        self.unlinked(ino);
        Ok(())
    }

    /// Opens a file: a handle is its inode number.
    fn open(&mut self, ino: u64, flags: i32) -> Result<()> {
        if flags & libc::O_TRUNC != 0 {
            self.content(ino)?.set_len(0);
        } else {
            self.content(ino)?;
        }
        self.get_mut(ino)?.open += 1;
        Ok(())
    }

    fn release(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.open = inode.open.saturating_sub(1);
        }
        self.collect(ino);
    }

    fn touch(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.mtime = SystemTime::now();
        }
    }
}

/// One directory entry of a listing.
type Listed = (u64, FileType, OsString);

/// The FUSE side: every request is a short critical section on the tree.
struct Fs {
    tree: Arc<Mutex<Tree>>,
    /// Each open directory's listing, taken at `opendir`: positions in it stay valid while the
    /// directory changes between `readdir` calls.
    listings: Mutex<HashMap<u64, Vec<Listed>>>,
    next_listing: std::sync::atomic::AtomicU64,
}

impl Fs {
    fn tree(&self) -> Result<MutexGuard<'_, Tree>> {
        self.tree.lock().map_err(|_| Errno::EIO)
    }

    fn listings(&self) -> Result<MutexGuard<'_, HashMap<u64, Vec<Listed>>>> {
        self.listings.lock().map_err(|_| Errno::EIO)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Tree) -> Result<T>) -> Result<T> {
        f(&mut *self.tree()?)
    }
}

fn offset(offset: u64) -> Result<usize> {
    usize::try_from(offset).map_err(|_| Errno::EINVAL)
}

/// A file size or end of write, within [`FILE_BYTES_MAX`].
fn file_end(end: u64) -> Result<usize> {
    if end > FILE_BYTES_MAX {
        return Err(Errno::from_i32(libc::EFBIG));
    }
    offset(end)
}

fn reply_entry(reply: ReplyEntry, attr: Result<FileAttr>) {
    match attr {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl fuser::Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.with(|t| t.attr(t.lookup(parent.0, name)?)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|t| t.attr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.with(|t| {
            if let Some(size) = size {
                t.content(ino.0)?.set_len(file_end(size)?);
            }
            let inode = t.get_mut(ino.0)?;
            if let Some(mode) = mode {
                inode.perm = (mode & 0o7777) as u16;
            }
            inode.uid = uid.unwrap_or(inode.uid);
            inode.gid = gid.unwrap_or(inode.gid);
            match mtime {
                Some(TimeOrNow::SpecificTime(at)) => inode.mtime = at,
                Some(TimeOrNow::Now) => inode.mtime = SystemTime::now(),
                None if size.is_some() => inode.mtime = SystemTime::now(),
                None => {}
            }
            t.attr(ino.0)
        });
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            reply.error(Errno::ENOSYS);
            return;
        }
        let file = Kind::File(Content::default());
        reply_entry(reply, self.with(|t| t.add(req, parent.0, name, file, mode, umask).and_then(|ino| t.attr(ino))));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let dir = Kind::new_dir(parent.0);
        reply_entry(reply, self.with(|t| t.add(req, parent.0, name, dir, mode, umask).and_then(|ino| t.attr(ino))));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.with(|t| t.remove(parent.0, name, false)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.with(|t| t.remove(parent.0, name, true)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.with(|t| t.rename(parent.0, name, newparent.0, newname, flags)));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|t| t.open(ino.0, flags.0)) {
            Ok(()) => reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        at: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let result = self.with(|t| {
            let data = &t.content(ino.0)?.data;
            let start = offset(at)?.min(data.len());
            let end = start.saturating_add(size as usize).min(data.len());
            Ok(data[start..end].to_vec())
        });
        match result {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        at: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = self.with(|t| {
            file_end(at.saturating_add(data.len() as u64))?;
            let content = t.content(ino.0)?;
            content.write(offset(at)?, data);
            // O_SYNC includes O_DSYNC's bit: either makes each write durable when it returns.
            if flags.0 & libc::O_DSYNC != 0 {
                content.sync();
            }
            t.touch(ino.0);
            u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
        });
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.with(|t| {
                t.release(ino.0);
                Ok(())
            }),
        );
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.with(|t| {
                t.content(ino.0)?.sync();
                Ok(())
            }),
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let listing = self.with(|t| {
            let Kind::Dir { parent, entries, .. } = &t.get(ino.0)?.kind else { return Err(Errno::ENOTDIR) };
            let mut out =
                vec![(ino.0, FileType::Directory, OsString::from(".")), (*parent, FileType::Directory, "..".into())];
            for (name, &child) in entries {
                let kind = match t.get(child)?.kind {
                    Kind::Dir { .. } => FileType::Directory,
                    Kind::File(_) => FileType::RegularFile,
                };
                out.push((child, kind, name.clone()));
            }
            Ok(out)
        });
        let opened = listing.and_then(|listing| {
            let fh = self.next_listing.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.listings()?.insert(fh, listing);
            Ok(fh)
        });
        match opened {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, at: u64, mut reply: ReplyDirectory) {
        let listings = match self.listings() {
            Ok(listings) => listings,
            Err(e) => return reply.error(e),
        };
        let Some(listing) = listings.get(&fh.0) else { return reply.error(Errno::EBADF) };
        for (i, (child, kind, name)) in listing.iter().enumerate().skip(offset(at).unwrap_or(usize::MAX)) {
            if reply.add(INodeNo(*child), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.listings().map(|mut listings| {
                listings.remove(&fh.0);
            }),
        );
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(reply, self.with(|t| t.sync_dir(ino.0)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 28, 1 << 28, 1 << 28, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.with(|t| {
            let ino = match t.lookup(parent.0, name) {
                Ok(_) if flags & libc::O_EXCL != 0 => return Err(Errno::EEXIST),
                Ok(ino) => ino,
                Err(_) => t.add(req, parent.0, name, Kind::File(Content::default()), mode, umask)?,
            };
            t.open(ino, flags)?;
            t.attr(ino)
        });
        match result {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(attr.ino.0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        at: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = self.with(|t| {
            let content = t.content(ino.0)?;
            match mode {
                // Space reserved without a size change: nothing to hold in memory.
                libc::FALLOC_FL_KEEP_SIZE => Ok(()),
                0 => {
                    let end = file_end(at.checked_add(length).ok_or(Errno::EINVAL)?)?;
                    if end > content.data.len() {
                        content.set_len(end);
                    }
                    Ok(())
                }
                _ => Err(Errno::from_i32(libc::EOPNOTSUPP)),
            }
        });
        reply_empty(reply, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_appends_are_dropped_and_synced_ones_kept() {
        let mut c = Content::default();
        c.write(0, b"hello ");
        c.sync();
        c.write(6, b"world");
        assert_eq!(c.lose_unsynced(), Some(5));
        assert_eq!(c.data, b"hello ");
        assert_eq!(c.lose_unsynced(), None, "nothing unsynced is left");
    }

    #[test]
    fn an_unsynced_overwrite_or_truncation_rolls_back_to_the_synced_bytes() {
        let mut c = Content::default();
        c.write(0, b"abcdef");
        c.sync();
        c.write(2, b"XY");
        c.write(6, b"tail");
        assert_eq!(c.data, b"abXYeftail");
        assert!(c.lose_unsynced().is_some());
        assert_eq!(c.data, b"abcdef");

        c.set_len(2);
        c.write(2, b"zz");
        c.lose_unsynced();
        assert_eq!(c.data, b"abcdef", "a truncation below the synced length is undone too");
    }

    #[test]
    fn a_file_never_synced_comes_back_empty() {
        let mut c = Content::default();
        c.write(0, b"never synced");
        c.lose_unsynced();
        assert!(c.data.is_empty());
    }
}
