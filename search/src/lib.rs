//! Gavel's multilingual semantic search (`GET /v1/search` in `shared/API.md`): lots and
//! artists embedded by multilingual-e5-small, found by meaning in any language.
//!
//! - [`format`]: the packed e5 model file, parsed and checked.
//! - [`tokenize`]: XLM-R SentencePiece tokenization on a `tokenizers` Unigram model.
//! - [`model`]: the e5 encoder (int8 kernels or candle): texts to unit vectors.
//! - `kernels`: the encoder's hot loops on AVX-512 VNNI: int8 linear layers, attention (the
//!   crate's one `unsafe` module).
//! - [`store`]: what a vector store must do, and the points it keeps.
//! - [`embedded`]: the default store, exact cosine search over contiguous vectors.
//! - [`qdrant`]: the scale-out store, a Qdrant server or cluster.
//! - [`engine`]: whichever of the two a deployment picked.
//! - [`index`]: the feed handler that embeds lots and artists as they are created.
//! - [`query`]: the query path, vector search re-ranked for exact names.

pub mod embedded;
pub mod engine;
pub mod format;
pub mod index;
mod kernels;
pub mod model;
pub mod qdrant;
pub mod query;
pub mod store;
pub mod tokenize;

pub use embedded::Embedded;
pub use engine::Engine;
pub use index::{Index, Retried};
pub use model::{Encoder, Kernel, ModelError, Role};
pub use qdrant::Qdrant;
pub use store::{Filter, Hit, Kind, VectorStore};
