//! Top-up: credit packages bought through Stripe Checkout ([`orders`], [`events`] for Stripe's
//! webhooks) and redemption codes ([`codes`]). Credits move only through [`crate::ledger`], in the
//! same transaction as the order or code change that justifies them, so each payment or code grants
//! exactly once.

pub mod codes;
pub mod events;
pub mod orders;
pub mod stripe;

/// One movement of bought credits: a paid order or a redeemed code (positive), or what a refund or
/// dispute took back (negative).
#[derive(Debug, Clone)]
pub struct TopUp<'a> {
    pub account_id: i64,
    pub credits: i64,
    /// `order ord_…`, `code batch rcb_…`, `refund of order ord_…`.
    pub source: &'a str,
}

/// Where every top-up and reversal is recorded once it has committed: today a log line and a counter;
/// the audit log (issue 20) hooks in here.
pub fn record_top_up(top_up: &TopUp<'_>) {
    tracing::info!(account_id = top_up.account_id, credits = top_up.credits, source = top_up.source, "top-up");
    crate::monitoring::top_up(top_up.credits);
}
