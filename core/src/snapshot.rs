//! The store snapshot a checkpoint writes (R8): the whole key-value state
//! and membership as of one log record, so recovery replays only the log
//! after it and older segments can be removed.
//!
//! Layout: version byte (1), CRC-32C of the body (u32 LE), postcard body:
//! LSN and generation of the record the snapshot reflects, the members
//! (id, address, flags), then each database (name, then its key/value
//! pairs in key order).

use crate::ids::{Generation, Lsn, SiteId};
use crate::log::{MemberAction, Membership};
use crate::site::members::Members;
use crate::store::Store;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// Snapshot format version.
pub const SNAPSHOT_VERSION: u8 = 1;

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

#[derive(Serialize, Deserialize)]
struct Body<'a> {
    lsn: Lsn,
    generation: Generation,
    #[serde(borrow)]
    members: Vec<(SiteId, &'a str, u8)>,
    #[serde(borrow)]
    dbs: Vec<Db<'a>>,
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
    /// The record the snapshot reflects (inclusive).
    pub lsn: Lsn,
    /// That record's generation.
    pub generation: Generation,
    /// The store.
    pub store: Store,
    /// The membership.
    pub members: Members,
}

/// The encoding side of [`Body`]: the same layout, written straight from
/// the store rather than through a list of every entry first (a snapshot
/// is taken under the site's lock, in time and memory that grow with the
/// store).
#[derive(Serialize)]
struct BodyRef<'a> {
    lsn: Lsn,
    generation: Generation,
    members: Vec<(SiteId, &'a str, u8)>,
    dbs: DbsRef<'a>,
}

struct DbsRef<'a>(&'a Store);

#[derive(Serialize)]
struct DbRef<'a> {
    name: &'a str,
    entries: EntriesRef<'a>,
}

struct EntriesRef<'a> {
    store: &'a Store,
    name: &'a str,
}

impl Serialize for DbsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.databases().count()))?;
        for name in self.0.databases() {
            seq.serialize_element(&DbRef {
                name,
                entries: EntriesRef {
                    store: self.0,
                    name,
                },
            })?;
        }
        seq.end()
    }
}

impl Serialize for EntriesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.store.db_len(self.name)))?;
        for (key, value) in self.store.iter(self.name) {
            seq.serialize_element(&Kv { key, value })?;
        }
        seq.end()
    }
}

/// Encode the store and membership as of the record at `lsn`.
pub fn encode(lsn: Lsn, generation: Generation, store: &Store, members: &Members) -> Vec<u8> {
    let body = BodyRef {
        lsn,
        generation,
        members: members
            .iter()
            .map(|m| (m.id, m.address.as_str(), m.flags))
            .collect(),
        dbs: DbsRef(store),
    };
    let mut out = Vec::with_capacity(store.bytes() + 64);
    out.push(SNAPSHOT_VERSION);
    out.extend_from_slice(&[0; 4]);
    // The Vec flavour fails only on allocation failure, which aborts.
    out = postcard::to_extend(&body, out).unwrap_or_default();
    if out.len() >= 5 {
        let crc = crate::crc::checksum(&out[5..]);
        out[1..5].copy_from_slice(&crc.to_le_bytes());
    }
    out
}

/// Decode and check a snapshot.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    if bytes.len() < 5 {
        return Err(SnapshotError::Malformed);
    }
    if bytes[0] != SNAPSHOT_VERSION {
        return Err(SnapshotError::BadVersion(bytes[0]));
    }
    let crc = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    if crc != crate::crc::checksum(&bytes[5..]) {
        return Err(SnapshotError::BadChecksum);
    }
    let body: Body<'_> = match postcard::take_from_bytes(&bytes[5..]) {
        Ok((b, [])) => b,
        _ => return Err(SnapshotError::Malformed),
    };
    let mut store = Store::new();
    for db in &body.dbs {
        for kv in &db.entries {
            store.apply_op(&crate::log::Op::Put {
                db: db.name,
                key: kv.key,
                value: kv.value,
            });
        }
    }
    let mut members = Members::default();
    for (site, address, flags) in body.members {
        members.apply(&Membership {
            action: MemberAction::Add,
            site,
            address,
            flags,
        });
    }
    Ok(Snapshot {
        lsn: body.lsn,
        generation: body.generation,
        store,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The encoder that writes straight from the store lays out exactly
    /// the bytes of [`Body`], the layout `decode` reads and FORMAT.md
    /// documents.
    #[test]
    fn encoding_from_the_store_matches_the_documented_body() -> Result<(), postcard::Error> {
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
        let expected = postcard::to_allocvec(&body)?;
        let bytes = encode(Lsn::new(9, 4096), Generation(5), &store, &members);
        assert_eq!(&bytes[5..], &expected[..]);
        Ok(())
    }
}
