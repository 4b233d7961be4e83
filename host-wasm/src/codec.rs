//! The codecs as plain Rust, returning the core's typed errors. The
//! exported wasm functions wrap these; keeping them separate lets the host
//! test them natively (a `JsError` can only be built inside wasm).

use shoal_core::describe;
use shoal_core::log::record::{encode_record, RecordBody};
use shoal_core::log::{NewGeneration, Op, RecordError};
use shoal_core::wire::{self, EncodeError, Envelope, Flags, LogEntry, Message};
use shoal_core::{ElectionGen, Generation, Instant, Limits, Lsn, SiteId};

/// See [`crate::describe_frame`].
pub fn describe_frame(bytes: &[u8]) -> Result<String, wire::DecodeError> {
    describe::frame(bytes, &Limits::default())
}

/// See [`crate::describe_record`].
pub fn describe_record(bytes: &[u8], file: u32, offset: u32) -> Result<String, RecordError> {
    describe::record(bytes, Lsn::new(file, offset), &Limits::default())
}

fn envelope(from: u32, generation: u32, lsn: Lsn, flags: Flags) -> Envelope {
    Envelope {
        from: SiteId(from),
        generation: Generation(generation),
        egen: ElectionGen(0),
        lsn,
        flags,
    }
}

fn frame(env: &Envelope, msg: &Message<'_>) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    wire::encode_frame(env, msg, &mut out, &Limits::default())?;
    Ok(out)
}

/// See [`crate::heartbeat_frame`].
pub fn heartbeat_frame(from: u32, generation: u32) -> Result<Vec<u8>, EncodeError> {
    frame(
        &envelope(from, generation, Lsn::ZERO, Flags::NONE),
        &Message::Heartbeat,
    )
}

/// See [`crate::ack_frame`].
pub fn ack_frame(
    from: u32,
    generation: u32,
    file: u32,
    offset: u32,
) -> Result<Vec<u8>, EncodeError> {
    let lsn = Lsn::new(file, offset);
    frame(
        &envelope(from, generation, lsn, Flags::NONE),
        &Message::Ack { lsn },
    )
}

/// See [`crate::log_frame`]; LSNs are `(file, offset)` pairs.
pub fn log_frame(
    from: u32,
    generation: u32,
    record: &[u8],
    lsn: (u32, u32),
    prev: (u32, u32),
    permanent: bool,
) -> Result<Vec<u8>, EncodeError> {
    let lsn = Lsn::new(lsn.0, lsn.1);
    let flags = if permanent {
        Flags::PERMANENT
    } else {
        Flags::NONE
    };
    frame(
        &envelope(from, generation, lsn, flags),
        &Message::Log(LogEntry {
            lsn,
            prev: Lsn::new(prev.0, prev.1),
            record,
        }),
    )
}

fn record(lsn: Lsn, generation: u32, body: &RecordBody<'_, '_>) -> Result<Vec<u8>, RecordError> {
    let mut out = Vec::new();
    encode_record(
        lsn,
        Generation(generation),
        body,
        &mut out,
        &Limits::default(),
    )?;
    Ok(out)
}

/// See [`crate::new_generation_record`].
pub fn new_generation_record(
    file: u32,
    offset: u32,
    generation: u32,
    master: u32,
    timestamp_us: u64,
) -> Result<Vec<u8>, RecordError> {
    record(
        Lsn::new(file, offset),
        generation,
        &RecordBody::NewGeneration(NewGeneration {
            generation: Generation(generation),
            master: SiteId(master),
            timestamp: Instant(timestamp_us),
        }),
    )
}

#[derive(Clone, Debug)]
enum OwnedOp {
    Put {
        db: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        db: String,
        key: Vec<u8>,
    },
}

/// A transaction being built; see [`crate::CommitBuilder`].
#[derive(Clone, Debug, Default)]
pub struct CommitBuilder {
    txn_id: u64,
    timestamp_us: u64,
    ops: Vec<OwnedOp>,
}

impl CommitBuilder {
    /// An empty transaction.
    pub fn new(txn_id: u64, timestamp_us: u64) -> Self {
        CommitBuilder {
            txn_id,
            timestamp_us,
            ops: Vec::new(),
        }
    }

    /// Add a put.
    pub fn put(&mut self, db: String, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(OwnedOp::Put { db, key, value });
    }

    /// Add a delete.
    pub fn delete(&mut self, db: String, key: Vec<u8>) {
        self.ops.push(OwnedOp::Delete { db, key });
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there is no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The encoded commit record for (`file`, `offset`).
    pub fn encode(&self, file: u32, offset: u32, generation: u32) -> Result<Vec<u8>, RecordError> {
        let ops: Vec<Op<'_>> = self
            .ops
            .iter()
            .map(|op| match op {
                OwnedOp::Put { db, key, value } => Op::Put { db, key, value },
                OwnedOp::Delete { db, key } => Op::Delete { db, key },
            })
            .collect();
        record(
            Lsn::new(file, offset),
            generation,
            &RecordBody::Commit {
                txn_id: self.txn_id,
                timestamp: Instant(self.timestamp_us),
                ops: &ops,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_describes_as_heartbeat() {
        let f = heartbeat_frame(3, 7).unwrap();
        assert_eq!(&f[..2], &wire::PROTOCOL_VERSION.to_le_bytes());
        let text = describe_frame(&f).unwrap();
        assert!(text.starts_with("HEARTBEAT "), "{text}");
        assert!(text.contains("SiteId(\n        3,"), "{text}");
    }

    #[test]
    fn commit_record_round_trips_and_ships_in_a_log_frame() {
        let mut c = CommitBuilder::new(9, 1_000);
        c.put("users".into(), b"k".to_vec(), b"v".to_vec());
        c.delete("users".into(), b"old".to_vec());
        assert_eq!(c.len(), 2);
        let rec = c.encode(1, 20, 4).unwrap();
        let text = describe_record(&rec, 1, 20).unwrap();
        assert!(
            text.starts_with("lsn [1][20] generation 4 Commit"),
            "{text}"
        );
        // The LSN is part of the checksum.
        assert!(matches!(
            describe_record(&rec, 1, 21),
            Err(RecordError::BadChecksum { .. })
        ));
        let f = log_frame(1, 4, &rec, (1, 20), (1, 0), true).unwrap();
        let text = describe_frame(&f).unwrap();
        assert!(text.starts_with("LOG "), "{text}");
        assert!(text.contains("PERMANENT"), "{text}");
    }

    #[test]
    fn limits_are_enforced_with_typed_errors() {
        let mut c = CommitBuilder::new(1, 0);
        let big = vec![0u8; Limits::default().max_value as usize + 1];
        c.put("d".into(), b"k".to_vec(), big);
        assert_eq!(c.encode(1, 20, 1), Err(RecordError::LimitExceeded("value")));
        assert_eq!(describe_frame(&[]), Err(wire::DecodeError::Truncated));
        let rec = new_generation_record(1, 20, 2, 1, 5).unwrap();
        assert!(matches!(
            log_frame(1, 2, &rec[..rec.len() - 1], (1, 20), (0, 0), false),
            Err(EncodeError::Invalid(_))
        ));
    }
}
