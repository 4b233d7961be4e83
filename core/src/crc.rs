//! CRC-32C (Castagnoli), the checksum of log records, segment headers,
//! snapshots and the metadata record.
//!
//! Without std (devices, wasm) a slice-by-16 table (16 KiB, in read-only
//! memory) does the work, about ten times faster than a byte at a time.
//! With the `std` feature (the native host) the `crc32c` crate uses the
//! CPU's CRC-32C instruction where there is one (SSE 4.2, ARMv8 CRC),
//! several times faster again: the checksum is the hot spot of every
//! append, recovery scan and record a catching-up client applies. Both
//! compute the same function; the tests hold them to each other.

use ::crc::{Crc, Table, CRC_32_ISCSI};

/// The table-driven implementation (CRC-32C, as iSCSI and ext4 use it).
pub const CASTAGNOLI: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISCSI);

/// A running CRC-32C over several byte strings.
pub struct Digest {
    #[cfg(feature = "std")]
    value: u32,
    #[cfg(not(feature = "std"))]
    inner: ::crc::Digest<'static, u32, Table<16>>,
}

impl Digest {
    /// Feed more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        #[cfg(feature = "std")]
        {
            self.value = crc32c::crc32c_append(self.value, bytes);
        }
        #[cfg(not(feature = "std"))]
        self.inner.update(bytes);
    }

    /// The checksum of everything fed.
    pub fn finalize(self) -> u32 {
        #[cfg(feature = "std")]
        {
            self.value
        }
        #[cfg(not(feature = "std"))]
        self.inner.finalize()
    }
}

impl core::fmt::Debug for Digest {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("crc::Digest")
    }
}

/// A running CRC-32C.
pub fn digest() -> Digest {
    Digest {
        #[cfg(feature = "std")]
        value: 0,
        #[cfg(not(feature = "std"))]
        inner: CASTAGNOLI.digest(),
    }
}

/// CRC-32C of one byte string.
pub fn checksum(bytes: &[u8]) -> u32 {
    #[cfg(feature = "std")]
    {
        crc32c::crc32c(bytes)
    }
    #[cfg(not(feature = "std"))]
    CASTAGNOLI.checksum(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standard check value of CRC-32C.
    #[test]
    fn check_value() {
        assert_eq!(checksum(b"123456789"), 0xe306_9283);
    }

    /// Whichever implementation is built agrees with the table, for whole
    /// strings and for strings fed in pieces of every length.
    #[test]
    fn agrees_with_the_table_in_one_piece_and_in_many() {
        let data: alloc::vec::Vec<u8> = (0..1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [0, 1, 7, 15, 16, 17, 63, 64, 65, 255, 1024] {
            let s = &data[..len];
            assert_eq!(checksum(s), CASTAGNOLI.checksum(s), "len {len}");
            for cut in [0, 1.min(len), len / 3, len / 2, len.saturating_sub(1), len] {
                let mut d = digest();
                d.update(&s[..cut]);
                d.update(&s[cut..]);
                assert_eq!(d.finalize(), CASTAGNOLI.checksum(s), "len {len}, cut {cut}");
            }
        }
    }
}
