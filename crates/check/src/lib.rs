//! Charter's linearizability checker: given the history of reads and writes that clients made
//! against a set of registers (keys), decide whether some order of the operations, each taking
//! effect at one instant between its call and its return, explains every value read.
//!
//! The search is Wing and Gong's, with Lowe's memoization, as Porcupine and Knossos do it: walk
//! the history's call and return events in time order, try to linearize each pending operation
//! next, backtrack at a return whose operation could not be placed, and never revisit a
//! (set of linearized operations, register value) configuration. Registers are independent, so
//! each key's history is checked on its own (P-compositionality), which keeps the search small.
//!
//! Operations carry a [`Completion`]: `Returned(t)` for an acknowledged outcome, `Failed` for
//! an operation known not to have taken effect (it is ignored), and `Unknown` for one whose
//! client gave up (a timeout, a broken connection): it may or may not have taken effect, at any
//! time after its call. Unknown reads constrain nothing and are ignored; an unknown write is
//! given no return bound, and is dropped altogether when no read observed its value (it either
//! never happened or was invisible, and leaving it out cannot hide a violation).
//!
//! ```
//! use charter_check::{check_registers, Op, Violation};
//!
//! // Process 1 writes x = "1" between times 0 and 10; process 2 reads "1" while the write is
//! // still in flight; process 3's write of "2" times out; a later read sees "2", so it did
//! // take effect.
//! let history = vec![
//!     Op::write(1, "x", "1", 0, 10),
//!     Op::read(2, "x", Some("1"), 5, 15),
//!     Op::write_unknown(3, "x", "2", 20),
//!     Op::read(1, "x", Some("2"), 30, 40),
//! ];
//! assert_eq!(check_registers(&history), Ok(()));
//!
//! // A stale read: the write completed at 10, yet a read called at 20 sees the initial value.
//! let stale = vec![Op::write(1, "x", "1", 0, 10), Op::read(2, "x", None, 20, 30)];
//! match check_registers(&stale) {
//!     Err(Violation::NotLinearizable(explanation)) => {
//!         assert_eq!(explanation.key, "x");
//!         assert_eq!(explanation.blocked, 1); // the read, by its index in the history
//!         println!("{}", explanation.description);
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```
//!
//! Times are whatever monotonic unit the test harness uses (nanoseconds since its start, say).
//! An operation precedes another only if it returned strictly before the other was called;
//! equal times count as concurrent, so a coarse clock can only make the checker more lenient.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// What an operation did to a register.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A read that returned this value (`None`: the key was absent). Ignored unless the
    /// operation's completion is [`Completion::Returned`].
    Read(Option<String>),
    /// A write of this value (`None`: a delete).
    Write(Option<String>),
}

/// How an operation ended, as its client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Completion {
    /// Acknowledged at this time: it took effect between its call and this time.
    Returned(u64),
    /// Known not to have taken effect (the service refused it); ignored by the check.
    Failed,
    /// The client gave up: it may have taken effect at any time after its call, or never.
    Unknown,
}

/// One client operation on one register.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    /// The client (process or thread) that issued it; used only in descriptions.
    pub process: u64,
    /// The register.
    pub key: String,
    /// Read or write, with the value.
    pub kind: Kind,
    /// When it was called.
    pub call: u64,
    /// How it ended.
    pub completion: Completion,
}

impl Op {
    /// A read of `key` by `process`, called at `call`, that returned `value` at `ret`.
    pub fn read(process: u64, key: &str, value: Option<&str>, call: u64, ret: u64) -> Op {
        Op {
            process,
            key: key.to_owned(),
            kind: Kind::Read(value.map(str::to_owned)),
            call,
            completion: Completion::Returned(ret),
        }
    }

    /// A write of `value` to `key` by `process`, called at `call`, acknowledged at `ret`.
    pub fn write(process: u64, key: &str, value: &str, call: u64, ret: u64) -> Op {
        Op {
            process,
            key: key.to_owned(),
            kind: Kind::Write(Some(value.to_owned())),
            call,
            completion: Completion::Returned(ret),
        }
    }

    /// A delete of `key` by `process`, called at `call`, acknowledged at `ret`.
    pub fn delete(process: u64, key: &str, call: u64, ret: u64) -> Op {
        Op {
            process,
            key: key.to_owned(),
            kind: Kind::Write(None),
            call,
            completion: Completion::Returned(ret),
        }
    }

    /// A write of `value` to `key` by `process`, called at `call`, whose outcome is unknown.
    pub fn write_unknown(process: u64, key: &str, value: &str, call: u64) -> Op {
        Op {
            process,
            key: key.to_owned(),
            kind: Kind::Write(Some(value.to_owned())),
            call,
            completion: Completion::Unknown,
        }
    }

    /// A short description for violation reports, e.g. `#3 read "1" by process 2 in [5, 15]`.
    fn describe(&self, index: usize) -> String {
        let value = |value: &Option<String>| match value {
            Some(value) => format!("{value:?}"),
            None => "nothing".to_owned(),
        };
        let what = match &self.kind {
            Kind::Read(seen) => format!("read {}", value(seen)),
            Kind::Write(Some(written)) => format!("write {written:?}"),
            Kind::Write(None) => "delete".to_owned(),
        };
        let when = match self.completion {
            Completion::Returned(ret) => format!("[{}, {ret}]", self.call),
            Completion::Failed => format!("[{}, failed]", self.call),
            Completion::Unknown => format!("[{}, unknown]", self.call),
        };
        format!("#{index} {what} by process {} in {when}", self.process)
    }
}

/// Limits of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Most search configurations visited for one key before giving up with
    /// [`Violation::Undecided`]; each remembered configuration costs a few dozen bytes.
    pub states_max: usize,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            states_max: 2_000_000,
        }
    }
}

/// Why no order of a key's operations explains what was read: the furthest the search got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The register.
    pub key: String,
    /// History indices of the longest order found that explains everything up to it.
    pub linearized: Vec<usize>,
    /// The register's value after that order.
    pub state: Option<String>,
    /// The operation that had to take effect next (its return came first among those left),
    /// by history index: neither it nor any operation concurrent with it could.
    pub blocked: usize,
    /// The operations that could have taken effect next, `blocked` included.
    pub candidates: Vec<usize>,
    /// All of the above in words, with each operation spelled out.
    pub description: String,
}

/// Why a history is not (known to be) linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// An operation is inconsistent in itself (it returned before it was called).
    Malformed {
        /// Its index in the history.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// No order of the operations on a key explains what was read.
    NotLinearizable(Box<Explanation>),
    /// The search for `key` visited [`CheckOptions::states_max`] configurations undecided.
    Undecided {
        /// The register.
        key: String,
        /// Configurations visited.
        states: usize,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Malformed { index, reason } => {
                write!(f, "operation #{index} is malformed: {reason}")
            }
            Violation::NotLinearizable(explanation) => f.write_str(&explanation.description),
            Violation::Undecided { key, states } => write!(
                f,
                "key {key:?}: undecided after {states} search configurations (raise states_max)"
            ),
        }
    }
}

impl std::error::Error for Violation {}

/// Checks that `history` is linearizable, each key being a register that starts absent and
/// supports reads and writes (see the crate documentation), with [`CheckOptions::default`].
///
/// # Errors
/// The first [`Violation`] found, keys taken in order.
pub fn check_registers(history: &[Op]) -> Result<(), Violation> {
    check_registers_with(history, CheckOptions::default())
}

/// [`check_registers`] with explicit limits.
///
/// # Errors
/// As [`check_registers`].
pub fn check_registers_with(history: &[Op], options: CheckOptions) -> Result<(), Violation> {
    let mut keys: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        if let Completion::Returned(ret) = op.completion {
            if ret < op.call {
                return Err(Violation::Malformed {
                    index,
                    reason: format!("returned at {ret}, before its call at {}", op.call),
                });
            }
        }
        keys.entry(op.key.as_str()).or_default().push(index);
    }
    for (key, indices) in keys {
        check_key(history, key, &indices, options)?;
    }
    Ok(())
}

/// A register operation of one key, values interned (0 is "absent").
#[derive(Clone, Copy, Debug)]
struct KeyOp {
    /// Index in the whole history.
    index: usize,
    write: bool,
    value: u32,
}

/// One event of the per-key history, as a node of a doubly linked list.
#[derive(Clone, Copy, Debug)]
struct Event {
    /// Local operation number.
    op: usize,
    call: bool,
    /// Node of the matching call or return.
    partner: usize,
}

const NONE: usize = usize::MAX;

/// A set of local operation numbers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(len: usize) -> BitSet {
        BitSet(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }
}

/// The events of one key in time order, linked so that linearized operations can be lifted
/// out and put back in O(1) (Knuth's dancing links).
struct EventList {
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The sentinel node before the first event.
    head: usize,
}

impl EventList {
    fn new(ops: &[KeyOp], history: &[Op]) -> EventList {
        // (time, returns after calls at equal times, op) orders the events; an unknown
        // write never returns.
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (local, op) in ops.iter().enumerate() {
            let full = &history[op.index];
            let ret = match full.completion {
                Completion::Returned(ret) => ret,
                _ => u64::MAX,
            };
            order.push((full.call, 0, local));
            order.push((ret, 1, local));
        }
        order.sort_unstable();
        let mut call_node = vec![NONE; ops.len()];
        let mut events = Vec::with_capacity(order.len());
        for (node, (_, kind, local)) in order.iter().enumerate() {
            let call = *kind == 0;
            let partner = if call { NONE } else { call_node[*local] };
            if call {
                call_node[*local] = node;
            } else {
                assert!(partner != NONE, "a call sorts before its return");
            }
            events.push(Event {
                op: *local,
                call,
                partner,
            });
        }
        for node in 0..events.len() {
            if !events[node].call {
                let call = events[node].partner;
                events[call].partner = node;
            }
        }
        let count = events.len();
        let head = count;
        // Node i follows node i - 1 (the head sentinel before node 0) and precedes node i + 1.
        let next: Vec<usize> = if count == 0 {
            vec![NONE]
        } else {
            (1..count).chain([NONE, 0]).collect()
        };
        let prev: Vec<usize> = std::iter::once(head).chain(0..count).collect();
        EventList {
            events,
            next,
            prev,
            head,
        }
    }

    fn first(&self) -> usize {
        self.next[self.head]
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NONE {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NONE {
            self.prev[next] = node;
        }
    }

    /// Removes a call and its return (the operation is linearized).
    fn lift(&mut self, call: usize) {
        let ret = self.events[call].partner;
        self.unlink(call);
        self.unlink(ret);
    }

    /// Undoes [`EventList::lift`] (in reverse order, so the links are restored exactly).
    fn unlift(&mut self, call: usize) {
        let ret = self.events[call].partner;
        self.relink(ret);
        self.relink(call);
    }

    /// The first remaining return and the operations called before it.
    fn frontier(&self) -> (usize, Vec<usize>) {
        let mut candidates = Vec::new();
        let mut node = self.first();
        while node != NONE {
            let event = self.events[node];
            if !event.call {
                return (event.op, candidates);
            }
            candidates.push(event.op);
            node = self.next[node];
        }
        unreachable!("every remaining call is followed by its return");
    }
}

/// Checks the operations `indices` of `history`, all on `key`.
fn check_key(
    history: &[Op],
    key: &str,
    indices: &[usize],
    options: CheckOptions,
) -> Result<(), Violation> {
    // Values seen by successful reads: an unknown write of any other value is dropped.
    let observed: HashSet<&Option<String>> = indices
        .iter()
        .filter_map(
            |&index| match (&history[index].kind, history[index].completion) {
                (Kind::Read(value), Completion::Returned(_)) => Some(value),
                _ => None,
            },
        )
        .collect();
    let mut values: Vec<Option<String>> = vec![None];
    let mut intern = |value: &Option<String>| -> u32 {
        match values.iter().position(|known| known == value) {
            Some(position) => position as u32,
            None => {
                values.push(value.clone());
                (values.len() - 1) as u32
            }
        }
    };
    let mut ops = Vec::new();
    for &index in indices {
        let op = &history[index];
        let keep = match (&op.kind, op.completion) {
            (_, Completion::Failed) => false,
            (Kind::Read(_), Completion::Unknown) => false,
            (Kind::Write(value), Completion::Unknown) => observed.contains(value),
            (_, Completion::Returned(_)) => true,
        };
        if !keep {
            continue;
        }
        let (write, value) = match &op.kind {
            Kind::Read(value) => (false, intern(value)),
            Kind::Write(value) => (true, intern(value)),
        };
        ops.push(KeyOp {
            index,
            write,
            value,
        });
    }
    search(history, key, &ops, &values, options)
}

/// Wing and Gong's search with memoization over one key's operations.
fn search(
    history: &[Op],
    key: &str,
    ops: &[KeyOp],
    values: &[Option<String>],
    options: CheckOptions,
) -> Result<(), Violation> {
    let mut list = EventList::new(ops, history);
    let mut linearized = BitSet::new(ops.len());
    let mut state: u32 = 0;
    // Linearized calls, with the register value before each.
    let mut stack: Vec<(usize, u32)> = Vec::with_capacity(ops.len());
    let mut seen: HashSet<(BitSet, u32)> = HashSet::new();
    let mut longest: Option<(Vec<usize>, u32, usize, Vec<usize>)> = None;
    let mut node = list.first();
    // Between two new configurations the walk moves forward over at most every event once,
    // and each backtrack follows a new configuration: this bounds the loop.
    let iterations_max = (options.states_max + 1).saturating_mul(2 * list.events.len() + 2);
    for _ in 0..iterations_max {
        if list.first() == NONE {
            assert_eq!(stack.len(), ops.len(), "every operation was linearized");
            return Ok(());
        }
        if seen.len() > options.states_max {
            break;
        }
        assert!(
            node != NONE,
            "a remaining call is always followed by its return"
        );
        let event = list.events[node];
        if event.call {
            let op = ops[event.op];
            let legal = op.write || op.value == state;
            let next_state = if op.write { op.value } else { state };
            if legal {
                linearized.set(event.op);
                if seen.insert((linearized.clone(), next_state)) {
                    stack.push((node, state));
                    state = next_state;
                    list.lift(node);
                    node = list.first();
                    continue;
                }
                linearized.clear(event.op);
            }
            node = list.next[node];
        } else {
            // This operation returned: it must already have taken effect. Undo the last choice.
            let longer = match &longest {
                Some((done, ..)) => stack.len() > done.len(),
                None => true,
            };
            if longer {
                let done = stack
                    .iter()
                    .map(|(call, _)| list.events[*call].op)
                    .collect();
                let (blocked, candidates) = list.frontier();
                longest = Some((done, state, blocked, candidates));
            }
            let Some((call, previous)) = stack.pop() else {
                let (done, state, blocked, candidates) =
                    longest.expect("recorded just above, before the stack ran empty");
                return Err(not_linearizable(
                    history,
                    key,
                    ops,
                    values,
                    &done,
                    state,
                    blocked,
                    &candidates,
                ));
            };
            state = previous;
            linearized.clear(list.events[call].op);
            list.unlift(call);
            node = list.next[call];
        }
    }
    Err(Violation::Undecided {
        key: key.to_owned(),
        states: seen.len(),
    })
}

#[allow(clippy::too_many_arguments)]
fn not_linearizable(
    history: &[Op],
    key: &str,
    ops: &[KeyOp],
    values: &[Option<String>],
    done: &[usize],
    state: u32,
    blocked: usize,
    candidates: &[usize],
) -> Violation {
    let index = |local: &usize| ops[*local].index;
    let describe = |local: &usize| history[ops[*local].index].describe(ops[*local].index);
    let state_value = values[state as usize].clone();
    let held = match &state_value {
        Some(value) => format!("{value:?}"),
        None => "nothing".to_owned(),
    };
    let prefix = if done.is_empty() {
        "no operation can take effect first".to_owned()
    } else {
        format!(
            "the longest explainable order is {} operation(s): {}; the register then holds {held}",
            done.len(),
            done.iter().map(describe).collect::<Vec<_>>().join(", ")
        )
    };
    let others: Vec<String> = candidates
        .iter()
        .filter(|local| **local != blocked)
        .map(describe)
        .collect();
    let concurrent = if others.is_empty() {
        String::new()
    } else {
        format!(" (nor could the concurrent {})", others.join(", "))
    };
    let description = format!(
        "key {key:?} is not linearizable: {prefix}. Next, {} had to take effect before it returned, but could not{concurrent}.",
        describe(&blocked)
    );
    Violation::NotLinearizable(Box::new(Explanation {
        key: key.to_owned(),
        linearized: done.iter().map(index).collect(),
        state: state_value,
        blocked: index(&blocked),
        candidates: candidates.iter().map(index).collect(),
        description,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown_read(process: u64, key: &str, call: u64) -> Op {
        Op {
            process,
            key: key.to_owned(),
            kind: Kind::Read(None),
            call,
            completion: Completion::Unknown,
        }
    }

    #[test]
    fn empty_and_sequential_histories_pass() {
        assert_eq!(check_registers(&[]), Ok(()));
        let history = vec![
            Op::read(1, "x", None, 0, 1),
            Op::write(1, "x", "a", 2, 3),
            Op::read(1, "x", Some("a"), 4, 5),
            Op::delete(1, "x", 6, 7),
            Op::read(1, "x", None, 8, 9),
        ];
        assert_eq!(check_registers(&history), Ok(()));
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        for seen in [None, Some("1")] {
            let history = vec![Op::write(1, "x", "1", 0, 10), Op::read(2, "x", seen, 5, 6)];
            assert_eq!(check_registers(&history), Ok(()), "{seen:?}");
        }
    }

    #[test]
    fn a_stale_read_after_a_completed_write_fails() {
        let history = vec![
            Op::write(1, "x", "1", 0, 10),
            Op::write(1, "x", "2", 20, 30),
            Op::read(2, "x", Some("1"), 40, 50),
        ];
        let violation = check_registers(&history).unwrap_err();
        let Violation::NotLinearizable(explanation) = &violation else {
            panic!("{violation:?}");
        };
        assert_eq!(explanation.key, "x");
        assert_eq!(explanation.blocked, 2);
        assert_eq!(explanation.linearized, [0, 1]);
        assert_eq!(explanation.state.as_deref(), Some("2"));
        assert_eq!(explanation.candidates, [2]);
        let text = violation.to_string();
        assert!(
            text.contains("#2 read \"1\" by process 2 in [40, 50]"),
            "{text}"
        );
    }

    #[test]
    fn two_readers_seeing_writes_in_opposite_orders_fail() {
        // Writes of 1 and 2 overlap, so either order is fine, but not both at once: reader A
        // sees 1 then 2, reader B sees 2 then 1, and all the reads come after both writes' calls.
        let history = vec![
            Op::write(1, "x", "1", 0, 100),
            Op::write(2, "x", "2", 0, 100),
            Op::read(3, "x", Some("1"), 10, 20),
            Op::read(3, "x", Some("2"), 30, 40),
            Op::read(4, "x", Some("2"), 10, 20),
            Op::read(4, "x", Some("1"), 30, 40),
        ];
        assert!(matches!(
            check_registers(&history),
            Err(Violation::NotLinearizable(_))
        ));
        // One reader alone is fine.
        assert_eq!(check_registers(&history[..4]), Ok(()));
    }

    #[test]
    fn reading_a_value_never_written_fails() {
        let history = vec![Op::read(1, "x", Some("ghost"), 0, 1)];
        let violation = check_registers(&history).unwrap_err();
        assert!(
            violation
                .to_string()
                .contains("no operation can take effect first"),
            "{violation}"
        );
    }

    #[test]
    fn keys_are_independent_registers() {
        let history = vec![
            Op::write(1, "x", "1", 0, 10),
            Op::read(2, "y", None, 20, 30),
            Op::read(2, "x", Some("1"), 20, 30),
        ];
        assert_eq!(check_registers(&history), Ok(()));
        let mut bad = history.clone();
        bad.push(Op::read(3, "y", Some("1"), 40, 50));
        let Err(Violation::NotLinearizable(explanation)) = check_registers(&bad) else {
            panic!("y never held 1");
        };
        assert_eq!(explanation.key, "y");
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect() {
        // Seen: it took effect, even long after its call.
        let seen = vec![
            Op::write_unknown(1, "x", "1", 0),
            Op::read(2, "x", None, 100, 110),
            Op::read(2, "x", Some("1"), 1000, 1010),
        ];
        assert_eq!(check_registers(&seen), Ok(()));
        // Never seen: it did not (or was overwritten unseen).
        let unseen = vec![
            Op::write(1, "x", "0", 0, 5),
            Op::write_unknown(1, "x", "1", 10),
            Op::read(2, "x", Some("0"), 100, 110),
        ];
        assert_eq!(check_registers(&unseen), Ok(()));
        // But it cannot take effect before its call.
        let early = vec![
            Op::read(2, "x", Some("1"), 0, 5),
            Op::write_unknown(1, "x", "1", 10),
        ];
        assert!(check_registers(&early).is_err());
        // Nor be undone: once seen and then overwritten by a completed write, it cannot reappear.
        let reappears = vec![
            Op::write_unknown(1, "x", "1", 0),
            Op::read(2, "x", Some("1"), 10, 20),
            Op::write(3, "x", "2", 30, 40),
            Op::read(2, "x", Some("1"), 50, 60),
        ];
        assert!(check_registers(&reappears).is_err());
    }

    #[test]
    fn failed_operations_and_unknown_reads_are_ignored() {
        let history = vec![
            Op {
                completion: Completion::Failed,
                ..Op::write(1, "x", "1", 0, 10)
            },
            unknown_read(2, "x", 5),
            Op::read(3, "x", None, 20, 30),
            // A key with nothing left to check.
            unknown_read(2, "y", 5),
        ];
        assert_eq!(check_registers(&history), Ok(()));
    }

    #[test]
    fn a_return_before_the_call_is_malformed() {
        let history = vec![Op::write(1, "x", "1", 10, 5)];
        assert_eq!(
            check_registers(&history),
            Err(Violation::Malformed {
                index: 0,
                reason: "returned at 5, before its call at 10".to_owned()
            })
        );
    }

    #[test]
    fn equal_times_count_as_concurrent() {
        let history = vec![
            Op::write(1, "x", "1", 0, 10),
            Op::read(2, "x", None, 10, 20),
        ];
        assert_eq!(check_registers(&history), Ok(()));
    }

    #[test]
    fn the_search_gives_up_at_its_limit() {
        let history: Vec<Op> = (0..12)
            .map(|i| Op::write(i, "x", &i.to_string(), 0, 100))
            .chain([Op::read(99, "x", Some("ghost"), 200, 300)])
            .collect();
        let options = CheckOptions { states_max: 100 };
        assert!(matches!(
            check_registers_with(&history, options),
            Err(Violation::Undecided { .. })
        ));
    }

    /// A small deterministic generator (SplitMix64), so the tests need no dependencies.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    /// A history produced by a real register map: each operation takes effect at a distinct
    /// instant inside its interval, some outcomes are lost (unknown) or refused (failed).
    fn generate(rng: &mut Rng, ops: usize, keys: u64, processes: u64) -> Vec<Op> {
        struct Planned {
            op: Op,
            effect: u64,
            takes_effect: bool,
        }
        let mut free_at = vec![0u64; processes as usize];
        let mut planned = Vec::with_capacity(ops);
        for serial in 0..ops {
            let process = rng.below(processes);
            // Times are multiples of 4 plus 1 or 3 so that effect points (multiples of 4 plus 2)
            // never coincide with calls or returns.
            let call = free_at[process as usize] + 4 * rng.below(5) + 1;
            let effect = call + 4 * rng.below(10) + 1;
            let ret = effect + 4 * rng.below(10) + 1;
            free_at[process as usize] = ret + 1;
            let key = format!("k{}", rng.below(keys));
            let kind = if rng.below(2) == 0 {
                Kind::Read(None)
            } else if rng.below(10) == 0 {
                Kind::Write(None)
            } else {
                Kind::Write(Some(format!("v{serial}")))
            };
            let (completion, takes_effect) = match rng.below(20) {
                0 => (Completion::Unknown, rng.below(2) == 0),
                1 => (Completion::Failed, false),
                _ => (Completion::Returned(ret), true),
            };
            planned.push(Planned {
                op: Op {
                    process,
                    key,
                    kind,
                    call,
                    completion,
                },
                effect,
                takes_effect,
            });
        }
        let mut order: Vec<usize> = (0..planned.len()).collect();
        order.sort_by_key(|index| (planned[*index].effect, *index));
        let mut registers: BTreeMap<String, Option<String>> = BTreeMap::new();
        for index in order {
            let step = &mut planned[index];
            if !step.takes_effect {
                continue;
            }
            let register = registers.entry(step.op.key.clone()).or_default();
            match &mut step.op.kind {
                Kind::Read(seen) => *seen = register.clone(),
                Kind::Write(value) => *register = value.clone(),
            }
        }
        planned.into_iter().map(|step| step.op).collect()
    }

    #[test]
    fn histories_of_a_real_register_always_pass() {
        let mut rng = Rng(1);
        for round in 0..300 {
            let ops = 1 + rng.below(60) as usize;
            let keys = 1 + rng.below(3);
            let processes = 1 + rng.below(6);
            let history = generate(&mut rng, ops, keys, processes);
            if let Err(violation) = check_registers(&history) {
                panic!("round {round}: {violation}\n{history:#?}");
            }
        }
    }

    #[test]
    fn a_read_of_a_value_nobody_wrote_is_always_caught() {
        let mut rng = Rng(2);
        for round in 0..200 {
            let mut history = generate(&mut rng, 40, 2, 4);
            let reads: Vec<usize> = (0..history.len())
                .filter(|i| {
                    matches!(history[*i].kind, Kind::Read(_))
                        && matches!(history[*i].completion, Completion::Returned(_))
                })
                .collect();
            if reads.is_empty() {
                continue;
            }
            let victim = reads[rng.below(reads.len() as u64) as usize];
            history[victim].kind = Kind::Read(Some("never written".to_owned()));
            match check_registers(&history) {
                Err(Violation::NotLinearizable(explanation)) => {
                    assert_eq!(explanation.blocked, victim, "round {round}")
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
    }

    /// Every order of every subset of the unknown writes, the definition of linearizability
    /// applied literally: only for a handful of operations.
    fn brute_force(history: &[Op]) -> bool {
        let keys: HashSet<&str> = history.iter().map(|op| op.key.as_str()).collect();
        keys.into_iter().all(|key| {
            let ops: Vec<&Op> = history
                .iter()
                .filter(|op| op.key == key)
                .filter(|op| {
                    !matches!(
                        (&op.kind, op.completion),
                        (_, Completion::Failed) | (Kind::Read(_), Completion::Unknown)
                    )
                })
                .collect();
            let unknown: Vec<usize> = (0..ops.len())
                .filter(|i| ops[*i].completion == Completion::Unknown)
                .collect();
            (0..1u32 << unknown.len()).any(|mask| {
                let chosen: Vec<&Op> = (0..ops.len())
                    .filter(|i| match unknown.iter().position(|u| u == i) {
                        Some(bit) => mask & (1 << bit) != 0,
                        None => true,
                    })
                    .map(|i| ops[i])
                    .collect();
                permutations_explain(&chosen, &mut Vec::new(), &mut vec![false; chosen.len()])
            })
        })
    }

    fn permutations_explain(ops: &[&Op], order: &mut Vec<usize>, used: &mut [bool]) -> bool {
        if order.len() == ops.len() {
            let mut register: Option<String> = None;
            return order.iter().all(|i| match &ops[*i].kind {
                Kind::Read(seen) => *seen == register,
                Kind::Write(value) => {
                    register = value.clone();
                    true
                }
            });
        }
        for candidate in 0..ops.len() {
            if used[candidate] {
                continue;
            }
            // Real-time order: nothing left may have returned before the candidate's call.
            let respects_time = (0..ops.len()).all(|other| {
                used[other]
                    || other == candidate
                    || match ops[other].completion {
                        Completion::Returned(ret) => ret >= ops[candidate].call,
                        _ => true,
                    }
            });
            if !respects_time {
                continue;
            }
            used[candidate] = true;
            order.push(candidate);
            if permutations_explain(ops, order, used) {
                return true;
            }
            order.pop();
            used[candidate] = false;
        }
        false
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let mut rng = Rng(3);
        let mut outcomes = [0usize; 2];
        for round in 0..3000 {
            let count = 1 + rng.below(6) as usize;
            let history: Vec<Op> = (0..count)
                .map(|_| {
                    let call = rng.below(10);
                    let ret = call + rng.below(6);
                    let value = |rng: &mut Rng| match rng.below(3) {
                        0 => None,
                        1 => Some("a".to_owned()),
                        _ => Some("b".to_owned()),
                    };
                    let kind = if rng.below(2) == 0 {
                        Kind::Read(value(&mut rng))
                    } else {
                        Kind::Write(value(&mut rng))
                    };
                    let completion = match rng.below(8) {
                        0 => Completion::Unknown,
                        1 => Completion::Failed,
                        _ => Completion::Returned(ret),
                    };
                    Op {
                        process: rng.below(3),
                        key: format!("k{}", rng.below(2)),
                        kind,
                        call,
                        completion,
                    }
                })
                .collect();
            let expected = brute_force(&history);
            let actual = check_registers(&history);
            assert_eq!(
                actual.is_ok(),
                expected,
                "round {round}: {actual:?}\n{history:#?}"
            );
            outcomes[usize::from(expected)] += 1;
        }
        // Both answers occur often enough for the comparison to mean something.
        assert!(outcomes[0] > 300 && outcomes[1] > 300, "{outcomes:?}");
    }

    #[test]
    fn a_thousand_operations_over_five_keys_check_quickly() {
        let mut rng = Rng(4);
        // 10 clients overlap a few operations per key; 40 overlap many more.
        for processes in [10, 40] {
            let history = generate(&mut rng, 1000, 5, processes);
            let started = std::time::Instant::now();
            assert_eq!(check_registers(&history), Ok(()));
            let elapsed = started.elapsed();
            eprintln!("1,000 operations of {processes} clients over 5 keys: {elapsed:?}");
            // Well under a second even in a debug build (milliseconds in practice).
            assert!(elapsed.as_millis() < 1000, "took {elapsed:?}");
        }
    }
}
