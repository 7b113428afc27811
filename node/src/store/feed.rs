//! The feed's segment files and its in-memory ring of recent items.
//!
//! Each file holds a run of consecutive feed items and is named after the first,
//! `<index, 20 digits>.feed`. It starts with [`MAGIC`] (whose last byte is the format), then
//! one record per item: the index (u64, little-endian), the payload's length (u32), a CRC-32
//! of those 12 bytes and the payload, and the payload (a `pb::FeedItem`).
//!
//! Appends are unsynced: [`FeedFiles::sync`] makes them durable, and the state machine calls
//! it before anything that claims the items (a snapshot file, a new feed start). After a
//! crash, a file whose tail was lost is cut at its last whole record, and openraft re-applies
//! the committed log after the newest snapshot, which writes the lost items again. The whole
//! feed is read once on opening, so start-up time grows with what retention keeps.
//!
//! The files hold up to three kinds of run, told apart by the feed start the state machine
//! persists, not by the files: the main run after the start (applied here), a run kept
//! below the start after a snapshot install, and items a backfill copied from a peer. An
//! index is written at most once: every replica's item at an index is the same, so an item
//! already held is skipped.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use prost::Message;
use tracing::{info, warn};

use crate::pb;

use super::db::{at, corrupt, create_durable_dir, sync_dir};

const SUFFIX: &str = ".feed";
/// A segment file's first bytes; the last one is the record format.
const MAGIC: &[u8; 8] = b"GVLFEED\x01";
const RECORD_HEADER: usize = 16;
/// A record larger than this is damage, not an item (an entry is bounded far below it).
const RECORD_MAX: usize = 64 << 20;
/// The default size at which a new segment file is begun. Retention frees disk space a whole
/// file at a time, and a crash's lost tail is found by reading the files.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Every this many items a segment remembers an item's offset, so a read from any index
/// decodes at most this many records before the first it returns.
const MARK_EVERY: u64 = 64;
/// The newest main-run items kept in memory for live subscribers, in bytes.
const RING_BYTES_MAX: usize = 8 << 20;
/// Bytes read from a file per call when serving a read.
const READ_CHUNK: usize = 256 << 10;

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(&(payload.len() as u32).to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn encode_record(index: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(index, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A little-endian word from exactly 8 (or 4) bytes; callers slice them to that length.
fn le_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map_or(0, u64::from_le_bytes)
}

fn le_u32(bytes: &[u8]) -> u32 {
    bytes.try_into().map_or(0, u32::from_le_bytes)
}

/// The record at the start of `buf`: its index and payload, and its length in bytes. `None`
/// for a partial or damaged record.
fn decode_record(buf: &[u8]) -> Option<(u64, &[u8], usize)> {
    let header = buf.get(..RECORD_HEADER)?;
    let (index, len, sum) = (le_u64(&header[..8]), le_u32(&header[8..12]) as usize, le_u32(&header[12..16]));
    if len > RECORD_MAX {
        return None;
    }
    let payload = buf.get(RECORD_HEADER..RECORD_HEADER + len)?;
    (checksum(index, payload) == sum).then_some((index, payload, RECORD_HEADER + len))
}

/// One segment file: the items `first..=last` (none when `last < first`).
struct Segment {
    file: Arc<File>,
    path: PathBuf,
    first: u64,
    last: u64,
    /// Bytes of whole records written, the header included: appends go here.
    len: u64,
    /// `(index, offset)` of every `MARK_EVERY`th item, the first included.
    marks: Vec<(u64, u64)>,
    /// Written since the last sync (or loaded: a kill leaves writes the disk may not have).
    dirty: bool,
    /// The file's size when loaded, past `len` when its tail is damaged or partial: cut by
    /// `reconcile` once the feed is known to be whole up to the newest snapshot.
    loaded_size: u64,
}

impl Segment {
    fn is_empty(&self) -> bool {
        self.last < self.first
    }

    /// The offset of the nearest marked item at or before `index` (within the segment).
    fn mark_before(&self, index: u64) -> (u64, u64) {
        let i = self.marks.partition_point(|(at, _)| *at <= index);
        self.marks.get(i.wrapping_sub(1)).copied().unwrap_or((self.first, MAGIC.len() as u64))
    }

    fn push_mark(&mut self, index: u64, offset: u64) {
        if (index - self.first).is_multiple_of(MARK_EVERY) {
            self.marks.push((index, offset));
        }
    }
}

/// The feed's files and ring. All methods block: call them off the async runtime.
pub(super) struct FeedFiles {
    dir: PathBuf,
    segment_bytes: u64,
    inner: Mutex<Inner>,
    /// Held for a whole `sync`: a second caller must not return while the first is still
    /// syncing the files it took. True once a sync failed: Linux may drop the pages a failed
    /// fsync did not write and report the next fsync a success, so no later sync is believed.
    syncing: Mutex<bool>,
}

struct Inner {
    /// By first index.
    segments: BTreeMap<u64, Segment>,
    /// The main run's last item (or the feed's start, when no item follows it).
    main_last: u64,
    /// The segment the main run appends to, and the one a backfill's copy appends to.
    main_tail: Option<u64>,
    copy_tail: Option<u64>,
    /// The newest main-run items, for live subscribers; contiguous.
    ring: VecDeque<(u64, Bytes)>,
    ring_bytes: usize,
    /// Retention dropped every item at or below this index: reads skip what a partly dropped
    /// file still holds.
    hidden_through: u64,
    /// A file was created since the last sync: the directory is synced too.
    dir_dirty: bool,
}

/// A segment's contents as a read needs them, taken under the lock and read outside it.
struct ReadPlan {
    file: Arc<File>,
    path: PathBuf,
    from_offset: u64,
    end: u64,
}

impl FeedFiles {
    /// Opens the directory (creating it), reading every segment: a file's damaged or partial
    /// tail (a crash mid-append) is cut off. What the files hold is then squared with the
    /// feed's persisted state by [`FeedFiles::reconcile`].
    pub(super) fn open(dir: &Path, segment_bytes: u64) -> io::Result<FeedFiles> {
        create_durable_dir(dir)?;
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(|e| at(dir, e))? {
            let entry = entry.map_err(|e| at(dir, e))?;
            let name = entry.file_name();
            let Some(first) = name.to_string_lossy().strip_suffix(SUFFIX).and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            let segment = load_segment(&entry.path(), first)?;
            segments.insert(first, segment);
        }
        let inner = Inner {
            segments,
            main_last: 0,
            main_tail: None,
            copy_tail: None,
            ring: VecDeque::new(),
            ring_bytes: 0,
            hidden_through: 0,
            // The directory's entries may not be durable either (a kill, not a power loss,
            // came before their sync).
            dir_dirty: true,
        };
        Ok(FeedFiles {
            dir: dir.to_owned(),
            segment_bytes: segment_bytes.max(1),
            inner: Mutex::new(inner),
            syncing: Mutex::new(false),
        })
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Inner>> {
        self.inner.lock().map_err(|_| io::Error::other("the feed files' lock was poisoned"))
    }

    /// Keeps only the files the feed's persisted state names: the main run after `start`
    /// (up to its first gap: a crash can lose the tail of any file written since the last
    /// sync) and the run `kept` below it. Anything else (an unfinished copy, files retention
    /// or an install let go of) is removed. Fails, changing nothing, if the main run ends
    /// before `durable`, the index of the newest snapshot: everything up to it was synced
    /// before that file was written, so a shorter feed is damage, not a crash. Returns the
    /// kept run if the files hold all of it, else `None` (its files then go too).
    pub(super) fn reconcile(
        &self,
        start: u64,
        kept: Option<(u64, u64)>,
        trimmed: u64,
        durable: u64,
    ) -> io::Result<Option<(u64, u64)>> {
        let mut inner = self.lock()?;
        let overlaps = |s: &Segment, from: u64, to: u64| !s.is_empty() && s.first <= to && s.last > from;
        let mut expected = start.saturating_add(1);
        let mut main: Vec<u64> = Vec::new();
        // Files of the main run cut where the next one begins: an install's cut that a power
        // loss undid. The items at an index are the same in every file, so nothing is lost.
        let mut cuts = Vec::new();
        for (first, segment) in &inner.segments {
            if !overlaps(segment, start, u64::MAX) || segment.first > expected {
                continue;
            }
            if segment.last < expected {
                continue; // wholly inside the files before it: a duplicate, dropped below
            }
            // The first may begin at or below the start (retention raised it within a file).
            if segment.first < expected
                && let Some(&previous) = main.last()
            {
                cuts.push((previous, segment.first - 1));
            }
            expected = segment.last.saturating_add(1);
            main.push(*first);
        }
        let main_last = expected - 1;
        if main_last < durable {
            return Err(corrupt(format!(
                "the feed's files hold items up to {main_last} after its start {start}, but the snapshot at {durable} \
                 was written after items up to it were synced: {} is damaged",
                self.dir.display()
            )));
        }
        for (first, to) in cuts {
            if let Some(segment) = inner.segments.get_mut(&first) {
                cut_after(segment, to)?;
            }
        }
        // The kept run counts only if the files hold every item of it.
        let kept = kept.filter(|&(from, to)| {
            let mut next = from.saturating_add(1);
            for segment in inner.segments.values().filter(|s| overlaps(s, from, to)) {
                if segment.first > next {
                    return false;
                }
                next = next.max(segment.last.saturating_add(1));
            }
            next > to
        });
        let keep =
            |first: &u64, s: &Segment| main.contains(first) || kept.is_some_and(|(from, to)| overlaps(s, from, to));
        let drop: Vec<u64> = inner.segments.iter().filter(|(f, s)| !keep(f, s)).map(|(f, _)| *f).collect();
        for first in drop {
            info!(first, "removing a feed file the feed no longer holds");
            inner.remove(first)?;
        }
        for segment in inner.segments.values_mut().filter(|s| s.loaded_size > s.len) {
            warn!(file = %segment.path.display(), kept = segment.len, size = segment.loaded_size, "cutting a feed file's damaged or partial tail");
            segment.file.set_len(segment.len).map_err(|e| at(&segment.path, e))?;
            segment.loaded_size = segment.len;
        }
        inner.main_last = main_last;
        inner.main_tail = main.last().copied();
        inner.copy_tail = None;
        inner.hidden_through = trimmed;
        Ok(kept)
    }

    /// The last item of the main run (the start, when none follows it).
    #[cfg(test)]
    fn main_last(&self) -> io::Result<u64> {
        Ok(self.lock()?.main_last)
    }

    /// Appends the main run's next items, `(index, encoded pb::FeedItem)` in index order.
    /// Items up to the run's last are skipped: they are written already (openraft re-applies
    /// the log after the snapshot on a restart) or lie below the start. Unsynced.
    pub(super) fn append(&self, items: Vec<(u64, Vec<u8>)>) -> io::Result<()> {
        let mut inner = self.lock()?;
        let appended = self.append_locked(&mut inner, items);
        if appended.is_err() {
            // Part of the batch may be in the files and not in the ring: the ring must never
            // have a gap, so it starts again from the next item.
            inner.ring.clear();
            inner.ring_bytes = 0;
        }
        appended
    }

    fn append_locked(&self, inner: &mut Inner, items: Vec<(u64, Vec<u8>)>) -> io::Result<()> {
        let held = inner.main_last;
        let new = items.iter().position(|(index, _)| *index > held).unwrap_or(items.len());
        for pair in items[new..].windows(2) {
            if pair[1].0 != pair[0].0 + 1 {
                return Err(corrupt(format!("feed item {} would follow {}: a gap", pair[1].0, pair[0].0)));
            }
        }
        if let Some((first, _)) = items.get(new)
            && *first != held + 1
        {
            // openraft applies the committed log without gaps (its storage suite alone skips
            // ahead between calls): the run goes on from there, and a reopen keeps only the
            // items before the gap.
            warn!(first, after = held, "the feed skips ahead: items are missing before this one");
            inner.main_last = first - 1;
            inner.main_tail = None;
            inner.ring.clear();
            inner.ring_bytes = 0;
        }
        // Filled a file at a time: a file gets a new item while it has room.
        let mut buf = Vec::new();
        let mut marks = Vec::new();
        let mut rest = &items[new..];
        while let Some((first, payload)) = rest.first() {
            let tail = self.tail_for(inner, TailKind::Main, *first, (RECORD_HEADER + payload.len()) as u64)?;
            let segment = inner.segments.get_mut(&tail).ok_or_else(|| corrupt("the feed's tail file is missing"))?;
            let room = usize::try_from(self.segment_bytes.saturating_sub(segment.len)).unwrap_or(usize::MAX);
            let (base, mut taken) = (segment.len, 0);
            buf.clear();
            marks.clear();
            for (index, payload) in rest {
                if taken > 0 && buf.len() + RECORD_HEADER + payload.len() > room {
                    break;
                }
                marks.push((*index, base + buf.len() as u64));
                encode_record(*index, payload, &mut buf);
                taken += 1;
            }
            segment.file.write_all_at(&buf, base).map_err(|e| at(&segment.path, e))?;
            for &(index, offset) in &marks {
                segment.push_mark(index, offset);
            }
            segment.len += buf.len() as u64;
            segment.last += taken as u64;
            segment.dirty = true;
            inner.main_last = segment.last;
            rest = &rest[taken..];
        }
        for (index, payload) in items.into_iter().skip(new) {
            inner.ring_bytes += payload.len();
            inner.ring.push_back((index, Bytes::from(payload)));
        }
        while inner.ring_bytes > RING_BYTES_MAX
            && let Some((_, old)) = inner.ring.pop_front()
        {
            inner.ring_bytes -= old.len();
        }
        Ok(())
    }

    /// Writes items a backfill copied from a peer, all at or below the feed's `start`, in
    /// index order. Items held already are skipped. Unsynced: [`FeedFiles::sync`] before the
    /// start is lowered over them.
    pub(super) fn put_copied(&self, items: &[pb::FeedItem], start: u64) -> io::Result<()> {
        let mut inner = self.lock()?;
        for item in items {
            if item.index == 0 || item.index > start || inner.holds(item.index) {
                continue;
            }
            let payload = item.encode_to_vec();
            let mut buf = Vec::with_capacity(RECORD_HEADER + payload.len());
            encode_record(item.index, &payload, &mut buf);
            let tail = self.tail_for(&mut inner, TailKind::Copy, item.index, buf.len() as u64)?;
            let segment = inner.segments.get_mut(&tail).ok_or_else(|| corrupt("the feed's copy file is missing"))?;
            segment.file.write_all_at(&buf, segment.len).map_err(|e| at(&segment.path, e))?;
            segment.push_mark(item.index, segment.len);
            segment.len += buf.len() as u64;
            segment.last = item.index;
            segment.dirty = true;
        }
        Ok(())
    }

    /// The segment a run appends `index` to: its tail when `index` follows it and it has room,
    /// else a new file.
    fn tail_for(&self, inner: &mut Inner, kind: TailKind, index: u64, bytes: u64) -> io::Result<u64> {
        let tail = match kind {
            TailKind::Main => inner.main_tail,
            TailKind::Copy => inner.copy_tail,
        };
        if let Some(first) = tail
            && let Some(segment) = inner.segments.get(&first)
            && segment.last + 1 == index
            && (segment.len + bytes <= self.segment_bytes || segment.is_empty())
        {
            return Ok(first);
        }
        match inner.segments.get(&index) {
            // Only an empty file (created, then nothing written to it) can start at an index
            // no file holds: it is reused.
            Some(segment) if segment.is_empty() => {}
            Some(_) => return Err(corrupt(format!("a feed file starting at {index} exists already"))),
            None => {
                let segment = create_segment(&self.dir, index)?;
                inner.segments.insert(index, segment);
                inner.dir_dirty = true;
            }
        }
        match kind {
            TailKind::Main => inner.main_tail = Some(index),
            TailKind::Copy => inner.copy_tail = Some(index),
        }
        Ok(index)
    }

    /// Makes every item written so far durable: the files written since the last sync, then
    /// the directory if a file was created.
    pub(super) fn sync(&self) -> io::Result<()> {
        let mut failed = self.syncing.lock().map_err(|_| io::Error::other("the feed's sync lock was poisoned"))?;
        if *failed {
            return Err(io::Error::other("an earlier sync of the feed's files failed; restart the node to recover"));
        }
        let (files, dir_dirty) = {
            let mut inner = self.lock()?;
            let files: Vec<(Arc<File>, PathBuf)> = inner
                .segments
                .values_mut()
                .filter(|s| s.dirty)
                .map(|s| {
                    s.dirty = false;
                    (s.file.clone(), s.path.clone())
                })
                .collect();
            (files, std::mem::take(&mut inner.dir_dirty))
        };
        // Outside the lock: appends go on while the disk syncs.
        let synced = files.iter().try_for_each(|(file, path)| file.sync_data().map_err(|e| at(path, e)));
        let synced = synced.and_then(|()| match dir_dirty {
            true => sync_dir(&self.dir),
            false => Ok(()),
        });
        *failed = synced.is_err();
        synced
    }

    /// After a snapshot install at `start`: keeps only the items of `kept` (files beyond it
    /// go, a file reaching past it is cut), and the main run begins again after `start`.
    /// Retention's floor becomes `trimmed`.
    pub(super) fn restart_main(&self, start: u64, kept: Option<(u64, u64)>, trimmed: u64) -> io::Result<()> {
        let mut inner = self.lock()?;
        let keep = |s: &Segment| kept.is_some_and(|(from, to)| !s.is_empty() && s.first <= to && s.last > from);
        let drop: Vec<u64> = inner.segments.iter().filter(|(_, s)| !keep(s)).map(|(f, _)| *f).collect();
        for first in drop {
            inner.remove(first)?;
        }
        if let Some((_, to)) = kept {
            // Items past the run (applied here after a restart, beyond what the applied index
            // said) would overlap the main run's new files.
            for segment in inner.segments.values_mut().filter(|s| s.last > to) {
                cut_after(segment, to)?;
            }
        }
        inner.main_last = start;
        inner.main_tail = None;
        inner.copy_tail = None;
        inner.hidden_through = trimmed;
        inner.ring.clear();
        inner.ring_bytes = 0;
        Ok(())
    }

    /// A backfill's copy is now part of the main run (the start was lowered over it).
    pub(super) fn copy_joined(&self) -> io::Result<()> {
        self.lock()?.copy_tail = None;
        Ok(())
    }

    /// Retention raised the start to `floor`: reads skip every item at or below it, and the
    /// files wholly below it are removed. Every file is tried; the first failure is returned
    /// (a file left is still known, and the next open removes it).
    pub(super) fn trim(&self, floor: u64) -> io::Result<u64> {
        let mut inner = self.lock()?;
        inner.hidden_through = inner.hidden_through.max(floor);
        while inner.ring.front().is_some_and(|(i, _)| *i <= floor) {
            if let Some((_, old)) = inner.ring.pop_front() {
                inner.ring_bytes -= old.len();
            }
        }
        if inner.copy_tail.is_some_and(|first| inner.segments.get(&first).is_none_or(|s| s.last <= floor)) {
            inner.copy_tail = None;
        }
        let main_tail = inner.main_tail;
        let drop: Vec<u64> = inner
            .segments
            .iter()
            .filter(|(first, s)| s.last <= floor && main_tail != Some(**first))
            .map(|(f, _)| *f)
            .collect();
        let (mut freed, mut failed) = (0, None);
        for first in drop {
            match inner.remove(first) {
                Ok(len) => freed += len,
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        failed.map_or(Ok(freed), Err)
    }

    /// The bytes on disk of the main run's items after `index` (records and file headers of
    /// the files wholly after it included).
    pub(super) fn bytes_after(&self, index: u64) -> io::Result<u64> {
        let (mut total, plan) = {
            let inner = self.lock()?;
            let mut total = 0;
            let mut plan = None;
            for segment in inner.segments.values().filter(|s| !s.is_empty() && s.last > index) {
                if segment.first > index {
                    total += segment.len;
                } else {
                    // `index < last`, so `index + 1` does not overflow.
                    let (marked, offset) = segment.mark_before(index + 1);
                    plan = Some((segment.file.clone(), segment.path.clone(), marked, offset, segment.len));
                }
            }
            (total, plan)
        };
        if let Some((file, path, marked, offset, end)) = plan {
            total += end - end_of(&file, &path, (marked, offset), end, index)?;
        }
        Ok(total)
    }

    /// Items with index in `(after, ..]`, at most `limit`, in index order: from the ring when
    /// it holds the first, else from the files.
    pub(super) fn read_after(&self, after: u64, limit: usize) -> io::Result<Vec<pb::FeedItem>> {
        let (after, plans) = {
            let inner = self.lock()?;
            let after = after.max(inner.hidden_through);
            if after == u64::MAX {
                return Ok(Vec::new());
            }
            if let Some((front, _)) = inner.ring.front()
                && *front <= after + 1
            {
                let skip = usize::try_from(after + 1 - front).unwrap_or(usize::MAX);
                // Decoded after the lock is let go: appends on the apply path wait for it.
                let held: Vec<Bytes> = inner.ring.iter().skip(skip).take(limit).map(|(_, b)| b.clone()).collect();
                drop(inner);
                return held.iter().map(|bytes| decode_item(bytes)).collect();
            }
            // The file holding `after + 1`, or the first after it, then the ones that follow
            // until they hold `limit` items.
            let from = inner
                .segments
                .range(..=after + 1)
                .next_back()
                .filter(|(_, s)| s.last > after)
                .map_or(after + 1, |(first, _)| *first);
            let mut plans = Vec::new();
            let mut items = 0u64;
            for segment in inner.segments.range(from..).map(|(_, s)| s).filter(|s| !s.is_empty()) {
                let (_, offset) = segment.mark_before(after + 1);
                plans.push(ReadPlan {
                    file: segment.file.clone(),
                    path: segment.path.clone(),
                    from_offset: offset,
                    end: segment.len,
                });
                items += segment.last - segment.first.max(after + 1) + 1;
                if items >= limit as u64 {
                    break;
                }
            }
            (after, plans)
        };
        let mut out = Vec::new();
        for plan in plans {
            let mut reader = Chunks::new(&plan.file, &plan.path, plan.from_offset, plan.end);
            while out.len() < limit {
                let Some((index, payload, _)) = reader.next_record()? else { break };
                if index > after {
                    out.push(decode_item(&payload)?);
                }
            }
        }
        Ok(out)
    }

    /// Removes every file: the feed is being rebuilt from elsewhere.
    pub(super) fn clear(&self) -> io::Result<()> {
        self.restart_main(0, None, 0)
    }

    /// Whether the files hold `index`.
    #[cfg(test)]
    fn holds_index(&self, index: u64) -> bool {
        self.lock().is_ok_and(|inner| inner.holds(index))
    }
}

#[derive(Clone, Copy)]
enum TailKind {
    Main,
    Copy,
}

impl Inner {
    /// Removes the file starting at `first`, then forgets it (a file that cannot be removed
    /// stays known). Its bytes; 0 if there is no such file.
    fn remove(&mut self, first: u64) -> io::Result<u64> {
        let Some(segment) = self.segments.get(&first) else { return Ok(0) };
        fs::remove_file(&segment.path).map_err(|e| at(&segment.path, e))?;
        let len = segment.len;
        self.segments.remove(&first);
        self.dir_dirty = true;
        Ok(len)
    }

    fn holds(&self, index: u64) -> bool {
        self.segments.range(..=index).next_back().is_some_and(|(_, s)| s.last >= index)
    }
}

/// Records read from a file in chunks, from an offset to an end.
struct Chunks<'a> {
    file: &'a File,
    path: &'a Path,
    offset: u64,
    end: u64,
    buf: Vec<u8>,
    at: usize,
}

impl<'a> Chunks<'a> {
    fn new(file: &'a File, path: &'a Path, offset: u64, end: u64) -> Self {
        Chunks { file, path, offset, end, buf: Vec::new(), at: 0 }
    }

    /// The next whole record before `end`; `None` at `end`. A record that does not check
    /// out before `end` is damage: an error.
    fn next_record(&mut self) -> io::Result<Option<(u64, Vec<u8>, usize)>> {
        loop {
            if let Some((index, payload, len)) = decode_record(&self.buf[self.at..]) {
                let record = (index, payload.to_vec(), len);
                self.at += len;
                return Ok(Some(record));
            }
            let unread = self.end - self.offset;
            let held = self.buf.len() - self.at;
            if unread == 0 {
                return if held == 0 {
                    Ok(None)
                } else {
                    Err(corrupt(format!("{}: a damaged record before byte {}", self.path.display(), self.end)))
                };
            }
            self.buf.drain(..self.at);
            self.at = 0;
            let want = usize::try_from(unread).unwrap_or(usize::MAX).min(READ_CHUNK.max(held + RECORD_HEADER));
            let want = self.wanted(want);
            let old = self.buf.len();
            self.buf.resize(old + want, 0);
            self.file.read_exact_at(&mut self.buf[old..], self.offset).map_err(|e| at(self.path, e))?;
            self.offset += want as u64;
        }
    }

    /// Enough to finish the record begun in the buffer, if its header says how long it is.
    fn wanted(&self, want: usize) -> usize {
        let unread = usize::try_from(self.end - self.offset).unwrap_or(usize::MAX);
        match self.buf.get(self.at + 8..self.at + 12) {
            Some(len) => {
                let len = le_u32(len) as usize;
                let missing = (RECORD_HEADER + len).saturating_sub(self.buf.len() - self.at);
                want.max(missing).min(unread)
            }
            None => want.min(unread),
        }
    }
}

fn decode_item(bytes: &[u8]) -> io::Result<pb::FeedItem> {
    pb::FeedItem::decode(bytes).map_err(|e| corrupt(format!("feed item: {e}")))
}

fn create_segment(dir: &Path, first: u64) -> io::Result<Segment> {
    if first == 0 {
        return Err(corrupt("feed indexes start at 1"));
    }
    let path = dir.join(format!("{first:020}{SUFFIX}"));
    let file =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).map_err(|e| at(&path, e))?;
    file.write_all_at(MAGIC, 0).map_err(|e| at(&path, e))?;
    Ok(Segment {
        file: Arc::new(file),
        path,
        first,
        last: first - 1,
        len: MAGIC.len() as u64,
        marks: Vec::new(),
        dirty: true,
        loaded_size: MAGIC.len() as u64,
    })
}

/// Reads a segment file whole: its records must run on from `first` one index at a time. The
/// first record that is partial, damaged or out of sequence ends it, and the file is cut
/// there (a crash mid-append leaves such a tail).
fn load_segment(path: &Path, first: u64) -> io::Result<Segment> {
    if first == 0 {
        return Err(corrupt(format!("{}: a feed file cannot start at index 0", path.display())));
    }
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| at(path, e))?;
    let size = file.metadata().map_err(|e| at(path, e))?.len();
    let mut segment = Segment {
        file: Arc::new(file),
        path: path.to_owned(),
        first,
        last: first - 1,
        len: MAGIC.len() as u64,
        marks: Vec::new(),
        dirty: true,
        loaded_size: size,
    };
    let mut magic = [0u8; MAGIC.len()];
    if size >= MAGIC.len() as u64 {
        segment.file.read_exact_at(&mut magic, 0).map_err(|e| at(path, e))?;
    }
    if size < MAGIC.len() as u64 || magic == [0; MAGIC.len()] {
        // Created, and the crash came before its header was written out: nothing in it
        // (an empty file is removed by `reconcile`).
        return Ok(segment);
    }
    if &magic != MAGIC {
        return Err(corrupt(format!("{}: not a feed file of a format this build reads", path.display())));
    }
    let file = segment.file.clone();
    let mut reader = Chunks::new(&file, path, MAGIC.len() as u64, size);
    loop {
        let offset = segment.len;
        match reader.next_record() {
            Ok(Some((index, _, len))) if index == segment.last + 1 => {
                segment.push_mark(index, offset);
                segment.last = index;
                segment.len += len as u64;
            }
            Ok(None) => break,
            // Damage, or a partial record: the file's whole records end here.
            Ok(Some(_)) => break,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => break,
            Err(e) => return Err(e),
        }
    }
    Ok(segment)
}

/// The offset just past item `index` in a file, walking its records from `mark` (an item's
/// index and offset at or before `index + 1`) up to `end`.
fn end_of(file: &File, path: &Path, mark: (u64, u64), end: u64, index: u64) -> io::Result<u64> {
    let (mut at_index, mut offset) = mark;
    let mut reader = Chunks::new(file, path, offset, end);
    while at_index <= index {
        let Some((i, _, len)) = reader.next_record()? else {
            return Err(corrupt(format!("{}: no item {at_index} before byte {end}", path.display())));
        };
        offset += len as u64;
        at_index = i + 1;
    }
    Ok(offset)
}

/// Cuts `segment` after the item `to` (within it or before it).
fn cut_after(segment: &mut Segment, to: u64) -> io::Result<()> {
    if to < segment.first {
        segment.file.set_len(MAGIC.len() as u64).map_err(|e| at(&segment.path, e))?;
        (segment.last, segment.len) = (segment.first - 1, MAGIC.len() as u64);
        segment.marks.clear();
    } else if to < segment.last {
        let offset = end_of(&segment.file, &segment.path, segment.mark_before(to + 1), segment.len, to)?;
        segment.file.set_len(offset).map_err(|e| at(&segment.path, e))?;
        (segment.last, segment.len) = (to, offset);
        segment.marks.retain(|(index, _)| *index <= to);
    }
    segment.dirty = true;
    segment.loaded_size = segment.len;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

    use super::*;

    fn item(index: u64) -> (u64, Vec<u8>) {
        let item = pb::FeedItem { index, at_ms: index as i64 * 10, events: Vec::new() };
        (index, item.encode_to_vec())
    }

    fn indexes(items: &[pb::FeedItem]) -> Vec<u64> {
        items.iter().map(|i| i.index).collect()
    }

    /// A new feed in a new directory holding items `1..=upto`, in files of `segment_bytes`.
    fn feed_of(segment_bytes: u64, upto: u64) -> (tempfile::TempDir, FeedFiles) {
        let dir = tempfile::tempdir().unwrap();
        let feed = FeedFiles::open(dir.path(), segment_bytes).unwrap();
        feed.reconcile(0, None, 0, 0).unwrap();
        feed.append((1..=upto).map(item).collect()).unwrap();
        (dir, feed)
    }

    #[test]
    fn items_read_back_across_files_and_after_a_reopen() {
        let (dir, feed) = feed_of(200, 300);
        assert!(fs::read_dir(dir.path()).unwrap().count() > 10, "small files: many of them");
        assert_eq!(indexes(&feed.read_after(0, 1_000).unwrap()), (1..=300).collect::<Vec<_>>());
        assert_eq!(indexes(&feed.read_after(137, 5).unwrap()), [138, 139, 140, 141, 142]);
        feed.sync().unwrap();
        drop(feed);
        let feed = FeedFiles::open(dir.path(), 200).unwrap();
        feed.reconcile(0, None, 0, 300).unwrap();
        assert_eq!(feed.main_last().unwrap(), 300);
        assert_eq!(indexes(&feed.read_after(250, 1_000).unwrap()), (251..=300).collect::<Vec<_>>(), "from the files");
        // Re-applied items are skipped; the next one follows.
        feed.append((290..=301).map(item).collect()).unwrap();
        assert_eq!(indexes(&feed.read_after(295, 1_000).unwrap()), (296..=301).collect::<Vec<_>>());
        assert!(feed.append(vec![item(302), item(304)]).is_err(), "a gap within a batch is refused");
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_file_after_a_gap_is_dropped() {
        let (dir, feed) = feed_of(1 << 20, 10);
        drop(feed);
        let path = dir.path().join(format!("{:020}{SUFFIX}", 1));
        let len = fs::metadata(&path).unwrap().len();
        // The last record half written, and a file after the gap that leaves.
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 3).unwrap();
        let later = create_segment(dir.path(), 12).unwrap();
        let mut buf = Vec::new();
        encode_record(12, &item(12).1, &mut buf);
        later.file.write_all_at(&buf, later.len).unwrap();
        let feed = FeedFiles::open(dir.path(), 1 << 20).unwrap();
        assert!(feed.reconcile(0, None, 0, 10).is_err(), "item 10 was promised by a snapshot");
        let feed = FeedFiles::open(dir.path(), 1 << 20).unwrap();
        feed.reconcile(0, None, 0, 9).unwrap();
        assert_eq!(feed.main_last().unwrap(), 9);
        assert!(!feed.holds_index(12), "after the gap: removed");
        assert!(!dir.path().join(format!("{:020}{SUFFIX}", 12)).exists());
        feed.append((10..=12).map(item).collect()).unwrap();
        assert_eq!(indexes(&feed.read_after(0, 100).unwrap()), (1..=12).collect::<Vec<_>>());
    }

    #[test]
    fn a_damaged_record_in_the_middle_ends_the_run() {
        let (dir, feed) = feed_of(1 << 20, 10);
        drop(feed);
        let path = dir.path().join(format!("{:020}{SUFFIX}", 1));
        let mut raw = fs::read(&path).unwrap();
        let middle = raw.len() / 2;
        raw[middle] ^= 0xff;
        fs::write(&path, &raw).unwrap();
        let feed = FeedFiles::open(dir.path(), 1 << 20).unwrap();
        feed.reconcile(0, None, 0, 0).unwrap();
        let last = feed.main_last().unwrap();
        assert!((1..10).contains(&last), "cut before the damage, at {last}");
        assert_eq!(indexes(&feed.read_after(0, 100).unwrap()), (1..=last).collect::<Vec<_>>());
    }

    #[test]
    fn an_install_keeps_only_the_kept_run_and_a_reopen_checks_it_is_whole() {
        let (dir, feed) = feed_of(300, 20);
        feed.trim(3).unwrap();
        // Installed at 30, keeping (3, 12]: 13..=20 (applied beyond what was known) are cut.
        feed.sync().unwrap();
        feed.restart_main(30, Some((3, 12)), 0).unwrap();
        assert_eq!(indexes(&feed.read_after(0, 100).unwrap()), (1..=12).collect::<Vec<_>>(), "the floor is reset");
        feed.append((31..=35).map(item).collect()).unwrap();
        assert_eq!(indexes(&feed.read_after(12, 100).unwrap()), (31..=35).collect::<Vec<_>>());
        assert!(feed.read_after(u64::MAX, 10).unwrap().is_empty());
        feed.sync().unwrap();
        drop(feed);
        let feed = FeedFiles::open(dir.path(), 300).unwrap();
        assert_eq!(feed.reconcile(30, Some((3, 12)), 3, 30).unwrap(), Some((3, 12)), "held whole");
        assert_eq!(indexes(&feed.read_after(0, 100).unwrap()), [4, 5, 6, 7, 8, 9, 10, 11, 12, 31, 32, 33, 34, 35]);
        drop(feed);
        // A kept run claimed beyond what the files hold is not believed, and its files go.
        let feed = FeedFiles::open(dir.path(), 300).unwrap();
        assert_eq!(feed.reconcile(30, Some((3, 14)), 3, 30).unwrap(), None);
        assert_eq!(indexes(&feed.read_after(0, 100).unwrap()), (31..=35).collect::<Vec<_>>());
    }

    #[test]
    fn files_that_overlap_are_cut_where_the_next_begins() {
        let (dir, feed) = feed_of(1 << 20, 20);
        drop(feed);
        // As after an install whose cut of the older file a power loss undid: 15..=25 again.
        let later = create_segment(dir.path(), 15).unwrap();
        let mut buf = Vec::new();
        for index in 15..=25 {
            encode_record(index, &item(index).1, &mut buf);
        }
        later.file.write_all_at(&buf, later.len).unwrap();
        let feed = FeedFiles::open(dir.path(), 1 << 20).unwrap();
        feed.reconcile(0, None, 0, 25).unwrap();
        assert_eq!(indexes(&feed.read_after(0, 100).unwrap()), (1..=25).collect::<Vec<_>>(), "each item once");
        drop(feed);
        let feed = FeedFiles::open(dir.path(), 1 << 20).unwrap();
        feed.reconcile(0, None, 0, 25).unwrap();
        assert_eq!(indexes(&feed.read_after(10, 100).unwrap()), (11..=25).collect::<Vec<_>>(), "and after a reopen");
    }

    #[test]
    fn bytes_after_counts_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let feed = FeedFiles::open(dir.path(), 500).unwrap();
        feed.reconcile(0, None, 0, 0).unwrap();
        let items: Vec<_> = (1..=200).map(item).collect();
        let sizes: Vec<u64> = items.iter().map(|(_, p)| (RECORD_HEADER + p.len()) as u64).collect();
        feed.append(items).unwrap();
        let files = fs::read_dir(dir.path()).unwrap().count() as u64;
        let total: u64 = sizes.iter().sum::<u64>() + files * MAGIC.len() as u64;
        assert_eq!(feed.bytes_after(0).unwrap(), total);
        for at in [1u64, 63, 64, 65, 100, 199] {
            let records: u64 = sizes[at as usize..].iter().sum();
            let got = feed.bytes_after(at).unwrap();
            // Headers of files wholly after `at` count too.
            assert!(got >= records && got <= records + files * MAGIC.len() as u64, "after {at}: {got} vs {records}");
        }
        assert_eq!(feed.bytes_after(200).unwrap(), 0);
        let freed = feed.trim(100).unwrap();
        assert!(freed > 0, "files wholly at or below 100 go");
        assert_eq!(indexes(&feed.read_after(0, 1_000).unwrap()), (101..=200).collect::<Vec<_>>());
    }
}
