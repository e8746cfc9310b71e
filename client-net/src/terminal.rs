//! What both command lines (`zajel-discover`, `call-probe`) print for the person at the
//! terminal, and how:
//!
//! - [`outln!`](crate::outln) and [`out!`](crate::out) write to stdout like `println!` and
//!   `print!`, but a closed pipe (`… | head`) ends the printing quietly instead of panicking
//!   with "Broken pipe": the command goes on (files are still written, a call still hangs up)
//!   and exits with its own code. [`stdout_closed`] says whether that happened.
//! - [`human_time`]: an epoch time in ms as `2026-12-02 04:31:20 UTC (3 min ago)`, for tables
//!   (JSON keeps the raw `_ms` numbers).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `args` to stdout and flushes. Once a write fails (the reader went away: a broken
/// pipe), nothing more is written; any other failure is said once on stderr. Never panics.
pub fn write_stdout(args: fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if error.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = writeln!(
                std::io::stderr(),
                "warning: cannot write to stdout: {error}"
            );
        }
    }
}

/// Whether stdout was found closed (nothing more is printed there).
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// `println!` that ends quietly on a closed stdout (see the [module](crate::terminal) docs).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::terminal::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::terminal::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that ends quietly on a closed stdout (see the [module](crate::terminal) docs).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::terminal::write_stdout(format_args!($($arg)*))
    };
}

/// `epoch_ms` as a UTC date and time with how long ago (or how far ahead) it is from
/// `now_ms`: `2026-12-02 04:31:20 UTC (3 min ago)`, `… (in 2 h)`, `… (just now)`.
pub fn human_time(epoch_ms: u64, now_ms: u64) -> String {
    let when = utc(epoch_ms);
    let relative = if epoch_ms <= now_ms {
        match span(now_ms - epoch_ms) {
            None => "just now".to_string(),
            Some(span) => format!("{span} ago"),
        }
    } else {
        match span(epoch_ms - now_ms) {
            None => "just now".to_string(),
            Some(span) => format!("in {span}"),
        }
    };
    format!("{when} ({relative})")
}

/// `epoch_ms` as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(epoch_ms: u64) -> String {
    let secs = epoch_ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// A span in the largest whole unit (`12 s`, `3 min`, `5 h`, `2 d`); `None` under a second.
fn span(ms: u64) -> Option<String> {
    let secs = ms / 1000;
    Some(match secs {
        0 => return None,
        1..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    })
}

/// Year, month, day of the proleptic Gregorian calendar `days` after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_ms_become_a_date_with_how_long_ago() {
        // 2026-12-02 04:31:20 UTC.
        let at = 1_796_185_880_000;
        assert_eq!(utc(at), "2026-12-02 04:31:20 UTC");
        assert_eq!(
            human_time(at, at + 3 * 60_000 + 5_000),
            "2026-12-02 04:31:20 UTC (3 min ago)"
        );
        assert_eq!(
            human_time(at, at + 400),
            "2026-12-02 04:31:20 UTC (just now)"
        );
        assert_eq!(
            human_time(at + 2 * 3_600_000, at),
            "2026-12-02 06:31:20 UTC (in 2 h)"
        );
        assert_eq!(
            human_time(0, 86_400_000 * 3),
            "1970-01-01 00:00:00 UTC (3 d ago)"
        );
        // A leap day.
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
