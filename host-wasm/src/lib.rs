//! shoal-wasm: shoal's browser host.
//!
//! Today it exposes the core's log-record and wire-frame codecs to
//! JavaScript through wasm-bindgen, so a page (or node) decodes and builds
//! exactly the bytes the native host does. Later it grows the browser
//! transport, storage and the demo page.
//!
//! Every function here is a thin wrapper over `shoal_core` with
//! [`Limits::default()`](shoal_core::Limits::default); the plain-Rust versions in [`codec`] return the
//! core's typed errors, and the exported ones turn them into JS `Error`s
//! whose message is the core error's `Display` text.
//!
//! Integers: `u32` arguments are JS numbers; `u64` arguments (transaction
//! ids, timestamps in µs) are `BigInt`s. Byte arguments are `Uint8Array`s.

use wasm_bindgen::prelude::*;

use shoal_core::log::RecordError;
use shoal_core::wire::{DecodeError, EncodeError};

pub mod codec;

fn js<E: core::fmt::Display>(e: E) -> JsError {
    JsError::new(&e.to_string())
}

/// The wire protocol version this build speaks (the first two bytes of
/// every frame, little-endian).
#[wasm_bindgen]
pub fn protocol_version() -> u16 {
    shoal_core::wire::PROTOCOL_VERSION
}

/// The log record format version this build writes and reads (byte 13 of
/// every record header).
#[wasm_bindgen]
pub fn record_format_version() -> u8 {
    shoal_core::log::record::RECORD_VERSION
}

/// Describe a frame: its type, envelope and message, as the canonical text
/// of `shoal_core::describe::frame` (the golden vectors' `.txt`).
#[wasm_bindgen]
pub fn describe_frame(bytes: &[u8]) -> Result<String, JsError> {
    codec::describe_frame(bytes).map_err(js::<DecodeError>)
}

/// Describe the log record `bytes`, which lives at LSN (`file`, `offset`):
/// the canonical text of `shoal_core::describe::record`. The LSN matters:
/// it is part of the record's checksum.
#[wasm_bindgen]
pub fn describe_record(bytes: &[u8], file: u32, offset: u32) -> Result<String, JsError> {
    codec::describe_record(bytes, file, offset).map_err(js::<RecordError>)
}

/// A HEARTBEAT frame from site `from`, master of `generation`.
#[wasm_bindgen]
pub fn heartbeat_frame(from: u32, generation: u32) -> Result<Vec<u8>, JsError> {
    codec::heartbeat_frame(from, generation).map_err(js::<EncodeError>)
}

/// An ACK frame from site `from` (whose master is of `generation`) for the
/// PERMANENT record at (`file`, `offset`).
#[wasm_bindgen]
pub fn ack_frame(from: u32, generation: u32, file: u32, offset: u32) -> Result<Vec<u8>, JsError> {
    codec::ack_frame(from, generation, file, offset).map_err(js::<EncodeError>)
}

/// A LOG frame from site `from` carrying the encoded `record` at
/// (`file`, `offset`), whose predecessor is at (`prev_file`, `prev_offset`)
/// (zero for none). `permanent` sets the PERMANENT flag (a commit that
/// must be acknowledged). The record is checked as a receiver would.
#[wasm_bindgen]
#[allow(clippy::too_many_arguments)]
pub fn log_frame(
    from: u32,
    generation: u32,
    record: &[u8],
    file: u32,
    offset: u32,
    prev_file: u32,
    prev_offset: u32,
    permanent: bool,
) -> Result<Vec<u8>, JsError> {
    codec::log_frame(
        from,
        generation,
        record,
        (file, offset),
        (prev_file, prev_offset),
        permanent,
    )
    .map_err(js::<EncodeError>)
}

/// The NEW_GENERATION record a site writes at (`file`, `offset`) when it
/// becomes master (`master`) of `generation`.
#[wasm_bindgen]
pub fn new_generation_record(
    file: u32,
    offset: u32,
    generation: u32,
    master: u32,
    timestamp_us: u64,
) -> Result<Vec<u8>, JsError> {
    codec::new_generation_record(file, offset, generation, master, timestamp_us)
        .map_err(js::<RecordError>)
}

/// A transaction being built, encoded as one commit record:
/// `new CommitBuilder(txnId, timestampUs)`, then `put` / `delete`, then
/// `encode(file, offset, generation)`.
#[wasm_bindgen]
#[derive(Clone, Debug, Default)]
pub struct CommitBuilder {
    inner: codec::CommitBuilder,
}

#[wasm_bindgen]
impl CommitBuilder {
    /// An empty transaction.
    #[wasm_bindgen(constructor)]
    pub fn new(txn_id: u64, timestamp_us: u64) -> CommitBuilder {
        CommitBuilder {
            inner: codec::CommitBuilder::new(txn_id, timestamp_us),
        }
    }

    /// Set `key` to `value` in database `db`.
    pub fn put(&mut self, db: String, key: Vec<u8>, value: Vec<u8>) {
        self.inner.put(db, key, value);
    }

    /// Remove `key` from database `db`.
    pub fn delete(&mut self, db: String, key: Vec<u8>) {
        self.inner.delete(db, key);
    }

    /// Number of operations so far.
    #[wasm_bindgen(getter)]
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// True when no operation has been added.
    #[wasm_bindgen(js_name = isEmpty)]
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The commit record (header and body) for LSN (`file`, `offset`),
    /// written by the master of `generation`. Fails, with the core's
    /// message, when a key, value, name or the op count is above its limit.
    pub fn encode(&self, file: u32, offset: u32, generation: u32) -> Result<Vec<u8>, JsError> {
        self.inner
            .encode(file, offset, generation)
            .map_err(js::<RecordError>)
    }
}
