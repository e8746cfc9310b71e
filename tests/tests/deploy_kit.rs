//! The operator kit in `deploy/`: both systemd units pass `systemd-analyze verify` without a
//! warning, stay hardened (`systemd-analyze security --offline` exposure at most 2.0, "OK"), and
//! every variable their `.env` files set is one the binary reads (a typo there would be ignored
//! silently at run time). Static checks: this machine runs no systemd, so the units are not
//! started (the relay's flags are run for real by `operator_deploy.rs`).
//!
//! Needs `systemd-analyze` (Debian's `systemd`; `scripts/test` installs it) and the built
//! binaries (`cargo build --workspace --bins`).

use std::path::{Path, PathBuf};
use std::process::Command;

use tests::interop::workspace_root;
use tests::registry_host::binary;

/// Highest exposure score accepted (systemd calls ≤ 2.0 "OK").
const MAX_EXPOSURE: f64 = 2.0;

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

/// The unit with its `ExecStart` pointing at the built binary (verify checks it exists), in a
/// temporary directory.
fn unit_with_built_binary(dir: &Path, unit: &str, installed: &str, built: &str) -> PathBuf {
    let text = std::fs::read_to_string(deploy_dir().join(unit)).expect("read the unit");
    assert!(text.contains(installed), "{unit} runs {installed}");
    let built = binary(built).expect("built binary");
    let path = dir.join(unit);
    std::fs::write(&path, text.replace(installed, &built.display().to_string()))
        .expect("write the unit");
    path
}

fn systemd_analyze(args: &[&str], unit: &Path) -> (bool, String, String) {
    let output = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .current_dir(unit.parent().expect("unit directory"))
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/test installs it)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn check_unit(unit: &str, installed: &str, built: &str) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = unit_with_built_binary(dir.path(), unit, installed, built);
    let (ok, stdout, stderr) = systemd_analyze(&["verify"], &path);
    assert!(
        ok && stderr.trim().is_empty(),
        "{unit}: verify\n{stdout}{stderr}"
    );
    let (_, stdout, stderr) = systemd_analyze(&["security", "--offline=yes"], &path);
    let exposure = stdout
        .lines()
        .chain(stderr.lines())
        .find_map(|line| {
            let rest = line.split("Overall exposure level for").nth(1)?;
            rest.split(':')
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("{unit}: no exposure level in\n{stdout}{stderr}"));
    eprintln!("{unit}: exposure {exposure:.1}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "{unit}: exposure {exposure} above {MAX_EXPOSURE}\n{stdout}"
    );
}

/// The variables an env file sets (not `RUST_LOG`, which the logger reads).
fn env_file_variables(file: &str) -> Vec<String> {
    std::fs::read_to_string(deploy_dir().join(file))
        .expect("read the env file")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            line.split_once('=')
                .unwrap_or_else(|| panic!("{file}: not NAME=value: {line:?}"))
                .0
                .to_string()
        })
        .filter(|name| name != "RUST_LOG")
        .collect()
}

/// The variables `binary args… --help` documents (`[env: NAME=…]`).
fn documented_variables(built: &str, args: &[&str]) -> String {
    let output = Command::new(binary(built).expect("built binary"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn check_env_file(file: &str, unit: &str, built: &str, args: &[&str]) {
    let help = documented_variables(built, args);
    let unit_text = std::fs::read_to_string(deploy_dir().join(unit)).expect("read the unit");
    let from_unit = unit_text
        .lines()
        .filter_map(|line| line.strip_prefix("Environment="))
        .filter_map(|assignment| assignment.split_once('=').map(|(name, _)| name.to_string()));
    let names: Vec<String> = env_file_variables(file)
        .into_iter()
        .chain(from_unit)
        .collect();
    assert!(names.len() >= 4, "{file}: {names:?}");
    for name in names {
        assert!(
            help.contains(&format!("[env: {name}=")),
            "{file} or {unit} sets {name}, which `{built} --help` does not name"
        );
    }
}

#[test]
fn the_relay_unit_verifies_and_is_hardened() {
    check_unit(
        "relay-lite.service",
        "/usr/local/bin/relay-lite",
        "relay-lite",
    );
}

#[test]
fn the_registry_unit_verifies_and_is_hardened() {
    check_unit(
        "zajel-registry.service",
        "/usr/local/bin/bootstrap-worker",
        "bootstrap-worker",
    );
}

#[test]
fn every_variable_the_relay_kit_sets_is_one_relay_lite_reads() {
    check_env_file("relay-lite.env", "relay-lite.service", "relay-lite", &[]);
}

#[test]
fn every_variable_the_registry_kit_sets_is_one_the_registry_reads() {
    check_env_file(
        "zajel-registry.env",
        "zajel-registry.service",
        "bootstrap-worker",
        &["serve"],
    );
}
