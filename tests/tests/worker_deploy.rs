//! `scripts/deploy-worker` (`npm run deploy`) refuses to publish the registry
//! Worker without its signing secret. Cloudflare's API cannot be reached from
//! the test machine, so a stand-in `wrangler` on PATH plays it: it records its
//! arguments, answers `secret list` with the JSON the test gives (or fails as
//! wrangler does for a Worker that does not exist), and "deploys" by
//! recording the call. The test checks the refusal, its message, and that no
//! `deploy` reached wrangler; and the go-ahead with the secret set.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tests::registry_host::repository_root;

/// A stand-in `wrangler` in its own directory; `STANDIN_SECRETS` is what
/// `secret list` prints, `STANDIN_FAIL` makes it fail.
fn standin(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("wrangler");
    std::fs::write(
        &script,
        r#"#!/bin/sh
echo "$*" >> "$STANDIN_LOG"
case "$1 $2" in
    "secret list")
        if [ -n "$STANDIN_FAIL" ]; then
            echo '✘ [ERROR] Worker "zajel-bootstrap" not found.' >&2
            exit 1
        fi
        printf '%s\n' "$STANDIN_SECRETS"
        ;;
    deploy*) echo "Deployed zajel-bootstrap" ;;
esac
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

struct Run {
    output: Output,
    calls: Vec<String>,
}

fn deploy(secrets: Option<&str>, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let bin = standin(dir.path());
    let log = dir.path().join("calls");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut command = Command::new("bash");
    command
        .arg(repository_root().join("scripts/deploy-worker"))
        .args(args)
        .env("PATH", path)
        .env_remove("WRANGLER")
        .env("STANDIN_LOG", &log);
    match secrets {
        Some(json) => command
            .env("STANDIN_SECRETS", json)
            .env_remove("STANDIN_FAIL"),
        None => command.env("STANDIN_FAIL", "1"),
    };
    let output = command.output().unwrap();
    let calls = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    Run { output, calls }
}

fn stderr(run: &Run) -> String {
    String::from_utf8_lossy(&run.output.stderr).into_owned()
}

fn assert_refused(run: &Run, why: &str) {
    let text = stderr(run);
    assert!(!run.output.status.success(), "{text}");
    assert!(text.contains("refusing to deploy"), "{text}");
    assert!(text.contains(why), "{text}");
    assert!(
        text.contains("npx wrangler secret put BOOTSTRAP_SIGNING_KEY"),
        "the fix is named: {text}"
    );
    assert!(
        !run.calls.iter().any(|call| call.starts_with("deploy")),
        "nothing deployed: {:?}",
        run.calls
    );
}

#[test]
fn a_worker_without_its_signing_secret_is_not_deployed() {
    let run = deploy(Some("[]"), &[]);
    assert_refused(&run, "has no secret BOOTSTRAP_SIGNING_KEY");
    assert_eq!(run.calls, ["secret list --format json"]);
    // Other secrets, or a name that only starts alike, are not the signing key.
    let others = r#"[
  { "name": "BOOTSTRAP_SIGNING_KEY_OLD", "type": "secret_text" },
  { "name": "OTHER", "type": "secret_text" }
]"#;
    assert_refused(&deploy(Some(others), &[]), "has no secret");
}

#[test]
fn a_worker_whose_secrets_cannot_be_listed_is_not_deployed() {
    let run = deploy(None, &["--env", "production"]);
    assert_refused(&run, "cannot list the Worker's secrets");
    assert!(
        stderr(&run).contains("not found"),
        "wrangler's own error shown"
    );
    assert!(stderr(&run).contains("secret put BOOTSTRAP_SIGNING_KEY --env production"));
}

#[test]
fn with_the_secret_set_it_deploys_with_the_arguments_given() {
    let secrets = r#"[
  {
    "name": "BOOTSTRAP_SIGNING_KEY",
    "type": "secret_text"
  }
]"#;
    let run = deploy(Some(secrets), &["--env", "production", "--minify"]);
    assert!(run.output.status.success(), "{}", stderr(&run));
    assert_eq!(
        run.calls,
        [
            "secret list --format json --env production",
            "deploy --env production --minify"
        ]
    );
}

#[test]
fn a_dry_run_publishes_nothing_and_is_not_checked() {
    let run = deploy(Some("[]"), &["--dry-run", "--outdir", "target/x"]);
    assert!(run.output.status.success(), "{}", stderr(&run));
    assert_eq!(run.calls, ["deploy --dry-run --outdir target/x"]);
}

#[test]
fn npm_run_deploy_is_the_checked_script() {
    let package = std::fs::read_to_string(repository_root().join("package.json")).unwrap();
    let package: serde_json::Value = serde_json::from_str(&package).unwrap();
    assert_eq!(package["scripts"]["deploy"], "bash scripts/deploy-worker");
}

/// The secrets `secret list` prints: the signing key, and the API token when `with_token`.
fn secrets_json(with_token: bool) -> String {
    let token = if with_token {
        r#", { "name": "CLOUDFLARE_API_TOKEN", "type": "secret_text" }"#
    } else {
        ""
    };
    format!(r#"[{{ "name": "BOOTSTRAP_SIGNING_KEY", "type": "secret_text" }}{token}]"#)
}

#[test]
fn publishing_txt_records_without_the_api_token_is_not_deployed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wrangler.toml");
    std::fs::write(
        &config,
        "name = \"zajel-bootstrap\"\n[vars]\n# TXT_DOMAIN = \"commented.example\"\nTXT_DOMAIN = \"example.org\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    for args in [
        vec!["--config", config],
        vec!["--var", "TXT_DOMAIN:example.org"],
    ] {
        let run = deploy(Some(&secrets_json(false)), &args);
        let text = stderr(&run);
        assert!(!run.output.status.success(), "{args:?}: {text}");
        assert!(text.contains("no secret CLOUDFLARE_API_TOKEN"), "{text}");
        assert!(
            text.contains("npx wrangler secret put CLOUDFLARE_API_TOKEN"),
            "{text}"
        );
        assert!(
            !run.calls.iter().any(|call| call.starts_with("deploy")),
            "nothing deployed: {:?}",
            run.calls
        );
        // With the token set, the same deployment goes ahead.
        let run = deploy(Some(&secrets_json(true)), &args);
        assert!(run.output.status.success(), "{args:?}: {}", stderr(&run));
        assert!(run.calls.iter().any(|call| call.starts_with("deploy")));
    }
    // TXT_DOMAIN only in a comment: no token needed.
    let commented = dir.path().join("commented.toml");
    std::fs::write(
        &commented,
        "name = \"zajel-bootstrap\"\n# TXT_DOMAIN = \"example.org\"\n",
    )
    .unwrap();
    let run = deploy(
        Some(&secrets_json(false)),
        &["--config", commented.to_str().unwrap()],
    );
    assert!(run.output.status.success(), "{}", stderr(&run));
}
