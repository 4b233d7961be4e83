//! The store snapshot a checkpoint writes (R8): the whole key-value state
//! and membership, so recovery replays only the log after it and older
//! segments can be removed.
//!
//! A checkpoint's snapshot is *fuzzy*: it is built in bounded steps, a
//! turn at a time ([`SnapshotBuilder`]), while the site goes on applying
//! records, so a site never pauses in proportion to its whole store. It
//! holds the membership as of its start record `lsn` and every key as of
//! some moment between `lsn` and its end record `end`. Replaying the log
//! after `lsn` over it gives the exact state: every operation is a whole
//! put or delete, so each key ends with its last operation in the log, or
//! the snapshot's value when the log after `lsn` never touches it (which
//! is then its value at `lsn`). A snapshot is valid for a log only while
//! that log holds both `lsn` and `end` with their generations: a rollback
//! below `end` may have removed records some of its keys reflect.
//! [`encode`] builds one in a single step (`end` = `lsn`).
//!
//! Layout (version 2): version byte, CRC-32C of everything after the
//! header (u32 LE), then postcard: the head (LSN and generation of the
//! start record, the members), chunks of entries each after a 1 byte
//! (a database name and some of its key/value pairs, in key order), a 0
//! byte, and the tail (LSN and generation of the end record).
//! Version 1 (one postcard body, always `end` = `lsn`) is still read.
//! Version 3 is version 2 with, right after the head, the list of the
//! databases the snapshot covers: written by a view restricted to some
//! databases (R12) only, so a site opening it knows the store lacks every
//! other database, and refuses a snapshot narrower than its own list.

use crate::ids::{Generation, Lsn, SiteId};
use crate::log::{MemberAction, Membership};
use crate::site::members::Members;
use crate::store::Store;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// Snapshot format version written.
pub const SNAPSHOT_VERSION: u8 = 2;

/// The older, single-body format, still read.
const SNAPSHOT_VERSION_1: u8 = 1;

/// Version 2 with the databases covered after the head: a partial view's
/// snapshot (R12).
pub const SNAPSHOT_VERSION_COVERING: u8 = 3;

/// The default bytes of entries a builder step encodes (one entry at
/// least): what bounds a site's pause per step (`Config::snapshot_step_bytes`).
pub const STEP_BYTES: usize = 16 << 10;

#[derive(Serialize, Deserialize)]
struct Kv<'a> {
    #[serde(with = "serde_bytes")]
    key: &'a [u8],
    #[serde(with = "serde_bytes")]
    value: &'a [u8],
}

#[derive(Serialize, Deserialize)]
struct Db<'a> {
    name: &'a str,
    #[serde(borrow)]
    entries: Vec<Kv<'a>>,
}

/// Version 1's body.
#[derive(Serialize, Deserialize)]
struct Body<'a> {
    lsn: Lsn,
    generation: Generation,
    #[serde(borrow)]
    members: Vec<(SiteId, &'a str, u8)>,
    #[serde(borrow)]
    dbs: Vec<Db<'a>>,
}

/// Version 2's head: the start record and the membership as of it.
#[derive(Serialize, Deserialize)]
struct Head<'a> {
    lsn: Lsn,
    generation: Generation,
    #[serde(borrow)]
    members: Vec<(SiteId, &'a str, u8)>,
}

/// Version 2's tail: the end record.
#[derive(Serialize, Deserialize)]
struct Tail {
    end: Lsn,
    end_generation: Generation,
}

/// Why a snapshot could not be read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SnapshotError {
    /// Shorter than its header, or a body that does not decode.
    Malformed,
    /// Unknown version.
    BadVersion(u8),
    /// Checksum mismatch.
    BadChecksum,
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Malformed => write!(f, "store snapshot malformed"),
            SnapshotError::BadVersion(v) => write!(f, "unknown store snapshot version {v}"),
            SnapshotError::BadChecksum => write!(f, "store snapshot checksum mismatch"),
        }
    }
}

/// A decoded snapshot.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The start record: every record up to and including it is in the
    /// snapshot; recovery replays the log after it.
    pub lsn: Lsn,
    /// That record's generation.
    pub generation: Generation,
    /// The end record: no record after it is in the snapshot (equal to
    /// `lsn` for a snapshot built in one step).
    pub end: Lsn,
    /// That record's generation.
    pub end_generation: Generation,
    /// The store.
    pub store: Store,
    /// The membership.
    pub members: Members,
    /// The databases it covers, when a view restricted to some wrote it
    /// (R12, version 3); None: every database.
    pub covers: Option<Vec<String>>,
}

impl Snapshot {
    /// Does it hold every database of `dbs` (every database at all for an
    /// empty list)?
    pub fn covers_all(&self, dbs: &[String]) -> bool {
        match &self.covers {
            None => true,
            Some(c) => !dbs.is_empty() && dbs.iter().all(|d| c.contains(d)),
        }
    }
}

/// Builds a snapshot in bounded steps while the store changes (see the
/// module documentation).
#[derive(Debug)]
pub struct SnapshotBuilder {
    lsn: Lsn,
    generation: Generation,
    out: Vec<u8>,
    /// Bytes of `out` after the header already fed to the checksum.
    hashed: usize,
    crc: crate::crc::Digest,
    /// The last database and key encoded (None: none yet).
    cursor: Option<(String, Vec<u8>)>,
    done: bool,
}

impl SnapshotBuilder {
    /// Start a snapshot as of the record at `lsn`: the membership now.
    pub fn new(lsn: Lsn, generation: Generation, members: &Members) -> Self {
        Self::with_capacity(lsn, generation, members, 256)
    }

    /// [`SnapshotBuilder::new`], with room for about `bytes` from the
    /// start: the buffer never grows by copying all it holds, which for a
    /// large store would be one long pause in the middle of a step.
    pub fn with_capacity(
        lsn: Lsn,
        generation: Generation,
        members: &Members,
        bytes: usize,
    ) -> Self {
        Self::covering(lsn, generation, members, bytes, None)
    }

    /// [`SnapshotBuilder::with_capacity`] for a store that holds the
    /// databases `covers` only (a partial view's, R12: version 3); None is
    /// a whole store (version 2).
    pub fn covering(
        lsn: Lsn,
        generation: Generation,
        members: &Members,
        bytes: usize,
        covers: Option<&[String]>,
    ) -> Self {
        let head = Head {
            lsn,
            generation,
            members: members
                .iter()
                .map(|m| (m.id, m.address.as_str(), m.flags))
                .collect(),
        };
        let mut out = Vec::with_capacity(bytes.max(256));
        out.push(match covers {
            Some(_) => SNAPSHOT_VERSION_COVERING,
            None => SNAPSHOT_VERSION,
        });
        out.extend_from_slice(&[0; 4]);
        // The Vec flavour fails only on allocation failure, which aborts.
        out = postcard::to_extend(&head, out).unwrap_or_default();
        if let Some(dbs) = covers {
            let names: Vec<&str> = dbs.iter().map(String::as_str).collect();
            out = postcard::to_extend(&names, out).unwrap_or_default();
        }
        SnapshotBuilder {
            lsn,
            generation,
            out,
            hashed: 5,
            crc: crate::crc::digest(),
            cursor: None,
            done: false,
        }
    }

    /// The start record.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The start record's generation.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Bytes built so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Nothing built beyond the header (never: the header is written at
    /// once).
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Encode the next entries after the cursor, about `budget` bytes of
    /// them (at least one entry). Returns true once every entry is in.
    pub fn step(&mut self, store: &Store, budget: usize) -> bool {
        if self.done {
            return true;
        }
        let mut spent = 0usize;
        let mut full = false;
        let cursor = self.cursor.take();
        let mut next = None;
        for name in store.databases() {
            let after = match &cursor {
                // Databases before the cursor's are in already.
                Some((d, _)) if name < d.as_str() => continue,
                Some((d, k)) if name == d.as_str() => Some(k.as_slice()),
                _ => None,
            };
            let mut entries = Vec::new();
            for (key, value) in store.iter_after(name, after) {
                let cost = key.len().saturating_add(value.len()).saturating_add(4);
                if spent > 0 && spent.saturating_add(cost) > budget {
                    full = true;
                    break;
                }
                spent = spent.saturating_add(cost);
                entries.push(Kv { key, value });
            }
            if let Some(last) = entries.last() {
                next = Some((String::from(name), last.key.to_vec()));
                self.out.push(1);
                let out = core::mem::take(&mut self.out);
                self.out = postcard::to_extend(&Db { name, entries }, out).unwrap_or_default();
            }
            if full {
                break;
            }
        }
        self.cursor = next.or(cursor);
        self.crc.update(&self.out[self.hashed..]);
        self.hashed = self.out.len();
        self.done = !full;
        self.done
    }

    /// The snapshot, with `end` the last record applied to the store by
    /// now. Call once [`SnapshotBuilder::step`] returned true.
    pub fn finish(mut self, end: Lsn, end_generation: Generation) -> Vec<u8> {
        self.out.push(0);
        let tail = Tail {
            end,
            end_generation,
        };
        let out = core::mem::take(&mut self.out);
        self.out = postcard::to_extend(&tail, out).unwrap_or_default();
        self.crc.update(&self.out[self.hashed..]);
        let crc = self.crc.finalize();
        if self.out.len() >= 5 {
            self.out[1..5].copy_from_slice(&crc.to_le_bytes());
        }
        self.out
    }
}

/// About the bytes a snapshot of `store` takes: its keys and values, a few
/// bytes of lengths per entry, and a little more for the rest.
pub fn capacity_for(store: &Store) -> usize {
    store
        .bytes()
        .saturating_add(store.len().saturating_mul(4))
        .saturating_add(4096)
}

/// Encode the store and membership as of the record at `lsn`, in one step.
pub fn encode(lsn: Lsn, generation: Generation, store: &Store, members: &Members) -> Vec<u8> {
    encode_covering(lsn, generation, store, members, None)
}

/// [`encode`] for a store that holds the databases `covers` only (a
/// partial view's, R12); None is a whole store.
pub fn encode_covering(
    lsn: Lsn,
    generation: Generation,
    store: &Store,
    members: &Members,
    covers: Option<&[String]>,
) -> Vec<u8> {
    let mut b = SnapshotBuilder::covering(lsn, generation, members, capacity_for(store), covers);
    while !b.step(store, usize::MAX) {}
    b.finish(lsn, generation)
}

/// Encode a decoded snapshot again, with its start and end records as
/// they were (a partial view keeps only its databases of a master's, R12).
pub fn encode_spanning(snap: &Snapshot) -> Vec<u8> {
    let mut b = SnapshotBuilder::covering(
        snap.lsn,
        snap.generation,
        &snap.members,
        capacity_for(&snap.store),
        snap.covers.as_deref(),
    );
    while !b.step(&snap.store, usize::MAX) {}
    b.finish(snap.end, snap.end_generation)
}

/// Decode and check a snapshot.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    if bytes.len() < 5 {
        return Err(SnapshotError::Malformed);
    }
    if ![
        SNAPSHOT_VERSION,
        SNAPSHOT_VERSION_1,
        SNAPSHOT_VERSION_COVERING,
    ]
    .contains(&bytes[0])
    {
        return Err(SnapshotError::BadVersion(bytes[0]));
    }
    let crc = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    if crc != crate::crc::checksum(&bytes[5..]) {
        return Err(SnapshotError::BadChecksum);
    }
    let mut store = Store::new();
    let put = |store: &mut Store, db: &Db<'_>| {
        for kv in &db.entries {
            store.apply_op(&crate::log::Op::Put {
                db: db.name,
                key: kv.key,
                value: kv.value,
            });
        }
    };
    let mut covers = None;
    let (lsn, generation, members, end, end_generation) = if bytes[0] == SNAPSHOT_VERSION_1 {
        let body: Body<'_> = match postcard::take_from_bytes(&bytes[5..]) {
            Ok((b, [])) => b,
            _ => return Err(SnapshotError::Malformed),
        };
        for db in &body.dbs {
            put(&mut store, db);
        }
        (
            body.lsn,
            body.generation,
            body.members,
            body.lsn,
            body.generation,
        )
    } else {
        let (head, mut rest): (Head<'_>, _) =
            postcard::take_from_bytes(&bytes[5..]).map_err(|_| SnapshotError::Malformed)?;
        if bytes[0] == SNAPSHOT_VERSION_COVERING {
            let (names, more): (Vec<&str>, _) =
                postcard::take_from_bytes(rest).map_err(|_| SnapshotError::Malformed)?;
            if names.is_empty() || names.len() > crate::config::caps::MAX_DATABASES {
                return Err(SnapshotError::Malformed);
            }
            covers = Some(names.into_iter().map(String::from).collect());
            rest = more;
        }
        loop {
            match rest.split_first() {
                Some((1, more)) => {
                    let (db, more): (Db<'_>, _) =
                        postcard::take_from_bytes(more).map_err(|_| SnapshotError::Malformed)?;
                    put(&mut store, &db);
                    rest = more;
                }
                Some((0, more)) => {
                    rest = more;
                    break;
                }
                _ => return Err(SnapshotError::Malformed),
            }
        }
        let tail: Tail = match postcard::take_from_bytes(rest) {
            Ok((t, [])) => t,
            _ => return Err(SnapshotError::Malformed),
        };
        if tail.end < head.lsn {
            return Err(SnapshotError::Malformed);
        }
        (
            head.lsn,
            head.generation,
            head.members,
            tail.end,
            tail.end_generation,
        )
    };
    let mut m = Members::default();
    for (site, address, flags) in members {
        m.apply(&Membership {
            action: MemberAction::Add,
            site,
            address,
            flags,
        });
    }
    Ok(Snapshot {
        lsn,
        generation,
        end,
        end_generation,
        store,
        members: m,
        covers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// R12: a partial view's snapshot (version 3) names the databases it
    /// covers; a whole store's stays version 2, byte for byte as before.
    #[test]
    fn r12_a_partial_views_snapshot_names_what_it_covers() -> Result<(), SnapshotError> {
        let mut store = Store::new();
        store.apply_op(&crate::log::Op::Put {
            db: "a",
            key: b"k",
            value: b"v",
        });
        let members = Members::default();
        let (lsn, g) = (Lsn::new(1, 40), Generation(2));
        let covers = vec![String::from("a"), String::from("c")];
        let bytes = encode_covering(lsn, g, &store, &members, Some(&covers));
        assert_eq!(bytes[0], SNAPSHOT_VERSION_COVERING);
        let snap = decode(&bytes)?;
        assert_eq!(snap.covers.as_deref(), Some(&covers[..]));
        assert_eq!(snap.store, store);
        assert!(snap.covers_all(&[String::from("c")]));
        assert!(!snap.covers_all(&[String::from("a"), String::from("b")]));
        assert!(!snap.covers_all(&[]), "a whole store is more than it holds");
        // Re-encoded as it came.
        assert_eq!(encode_spanning(&snap), bytes);
        let whole = encode(lsn, g, &store, &members);
        assert_eq!(whole[0], SNAPSHOT_VERSION);
        let snap = decode(&whole)?;
        assert!(snap.covers.is_none() && snap.covers_all(&[]));
        // A version 3 snapshot with no database listed is malformed.
        let empty = encode_covering(lsn, g, &store, &members, Some(&[]));
        assert_eq!(decode(&empty).err(), Some(SnapshotError::Malformed));
        Ok(())
    }

    #[test]
    fn snapshot_round_trips_and_detects_corruption() -> Result<(), SnapshotError> {
        let mut store = Store::new();
        store.apply_op(&crate::log::Op::Put {
            db: "a",
            key: b"k",
            value: b"v",
        });
        store.apply_op(&crate::log::Op::Put {
            db: "b",
            key: b"x",
            value: b"",
        });
        let mut members = Members::default();
        members.apply(&Membership {
            action: MemberAction::Add,
            site: SiteId(1),
            address: "s1",
            flags: 0,
        });
        let bytes = encode(Lsn::new(3, 20), Generation(2), &store, &members);
        let snap = decode(&bytes)?;
        assert_eq!(snap.store, store);
        assert_eq!(snap.lsn, Lsn::new(3, 20));
        assert_eq!(snap.members.len(), 1);
        let mut bad = bytes.clone();
        let n = bad.len() - 1;
        bad[n] ^= 0x40;
        assert_eq!(decode(&bad).unwrap_err(), SnapshotError::BadChecksum);
        assert_eq!(decode(&bytes[..3]).unwrap_err(), SnapshotError::Malformed);
        Ok(())
    }

    fn sample() -> (Store, Members) {
        let mut store = Store::new();
        for (db, n) in [("a", 300u32), ("bb", 0), ("c", 5)] {
            store.apply_op(&crate::log::Op::Put {
                db,
                key: b"first",
                value: b"",
            });
            for i in 0..n {
                let key = i.to_be_bytes();
                let value = [i as u8; 200];
                store.apply_op(&crate::log::Op::Put {
                    db,
                    key: &key,
                    value: &value[..(i % 200) as usize],
                });
            }
        }
        let mut members = Members::default();
        for (id, address) in [(1, "s1:1"), (7, "s7:7")] {
            members.apply(&Membership {
                action: MemberAction::Add,
                site: SiteId(id),
                address,
                flags: 1,
            });
        }
        (store, members)
    }

    /// Version 1 (one postcard body) is still read, with its end at its
    /// start: a home written before version 2 opens.
    #[test]
    fn a_version_1_snapshot_is_still_read() -> Result<(), SnapshotError> {
        let (store, members) = sample();
        let body = Body {
            lsn: Lsn::new(9, 4096),
            generation: Generation(5),
            members: members
                .iter()
                .map(|m| (m.id, m.address.as_str(), m.flags))
                .collect(),
            dbs: store
                .databases()
                .map(|name| Db {
                    name,
                    entries: store
                        .iter(name)
                        .map(|(key, value)| Kv { key, value })
                        .collect(),
                })
                .collect(),
        };
        let mut bytes = vec![SNAPSHOT_VERSION_1, 0, 0, 0, 0];
        bytes.extend(postcard::to_allocvec(&body).map_err(|_| SnapshotError::Malformed)?);
        let crc = crate::crc::checksum(&bytes[5..]);
        bytes[1..5].copy_from_slice(&crc.to_le_bytes());
        let snap = decode(&bytes)?;
        assert_eq!(snap.store, store);
        assert_eq!((snap.lsn, snap.end), (Lsn::new(9, 4096), Lsn::new(9, 4096)));
        assert_eq!(snap.end_generation, Generation(5));
        assert_eq!(snap.members.len(), 2);
        Ok(())
    }

    /// R8: a snapshot built in small steps while the store changes, then
    /// replayed with every operation after its start, gives exactly the
    /// store at its end, whatever moment each key was taken at.
    #[test]
    fn a_fuzzy_snapshot_plus_the_log_after_its_start_is_exact() -> Result<(), SnapshotError> {
        use crate::log::Op;
        let (mut store, members) = sample();
        let mut b = SnapshotBuilder::new(Lsn::new(2, 100), Generation(3), &members);
        // The "log" after the start: operations made between steps
        // (database, key, new value or None for a delete).
        type Change = (&'static str, Vec<u8>, Option<Vec<u8>>);
        let mut log: Vec<Change> = Vec::new();
        let mut steps = 0;
        let mut i = 0u32;
        while !b.step(&store, 700) {
            steps += 1;
            assert!(steps < 10_000, "the builder never finished");
            // Change keys behind and ahead of the cursor, delete some, add
            // a database.
            let changes: [Change; 5] = [
                (
                    "a",
                    (i * 7 % 300).to_be_bytes().to_vec(),
                    Some(vec![b'x'; (i % 9) as usize]),
                ),
                ("a", (i * 13 % 300).to_be_bytes().to_vec(), None),
                ("c", b"first".to_vec(), Some(i.to_be_bytes().to_vec())),
                ("new", i.to_be_bytes().to_vec(), Some(b"n".to_vec())),
                ("bb", b"first".to_vec(), None),
            ];
            for (db, key, value) in changes {
                match &value {
                    Some(v) => store.apply_op(&Op::Put {
                        db,
                        key: &key,
                        value: v,
                    }),
                    None => store.apply_op(&Op::Delete { db, key: &key }),
                }
                log.push((db, key, value));
            }
            i += 1;
        }
        assert!(steps > 10, "a 700-byte budget takes many steps: {steps}");
        let bytes = b.finish(Lsn::new(2, 9000), Generation(3));
        let snap = decode(&bytes)?;
        assert_eq!((snap.lsn, snap.end), (Lsn::new(2, 100), Lsn::new(2, 9000)));
        assert_ne!(
            snap.store.digest(),
            store.digest(),
            "taken while the store changed"
        );
        let mut replayed = snap.store;
        for (db, key, value) in &log {
            match value {
                Some(v) => replayed.apply_op(&Op::Put { db, key, value: v }),
                None => replayed.apply_op(&Op::Delete { db, key }),
            }
        }
        for db in store.databases().chain(replayed.databases()) {
            // Compare keys first: a short message names what differs.
            let keys = |s: &Store| s.iter(db).map(|(k, _)| k.to_vec()).collect::<Vec<_>>();
            assert_eq!(keys(&replayed), keys(&store), "keys of db {db}");
            assert!(
                replayed.iter(db).eq(store.iter(db)),
                "values of db {db} differ"
            );
        }
        // Empty databases carry nothing (the digest skips them too).
        assert_eq!(replayed.digest(), store.digest());
        assert_eq!(replayed.len(), store.len());
        Ok(())
    }

    /// In one step ([`encode`]) a snapshot is exact, its end its start.
    #[test]
    fn a_snapshot_in_one_step_is_exact() -> Result<(), SnapshotError> {
        let (store, members) = sample();
        let snap = decode(&encode(Lsn::new(9, 4096), Generation(5), &store, &members))?;
        assert_eq!(snap.store, store);
        assert_eq!(snap.end, snap.lsn);
        assert_eq!(snap.members.len(), 2);
        Ok(())
    }
}
