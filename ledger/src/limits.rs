//! The bound on every input the ledger accepts. Anything larger is rejected with
//! `invalid_input` or `invalid_amount` before it can touch the state.

/// Longest id (user, lot, auction, bid), in bytes.
pub const ID_BYTES_MAX: usize = 64;
/// Longest username, in bytes.
pub const USERNAME_BYTES_MAX: usize = 64;
/// Longest title, artist or category, in bytes.
pub const NAME_BYTES_MAX: usize = 256;
/// Longest lot description, in bytes.
pub const DESCRIPTION_BYTES_MAX: usize = 16 * 1024;
/// Longest stored password hash, in bytes (Argon2 PHC strings are ~100).
pub const PASSWORD_HASH_BYTES_MAX: usize = 512;
/// Largest amount in minor units (10^15: ten trillion dollars). Keeps every sum of an amount
/// and a ladder step far from `i64::MAX`.
pub const AMOUNT_MAX: i64 = 1_000_000_000_000_000;
/// Most tiers in one increment ladder.
pub const LADDER_TIERS_MAX: usize = 32;
/// Most lines in one lot's bid history; bids past it are refused (`bid_limit_reached`).
pub const LOT_HISTORY_MAX: usize = 1_000_000;
/// Most lots in one auction.
pub const AUCTION_LOTS_MAX: usize = 10_000;
/// Longest soft-close window and lot interval, in seconds (one day).
pub const WINDOW_SECS_MAX: u32 = 86_400;
/// Latest time accepted anywhere, in Unix milliseconds (year 9999).
pub const TIME_MS_MAX: i64 = 253_402_300_799_000;
/// Most categories in the tree.
pub const CATEGORIES_MAX: usize = 10_000;
/// Deepest category nesting (a root is at depth 1).
pub const CATEGORY_DEPTH_MAX: usize = 8;
/// Most further categories one lot is listed under.
pub const LOT_CATEGORIES_MAX: usize = 16;
/// Longest attribute key, in bytes.
pub const ATTRIBUTE_KEY_BYTES_MAX: usize = 64;
/// Most attributes on one lot.
pub const LOT_ATTRIBUTES_MAX: usize = 64;
/// Longest comment, in characters (API.md).
pub const COMMENT_CHARS_MAX: usize = 2_000;
/// Most comments on one lot.
pub const LOT_COMMENTS_MAX: usize = 5_000;
/// Most images in one lot's gallery.
pub const LOT_IMAGES_MAX: usize = 32;
/// Largest image, in bytes (API.md: 5 MiB).
pub const IMAGE_BYTES_MAX: u64 = 5 * 1024 * 1024;
/// Longest image side, in pixels.
pub const IMAGE_SIDE_MAX: u32 = 16_384;
/// How long, in ledger time, an exactly-once record outlives what it can matter for: the
/// lot's final status (accepted bids) or the refusal itself (refused bids). See `once`.
/// Part of the replicated rules: every replica must run with the same value.
pub const EXACTLY_ONCE_HORIZON_MS: i64 = 7 * 24 * 3_600_000;
