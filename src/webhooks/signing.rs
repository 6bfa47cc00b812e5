//! Standard Webhooks signatures (v1, HMAC-SHA256): `v1,` + base64(HMAC(key, "{id}.{timestamp}.{body}")),
//! where the key is the base64-decoded part of the `whsec_…` secret. During a secret rotation the
//! header carries one signature per active secret, space-separated.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// A new secret: `whsec_` + base64 of 32 random bytes.
pub fn generate_secret() -> String {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    format!("{PREFIX}{}", BASE64.encode(key))
}

/// The HMAC key of a `whsec_…` secret. Our secrets always decode; a secret that does not (edited by
/// hand) is used as raw bytes, as the reference libraries do for an unprefixed key.
fn key(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix(PREFIX).unwrap_or(secret);
    BASE64.decode(encoded).unwrap_or_else(|_| secret.as_bytes().to_vec())
}

/// The `webhook-signature` header value: one `v1,…` per secret, space-separated, in the given order.
pub fn signature_header(secrets: &[&str], webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|secret| sign(secret, webhook_id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

fn sign(secret: &str, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key(secret)).expect("HMAC takes keys of any length");
    mac.update(webhook_id.as_bytes());
    mac.update(format!(".{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification and its reference libraries.
    #[test]
    fn reproduces_the_published_test_vector() {
        let header = signature_header(
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn one_signature_per_secret_in_order() {
        let (new, old) = (generate_secret(), generate_secret());
        let header = signature_header(&[&new, &old], "msg_1", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts, [sign(&new, "msg_1", 1, b"{}"), sign(&old, "msg_1", 1, b"{}")]);
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn secrets_are_whsec_and_32_random_bytes() {
        let secret = generate_secret();
        assert!(secret.starts_with("whsec_"), "{secret}");
        assert_eq!(BASE64.decode(&secret[6..]).expect("base64").len(), 32);
        assert_ne!(secret, generate_secret());
    }
}
