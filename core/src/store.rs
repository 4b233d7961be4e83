//! The key-value state, applied from the log: named databases of ordered
//! keys. Every site applies the same commits in the same LSN order, so every
//! site's store is the same function of its log.

use crate::config::Limits;
use crate::log::{Commit, Op, RecordError};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

/// Named databases of ordered keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Store {
    dbs: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    bytes: usize,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Apply one commit's operations, in order.
    pub fn apply(&mut self, commit: &Commit<'_>) -> Result<(), RecordError> {
        for op in commit.ops() {
            self.apply_op(&op?);
        }
        Ok(())
    }

    /// Apply the operations of one commit on the databases `keep` accepts,
    /// in order, and skip the others: what a view restricted to some
    /// databases applies (R12). The skipped operations are still checked.
    pub fn apply_where(
        &mut self,
        commit: &Commit<'_>,
        keep: impl Fn(&str) -> bool,
    ) -> Result<(), RecordError> {
        for op in commit.ops() {
            let op = op?;
            if keep(op.db()) {
                self.apply_op(&op);
            }
        }
        Ok(())
    }

    /// Drop every database `keep` refuses (a view restricted to some
    /// databases keeps only those of a snapshot, R12).
    pub fn retain_databases(&mut self, keep: impl Fn(&str) -> bool) {
        let mut gone = 0usize;
        self.dbs.retain(|name, db| {
            let k = keep(name);
            if !k {
                gone += db.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            }
            k
        });
        self.bytes -= gone;
    }

    /// Apply one operation.
    pub fn apply_op(&mut self, op: &Op<'_>) {
        match *op {
            Op::Put { db, key, value } => {
                let d = match self.dbs.get_mut(db) {
                    Some(d) => d,
                    None => self.dbs.entry(String::from(db)).or_default(),
                };
                if let Some(old) = d.insert(key.to_vec(), value.to_vec()) {
                    self.bytes -= key.len() + old.len();
                }
                self.bytes += key.len() + value.len();
            }
            Op::Delete { db, key } => {
                if let Some(d) = self.dbs.get_mut(db) {
                    if let Some(old) = d.remove(key) {
                        self.bytes -= key.len() + old.len();
                    }
                }
            }
        }
    }

    /// The value of `key` in `db`.
    pub fn get(&self, db: &str, key: &[u8]) -> Option<&[u8]> {
        self.dbs.get(db)?.get(key).map(|v| v.as_slice())
    }

    /// Database names, in order.
    pub fn databases(&self) -> impl Iterator<Item = &str> {
        self.dbs.keys().map(|s| s.as_str())
    }

    /// Every (key, value) of a database, in key order.
    pub fn iter(&self, db: &str) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.dbs
            .get(db)
            .into_iter()
            .flat_map(|d| d.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    }

    /// The (key, value) pairs of a database after `after` (all of them for
    /// None), in key order: where a snapshot being built goes on.
    pub fn iter_after<'a>(
        &'a self,
        db: &str,
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        use core::ops::Bound;
        let lower = match after {
            Some(k) => Bound::Excluded(k.to_vec()),
            None => Bound::Unbounded,
        };
        self.dbs
            .get(db)
            .into_iter()
            .flat_map(move |d| d.range((lower.clone(), Bound::Unbounded)))
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Number of keys in one database (0 if it does not exist).
    pub fn db_len(&self, db: &str) -> usize {
        self.dbs.get(db).map_or(0, |d| d.len())
    }

    /// Number of keys over all databases.
    pub fn len(&self) -> usize {
        self.dbs.values().map(|d| d.len()).sum()
    }

    /// True when no database holds a key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A stable digest of the whole store (CRC-32C over every database,
    /// key and value in order): equal stores give equal digests, so the
    /// simulator can compare sites cheaply.
    pub fn digest(&self) -> u32 {
        self.digest_where(|_| true)
    }

    /// The digest of the databases `keep` accepts only, computed as
    /// [`Store::digest`] is: a view restricted to some databases (R12) has
    /// the digest of the master's store restricted to them, so the two
    /// compare with `master.digest_where(|db| view.replicates(db))`.
    pub fn digest_where(&self, keep: impl Fn(&str) -> bool) -> u32 {
        let mut d = crate::crc::digest();
        for (name, db) in &self.dbs {
            if db.is_empty() || !keep(name) {
                continue;
            }
            d.update(&(name.len() as u32).to_le_bytes());
            d.update(name.as_bytes());
            for (k, v) in db {
                d.update(&(k.len() as u32).to_le_bytes());
                d.update(k);
                d.update(&(v.len() as u32).to_le_bytes());
                d.update(v);
            }
        }
        d.finalize()
    }

    /// Check an operation against the limits before it is logged.
    pub fn check_op(op: &Op<'_>, limits: &Limits) -> Result<(), RecordError> {
        op.check(limits)
    }
}
