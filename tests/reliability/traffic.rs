//! Every answer the test's clients and the fake upstream got from the gateways, for the final check
//! that the only 5xx were `503 unavailable` while PostgreSQL was down.

use std::sync::Mutex;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Exchange {
    pub what: &'static str,
    pub sent: Instant,
    pub answered: Instant,
    /// `None`: no HTTP answer (the gateway was killed or not up yet).
    pub status: Option<u16>,
    /// `error.code` of an error answer.
    pub code: Option<String>,
}

#[derive(Default)]
pub struct Traffic {
    exchanges: Mutex<Vec<Exchange>>,
    /// From when PostgreSQL was stopped to when both gateways answered from it again.
    outage: Mutex<Option<(Instant, Option<Instant>)>>,
}

impl Traffic {
    pub fn record(&self, what: &'static str, sent: Instant, status: Option<u16>, code: Option<String>) {
        let exchange = Exchange { what, sent, answered: Instant::now(), status, code };
        self.exchanges.lock().expect("exchanges").push(exchange);
    }

    pub fn outage_began(&self) {
        *self.outage.lock().expect("outage") = Some((Instant::now(), None));
    }

    pub fn outage_ended(&self) {
        if let Some((_, end)) = self.outage.lock().expect("outage").as_mut() {
            *end = Some(Instant::now());
        }
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        self.exchanges.lock().expect("exchanges").clone()
    }

    /// Whether the exchange overlapped the outage (answered after it began, sent before it ended).
    pub fn during_outage(&self, exchange: &Exchange) -> bool {
        match *self.outage.lock().expect("outage") {
            Some((began, ended)) => exchange.answered >= began && ended.is_none_or(|ended| exchange.sent <= ended),
            None => false,
        }
    }
}
