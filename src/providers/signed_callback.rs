//! What checking a signed callback shares across providers: reading its headers, and refusing a
//! timestamp too far from now (a replayed callback). Each adapter checks its own signature scheme.

use reqwest::header::HeaderMap;

use super::CallbackRefused;

/// A signed callback's timestamp may be this far from now.
pub const TOLERANCE_SECS: i64 = 300;

/// A header's value, trimmed; `None` when absent or not text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The callback's timestamp (Unix seconds), when it is a number within [`TOLERANCE_SECS`] of `now`.
pub fn timestamp(text: &str, now: i64) -> Result<i64, CallbackRefused> {
    let seconds: i64 = text.parse().map_err(|_| CallbackRefused("The callback timestamp is not a number."))?;
    if (now - seconds).abs() > TOLERANCE_SECS {
        return Err(CallbackRefused("The callback timestamp is too far from now."));
    }
    Ok(seconds)
}

/// The Standard-Webhooks-shaped headers of a signed callback (Replicate, WaveSpeed, backend nodes):
/// `(webhook-id, webhook-timestamp, webhook-signature)`, with a fresh timestamp.
pub fn webhook_headers(headers: &HeaderMap) -> Result<(String, i64, String), CallbackRefused> {
    let (Some(id), Some(sent), Some(signature)) =
        (header(headers, "webhook-id"), header(headers, "webhook-timestamp"), header(headers, "webhook-signature"))
    else {
        return Err(CallbackRefused("The callback is not signed."));
    };
    let seconds = timestamp(sent, chrono::Utc::now().timestamp())?;
    Ok((id.to_owned(), seconds, signature.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_accepted_within_five_minutes_either_way() {
        let now = 1_700_000_000;
        for seconds in [now, now - 300, now + 300] {
            assert_eq!(timestamp(&seconds.to_string(), now).ok(), Some(seconds));
        }
        for seconds in [now - 301, now + 301, 0] {
            let refused = timestamp(&seconds.to_string(), now).expect_err("stale");
            assert_eq!(refused.0, "The callback timestamp is too far from now.");
        }
        for text in ["", "soon", "1.5", "17e8"] {
            assert_eq!(timestamp(text, now).expect_err("not a number").0, "The callback timestamp is not a number.");
        }
    }

    #[test]
    fn webhook_headers_need_all_three() {
        let now = chrono::Utc::now().timestamp().to_string();
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().expect("header"));
        headers.insert("webhook-timestamp", format!(" {now} ").parse().expect("header"));
        assert_eq!(webhook_headers(&headers).expect_err("unsigned").0, "The callback is not signed.");
        headers.insert("webhook-signature", "v1,abc".parse().expect("header"));
        let (id, seconds, signature) = webhook_headers(&headers).expect("signed");
        assert_eq!((id.as_str(), seconds.to_string(), signature.as_str()), ("msg_1", now, "v1,abc"));
    }
}
