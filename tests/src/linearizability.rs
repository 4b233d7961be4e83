//! A linearizability checker for key-value histories (issue 4): were the
//! reads and writes clients saw consistent with one copy of the store,
//! each operation taking effect at one instant between its call and its
//! answer?
//!
//! Linearizability is compositional, so each key is checked alone, as a
//! register that starts empty. The search is the Wing-Gong backtracking
//! with memoisation of (set of operations linearised, register value): an
//! operation may come next if it was called before every other pending
//! operation was answered. A write whose outcome is unknown (no answer: the
//! client timed out or the site crashed) may take effect at any time after
//! its call, or never.

use std::collections::{BTreeMap, HashSet};

/// One operation as a client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// When it was called (simulated µs).
    pub call: u64,
    /// When it was answered, or `None` if the outcome is unknown.
    pub answer: Option<u64>,
    /// The key.
    pub key: Vec<u8>,
    /// What it did.
    pub kind: OpKind,
}

/// A write or a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Set the key (`None` deletes it).
    Write(Option<Vec<u8>>),
    /// Read the key and saw this value.
    Read(Option<Vec<u8>>),
}

/// Why a history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// No order of this key's operations explains what clients saw.
    NotLinearizable {
        /// The key.
        key: Vec<u8>,
        /// Its operations, in call order.
        ops: Vec<Op>,
    },
    /// A key has more operations than the checker can search (128).
    TooLong {
        /// The key.
        key: Vec<u8>,
    },
}

/// Check a whole history.
pub fn check(history: &[Op]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&[u8], Vec<&Op>> = BTreeMap::new();
    for op in history {
        // A read with no answer told nobody anything.
        if matches!(op.kind, OpKind::Read(_)) && op.answer.is_none() {
            continue;
        }
        by_key.entry(op.key.as_slice()).or_default().push(op);
    }
    for (key, mut ops) in by_key {
        if ops.len() > 128 {
            return Err(Violation::TooLong { key: key.to_vec() });
        }
        ops.sort_by_key(|o| (o.call, o.answer));
        if !check_key(&ops) {
            return Err(Violation::NotLinearizable {
                key: key.to_vec(),
                ops: ops.into_iter().cloned().collect(),
            });
        }
    }
    Ok(())
}

fn check_key(ops: &[&Op]) -> bool {
    // Values are interned: 0 is "absent", i + 1 is the value of write i.
    let values: Vec<Option<&Vec<u8>>> = ops
        .iter()
        .map(|o| match &o.kind {
            OpKind::Write(v) => v.as_ref(),
            OpKind::Read(_) => None,
        })
        .collect();
    let value_of = |state: usize| -> Option<&Vec<u8>> {
        if state == 0 {
            None
        } else {
            values[state - 1]
        }
    };
    let answered: u128 = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.answer.is_some())
        .fold(0, |m, (i, _)| m | (1u128 << i));
    let mut seen: HashSet<(u128, usize)> = HashSet::new();
    let mut stack: Vec<(u128, usize)> = vec![(0, 0)];
    while let Some((done, state)) = stack.pop() {
        if done & answered == answered {
            return true;
        }
        if !seen.insert((done, state)) {
            continue;
        }
        // The earliest answer among operations not yet linearised bounds
        // which operation may go next.
        let horizon = ops
            .iter()
            .enumerate()
            .filter(|(i, _)| done & (1u128 << i) == 0)
            .filter_map(|(_, o)| o.answer)
            .min()
            .unwrap_or(u64::MAX);
        for (i, o) in ops.iter().enumerate() {
            if done & (1u128 << i) != 0 || o.call > horizon {
                continue;
            }
            let next = done | (1u128 << i);
            match &o.kind {
                OpKind::Write(_) => stack.push((next, i + 1)),
                OpKind::Read(v) => {
                    if v.as_ref() == value_of(state) {
                        stack.push((next, state));
                    }
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(call: u64, answer: Option<u64>, v: Option<&str>) -> Op {
        Op {
            call,
            answer,
            key: b"k".to_vec(),
            kind: OpKind::Write(v.map(|s| s.as_bytes().to_vec())),
        }
    }

    fn r(call: u64, answer: u64, v: Option<&str>) -> Op {
        Op {
            call,
            answer: Some(answer),
            key: b"k".to_vec(),
            kind: OpKind::Read(v.map(|s| s.as_bytes().to_vec())),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            w(0, Some(1), Some("a")),
            r(2, 3, Some("a")),
            w(4, Some(5), None),
            r(6, 7, None),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = [w(0, Some(1), Some("a")), r(2, 3, None)];
        assert!(matches!(check(&h), Err(Violation::NotLinearizable { .. })));
        let h = [
            w(0, Some(1), Some("a")),
            w(2, Some(3), Some("b")),
            r(4, 5, Some("a")),
        ];
        assert!(check(&h).is_err(), "a read of an overwritten value");
    }

    #[test]
    fn reading_a_value_never_written_is_caught() {
        assert!(check(&[r(0, 1, Some("ghost"))]).is_err());
    }

    #[test]
    fn concurrent_reads_may_see_either_value() {
        let h = [w(0, Some(10), Some("a")), r(1, 2, None), r(3, 4, Some("a"))];
        assert_eq!(check(&h), Ok(()));
        // But not go back once the new value was seen by a read that ended
        // before the next one started.
        let h = [w(0, Some(10), Some("a")), r(1, 2, Some("a")), r(3, 4, None)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn an_unanswered_write_may_or_may_not_take_effect() {
        assert_eq!(check(&[w(0, None, Some("a")), r(5, 6, Some("a"))]), Ok(()));
        assert_eq!(check(&[w(0, None, Some("a")), r(5, 6, None)]), Ok(()));
        // Seen, then unseen, with no other write: impossible.
        let h = [w(0, None, Some("a")), r(5, 6, Some("a")), r(7, 8, None)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn keys_are_independent() {
        let mut h = vec![w(0, Some(1), Some("a"))];
        h.push(Op {
            call: 2,
            answer: Some(3),
            key: b"other".to_vec(),
            kind: OpKind::Read(None),
        });
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn two_masters_accepting_writes_is_caught() {
        // Client 1 writes "a" to one master, client 2 writes "b" to another;
        // both answered; then reads alternate between them.
        let h = [
            w(0, Some(1), Some("a")),
            w(2, Some(3), Some("b")),
            r(4, 5, Some("a")),
            r(6, 7, Some("b")),
            r(8, 9, Some("a")),
        ];
        assert!(check(&h).is_err());
    }
}
