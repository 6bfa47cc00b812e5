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
    format!("v1,{}", BASE64.encode(mac(&key(secret), webhook_id, timestamp, body).finalize().into_bytes()))
}

/// HMAC-SHA256 over the Standard Webhooks signed content `{id}.{timestamp}.{body}`, with raw key bytes.
/// Providers with look-alike schemes (WaveSpeed: raw key, hex) use it with their own encoding.
fn mac(key: &[u8], webhook_id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(webhook_id.as_bytes());
    mac.update(format!(".{timestamp}.").as_bytes());
    mac.update(body);
    mac
}

/// Whether `signature` is the HMAC-SHA256 of `{id}.{timestamp}.{body}` under the raw `key` (constant time).
pub fn verify_digest(key: &[u8], webhook_id: &str, timestamp: i64, body: &[u8], signature: &[u8]) -> bool {
    mac(key, webhook_id, timestamp, body).verify_slice(signature).is_ok()
}

/// Whether a Standard Webhooks `webhook-signature` header (space-separated `v1,<base64>` entries)
/// holds a valid signature by the `whsec_…` `secret` (constant-time comparison per entry).
pub fn verify(secret: &str, webhook_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let key = key(secret);
    header.split_whitespace().filter_map(|entry| entry.strip_prefix("v1,")).any(|signature| {
        BASE64.decode(signature).is_ok_and(|signature| verify_digest(&key, webhook_id, timestamp, body, &signature))
    })
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
    fn verifies_the_published_test_vector_and_refuses_changes() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let (id, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", br#"{"test": 2432232314}"#);
        let header = "v1,bm9ldHZhbGlk v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(verify(secret, id, 1614265330, body, header));
        assert!(!verify(secret, id, 1614265331, body, header));
        assert!(!verify(secret, id, 1614265330, br#"{"test": 2432232315}"#, header));
        assert!(!verify(&generate_secret(), id, 1614265330, body, header));
        assert!(!verify(secret, id, 1614265330, body, "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
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
