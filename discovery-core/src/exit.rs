//! The exit codes of both command lines (`zajel-discover` and `call-probe`), in one table:
//! each code means one thing in every command that can end with it. [`HELP`] is that table as
//! text, for each `--help` (`after_help`).
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | any other failure |
//! | 2 | bad flags (usage error) |
//! | 3 | no server found (discovery found nothing that answers; `txt verify`: no resolver serves a record that verifies) |
//! | 4 | signaling blocked (a server was found but its session could not be opened or used) |
//! | 5 | no media path (signaling works, no UDP and no TURN) |
//! | 6 | call not authenticated, or the peer's key is not the pinned one |
//! | 7 | only unverified servers found |
//! | 130 | interrupted (Ctrl-C or SIGTERM; the call was hung up and the report printed) |

/// Success.
pub const OK: u8 = 0;
/// Any other failure.
pub const FAILURE: u8 = 1;
/// Bad flags (clap's usage errors exit 2 too).
pub const USAGE: u8 = 2;
/// Discovery found no server that answers (`txt verify`: no record verifies).
pub const NO_SERVER: u8 = 3;
/// A server was found but the signaling session could not be opened or used.
pub const SIGNALING_BLOCKED: u8 = 4;
/// Signaling works but no media path does (no UDP, no TURN of any kind).
pub const NO_MEDIA_PATH: u8 = 5;
/// A call failed call authentication (`media_not_authenticated`), or the answerer's key was
/// not the pinned one (`peer_key_mismatch`).
pub const NOT_AUTHENTICATED: u8 = 6;
/// Only unverified servers answered (no signed source names them).
pub const UNVERIFIED_ONLY: u8 = 7;
/// Interrupted by SIGINT (Ctrl-C) or SIGTERM: 128 + SIGINT, as shells report it.
pub const INTERRUPTED: u8 = 130;

/// Every exit code with its meaning, in order.
pub const TABLE: &[(u8, &str)] = &[
    (OK, "success"),
    (FAILURE, "any other failure"),
    (USAGE, "bad flags"),
    (
        NO_SERVER,
        "no server found (txt verify: no record that verifies)",
    ),
    (
        SIGNALING_BLOCKED,
        "signaling blocked (a server was found, its session failed)",
    ),
    (NO_MEDIA_PATH, "no media path (no UDP, no TURN)"),
    (
        NOT_AUTHENTICATED,
        "call not authenticated, or the peer's key is not the pinned one",
    ),
    (UNVERIFIED_ONLY, "only unverified servers found"),
    (
        INTERRUPTED,
        "interrupted (Ctrl-C/SIGTERM: hung up, report printed)",
    ),
];

/// [`TABLE`] as `--help` text (both CLIs, same text).
pub const HELP: &str = "Exit codes (the same in zajel-discover and call-probe):
  0    success
  1    any other failure
  2    bad flags
  3    no server found (txt verify: no record that verifies)
  4    signaling blocked (a server was found, its session failed)
  5    no media path (no UDP, no TURN)
  6    call not authenticated, or the peer's key is not the pinned one
  7    only unverified servers found
  130  interrupted (Ctrl-C/SIGTERM: hung up, report printed)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_text_is_the_table_and_each_code_means_one_thing() {
        let lines: Vec<&str> = HELP.lines().skip(1).collect();
        assert_eq!(lines.len(), TABLE.len());
        for ((code, meaning), line) in TABLE.iter().zip(lines) {
            assert_eq!(line, format!("  {code:<4} {meaning}"));
        }
        let mut codes: Vec<u8> = TABLE.iter().map(|(c, _)| *c).collect();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len(), "a code listed twice");
    }
}
