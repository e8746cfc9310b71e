//! call-probe command line: `demo` (the whole chain in one process), `call`, `answer`,
//! `check`, `contacts`, and `selftest` (two in-process engines).

// Every line to stdout goes through outln!/out!: a closed pipe ends printing quietly.
#![deny(clippy::print_stdout)]

use std::process::ExitCode;
use std::time::Duration;

use call_probe::selftest::{run_selftest, SelftestOptions};
use clap::{Parser, Subcommand};
use zajel_client_net::outln;

mod modes;

#[derive(Parser)]
#[command(
    name = "call-probe",
    version,
    about = "Places real WebRTC audio calls (Opus over DTLS-SRTP) driven by Zajel's call messages",
    after_help = call_probe::check::EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a registry, a DoH server, relay-lite with TURN and an answerer in this process
    /// (127.0.0.1 only, offline), discover the relay, place a real call and print the report.
    #[cfg(feature = "demo")]
    Demo(modes::DemoArgs),
    /// Pair with an answerer (pairing code or zajel:// link), or find a contact paired before
    /// (--contact NAME, through rendezvous), and place one call.
    #[command(after_help = call_probe::check::EXIT_CODES_HELP)]
    Call(modes::CallArgs),
    /// Register a pairing code on a relay and answer calls (tone or echo).
    #[command(after_help = call_probe::check::EXIT_CODES_HELP)]
    Answer(modes::AnswerArgs),
    /// The contacts paired before (list, rename, remove); `call --contact NAME` calls one.
    Contacts(modes::ContactsArgs),
    /// Check from this network: discovery, signaling, STUN, TURN over UDP/TCP/TLS, call paths.
    #[command(after_help = call_probe::check::EXIT_CODES_HELP)]
    Check(modes::CheckArgs),
    /// Run one call between two in-process engines over loopback and print both reports.
    Selftest {
        /// Print the reports as JSON ({"caller":…,"callee":…}) instead of tables.
        #[arg(long)]
        json: bool,
        /// Also negotiate a video track.
        #[arg(long)]
        video: bool,
        /// Tone the caller sends, in Hz.
        #[arg(long, default_value_t = 440.0)]
        caller_hz: f64,
        /// Tone the callee sends, in Hz.
        #[arg(long, default_value_t = 660.0)]
        callee_hz: f64,
        /// Seconds each step (tone heard, RTT known, hangup) may take.
        #[arg(long, default_value_t = 15)]
        step_timeout: u64,
        /// The callee sends back what it hears instead of its own tone (the caller then
        /// listens for its own tone).
        #[arg(long)]
        echo: bool,
        /// Hang up once both tones are heard, without waiting for the first RTCP round-trip
        /// time (about a second more).
        #[arg(long)]
        no_rtt: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        "warn,webrtc=error,webrtc_ice=error,webrtc_dtls=error,webrtc_srtp=error,turn=off",
                    )
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    zajel_client_net::tls::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        #[cfg(feature = "demo")]
        Command::Demo(args) => runtime.block_on(modes::demo(args)),
        Command::Call(args) => runtime.block_on(modes::call(args)),
        Command::Answer(args) => runtime.block_on(modes::answer(args)),
        Command::Check(args) => runtime.block_on(modes::check(args)),
        Command::Contacts(args) => modes::contacts(args),
        Command::Selftest {
            json,
            video,
            caller_hz,
            callee_hz,
            step_timeout,
            no_rtt,
            echo,
        } => {
            if step_timeout == 0 {
                eprintln!("error: --step-timeout must be at least 1 second");
                return ExitCode::from(2);
            }
            for (name, hz) in [("--caller-hz", caller_hz), ("--callee-hz", callee_hz)] {
                if !(100.0..=4000.0).contains(&hz) {
                    eprintln!("error: {name} must be between 100 and 4000 Hz");
                    return ExitCode::from(2);
                }
            }
            let options = SelftestOptions {
                caller_hz,
                callee_hz,
                with_video: video,
                echo,
                step_timeout: Duration::from_secs(step_timeout),
                wait_for_rtt: !no_rtt,
            };
            match runtime.block_on(run_selftest(&options)) {
                Ok((caller, callee)) => {
                    if json {
                        let both = serde_json::json!({"caller": caller, "callee": callee});
                        outln!(
                            "{}",
                            serde_json::to_string_pretty(&both).unwrap_or_default()
                        );
                    } else {
                        outln!("== caller ==\n{}", caller.to_table());
                        outln!("== callee ==\n{}", callee.to_table());
                    }
                    let heard = |r: &call_probe::CallReport, hz: f64| {
                        r.tone
                            .detected
                            .is_some_and(|d| (d.frequency_hz - hz).abs() <= 5.0)
                    };
                    let caller_hears = if echo { caller_hz } else { callee_hz };
                    if heard(&caller, caller_hears) && heard(&callee, caller_hz) {
                        ExitCode::SUCCESS
                    } else {
                        eprintln!("error: a side did not hear the other's tone");
                        ExitCode::FAILURE
                    }
                }
                Err(err) => {
                    eprintln!("error: selftest failed: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
