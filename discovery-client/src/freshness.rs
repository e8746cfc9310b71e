//! When to republish the signed TXT set (`txt publish --every …`), sans-IO:
//! the caller passes `now` (seconds since the Unix epoch) and the
//! fingerprint of the set it would publish; the schedule answers publish or
//! skip, and when to wake next.
//!
//! Rules: publish when nothing was published yet, when the set's content
//! changed (servers added, retired, revoked, TTL), or when the last
//! published records reached half their lifetime (so they are replaced
//! well before `exp`, even if a run or two fails); otherwise skip. Check
//! again every `every`, and sooner when the half-life falls earlier. After a
//! failure, retry after `min(every, RETRY_SECS)`.

use serde::Serialize;

use crate::txt::PublishedRecord;

/// The longest wait before retrying a failed publication, seconds.
pub const RETRY_SECS: u64 = 60;

/// What the schedule says to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Publish(Reason),
    /// The published set is current and not halfway to expiry.
    Skip,
}

/// Why a publication is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    FirstRun,
    SetChanged,
    HalfLife,
    RetryAfterFailure,
}

/// The last attempt and how it went (what the log reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastAttempt {
    pub at: u64,
    pub ok: bool,
    pub detail: String,
}

/// The republication schedule of one TXT set.
#[derive(Debug, Clone)]
pub struct RepublishSchedule {
    every: u64,
    /// (published at, expires at, fingerprint) of the last successful publication.
    published: Option<(u64, u64, String)>,
    last_attempt: Option<LastAttempt>,
}

/// What identifies a set's content, independent of signatures and `exp`:
/// every record's server (or revocation) with its TTL, sorted.
pub fn fingerprint(records: &[PublishedRecord]) -> String {
    let mut parts: Vec<String> = records
        .iter()
        .map(|r| format!("{}|{}|{}", r.name, r.ttl, r.endpoint))
        .collect();
    parts.sort();
    parts.join("\n")
}

impl RepublishSchedule {
    /// Checks every `every_secs` (at least 1).
    pub fn new(every_secs: u64) -> Self {
        Self {
            every: every_secs.max(1),
            published: None,
            last_attempt: None,
        }
    }

    /// When the last published records reach half their lifetime.
    pub fn refresh_at(&self) -> Option<u64> {
        self.published
            .as_ref()
            .map(|(at, expires, _)| at + expires.saturating_sub(*at) / 2)
    }

    /// When the set was last published, if ever.
    pub fn last_published_at(&self) -> Option<u64> {
        self.published.as_ref().map(|(at, _, _)| *at)
    }

    /// The last attempt, if any.
    pub fn last_attempt(&self) -> Option<&LastAttempt> {
        self.last_attempt.as_ref()
    }

    /// Whether to publish the set whose [`fingerprint`] is given, now.
    pub fn decide(&self, now: u64, fingerprint: &str) -> Decision {
        if matches!(&self.last_attempt, Some(a) if !a.ok) {
            return Decision::Publish(Reason::RetryAfterFailure);
        }
        match &self.published {
            None => Decision::Publish(Reason::FirstRun),
            Some((_, _, published)) if published != fingerprint => {
                Decision::Publish(Reason::SetChanged)
            }
            Some(_) if self.refresh_at().is_some_and(|at| now >= at) => {
                Decision::Publish(Reason::HalfLife)
            }
            Some(_) => Decision::Skip,
        }
    }

    /// Records a successful publication of records expiring at `expires`.
    pub fn on_published(&mut self, now: u64, expires: u64, fingerprint: String, detail: String) {
        self.published = Some((now, expires, fingerprint));
        self.last_attempt = Some(LastAttempt {
            at: now,
            ok: true,
            detail,
        });
    }

    /// Records a failed attempt (what was published before stays published).
    pub fn on_failed(&mut self, now: u64, detail: String) {
        self.last_attempt = Some(LastAttempt {
            at: now,
            ok: false,
            detail,
        });
    }

    /// The schedule as Prometheus text exposition (for node_exporter's
    /// textfile collector, `txt publish --every … --metrics-textfile`):
    /// when the set was last published and when those records expire, when
    /// the last attempt ran and whether it worked, and how many attempts failed.
    pub fn prometheus_text(&self, failures: u64) -> String {
        let mut text = String::new();
        let mut gauge = |name: &str, help: &str, value: u64| {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        };
        if let Some((at, expires, _)) = &self.published {
            gauge(
                "zajel_txt_last_published_timestamp_seconds",
                "When the TXT set was last published (Unix seconds).",
                *at,
            );
            gauge(
                "zajel_txt_published_expiry_timestamp_seconds",
                "When the last published records expire (Unix seconds).",
                *expires,
            );
        }
        if let Some(attempt) = &self.last_attempt {
            gauge(
                "zajel_txt_last_attempt_timestamp_seconds",
                "When publication was last attempted (Unix seconds).",
                attempt.at,
            );
            gauge(
                "zajel_txt_last_attempt_ok",
                "1 when the last attempt published or found the set current, else 0.",
                u64::from(attempt.ok),
            );
        }
        text.push_str(&format!(
            "# HELP zajel_txt_publish_failures_total Failed publication attempts.\n\
             # TYPE zajel_txt_publish_failures_total counter\n\
             zajel_txt_publish_failures_total {failures}\n"
        ));
        text
    }

    /// When to check next: after `every`, sooner at the half-life, and after
    /// a failure within [`RETRY_SECS`].
    pub fn next_check(&self, now: u64) -> u64 {
        let mut next = now + self.every;
        if matches!(&self.last_attempt, Some(a) if !a.ok) {
            next = next.min(now + RETRY_SECS.min(self.every));
        }
        if let Some(at) = self.refresh_at() {
            next = next.min(at.max(now + 1));
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_run_publishes_then_skips_an_unchanged_set_until_half_life() {
        let mut schedule = RepublishSchedule::new(3600);
        assert_eq!(
            schedule.decide(1000, "a"),
            Decision::Publish(Reason::FirstRun)
        );
        // Records valid 72 h from t=1000.
        schedule.on_published(1000, 1000 + 72 * 3600, "a".into(), "ok".into());
        assert_eq!(schedule.last_published_at(), Some(1000));
        assert_eq!(schedule.decide(1000 + 3600, "a"), Decision::Skip);
        assert_eq!(schedule.refresh_at(), Some(1000 + 36 * 3600));
        assert_eq!(schedule.decide(1000 + 36 * 3600 - 1, "a"), Decision::Skip);
        assert_eq!(
            schedule.decide(1000 + 36 * 3600, "a"),
            Decision::Publish(Reason::HalfLife)
        );
    }

    #[test]
    fn a_changed_set_is_published_at_once() {
        let mut schedule = RepublishSchedule::new(3600);
        schedule.on_published(0, 7200, "a".into(), "ok".into());
        assert_eq!(
            schedule.decide(10, "b"),
            Decision::Publish(Reason::SetChanged)
        );
    }

    #[test]
    fn a_set_about_to_expire_is_republished_before_exp_even_with_a_long_period() {
        // A short exp (2 minutes) and a check period longer than the lifetime:
        // the next check still falls at the half-life, before exp.
        let mut schedule = RepublishSchedule::new(24 * 3600);
        schedule.on_published(0, 120, "a".into(), "ok".into());
        let wake = schedule.next_check(0);
        assert_eq!(wake, 60);
        assert!(wake < 120);
        assert_eq!(
            schedule.decide(wake, "a"),
            Decision::Publish(Reason::HalfLife)
        );
        schedule.on_published(wake, wake + 120, "a".into(), "ok".into());
        assert_eq!(schedule.next_check(wake), wake + 60);
    }

    #[test]
    fn the_metrics_say_when_it_last_published_and_how_it_went() {
        let mut schedule = RepublishSchedule::new(3600);
        assert!(!schedule.prometheus_text(0).contains("last_published"));
        schedule.on_published(100, 200, "a".into(), "ok".into());
        schedule.on_failed(150, "refused".into());
        let text = schedule.prometheus_text(1);
        assert!(
            text.contains("\nzajel_txt_last_published_timestamp_seconds 100\n"),
            "{text}"
        );
        assert!(
            text.contains("\nzajel_txt_published_expiry_timestamp_seconds 200\n"),
            "{text}"
        );
        assert!(
            text.contains("\nzajel_txt_last_attempt_timestamp_seconds 150\n"),
            "{text}"
        );
        assert!(text.contains("\nzajel_txt_last_attempt_ok 0\n"), "{text}");
        assert!(
            text.contains("\nzajel_txt_publish_failures_total 1\n"),
            "{text}"
        );
    }

    #[test]
    fn a_failure_is_retried_soon_and_reported() {
        let mut schedule = RepublishSchedule::new(3600);
        schedule.on_published(0, 72 * 3600, "a".into(), "ok".into());
        schedule.on_failed(100, "DNS server refused".into());
        assert_eq!(
            schedule.decide(101, "a"),
            Decision::Publish(Reason::RetryAfterFailure)
        );
        assert_eq!(schedule.next_check(100), 100 + RETRY_SECS);
        let last = schedule.last_attempt().unwrap();
        assert!(!last.ok);
        assert_eq!(last.at, 100);
        // The earlier publication still sets the half-life.
        assert_eq!(schedule.refresh_at(), Some(36 * 3600));
    }
}
