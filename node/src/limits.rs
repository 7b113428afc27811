//! Every bound the node enforces, in one place (names carry their unit).

/// Largest gRPC message either way (Raft batches, proposals, snapshot chunks).
pub const GRPC_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Encoded entry bytes in one AppendEntries call: a follower catching up on large entries gets
/// them in several calls (openraft's partial success), never one over `GRPC_MESSAGE_BYTES_MAX`.
/// A single larger entry still goes alone.
pub const APPEND_BYTES_MAX: usize = 8 * 1024 * 1024;
/// The log's cache of its newest entries (read by replication and apply instead of RocksDB):
/// at most this many entries and this many encoded bytes. Entries are held both decoded
/// (several times their encoded size) and encoded, and on a follower the encoding shares the
/// received gRPC buffer, whose whole frame stays alive with it, so the byte bound is set low: 1024 entries of 256 bids is seconds
/// of log at full speed, what a follower that keeps up and apply ever read back.
pub const RECENT_ENTRIES_MAX: usize = 1024;
pub const RECENT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Snapshot bytes per streamed chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest snapshot a node accepts over the wire.
pub const SNAPSHOT_BYTES_MAX: usize = 4 * 1024 * 1024 * 1024;
/// Least time allowed for a whole snapshot transfer.
pub const SNAPSHOT_TIMEOUT_SECS: u64 = 60;
/// TCP connect timeout to a peer or the leader.
pub const CONNECT_TIMEOUT_MS: u64 = 500;
/// Encoded command bytes in one `Propose` call: a request is one log entry, and the entry
/// must still fit in an AppendEntries message with room for its header.
pub const PROPOSAL_BYTES_MAX: usize = GRPC_MESSAGE_BYTES_MAX - 1024 * 1024;
/// Commands in one `Propose` call.
pub const PROPOSE_COMMANDS_MAX: usize = 4096;
/// Commands waiting for the proposer before callers are refused (`overloaded`).
pub const PROPOSER_QUEUE_COMMANDS_MAX: usize = 65_536;
/// Commands coalesced into one log entry.
pub const BATCH_COMMANDS_MAX: usize = 1024;
/// Encoded command bytes coalesced into one log entry (a single larger request is an entry
/// of its own): large entries make every fsync and append behind them wait.
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;
/// How long the proposer waits for more commands before sealing a batch.
pub const BATCH_LINGER_US: u64 = 200;
/// Log entries the proposer keeps in flight at once (pipelining).
pub const ENTRIES_IN_FLIGHT_MAX: usize = 64;
/// Feed items read per step of a subscription.
pub const FEED_READ_ITEMS_MAX: usize = 256;
/// Feed items buffered per subscriber before it waits for the client.
pub const FEED_BUFFER_ITEMS: usize = 1024;
/// How often the leader's timer looks for lots to close.
pub const CLOSE_TICK_MS: u64 = 100;
/// How often the leader checks whether it may turn exactly-once record expiry on.
pub const ACTIVATE_CHECK_MS: u64 = 200;
/// Lots closed per timer proposal.
pub const CLOSE_LOTS_PER_TICK_MAX: usize = 256;
/// Deadline for a forwarded or linearizable request.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;

/// Feed backfill (a node that caught up from a snapshot copies the older items from a peer):
/// how often a whole feed is checked, the retry backoff, and items written per batch.
pub const BACKFILL_CHECK_MS: u64 = 1_000;
pub const BACKFILL_RETRY_MIN_MS: u64 = 200;
pub const BACKFILL_RETRY_MAX_MS: u64 = 5_000;
pub const BACKFILL_BATCH_ITEMS: usize = 1_024;
/// Bytes of a state export per gRPC message, and state exports served at once per node
/// (each holds a copy of the ledger while it is encoded, then the encoding while it is sent).
pub const EXPORT_CHUNK_BYTES: usize = 1024 * 1024;
pub const EXPORTS_AT_ONCE: usize = 1;
/// How often a node with feed retention looks for items to drop (the feed's files wholly
/// below the new floor are removed at once).
pub const FEED_RETAIN_CHECK_MS: u64 = 1_000;
/// The default of `--leader-snapshot-defer`: a leader builds its own snapshot only once it is
/// this many snapshot intervals behind, since copying the ledger holds up applying and on the
/// leader every client's answer waits for apply. Followers build on schedule.
pub const LEADER_SNAPSHOT_DEFER_INTERVALS: u64 = 4;
/// A snapshot asked for but not yet built is asked for again after this long (openraft drops
/// a request that comes while a build runs).
pub const SNAPSHOT_ASK_AGAIN_MS: u64 = 1_000;
