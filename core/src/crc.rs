//! CRC-32C (Castagnoli), the checksum of log records, segment headers and
//! the metadata record.

use ::crc::{Crc, Digest, CRC_32_ISCSI};

/// The one CRC algorithm shoal uses (CRC-32C, as iSCSI and ext4 use it).
pub const CASTAGNOLI: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// A running CRC-32C.
pub fn digest() -> Digest<'static, u32> {
    CASTAGNOLI.digest()
}

/// CRC-32C of one byte string.
pub fn checksum(bytes: &[u8]) -> u32 {
    CASTAGNOLI.checksum(bytes)
}
