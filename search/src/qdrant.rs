//! The scale-out vector store: a Qdrant server (or cluster) over gRPC with `qdrant-client`.
//!
//! Collections, named `{prefix}_{kind}`: `lots` and `artists` (cosine, the model's
//! dimension, payload indexes on the filtered fields) and `meta` (one-dimensional dummy
//! vectors: the checkpoint, the model, the dimension, sales' currencies, dead letters).
//! Qdrant ids must be integers or UUIDs, so a point's id is a UUID made from its kind and
//! Gavel id (BLAKE3), and the Gavel id travels in the payload.
//!
//! Qdrant has no transaction across points, so a commit is ordered instead of atomic: the
//! vectors are checked first (a bad one writes nothing), then points are upserted (each
//! carrying the log index of its change), then the meta records, then the checkpoint, every
//! request waiting for the write to be applied. A crash part-way leaves the checkpoint
//! behind, the indexer replays from it and rewrites the same points: replays are idempotent.
//! Readers may see a batch's points before its checkpoint moves, never the reverse.
//!
//! Unlike the embedded store's exact scan, Qdrant answers from its HNSW index once a
//! collection passes its indexing threshold: approximate nearest neighbours, which is what
//! scale-out is for. Vectors are unit length already, so Qdrant's cosine normalisation keeps
//! them as written.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use base64::Engine as _;
use prost::Message as _;
use qdrant_client::qdrant::r#match::MatchValue;
use qdrant_client::qdrant::vector_output::Vector;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeletePointsBuilder,
    Distance, FieldType, Filter as QFilter, GetPointsBuilder, PointId, PointStruct, PointsIdsList, QueryPointsBuilder,
    RetrievedPoint, ScrollPointsBuilder, UpsertPointsBuilder, Value, VectorParamsBuilder, VectorsOutput,
};
use qdrant_client::{Payload as QPayload, Qdrant as Client};

use node::Bridge;

use crate::store::{Changes, DeadLetter, Filter, Hit, Kind, Payload, Point, StoreError, VectorStore};

/// Points read per scroll request, and written per upsert request (Qdrant bounds a request's
/// size: 32 MB by default).
const PAGE: u32 = 256;
/// A request's deadline (the client's default, 5 s, is short for a large upsert that waits
/// until applied).
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The Qdrant store. Its calls block (the [`VectorStore`] contract) and run on the store's
/// own runtime, so they may be made from any thread.
pub struct Qdrant {
    inner: Arc<Inner>,
    bridge: Bridge,
}

struct Inner {
    client: Client,
    prefix: String,
    dim: usize,
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("qdrant: {e}"))
}

impl Qdrant {
    /// Connects to `url` (Qdrant's gRPC port, e.g. `http://localhost:6334`; `QDRANT_API_KEY`
    /// if set), creates the collections `{prefix}_lots`, `{prefix}_artists` and `{prefix}_meta`
    /// if missing, and refuses a store whose vectors have another dimension.
    pub fn connect(url: &str, prefix: &str, dim: usize) -> Result<Qdrant, StoreError> {
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(StoreError::Io(format!(
                "qdrant: collection prefix {prefix:?} must be letters, digits, _ or -"
            )));
        }
        let bridge = Bridge::new("search-qdrant").map_err(engine)?;
        let mut builder = Client::from_url(url)
            .skip_compatibility_check()
            .timeout(TIMEOUT)
            .connect_timeout(std::time::Duration::from_secs(5));
        if let Ok(key) = std::env::var("QDRANT_API_KEY") {
            builder = builder.api_key(key);
        }
        let inner = Arc::new(Inner { client: builder.build().map_err(engine)?, prefix: prefix.to_owned(), dim });
        let store = Qdrant { inner, bridge };
        store.run(|inner| async move { inner.prepare().await })?;
        Ok(store)
    }

    /// Ties the store to one model, as [`crate::Embedded::bind_model`] does.
    pub fn bind_model(&self, fingerprint: &str) -> Result<(), StoreError> {
        let fingerprint = fingerprint.to_owned();
        self.run(|inner| async move {
            match inner.meta_str("model").await? {
                Some(stored) if stored == fingerprint => Ok(()),
                Some(stored) => Err(StoreError::Model { stored, given: fingerprint }),
                None => inner.put_meta(vec![meta_point("model", text_payload(&fingerprint))]).await,
            }
        })
    }

    fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.bridge.run(f(self.inner.clone())).map_err(engine)?
    }
}

/// A Qdrant point id for a Gavel id: a UUID from BLAKE3 of the namespace and the id.
fn point_id(namespace: &str, id: &str) -> PointId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(namespace.as_bytes());
    hasher.update(&[0]);
    hasher.update(id.as_bytes());
    let h = hasher.finalize().to_hex();
    PointId::from(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

fn meta_point(name: &str, payload: QPayload) -> PointStruct {
    PointStruct::new(point_id("meta", name), vec![1.0f32], payload)
}

fn text_payload(value: &str) -> QPayload {
    let mut p = QPayload::new();
    p.insert("value", value);
    p
}

fn blob(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unblob(value: Option<&Value>) -> Result<Vec<u8>, StoreError> {
    let text =
        value.and_then(Value::as_str).ok_or_else(|| StoreError::Corrupt("qdrant: a record without its doc".into()))?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| StoreError::Corrupt(format!("qdrant: a record's doc: {e}")))
}

fn conditions(filter: &Filter) -> Option<QFilter> {
    let mut must = Vec::new();
    if let Some(status) = filter.status {
        must.push(Condition::matches("status", i64::from(status)));
    }
    for (key, value) in [("category", &filter.category), ("currency", &filter.currency), ("artist", &filter.artist)] {
        if let Some(value) = value {
            // Keyword explicitly: the client turns a string with a space into a text match,
            // which is "contains the words", not equality.
            must.push(Condition::matches(key, MatchValue::Keyword(value.clone())));
        }
    }
    (!must.is_empty()).then(|| QFilter::must(must))
}

fn vector_of(vectors: Option<VectorsOutput>) -> Result<Vec<f32>, StoreError> {
    match vectors.and_then(|v| v.get_vector()) {
        Some(Vector::Dense(dense)) => Ok(dense.data),
        _ => Err(StoreError::Corrupt("qdrant: a point without its dense vector".into())),
    }
}

fn decode_point(payload: &HashMap<String, Value>, vectors: Option<VectorsOutput>) -> Result<Point, StoreError> {
    let (id, doc) = decode_doc(payload)?;
    Ok(Point { id, vector: vector_of(vectors)?, payload: doc })
}

/// A point's Gavel id and payload, as stored beside Qdrant's own copy of the filtered fields.
fn decode_doc(payload: &HashMap<String, Value>) -> Result<(String, Payload), StoreError> {
    let id = payload
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| StoreError::Corrupt("qdrant: a point without its id".into()))?
        .clone();
    let doc = Payload::decode(unblob(payload.get("doc"))?.as_slice())
        .map_err(|e| StoreError::Corrupt(format!("qdrant: point {id}: {e}")))?;
    Ok((id, doc))
}

impl Inner {
    fn collection(&self, kind: Kind) -> String {
        format!("{}_{}", self.prefix, kind.name())
    }

    fn meta(&self) -> String {
        format!("{}_meta", self.prefix)
    }

    async fn prepare(&self) -> Result<(), StoreError> {
        for kind in Kind::ALL {
            let name = self.collection(kind);
            self.ensure_collection(&name, VectorParamsBuilder::new(self.dim as u64, Distance::Cosine)).await?;
            for (field, kind) in [
                ("status", FieldType::Integer),
                ("category", FieldType::Keyword),
                ("currency", FieldType::Keyword),
                ("artist", FieldType::Keyword),
            ] {
                self.ensure_index(&name, field, kind).await?;
            }
        }
        let meta = self.meta();
        self.ensure_collection(&meta, VectorParamsBuilder::new(1, Distance::Dot)).await?;
        self.ensure_index(&meta, "kind", FieldType::Keyword).await?;
        match self.meta_str("dim").await? {
            Some(stored) if stored == self.dim.to_string() => Ok(()),
            Some(stored) => Err(StoreError::Dimension { expected: stored.parse().unwrap_or(0), got: self.dim }),
            None => self.put_meta(vec![meta_point("dim", text_payload(&self.dim.to_string()))]).await,
        }
    }

    /// Creates the collection unless it exists; another process creating it at the same time
    /// is not an error.
    async fn ensure_collection(&self, name: &str, vectors: VectorParamsBuilder) -> Result<(), StoreError> {
        if self.client.collection_exists(name).await.map_err(engine)? {
            return Ok(());
        }
        match self.client.create_collection(CreateCollectionBuilder::new(name).vectors_config(vectors)).await {
            Ok(_) => Ok(()),
            Err(_) if self.client.collection_exists(name).await.map_err(engine)? => Ok(()),
            Err(e) => Err(engine(e)),
        }
    }

    /// Every connect asks for the payload indexes (Qdrant keeps one that exists), so a crash
    /// between creating a collection and its indexes cannot leave a filter unindexed.
    async fn ensure_index(&self, collection: &str, field: &str, kind: FieldType) -> Result<(), StoreError> {
        self.client
            .create_field_index(CreateFieldIndexCollectionBuilder::new(collection, field, kind).wait(true))
            .await
            .map_err(engine)?;
        Ok(())
    }

    async fn put_meta(&self, points: Vec<PointStruct>) -> Result<(), StoreError> {
        if points.is_empty() {
            return Ok(());
        }
        self.client.upsert_points(UpsertPointsBuilder::new(self.meta(), points).wait(true)).await.map_err(engine)?;
        Ok(())
    }

    async fn get_raw(&self, collection: String, id: PointId) -> Result<Option<RetrievedPoint>, StoreError> {
        let got = self
            .client
            .get_points(GetPointsBuilder::new(collection, vec![id]).with_payload(true).with_vectors(true))
            .await
            .map_err(engine)?;
        Ok(got.result.into_iter().next())
    }

    async fn meta_str(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .get_raw(self.meta(), point_id("meta", name))
            .await?
            .and_then(|p| p.payload.get("value").and_then(Value::as_str).cloned()))
    }

    async fn checkpoint(&self) -> Result<u64, StoreError> {
        match self.meta_str("checkpoint").await? {
            None => Ok(0),
            Some(text) => text.parse().map_err(|_| StoreError::Corrupt(format!("qdrant: checkpoint {text:?}"))),
        }
    }

    async fn commit(&self, changes: Changes) -> Result<(), StoreError> {
        for (_, point) in &changes.upserts {
            if point.vector.len() != self.dim {
                return Err(StoreError::Dimension { expected: self.dim, got: point.vector.len() });
            }
        }
        for kind in Kind::ALL {
            let points: Vec<PointStruct> = changes
                .upserts
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, p)| {
                    let mut payload = QPayload::new();
                    payload.insert("id", p.id.as_str());
                    payload.insert("doc", blob(&p.payload.encode_to_vec()));
                    payload.insert("index", p.payload.index as i64);
                    payload.insert("status", i64::from(p.payload.status));
                    payload.insert("category", p.payload.category.as_str());
                    payload.insert("currency", p.payload.currency.as_str());
                    payload.insert("artist", p.payload.artist.as_str());
                    PointStruct::new(point_id(kind.name(), &p.id), p.vector.clone(), payload)
                })
                .collect();
            for chunk in points.chunks(PAGE as usize) {
                self.client
                    .upsert_points(UpsertPointsBuilder::new(self.collection(kind), chunk.to_vec()).wait(true))
                    .await
                    .map_err(engine)?;
            }
        }
        let mut meta: Vec<PointStruct> = changes
            .auctions
            .iter()
            .map(|(auction, currency)| meta_point(&format!("auction:{auction}"), text_payload(currency)))
            .collect();
        if let Some(letter) = &changes.park {
            let mut payload = QPayload::new();
            payload.insert("kind", "dead_letter");
            payload.insert("index", letter.index as i64);
            payload.insert("doc", blob(&letter.encode_to_vec()));
            meta.push(meta_point(&format!("dead:{}", letter.index), payload));
        }
        self.put_meta(meta).await?;
        if let Some(index) = changes.unpark {
            self.client
                .delete_points(
                    DeletePointsBuilder::new(self.meta())
                        .points(PointsIdsList { ids: vec![point_id("meta", &format!("dead:{index}"))] })
                        .wait(true),
                )
                .await
                .map_err(engine)?;
        }
        // Last: the checkpoint promises everything before it is written.
        if let Some(index) = changes.checkpoint {
            self.put_meta(vec![meta_point("checkpoint", text_payload(&index.to_string()))]).await?;
        }
        Ok(())
    }

    async fn search(&self, kind: Kind, vector: Vec<f32>, filter: Filter, limit: usize) -> Result<Vec<Hit>, StoreError> {
        if vector.len() != self.dim {
            return Err(StoreError::Dimension { expected: self.dim, got: vector.len() });
        }
        if limit == 0 {
            // Qdrant refuses a zero limit; the contract answers it with nothing.
            return Ok(Vec::new());
        }
        let mut request =
            QueryPointsBuilder::new(self.collection(kind)).query(vector).limit(limit as u64).with_payload(true);
        if let Some(f) = conditions(&filter) {
            request = request.filter(f);
        }
        let answer = self.client.query(request).await.map_err(engine)?;
        let mut hits = Vec::with_capacity(answer.result.len());
        for scored in answer.result {
            let (id, payload) = decode_doc(&scored.payload)?;
            hits.push(Hit { id, score: scored.score, payload });
        }
        // The contract orders ties by id; Qdrant returns tied points in any order (and, at the
        // cut-off, picks which of them to keep).
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        Ok(hits)
    }

    async fn scroll_raw(
        &self,
        collection: String,
        filter: Option<QFilter>,
        vectors: bool,
    ) -> Result<Vec<RetrievedPoint>, StoreError> {
        let mut out = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut request =
                ScrollPointsBuilder::new(collection.clone()).limit(PAGE).with_payload(true).with_vectors(vectors);
            if let Some(f) = filter.clone() {
                request = request.filter(f);
            }
            if let Some(at) = offset.take() {
                request = request.offset(at);
            }
            let page = self.client.scroll(request).await.map_err(engine)?;
            out.extend(page.result);
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
    }

    async fn scroll(&self, kind: Kind, filter: Filter) -> Result<Vec<Point>, StoreError> {
        let raw = self.scroll_raw(self.collection(kind), conditions(&filter), true).await?;
        let mut points = raw.into_iter().map(|p| decode_point(&p.payload, p.vectors)).collect::<Result<Vec<_>, _>>()?;
        points.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(points)
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let raw = self
            .scroll_raw(
                self.meta(),
                Some(QFilter::must([Condition::matches("kind", MatchValue::Keyword("dead_letter".to_owned()))])),
                false,
            )
            .await?;
        let mut letters = raw
            .iter()
            .map(|p| {
                DeadLetter::decode(unblob(p.payload.get("doc"))?.as_slice())
                    .map_err(|e| StoreError::Corrupt(format!("qdrant: a dead letter: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        letters.sort_by_key(|l| l.index);
        Ok(letters)
    }
}

impl VectorStore for Qdrant {
    fn checkpoint(&self) -> Result<u64, StoreError> {
        self.run(|inner| async move { inner.checkpoint().await })
    }

    fn commit(&self, changes: Changes) -> Result<(), StoreError> {
        self.run(|inner| async move { inner.commit(changes).await })
    }

    fn get(&self, kind: Kind, id: &str) -> Result<Option<Point>, StoreError> {
        let id = id.to_owned();
        self.run(move |inner| async move {
            match inner.get_raw(inner.collection(kind), point_id(kind.name(), &id)).await? {
                Some(p) => Ok(Some(decode_point(&p.payload, p.vectors)?)),
                None => Ok(None),
            }
        })
    }

    fn auction_currency(&self, auction_id: &str) -> Result<Option<String>, StoreError> {
        let name = format!("auction:{auction_id}");
        self.run(move |inner| async move { inner.meta_str(&name).await })
    }

    fn search(&self, kind: Kind, vector: &[f32], filter: &Filter, limit: usize) -> Result<Vec<Hit>, StoreError> {
        let (vector, filter) = (vector.to_vec(), filter.clone());
        self.run(move |inner| async move { inner.search(kind, vector, filter, limit).await })
    }

    fn scroll(&self, kind: Kind, filter: &Filter) -> Result<Vec<Point>, StoreError> {
        let filter = filter.clone();
        self.run(move |inner| async move { inner.scroll(kind, filter).await })
    }

    fn count(&self, kind: Kind) -> Result<usize, StoreError> {
        self.run(move |inner| async move {
            let answer = inner
                .client
                .count(CountPointsBuilder::new(inner.collection(kind)).exact(true))
                .await
                .map_err(engine)?;
            Ok(answer.result.map_or(0, |r| r.count as usize))
        })
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.run(|inner| async move { inner.dead_letters().await })
    }

    fn dead_letter(&self, index: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.run(move |inner| async move {
            match inner.get_raw(inner.meta(), point_id("meta", &format!("dead:{index}"))).await? {
                Some(p) => Ok(Some(
                    DeadLetter::decode(unblob(p.payload.get("doc"))?.as_slice())
                        .map_err(|e| StoreError::Corrupt(format!("qdrant: dead letter {index}: {e}")))?,
                )),
                None => Ok(None),
            }
        })
    }
}
