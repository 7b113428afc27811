//! Operator commands: `gavel catalog rebuild`, `gavel search reindex` and
//! `gavel dead-letters list|retry`.

use std::path::Path;
use std::time::Duration;

use catalog::{Catalog, Embedded, Store};
use indicatif::{ProgressBar, ProgressStyle};
use node::subscribe::Handler;
use node::{Client, OnBlockingPool, Subscriber};
use search::VectorStore;
use serde_json::Value;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0}")]
    Catalog(String),
    #[error("search: {0}")]
    Search(String),
    #[error("no node answered as leader: {0}")]
    Cluster(String),
    #[error("gateway: {0}")]
    Http(String),
}

/// Builds (or resumes building) a catalog store in `dir` from the feed, up to `until` or the
/// leader's applied index when it starts, with a progress bar; prints the store's digest.
/// Stopping it (Ctrl-C, a kill) at any point is safe: running it again resumes.
pub async fn rebuild(nodes: Vec<String>, dir: &Path, until: Option<u64>) -> Result<(), ToolError> {
    let store = Embedded::open(dir).map_err(|e| ToolError::Catalog(format!("{}: {e}", dir.display())))?;
    let catalog = Catalog::new(store).map_err(|e| ToolError::Catalog(e.to_string()))?;
    let from = catalog.applied();
    let target = match until {
        Some(index) => index,
        None => leader_applied(&nodes).await?,
    };
    if from >= target {
        println!("catalog in {} is already at index {from} (target {target})", dir.display());
    } else {
        println!("rebuilding the catalog in {} from index {from} to {target}", dir.display());
        let projector = OnBlockingPool(catalog.clone());
        follow_to(nodes, projector, node::subscribe::BATCH_MAX, from, target).await.map_err(ToolError::Catalog)?;
    }
    // A bulk load leaves many overlapping files; reads are faster once they are merged.
    catalog.store().compact();
    let digest = catalog.store().digest().map_err(|e| ToolError::Catalog(e.to_string()))?;
    let parked = catalog.store().dead_letters().map_err(|e| ToolError::Catalog(e.to_string()))?.len();
    println!(
        "catalog at index {}: {} lots, {parked} dead letters, digest {}",
        digest.checkpoint,
        digest.lots,
        digest.hex()
    );
    Ok(())
}

/// Builds (or resumes building) search's vector store, in `dir` or the Qdrant `store`, from
/// the feed with the model at `model`, up to `until` or the leader's applied index; resumable
/// like [`rebuild`]. To reindex from scratch (a new model), point it at an empty directory or
/// a new collection prefix: a store built with another model is refused.
pub async fn reindex(
    nodes: Vec<String>,
    model: &Path,
    store: Option<&str>,
    dir: Option<&Path>,
    until: Option<u64>,
) -> Result<(), ToolError> {
    let encoder = search::Encoder::load(model).map_err(|e| ToolError::Search(e.to_string()))?;
    let dir = dir.unwrap_or(Path::new("gavel-search"));
    let place = store.map_or_else(|| dir.display().to_string(), str::to_owned);
    let store = search::Engine::open(store, dir, encoder.dim(), encoder.fingerprint())
        .map_err(|e| ToolError::Search(format!("{place}: {e}")))?;
    let index = std::sync::Arc::new(
        search::Index::new(std::sync::Arc::new(store), std::sync::Arc::new(encoder))
            .map_err(|e| ToolError::Search(e.to_string()))?,
    );
    let from = *index.applied().borrow();
    let target = match until {
        Some(index) => index,
        None => leader_applied(&nodes).await?,
    };
    if from >= target {
        println!("search index in {place} is already at index {from} (target {target})");
    } else {
        println!("indexing the feed into {place} from index {from} to {target}");
        let indexer = OnBlockingPool(index.clone());
        follow_to(nodes, indexer, search::index::BATCH_ITEMS, from, target).await.map_err(ToolError::Search)?;
    }
    let store = index.store();
    let lots = store.count(search::Kind::Lot).map_err(|e| ToolError::Search(e.to_string()))?;
    let artists = store.count(search::Kind::Artist).map_err(|e| ToolError::Search(e.to_string()))?;
    let parked = store.dead_letters().map_err(|e| ToolError::Search(e.to_string()))?.len();
    println!(
        "search at index {}: {} lots, {} artists, {parked} dead letters",
        *index.applied().borrow(),
        lots,
        artists
    );
    Ok(())
}

/// Runs `handler` on the feed from `from` to `target`, `batch_max` items at a time, with a
/// progress bar; Ctrl-C stops it (a later run resumes from the handler's checkpoint).
async fn follow_to<H: Handler + Sync + 'static>(
    nodes: Vec<String>,
    handler: H,
    batch_max: usize,
    from: u64,
    target: u64,
) -> Result<(), String> {
    let bar = ProgressBar::new(target - from);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} entries ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let subscriber = Subscriber::new(nodes, handler).until(target).batch_max(batch_max);
    let mut progress = subscriber.progress();
    let (stop, stopped) = watch::channel(false);
    let run = tokio::spawn(subscriber.run(stopped));
    let ticker = {
        let bar = bar.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut progress = progress;
            while progress.changed().await.is_ok() {
                let index = progress.borrow().index;
                bar.set_position(index.saturating_sub(from));
            }
        })
    };
    let finished = tokio::select! {
        joined = run => joined,
        _ = tokio::signal::ctrl_c() => {
            let _ = stop.send(true);
            bar.abandon_with_message("stopped");
            return Err(format!("stopped at index {}; run again to resume", progress.borrow_and_update().index));
        }
    };
    ticker.abort();
    match finished {
        Ok(Ok(_)) => {
            bar.finish();
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The leader's applied index, asking each node in turn.
async fn leader_applied(nodes: &[String]) -> Result<u64, ToolError> {
    let mut last_error = String::from("no nodes given");
    for addr in nodes {
        match Client::metrics(addr).await {
            Ok(m) if m.state == "Leader" => return Ok(m.last_applied_index),
            Ok(_) => {}
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(ToolError::Cluster(last_error))
}

/// One admin API call: `method path` on the gateway at `url` with `token`; the JSON answer,
/// or the API's error as `status code: message`.
async fn admin_call(method: reqwest::Method, url: &str, path: &str, token: &str) -> Result<Value, ToolError> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build();
    let http = http.map_err(|e| ToolError::Http(e.to_string()))?;
    let response = http
        .request(method, format!("{}{path}", url.trim_end_matches('/')))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| ToolError::Http(e.to_string()))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| ToolError::Http(e.to_string()))?;
    if status.is_success() {
        return Ok(body);
    }
    let message = body["error"]["message"].as_str().unwrap_or("");
    let code = body["error"]["code"].as_str().unwrap_or("error");
    Err(ToolError::Http(format!("{status} {code}: {message}")))
}

/// Prints the gateway's dead letters, one per line.
pub async fn dead_letters_list(url: &str, token: &str) -> Result<(), ToolError> {
    let body = admin_call(reqwest::Method::GET, url, "/v1/admin/dead-letters", token).await?;
    let letters = body["dead_letters"].as_array().cloned().unwrap_or_default();
    if letters.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    println!("{:>10}  {:<10}  {:<24}  {:>8}  {:<28}  error", "id", "subscriber", "at", "attempts", "events");
    for l in letters {
        let events: Vec<&str> =
            l["events"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        println!(
            "{:>10}  {:<10}  {:<24}  {:>8}  {:<28}  {}",
            l["id"],
            l["subscriber"].as_str().unwrap_or(""),
            l["at"].as_str().unwrap_or(""),
            l["attempts"],
            events.join(","),
            l["error"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Retries one dead letter; prints whether it applied.
pub async fn dead_letters_retry(url: &str, token: &str, id: u64, subscriber: &str) -> Result<(), ToolError> {
    let path = format!("/v1/admin/dead-letters/{id}/retry?subscriber={subscriber}");
    admin_call(reqwest::Method::POST, url, &path, token).await?;
    println!("{subscriber} dead letter {id} applied");
    Ok(())
}
