//! The wire format: a frame is a protocol version, an [`Envelope`] and one
//! [`Message`].
//!
//! ```text
//! offset size field
//!  0     2    protocol version, u16 LE (PROTOCOL_VERSION)
//!  2     ..   envelope, postcard
//!  ..    ..   message, postcard (variant index = message type)
//! ```
//!
//! A frame is the unit a [`Transport`](crate::traits::Transport) delivers.
//! Stream transports (TCP) put a u32 LE length before each frame; see
//! [`stream_frame_len`]. Decoding untrusted bytes never panics and never
//! allocates: every failure is a [`DecodeError`].

pub mod message;

pub use message::*;

use crate::config::{caps, Limits};
use crate::ids::{ElectionGen, Generation, Lsn, SiteId};
use crate::log::record::{RecordView, RECORD_HEADER_LEN};
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. A frame of another version is
/// refused with [`DecodeError::BadVersion`].
pub const PROTOCOL_VERSION: u16 = 6;

/// Longest nonce a HANDSHAKE may carry (B4).
pub const MAX_HANDSHAKE_NONCE: usize = 64;

/// Longest MAC a HANDSHAKE_PROOF may carry (B4).
pub const MAX_HANDSHAKE_MAC: usize = 64;

/// The smallest snapshot page an UPDATE_REQ may ask for (S6): a request
/// for smaller pages is refused ([`DecodeError::BelowMinimum`]), so no
/// peer can make a master cut its snapshot into pages of a few bytes each.
/// [`Limits::validate`] keeps every site's own
/// [`max_page_bytes`] at or above it.
pub const MIN_PAGE_BYTES: u32 = 64;

/// The smallest answer, BULK_LOG payload and largest record a request's
/// [`RequesterLimits`] may announce (R11, R13, S3): an entry's two LSNs and
/// its length (at most 25 bytes of varints) and a record's 16-byte header
/// fit in it. A request announcing less is refused
/// ([`DecodeError::BelowMinimum`]), so no peer can make a site cut its
/// answer into bulks of a few bytes each.
/// [`Limits::validate`] keeps every site's own [`max_bulk_bytes`] at or
/// above it ([`max_record_bytes`] always is).
pub const MIN_BULK_BYTES: u32 = 64;

/// Bytes a frame may need beyond its largest payload (record, channel
/// message, page): version, envelope and message fields.
pub const FRAME_OVERHEAD: usize = 512;

/// Message flags carried in the envelope.
#[derive(Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Flags(pub u8);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// A sync request that any site able to answer may serve (S3).
    pub const ANYWHERE: Flags = Flags(1);
    /// A re-issued request; always goes to the master (S3).
    pub const REREQUEST: Flags = Flags(2);
    /// On CHANNEL_MSG (the same bit as REREQUEST, which only log requests
    /// carry): the message was sent on a channel to "the master" (W2); a
    /// receiver that is not master refuses it.
    pub const TO_MASTER: Flags = Flags(2);
    /// Carries a commit that must be acknowledged (R5).
    pub const PERMANENT: Flags = Flags(4);
    /// The master asks the receiver for a lease grant (R10).
    pub const LEASE_REQ: Flags = Flags(8);
    /// The commit a PERMANENT record carries did not ask for a sync (R4):
    /// the receiver acknowledges it once the record is handed to its
    /// operating system, without waiting for its disk.
    pub const NO_SYNC: Flags = Flags(16);
    /// Every flag this version defines.
    pub const KNOWN: u8 = 0x1f;

    /// True if every flag of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union.
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Flags::ANYWHERE, "ANYWHERE"),
            (Flags::REREQUEST, "REREQUEST"),
            (Flags::PERMANENT, "PERMANENT"),
            (Flags::LEASE_REQ, "LEASE_REQ"),
            (Flags::NO_SYNC, "NO_SYNC"),
        ];
        let mut first = true;
        write!(f, "Flags(")?;
        for (flag, name) in names {
            if self.contains(flag) {
                if !first {
                    write!(f, "|")?;
                }
                write!(f, "{name}")?;
                first = false;
            }
        }
        write!(f, ")")
    }
}

/// What every message carries about its sender.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending site.
    pub from: SiteId,
    /// The sender's master generation.
    pub generation: Generation,
    /// The sender's election generation.
    pub egen: ElectionGen,
    /// The sender's last LSN.
    pub lsn: Lsn,
    /// Flags.
    pub flags: Flags,
}

/// Why a frame could not be decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DecodeError {
    /// Shorter than the version field.
    Truncated,
    /// Larger than `Limits::max_frame`.
    TooLarge {
        /// Frame length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Another protocol version.
    BadVersion {
        /// Version in the frame.
        got: u16,
    },
    /// The envelope or message does not decode.
    Malformed,
    /// Bytes left after the message.
    TrailingBytes(usize),
    /// Flags this version does not define.
    UnknownFlags(u8),
    /// A field is above its limit.
    LimitExceeded(&'static str),
    /// A field is below its minimum.
    BelowMinimum(&'static str),
    /// A shipped log record is invalid.
    BadRecord(crate::log::RecordError),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "frame truncated"),
            DecodeError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes is above the limit of {max}")
            }
            DecodeError::BadVersion { got } => write!(
                f,
                "peer speaks protocol version {got}, this site speaks {PROTOCOL_VERSION}"
            ),
            DecodeError::Malformed => write!(f, "malformed frame"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} bytes after the message"),
            DecodeError::UnknownFlags(b) => write!(f, "unknown message flags {b:#04x}"),
            DecodeError::LimitExceeded(what) => write!(f, "{what} is above its limit"),
            DecodeError::BelowMinimum(what) => write!(f, "{what} is below its minimum"),
            DecodeError::BadRecord(e) => write!(f, "shipped record invalid: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

/// Why a message could not be encoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EncodeError {
    /// The frame would be larger than `Limits::max_frame`.
    TooLarge {
        /// Frame length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The message breaks a limit a receiver would enforce.
    Invalid(DecodeError),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge { len, max } => {
                write!(
                    f,
                    "message of {len} bytes is above the frame limit of {max}"
                )
            }
            EncodeError::Invalid(e) => write!(f, "message invalid: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}

/// Encode one frame, appending it to `out`; returns its length. The
/// message is checked as a receiver would check it, so a site never sends
/// what its peers must refuse.
pub fn encode_frame(
    env: &Envelope,
    msg: &Message<'_>,
    out: &mut Vec<u8>,
    limits: &Limits,
) -> Result<usize, EncodeError> {
    validate(env, msg, limits).map_err(EncodeError::Invalid)?;
    encode_checked(env, msg, out, limits)
}

/// Encode a frame whose log records come from this site's own log, which
/// validated them when they were appended: every other check still runs,
/// but records are not checksummed and decoded a second time. A BULK_LOG
/// is checked for its size only (at most `max_bulk_bytes` of entries).
pub fn encode_frame_trusted(
    env: &Envelope,
    msg: &Message<'_>,
    out: &mut Vec<u8>,
    limits: &Limits,
) -> Result<usize, EncodeError> {
    match msg {
        Message::Log(e) | Message::Verify(e) if e.record.len() <= max_record_bytes(limits) => {}
        Message::Log(_) | Message::Verify(_) => {
            return Err(EncodeError::Invalid(DecodeError::LimitExceeded(
                "log record",
            )))
        }
        // The sender packed the entries itself from its own log: only the
        // size is checked here.
        Message::BulkLog(b) if b.bytes.len() <= limits.max_bulk_bytes as usize => {}
        Message::BulkLog(_) => {
            return Err(EncodeError::Invalid(DecodeError::LimitExceeded(
                "bulk message",
            )))
        }
        _ => validate(env, msg, limits).map_err(EncodeError::Invalid)?,
    }
    if env.flags.0 & !Flags::KNOWN != 0 {
        return Err(EncodeError::Invalid(DecodeError::UnknownFlags(env.flags.0)));
    }
    encode_checked(env, msg, out, limits)
}

fn encode_checked(
    env: &Envelope,
    msg: &Message<'_>,
    out: &mut Vec<u8>,
    limits: &Limits,
) -> Result<usize, EncodeError> {
    let start = out.len();
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    let mut buf = core::mem::take(out);
    // The Vec flavour fails only on allocation failure, which aborts.
    buf = postcard::to_extend(env, buf).unwrap_or_default();
    buf = postcard::to_extend(msg, buf).unwrap_or_default();
    *out = buf;
    let len = out.len().saturating_sub(start);
    if len > limits.max_frame as usize || out.len() < start + 2 {
        out.truncate(start);
        return Err(EncodeError::TooLarge {
            len,
            max: limits.max_frame as usize,
        });
    }
    Ok(len)
}

/// Decode and check one frame.
pub fn decode_frame<'a>(
    frame: &'a [u8],
    limits: &Limits,
) -> Result<(Envelope, Message<'a>), DecodeError> {
    if frame.len() > limits.max_frame as usize {
        return Err(DecodeError::TooLarge {
            len: frame.len(),
            max: limits.max_frame as usize,
        });
    }
    if frame.len() < 2 {
        return Err(DecodeError::Truncated);
    }
    let version = u16::from_le_bytes([frame[0], frame[1]]);
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::BadVersion { got: version });
    }
    let (env, rest) =
        postcard::take_from_bytes::<Envelope>(&frame[2..]).map_err(|_| DecodeError::Malformed)?;
    let (msg, rest) =
        postcard::take_from_bytes::<Message<'a>>(rest).map_err(|_| DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    validate(&env, &msg, limits)?;
    Ok((env, msg))
}

/// The length of the frame that follows a 4-byte stream prefix, checked
/// against the limit before the host allocates or reads anything more.
pub fn stream_frame_len(prefix: [u8; 4], limits: &Limits) -> Result<usize, DecodeError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > limits.max_frame as usize {
        return Err(DecodeError::TooLarge {
            len,
            max: limits.max_frame as usize,
        });
    }
    if len < 2 {
        return Err(DecodeError::Truncated);
    }
    Ok(len)
}

fn check_entry(e: &LogEntry<'_>, limits: &Limits) -> Result<(), DecodeError> {
    if e.record.len() > max_record_bytes(limits) {
        return Err(DecodeError::LimitExceeded("log record"));
    }
    let view = RecordView::parse(e.record, e.lsn, limits).map_err(DecodeError::BadRecord)?;
    if view.bytes.len() != e.record.len() {
        return Err(DecodeError::BadRecord(crate::log::RecordError::BadBody));
    }
    // A record whose body does not decode would be refused by the log
    // writer and dropped by recovery: refuse it at the door.
    view.decode(limits).map_err(DecodeError::BadRecord)?;
    Ok(())
}

/// The largest snapshot page a PAGE message may carry: the answer cap
/// (`Limits::max_answer_bytes`), but never so large that the frame would
/// not fit in `Limits::max_frame` with [`FRAME_OVERHEAD`] to spare.
pub fn max_page_bytes(limits: &Limits) -> usize {
    (limits.max_answer_bytes as usize)
        .min((limits.max_frame as usize).saturating_sub(FRAME_OVERHEAD))
}

/// The most bytes of entries a BULK_LOG sent to a site with these limits
/// may carry: `Limits::max_bulk_bytes`, but never so many that the frame
/// would not fit in `Limits::max_frame` with [`FRAME_OVERHEAD`] to spare.
/// A site announces it in its log requests, and sends no larger bulks.
pub fn max_bulk_bytes(limits: &Limits) -> usize {
    (limits.max_bulk_bytes as usize).min((limits.max_frame as usize).saturating_sub(FRAME_OVERHEAD))
}

/// The most bytes of records (or snapshot pages) a site with these limits
/// takes in answer to one of its requests (R13): its own
/// `Limits::max_answer_bytes`, but at most a quarter of its
/// `Limits::max_inqueue_bytes`. A requester asks for the next part as soon
/// as LOG_MORE (or PAGE_MORE) arrives, ahead of the answer's records, so
/// two answers may be in its host's incoming queue at once, besides the
/// live traffic and each frame's overhead: a quarter leaves room for all
/// of it. A site announces it in its requests ([`RequesterLimits`]), and
/// the answerer stops each answer at the smaller of it and its own
/// `max_answer_bytes` (at least one record or page).
pub fn max_answer_take(limits: &Limits) -> usize {
    (limits.max_answer_bytes as usize).min(limits.max_inqueue_bytes as usize / 4)
}

/// The largest log record, header included, a LOG, VERIFY or BULK_LOG
/// entry may carry to a site with these limits (`Limits::max_record` of
/// body). `Limits::validate` makes sure a LOG of it fits `max_frame`.
pub fn max_record_bytes(limits: &Limits) -> usize {
    limits.max_record as usize + RECORD_HEADER_LEN
}

fn check_str(s: &str, max: usize, what: &'static str) -> Result<(), DecodeError> {
    if s.len() > max {
        Err(DecodeError::LimitExceeded(what))
    } else {
        Ok(())
    }
}

/// Check a message against the limits, as a receiver must.
pub fn validate(env: &Envelope, msg: &Message<'_>, limits: &Limits) -> Result<(), DecodeError> {
    if env.flags.0 & !Flags::KNOWN != 0 {
        return Err(DecodeError::UnknownFlags(env.flags.0));
    }
    let db = |s: &str| check_str(s, caps::MAX_DB_NAME, "database name");
    match msg {
        Message::Log(e) | Message::Verify(e) => check_entry(e, limits)?,
        Message::BulkLog(b) => {
            if b.bytes.len() > limits.max_bulk_bytes as usize + FRAME_OVERHEAD {
                return Err(DecodeError::LimitExceeded("bulk message"));
            }
            let mut it = b.entries();
            for e in &mut it {
                check_entry(&e.map_err(|_| DecodeError::Malformed)?, limits)?;
            }
            if it.remainder() != 0 {
                return Err(DecodeError::TrailingBytes(it.remainder()));
            }
        }
        Message::Update(u) => {
            if u.databases.len() > limits.max_databases as usize {
                return Err(DecodeError::LimitExceeded("database count"));
            }
            for d in &u.databases {
                db(d.name)?;
            }
        }
        Message::LogReq { limits: r, .. }
        | Message::AllReq { limits: r, .. }
        | Message::UpdateReq { limits: r } => {
            if let Some(what) = r.below_minimum() {
                return Err(DecodeError::BelowMinimum(what));
            }
        }
        Message::PageReq { db: d, .. }
        | Message::PageMore { db: d, .. }
        | Message::PageFail { db: d, .. } => db(d)?,
        Message::Page(p) => {
            db(p.db)?;
            if p.data.len() > max_page_bytes(limits) {
                return Err(DecodeError::LimitExceeded("page"));
            }
        }
        Message::Handshake(h) => {
            check_str(h.group, caps::MAX_GROUP_NAME, "group name")?;
            check_str(h.address, caps::MAX_ADDRESS, "site address")?;
            if h.nonce.len() > MAX_HANDSHAKE_NONCE {
                return Err(DecodeError::LimitExceeded("handshake nonce"));
            }
        }
        Message::HandshakeProof { mac } if mac.len() > MAX_HANDSHAKE_MAC => {
            return Err(DecodeError::LimitExceeded("handshake proof"));
        }
        Message::JoinReq(j) => check_str(j.address, caps::MAX_ADDRESS, "site address")?,
        Message::JoinAnswer(a) => {
            if a.members.len() > limits.max_sites as usize {
                return Err(DecodeError::LimitExceeded("member count"));
            }
            for m in &a.members {
                check_str(m.address, caps::MAX_ADDRESS, "site address")?;
            }
        }
        Message::ChannelMsg(c) => {
            let total: usize = c.parts.iter().map(|p| p.len()).sum();
            if total > limits.max_channel_message as usize {
                return Err(DecodeError::LimitExceeded("channel message"));
            }
        }
        Message::ChannelResponse { part, .. }
            if part.len() > limits.max_channel_message as usize =>
        {
            return Err(DecodeError::LimitExceeded("channel response"));
        }
        Message::ForwardWrite(w) => w.op.check(limits).map_err(DecodeError::BadRecord)?,
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
        Envelope {
            from: SiteId(1),
            generation: Generation(2),
            egen: ElectionGen(3),
            lsn: Lsn::new(1, 20),
            flags: Flags::PERMANENT,
        }
    }

    #[test]
    fn frame_round_trips() {
        let l = Limits::default();
        let mut out = Vec::new();
        let msg = Message::Ack {
            lsn: Lsn::new(4, 99),
        };
        encode_frame(&env(), &msg, &mut out, &l).unwrap();
        let (e, m) = decode_frame(&out, &l).unwrap();
        assert_eq!(e, env());
        assert_eq!(m, msg);
    }

    #[test]
    fn other_versions_and_trailing_bytes_are_refused() {
        let l = Limits::default();
        let mut out = Vec::new();
        encode_frame(&env(), &Message::Heartbeat, &mut out, &l).unwrap();
        for other in [PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1] {
            let mut f = out.clone();
            f[..2].copy_from_slice(&other.to_le_bytes());
            assert_eq!(
                decode_frame(&f, &l),
                Err(DecodeError::BadVersion { got: other })
            );
        }
        out.push(0);
        assert_eq!(decode_frame(&out, &l), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn oversized_channel_message_is_refused_both_ways() {
        let l = Limits::default();
        let big = alloc::vec![7u8; l.max_channel_message as usize + 1];
        let mut parts = heapless::Vec::new();
        parts.push(&big[..]).unwrap();
        let msg = Message::ChannelMsg(ChannelMsg { request: 1, parts });
        let mut out = Vec::new();
        assert!(matches!(
            encode_frame(&env(), &msg, &mut out, &l),
            Err(EncodeError::Invalid(DecodeError::LimitExceeded(_)))
        ));
        assert!(out.is_empty());
    }
}
