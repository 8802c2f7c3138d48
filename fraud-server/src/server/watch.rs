//! The insider watch: each key's rate of decision-record reads is compared with its own
//! usual rate. A key that reads far more than usual in the current window is throttled (429
//! until the window ends), an `alert` record is written to the decision log once per window,
//! and `fraud_insider_alerts_total` counts it.
//!
//! Usual rate: an exponentially weighted mean of the key's reads per window (weight 0.2 for
//! the newest window; a window without reads counts as zero). A read is refused when the
//! window already holds more than `max(min_reads, factor x usual)` reads.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Thresholds of the watch (`[insider]` in the config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Length of a window, seconds.
    pub window_s: f64,
    /// Reads per window always allowed, whatever the history.
    pub min_reads: f64,
    /// How many times its usual rate a key may read in a window.
    pub factor: f64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            window_s: 60.0,
            min_reads: 100.0,
            factor: 5.0,
        }
    }
}

struct KeyRate {
    window_start: Instant,
    count: f64,
    usual: f64,
    alerted: bool,
}

/// What the watch decided about one read.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Throttled until the window ends; `alert` is true the first time in the window.
    Throttle {
        /// Seconds until the window ends.
        retry_after: u64,
        /// Reads in the window so far.
        reads: u64,
        /// The limit for this key now.
        limit: u64,
        /// First refusal of this window: write the alert.
        alert: bool,
    },
}

/// Per-key read rates.
pub struct Watch {
    cfg: WatchConfig,
    keys: Mutex<HashMap<String, KeyRate>>,
}

impl Watch {
    /// A watch with these thresholds.
    pub fn new(cfg: WatchConfig) -> Self {
        Watch {
            cfg,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one read by `key` at `now`.
    pub fn read(&self, key: &str, now: Instant) -> Verdict {
        let window = Duration::from_secs_f64(self.cfg.window_s.max(0.001));
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let k = keys.entry(key.to_string()).or_insert(KeyRate {
            window_start: now,
            count: 0.0,
            usual: 0.0,
            alerted: false,
        });
        // Close the windows that ended (empty ones count as zero reads).
        while now.duration_since(k.window_start) >= window {
            k.usual = 0.8 * k.usual + 0.2 * k.count;
            k.count = 0.0;
            k.alerted = false;
            k.window_start += window;
        }
        let limit = self.cfg.min_reads.max(self.cfg.factor * k.usual);
        if k.count + 1.0 > limit {
            let left = window.saturating_sub(now.duration_since(k.window_start));
            let alert = !k.alerted;
            k.alerted = true;
            return Verdict::Throttle {
                retry_after: left.as_secs_f64().ceil().max(1.0) as u64,
                reads: k.count as u64,
                limit: limit as u64,
                alert,
            };
        }
        k.count += 1.0;
        Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_over_the_usual_rate_is_throttled_once_alerted_then_released() {
        let w = Watch::new(WatchConfig {
            window_s: 10.0,
            min_reads: 5.0,
            factor: 3.0,
        });
        let t0 = Instant::now();
        // Usual: 4 reads a window for ten windows.
        for win in 0..10u64 {
            for i in 0..4u64 {
                assert_eq!(
                    w.read("a", t0 + Duration::from_secs(win * 10 + i)),
                    Verdict::Allow
                );
            }
        }
        // Now: limit max(5, 3 x ~3.6) = 10 reads in the window; the 11th is refused, alerted once.
        let now = t0 + Duration::from_secs(100);
        for _ in 0..10 {
            assert_eq!(w.read("a", now), Verdict::Allow);
        }
        assert!(matches!(
            w.read("a", now),
            Verdict::Throttle { alert: true, .. }
        ));
        assert!(matches!(
            w.read("a", now),
            Verdict::Throttle { alert: false, .. }
        ));
        // Another key is not affected; the next window is open again.
        assert_eq!(w.read("b", now), Verdict::Allow);
        assert_eq!(w.read("a", now + Duration::from_secs(10)), Verdict::Allow);
    }
}
