//! What a [`Site`](super::Site) asks of its host: frames to send, log
//! flushes, events for the application and answers to its calls.

use crate::ids::{CommitToken, Lsn, SiteId};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Where a frame goes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Dest {
    /// A member of the group.
    Site(SiteId),
    /// A site known only by address (a joiner, or a helper we join through).
    Address(String),
}

/// One thing the host must do, in order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Output {
    /// Send a frame.
    Send {
        /// Recipient.
        to: Dest,
        /// The encoded frame.
        frame: Vec<u8>,
        /// The site waits on an answer to this frame with nothing else in
        /// flight (a lone commit's record, a client's ack): the host
        /// should write it at once rather than hold it back to batch it
        /// with later frames. A host that does not batch can ignore it.
        urgent: bool,
    },
    /// Make the log durable up to and including the record at `lsn`, then
    /// call [`Site::handle_flushed`](super::Site::handle_flushed). Requests
    /// only grow; one flush may answer many.
    Flush {
        /// Highest LSN that must be durable.
        lsn: Lsn,
    },
    /// Tell the application something (R6). Delivered in order.
    Event(Event),
    /// The answer to an application call.
    Answer(Answer),
    /// A channel message for the application's dispatch (W2): hand it over
    /// and, when it asks for a response, answer with
    /// [`Site::channel_respond`](super::Site::channel_respond).
    Message(super::Incoming),
}

/// Application events (R6), in the order they happen.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// A (new) master is known.
    NewMaster(SiteId),
    /// This site became a client.
    Client,
    /// This site became master.
    Master,
    /// This site won an election.
    Elected,
    /// Another master was found; this site stepped down.
    DupMaster,
    /// A client caught up with the master after synchronising.
    StartupDone,
    /// A commit could not get the acks its policy asks for.
    PermFailed(Lsn),
    /// A client has no log overlap with the master and may not initialise
    /// (AUTOINIT off, S7), or cannot (the master's snapshot is above
    /// `max_init_bytes`); its data is left as it was.
    JoinFailure,
    /// Internal initialisation finished (S6): the master's snapshot is
    /// installed, durable, and the client has caught up from it. Raised
    /// once per initialisation, before STARTUPDONE.
    InitDone,
    /// A connection to a site opened.
    ConnectEstablished(SiteId),
    /// A connection to a site broke.
    ConnectBroken(SiteId),
    /// Connecting to a site failed.
    ConnectTryFailed(SiteId),
    /// A site joined the group.
    SiteAdded(SiteId),
    /// A site left the group.
    SiteRemoved(SiteId),
    /// This site was removed from the group.
    LocalSiteRemoved,
    /// The master stopped answering.
    MasterFailure,
    /// An election did not produce a master.
    ElectionFailed,
    /// Incoming messages were dropped because the queue was full.
    InqueueFull,
    /// Synchronising would roll back commits and AUTOROLLBACK is off.
    WouldRollback,
    /// Commits were rolled back to match the master (P2).
    Rollback(Rollback),
}

/// What a rollback removed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Rollback {
    /// The log was cut at this LSN.
    pub from: Lsn,
    /// Every commit removed (their tokens), oldest first.
    pub commits: Vec<CommitToken>,
}

/// An application request, as numbered by the site.
pub type RequestId = u64;

/// Answers to application calls that finish later.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Answer {
    /// A commit finished.
    Commit {
        /// The request.
        id: RequestId,
        /// Its outcome.
        result: Result<CommitOutcome, CommitError>,
    },
    /// A `txn_applied` wait finished.
    TxnApplied {
        /// The request.
        id: RequestId,
        /// Its outcome.
        result: Result<(), WaitError>,
    },
    /// A join finished.
    Join {
        /// Ok with the new site id, or why not.
        result: Result<SiteId, JoinError>,
    },
    /// A remove finished.
    Remove {
        /// The request.
        id: RequestId,
        /// Its outcome.
        result: Result<(), CommitError>,
    },
    /// A channel request finished (W2): the response part, or why none
    /// came.
    Channel {
        /// The request.
        id: RequestId,
        /// Its outcome.
        result: Result<Vec<u8>, super::ChannelRequestError>,
    },
}

/// What a commit achieved (R4, R5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CommitOutcome {
    /// Token for read-your-writes on any site.
    pub token: CommitToken,
    /// The ack policy was met: the commit survives any election the
    /// configuration promises to survive.
    pub permanent: bool,
    /// Acks received from other sites.
    pub acks: u32,
    /// Acks the policy needed.
    pub needed: u32,
    /// The record is durable on this site's disk.
    pub flushed: bool,
    /// The write was made on this client and committed by the master
    /// (W1).
    pub forwarded: bool,
}

/// Why a commit was refused or did not finish.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CommitError {
    /// This site is not master (and forwarding is off or impossible).
    NotMaster(Option<SiteId>),
    /// An operation is above the limits, or the transaction is empty.
    Invalid(crate::log::RecordError),
    /// Too many commits already wait for acks or a flush.
    Busy,
    /// The site lost mastership before the commit was logged.
    Unavailable,
    /// The log's storage failed.
    Storage,
    /// Leases are on and this master lacks a majority of grants (R10).
    LeaseExpired,
    /// Forwarding is on, but only a single put or delete outside a
    /// transaction is forwarded (W1).
    NotForwardable,
    /// The master does not take forwarded writes (W1).
    ForwardDisabled,
    /// The master refused or could not finish the forwarded write: it lost
    /// mastership, its lease expired, it was busy, or the commit was rolled
    /// back before reaching this site (W1). Not committed.
    ForwardFailed,
    /// No answer from the master within the write-forward timeout: the
    /// write may or may not have been committed (W1).
    ForwardTimeout,
    /// This site is a view (R12): it never becomes master.
    View,
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitError::NotMaster(Some(m)) => {
                write!(f, "this site is not the master; the master is {m}")
            }
            CommitError::NotMaster(None) => {
                write!(f, "this site is not the master, and no master is known")
            }
            CommitError::Invalid(e) => write!(f, "invalid transaction: {e}"),
            CommitError::Busy => write!(f, "too many commits in flight; retry"),
            CommitError::Unavailable => write!(f, "the site lost mastership"),
            CommitError::Storage => write!(f, "the log storage failed"),
            CommitError::LeaseExpired => write!(
                f,
                "this master's lease has expired (no majority of grants): refused rather than risk a write a newer master replaces"
            ),
            CommitError::NotForwardable => write!(
                f,
                "a client forwards only a single put or delete, not a transaction: commit transactions on the master"
            ),
            CommitError::ForwardDisabled => write!(
                f,
                "the master does not take forwarded writes: turn forward-writes on at every site of the group"
            ),
            CommitError::ForwardFailed => write!(
                f,
                "the master could not commit the forwarded write (it lost mastership, its lease expired or it was busy); it was not committed, retry"
            ),
            CommitError::ForwardTimeout => write!(
                f,
                "the master did not answer the forwarded write in time; it may or may not have been committed"
            ),
            CommitError::View => write!(
                f,
                "this site is a view: it replicates but never becomes master (start it as a client, or without view)"
            ),
        }
    }
}

/// Why a `txn_applied` wait ended without the commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WaitError {
    /// Not applied within the timeout.
    Timeout,
    /// The commit was rolled back (a newer generation replaced it).
    RolledBack,
    /// Too many waiters.
    Busy,
}

/// Why a join failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum JoinError {
    /// The group is full.
    GroupFull,
    /// No answer from the helper or master in time.
    Timeout,
    /// The master could not make the change durable.
    Unavailable,
}

/// Why a frame from a peer was not used. Counted, never fatal.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Drop {
    /// It did not decode.
    Malformed(crate::wire::DecodeError),
    /// From an older generation.
    Stale,
    /// Not meaningful in this site's role.
    WrongRole,
    /// From a site that is not a member.
    UnknownSite,
    /// A duplicate or out-of-window record.
    Duplicate,
    /// The early-record buffer is full.
    PendingFull,
    /// Not asked for, or of no use in this site's state: an UPDATE, PAGE,
    /// PAGE_MORE or PAGE_FAIL outside the phase of an internal
    /// initialisation (S6) that expects it.
    Unexpected,
    /// An initialisation message that does not fit the snapshot being
    /// fetched (S6): an unknown database, a page out of range, an UPDATE
    /// that does not describe a usable snapshot, or pages that do not
    /// decode to the snapshot announced.
    BadInit,
}
