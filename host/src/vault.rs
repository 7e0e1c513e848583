//! Sealing credentials at rest: ChaCha20-Poly1305 with a 256-bit key from configuration or
//! generated into the data directory (mode 0600). The integration's name is bound into each
//! sealed value, so one integration's credentials cannot be moved to another.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

const NONCE_BYTES: usize = 12;

/// Why the key could not be had, or a sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the encryption key must be 32 bytes in standard base64")]
    BadKey,
    #[error("cannot read or write the encryption key file: {0}")]
    KeyFile(#[from] std::io::Error),
    #[error("stored credentials cannot be opened with this key (was the key changed?)")]
    Open,
}

/// Seals and opens credentials.
#[derive(Clone)]
pub struct Vault {
    cipher: ChaCha20Poly1305,
}

impl Vault {
    /// The key from `configured` (base64), else from `file`, created with a new random key
    /// when missing.
    pub fn open(configured: Option<&str>, file: &Path) -> Result<Vault, VaultError> {
        let key = match configured.filter(|key| !key.is_empty()) {
            Some(encoded) => decode_key(encoded)?,
            None => match std::fs::read_to_string(file) {
                Ok(encoded) => decode_key(encoded.trim())?,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    let mut key = [0u8; 32];
                    getrandom::fill(&mut key).expect("the operating system's random source works");
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut out = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(file)?;
                    out.write_all(STANDARD.encode(key).as_bytes())?;
                    out.sync_all()?;
                    key
                }
                Err(err) => return Err(err.into()),
            },
        };
        Ok(Vault {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// Seals `plaintext` for `integration`: a random nonce followed by the ciphertext.
    pub fn seal(&self, integration: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).expect("the operating system's random source works");
        let payload = Payload {
            msg: plaintext,
            aad: integration.as_bytes(),
        };
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .expect("sealing a short value cannot fail");
        [nonce.as_slice(), &sealed].concat()
    }

    /// Opens what `seal` made for the same integration.
    pub fn unseal(&self, integration: &str, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        if sealed.len() < NONCE_BYTES {
            return Err(VaultError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        let payload = Payload {
            msg: ciphertext,
            aad: integration.as_bytes(),
        };
        self.cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| VaultError::Open)
    }
}

fn decode_key(encoded: &str) -> Result<[u8; 32], VaultError> {
    STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or(VaultError::BadKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_integration_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        let vault = Vault::open(None, &file).unwrap();
        let sealed = vault.seal("acme", b"HRKU-secret-token");
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "sealed text is not readable"
        );
        assert_eq!(vault.unseal("acme", &sealed).unwrap(), b"HRKU-secret-token");
        assert!(vault.unseal("other", &sealed).is_err());

        let again = Vault::open(None, &file).unwrap();
        assert_eq!(again.unseal("acme", &sealed).unwrap(), b"HRKU-secret-token");
        let other = Vault::open(Some(&STANDARD.encode([7u8; 32])), &file).unwrap();
        assert!(other.unseal("acme", &sealed).is_err());

        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            Vault::open(Some("short"), &file),
            Err(VaultError::BadKey)
        ));
    }
}
