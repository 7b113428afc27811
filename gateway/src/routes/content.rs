//! API.md "Lot content": the category tree, and each lot's categories, attributes, comments
//! and images. Every change is a ledger command; reads come from the ledger (linearizable
//! unless `?consistency=stale`), image bytes from the object store.

use axum::Json;
use axum::body::Body as HttpBody;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ledger::pb::command::Body;
use ledger::pb::outcome::Result as Res;
use ledger::pb::{self, Role};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ReadQuery, chosen_or_new_id, id, label_read, label_write, new_id, run};
use crate::auth::{Caller, Curator};
use crate::error::{AppError, code};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::images::{self, ImageError, Size};
use crate::state::AppState;

/// Page sizes for comments: the default and the most a caller may ask for.
pub const COMMENTS_LIMIT_DEFAULT: usize = 50;
pub const COMMENTS_LIMIT_MAX: usize = 200;
/// How long clients and caches may keep image bytes: an image id never changes its bytes.
const IMAGE_CACHE: &str = "public, max-age=31536000, immutable";

fn unexpected(what: &str) -> AppError {
    AppError::internal(format!("the cluster answered with something other than {what}"))
}

/// The lot's content as the ledger holds it now (404 when there is no such lot).
async fn content_of(state: &AppState, lot_id: &str, stale: bool) -> Result<(pb::LotContentView, u64, bool), AppError> {
    id("lot_id", lot_id)?;
    let request =
        node::pb::ReadLotRequest { lot_id: lot_id.to_owned(), stale, include_bids: false, include_content: true };
    let answer = state.client.read_lot_with(request).await?;
    match (answer.lot, answer.content) {
        (Some(_), Some(content)) => Ok((content, answer.applied_index, answer.stale)),
        _ => Err(AppError::rejected("lot_not_found", format!("no lot {lot_id}"))),
    }
}

// ---- categories ----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCategory {
    category_id: String,
    name: String,
    #[serde(default)]
    parent_id: Option<String>,
}

/// `POST /v1/categories` (curator or admin): creates a category, or renames or moves an
/// existing one (409 `category_cycle` if the move would loop).
pub async fn put_category(
    State(state): State<AppState>,
    Curator(curator): Curator,
    ApiJson(body): ApiJson<NewCategory>,
) -> Result<Response, AppError> {
    let put = pb::PutCategory {
        category_id: body.category_id,
        name: body.name,
        parent_id: body.parent_id.unwrap_or_default(),
    };
    let (index, res) = run(&state, &curator.user_id, Body::PutCategory(put)).await?;
    let Res::Category(view) = res else { return Err(unexpected("a category")) };
    Ok(label_write((StatusCode::CREATED, Json(ledger::view::category(&view, false))), index))
}

/// `GET /v1/categories`: the whole tree, each with its direct lot count.
pub async fn categories(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ReadQuery>,
) -> Result<Response, AppError> {
    let answer = state.client.read_categories(query.stale()).await?;
    let list: Vec<Value> = answer.categories.iter().map(|c| ledger::view::category(c, true)).collect();
    Ok(label_read(Json(json!({ "categories": list })).into_response(), answer.applied_index, answer.stale))
}

/// `GET /v1/categories/{category_id}`: one category with its children's ids.
pub async fn category(
    State(state): State<AppState>,
    ApiPath(category_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ReadQuery>,
) -> Result<Response, AppError> {
    id("category_id", &category_id)?;
    let answer = state.client.read_categories(query.stale()).await?;
    let found = answer.categories.iter().find(|c| c.category_id == category_id);
    let found = found.ok_or_else(|| AppError::rejected("category_not_found", format!("no category {category_id}")))?;
    let mut body = ledger::view::category(found, true);
    body["children"] = json!(found.children);
    Ok(label_read(Json(body).into_response(), answer.applied_index, answer.stale))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LotCategories {
    category_ids: Vec<String>,
}

/// `POST /v1/lots/{lot_id}/categories` (curator or admin): the further categories a lot is
/// listed under. Answers the lot object.
pub async fn set_lot_categories(
    State(state): State<AppState>,
    Curator(curator): Curator,
    ApiPath(lot_id): ApiPath<String>,
    ApiJson(body): ApiJson<LotCategories>,
) -> Result<Response, AppError> {
    id("lot_id", &lot_id)?;
    let set = pb::SetLotCategories { lot_id, category_ids: body.category_ids };
    let (index, res) = run(&state, &curator.user_id, Body::SetLotCategories(set)).await?;
    let Res::Lot(view) = res else { return Err(unexpected("a lot")) };
    Ok(label_write(Json(ledger::view::lot(&view)), index))
}

// ---- attributes ----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAttribute {
    key: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAttributes {
    attributes: Vec<NewAttribute>,
}

/// `POST /v1/lots/{lot_id}/attributes` (curator, admin or the lot's seller): all or none.
pub async fn add_attributes(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(lot_id): ApiPath<String>,
    ApiJson(body): ApiJson<NewAttributes>,
) -> Result<Response, AppError> {
    id("lot_id", &lot_id)?;
    let attributes = body.attributes.into_iter().map(|a| pb::AttributeInput { key: a.key, value: a.value }).collect();
    let add = pb::AddAttributes { lot_id, attributes };
    let (index, res) = run(&state, &caller.user_id, Body::AddAttributes(add)).await?;
    let Res::Attributes(view) = res else { return Err(unexpected("attributes")) };
    Ok(label_write((StatusCode::CREATED, Json(ledger::view::attributes(&view))), index))
}

/// `GET /v1/lots/{lot_id}/attributes`.
pub async fn attributes(
    State(state): State<AppState>,
    ApiPath(lot_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ReadQuery>,
) -> Result<Response, AppError> {
    let (content, index, stale) = content_of(&state, &lot_id, query.stale()).await?;
    let view = pb::AttributesView { lot_id, attributes: content.attributes };
    Ok(label_read(Json(ledger::view::attributes(&view)).into_response(), index, stale))
}

/// `GET /v1/lots/{lot_id}/attributes/{attribute_id}`.
pub async fn attribute(
    State(state): State<AppState>,
    ApiPath((lot_id, attribute_id)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<ReadQuery>,
) -> Result<Response, AppError> {
    id("attribute_id", &attribute_id)?;
    let (content, index, stale) = content_of(&state, &lot_id, query.stale()).await?;
    let found = content.attributes.iter().find(|a| a.attribute_id == attribute_id);
    let found =
        found.ok_or_else(|| AppError::rejected("attribute_not_found", format!("no attribute {attribute_id}")))?;
    Ok(label_read(Json(ledger::view::attribute(found)).into_response(), index, stale))
}

/// `DELETE /v1/lots/{lot_id}/attributes/{attribute_id}` (curator, admin or the seller).
pub async fn delete_attribute(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((lot_id, attribute_id)): ApiPath<(String, String)>,
) -> Result<Response, AppError> {
    id("lot_id", &lot_id)?;
    id("attribute_id", &attribute_id)?;
    let delete = pb::DeleteAttribute { lot_id, attribute_id };
    let (index, _) = run(&state, &caller.user_id, Body::DeleteAttribute(delete)).await?;
    Ok(label_write(StatusCode::NO_CONTENT, index))
}

// ---- comments ------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewComment {
    #[serde(default)]
    comment_id: Option<String>,
    content: String,
}

/// `POST /v1/lots/{lot_id}/comments` (any signed-in user). A client-chosen `comment_id`
/// makes a retry return the first answer.
pub async fn add_comment(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(lot_id): ApiPath<String>,
    ApiJson(body): ApiJson<NewComment>,
) -> Result<Response, AppError> {
    id("lot_id", &lot_id)?;
    let comment_id = chosen_or_new_id("comment_id", body.comment_id, "cm-")?;
    let add = pb::AddComment { lot_id, comment_id, content: body.content };
    let (index, res) = run(&state, &caller.user_id, Body::AddComment(add)).await?;
    let Res::Comment(view) = res else { return Err(unexpected("a comment")) };
    Ok(label_write((StatusCode::CREATED, Json(ledger::view::comment(&view))), index))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommentsQuery {
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    consistency: super::Consistency,
}

/// `GET /v1/lots/{lot_id}/comments?cursor=&limit=`: oldest first. The cursor names the
/// last comment of the previous page by its place, so deletions never shift a page.
pub async fn comments(
    State(state): State<AppState>,
    ApiPath(lot_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<CommentsQuery>,
) -> Result<Response, AppError> {
    let limit = query.limit.unwrap_or(COMMENTS_LIMIT_DEFAULT);
    if !(1..=COMMENTS_LIMIT_MAX).contains(&limit) {
        return Err(AppError::invalid(format!("limit must be 1 to {COMMENTS_LIMIT_MAX}")));
    }
    let after = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| AppError::invalid("cursor is not one this API gave"))?),
    };
    let stale = query.consistency == super::Consistency::Stale;
    let (content, index, stale) = content_of(&state, &lot_id, stale).await?;
    let mut rest = content.comments.iter().filter(|c| after.is_none_or(|a| c.seq > a));
    let page: Vec<&pb::CommentView> = rest.by_ref().take(limit).collect();
    let next_cursor = match (page.last(), rest.next()) {
        (Some(last), Some(_)) => Value::String(last.seq.to_string()),
        _ => Value::Null,
    };
    let comments: Vec<Value> = page.into_iter().map(ledger::view::comment).collect();
    let body = json!({"comments": comments, "next_cursor": next_cursor});
    Ok(label_read(Json(body).into_response(), index, stale))
}

/// `DELETE /v1/lots/{lot_id}/comments/{comment_id}` (the author, a curator or an admin).
pub async fn delete_comment(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((lot_id, comment_id)): ApiPath<(String, String)>,
) -> Result<Response, AppError> {
    id("lot_id", &lot_id)?;
    id("comment_id", &comment_id)?;
    let delete = pb::DeleteComment { lot_id, comment_id };
    let (index, _) = run(&state, &caller.user_id, Body::DeleteComment(delete)).await?;
    Ok(label_write(StatusCode::NO_CONTENT, index))
}

// ---- images --------------------------------------------------------------------------------

fn image_error(e: ImageError) -> AppError {
    match e {
        ImageError::Unsupported(m) => AppError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, code::UNSUPPORTED_IMAGE, m),
        ImageError::TooLarge(m) => AppError::new(StatusCode::PAYLOAD_TOO_LARGE, code::IMAGE_TOO_LARGE, m),
    }
}

/// An upload past 5 MiB: API.md's 413 for a body too large, with the gateway's code for it.
fn too_many_bytes() -> AppError {
    AppError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        code::BODY_TOO_LARGE,
        format!("an image is at most {} bytes", ledger::limits::IMAGE_BYTES_MAX),
    )
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> AppError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_many_bytes();
    }
    AppError::invalid(format!("multipart body: {}", e.body_text()))
}

/// The bytes of field `image`, refused past the size bound as they arrive.
async fn image_field(multipart: &mut Multipart) -> Result<bytes::Bytes, AppError> {
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        if field.name() != Some("image") {
            continue;
        }
        let mut bytes = bytes::BytesMut::new();
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            if (bytes.len() + chunk.len()) as u64 > ledger::limits::IMAGE_BYTES_MAX {
                return Err(too_many_bytes());
            }
            bytes.extend_from_slice(&chunk);
        }
        return Ok(bytes.freeze());
    }
    Err(AppError::invalid("the form has no field named image"))
}

/// `POST /v1/lots/{lot_id}/images` (curator, admin or the lot's seller), multipart with the
/// file in field `image`. The bytes are judged, stored, and only then proposed.
pub async fn add_image(
    state: State<AppState>,
    caller: Caller,
    lot_id: ApiPath<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let mut multipart = match multipart {
        Ok(multipart) => multipart,
        Err(e) => {
            let e = AppError::invalid(format!("send the image as multipart/form-data: {}", e.body_text()));
            return closing(e);
        }
    };
    match judge_store_propose(state, caller, lot_id, &mut multipart).await {
        Ok(response) => response,
        Err(e) => {
            // A refusal may come before the body is read (a stranger, no such lot). Answering
            // then and closing with the body unread makes the kernel reset the connection, and
            // a client still sending its body sees a broken pipe instead of our answer. So the
            // rest is read first (the route's body limit bounds it), as a lingering close does.
            drain(&mut multipart).await;
            closing(e)
        }
    }
}

/// The refusal, saying the connection closes: after a body that was too large to read to its
/// end the server does close it, and the client must not send its next request down it.
fn closing(e: AppError) -> Response {
    let mut response = e.into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Reads and drops what is left of the form, stopping at the first error (the body limit).
async fn drain(multipart: &mut Multipart) {
    while let Ok(Some(mut field)) = multipart.next_field().await {
        while let Ok(Some(_)) = field.chunk().await {}
    }
}

async fn judge_store_propose(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(lot_id): ApiPath<String>,
    multipart: &mut Multipart,
) -> Result<Response, AppError> {
    id("lot_id", &lot_id)?;
    // Ownership first (the ledger checks again), so a stranger cannot fill the store.
    let lot = state.client.read_lot(&lot_id, false, false).await?;
    let lot = lot.lot.ok_or_else(|| AppError::rejected("lot_not_found", format!("no lot {lot_id}")))?;
    if lot.seller_id != caller.user_id && !caller.is_at_least(Role::Curator) {
        return Err(AppError::forbidden("only the lot's seller, curators and admins add images"));
    }
    let bytes = image_field(multipart).await?;
    let for_inspection = bytes.clone();
    let permit = state.images.decoding.acquire().await.map_err(|e| AppError::internal(e.to_string()))?;
    let inspected = tokio::task::spawn_blocking(move || images::inspect(&for_inspection))
        .await
        .map_err(|e| AppError::internal(e.to_string()))?
        .map_err(image_error)?;
    drop(permit);
    state.images.put(&inspected, bytes.clone()).await.map_err(|e| AppError::unavailable(e.to_string()))?;
    let add = pb::AddImage {
        lot_id,
        image_id: new_id("img-"),
        content_hash: inspected.hash,
        content_type: inspected.content_type.to_owned(),
        bytes: bytes.len() as u64,
        width: inspected.width,
        height: inspected.height,
    };
    let (index, res) = run(&state, &caller.user_id, Body::AddImage(add)).await?;
    let Res::Image(view) = res else { return Err(unexpected("an image")) };
    Ok(label_write((StatusCode::CREATED, Json(ledger::view::image(&view))), index))
}

/// `GET /v1/lots/{lot_id}/images`: the gallery by position.
pub async fn images(
    State(state): State<AppState>,
    ApiPath(lot_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ReadQuery>,
) -> Result<Response, AppError> {
    let (content, index, stale) = content_of(&state, &lot_id, query.stale()).await?;
    let view = pb::ImagesView { lot_id, images: content.images };
    Ok(label_read(Json(ledger::view::images(&view)).into_response(), index, stale))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageOrder {
    image_ids: Vec<String>,
}

/// `POST /v1/lots/{lot_id}/images/order` (extension; curator, admin or the seller): the
/// gallery in a new order, naming each of its images once.
pub async fn reorder_images(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(lot_id): ApiPath<String>,
    ApiJson(body): ApiJson<ImageOrder>,
) -> Result<Response, AppError> {
    id("lot_id", &lot_id)?;
    let reorder = pb::ReorderImages { lot_id, image_ids: body.image_ids };
    let (index, res) = run(&state, &caller.user_id, Body::ReorderImages(reorder)).await?;
    let Res::Images(view) = res else { return Err(unexpected("images")) };
    Ok(label_write(Json(ledger::view::images(&view)), index))
}

/// `DELETE /v1/lots/{lot_id}/images/{image_id}` (curator, admin or the seller). The bytes
/// stay until the sweeper finds no committed image names them.
pub async fn delete_image(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((lot_id, image_id)): ApiPath<(String, String)>,
) -> Result<Response, AppError> {
    id("lot_id", &lot_id)?;
    id("image_id", &image_id)?;
    let delete = pb::DeleteImage { lot_id, image_id };
    let (index, _) = run(&state, &caller.user_id, Body::DeleteImage(delete)).await?;
    Ok(label_write(StatusCode::NO_CONTENT, index))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageQuery {
    #[serde(default)]
    size: Option<String>,
}

/// Whether `If-None-Match` names this ETag (or `*`), compared weakly as RFC 9110 says for
/// this header (`W/"x"` matches `"x"`).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == etag)
}

/// `GET /v1/images/{image_id}[?size=thumb]`: the bytes of a committed image, with a strong
/// ETag (its content hash) and long-lived cache headers; 304 on a matching `If-None-Match`.
pub async fn bytes(
    State(state): State<AppState>,
    ApiPath(image_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ImageQuery>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    id("image_id", &image_id)?;
    let size = match query.size.as_deref() {
        None | Some("full") => Size::Full,
        Some("thumb") => Size::Thumb,
        Some(other) => return Err(AppError::invalid(format!("size is thumb or full, not {other:?}"))),
    };
    let request = node::pb::ReadImageRequest { image_id: image_id.clone(), content_hash: String::new(), stale: false };
    let answer = state.client.read_image(request).await?;
    let image = answer.image.ok_or_else(|| AppError::rejected("image_not_found", format!("no image {image_id}")))?;
    let (etag, content_type) = match size {
        Size::Full => (format!("\"{}\"", image.content_hash), image.content_type.clone()),
        Size::Thumb => (format!("\"{}-thumb\"", image.content_hash), "image/jpeg".to_owned()),
    };
    let etag_value = HeaderValue::from_str(&etag).map_err(|e| AppError::internal(e.to_string()))?;
    let cache = [(header::ETAG, etag_value), (header::CACHE_CONTROL, HeaderValue::from_static(IMAGE_CACHE))];
    if not_modified(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    let found = state.images.get(size, &image.content_hash).await.map_err(|e| AppError::unavailable(e.to_string()))?;
    let Some(found) = found else {
        return Err(AppError::internal(format!("the bytes of image {image_id} are missing from the image store")));
    };
    let content_type = HeaderValue::from_str(&content_type).map_err(|e| AppError::internal(e.to_string()))?;
    Ok((cache, [(header::CONTENT_TYPE, content_type)], HttpBody::from(found)).into_response())
}
