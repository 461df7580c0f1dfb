//! Medians and percentiles.

use std::time::Duration;

/// The value at quantile `q` (0..=1) of `samples` (sorted in place); zero if empty.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let idx = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[idx.min(samples.len() - 1)]
}

/// The median of `samples`.
pub fn median(samples: &mut [f64]) -> f64 {
    quantile(samples, 0.5)
}

/// Seconds as `f64`, never zero (so rates stay finite).
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}
