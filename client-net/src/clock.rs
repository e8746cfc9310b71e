//! The wall clock, read once here: [`now_ms`] is what every host passes as
//! `now` to the sans-IO protocol rules (registry, discovery, signatures).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, from the system clock (0 before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_2024_and_does_not_go_back() {
        let first = now_ms();
        assert!(first > 1_704_067_200_000, "{first}");
        assert!(now_ms() >= first);
    }
}
