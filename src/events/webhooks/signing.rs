//! Webhook secrets and the `Polpo-Signature` header (spec §8.2).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::{hex, random_base62};

/// `whsec_` + 32 base62 characters.
pub fn generate_secret() -> Result<String, getrandom::Error> {
    Ok(format!("whsec_{}", random_base62(32)?))
}

/// The `Polpo-Signature` value: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed
/// with the whole secret's bytes.
pub fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm cannot be reached.
        Err(_) => return format!("t={t},v1="),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("t={t},v1={}", hex(&digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_signature_test_vector_checks_out() {
        let body = r#"{"id":"evt_1042","event":"task:transition","timestamp":"2026-01-01T00:00:00.000Z","data":{"taskId":"task_01jz","from":"review","to":"done"}}"#;
        assert_eq!(
            sign("whsec_9fK2LmQ8rT4vX1bN7cZ3pD6sH0jW5yAe", 1_767_225_600, body),
            "t=1767225600,v1=a83931b5466963fc2070c376ca0a0692977ffacf63aa067ff6c56a57f5c0d519"
        );
    }
}
