//! Discovery on a censored network: the client sits behind a censor
//! (tests::netns, nftables in a namespace of its own) and the registry, the
//! DoH server (unbound) and the signaling server (tests::ws_echo stand-in)
//! live in the "internet" namespace. The censor drops or resets packets for
//! real; discovery still finds the verified server and says what the censor
//! did to each layer. Needs root (CI runs as root); only namespaces this test
//! creates are used.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use discovery_client::discovery::{Config, Discovery};
use discovery_client::report::{Layer, Outcome, Report, Verdict};
use tests::discovery_world::DOMAIN;
use tests::netns::{self, rules, Topology};
use tests::registry_host::{self, Profile};
use tests::test_ca::TestCa;
use tests::unbound_doh::UnboundDoh;
use tests::ws_echo::WsEcho;
use url::Url;
use zajel_wire::entry::RegisterRequest;

/// Runs one discovery from inside the client namespace.
fn discover_from_client(topology: &Topology, config: Config) -> Report {
    topology
        .client
        .enter(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move { Discovery::new(config).unwrap().run().finish().await })
        })
        .expect("run in the client namespace")
}

fn bind_in_internet(topology: &Topology, address: SocketAddr) -> TcpListener {
    topology
        .internet
        .enter(move || TcpListener::bind(address))
        .expect("enter the internet namespace")
        .expect("bind in the internet namespace")
}

#[test]
fn a_censored_registry_is_routed_around_through_doh_then_the_cache() {
    let topology = Topology::new(3).expect("topology");
    let registry_ip = netns::internet_host(0);
    let relay_ip = netns::internet_host(1);
    let doh_ip = netns::internet_host(2);
    let ca = TestCa::new();

    // The internet: registry, signaling server, registration, signed records, DoH.
    let registry_key = registry_host::random_key();
    let registry = registry_host::start_in_process_on(
        bind_in_internet(&topology, SocketAddr::from((registry_ip, 80))),
        Profile::SIGNED,
        registry_key.clone(),
    );
    let server_key = registry_host::random_key();
    let relay = WsEcho::start_on(
        bind_in_internet(&topology, SocketAddr::from((relay_ip, 80))),
        &server_key,
    );
    let registry_url = Url::parse(&registry.base_url).unwrap();
    let records = {
        let registry_url = registry_url.clone();
        let relay_url = relay.url.clone();
        let registry_key = registry_key.clone();
        topology
            .internet
            .enter(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let request = RegisterRequest::signed(
                        &server_key,
                        &relay_url,
                        Some("internet"),
                        discovery_client::now_ms(),
                    );
                    let status = reqwest::Client::new()
                        .post(registry_url.join("/servers").unwrap())
                        .header("content-type", "application/json")
                        .body(serde_json::to_string(&request).unwrap())
                        .send()
                        .await
                        .expect("registry answers")
                        .status();
                    assert!(status.is_success(), "{status}");
                    let publish = discovery_client::publish::PublishRequest {
                        registry: registry_url,
                        extra_registry_keys: Vec::new(),
                        domain: DOMAIN.into(),
                        ttl: 60,
                        valid_for: Duration::from_secs(3600),
                        timeout: Duration::from_secs(5),
                    };
                    let tls = zajel_client_net::tls::client_config(&[]).unwrap();
                    discovery_client::publish::publish(&publish, &registry_key, tls)
                        .await
                        .expect("publish")
                })
            })
            .expect("enter the internet namespace")
    };
    let lines: Vec<String> = discovery_client::txt::zone_snippet(&records)
        .lines()
        .filter(|l| !l.starts_with(';'))
        .map(str::to_string)
        .collect();
    let doh = UnboundDoh::start_at(
        &ca,
        DOMAIN,
        &lines,
        IpAddr::V4(doh_ip),
        443,
        Some(&topology.internet),
    )
    .expect("unbound in the internet namespace");

    let cache = tempfile::tempdir().unwrap();
    let config = Config {
        registries: vec![registry_url],
        registry_keys: vec![registry_key.verifying_key()],
        doh_servers: vec![
            format!("https://localhost:{}/dns-query,ip={doh_ip}", doh.port)
                .parse()
                .unwrap(),
        ],
        domains: vec![DOMAIN.into()],
        store_path: Some(cache.path().join("discovery.json")),
        // The namespaces use 10.77.0.0/16, a private range.
        allow_private: true,
        extra_roots: vec![ca.ca_der.clone()],
        layer_timeout: Duration::from_millis(1000),
        probe_timeout: Duration::from_millis(1000),
        stagger: Duration::from_millis(20),
        ..Config::default()
    };

    // 1. The censor drops every packet to the registry: DoH still delivers.
    topology.censor(&rules::blackhole(registry_ip)).unwrap();
    let report = discover_from_client(&topology, config.clone());
    assert_eq!(report.verdict, Verdict::Verified, "{report:#?}");
    assert_eq!(
        report.layer(Layer::Registry).unwrap().outcome,
        Outcome::TimedOut
    );
    assert_eq!(report.layer(Layer::Doh).unwrap().outcome, Outcome::Ok);
    // Candidates carry the normalised URL (the default port dropped).
    let relay_url = Url::parse(&relay.url).unwrap().to_string();
    assert_eq!(report.best.as_ref().unwrap().url, relay_url);

    // 2. The registry is reset and DoH dropped: the cache written by run 1 delivers.
    topology
        .censor(&format!(
            "{}\n{}",
            rules::reset(registry_ip),
            rules::blackhole(doh_ip)
        ))
        .unwrap();
    let report = discover_from_client(&topology, config);
    assert_eq!(report.verdict, Verdict::Verified, "{report:#?}");
    assert_eq!(
        report.layer(Layer::Registry).unwrap().outcome,
        Outcome::Refused
    );
    assert_eq!(report.layer(Layer::Doh).unwrap().outcome, Outcome::TimedOut);
    assert_eq!(report.layer(Layer::Cache).unwrap().outcome, Outcome::Ok);
    assert_eq!(report.best.unwrap().sources, vec![Layer::Cache]);
    drop(doh);
}
