//! A linearizability checker for one lot's history (Wing & Gong's search with Lowe's
//! just-in-time linearization and memoisation, as in Porcupine), with the `ledger` crate's own
//! proxy-bidding rules as the sequential model.
//!
//! Lots are independent objects (P-compositionality), so each lot's operations are checked on
//! their own. An operation whose result is unknown (a timeout: `info`) may take effect at any
//! point after its invocation or never. The search has a step budget and answers `Unknown`
//! rather than running for ever.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use ledger::bidding::Book;
use ledger::ladder::Ladder;

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// Place a maximum bid.
    Bid { bidder: String, bid_id: String, max: i64 },
    /// Read the lot's visible state.
    Read,
}

/// What the client was told.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// A bid was accepted: whether the bidder leads, and the visible price after it.
    Bid { leading: bool, price: i64 },
    /// A bid was refused by the rules, with its code.
    Rejected { code: String },
    /// A read: the visible price, the leader (empty when nobody bids yet) and whether the lot
    /// has closed.
    Read { price: i64, leader: String, closed: bool },
    /// No answer (timeout, crash): the operation may or may not have taken effect.
    Unknown,
}

/// One operation of the history: invoked at `call`, answered at `ret` (`None` when the
/// answer never came). Times are monotonic and comparable across clients.
#[derive(Clone, Debug)]
pub struct Operation {
    pub input: Input,
    pub output: Output,
    pub call: u64,
    pub ret: Option<u64>,
}

/// The checker's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search budget ran out.
    Unknown,
}

/// The sequential model: one lot's bidding book and its ladder.
///
/// The end of bidding is not a client operation (it comes with ledger time and the leader's
/// closing timer), so the model lets it happen at any point, once: after it every bid is
/// refused `lot_closed`. A bid accepted after a client saw bidding over (a `lot_closed`
/// refusal or a closed status) is therefore a violation.
#[derive(Clone)]
pub struct Model {
    pub ladder: Ladder,
    pub initial: Book,
}

/// The model's state: the book and whether the lot has closed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub book: Book,
    pub closed: bool,
}

impl Model {
    /// Applies `input` to `state`; `Some(next)` when the outcome matches `output`.
    fn step(&self, state: &State, input: &Input, output: &Output) -> Option<State> {
        let closed = || State { book: state.book.clone(), closed: true };
        match input {
            Input::Read => match output {
                Output::Read { price, leader, closed: seen_closed } => {
                    let current = state.book.leader.as_ref().map_or("", |l| &*l.bidder);
                    let same = state.book.price == *price && current == leader;
                    // A read may still show InAuction after bidding ended (`lot_closed`): the
                    // leader's timer closes the lot a moment later. A closed status does imply
                    // that bidding is over.
                    match (state.closed, *seen_closed) {
                        (false, true) => same.then(closed),
                        _ => same.then(|| state.clone()),
                    }
                }
                Output::Unknown => Some(state.clone()),
                _ => None,
            },
            Input::Bid { .. } if state.closed => match output {
                Output::Rejected { code } if code == "lot_closed" => Some(state.clone()),
                Output::Unknown => Some(state.clone()),
                _ => None,
            },
            // The close happened just before this bid.
            Input::Bid { .. } if matches!(output, Output::Rejected { code } if code == "lot_closed") => Some(closed()),
            Input::Bid { bidder, bid_id, max } => {
                let mut next = state.book.clone();
                let result = next.place(&self.ladder, &bidder.as_str().into(), &bid_id.as_str().into(), *max);
                let next = State { book: next, closed: false };
                match (result, output) {
                    (Ok(_), Output::Unknown) => Some(next),
                    (Err(_), Output::Unknown) => Some(state.clone()),
                    (Ok(decision), Output::Bid { leading, price }) => {
                        let same = decision.leading() == *leading && decision.price() == *price;
                        same.then_some(next)
                    }
                    (Err(rejection), Output::Rejected { code }) => {
                        (rejection.code.as_str() == code).then(|| state.clone())
                    }
                    _ => None,
                }
            }
        }
    }
}

/// Answers that show a lower price than one already returned before they were asked: a lot's
/// visible price never falls (this workload never offers a lot again), so each is a
/// linearizability violation on its own. Unlike the search this needs no budget: one sort and
/// one pass, so a long history with a violation is never left `Unknown`. Each item names the
/// earlier and the later answer.
pub fn price_regressions(ops: &[Operation]) -> Vec<String> {
    let price = |op: &Operation| match op.output {
        Output::Bid { price, .. } | Output::Read { price, .. } => Some(price),
        _ => None,
    };
    // (return time, price, op) of every answered operation with a price, by return time.
    let mut answered: Vec<(u64, i64, usize)> =
        ops.iter().enumerate().filter_map(|(i, op)| Some((op.ret?, price(op)?, i))).collect();
    answered.sort_unstable();
    // The highest price returned up to each position, and by which operation.
    let mut highest: Vec<(i64, usize)> = Vec::with_capacity(answered.len());
    for &(_, p, i) in &answered {
        let best = highest.last().copied().filter(|&(b, _)| b >= p).unwrap_or((p, i));
        highest.push(best);
    }
    let mut found = Vec::new();
    for op in ops {
        let (Some(p), Some(_)) = (price(op), op.ret) else { continue };
        // Operations that returned strictly before this one was invoked.
        let before = answered.partition_point(|&(ret, _, _)| ret < op.call);
        if let Some(&(best, by)) = before.checked_sub(1).and_then(|k| highest.get(k))
            && p < best
        {
            let earlier = &ops[by];
            found.push(format!(
                "{:?} returned price {p} (called at {} ns) after {:?} had returned price {best} (at {} ns)",
                op.input,
                op.call,
                earlier.input,
                earlier.ret.unwrap_or_default(),
            ));
        }
    }
    found
}

/// A call or return event in time order; `op` indexes the operations.
#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    is_call: bool,
}

/// Checks one lot's history against the model within `budget` search steps.
pub fn check(model: &Model, ops: &[Operation], budget: u64) -> Verdict {
    // Events ordered by time; a call sorts before a return at the same instant (they overlap),
    // and unanswered operations return after everything else.
    let mut events: Vec<(u64, u8, Event)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, 0, Event { op: i, is_call: true }));
        events.push((op.ret.unwrap_or(u64::MAX), 1, Event { op: i, is_call: false }));
    }
    events.sort_by_key(|&(t, kind, e)| (t, kind, e.op));
    let events: Vec<Event> = events.into_iter().map(|(_, _, e)| e).collect();
    search(model, ops, &events, budget)
}

fn splitmix64(i: u64) -> u64 {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn state_hash(state: &State) -> u64 {
    let mut h = DefaultHasher::new();
    state.hash(&mut h);
    h.finish()
}

/// Lowe's search over a doubly linked list of events.
fn search(model: &Model, ops: &[Operation], events: &[Event], budget: u64) -> Verdict {
    let n = events.len();
    // Linked list over event positions; n is the end sentinel.
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    let mut head = 0usize;
    let mut ret_pos = vec![0usize; ops.len()];
    for (pos, e) in events.iter().enumerate() {
        if !e.is_call {
            ret_pos[e.op] = pos;
        }
    }
    let unknown = |op: usize| ops[op].ret.is_none() || ops[op].output == Output::Unknown;
    // Memo of (linearized set, state) as 128 bits: a Zobrist hash of the set (XOR of one random
    // key per operation, updated in O(1)) and a hash of the state. Storing the sets themselves
    // costs O(n) per entry and ran a 300k-operation history into 10 GB. A false "seen" needs a
    // 128-bit collision.
    let keys: Vec<u64> = (0..ops.len() as u64).map(splitmix64).collect();
    let mut set_hash = 0u64;
    let mut cache: HashSet<(u64, u64)> = HashSet::new();
    // (call position, state before it)
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state = State { book: model.initial.clone(), closed: false };
    let mut cursor = head;
    let mut steps = 0u64;

    // Removes the call at `pos` and its return from the list.
    fn lift(pos: usize, ret: usize, next: &mut [usize], prev: &mut [usize], head: &mut usize) {
        for p in [pos, ret] {
            let (pp, np) = (prev[p], next[p]);
            if pp == usize::MAX {
                *head = np;
            } else {
                next[pp] = np;
            }
            if np < prev.len() {
                prev[np] = pp;
            }
        }
    }
    fn unlift(pos: usize, ret: usize, next: &mut [usize], prev: &mut [usize], head: &mut usize) {
        for p in [ret, pos] {
            let (pp, np) = (prev[p], next[p]);
            if pp == usize::MAX {
                *head = p;
            } else {
                next[pp] = p;
            }
            if np < prev.len() {
                prev[np] = p;
            }
        }
    }

    while head < n {
        steps += 1;
        if steps > budget {
            return Verdict::Unknown;
        }
        if cursor >= n {
            // Nothing left to try at this level: backtrack.
            let Some((pos, saved)) = stack.pop() else { return Verdict::NotLinearizable };
            let op = events[pos].op;
            set_hash ^= keys[op];
            state = saved;
            unlift(pos, ret_pos[op], &mut next, &mut prev, &mut head);
            cursor = next[pos];
            continue;
        }
        let event = events[cursor];
        if event.is_call {
            let op = &ops[event.op];
            if let Some(after) = model.step(&state, &op.input, &op.output) {
                let key = (set_hash ^ keys[event.op], state_hash(&after));
                if cache.insert(key) {
                    set_hash ^= keys[event.op];
                    stack.push((cursor, std::mem::replace(&mut state, after)));
                    lift(cursor, ret_pos[event.op], &mut next, &mut prev, &mut head);
                    cursor = head;
                    continue;
                }
            }
            cursor = next[cursor];
        } else if unknown(event.op) {
            // Only operations that may never have happened remain: they did not happen.
            return Verdict::Linearizable;
        } else {
            // A completed operation's return with its call not yet linearized: backtrack.
            let Some((pos, saved)) = stack.pop() else { return Verdict::NotLinearizable };
            let op = events[pos].op;
            set_hash ^= keys[op];
            state = saved;
            unlift(pos, ret_pos[op], &mut next, &mut prev, &mut head);
            cursor = next[pos];
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::money::Currency;

    fn model() -> Model {
        Model { ladder: Ladder::default_for(Currency::USD).unwrap(), initial: Book::new(10_000, None) }
    }

    fn bid(who: &str, id: &str, max: i64, out: Output, call: u64, ret: Option<u64>) -> Operation {
        Operation { input: Input::Bid { bidder: who.into(), bid_id: id.into(), max }, output: out, call, ret }
    }

    fn read(price: i64, leader: &str, call: u64, ret: u64) -> Operation {
        Operation {
            input: Input::Read,
            output: Output::Read { price, leader: leader.into(), closed: false },
            call,
            ret: Some(ret),
        }
    }

    fn leading(price: i64) -> Output {
        Output::Bid { leading: true, price }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let ops = vec![
            bid("ana", "a1", 10_000, leading(10_000), 0, Some(1)),
            bid("ben", "b1", 500_000, leading(10_500), 2, Some(3)),
            read(10_500, "ben", 4, 5),
        ];
        assert_eq!(check(&model(), &ops, 10_000), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_bids_may_take_either_order() {
        // ben's bid answered as if it came first (opening at 10,000), ana's second: valid only
        // because the two overlap.
        let ops = vec![
            bid("ana", "a1", 20_000, leading(20_500), 0, Some(10)),
            bid("ben", "b1", 20_000, leading(10_000), 1, Some(9)),
        ];
        assert_eq!(
            check(&model(), &ops, 10_000),
            Verdict::NotLinearizable,
            "a tie goes to the earlier maximum: ana cannot lead"
        );
        let ops = vec![
            bid("ana", "a1", 30_000, leading(20_500), 0, Some(10)),
            bid("ben", "b1", 20_000, leading(10_000), 1, Some(9)),
        ];
        assert_eq!(check(&model(), &ops, 10_000), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_bid_is_caught() {
        let ops = vec![
            bid("ana", "a1", 10_000, leading(10_000), 0, Some(1)),
            bid("ben", "b1", 500_000, leading(10_500), 2, Some(3)),
            read(10_000, "ana", 4, 5),
        ];
        assert_eq!(check(&model(), &ops, 10_000), Verdict::NotLinearizable);
    }

    #[test]
    fn a_lost_acknowledged_bid_is_caught() {
        // ben was told he leads at 10,500, yet a later read shows ana alone at the start price.
        let ops = vec![
            bid("ana", "a1", 10_000, leading(10_000), 0, Some(1)),
            bid("ben", "b1", 20_000, leading(10_500), 2, Some(3)),
            read(10_000, "ana", 6, 7),
        ];
        assert_eq!(check(&model(), &ops, 10_000), Verdict::NotLinearizable);
    }

    #[test]
    fn an_unanswered_bid_may_or_may_not_have_happened() {
        let took_effect = vec![
            bid("ana", "a1", 10_000, leading(10_000), 0, Some(1)),
            bid("ben", "b1", 20_000, Output::Unknown, 2, None),
            read(10_500, "ben", 5, 6),
        ];
        assert_eq!(check(&model(), &took_effect, 10_000), Verdict::Linearizable);
        let did_not = vec![
            bid("ana", "a1", 10_000, leading(10_000), 0, Some(1)),
            bid("ben", "b1", 20_000, Output::Unknown, 2, None),
            read(10_000, "ana", 5, 6),
        ];
        assert_eq!(check(&model(), &did_not, 10_000), Verdict::Linearizable);
    }

    #[test]
    fn rejections_are_checked_too() {
        let ops = vec![
            bid("ana", "a1", 10_000, leading(10_000), 0, Some(1)),
            bid("ben", "b1", 10_000, Output::Rejected { code: "below_minimum".into() }, 2, Some(3)),
        ];
        assert_eq!(check(&model(), &ops, 10_000), Verdict::Linearizable);
        let wrong = vec![
            bid("ana", "a1", 10_000, leading(10_000), 0, Some(1)),
            bid("ben", "b1", 20_000, Output::Rejected { code: "below_minimum".into() }, 2, Some(3)),
        ];
        assert_eq!(check(&model(), &wrong, 10_000), Verdict::NotLinearizable);
    }

    #[test]
    fn no_bid_is_accepted_after_the_lot_was_seen_closed() {
        let closed_read = |call, ret| Operation {
            input: Input::Read,
            output: Output::Read { price: 10_000, leader: "ana".into(), closed: true },
            call,
            ret: Some(ret),
        };
        let fine = vec![
            bid("ana", "a1", 10_000, leading(10_000), 0, Some(1)),
            closed_read(2, 3),
            bid("ben", "b1", 20_000, Output::Rejected { code: "lot_closed".into() }, 4, Some(5)),
        ];
        assert_eq!(check(&model(), &fine, 10_000), Verdict::Linearizable);
        let late = vec![
            bid("ana", "a1", 10_000, leading(10_000), 0, Some(1)),
            closed_read(2, 3),
            bid("ben", "b1", 20_000, leading(10_500), 4, Some(5)),
        ];
        assert_eq!(check(&model(), &late, 10_000), Verdict::NotLinearizable, "accepted after it was seen closed");
        let reopened = vec![
            bid("ana", "a1", 10_000, Output::Rejected { code: "lot_closed".into() }, 0, Some(1)),
            read(10_000, "", 2, 3),
            bid("ben", "b1", 10_000, leading(10_000), 4, Some(5)),
        ];
        assert_eq!(check(&model(), &reopened, 10_000), Verdict::NotLinearizable, "bidding never reopens");
    }

    #[test]
    fn the_budget_gives_unknown_instead_of_hanging() {
        // Many overlapping reads that can never all match force a wide search.
        let mut ops: Vec<Operation> =
            (0..12).map(|i| bid("ana", &format!("a{i}"), 10_000 + i * 500, Output::Unknown, 0, None)).collect();
        ops.push(read(1, "nobody", 1, 2));
        assert_eq!(check(&model(), &ops, 50), Verdict::Unknown);
        assert_eq!(check(&model(), &ops, 10_000_000), Verdict::NotLinearizable);
    }

    #[test]
    fn a_price_lower_than_one_already_returned_is_a_regression_and_overlap_is_not() {
        // The read at 3..4 overlaps the bid at 2..5 that raised the price: it may come first.
        let fine = [
            bid("ana", "a1", 10_000, leading(10_000), 0, Some(1)),
            bid("ben", "b1", 20_000, leading(10_500), 2, Some(5)),
            read(10_000, "ana", 3, 4),
            read(10_500, "ben", 6, 7),
        ];
        assert!(price_regressions(&fine).is_empty());
        // A read called after 10,500 was returned (at 5) may not answer 10,000.
        let stale = [
            bid("ana", "a1", 10_000, leading(10_000), 0, Some(1)),
            bid("ben", "b1", 20_000, leading(10_500), 2, Some(5)),
            read(10_000, "ana", 6, 7),
        ];
        let found = price_regressions(&stale);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("price 10000") && found[0].contains("price 10500"), "{found:?}");
        // An unanswered operation shows no price.
        let unknown = [bid("ben", "b1", 20_000, Output::Unknown, 0, None), read(10_000, "ana", 6, 7)];
        assert!(price_regressions(&unknown).is_empty());
    }
}
