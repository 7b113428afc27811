//! Lot images (API.md "Lot content"): judged by their bytes, measured, thumbnailed, and kept
//! in an object store under their content hash. The ledger holds only their metadata.
//!
//! Bytes are written before the `AddImage` command is proposed, so a committed image always
//! has them; an upload whose command fails leaves bytes no committed image names. Those are
//! never served (serving starts from the ledger's metadata) and [`Images::sweep`] deletes
//! them once they are older than a grace period longer than any proposal can take.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use image::{ImageFormat, ImageReader, Limits};
use ledger::limits::{IMAGE_BYTES_MAX, IMAGE_SIDE_MAX};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use tracing::{info, warn};

/// Thumbnails are this many pixels wide (narrower images keep their width).
pub const THUMB_WIDTH: u32 = 320;
/// Most pixels an upload may have: an image is decoded whole, at 4 bytes a pixel at most,
/// so this bounds what one upload can make the gateway allocate (a small file can claim
/// huge dimensions).
pub const PIXELS_MAX: u64 = 40_000_000;
const THUMB_QUALITY: u8 = 80;
/// How far from a JPEG's end its end-of-image marker may sit.
const JPEG_TAIL_BYTES: usize = 4096;

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not a PNG or a JPEG, or it does not decode (415 `unsupported_image`).
    #[error("{0}")]
    Unsupported(String),
    /// Over 5 MiB, or dimensions past the bounds (413 `image_too_large`).
    #[error("{0}")]
    TooLarge(String),
}

/// An upload that passed: what the ledger records, and the thumbnail to store.
#[derive(Debug, Clone)]
pub struct Inspected {
    pub content_type: &'static str,
    /// Lowercase hex BLAKE3 of the bytes.
    pub hash: String,
    pub width: u32,
    pub height: u32,
    /// A JPEG `THUMB_WIDTH` pixels wide at most.
    pub thumb: Vec<u8>,
}

/// Judges, measures and thumbnails an upload. CPU-bound: call it off the async runtime.
pub fn inspect(bytes: &[u8]) -> Result<Inspected, ImageError> {
    if bytes.len() as u64 > IMAGE_BYTES_MAX {
        return Err(ImageError::TooLarge(format!("an image is at most {IMAGE_BYTES_MAX} bytes")));
    }
    let format = image::guess_format(bytes).ok();
    let content_type = match format {
        Some(ImageFormat::Png) => "image/png",
        Some(ImageFormat::Jpeg) => "image/jpeg",
        _ => return Err(ImageError::Unsupported("the file is not a PNG or JPEG image".into())),
    };
    let format = if content_type == "image/png" { ImageFormat::Png } else { ImageFormat::Jpeg };
    // The JPEG decoder fills a truncated scan with grey rather than failing; a whole JPEG
    // ends with its end-of-image marker (some writers pad or append a little after it).
    let tail = &bytes[bytes.len().saturating_sub(JPEG_TAIL_BYTES)..];
    if format == ImageFormat::Jpeg && !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        return Err(ImageError::Unsupported("the JPEG is truncated: it has no end-of-image marker".into()));
    }
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| ImageError::Unsupported(format!("the image does not decode: {e}")))?;
    let pixels = u64::from(width) * u64::from(height);
    if width > IMAGE_SIDE_MAX || height > IMAGE_SIDE_MAX || pixels > PIXELS_MAX {
        return Err(ImageError::TooLarge(format!(
            "the image is {width}x{height} pixels; at most {IMAGE_SIDE_MAX} a side and {PIXELS_MAX} in all"
        )));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(IMAGE_SIDE_MAX);
    limits.max_image_height = Some(IMAGE_SIDE_MAX);
    limits.max_alloc = Some(PIXELS_MAX * 4 + (64 << 20));
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => ImageError::TooLarge(format!("the image needs too much memory to decode: {e}")),
        _ => ImageError::Unsupported(format!("the image does not decode: {e}")),
    })?;
    let thumb_width = width.min(THUMB_WIDTH);
    let thumb_height =
        u32::try_from(u64::from(height) * u64::from(thumb_width) / u64::from(width.max(1))).unwrap_or(1).max(1);
    let small = decoded.resize_exact(thumb_width, thumb_height, image::imageops::FilterType::Triangle).to_rgb8();
    let mut thumb = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut thumb, THUMB_QUALITY)
        .encode_image(&small)
        .map_err(|e| ImageError::Unsupported(format!("could not make a thumbnail: {e}")))?;
    Ok(Inspected { content_type, hash: blake3::hash(bytes).to_hex().to_string(), width, height, thumb })
}

/// Which rendition of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Full,
    Thumb,
}

/// The object store with the gallery's bytes: `images/<hash>` and `thumbs/<hash>`.
pub struct Images {
    store: Arc<dyn ObjectStore>,
    /// Uploads decoded at once: each may take a few hundred MiB and a core.
    pub decoding: tokio::sync::Semaphore,
    /// What the store is, for logs and errors.
    pub describe: String,
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[error("image store {store}: {source}")]
pub struct StoreError {
    store: String,
    #[source]
    source: object_store::Error,
}

fn decoders() -> tokio::sync::Semaphore {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// The folder a rendition's bytes live in.
fn folder(size: Size) -> &'static str {
    match size {
        Size::Full => "images",
        Size::Thumb => "thumbs",
    }
}

/// A directory on this machine, created if missing.
fn local(dir: &std::path::Path) -> Result<Arc<dyn ObjectStore>, String> {
    let shown = dir.display();
    std::fs::create_dir_all(dir).map_err(|e| format!("image directory {shown}: {e}"))?;
    let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| format!("image directory {shown}: {e}"))?;
    Ok(Arc::new(store))
}

fn key(size: Size, hash: &str) -> Path {
    Path::from(format!("{}/{hash}", folder(size)))
}

impl Images {
    /// The store a URL names: a plain directory path, `file:///abs/dir`, or
    /// `s3://bucket/prefix` (any S3-compatible store, configured by the usual `AWS_*`
    /// variables).
    pub fn open(url: &str) -> Result<Images, String> {
        let describe = url.to_owned();
        let store: Arc<dyn ObjectStore> = match url.split_once("://") {
            None => local(std::path::Path::new(url))?,
            Some(("file", _)) => {
                let parsed = url::Url::parse(url).map_err(|e| format!("image store URL {url}: {e}"))?;
                let dir = parsed.to_file_path().map_err(|()| format!("image store URL {url} is not a local path"))?;
                local(&dir)?
            }
            Some(("s3" | "s3a", _)) => {
                let parsed = url::Url::parse(url).map_err(|e| format!("image store URL {url}: {e}"))?;
                // An upload waits on these requests: a store that is down fails it in
                // seconds (object_store's default keeps retrying for three minutes).
                let retry = RetryConfig {
                    backoff: BackoffConfig::default(),
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(15),
                };
                // `from_env` reads only `AWS_*` names.
                let s3 = AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| format!("image store URL {url}: {e}"))?;
                let prefix = Path::from_url_path(parsed.path()).map_err(|e| format!("image store URL {url}: {e}"))?;
                if prefix.as_ref().is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
                }
            }
            Some((scheme, _)) => {
                return Err(format!(
                    "image store URL {url}: `{scheme}://` is not supported (a directory, file:///dir or s3://bucket/prefix)"
                ));
            }
        };
        Ok(Images { store, decoding: decoders(), describe })
    }

    fn failed(&self, source: object_store::Error) -> StoreError {
        StoreError { store: self.describe.clone(), source }
    }

    /// Stores an upload and its thumbnail (the same bytes twice are simply written again).
    pub async fn put(&self, inspected: &Inspected, bytes: Bytes) -> Result<(), StoreError> {
        let thumb = PutPayload::from(Bytes::from(inspected.thumb.clone()));
        self.store.put(&key(Size::Thumb, &inspected.hash), thumb).await.map_err(|e| self.failed(e))?;
        self.store.put(&key(Size::Full, &inspected.hash), PutPayload::from(bytes)).await.map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// The bytes of one rendition; `None` when the store does not have them.
    pub async fn get(&self, size: Size, hash: &str) -> Result<Option<Bytes>, StoreError> {
        match self.store.get(&key(size, hash)).await {
            Ok(found) => found.bytes().await.map(Some).map_err(|e| self.failed(e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Deletes the bytes of every hash older than `grace` that `referenced` says no
    /// committed image names. Returns how many hashes it deleted.
    pub async fn sweep<F, Fut>(&self, grace: Duration, referenced: F) -> Result<usize, StoreError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Option<bool>>,
    {
        let cutoff = chrono::Duration::from_std(grace).ok().and_then(|g| chrono::Utc::now().checked_sub_signed(g));
        let Some(cutoff) = cutoff else { return Ok(0) };
        let mut old = std::collections::BTreeSet::new();
        for size in [Size::Full, Size::Thumb] {
            let prefix = Path::from(folder(size));
            let listed: Vec<_> = match self.store.list(Some(&prefix)).try_collect().await {
                Ok(listed) => listed,
                // Nothing stored yet under that prefix.
                Err(object_store::Error::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(self.failed(e)),
            };
            for meta in listed {
                if meta.last_modified < cutoff
                    && let Some(hash) = meta.location.filename()
                {
                    old.insert(hash.to_owned());
                }
            }
        }
        let mut deleted = 0;
        for hash in old {
            // Unknown (the cluster unreachable) keeps the bytes: a sweep can always wait.
            match referenced(hash.clone()).await {
                Some(false) => {}
                Some(true) => continue,
                None => {
                    warn!(%hash, "image sweep: could not ask the cluster; keeping the bytes");
                    continue;
                }
            }
            // The same bytes may have been uploaded again since the listing (their command not
            // committed yet): a fresh write keeps them.
            let mut fresh = false;
            for size in [Size::Full, Size::Thumb] {
                match self.store.head(&key(size, &hash)).await {
                    Ok(meta) => fresh |= meta.last_modified >= cutoff,
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.failed(e)),
                }
            }
            if fresh {
                continue;
            }
            for size in [Size::Full, Size::Thumb] {
                match self.store.delete(&key(size, &hash)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.failed(e)),
                }
            }
            deleted += 1;
        }
        if deleted > 0 {
            info!(deleted, store = %self.describe, "image sweep deleted unreferenced bytes");
        }
        Ok(deleted)
    }
}
