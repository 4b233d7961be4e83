//! Canonical text descriptions of encoded records and frames.
//!
//! The golden tests compare these strings with files kept in
//! `testdata/golden/`; the native tests and the wasm host's tests call the
//! same functions on the same bytes, so any difference in how the two hosts
//! decode shows up as a failing test.

use crate::config::Limits;
use crate::ids::Lsn;
use crate::log::record::RecordView;
use crate::log::{Record, RecordError};
use crate::wire::{self, DecodeError, Message};
use alloc::format;
use alloc::string::String;

/// Decode the record at the start of `bytes`, which lives at `lsn`, and
/// describe it: its LSN, generation and decoded body.
pub fn record(bytes: &[u8], lsn: Lsn, limits: &Limits) -> Result<String, RecordError> {
    let view = RecordView::parse(bytes, lsn, limits)?;
    if view.bytes.len() != bytes.len() {
        return Err(RecordError::BadBody);
    }
    let rec: Record<'_> = view.decode(limits)?;
    Ok(format!(
        "lsn {:?} generation {} {:#?}",
        view.lsn, view.generation.0, rec
    ))
}

/// Decode a frame and describe its envelope and message. Bulk messages
/// are expanded entry by entry.
pub fn frame(bytes: &[u8], limits: &Limits) -> Result<String, DecodeError> {
    let (env, msg) = wire::decode_frame(bytes, limits)?;
    let mut s = format!("{} {:#?}\n{:#?}", msg.kind().name(), env, msg);
    if let Message::BulkLog(b) = &msg {
        for e in b.entries().flatten() {
            s.push_str(&format!("\nentry {:?} prev {:?}", e.lsn, e.prev));
            if let Ok(r) = record(e.record, e.lsn, limits) {
                s.push('\n');
                s.push_str(&r);
            }
        }
    }
    Ok(s)
}
