//! `gavel-bench search`: search's indexing rate and query latency with the real model, in
//! this process (no cluster; run under `taskset -c 0` for "one core").
//!
//! Synthetic lots in five languages (English, Spanish, German, French, Italian) are indexed
//! through the real indexer (`Index::apply` on feed items, in the subscriber's batches) up to
//! `--embed` lots: that gives lots/s. Embedding all 100,000 lots would take most of an hour
//! on one core, so the store is then filled up to `--lots` with points whose vectors are the
//! normalised sum of two embedded lots' vectors (an exact scan costs the same whatever the
//! vectors hold). Then `--queries` multilingual queries are timed end to end (query embedding,
//! scan, re-ranking), one at a time.

use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use ledger::pb::event::Kind as EventKind;
use ledger::pb::{Event, LotStatus, LotView};
use node::pb::FeedItem;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
pub use search::Kernel;
use search::store::{Changes, Payload, Point};
use search::{Embedded, Encoder, Filter, Index, Kind, VectorStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SearchBenchError {
    #[error("search: {0}")]
    Search(String),
}

fn f32_kernel() -> String {
    Kernel::F32.name().to_string()
}

fn err(e: impl std::fmt::Display) -> SearchBenchError {
    SearchBenchError::Search(e.to_string())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchResult {
    pub lots: usize,
    /// The encoder's kernel (older results: f32).
    #[serde(default = "f32_kernel")]
    pub kernel: String,
    /// Lots embedded by the model through the indexer.
    pub embedded: usize,
    pub index_lots_per_s: f64,
    pub queries: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// The query embedding alone.
    pub embed_p50_us: u64,
    pub embed_p99_us: u64,
    /// Queries whose best hit was a lot of the subject asked for.
    pub on_subject: u64,
}

/// (English, Spanish, German, French, Italian) phrasings of each subject.
const SUBJECTS: [[&str; 5]; 8] = [
    [
        "landscape with windmills",
        "paisaje con molinos de viento",
        "Landschaft mit Windmühlen",
        "paysage aux moulins à vent",
        "paesaggio con mulini a vento",
    ],
    [
        "portrait of a young woman",
        "retrato de una joven",
        "Bildnis einer jungen Frau",
        "portrait d'une jeune femme",
        "ritratto di giovane donna",
    ],
    [
        "still life with flowers",
        "naturaleza muerta con flores",
        "Stillleben mit Blumen",
        "nature morte aux fleurs",
        "natura morta con fiori",
    ],
    [
        "stormy seascape with ships",
        "marina tempestuosa con barcos",
        "stürmische Seelandschaft mit Schiffen",
        "marine orageuse avec navires",
        "marina in tempesta con navi",
    ],
    [
        "abstract composition in red and blue",
        "composición abstracta en rojo y azul",
        "abstrakte Komposition in Rot und Blau",
        "composition abstraite en rouge et bleu",
        "composizione astratta in rosso e blu",
    ],
    [
        "bronze figure of a dancer",
        "figura de bronce de una bailarina",
        "Bronzefigur einer Tänzerin",
        "figure en bronze d'une danseuse",
        "figura in bronzo di una ballerina",
    ],
    [
        "Madonna and Child on gold ground",
        "Virgen con el Niño sobre fondo de oro",
        "Madonna mit Kind auf Goldgrund",
        "Vierge à l'Enfant sur fond d'or",
        "Madonna col Bambino su fondo oro",
    ],
    [
        "Japanese woodblock print of a mountain",
        "grabado japonés en madera de una montaña",
        "japanischer Holzschnitt eines Berges",
        "estampe japonaise d'une montagne",
        "xilografia giapponese di una montagna",
    ],
];
const MEDIA: [[&str; 5]; 4] = [
    ["oil on canvas", "óleo sobre lienzo", "Öl auf Leinwand", "huile sur toile", "olio su tela"],
    [
        "watercolour on paper",
        "acuarela sobre papel",
        "Aquarell auf Papier",
        "aquarelle sur papier",
        "acquerello su carta",
    ],
    ["tempera on panel", "temple sobre tabla", "Tempera auf Holz", "tempera sur panneau", "tempera su tavola"],
    ["signed and dated", "firmado y fechado", "signiert und datiert", "signé et daté", "firmato e datato"],
];
const ARTISTS: [&str; 12] = [
    "Jan van Goyen",
    "Berthe Morisot",
    "Hans Arp",
    "Katsushika Hokusai",
    "Giovanni Bellini",
    "Rachel Ruysch",
    "Mirela Voss",
    "Edgar Degas",
    "Sonia Delaunay",
    "Willem van de Velde",
    "Élisabeth Vigée Le Brun",
    "Paul Klee",
];
/// Queries: a subject in another phrasing than most lots use.
const QUERIES: [(&str, usize); 8] = [
    ("molini a vento in un paesaggio olandese", 0),
    ("retrato femenino", 1),
    ("Blumenstillleben", 2),
    ("ships in a storm at sea", 3),
    ("peinture abstraite rouge et bleue", 4),
    ("scultura di una danzatrice", 5),
    ("Virgin and Child, gold background", 6),
    ("ukiyo-e Berg", 7),
];

/// Lot `n`: its subject and its texts (title, artist, description).
fn lot(n: usize, rng: &mut StdRng) -> (usize, String, String, String) {
    let subject = rng.gen_range(0..SUBJECTS.len());
    let language = rng.gen_range(0..5);
    let medium = MEDIA[rng.gen_range(0..MEDIA.len())][language];
    let artist = ARTISTS[rng.gen_range(0..ARTISTS.len())];
    let title = format!("{} ({n})", SUBJECTS[subject][language]);
    let description = format!("{}, {medium}, {}.", SUBJECTS[subject][language], 1_500 + rng.gen_range(0..500));
    (subject, title, artist.to_owned(), description)
}

fn created(n: usize, title: String, artist: String, description: String) -> Event {
    Event {
        kind: Some(EventKind::LotCreated(LotView {
            lot_id: format!("lot-{n:06}"),
            title,
            description,
            artist,
            category: "painting".into(),
            currency: "EUR".into(),
            status: LotStatus::ReadyForAuction as i32,
            ..LotView::default()
        })),
    }
}

pub fn run(
    model: &std::path::Path,
    kernel: Kernel,
    lots: usize,
    embed: usize,
    queries: u64,
) -> Result<SearchResult, SearchBenchError> {
    let encoder = Arc::new(Encoder::load_with(model, kernel).map_err(err)?);
    let dir = tempfile::tempdir().map_err(err)?;
    let store = Arc::new(Embedded::open(dir.path(), encoder.dim()).map_err(err)?);
    let index = Index::new(store.clone(), encoder.clone()).map_err(err)?;
    let mut rng = StdRng::seed_from_u64(14);
    let embed = embed.min(lots);
    let texts: Vec<(usize, String, String, String)> = (0..lots).map(|n| lot(n, &mut rng)).collect();

    // Indexing: feed items of one lot each, applied in batches of 64 as a subscriber would.
    let started = Instant::now();
    let mut next_index = 1u64;
    for chunk in texts[..embed].chunks(64) {
        let base = next_index as usize - 1;
        let items: Vec<FeedItem> = chunk
            .iter()
            .enumerate()
            .map(|(i, (_, title, artist, description))| FeedItem {
                index: next_index + i as u64,
                at_ms: 0,
                events: vec![created(base + i, title.clone(), artist.clone(), description.clone())],
            })
            .collect();
        next_index += chunk.len() as u64;
        index.apply(&items).map_err(err)?;
        eprint!("\rindexed {} of {embed} lots", next_index - 1);
    }
    let index_lots_per_s = embed as f64 / started.elapsed().as_secs_f64();
    eprintln!();

    // Fill up to `lots` with mixtures of embedded vectors, in one commit per 10,000.
    let embedded = store.scroll(Kind::Lot, &Filter::default()).map_err(err)?;
    if embedded.is_empty() && lots > 0 {
        return Err(err("nothing was embedded (--embed 0)"));
    }
    let mut n = embed;
    while n < lots {
        let mut upserts = Vec::new();
        while n < lots && upserts.len() < 10_000 {
            let (a, b) = (&embedded[rng.gen_range(0..embedded.len())], &embedded[rng.gen_range(0..embedded.len())]);
            let mut vector: Vec<f32> = a.vector.iter().zip(&b.vector).map(|(x, y)| x + y).collect();
            let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            vector.iter_mut().for_each(|v| *v /= norm);
            let (_, title, artist, _) = &texts[n];
            let payload = Payload {
                title: title.clone(),
                artist: artist.clone(),
                status: LotStatus::ReadyForAuction as i32,
                category: "painting".into(),
                currency: "EUR".into(),
                ..Payload::default()
            };
            upserts.push((Kind::Lot, Point { id: format!("lot-{n:06}"), vector, payload }));
            n += 1;
        }
        store.commit(Changes { upserts, ..Changes::default() }).map_err(err)?;
    }

    // Queries, one at a time, end to end; and the query embedding alone.
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(err)?;
    let mut embed_only = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(err)?;
    let mut on_subject = 0;
    let number = |id: &str| id.strip_prefix("lot-").and_then(|n| n.parse::<usize>().ok());
    for q in 0..queries {
        let (text, subject) = QUERIES[q as usize % QUERIES.len()];
        let started = Instant::now();
        let answer = search::query::lots(&encoder, &*store, text, &Filter::default(), 20).map_err(err)?;
        all.record(started.elapsed().as_micros().max(1) as u64).map_err(err)?;
        // Only embedded lots count: the mixtures' vectors do not match their texts.
        if let Some(best) = answer.hits.iter().filter_map(|h| number(&h.id)).find(|&n| n < embed)
            && texts[best].0 == subject
        {
            on_subject += 1;
        }
        let started = Instant::now();
        encoder.embed_query(text).map_err(err)?;
        embed_only.record(started.elapsed().as_micros().max(1) as u64).map_err(err)?;
    }
    Ok(SearchResult {
        lots,
        kernel: kernel.name().to_string(),
        embedded: embed,
        index_lots_per_s,
        queries,
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
        p999_us: all.value_at_quantile(0.999),
        max_us: all.max(),
        embed_p50_us: embed_only.value_at_quantile(0.5),
        embed_p99_us: embed_only.value_at_quantile(0.99),
        on_subject,
    })
}
