//! Discovery in a real browser: Debian's Chromium (driven by playwright-core)
//! opens discovery-web's example page, which runs the wasm package against
//! the in-process world of call-probe's demo (native registry, relay-lite on
//! `wss://` registered with it, its list signed as `_zajel` TXT records)
//! with the registry blocked: the DoH layer (RFC 8484 POST from the page)
//! must win, and the relay must be verified (signed by the pinned registry
//! key and proven over the browser's WebSocket).
//!
//! Skips with a message only when /usr/bin/chromium is absent and `CI` is not
//! `true`; in CI it must run.

use std::time::Duration;

use call_probe::world::{LocalWorld, WorldOptions, DEMO_DOMAIN};
use discovery_client::publish::{self, PublishRequest};
use tests::browser::{spki_hash, workspace, BrowserEnv, PageServer};
use zajel_client_net::tls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_finds_relay_lite_through_doh_with_the_registry_blocked() {
    let Some(env) = tokio::task::spawn_blocking(BrowserEnv::find)
        .await
        .expect("join")
    else {
        return;
    };
    let world = LocalWorld::start_with(WorldOptions { relay_tls: true })
        .await
        .expect("start the world");
    // The same records the world's DoH server serves, for the page's own origin.
    let records = publish::publish(
        &PublishRequest {
            registry: world.registry_url.clone(),
            extra_registry_keys: Vec::new(),
            domain: DEMO_DOMAIN.into(),
            ttl: 60,
            valid_for: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
        },
        &world.registry_key,
        tls::client_config(&[]).expect("tls"),
    )
    .await
    .expect("sign the TXT records");
    let served: Vec<(String, Vec<String>)> = records
        .iter()
        .map(|r| (r.name.clone(), r.strings.clone()))
        .collect();
    let server = PageServer::start(
        world.ca.server_config().expect("tls"),
        vec![
            ("/example/pkg/".into(), env.pkg_dir.clone()),
            (
                "/example/".into(),
                workspace().join("discovery-web/example"),
            ),
        ],
        &served,
    )
    .await
    .expect("page server");

    let blocked = tests::blackhole::refused_address();
    let registry_key = zajel_wire::keys::public_key_to_base64(&world.registry_key.verifying_key());
    let options = serde_json::json!({
        "registries": [format!("http://{blocked}")],
        "registryKeys": [registry_key],
        "dohServers": [format!("{}/dns-query", server.origin)],
        "domains": [DEMO_DOMAIN],
        "allowPrivate": true,
        "limitMs": 20000,
    });
    let url = format!(
        "{}/example/#{}",
        server.origin,
        url_escape(&options.to_string())
    );
    let spki = spki_hash(&world.ca.cert_der);
    let result = tokio::task::spawn_blocking(move || {
        env.run_script("discovery.mjs", &[url, spki], Duration::from_secs(60))
    })
    .await
    .expect("join")
    .unwrap_or_else(|e| panic!("{e}"));

    let relay = world.relay_url().to_string();
    let first = &result["first"];
    assert_eq!(first["verified"], true, "{result:#}");
    assert_eq!(first["url"], relay.as_str(), "{result:#}");
    let report = &result["report"];
    assert_eq!(report["verdict"], "verified", "{report:#}");
    assert_eq!(report["complete"], true);
    let layer = |name: &str| {
        report["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["layer"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} layer in {report:#}"))
    };
    assert_eq!(layer("registry")["outcome"], "refused", "{report:#}");
    assert_eq!(layer("doh")["outcome"], "ok", "{report:#}");
    let best = &report["best"];
    assert_eq!(best["url"], relay.as_str());
    assert_eq!(
        best["proven_server_id"],
        world.addresses.relay_server_id.as_str(),
        "the relay proved its key over the browser's WebSocket: {report:#}"
    );
    assert!(
        best["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "doh"),
        "{best}"
    );
    let first_verified_ms = report["first_verified_ms"]
        .as_f64()
        .expect("a verified time");
    eprintln!(
        "browser: first verified server after {first_verified_ms:.0} ms (run time), page saw it after {:.0} ms",
        result["firstMs"].as_f64().unwrap_or_default()
    );
    world.stop().await;
}

/// Percent-escapes everything but unreserved characters (for the URL's # part).
fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
