//! Authenticated sites (B4): the group key, the nonces and the proofs of
//! the connection handshake.
//!
//! Every site of a group that has a key holds the same secret (the *group
//! key*, read from `--group-key-file`). When a connection opens, each side
//! sends a HANDSHAKE carrying a fresh random nonce; then each side sends a
//! HANDSHAKE_PROOF whose MAC is
//!
//! ```text
//! HMAC-SHA256(key, "shoal handshake proof" || role
//!                  || u32 LE len(D) || D || u32 LE len(L) || L)
//! ```
//!
//! where `role` is one byte, `01` for the proof of the site that opened the
//! connection (the dialer) and `02` for the proof of the site that accepted
//! it (the listener), `D` is the dialer's HANDSHAKE frame and `L` the
//! listener's, each exactly as sent (protocol version, envelope and
//! message, without the stream's length prefix). The frames carry the
//! group name, both addresses, both site ids and both nonces, so a proof
//! holds for one connection and one direction only: a proof replayed on
//! another connection (other nonces) or reflected back to its sender
//! (other role) does not check. The key itself never travels. See
//! `core/FORMAT.md`, "Authenticated sites".

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::path::Path;

/// Fewest bytes a group key may have.
pub const MIN_KEY_BYTES: usize = 16;
/// Most bytes a group key file may hold.
pub const MAX_KEY_BYTES: usize = 4096;
/// Bytes of the nonce this site sends in its handshakes.
pub const NONCE_BYTES: usize = 32;
/// Fewest nonce bytes accepted from a peer.
pub const MIN_NONCE_BYTES: usize = 16;

const LABEL: &[u8] = b"shoal handshake proof";

/// Which side of a connection a proof comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// The site that opened the connection.
    Dialer = 1,
    /// The site that accepted it.
    Listener = 2,
}

/// The secret every site of a group shares. Its `Debug` shows no byte of
/// it, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupKey(Vec<u8>);

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupKey(<{} bytes, hidden>)", self.0.len())
    }
}

impl GroupKey {
    /// A key from its bytes: at least [`MIN_KEY_BYTES`].
    pub fn new(bytes: &[u8]) -> Result<GroupKey, String> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "a group key needs at least {MIN_KEY_BYTES} bytes, this one has {}",
                bytes.len()
            ));
        }
        if bytes.len() > MAX_KEY_BYTES {
            return Err(format!(
                "a group key has at most {MAX_KEY_BYTES} bytes, this one has {}",
                bytes.len()
            ));
        }
        Ok(GroupKey(bytes.to_vec()))
    }

    /// Read a key file: its bytes, less one trailing newline (`\n` or
    /// `\r\n`), are the key; at least [`MIN_KEY_BYTES`] of them. Every
    /// error says what to do.
    pub fn from_file(path: &Path) -> Result<GroupKey, String> {
        let meta = std::fs::metadata(path).map_err(|e| {
            format!(
                "cannot read the group key file {}: {e}; create one with `shoal keygen {}` \
                 and copy it to every site of the group",
                path.display(),
                path.display()
            )
        })?;
        if !meta.is_file() {
            return Err(format!(
                "the group key file {} is not a file; give --group-key-file a file made by \
                 `shoal keygen FILE`",
                path.display()
            ));
        }
        if meta.len() > MAX_KEY_BYTES as u64 + 2 {
            return Err(format!(
                "the group key file {} is {} bytes, more than a key ({MAX_KEY_BYTES} bytes at \
                 most); is it the right file? `shoal keygen FILE` writes one",
                path.display(),
                meta.len()
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "cannot read the group key file {}: {e}; check its permissions",
                path.display()
            )
        })?;
        let key = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(&bytes);
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the group key file {} holds {} bytes; a key needs at least {MIN_KEY_BYTES}: \
                 create one with `shoal keygen {}` and copy it to every site of the group",
                path.display(),
                key.len(),
                path.display()
            ));
        }
        GroupKey::new(key).map_err(|e| format!("the group key file {}: {e}", path.display()))
    }

    /// A fresh random key as a key file's contents: 32 random bytes as 64
    /// lower-case hex digits and a newline.
    pub fn generate_file_text() -> Result<String, String> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)
            .map_err(|e| format!("the operating system gave no random bytes: {e}"))?;
        let mut s: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        s.push('\n');
        Ok(s)
    }

    /// Write a fresh key to `path`, readable by its owner only (mode 0600
    /// on Unix). An existing file is left alone unless `force`.
    pub fn write_new_file(path: &Path, force: bool) -> Result<(), String> {
        use std::io::Write;
        let text = Self::generate_file_text()?;
        let mut o = std::fs::OpenOptions::new();
        o.write(true);
        if force {
            o.create(true).truncate(true);
        } else {
            o.create_new(true);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let mut f = o.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "{} exists already; keep it (every site needs the same key) or pass --force \
                     to replace it",
                    path.display()
                )
            } else {
                format!("cannot create {}: {e}", path.display())
            }
        })?;
        #[cfg(unix)]
        {
            // `mode` applies only to a file it creates.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("cannot restrict {} to its owner: {e}", path.display()))?;
        }
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    fn mac(&self, role: Role, dialer: &[u8], listener: &[u8]) -> Hmac<Sha256> {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        m.update(LABEL);
        m.update(&[role as u8]);
        m.update(&(dialer.len() as u32).to_le_bytes());
        m.update(dialer);
        m.update(&(listener.len() as u32).to_le_bytes());
        m.update(listener);
        m
    }

    /// The proof `role` sends on the connection whose handshakes were
    /// `dialer` and `listener` (frames as sent).
    pub fn proof(&self, role: Role, dialer: &[u8], listener: &[u8]) -> [u8; 32] {
        self.mac(role, dialer, listener)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `mac` is `role`'s proof for these handshakes, compared in
    /// constant time.
    pub fn verify(&self, role: Role, dialer: &[u8], listener: &[u8], mac: &[u8]) -> bool {
        self.mac(role, dialer, listener).verify_slice(mac).is_ok()
    }
}

/// A fresh random nonce for a handshake.
pub fn nonce() -> [u8; NONCE_BYTES] {
    let mut n = [0u8; NONCE_BYTES];
    if let Err(e) = getrandom::fill(&mut n) {
        // Without the OS's randomness a nonce could repeat; there is no
        // safe way on.
        panic!("the operating system gave no random bytes for a handshake nonce: {e}");
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> GroupKey {
        GroupKey::new(&[b; 32]).unwrap()
    }

    #[test]
    fn a_proof_holds_for_one_key_role_and_pair_of_handshakes() {
        let k = key(1);
        let p = k.proof(Role::Dialer, b"dialer", b"listener");
        assert!(k.verify(Role::Dialer, b"dialer", b"listener", &p));
        assert!(!k.verify(Role::Listener, b"dialer", b"listener", &p));
        assert!(!k.verify(Role::Dialer, b"listener", b"dialer", &p));
        assert!(!k.verify(Role::Dialer, b"dialer", b"listener2", &p));
        assert!(!key(2).verify(Role::Dialer, b"dialer", b"listener", &p));
        assert!(!k.verify(Role::Dialer, b"dialer", b"listener", &p[..31]));
        assert!(!k.verify(Role::Dialer, b"dialer", b"listener", &[]));
        // The lengths keep the boundary between the frames.
        assert_ne!(
            k.proof(Role::Dialer, b"ab", b"c"),
            k.proof(Role::Dialer, b"a", b"bc")
        );
    }

    #[test]
    fn the_proof_is_the_documented_hmac() {
        // HMAC-SHA256 with key 16 x 0x0b over the documented message,
        // computed independently (Python's hmac module).
        let k = GroupKey::new(&[0x0b; 16]).unwrap();
        let p = k.proof(Role::Listener, &[0x04, 0x00], &[0x04, 0x00, 0x01]);
        let hex: String = p.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, EXPECTED_LISTENER_PROOF);
    }

    const EXPECTED_LISTENER_PROOF: &str =
        "f3d7c1a44ef03810bbf86626caa5aa371af6afe75fcc362b909632c0936cf82e";

    #[test]
    fn key_files_are_checked_and_their_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("group.key");
        GroupKey::write_new_file(&p, false).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        let k = GroupKey::from_file(&p).unwrap();
        assert_eq!(k, GroupKey::new(text.trim_end().as_bytes()).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never overwritten by accident.
        let e = GroupKey::write_new_file(&p, false).unwrap_err();
        assert!(e.contains("exists already"), "{e}");
        GroupKey::write_new_file(&p, true).unwrap();
        assert_ne!(std::fs::read_to_string(&p).unwrap(), text);
        // Debug output shows no key byte.
        let shown = format!("{k:?}");
        assert!(!shown.contains(&text[..8]), "{shown}");

        std::fs::write(&p, "short\n").unwrap();
        let e = GroupKey::from_file(&p).unwrap_err();
        assert!(
            e.contains("at least 16") && e.contains("shoal keygen"),
            "{e}"
        );
        std::fs::write(&p, "0123456789abcdef\r\n").unwrap();
        assert_eq!(
            GroupKey::from_file(&p).unwrap(),
            GroupKey::new(b"0123456789abcdef").unwrap()
        );
        let e = GroupKey::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(
            e.contains("cannot read") && e.contains("shoal keygen"),
            "{e}"
        );
        let e = GroupKey::from_file(dir.path()).unwrap_err();
        assert!(e.contains("not a file"), "{e}");
        std::fs::write(&p, vec![b'x'; MAX_KEY_BYTES + 10]).unwrap();
        let e = GroupKey::from_file(&p).unwrap_err();
        assert!(e.contains("right file"), "{e}");
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
    }
}
