//! The default vector store: points, checkpoint and dead letters in RocksDB (one `WriteBatch`
//! per commit), and for searching, every kind's vectors in one contiguous `f32` array in
//! memory, scanned exactly. 100,000 lots are 147 MB of vectors and a scan reads them once.
//! Memory and its checkpoint change under one write lock, after the disk write: a reader
//! sees a commit whole or not at all, and never a checkpoint ahead of the points.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use prost::Message;
use rocksdb::{DB, Options, WriteBatch, WriteOptions};

use crate::store::{Changes, DeadLetter, Filter, Hit, Kind, Point, StoreError, VectorStore};

const CHECKPOINT: &[u8] = b"c";
const DEAD: u8 = b'd';
const AUCTION: u8 = b'u';
const MODEL: &[u8] = b"m";

/// One kind's points, laid out for scanning.
#[derive(Default)]
struct Collection {
    ids: Vec<String>,
    vectors: Vec<f32>,
    payloads: Vec<crate::store::Payload>,
    slots: HashMap<String, usize>,
}

impl Collection {
    fn put(&mut self, dim: usize, point: Point) {
        match self.slots.get(&point.id) {
            Some(&slot) => {
                self.vectors[slot * dim..(slot + 1) * dim].copy_from_slice(&point.vector);
                self.payloads[slot] = point.payload;
            }
            None => {
                self.slots.insert(point.id.clone(), self.ids.len());
                self.vectors.extend_from_slice(&point.vector);
                self.ids.push(point.id);
                self.payloads.push(point.payload);
            }
        }
    }

    fn point(&self, dim: usize, slot: usize) -> Point {
        Point {
            id: self.ids[slot].clone(),
            vector: self.vectors[slot * dim..(slot + 1) * dim].to_vec(),
            payload: self.payloads[slot].clone(),
        }
    }
}

/// What searches read: both collections and the checkpoint they reflect.
#[derive(Default)]
struct Memory {
    lots: Collection,
    artists: Collection,
    checkpoint: u64,
}

impl Memory {
    fn collection(&self, kind: Kind) -> &Collection {
        match kind {
            Kind::Lot => &self.lots,
            Kind::Artist => &self.artists,
        }
    }

    fn collection_mut(&mut self, kind: Kind) -> &mut Collection {
        match kind {
            Kind::Lot => &mut self.lots,
            Kind::Artist => &mut self.artists,
        }
    }
}

/// The embedded store.
pub struct Embedded {
    db: DB,
    dim: usize,
    memory: RwLock<Memory>,
    writer: std::sync::Mutex<()>,
}

impl Embedded {
    /// Opens (or creates) the store at `dir` for vectors of `dim` dimensions, loading every
    /// point into memory.
    pub fn open(dir: &Path, dim: usize) -> Result<Embedded, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, dir).map_err(io)?;
        let store = Embedded { db, dim, memory: RwLock::default(), writer: std::sync::Mutex::new(()) };
        let mut memory = Memory { checkpoint: store.stored_checkpoint()?, ..Memory::default() };
        for kind in Kind::ALL {
            let collection = memory.collection_mut(kind);
            let prefix = [prefix(kind), b'/'];
            for entry in store.db.prefix_iterator(prefix) {
                let (key, value) = entry.map_err(io)?;
                if !key.starts_with(&prefix) {
                    break;
                }
                let point = Point::decode(&*value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                store.check(&point)?;
                collection.put(dim, point);
            }
        }
        *store.write() = memory;
        Ok(store)
    }

    fn stored_checkpoint(&self) -> Result<u64, StoreError> {
        match self.db.get(CHECKPOINT).map_err(io)? {
            None => Ok(0),
            Some(bytes) => {
                let bytes: [u8; 8] =
                    bytes.as_slice().try_into().map_err(|_| StoreError::Corrupt("checkpoint".into()))?;
                Ok(u64::from_be_bytes(bytes))
            }
        }
    }

    /// Ties the store to one model: the first call records `fingerprint`, later ones (a
    /// gateway restarted with another model file) are refused, since vectors from two models
    /// are not comparable. Reindex into an empty directory to change models.
    pub fn bind_model(&self, fingerprint: &str) -> Result<(), StoreError> {
        match self.db.get(MODEL).map_err(io)? {
            Some(stored) if stored == fingerprint.as_bytes() => Ok(()),
            Some(stored) => Err(StoreError::Model {
                stored: String::from_utf8_lossy(&stored).into_owned(),
                given: fingerprint.to_owned(),
            }),
            None => self.db.put(MODEL, fingerprint.as_bytes()).map_err(io),
        }
    }

    fn check(&self, point: &Point) -> Result<(), StoreError> {
        if point.vector.len() == self.dim {
            Ok(())
        } else {
            Err(StoreError::Dimension { expected: self.dim, got: point.vector.len() })
        }
    }

    // Nothing between taking the write lock and releasing it can panic on input (slice
    // copies of checked lengths), so a poisoned lock holds whole points: carry on.
    fn read(&self) -> RwLockReadGuard<'_, Memory> {
        self.memory.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Memory> {
        self.memory.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn prefix(kind: Kind) -> u8 {
    match kind {
        Kind::Lot => b'l',
        Kind::Artist => b'a',
    }
}

fn point_key(kind: Kind, id: &str) -> Vec<u8> {
    let mut key = vec![prefix(kind), b'/'];
    key.extend_from_slice(id.as_bytes());
    key
}

fn dead_key(index: u64) -> Vec<u8> {
    let mut key = vec![DEAD, b'/'];
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn io(e: rocksdb::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl VectorStore for Embedded {
    fn checkpoint(&self) -> Result<u64, StoreError> {
        Ok(self.read().checkpoint)
    }

    fn commit(&self, changes: Changes) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (kind, point) in &changes.upserts {
            self.check(point)?;
            batch.put(point_key(*kind, &point.id), point.encode_to_vec());
        }
        for (auction_id, currency) in &changes.auctions {
            let mut key = vec![AUCTION, b'/'];
            key.extend_from_slice(auction_id.as_bytes());
            batch.put(key, currency.as_bytes());
        }
        if let Some(letter) = &changes.park {
            batch.put(dead_key(letter.index), letter.encode_to_vec());
        }
        if let Some(index) = changes.unpark {
            batch.delete(dead_key(index));
        }
        if let Some(checkpoint) = changes.checkpoint {
            batch.put(CHECKPOINT, checkpoint.to_be_bytes());
        }
        // The feed can be replayed from the checkpoint: a lost tail is re-applied, so no fsync.
        let mut options = WriteOptions::default();
        options.set_sync(false);
        // One writer at a time from the disk write to the memory update, so both take
        // commits in the same order; readers wait only for the memory update.
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        self.db.write_opt(batch, &options).map_err(io)?;
        let mut memory = self.write();
        for (kind, point) in changes.upserts {
            memory.collection_mut(kind).put(self.dim, point);
        }
        if let Some(checkpoint) = changes.checkpoint {
            memory.checkpoint = checkpoint;
        }
        Ok(())
    }

    fn get(&self, kind: Kind, id: &str) -> Result<Option<Point>, StoreError> {
        let memory = self.read();
        let collection = memory.collection(kind);
        Ok(collection.slots.get(id).map(|&slot| collection.point(self.dim, slot)))
    }

    fn auction_currency(&self, auction_id: &str) -> Result<Option<String>, StoreError> {
        let mut key = vec![AUCTION, b'/'];
        key.extend_from_slice(auction_id.as_bytes());
        match self.db.get(key).map_err(io)? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| StoreError::Corrupt("sale currency".into())),
        }
    }

    fn search(&self, kind: Kind, vector: &[f32], filter: &Filter, limit: usize) -> Result<Vec<Hit>, StoreError> {
        if vector.len() != self.dim {
            return Err(StoreError::Dimension { expected: self.dim, got: vector.len() });
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let memory = self.read();
        let collection = memory.collection(kind);
        // The worst of the best `limit` so far sits on top, to be displaced.
        let mut best: BinaryHeap<Ranked<'_>> = BinaryHeap::with_capacity(limit.min(collection.ids.len()) + 1);
        for (slot, candidate) in collection.vectors.chunks_exact(self.dim).enumerate() {
            if !filter.matches(&collection.payloads[slot]) {
                continue;
            }
            let ranked = Ranked { score: dot(vector, candidate), id: &collection.ids[slot], slot };
            if best.len() < limit {
                best.push(ranked);
            } else if best.peek().is_some_and(|worst| ranked < *worst) {
                best.pop();
                best.push(ranked);
            }
        }
        Ok(best
            .into_sorted_vec()
            .into_iter()
            .map(|r| Hit { id: r.id.to_owned(), score: r.score, payload: collection.payloads[r.slot].clone() })
            .collect())
    }

    fn scroll(&self, kind: Kind, filter: &Filter) -> Result<Vec<Point>, StoreError> {
        let memory = self.read();
        let collection = memory.collection(kind);
        let mut points: Vec<Point> = (0..collection.ids.len())
            .filter(|&slot| filter.matches(&collection.payloads[slot]))
            .map(|slot| collection.point(self.dim, slot))
            .collect();
        points.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(points)
    }

    fn count(&self, kind: Kind) -> Result<usize, StoreError> {
        Ok(self.read().collection(kind).ids.len())
    }

    fn dead_letter(&self, index: u64) -> Result<Option<DeadLetter>, StoreError> {
        match self.db.get(dead_key(index)).map_err(io)? {
            None => Ok(None),
            Some(bytes) => DeadLetter::decode(&*bytes).map(Some).map_err(|e| StoreError::Corrupt(e.to_string())),
        }
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let prefix = [DEAD, b'/'];
        let mut letters = Vec::new();
        for entry in self.db.prefix_iterator(prefix) {
            let (key, value) = entry.map_err(io)?;
            if !key.starts_with(&prefix) {
                break;
            }
            letters.push(DeadLetter::decode(&*value).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        Ok(letters)
    }
}

/// A candidate ordered best first: higher score, then smaller id (deterministic ties).
struct Ranked<'a> {
    score: f32,
    id: &'a str,
    slot: usize,
}

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.score.total_cmp(&self.score).then_with(|| self.id.cmp(other.id))
    }
}
impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked<'_> {}

/// The dot product, in eight independent lanes so the compiler vectorizes it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}
