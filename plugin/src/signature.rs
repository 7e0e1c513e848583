//! Verifies the `Heroku-Webhook-Hmac-SHA256` header: base64 of HMAC-SHA256 over the raw body,
//! keyed with the integration's webhook secret, compared in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header Heroku signs deliveries with.
pub const HEADER: &str = "Heroku-Webhook-Hmac-SHA256";

/// Why a signature was refused. Messages never include the expected or received MAC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the {HEADER} header is missing")]
    Missing,
    #[error("more than one {HEADER} header was sent")]
    Repeated,
    #[error("the {HEADER} header is not standard base64 of a 32-byte HMAC-SHA256")]
    NotBase64,
    #[error("the {HEADER} header does not match the body and the integration's secret")]
    Mismatch,
}

/// Finds the signature header among `headers`, ignoring the case of names. A repeated header
/// is refused rather than guessed at.
pub fn find<'a, I>(headers: I) -> Result<&'a str, SignatureError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut found = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(HEADER) {
            if found.is_some() {
                return Err(SignatureError::Repeated);
            }
            found = Some(value);
        }
    }
    found.ok_or(SignatureError::Missing)
}

/// Checks `signature` (the header's value) against `body` signed with `secret`.
pub fn verify(secret: &[u8], signature: &str, body: &[u8]) -> Result<(), SignatureError> {
    let mac_bytes = STANDARD
        .decode(signature.trim())
        .map_err(|_| SignatureError::NotBase64)?;
    if mac_bytes.len() != 32 {
        return Err(SignatureError::NotBase64);
    }

    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&mac_bytes)
        .map_err(|_| SignatureError::Mismatch)
}

/// Signs `body` the way Heroku does; for tests, fixtures and tools that replay deliveries.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret-123";
    const BODY: &str =
        r#"{"action":"update","resource":"release","data":{"status":"succeeded","current":true}}"#;
    const EXPECTED: &str = "Ic1Txq9396O+EtPi4lTs9PiOWAE1lxjnBnHJFC9tHbg=";

    #[test]
    fn reference_vector_signs_and_verifies() {
        assert_eq!(sign(SECRET, BODY.as_bytes()), EXPECTED);
        assert_eq!(verify(SECRET, EXPECTED, BODY.as_bytes()), Ok(()));
    }

    #[test]
    fn reserialized_json_is_refused() {
        let spaced = BODY.replace(':', ": ").replace(',', ", ");
        assert_eq!(
            verify(SECRET, EXPECTED, spaced.as_bytes()),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn hex_form_of_the_right_mac_is_refused() {
        let mac = STANDARD.decode(EXPECTED).unwrap();
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            verify(SECRET, &hex, BODY.as_bytes()),
            Err(SignatureError::NotBase64)
        );
    }

    #[test]
    fn wrong_secret_is_refused() {
        assert_eq!(
            verify(b"another-secret", EXPECTED, BODY.as_bytes()),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn unpadded_base64_is_refused() {
        let unpadded = EXPECTED.trim_end_matches('=');
        assert_eq!(
            verify(SECRET, unpadded, BODY.as_bytes()),
            Err(SignatureError::NotBase64)
        );
    }

    #[test]
    fn header_is_found_case_insensitively() {
        let headers = [
            ("content-type", "application/json"),
            ("heroku-webhook-hmac-sha256", "x"),
        ];
        assert_eq!(find(headers), Ok("x"));
    }

    #[test]
    fn missing_header_is_reported() {
        assert_eq!(
            find([("content-type", "application/json")]),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn repeated_header_is_refused() {
        let headers = [(HEADER, EXPECTED), ("HEROKU-WEBHOOK-HMAC-SHA256", EXPECTED)];
        assert_eq!(find(headers), Err(SignatureError::Repeated));
    }
}
