//! Discovery benchmark: time to the first verified usable server, side by
//! side in one run, with every layer healthy, with the registry blackholed
//! (accepts TCP, never answers), and with registry and DoH blackholed (cache
//! only). Everything on loopback: the native registry in-process, unbound
//! serving DoH, the stand-in signaling server (tests::ws_echo).
//!
//! `cargo bench -p tests --bench discovery` (BENCH_RUNS, default 20).
//! Default timeouts (3 s per layer and per check), as a user would run it.

use std::time::{Duration, Instant};

use discovery_client::discovery::{Config, Discovery};
use discovery_client::doh::DohServer;
use discovery_client::store::Store;
use tests::blackhole::AcceptsSilently;
use tests::discovery_world::{DiscoveryWorld, DOMAIN};
use url::Url;

struct Scenario {
    name: &'static str,
    config: Config,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let world = DiscoveryWorld::new().await;
        let records = world.publish_with(&world.registry_key).await;
        let doh = world.start_doh(&DiscoveryWorld::zone_lines(&records));
        let cache = world.cache_path("bench-cache.json");
        let now = discovery_client::now_ms();
        Store::new(&cache)
            .update(now, |d| {
                d.record_ok(&world.relay.url, true, None, Some(1.0), now)
            })
            .expect("seed cache");
        let dead_registry = AcceptsSilently::start();
        let dead_doh = AcceptsSilently::start();
        let dead_doh_server: DohServer = format!(
            "https://localhost:{}/dns-query,ip=127.0.0.1",
            dead_doh.address.port()
        )
        .parse()
        .expect("DoH server");

        let base = || Config {
            layer_timeout: Duration::from_secs(3),
            probe_timeout: Duration::from_secs(3),
            stagger: Duration::from_millis(50),
            write_cache: false,
            domains: vec![DOMAIN.into()],
            ..world.config()
        };
        let healthy_registry = vec![world.registry_url()];
        let blackholed_registry =
            vec![Url::parse(&format!("http://{}", dead_registry.address)).expect("url")];
        let scenarios = vec![
            Scenario {
                name: "all layers healthy, cache empty",
                config: Config {
                    registries: healthy_registry.clone(),
                    doh_servers: vec![DiscoveryWorld::doh_server(&doh)],
                    ..base()
                },
            },
            Scenario {
                name: "all layers healthy, cache holds the server",
                config: Config {
                    registries: healthy_registry.clone(),
                    doh_servers: vec![DiscoveryWorld::doh_server(&doh)],
                    store_path: Some(cache.clone()),
                    ..base()
                },
            },
            Scenario {
                name: "registry blackholed, DoH healthy, cache empty",
                config: Config {
                    registries: blackholed_registry.clone(),
                    doh_servers: vec![DiscoveryWorld::doh_server(&doh)],
                    ..base()
                },
            },
            Scenario {
                name: "registry and DoH blackholed, cache only",
                config: Config {
                    registries: blackholed_registry.clone(),
                    doh_servers: vec![dead_doh_server.clone()],
                    store_path: Some(cache.clone()),
                    ..base()
                },
            },
        ];

        println!("discovery: time to the first verified usable server, {runs} runs each");
        println!("| scenario | found | p50 | p90 | max | mean | first-verified layer |");
        println!("|---|---|---|---|---|---|---|");
        for scenario in scenarios {
            let discovery = Discovery::new(scenario.config).expect("discovery");
            // One warm-up run (first TLS handshake, first resolver setup).
            let _ = discovery.best_within(Duration::from_secs(10)).await;
            let mut times = Vec::new();
            let mut found = 0;
            let mut layer = String::new();
            for _ in 0..runs {
                let start = Instant::now();
                let (best, _) = discovery.best_within(Duration::from_secs(10)).await;
                let elapsed = start.elapsed().as_secs_f64() * 1000.0;
                if let Some(best) = best.filter(|b| b.verified) {
                    found += 1;
                    times.push(elapsed);
                    layer = best
                        .sources
                        .iter()
                        .map(|l| l.as_str())
                        .collect::<Vec<_>>()
                        .join("+");
                }
            }
            times.sort_by(|a, b| a.total_cmp(b));
            if times.is_empty() {
                println!("| {} | 0/{runs} | - | - | - | - | - |", scenario.name);
                continue;
            }
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            println!(
                "| {} | {found}/{runs} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {layer} |",
                scenario.name,
                percentile(&times, 0.5),
                percentile(&times, 0.9),
                times[times.len() - 1],
                mean
            );
        }
    });
}
