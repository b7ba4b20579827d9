//! Tool arguments as they may appear in logs: values under secret-sounding keys, and
//! strings that look like credentials, are replaced.

use serde_json::Value;

const REDACTED: &str = "[redacted]";
const SECRET_KEYS: &[&str] =
    &["pass", "secret", "token", "key", "auth", "credential", "cookie", "session", "signature", "private"];

/// `value` with secret-looking parts replaced by `[redacted]`.
pub(super) fn redacted(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = k.to_ascii_lowercase();
                    let secret = SECRET_KEYS.iter().any(|s| key.contains(s));
                    (k.clone(), if secret { Value::String(REDACTED.into()) } else { redacted(v) })
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        Value::String(s) if looks_like_credential(s) => Value::String(REDACTED.into()),
        other => other.clone(),
    }
}

/// Bearer/basic headers, well-known key prefixes, JWTs, PEM blocks, URLs with a
/// password, and long unbroken runs of key-like characters.
fn looks_like_credential(s: &str) -> bool {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    if lower.starts_with("bearer ") || lower.starts_with("basic ") || t.contains("-----BEGIN") {
        return true;
    }
    const PREFIXES: &[&str] = &["mk_", "sk_", "sk-", "pk_", "rk_", "ghp_", "gho_", "github_pat_", "xox", "AKIA", "eyJ"];
    if PREFIXES.iter().any(|p| t.starts_with(p)) && t.len() >= 16 {
        return true;
    }
    if let Some((_, rest)) = t.split_once("://")
        && let Some((userinfo, _)) = rest.split_once('@')
        && userinfo.contains(':')
        && !userinfo.contains('/')
    {
        return true;
    }
    let keyish = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '/' | '=' | '.');
    t.len() >= 32
        && t.chars().all(keyish)
        && t.chars().any(|c| c.is_ascii_digit())
        && t.chars().any(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::redacted;

    #[test]
    fn secret_keys_and_credential_values_are_redacted() {
        let args = json!({
            "query": "weather in Paris",
            "api_key": "abc",
            "headers": { "Authorization": "Bearer xyz", "accept": "text/html" },
            "nested": [{ "password": 1 }, "mk_0123456789abcdefghijABCDEF", "plain words here"],
            "url": "https://user:hunter2@example.com/x",
            "digest": "3f786850e387550fdab836ed7e6dc881de23001b3f786850e387",
            "n": 42,
        });
        assert_eq!(
            redacted(&args),
            json!({
                "query": "weather in Paris",
                "api_key": "[redacted]",
                "headers": { "Authorization": "[redacted]", "accept": "text/html" },
                "nested": [{ "password": "[redacted]" }, "[redacted]", "plain words here"],
                "url": "[redacted]",
                "digest": "[redacted]",
                "n": 42,
            })
        );
    }
}
