//! The metadata record: the few values a site must keep durable apart from
//! the log (its id, generation, election generation and vote), replaced
//! atomically by [`Storage::write_meta`](crate::traits::Storage::write_meta).
//!
//! Layout: version byte (1), CRC-32C of the body (u32 LE), postcard body.

use crate::ids::{ElectionGen, Generation, SiteId};
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// Metadata format version.
pub const META_VERSION: u8 = 1;

/// The durable state of a site outside its log.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    /// This site's id (zero until it has one).
    pub site: SiteId,
    /// The highest master generation this site has seen.
    pub generation: Generation,
    /// The highest election generation this site has entered (E1): made
    /// durable before it votes.
    pub egen: ElectionGen,
    /// The site this site gave its VOTE2 to in election `egen`, if any.
    pub voted_for: Option<SiteId>,
    /// An internal initialisation was under way (S6): on restart it is
    /// cleaned up, never used half-applied.
    pub init_in_progress: bool,
}

/// Why a metadata record could not be read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MetaError {
    /// Shorter than its header.
    Truncated,
    /// A version this build does not know.
    BadVersion(u8),
    /// Checksum mismatch.
    BadChecksum,
    /// Body does not decode.
    BadBody,
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaError::Truncated => write!(f, "metadata record truncated"),
            MetaError::BadVersion(v) => write!(f, "unknown metadata version {v}"),
            MetaError::BadChecksum => write!(f, "metadata checksum mismatch"),
            MetaError::BadBody => write!(f, "metadata body does not decode"),
        }
    }
}

impl Meta {
    /// Encode.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.push(META_VERSION);
        out.extend_from_slice(&[0; 4]);
        // A Vec flavour cannot fail but on allocation, which aborts.
        out = postcard::to_extend(self, out).unwrap_or_default();
        let crc = crate::crc::checksum(out.get(5..).unwrap_or(&[]));
        if out.len() >= 5 {
            out[1..5].copy_from_slice(&crc.to_le_bytes());
        }
        out
    }

    /// Decode and check.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetaError> {
        if bytes.len() < 5 {
            return Err(MetaError::Truncated);
        }
        if bytes[0] != META_VERSION {
            return Err(MetaError::BadVersion(bytes[0]));
        }
        let crc = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        if crc != crate::crc::checksum(&bytes[5..]) {
            return Err(MetaError::BadChecksum);
        }
        match postcard::take_from_bytes::<Meta>(&bytes[5..]) {
            Ok((m, [])) => Ok(m),
            _ => Err(MetaError::BadBody),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_detects_corruption() {
        let m = Meta {
            site: SiteId(3),
            generation: Generation(9),
            egen: ElectionGen(11),
            voted_for: Some(SiteId(2)),
            init_in_progress: true,
        };
        let mut b = m.encode();
        assert_eq!(Meta::decode(&b), Ok(m));
        let last = b.len() - 1;
        b[last] ^= 1;
        assert_eq!(Meta::decode(&b), Err(MetaError::BadChecksum));
        assert_eq!(Meta::decode(&b[..3]), Err(MetaError::Truncated));
    }
}
