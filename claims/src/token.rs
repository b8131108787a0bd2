//! `--continue` tokens: where a cut `list` ended, so the next call starts after it.
//!
//! Opaque to the operator (kubectl's `continue` is too): base64url of a small JSON array
//! `[version, claimed_at in µs since the epoch, delivery, scope, namespace, orchestration]`.
//! It carries a position, not the filters: give the same filters with `--continue` (other
//! filters still work, they just page through a different selection from that position).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::DateTime;
use dedupe_store::claim::ClaimKey;
use dedupe_store::inspect::ListCursor;
use dedupe_store::ClaimScope;
use serde_json::{json, Value};

/// Bumped if the token's layout ever changes; older tokens are then refused by name.
const VERSION: u64 = 1;
/// Longer than any token this CLI prints (key parts are bounded by Kubernetes' name rules).
const MAX_TOKEN_LEN: usize = 2_048;

pub fn encode(cursor: &ListCursor) -> String {
    let k = &cursor.key;
    let value = json!([
        VERSION,
        cursor.claimed_at.timestamp_micros(),
        k.delivery_id,
        k.scope.as_str(),
        k.namespace,
        k.orchestration,
    ]);
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// For clap: the problem, worded for an operator who pasted the wrong thing.
pub fn parse(token: &str) -> Result<ListCursor, String> {
    decode(token).ok_or_else(|| {
        "not a continue token printed by `dedupe-claims list` (copy it whole, from the same version)"
            .to_owned()
    })
}

fn decode(token: &str) -> Option<ListCursor> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    let [version, micros, delivery, scope, namespace, orchestration] =
        <&[Value; 6]>::try_from(value.as_array()?.as_slice()).ok()?;
    if version.as_u64()? != VERSION {
        return None;
    }
    let claimed_at = DateTime::from_timestamp_micros(micros.as_i64()?)?;
    let delivery = delivery.as_str()?;
    dedupe_store::run::label_value_problem(delivery)
        .is_none()
        .then_some(())?;
    let scope = <ClaimScope as clap::ValueEnum>::from_str(scope.as_str()?, false).ok()?;
    Some(ListCursor {
        claimed_at,
        key: ClaimKey {
            delivery_id: delivery.to_owned(),
            scope,
            namespace: namespace.as_str()?.to_owned(),
            orchestration: orchestration.as_str()?.to_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_to_the_microsecond() {
        let cursor = ListCursor {
            claimed_at: DateTime::from_timestamp_micros(1_800_000_000_123_456).expect("a time"),
            key: ClaimKey::new(ClaimScope::Orchestration, "agents", "codex", "d-1"),
        };
        let token = encode(&cursor);
        assert!(
            token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{token}"
        );
        assert_eq!(parse(&token), Ok(cursor));
    }

    #[test]
    fn anything_else_is_refused() {
        let bad_delivery = URL_SAFE_NO_PAD.encode(r#"[1,0,"has space","cluster","",""]"#);
        let bad_version = URL_SAFE_NO_PAD.encode(r#"[2,0,"d","cluster","",""]"#);
        let bad_scope = URL_SAFE_NO_PAD.encode(r#"[1,0,"d","galaxy","",""]"#);
        for token in [
            "",
            "!!",
            "e30",
            &bad_delivery,
            &bad_version,
            &bad_scope,
            &"A".repeat(5000),
        ] {
            assert!(parse(token).is_err(), "{token}");
        }
    }
}
