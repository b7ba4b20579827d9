//! Stripe top-ups, the pure part: webhook signature verification, the few fields of a
//! webhook event that billing acts on, the records the billing store keeps, and how a
//! refund turns into reversed credits.
//!
//! Nothing here trusts an event's metadata: an event only ever names Stripe objects
//! (a checkout session, a payment intent, a customer), and the host maps those to a
//! tenant through what it stored itself when it created the session.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::id::TenantId;

/// How far a signed timestamp may be from now, either way, before the event is refused
/// (Stripe's libraries use the same five minutes).
pub const DEFAULT_TOLERANCE: chrono::Duration = chrono::Duration::seconds(300);

/// Why a `Stripe-Signature` header does not vouch for a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is missing pieces or is not `t=…,v1=…` pairs.
    #[error("malformed stripe-signature header")]
    Malformed,
    /// The header carries no `v1` signature.
    #[error("stripe-signature header has no v1 signature")]
    NoSignature,
    /// The signed timestamp is further from now than the tolerance.
    #[error("signature timestamp is outside the tolerance ({skew_seconds}s from now)")]
    OutsideTolerance {
        /// Signed time minus now, in seconds (negative: in the past).
        skew_seconds: i64,
    },
    /// No `v1` signature matches the payload under the secret.
    #[error("no signature matches the payload")]
    Mismatch,
}

/// Checks a `Stripe-Signature` header (`t=<unix seconds>,v1=<hex>[,v1=<hex>…]`) for the
/// raw `payload`: some `v1` value must be HMAC-SHA256 of `"{t}.{payload}"` under
/// `secret` (compared in constant time), and `t` must lie within `tolerance` of `now`
/// in either direction. Other schemes (`v0`) are ignored, as Stripe's libraries do.
pub fn verify_signature(
    header: &str,
    payload: &[u8],
    secret: &str,
    now: DateTime<Utc>,
    tolerance: chrono::Duration,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for pair in header.split(',') {
        let (key, value) = pair.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match key {
            "t" if timestamp.is_none() => {
                timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?);
            }
            "t" => return Err(SignatureError::Malformed),
            // A value that is not hex cannot match; skip it rather than refuse the rest.
            "v1" => signatures.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoSignature);
    }
    let skew_seconds = timestamp.saturating_sub(now.timestamp());
    if skew_seconds.unsigned_abs() > tolerance.num_seconds().unsigned_abs() {
        return Err(SignatureError::OutsideTolerance { skew_seconds });
    }
    let mac = signed_mac(secret, timestamp, payload);
    // `verify_slice` compares in constant time.
    if signatures.iter().any(|candidate| mac.clone().verify_slice(candidate).is_ok()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The header Stripe would send for `payload` signed at `timestamp` (unix seconds).
/// Used by tests and local tooling that play Stripe's part.
pub fn signature_header(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    let signature = signed_mac(secret, timestamp, payload).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(signature))
}

fn signed_mac(secret: &str, timestamp: i64, payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

/// Why a webhook body is not an event billing can read.
#[derive(Debug, thiserror::Error)]
#[error("invalid stripe event: {0}")]
pub struct EventError(#[from] serde_json::Error);

/// A webhook event, reduced to what billing acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeEvent {
    /// `evt_…`, unique per event (redeliveries repeat it).
    pub id: String,
    /// The event type, e.g. `checkout.session.completed`.
    pub kind: String,
    /// What happened.
    pub action: EventAction,
}

/// What an event asks billing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventAction {
    /// A checkout session finished (`checkout.session.completed`, paid or awaiting an
    /// asynchronous payment) or its delayed payment arrived
    /// (`checkout.session.async_payment_succeeded`).
    Checkout(CheckoutCompletion),
    /// A charge was refunded, wholly or in part (`charge.refunded`).
    Refund(ChargeRefund),
    /// Any other event: acknowledged, recorded, not acted on.
    Ignored,
}

/// The checkout session named by a completion event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutCompletion {
    /// `cs_…`.
    pub session_id: String,
    /// The customer the session charged, if any.
    pub customer: Option<String>,
    /// The payment intent (`pi_…`), which refunds name through their charge.
    pub payment_intent: Option<String>,
    /// Whether the money has arrived (`payment_status` is `paid` or `no_payment_required`).
    pub paid: bool,
}

/// A charge's refund state, as one `charge.refunded` event reports it. Amounts are
/// cumulative, so events for one charge can be applied in any order by keeping the
/// largest `amount_refunded` seen.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChargeRefund {
    /// `ch_…`.
    #[serde(rename = "id")]
    pub charge_id: String,
    /// The payment intent the charge belongs to, which links it to a checkout session.
    pub payment_intent: Option<String>,
    /// The customer charged, if any.
    pub customer: Option<String>,
    /// The charged amount, in the currency's smallest unit.
    pub amount: i64,
    /// The total refunded so far, in the currency's smallest unit.
    pub amount_refunded: i64,
}

#[derive(Deserialize)]
struct RawEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: RawData,
}

#[derive(Deserialize)]
struct RawData {
    object: serde_json::Value,
}

#[derive(Deserialize)]
struct RawSession {
    id: String,
    customer: Option<String>,
    payment_intent: Option<String>,
    payment_status: String,
}

impl StripeEvent {
    /// Reads an event from a (verified) webhook body.
    pub fn parse(payload: &[u8]) -> Result<Self, EventError> {
        let raw: RawEvent = serde_json::from_slice(payload)?;
        let action = match raw.kind.as_str() {
            "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
                let session: RawSession = serde_json::from_value(raw.data.object)?;
                EventAction::Checkout(CheckoutCompletion {
                    paid: matches!(session.payment_status.as_str(), "paid" | "no_payment_required"),
                    session_id: session.id,
                    customer: session.customer,
                    payment_intent: session.payment_intent,
                })
            }
            "charge.refunded" => EventAction::Refund(serde_json::from_value(raw.data.object)?),
            _ => EventAction::Ignored,
        };
        Ok(Self { id: raw.id, kind: raw.kind, action })
    }
}

/// A checkout session Maestro created, and what has been credited for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutRecord {
    /// Stripe's id, `cs_…`.
    pub id: String,
    /// The tenant that asked for it.
    pub tenant_id: TenantId,
    /// The configured pack it sells.
    pub pack: String,
    /// Credits it grants once paid.
    pub credits: i64,
    /// Price in the currency's smallest unit.
    pub amount: i64,
    /// Three-letter currency code, lowercase.
    pub currency: String,
    /// Whether payment has been confirmed (then the credits are granted).
    pub paid: bool,
    /// The payment intent, once a completion event named it.
    pub payment_intent: Option<String>,
    /// Credits taken back for refunds so far (claimed; see
    /// [`crate::ports::BillingStore::claim_reversal`]).
    pub reversed_credits: i64,
    /// The value of `reversed_credits` before the latest claim, so that the latest
    /// reversal can be re-posted (idempotently) after a crash.
    pub reversed_from: i64,
    /// When the session was created.
    pub created_at: DateTime<Utc>,
}

/// A webhook event that has been processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessedEvent {
    /// `evt_…`.
    pub id: String,
    /// Its type.
    pub kind: String,
    /// When it was processed.
    pub received_at: DateTime<Utc>,
    /// What was done, e.g. `granted`, `reversed`, `ignored`, `unknown_session`.
    pub outcome: String,
}

/// Credits to take back for a charge of `amount` of which `refunded` has been refunded,
/// when the purchase granted `credits`: proportional, rounded down (a refund never takes
/// back more than it paid for), all of them once the charge is fully refunded.
pub fn credits_to_reverse(credits: i64, amount: i64, refunded: i64) -> i64 {
    if refunded <= 0 || amount <= 0 || credits <= 0 {
        return 0;
    }
    if refunded >= amount {
        return credits;
    }
    let share = i128::from(credits) * i128::from(refunded) / i128::from(amount);
    i64::try_from(share).expect("a share of credits is at most credits")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).expect("valid time")
    }

    #[test]
    fn accepts_a_signature_made_the_way_stripe_makes_it() {
        let header = signature_header(SECRET, 1_700_000_000, b"{\"id\":\"evt_1\"}");
        assert!(header.starts_with("t=1700000000,v1="));
        verify_signature(&header, b"{\"id\":\"evt_1\"}", SECRET, at(1_700_000_000), DEFAULT_TOLERANCE).expect("valid");
    }

    #[test]
    fn matches_a_known_vector() {
        // Python: hmac.new(b"whsec_test", b"1700000000.hello", hashlib.sha256).hexdigest()
        let expected = "457c4d31b232d95fcd50f1d95021aaaffddd859d0ee8a206675e84ccc977431d";
        assert_eq!(signature_header(SECRET, 1_700_000_000, b"hello"), format!("t=1700000000,v1={expected}"));
    }

    #[test]
    fn accepts_any_of_several_v1_values_and_ignores_v0() {
        let good = signature_header(SECRET, 100, b"body");
        let good_sig = good.split_once("v1=").expect("v1").1;
        let header = format!("t=100,v0=abcd,v1={},v1={good_sig}", "00".repeat(32));
        verify_signature(&header, b"body", SECRET, at(100), DEFAULT_TOLERANCE).expect("second v1 matches");
    }

    #[test]
    fn rejects_modified_body_wrong_secret_and_bad_headers() {
        let header = signature_header(SECRET, 100, b"body");
        let now = at(100);
        assert_eq!(verify_signature(&header, b"bodY", SECRET, now, DEFAULT_TOLERANCE), Err(SignatureError::Mismatch));
        assert_eq!(
            verify_signature(&header, b"body", "whsec_other", now, DEFAULT_TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        for bad in ["", "t=100", "v1=00", "t=abc,v1=00", "t=1,t=1,v1=00", "garbage"] {
            assert!(verify_signature(bad, b"body", SECRET, now, DEFAULT_TOLERANCE).is_err(), "{bad}");
        }
        assert_eq!(
            verify_signature("t=100,v1=zz", b"body", SECRET, now, DEFAULT_TOLERANCE),
            Err(SignatureError::NoSignature)
        );
    }

    #[test]
    fn rejects_stale_and_future_timestamps_at_the_tolerance_edge() {
        let header = signature_header(SECRET, 1_000, b"body");
        for (now, ok) in [(1_300, true), (1_301, false), (700, true), (699, false)] {
            let result = verify_signature(&header, b"body", SECRET, at(now), DEFAULT_TOLERANCE);
            assert_eq!(result.is_ok(), ok, "now={now}: {result:?}");
        }
    }

    #[test]
    fn parses_the_events_billing_acts_on() {
        let completed = br#"{"id":"evt_1","type":"checkout.session.completed","data":{"object":{"id":"cs_1","object":"checkout.session","customer":"cus_1","payment_intent":"pi_1","payment_status":"paid","metadata":{"tenant":"evil"}}}}"#;
        let event = StripeEvent::parse(completed).expect("parses");
        assert_eq!(event.id, "evt_1");
        assert_eq!(
            event.action,
            EventAction::Checkout(CheckoutCompletion {
                session_id: "cs_1".into(),
                customer: Some("cus_1".into()),
                payment_intent: Some("pi_1".into()),
                paid: true,
            })
        );
        let unpaid = br#"{"id":"evt_2","type":"checkout.session.completed","data":{"object":{"id":"cs_1","customer":null,"payment_intent":null,"payment_status":"unpaid"}}}"#;
        assert!(matches!(StripeEvent::parse(unpaid).expect("parses").action, EventAction::Checkout(c) if !c.paid));
        let refunded = br#"{"id":"evt_3","type":"charge.refunded","data":{"object":{"id":"ch_1","amount":1000,"amount_refunded":250,"payment_intent":"pi_1","customer":"cus_1"}}}"#;
        assert!(
            matches!(StripeEvent::parse(refunded).expect("parses").action, EventAction::Refund(r) if r.amount_refunded == 250)
        );
        let other = br#"{"id":"evt_4","type":"invoice.paid","data":{"object":{}}}"#;
        assert_eq!(StripeEvent::parse(other).expect("parses").action, EventAction::Ignored);
        assert!(StripeEvent::parse(b"not json").is_err());
    }

    #[test]
    fn refunds_reverse_a_proportional_share_rounded_down() {
        assert_eq!(credits_to_reverse(1000, 500, 0), 0);
        assert_eq!(credits_to_reverse(1000, 500, 250), 500);
        assert_eq!(credits_to_reverse(1000, 300, 100), 333);
        assert_eq!(credits_to_reverse(1000, 300, 300), 1000);
        assert_eq!(credits_to_reverse(1000, 300, 400), 1000);
        assert_eq!(credits_to_reverse(i64::MAX, i64::MAX, i64::MAX - 1), i64::MAX - 1);
    }
}
