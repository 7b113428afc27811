//! The query path: embed the query, take the nearest points, then re-rank with a boost for
//! exact artist and title matches (a collector who types a name wants that name's works
//! first, even where another lot's description is semantically closer).

use crate::model::{Encoder, ModelError};
use crate::store::{Filter, Hit, Kind, StoreError, VectorStore};

/// Most hits one query returns.
pub const LIMIT_MAX: usize = 100;
/// Longest query text, in bytes (the model reads at most 512 tokens anyway).
pub const QUERY_MAX_BYTES: usize = 1_024;
/// Added to a lot whose artist is the query, or appears in it as words.
const ARTIST_BOOST: f32 = 0.15;
/// Added to a lot whose title is the query.
const TITLE_BOOST: f32 = 0.2;
/// Added to a lot whose title contains the query as words.
const TITLE_PART_BOOST: f32 = 0.08;
/// Vector candidates re-ranked per hit asked for.
const CANDIDATES_PER_HIT: usize = 4;
const CANDIDATES_MIN: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Search answers with the index position they reflect.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub hits: Vec<Hit>,
    /// Every event up to this log index is reflected (the index may be further along).
    pub as_of_index: u64,
}

/// Lots most relevant to `text`, best first.
pub fn lots(
    encoder: &Encoder,
    store: &impl VectorStore,
    text: &str,
    filter: &Filter,
    limit: usize,
) -> Result<Answer, QueryError> {
    let as_of_index = store.checkpoint()?;
    let vector = encoder.embed_query(text)?;
    let wanted = limit.min(LIMIT_MAX);
    let mut hits = store.search(Kind::Lot, &vector, filter, (wanted * CANDIDATES_PER_HIT).max(CANDIDATES_MIN))?;
    // The artist named exactly: their lots are candidates even if no vector brought them.
    if let Some(artist) = store.get(Kind::Artist, text.trim())? {
        let theirs = Filter { artist: Some(artist.id), ..filter.clone() };
        for hit in store.search(Kind::Lot, &vector, &theirs, wanted)? {
            if !hits.iter().any(|h| h.id == hit.id) {
                hits.push(hit);
            }
        }
    }
    let query = words(text);
    for hit in &mut hits {
        hit.score += boost(&query, &words(&hit.payload.artist), ARTIST_BOOST, ARTIST_BOOST);
        hit.score += boost(&query, &words(&hit.payload.title), TITLE_BOOST, TITLE_PART_BOOST);
    }
    rank(&mut hits, wanted);
    Ok(Answer { hits, as_of_index })
}

/// Artists most relevant to `text`, best first.
pub fn artists(encoder: &Encoder, store: &impl VectorStore, text: &str, limit: usize) -> Result<Answer, QueryError> {
    let as_of_index = store.checkpoint()?;
    let vector = encoder.embed_query(text)?;
    let wanted = limit.min(LIMIT_MAX);
    let mut hits =
        store.search(Kind::Artist, &vector, &Filter::default(), (wanted * CANDIDATES_PER_HIT).max(CANDIDATES_MIN))?;
    let query = words(text);
    for hit in &mut hits {
        hit.score += boost(&query, &words(&hit.payload.artist), ARTIST_BOOST, ARTIST_BOOST);
    }
    rank(&mut hits, wanted);
    Ok(Answer { hits, as_of_index })
}

fn rank(hits: &mut Vec<Hit>, limit: usize) {
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    hits.truncate(limit);
}

/// Lower-cased alphanumeric words: "Rembrandt van Rijn" and "rembrandt  VAN rijn" match.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// `whole` when the field is exactly the query; `part` when either contains the other as a
/// run of whole words; else nothing.
fn boost(query: &[String], field: &[String], whole: f32, part: f32) -> f32 {
    if query.is_empty() || field.is_empty() {
        0.0
    } else if query == field {
        whole
    } else if contains(field, query) || contains(query, field) {
        part
    } else {
        0.0
    }
}

fn contains(haystack: &[String], needle: &[String]) -> bool {
    needle.len() <= haystack.len() && haystack.windows(needle.len()).any(|w| w == needle)
}
