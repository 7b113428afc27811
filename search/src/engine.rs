//! The store a deployment picked: the embedded one in a directory, or a Qdrant server.

use std::path::Path;

use crate::store::{Changes, DeadLetter, Filter, Hit, Kind, Point, StoreError, VectorStore};
use crate::{Embedded, Qdrant};

/// Either engine, behind the one [`VectorStore`] contract.
#[allow(clippy::large_enum_variant, reason = "one per process, behind an Arc")]
pub enum Engine {
    Embedded(Embedded),
    Qdrant(Qdrant),
}

impl Engine {
    /// Opens the embedded store in `dir`, or with `qdrant` (`http://host:6334/prefix`: the
    /// server's gRPC address, then the collections' prefix, `gavel` if none) a Qdrant store.
    /// Either way the store is bound to the model `fingerprint` (vectors of two models are not
    /// comparable).
    pub fn open(qdrant: Option<&str>, dir: &Path, dim: usize, fingerprint: &str) -> Result<Engine, StoreError> {
        let engine = match qdrant {
            None => Engine::Embedded(Embedded::open(dir, dim)?),
            Some(target) => {
                let (url, prefix) = split_target(target)?;
                Engine::Qdrant(Qdrant::connect(url, prefix, dim)?)
            }
        };
        match &engine {
            Engine::Embedded(store) => store.bind_model(fingerprint)?,
            Engine::Qdrant(store) => store.bind_model(fingerprint)?,
        }
        Ok(engine)
    }
}

/// `http://host:6334/prefix` -> (`http://host:6334`, `prefix`).
fn split_target(target: &str) -> Result<(&str, &str), StoreError> {
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .ok_or_else(|| StoreError::Io(format!("qdrant: {target:?} is not an http:// or https:// address")))?;
    match rest.split_once('/') {
        Some((_, prefix)) if !prefix.is_empty() => {
            Ok((&target[..target.len() - prefix.len() - 1], prefix.trim_end_matches('/')))
        }
        _ => Ok((target.trim_end_matches('/'), "gavel")),
    }
}

macro_rules! either {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Engine::Embedded($store) => $call,
            Engine::Qdrant($store) => $call,
        }
    };
}

impl VectorStore for Engine {
    fn checkpoint(&self) -> Result<u64, StoreError> {
        either!(self, s => s.checkpoint())
    }
    fn commit(&self, changes: Changes) -> Result<(), StoreError> {
        either!(self, s => s.commit(changes))
    }
    fn get(&self, kind: Kind, id: &str) -> Result<Option<Point>, StoreError> {
        either!(self, s => s.get(kind, id))
    }
    fn auction_currency(&self, auction_id: &str) -> Result<Option<String>, StoreError> {
        either!(self, s => s.auction_currency(auction_id))
    }
    fn search(&self, kind: Kind, vector: &[f32], filter: &Filter, limit: usize) -> Result<Vec<Hit>, StoreError> {
        either!(self, s => s.search(kind, vector, filter, limit))
    }
    fn scroll(&self, kind: Kind, filter: &Filter) -> Result<Vec<Point>, StoreError> {
        either!(self, s => s.scroll(kind, filter))
    }
    fn count(&self, kind: Kind) -> Result<usize, StoreError> {
        either!(self, s => s.count(kind))
    }
    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        either!(self, s => s.dead_letters())
    }
    fn dead_letter(&self, index: u64) -> Result<Option<DeadLetter>, StoreError> {
        either!(self, s => s.dead_letter(index))
    }
}

#[cfg(test)]
mod tests {
    use super::split_target;

    #[test]
    fn targets_split_into_address_and_prefix() {
        assert_eq!(split_target("http://q:6334/auctions").ok(), Some(("http://q:6334", "auctions")));
        assert_eq!(split_target("http://q:6334/").ok(), Some(("http://q:6334", "gavel")));
        assert_eq!(split_target("https://q:6334").ok(), Some(("https://q:6334", "gavel")));
        assert!(split_target("q:6334").is_err());
    }
}
