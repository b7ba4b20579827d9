//! What a client did on the network, kept bounded however often it is refused.

/// Denials kept in [`NetLog::denied`]: the first ones, and the latest in the last slot.
pub const MAX_DENIAL_RECORDS: usize = 16;

/// Denials of one client logged at info; later ones are only counted (one debug summary
/// when the client is dropped).
pub const LOGGED_DENIALS: u64 = 4;

/// A request the client refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The URL (query string dropped: it may carry tokens).
    pub url: String,
    /// Why, naming the rule or its absence.
    pub reason: String,
}

/// What happened on the network during one client's life (for a plugin, one call).
#[derive(Debug, Default, Clone)]
pub struct NetLog {
    /// Requests attempted (including redirect hops).
    pub requests: u32,
    /// Requests refused, at most [`MAX_DENIAL_RECORDS`]: the first ones, with the last
    /// slot always holding the latest (so `denied.last()` is the most recent cause).
    pub denied: Vec<Denial>,
    /// Every request refused, including those no longer in `denied`.
    pub denials: u64,
    /// Response body bytes received.
    pub bytes_received: u64,
}

impl NetLog {
    /// Records a denial; returns how many there have been so far.
    pub(crate) fn record_denial(&mut self, denial: Denial) -> u64 {
        self.denials += 1;
        if self.denied.len() < MAX_DENIAL_RECORDS {
            self.denied.push(denial);
        } else if let Some(last) = self.denied.last_mut() {
            *last = denial;
        }
        self.denials
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_records_stay_bounded_and_keep_the_latest_last() {
        let mut log = NetLog::default();
        for i in 0..100_000u32 {
            log.record_denial(Denial { url: format!("http://x/{i}"), reason: "no".into() });
        }
        assert_eq!(log.denials, 100_000);
        assert_eq!(log.denied.len(), MAX_DENIAL_RECORDS);
        assert_eq!(log.denied[0].url, "http://x/0");
        assert_eq!(log.denied.last().map(|d| d.url.as_str()), Some("http://x/99999"));
    }
}
