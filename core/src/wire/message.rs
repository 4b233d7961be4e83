//! Every message sites exchange. The postcard variant index of [`Message`]
//! is the message type on the wire: variants are only ever appended, never
//! reordered (FORMAT.md lists them).
//!
//! Messages borrow their byte and string payloads from the frame, so
//! decoding never copies or allocates; lists have fixed capacities from
//! [`caps`].

use crate::config::caps;
use crate::ids::{CommitToken, Generation, Instant, Lsn, SiteId};
use crate::log::Op;
use heapless::Vec as HVec;
use serde::{Deserialize, Serialize};

/// One log record as shipped: where it lives, the record before it (so a
/// client can tell a segment switch from a gap), and its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LogEntry<'a> {
    /// LSN of the record.
    pub lsn: Lsn,
    /// LSN of the record before it (zero if none).
    pub prev: Lsn,
    /// The encoded record (header and body).
    #[serde(with = "serde_bytes")]
    pub record: &'a [u8],
}

/// Several log entries in one message (R11): `count` postcard-encoded
/// [`LogEntry`] values back to back, read with [`BulkLog::entries`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BulkLog<'a> {
    /// Number of entries.
    pub count: u32,
    /// The encoded entries.
    #[serde(with = "serde_bytes")]
    pub bytes: &'a [u8],
}

impl<'a> BulkLog<'a> {
    /// The entries, decoded one at a time.
    pub fn entries(&self) -> BulkIter<'a> {
        BulkIter {
            left: self.count,
            rest: self.bytes,
        }
    }
}

/// Iterator over a [`BulkLog`]'s entries; yields `Err(())` once for a
/// malformed entry and then stops.
pub struct BulkIter<'a> {
    left: u32,
    rest: &'a [u8],
}

impl BulkIter<'_> {
    /// Bytes left after the entries read so far.
    pub fn remainder(&self) -> usize {
        self.rest.len()
    }
}

impl<'a> Iterator for BulkIter<'a> {
    type Item = Result<LogEntry<'a>, ()>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        match postcard::take_from_bytes::<LogEntry<'a>>(self.rest) {
            Ok((e, rest)) => {
                self.rest = rest;
                Some(Ok(e))
            }
            Err(_) => {
                self.left = 0;
                Some(Err(()))
            }
        }
    }
}

/// What the sender of a log or snapshot request (LOG_REQ, ALL_REQ,
/// UPDATE_REQ) takes: the limits of its own that an answer must respect,
/// which may be far smaller than the answerer's (a device under a server
/// master, S3, S6, R2, R11). Built by [`RequesterLimits::of`]; a request
/// announcing a value below [`RequesterLimits::MIN`] does not decode
/// ([`DecodeError::BelowMinimum`](crate::wire::DecodeError::BelowMinimum)).
/// Values above the answerer's own limits are served at its own.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RequesterLimits {
    /// The most bytes of records (or snapshot pages) one answer may carry
    /// before LOG_MORE / PAGE_MORE, at least one record or page:
    /// [`max_answer_take`](crate::wire::max_answer_take), its own
    /// `max_answer_bytes` but at most a quarter of its `max_inqueue_bytes`,
    /// so an answer and the next part asked for ahead of it fit its host's
    /// incoming queue with room to spare.
    pub answer_bytes: u32,
    /// The largest BULK_LOG payload (bytes of entries):
    /// [`max_bulk_bytes`](crate::wire::max_bulk_bytes).
    pub bulk_bytes: u32,
    /// The largest log record, header included:
    /// [`max_record_bytes`](crate::wire::max_record_bytes). A record above
    /// it is not sent: the requester would refuse it in any frame.
    pub record_bytes: u32,
    /// The largest snapshot page:
    /// [`max_page_bytes`](crate::wire::max_page_bytes).
    pub page_bytes: u32,
    /// Its `Limits::max_key`: a record with a longer key is not sent.
    pub max_key: u32,
    /// Its `Limits::max_value`: a record with a longer value is not sent.
    pub max_value: u32,
    /// Its `Limits::max_txn_ops`: a commit of more operations is not sent.
    pub max_txn_ops: u32,
}

impl RequesterLimits {
    /// The smallest value each field may announce, in field order: 64
    /// bytes for the sizes ([`MIN_BULK_BYTES`](crate::wire::MIN_BULK_BYTES),
    /// [`MIN_PAGE_BYTES`](crate::wire::MIN_PAGE_BYTES)), 1 for the body
    /// limits (`Limits::validate` refuses zero). No valid site announces
    /// less, and no peer can make a site cut its answers into pieces of a
    /// few bytes.
    pub const MIN: RequesterLimits = RequesterLimits {
        answer_bytes: crate::wire::MIN_BULK_BYTES,
        bulk_bytes: crate::wire::MIN_BULK_BYTES,
        record_bytes: crate::wire::MIN_BULK_BYTES,
        page_bytes: crate::wire::MIN_PAGE_BYTES,
        max_key: 1,
        max_value: 1,
        max_txn_ops: 1,
    };

    /// What a site with these limits takes.
    pub fn of(limits: &crate::config::Limits) -> RequesterLimits {
        let size = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        RequesterLimits {
            answer_bytes: size(crate::wire::max_answer_take(limits)),
            bulk_bytes: size(crate::wire::max_bulk_bytes(limits)),
            record_bytes: size(crate::wire::max_record_bytes(limits)),
            page_bytes: size(crate::wire::max_page_bytes(limits)),
            max_key: limits.max_key,
            max_value: limits.max_value,
            max_txn_ops: limits.max_txn_ops,
        }
    }

    /// The first field below [`RequesterLimits::MIN`], by name.
    pub fn below_minimum(&self) -> Option<&'static str> {
        let m = Self::MIN;
        [
            (self.answer_bytes, m.answer_bytes, "answer size"),
            (self.bulk_bytes, m.bulk_bytes, "bulk size"),
            (self.record_bytes, m.record_bytes, "record size"),
            (self.page_bytes, m.page_bytes, "page size"),
            (self.max_key, m.max_key, "key size"),
            (self.max_value, m.max_value, "value size"),
            (self.max_txn_ops, m.max_txn_ops, "operation count"),
        ]
        .into_iter()
        .find(|(v, min, _)| v < min)
        .map(|(_, _, what)| what)
    }
}

/// First-phase vote (E1): what a site knows, so every site can rank it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Vote1 {
    /// Generation of the site's last log record.
    pub data_generation: Generation,
    /// The site's last LSN.
    pub last_lsn: Lsn,
    /// Its election priority (0 = cannot win).
    pub priority: u32,
    /// Random tie-breaker.
    pub tiebreaker: u32,
    /// The nsites it is electing with.
    pub nsites: u32,
    /// The nvotes it is electing with.
    pub nvotes: u32,
}

/// A database in an internal initialisation (S6).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DbSummary<'a> {
    /// Database name.
    pub name: &'a str,
    /// Pages the snapshot of it has.
    pub pages: u32,
}

/// Start of an internal initialisation: the first LSN the client needs
/// after the snapshot, and the databases the snapshot holds.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Update<'a> {
    /// The client's log restarts here (first record of a segment).
    pub first_lsn: Lsn,
    /// The snapshot reflects every record up to and including this LSN.
    pub snapshot_lsn: Lsn,
    /// The databases and their page counts.
    #[serde(borrow)]
    pub databases: HVec<DbSummary<'a>, { caps::MAX_DATABASES }>,
}

/// One snapshot page of a database.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Page<'a> {
    /// Database name.
    pub db: &'a str,
    /// Page number.
    pub page: u32,
    /// The page's bytes.
    #[serde(with = "serde_bytes")]
    pub data: &'a [u8],
}

/// The first message each side sends on a new connection: who is calling,
/// and, in a group with a key, the fresh nonce its proof will cover (B4).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Handshake<'a> {
    /// Group name; a site of another group is refused.
    pub group: &'a str,
    /// The caller's listening address.
    pub address: &'a str,
    /// The caller's site id (zero if it has none yet).
    pub site: SiteId,
    /// A fresh random nonce (16 to 64 bytes; shoal sends 32) when the
    /// sender has a group key, empty when it has none. Both sides' nonces
    /// are covered by the [`Message::HandshakeProof`] each side sends next.
    #[serde(with = "serde_bytes")]
    pub nonce: &'a [u8],
}

/// A request to join the group (R7), sent to a helper site.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct JoinReq<'a> {
    /// The joiner's listening address.
    pub address: &'a str,
    /// Its priority.
    pub priority: u32,
    /// Whether it is a view (R12).
    pub view: bool,
}

/// One member of the group.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Member<'a> {
    /// Its id.
    pub site: SiteId,
    /// Its address.
    pub address: &'a str,
    /// Membership flags (see `log::Membership`).
    pub flags: u8,
}

/// How a join request ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum JoinResult {
    /// Joined; `site` is the new id.
    Accepted,
    /// The helper is not master; ask the master (if known).
    NotMaster(Option<SiteId>),
    /// The group is at `max_sites`.
    GroupFull,
    /// The membership change could not be made durable in time.
    Unavailable,
}

/// The answer to a join request.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct JoinAnswer<'a> {
    /// Outcome.
    pub result: JoinResult,
    /// The joiner's new id (when accepted).
    pub site: SiteId,
    /// The whole membership (when accepted).
    #[serde(borrow)]
    pub members: HVec<Member<'a>, { caps::MAX_SITES }>,
}

/// How a remove request ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum RemoveResult {
    /// Removed.
    Removed,
    /// Not the master; ask it.
    NotMaster(Option<SiteId>),
    /// No such site.
    UnknownSite,
    /// Could not be made durable in time.
    Unavailable,
}

/// An application message on a channel (W2).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChannelMsg<'a> {
    /// Request id to answer with; zero for `send_msg` (no response).
    pub request: u64,
    /// The message parts.
    #[serde(borrow)]
    pub parts: HVec<&'a [u8], { caps::MAX_CHANNEL_PARTS }>,
}

/// Why a channel request failed at the receiving site.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ChannelError {
    /// The site has no dispatch callback.
    NoDispatch,
    /// The dispatch callback did not answer.
    NoResponse,
    /// The message was above the receiver's limits.
    TooLarge,
    /// The site is not the master (for a channel to "the master").
    NotMaster,
}

/// A write forwarded from a client to the master (W1).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ForwardWrite<'a> {
    /// Request id, echoed in the answer.
    pub request: u64,
    /// The put or delete.
    #[serde(borrow)]
    pub op: Op<'a>,
}

/// How a forwarded write ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ForwardResult {
    /// Committed: the token lets the client wait until it has applied it;
    /// `permanent`, `acks` and `needed` say what the master's commit
    /// achieved under its ack policy (R5), as a local commit's answer does.
    Committed {
        /// Where the commit's record is.
        token: CommitToken,
        /// The ack policy was met.
        permanent: bool,
        /// Acks the master received.
        acks: u32,
        /// Acks the policy needed.
        needed: u32,
    },
    /// The receiver is not the master.
    NotMaster,
    /// Forwarding is off at the master.
    Disabled,
    /// The write is above the master's limits.
    TooLarge,
    /// The master could not commit it (lost mastership, lease, full).
    Failed,
}

/// Every message of the replication protocol. The variant index is the
/// wire type; see FORMAT.md for each message's meaning.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Message<'a> {
    /// 0: I am here (answers ALIVE_REQ; carries my egen in the envelope).
    Alive,
    /// 1: Are you there? (asks for ALIVE).
    AliveReq,
    /// 2: Send me every record from `from` on, within my limits.
    AllReq {
        /// First LSN wanted.
        from: Lsn,
        /// What the requester takes (see [`RequesterLimits`]).
        limits: RequesterLimits,
    },
    /// 3: One log record.
    #[serde(borrow)]
    Log(LogEntry<'a>),
    /// 4: The answer cap was reached; ask again from `next`.
    LogMore {
        /// Where to continue.
        next: Lsn,
    },
    /// 5: Send me the records from `from` up to (not including) `to`; a
    /// zero `to` means "as many as you will send".
    LogReq {
        /// First LSN wanted.
        from: Lsn,
        /// End of the range, exclusive.
        to: Lsn,
        /// What the requester takes: the answer is cut to fit it
        /// (protocol version 6), so a client with smaller limits than its
        /// master's (a device) can catch up. See [`RequesterLimits`].
        limits: RequesterLimits,
    },
    /// 6: Several log records (R11).
    BulkLog(BulkLog<'a>),
    /// 7: Who is master?
    MasterReq,
    /// 8: I am a new client; masters answer NEWMASTER.
    NewClient,
    /// 9: A new site has appeared (answered like NEWCLIENT).
    NewSite,
    /// 10: I am master of the envelope's generation.
    NewMaster,
    /// 11: The master is alive.
    Heartbeat,
    /// 12: I have applied and flushed the PERMANENT record at `lsn`.
    Ack {
        /// The acknowledged LSN.
        lsn: Lsn,
    },
    /// 13: First-phase vote.
    Vote1(Vote1),
    /// 14: Second-phase vote for `candidate`.
    Vote2 {
        /// Who this vote is for.
        candidate: SiteId,
    },
    /// 15: Two masters exist: step down.
    DupMaster,
    /// 16: A client grants the master a lease from `master_time` (R10).
    LeaseGrant {
        /// The master's clock when it asked.
        master_time: Instant,
    },
    /// 17: Send me the record at `lsn` so I can compare (P2).
    VerifyReq {
        /// The LSN to compare.
        lsn: Lsn,
    },
    /// 18: The record asked for by VERIFY_REQ.
    Verify(LogEntry<'a>),
    /// 19: I have no record at `lsn` (too old): initialise instead.
    VerifyFail {
        /// The LSN asked for.
        lsn: Lsn,
    },
    /// 20: I cannot serve your request; ask again (S3).
    Rerequest {
        /// The first LSN that was asked for.
        lsn: Lsn,
    },
    /// 21: Start internal initialisation for me (S6), in pages and
    /// answers my limits take.
    UpdateReq {
        /// What the requester takes: the master serves it pages of at most
        /// `limits.page_bytes` and answers of at most
        /// `limits.answer_bytes` (protocol version 6). See
        /// [`RequesterLimits`].
        limits: RequesterLimits,
    },
    /// 22: The snapshot you will receive.
    Update(Update<'a>),
    /// 23: Send pages of `db` from `page` on.
    PageReq {
        /// Database name.
        db: &'a str,
        /// First page wanted.
        page: u32,
    },
    /// 24: One snapshot page.
    Page(Page<'a>),
    /// 25: The answer cap was reached; ask again from `next`.
    PageMore {
        /// Database name.
        db: &'a str,
        /// Next page to ask for.
        next: u32,
    },
    /// 26: I cannot send that page (snapshot gone).
    PageFail {
        /// Database name.
        db: &'a str,
        /// The page.
        page: u32,
    },
    /// 27: Synchronise from `lsn` (sent after NEWMASTER).
    StartSync {
        /// Where the master's log stands.
        lsn: Lsn,
    },
    /// 28: First message on a connection.
    Handshake(Handshake<'a>),
    /// 29: Let me join the group.
    JoinReq(JoinReq<'a>),
    /// 30: The answer to JOIN_REQ.
    JoinAnswer(JoinAnswer<'a>),
    /// 31: Remove this site from the group.
    RemoveReq {
        /// The site to remove.
        site: SiteId,
    },
    /// 32: The answer to REMOVE_REQ.
    RemoveAnswer {
        /// The site.
        site: SiteId,
        /// Outcome.
        result: RemoveResult,
    },
    /// 33: An application channel message (W2).
    ChannelMsg(ChannelMsg<'a>),
    /// 34: The response to a channel request.
    ChannelResponse {
        /// The request answered.
        request: u64,
        /// The single response part.
        #[serde(with = "serde_bytes")]
        part: &'a [u8],
    },
    /// 35: A channel request failed.
    ChannelFail {
        /// The request.
        request: u64,
        /// Why.
        error: ChannelError,
    },
    /// 36: A write forwarded by a client (W1).
    ForwardWrite(ForwardWrite<'a>),
    /// 37: The answer to a forwarded write.
    ForwardAnswer {
        /// The request answered.
        request: u64,
        /// Outcome.
        result: ForwardResult,
    },
    /// 38: The master asks for a lease grant, stamping its own clock
    /// (R10); clients answer LEASE_GRANT with the same stamp.
    LeaseReq {
        /// The master's clock when it asked.
        master_time: Instant,
    },
    /// 39: Planned switchover (E7): the master hands mastership to `to`,
    /// which holds an election it is set to win once it has the master's
    /// whole log (the envelope's LSN).
    TransferMaster {
        /// The site that is to become master.
        to: SiteId,
    },
    /// 40: Proof that the sender holds the group key (B4): an HMAC-SHA256
    /// over both handshakes of the connection (FORMAT.md, "Authenticated
    /// sites"). Sent only when both handshakes carry a nonce.
    HandshakeProof {
        /// The MAC (32 bytes for HMAC-SHA256; at most 64).
        #[serde(with = "serde_bytes")]
        mac: &'a [u8],
    },
}

/// Message types as plain values, for counters and logs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum MessageKind {
    Alive = 0,
    AliveReq,
    AllReq,
    Log,
    LogMore,
    LogReq,
    BulkLog,
    MasterReq,
    NewClient,
    NewSite,
    NewMaster,
    Heartbeat,
    Ack,
    Vote1,
    Vote2,
    DupMaster,
    LeaseGrant,
    VerifyReq,
    Verify,
    VerifyFail,
    Rerequest,
    UpdateReq,
    Update,
    PageReq,
    Page,
    PageMore,
    PageFail,
    StartSync,
    Handshake,
    JoinReq,
    JoinAnswer,
    RemoveReq,
    RemoveAnswer,
    ChannelMsg,
    ChannelResponse,
    ChannelFail,
    ForwardWrite,
    ForwardAnswer,
    LeaseReq,
    TransferMaster,
    HandshakeProof,
}

impl MessageKind {
    /// Number of message types.
    pub const COUNT: usize = 41;

    /// Every type, in wire order.
    pub const ALL: [MessageKind; Self::COUNT] = {
        use MessageKind::*;
        [
            Alive,
            AliveReq,
            AllReq,
            Log,
            LogMore,
            LogReq,
            BulkLog,
            MasterReq,
            NewClient,
            NewSite,
            NewMaster,
            Heartbeat,
            Ack,
            Vote1,
            Vote2,
            DupMaster,
            LeaseGrant,
            VerifyReq,
            Verify,
            VerifyFail,
            Rerequest,
            UpdateReq,
            Update,
            PageReq,
            Page,
            PageMore,
            PageFail,
            StartSync,
            Handshake,
            JoinReq,
            JoinAnswer,
            RemoveReq,
            RemoveAnswer,
            ChannelMsg,
            ChannelResponse,
            ChannelFail,
            ForwardWrite,
            ForwardAnswer,
            LeaseReq,
            TransferMaster,
            HandshakeProof,
        ]
    };

    /// The reference system's name for the type (ALIVE, LOG_REQ, ...).
    pub fn name(self) -> &'static str {
        use MessageKind::*;
        match self {
            Alive => "ALIVE",
            AliveReq => "ALIVE_REQ",
            AllReq => "ALL_REQ",
            Log => "LOG",
            LogMore => "LOG_MORE",
            LogReq => "LOG_REQ",
            BulkLog => "BULK_LOG",
            MasterReq => "MASTER_REQ",
            NewClient => "NEWCLIENT",
            NewSite => "NEWSITE",
            NewMaster => "NEWMASTER",
            Heartbeat => "HEARTBEAT",
            Ack => "ACK",
            Vote1 => "VOTE1",
            Vote2 => "VOTE2",
            DupMaster => "DUPMASTER",
            LeaseGrant => "LEASE_GRANT",
            VerifyReq => "VERIFY_REQ",
            Verify => "VERIFY",
            VerifyFail => "VERIFY_FAIL",
            Rerequest => "REREQUEST",
            UpdateReq => "UPDATE_REQ",
            Update => "UPDATE",
            PageReq => "PAGE_REQ",
            Page => "PAGE",
            PageMore => "PAGE_MORE",
            PageFail => "PAGE_FAIL",
            StartSync => "START_SYNC",
            Handshake => "HANDSHAKE",
            JoinReq => "JOIN_REQ",
            JoinAnswer => "JOIN_ANSWER",
            RemoveReq => "REMOVE_REQ",
            RemoveAnswer => "REMOVE_ANSWER",
            ChannelMsg => "CHANNEL_MSG",
            ChannelResponse => "CHANNEL_RESPONSE",
            ChannelFail => "CHANNEL_FAIL",
            ForwardWrite => "FORWARD_WRITE",
            ForwardAnswer => "FORWARD_ANSWER",
            LeaseReq => "LEASE_REQ",
            TransferMaster => "TRANSFER_MASTER",
            HandshakeProof => "HANDSHAKE_PROOF",
        }
    }
}

impl Message<'_> {
    /// This message's type.
    pub fn kind(&self) -> MessageKind {
        use Message as M;
        use MessageKind as K;
        match self {
            M::Alive => K::Alive,
            M::AliveReq => K::AliveReq,
            M::AllReq { .. } => K::AllReq,
            M::Log(_) => K::Log,
            M::LogMore { .. } => K::LogMore,
            M::LogReq { .. } => K::LogReq,
            M::BulkLog(_) => K::BulkLog,
            M::MasterReq => K::MasterReq,
            M::NewClient => K::NewClient,
            M::NewSite => K::NewSite,
            M::NewMaster => K::NewMaster,
            M::Heartbeat => K::Heartbeat,
            M::Ack { .. } => K::Ack,
            M::Vote1(_) => K::Vote1,
            M::Vote2 { .. } => K::Vote2,
            M::DupMaster => K::DupMaster,
            M::LeaseGrant { .. } => K::LeaseGrant,
            M::VerifyReq { .. } => K::VerifyReq,
            M::Verify(_) => K::Verify,
            M::VerifyFail { .. } => K::VerifyFail,
            M::Rerequest { .. } => K::Rerequest,
            M::UpdateReq { .. } => K::UpdateReq,
            M::Update(_) => K::Update,
            M::PageReq { .. } => K::PageReq,
            M::Page(_) => K::Page,
            M::PageMore { .. } => K::PageMore,
            M::PageFail { .. } => K::PageFail,
            M::StartSync { .. } => K::StartSync,
            M::Handshake(_) => K::Handshake,
            M::JoinReq(_) => K::JoinReq,
            M::JoinAnswer(_) => K::JoinAnswer,
            M::RemoveReq { .. } => K::RemoveReq,
            M::RemoveAnswer { .. } => K::RemoveAnswer,
            M::ChannelMsg(_) => K::ChannelMsg,
            M::ChannelResponse { .. } => K::ChannelResponse,
            M::ChannelFail { .. } => K::ChannelFail,
            M::ForwardWrite(_) => K::ForwardWrite,
            M::ForwardAnswer { .. } => K::ForwardAnswer,
            M::LeaseReq { .. } => K::LeaseReq,
            M::TransferMaster { .. } => K::TransferMaster,
            M::HandshakeProof { .. } => K::HandshakeProof,
        }
    }
}
