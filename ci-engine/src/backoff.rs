//! [`doubling_backoff`]: the one exponential backoff of the workspace (the
//! engine's retries, the server's restarts of a bundled simulator).

use std::time::Duration;

/// The `n`-th wait of a backoff that starts at `base` and doubles each time,
/// never longer than `cap`: `base · 2^(n−1)`, capped; zero for `n = 0` (no
/// failure yet). Overflow saturates at `cap`.
pub fn doubling_backoff(base: Duration, n: u32, cap: Duration) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let factor = 2u32.saturating_pow(n - 1);
    base.checked_mul(factor).unwrap_or(cap).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_up_to_the_cap() {
        let ms = Duration::from_millis;
        let waits: Vec<Duration> = (0..6)
            .map(|n| doubling_backoff(ms(50), n, ms(300)))
            .collect();
        assert_eq!(waits, [ms(0), ms(50), ms(100), ms(200), ms(300), ms(300)]);
        assert_eq!(
            doubling_backoff(Duration::from_secs(1), u32::MAX, ms(7)),
            ms(7)
        );
    }
}
