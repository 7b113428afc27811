//! Lot content: the category tree, and each lot's further categories, attributes, comments
//! and image metadata (API.md "Lot content").
//!
//! Plain data and the rules on it. [`crate::state`] checks who acts and finds the lot, then
//! calls in here; every function checks its whole input before it changes anything.

use std::collections::{BTreeMap, BTreeSet};

use crate::checks::{check_id, check_text};
use crate::error::{Code, Rejection, reject};
use crate::limits;
use crate::pb;

/// A node of the category tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Category {
    pub category_id: String,
    pub name: String,
    /// Empty for a root.
    pub parent_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub attribute_id: String,
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comment {
    pub comment_id: String,
    pub author: String,
    pub content: String,
    pub created_at_ms: i64,
    /// Its place in the discussion; never reused within a lot.
    pub seq: u64,
    pub(crate) create_digest: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub image_id: String,
    /// Lowercase hex BLAKE3 of the bytes: the object store key.
    pub content_hash: String,
    pub content_type: String,
    pub bytes: u64,
    pub width: u32,
    pub height: u32,
}

/// What a lot carries besides its sale: further categories, facts, discussion, gallery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LotContent {
    pub categories: Vec<String>,
    pub attributes: Vec<Attribute>,
    /// The number the next attribute id gets (`a<n>`).
    pub next_attribute: u64,
    /// Oldest first.
    pub comments: Vec<Comment>,
    pub next_comment: u64,
    /// In gallery order.
    pub images: Vec<Image>,
}

/// The image types the gallery takes (judged from the bytes by the gateway).
pub const IMAGE_TYPES: [&str; 2] = ["image/png", "image/jpeg"];

// ---- the category tree ----------------------------------------------------------------------

/// What [`check_put`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    Create,
    /// A rename or a move of an existing category.
    Change,
    /// The category is already exactly this: a retry.
    Same,
}

/// Depth of `id` in the tree (a root is 1), following at most `limits::CATEGORY_DEPTH_MAX`
/// parents (the tree never holds a deeper one).
fn depth(tree: &BTreeMap<String, Category>, id: &str) -> usize {
    let mut depth = 0;
    let mut at = id;
    while let Some(c) = tree.get(at) {
        depth += 1;
        if c.parent_id.is_empty() || depth > limits::CATEGORY_DEPTH_MAX {
            break;
        }
        at = &c.parent_id;
    }
    depth
}

/// Ids of `id`'s direct children, in id order.
pub fn children<'a>(tree: &'a BTreeMap<String, Category>, id: &'a str) -> impl Iterator<Item = &'a str> {
    tree.values().filter(move |c| c.parent_id == id).map(|c| c.category_id.as_str())
}

/// `id` and every category under it.
pub fn subtree(tree: &BTreeMap<String, Category>, id: &str) -> BTreeSet<String> {
    subtree_of(tree.values().map(|c| (c.category_id.as_str(), c.parent_id.as_str())), id)
}

/// `root` and everything under it, given the tree as `(id, parent_id)` pairs: the ledger's
/// and any read model's copy of the tree. A root that is no node is just itself, and a
/// damaged tree with a loop still ends.
pub fn subtree_of<'a>(edges: impl IntoIterator<Item = (&'a str, &'a str)>, root: &str) -> BTreeSet<String> {
    let mut by_parent: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, parent) in edges {
        by_parent.entry(parent).or_default().push(id);
    }
    let mut out = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(at) = todo.pop() {
        if out.insert(at.to_owned()) {
            todo.extend(by_parent.get(at).into_iter().flatten().copied());
        }
    }
    out
}

/// Checks a restored tree: every parent known, no category deeper than the bound (which
/// also rules out cycles: a loop would be infinitely deep).
pub fn check_tree(tree: &BTreeMap<String, Category>) -> Result<(), String> {
    for c in tree.values() {
        let mut at = c;
        // A category at the deepest allowed level is that many levels minus one below a root.
        for _ in 1..limits::CATEGORY_DEPTH_MAX {
            if at.parent_id.is_empty() {
                break;
            }
            at = tree.get(&at.parent_id).ok_or_else(|| format!("category {} has an unknown parent", at.category_id))?;
        }
        if !at.parent_id.is_empty() {
            return Err(format!("category {} is too deep or in a cycle", c.category_id));
        }
    }
    Ok(())
}

/// How many levels hang from `id`, itself included (a leaf is 1).
fn height(tree: &BTreeMap<String, Category>, id: &str) -> usize {
    let ids = subtree(tree, id);
    ids.iter().map(|d| depth(tree, d)).max().map_or(1, |deepest| deepest + 1 - depth(tree, id))
}

/// Checks a `PutCategory` against the tree: ids, name, a known parent, no cycle, the depth
/// bound (for a move, of the whole subtree that moves) and the size bound.
pub fn check_put(tree: &BTreeMap<String, Category>, c: &pb::PutCategory) -> Result<Put, Rejection> {
    check_id("category_id", &c.category_id)?;
    check_text("name", &c.name, 1, limits::NAME_BYTES_MAX)?;
    if !c.parent_id.is_empty() {
        check_id("parent_id", &c.parent_id)?;
        if !tree.contains_key(&c.parent_id) {
            return reject(Code::CategoryNotFound, format!("no category {} to be the parent", c.parent_id));
        }
    }
    let parent_depth = if c.parent_id.is_empty() { 0 } else { depth(tree, &c.parent_id) };
    let Some(existing) = tree.get(&c.category_id) else {
        if tree.len() >= limits::CATEGORIES_MAX {
            return reject(
                Code::ContentLimitReached,
                format!("there are {} categories already", limits::CATEGORIES_MAX),
            );
        }
        if parent_depth + 1 > limits::CATEGORY_DEPTH_MAX {
            return reject(
                Code::CategoryTooDeep,
                format!("categories nest at most {} deep", limits::CATEGORY_DEPTH_MAX),
            );
        }
        return Ok(Put::Create);
    };
    if existing.name == c.name && existing.parent_id == c.parent_id {
        return Ok(Put::Same);
    }
    if existing.parent_id != c.parent_id {
        // A move under itself or under one of its descendants would close a loop.
        if !c.parent_id.is_empty() && subtree(tree, &c.category_id).contains(&c.parent_id) {
            return reject(
                Code::CategoryCycle,
                format!("category {} cannot move under {}: that is inside it", c.category_id, c.parent_id),
            );
        }
        if parent_depth + height(tree, &c.category_id) > limits::CATEGORY_DEPTH_MAX {
            return reject(
                Code::CategoryTooDeep,
                format!("categories nest at most {} deep", limits::CATEGORY_DEPTH_MAX),
            );
        }
    }
    Ok(Put::Change)
}

pub fn category_view(c: &Category) -> pb::CategoryView {
    pb::CategoryView {
        category_id: c.category_id.clone(),
        name: c.name.clone(),
        parent_id: c.parent_id.clone(),
        lot_count: 0,
        children: Vec::new(),
    }
}

/// Checks a lot's new further categories: known ids, each once, at most
/// `limits::LOT_CATEGORIES_MAX`.
pub fn check_lot_categories(tree: &BTreeMap<String, Category>, ids: &[String]) -> Result<(), Rejection> {
    if ids.len() > limits::LOT_CATEGORIES_MAX {
        return reject(
            Code::ContentLimitReached,
            format!("a lot is listed under at most {} further categories", limits::LOT_CATEGORIES_MAX),
        );
    }
    let mut seen = BTreeSet::new();
    for id in ids {
        check_id("category_ids", id)?;
        if !tree.contains_key(id) {
            return reject(Code::CategoryNotFound, format!("no category {id}"));
        }
        if !seen.insert(id) {
            return reject(Code::InvalidInput, format!("category {id} is listed twice"));
        }
    }
    Ok(())
}

// ---- one lot's content ------------------------------------------------------------------------

/// Attribute keys are what `attr.<key>=` names in a catalog query: 1 to 64 bytes of
/// `[a-z0-9_.-]`, so they need no escaping in a URL.
pub fn check_attribute_key(key: &str) -> Result<(), Rejection> {
    let ok = !key.is_empty()
        && key.len() <= limits::ATTRIBUTE_KEY_BYTES_MAX
        && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        reject(
            Code::InvalidInput,
            format!("an attribute key is 1 to {} characters of a-z 0-9 _ . -", limits::ATTRIBUTE_KEY_BYTES_MAX),
        )
    }
}

/// Comments are counted in characters (API.md: 1 to 2,000), not bytes.
pub fn check_comment_text(content: &str) -> Result<(), Rejection> {
    let chars = content.chars().count();
    if chars == 0 || chars > limits::COMMENT_CHARS_MAX || content.trim().is_empty() {
        return reject(
            Code::InvalidInput,
            format!("a comment is 1 to {} characters, not only spaces", limits::COMMENT_CHARS_MAX),
        );
    }
    Ok(())
}

/// Checks an image's metadata: a known type, a content hash, bytes and sides within bounds.
pub fn check_image(c: &pb::AddImage) -> Result<(), Rejection> {
    check_id("image_id", &c.image_id)?;
    if !IMAGE_TYPES.contains(&c.content_type.as_str()) {
        return reject(Code::InvalidImage, "an image is image/png or image/jpeg");
    }
    let hex =
        c.content_hash.len() == 64 && c.content_hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return reject(Code::InvalidImage, "content_hash is 64 lowercase hex digits (BLAKE3)");
    }
    if c.bytes == 0 || c.bytes > limits::IMAGE_BYTES_MAX {
        return reject(Code::InvalidImage, format!("an image is 1 to {} bytes", limits::IMAGE_BYTES_MAX));
    }
    let side = 1..=limits::IMAGE_SIDE_MAX;
    if !side.contains(&c.width) || !side.contains(&c.height) {
        return reject(Code::InvalidImage, format!("an image is 1 to {} pixels a side", limits::IMAGE_SIDE_MAX));
    }
    Ok(())
}

impl LotContent {
    /// Adds attributes all or none: keys valid and new to the lot, values bounded.
    pub fn add_attributes(&mut self, inputs: &[pb::AttributeInput]) -> Result<Vec<Attribute>, Rejection> {
        if inputs.is_empty() {
            return reject(Code::InvalidInput, "attributes must not be empty");
        }
        if self.attributes.len() + inputs.len() > limits::LOT_ATTRIBUTES_MAX {
            return reject(
                Code::ContentLimitReached,
                format!("a lot has at most {} attributes", limits::LOT_ATTRIBUTES_MAX),
            );
        }
        let mut keys: BTreeSet<&str> = self.attributes.iter().map(|a| a.key.as_str()).collect();
        for a in inputs {
            check_attribute_key(&a.key)?;
            check_text("value", &a.value, 1, limits::NAME_BYTES_MAX)?;
            if !keys.insert(&a.key) {
                return reject(Code::AttributeExists, format!("the lot already has attribute {}", a.key));
            }
        }
        let added: Vec<Attribute> = inputs
            .iter()
            .enumerate()
            .map(|(i, a)| Attribute {
                attribute_id: format!("a{}", self.next_attribute + i as u64),
                key: a.key.clone(),
                value: a.value.clone(),
            })
            .collect();
        self.next_attribute += inputs.len() as u64;
        self.attributes.extend(added.iter().cloned());
        Ok(added)
    }

    pub fn delete_attribute(&mut self, attribute_id: &str) -> Result<Attribute, Rejection> {
        let Some(at) = self.attributes.iter().position(|a| a.attribute_id == attribute_id) else {
            return reject(Code::AttributeNotFound, format!("no attribute {attribute_id}"));
        };
        Ok(self.attributes.remove(at))
    }

    /// The comment with this id, if the lot has it.
    pub fn comment(&self, comment_id: &str) -> Option<&Comment> {
        self.comments.iter().find(|c| c.comment_id == comment_id)
    }

    /// Adds a comment; `Ok(None)` when this exact comment is already there (a retry).
    pub fn add_comment(
        &mut self,
        c: &pb::AddComment,
        author: &str,
        at_ms: i64,
        digest: [u8; 32],
    ) -> Result<Option<&Comment>, Rejection> {
        check_id("comment_id", &c.comment_id)?;
        check_comment_text(&c.content)?;
        if let Some(existing) = self.comment(&c.comment_id) {
            return if existing.create_digest == digest && existing.author == author {
                Ok(None)
            } else {
                reject(Code::CommentExists, format!("comment {} already exists", c.comment_id))
            };
        }
        if self.comments.len() >= limits::LOT_COMMENTS_MAX {
            return reject(
                Code::ContentLimitReached,
                format!("a lot has at most {} comments", limits::LOT_COMMENTS_MAX),
            );
        }
        self.comments.push(Comment {
            comment_id: c.comment_id.clone(),
            author: author.to_owned(),
            content: c.content.clone(),
            created_at_ms: at_ms,
            seq: self.next_comment,
            create_digest: digest,
        });
        self.next_comment += 1;
        Ok(self.comments.last())
    }

    pub fn delete_comment(&mut self, comment_id: &str) -> Result<Comment, Rejection> {
        let Some(at) = self.comments.iter().position(|c| c.comment_id == comment_id) else {
            return reject(Code::CommentNotFound, format!("no comment {comment_id}"));
        };
        Ok(self.comments.remove(at))
    }

    pub fn image(&self, image_id: &str) -> Option<(usize, &Image)> {
        self.images.iter().enumerate().find(|(_, i)| i.image_id == image_id)
    }

    /// Appends an image to the gallery (its metadata checked by [`check_image`] first) and
    /// returns its view.
    pub fn add_image(&mut self, lot_id: &str, c: &pb::AddImage) -> Result<pb::ImageView, Rejection> {
        if self.images.len() >= limits::LOT_IMAGES_MAX {
            return reject(Code::ContentLimitReached, format!("a lot has at most {} images", limits::LOT_IMAGES_MAX));
        }
        let image = Image {
            image_id: c.image_id.clone(),
            content_hash: c.content_hash.clone(),
            content_type: c.content_type.clone(),
            bytes: c.bytes,
            width: c.width,
            height: c.height,
        };
        let view = image_view(lot_id, self.images.len(), &image);
        self.images.push(image);
        Ok(view)
    }

    pub fn delete_image(&mut self, image_id: &str) -> Result<Image, Rejection> {
        let Some((at, _)) = self.image(image_id) else {
            return reject(Code::ImageNotFound, format!("no image {image_id} on this lot"));
        };
        Ok(self.images.remove(at))
    }

    /// Puts the gallery in the given order, which must name each of its images exactly once.
    pub fn reorder_images(&mut self, image_ids: &[String]) -> Result<(), Rejection> {
        let current: BTreeSet<&str> = self.images.iter().map(|i| i.image_id.as_str()).collect();
        let given: BTreeSet<&str> = image_ids.iter().map(String::as_str).collect();
        if given.len() != image_ids.len() || given != current {
            return reject(Code::InvalidInput, "image_ids must list each of the lot's images exactly once");
        }
        let mut images = std::mem::take(&mut self.images);
        for id in image_ids {
            if let Some(at) = images.iter().position(|i| &i.image_id == id) {
                self.images.push(images.swap_remove(at));
            }
        }
        Ok(())
    }

    // ---- views ------------------------------------------------------------------------------

    pub fn attributes_view(&self, lot_id: &str, attributes: &[Attribute]) -> pb::AttributesView {
        pb::AttributesView { lot_id: lot_id.to_owned(), attributes: attributes.iter().map(attribute_view).collect() }
    }

    pub fn images_view(&self, lot_id: &str) -> pb::ImagesView {
        pb::ImagesView {
            lot_id: lot_id.to_owned(),
            images: self.images.iter().enumerate().map(|(at, i)| image_view(lot_id, at, i)).collect(),
        }
    }

    pub fn view(&self, lot_id: &str) -> pb::LotContentView {
        pb::LotContentView {
            lot_id: lot_id.to_owned(),
            categories: self.categories.clone(),
            attributes: self.attributes.iter().map(attribute_view).collect(),
            comments: self.comments.iter().map(|c| comment_view(lot_id, c)).collect(),
            images: self.images_view(lot_id).images,
        }
    }
}

pub fn attribute_view(a: &Attribute) -> pb::AttributeView {
    pb::AttributeView { attribute_id: a.attribute_id.clone(), key: a.key.clone(), value: a.value.clone() }
}

pub fn comment_view(lot_id: &str, c: &Comment) -> pb::CommentView {
    pb::CommentView {
        comment_id: c.comment_id.clone(),
        lot_id: lot_id.to_owned(),
        author: c.author.clone(),
        content: c.content.clone(),
        created_at_ms: c.created_at_ms,
        seq: c.seq,
    }
}

pub fn image_view(lot_id: &str, position: usize, i: &Image) -> pb::ImageView {
    pb::ImageView {
        image_id: i.image_id.clone(),
        lot_id: lot_id.to_owned(),
        content_hash: i.content_hash.clone(),
        content_type: i.content_type.clone(),
        bytes: i.bytes,
        width: i.width,
        height: i.height,
        position: u32::try_from(position).unwrap_or(u32::MAX),
    }
}

// ---- snapshots --------------------------------------------------------------------------------

impl LotContent {
    /// The persisted form; comments are left out when `with_comments` is false (nodes store
    /// them one record each, so a new comment does not rewrite the others).
    pub fn to_state(&self, with_comments: bool) -> pb::LotContentState {
        pb::LotContentState {
            categories: self.categories.clone(),
            attributes: self.attributes.iter().map(attribute_view).collect(),
            next_attribute: self.next_attribute,
            comments: if with_comments { self.comments.iter().map(comment_state).collect() } else { Vec::new() },
            images: self.images_view("").images,
            next_comment: self.next_comment,
        }
    }

    /// Rebuilds content from its persisted form, checking it as new input would be.
    pub fn from_state(s: pb::LotContentState) -> Result<LotContent, String> {
        let attributes = s
            .attributes
            .into_iter()
            .map(|a| {
                check_attribute_key(&a.key).map_err(|e| e.message)?;
                Ok(Attribute { attribute_id: a.attribute_id, key: a.key, value: a.value })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut comments = s
            .comments
            .into_iter()
            .map(|c| {
                let create_digest: [u8; 32] = c
                    .create_digest
                    .as_slice()
                    .try_into()
                    .map_err(|_| format!("comment {} has no digest", c.comment_id))?;
                if c.seq >= s.next_comment {
                    return Err(format!("comment {} is numbered past the lot's counter", c.comment_id));
                }
                Ok(Comment {
                    comment_id: c.comment_id,
                    author: c.author,
                    content: c.content,
                    created_at_ms: c.created_at_ms,
                    seq: c.seq,
                    create_digest,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        comments.sort_by_key(|c| c.seq);
        let images = s
            .images
            .into_iter()
            .map(|i| Image {
                image_id: i.image_id,
                content_hash: i.content_hash,
                content_type: i.content_type,
                bytes: i.bytes,
                width: i.width,
                height: i.height,
            })
            .collect::<Vec<_>>();
        // What commands guarantee, checked again: unique keys and ids, numbers below the
        // counters, images as `add_image` takes them, categories each once.
        let mut keys = BTreeSet::new();
        for a in &attributes {
            let number = a.attribute_id.strip_prefix('a').and_then(|n| n.parse::<u64>().ok());
            if !keys.insert(a.key.as_str()) || number.is_none_or(|n| n >= s.next_attribute) {
                return Err(format!("attribute {} repeats a key or is misnumbered", a.attribute_id));
            }
        }
        let ids: BTreeSet<&str> = attributes.iter().map(|a| a.attribute_id.as_str()).collect();
        let comment_ids: BTreeSet<&str> = comments.iter().map(|c| c.comment_id.as_str()).collect();
        let seqs: BTreeSet<u64> = comments.iter().map(|c| c.seq).collect();
        let categories: BTreeSet<&String> = s.categories.iter().collect();
        if ids.len() != attributes.len()
            || comment_ids.len() != comments.len()
            || seqs.len() != comments.len()
            || categories.len() != s.categories.len()
        {
            return Err("content repeats an id, a comment number or a category".into());
        }
        for i in &images {
            let add = pb::AddImage {
                lot_id: String::new(),
                image_id: i.image_id.clone(),
                content_hash: i.content_hash.clone(),
                content_type: i.content_type.clone(),
                bytes: i.bytes,
                width: i.width,
                height: i.height,
            };
            check_image(&add).map_err(|e| format!("image {}: {}", i.image_id, e.message))?;
        }
        let too_many = attributes.len() > limits::LOT_ATTRIBUTES_MAX
            || comments.len() > limits::LOT_COMMENTS_MAX
            || images.len() > limits::LOT_IMAGES_MAX
            || s.categories.len() > limits::LOT_CATEGORIES_MAX;
        if too_many {
            return Err("content past its limits".into());
        }
        Ok(LotContent {
            categories: s.categories,
            attributes,
            next_attribute: s.next_attribute,
            comments,
            next_comment: s.next_comment,
            images,
        })
    }
}

pub fn comment_state(c: &Comment) -> pb::CommentState {
    pb::CommentState {
        comment_id: c.comment_id.clone(),
        author: c.author.clone(),
        content: c.content.clone(),
        created_at_ms: c.created_at_ms,
        create_digest: c.create_digest.to_vec(),
        seq: c.seq,
    }
}
