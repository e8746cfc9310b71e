//! Network namespaces for censorship tests: a client, a censor (router) in
//! the middle, and an "internet" namespace, joined by veth pairs, with the
//! censor's rules written in nftables. Everything is created by the test
//! and torn down when the [`Topology`] is dropped, also when a test fails;
//! namespaces left behind by a killed test run are removed by the next one.
//!
//! Addresses exist only inside these namespaces:
//!
//! ```text
//!  client 10.77.1.2 ── 10.77.1.1 censor 10.77.2.1 ── internet 10.77.2.10, .11, …
//!                                                       10.77.3.1 ── callee 10.77.3.2
//! ```
//!
//! The callee is a host of its own behind the internet namespace (which
//! routes for it), so a program there has exactly one address.
//!
//! Programs run inside a namespace through [`Namespace::command`]
//! (`ip netns exec`); in-process servers and clients are put inside one by
//! creating their sockets in [`Namespace::enter`] (a socket stays in the
//! namespace it was created in, whichever thread uses it later).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace this module creates.
const PREFIX: &str = "zt";

/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
/// The censor's address on the client side (the client's default route).
pub const CENSOR_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
/// The censor's address on the internet side.
pub const CENSOR_INTERNET_SIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);

/// The callee's address (its own namespace, routed by the internet one).
pub const CALLEE: Ipv4Addr = Ipv4Addr::new(10, 77, 3, 2);
/// The internet namespace's address towards the callee.
pub const INTERNET_CALLEE_SIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 3, 1);

/// The `n`th host address of the internet namespace (10.77.2.10 + n).
pub fn internet_host(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 2, 10 + n)
}

/// Runs a command and returns its stdout, or an error naming it and its stderr.
pub fn run(command: &mut Command) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|error| format!("cannot run {command:?}: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// One network namespace, deleted (with its interfaces) when dropped.
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// Creates the namespace `name` with its loopback up.
    pub fn create(name: &str) -> Result<Self, String> {
        ip(&["netns", "add", name]).map_err(|error| {
            format!("{error}\n(network namespaces need root and iproute2; scripts/test installs iproute2)")
        })?;
        let namespace = Self {
            name: name.to_string(),
        };
        namespace.ip(&["link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `program args…` inside the namespace and returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        run(self.command(program).args(args))
    }

    /// Loads an nftables ruleset (the text of `nft -f`) into the namespace.
    pub fn nft(&self, ruleset: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|error| format!("cannot run nft: {error} (scripts/test installs nftables)"))?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(ruleset.as_bytes())
            .map_err(|error| error.to_string())?;
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft refused the ruleset: {}\n{ruleset}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// Starts `work` on a new thread inside this namespace and returns at
    /// once; the thread stays in the namespace for as long as it runs. The
    /// thread yields `Some(result)` (`None` only if it could not enter the
    /// namespace, which this function already reports as an error).
    pub fn spawn<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Option<T>>, String> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        let (entered, result) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = entered.send(Some(std::io::Error::last_os_error().to_string()));
                return None;
            }
            let _ = entered.send(None);
            Some(work())
        });
        match result.recv() {
            Ok(None) => Ok(thread),
            Ok(Some(error)) => Err(format!("setns({path}): {error}")),
            Err(_) => Err(format!("setns({path}): the thread died")),
        }
    }

    /// Runs `work` on a thread inside this namespace and returns its result.
    /// Sockets (and tokio runtimes, whose worker threads inherit the
    /// namespace) created in `work` belong to the namespace for good.
    pub fn enter<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        self.spawn(work)?
            .join()
            .map_err(|_| "work inside the namespace panicked".to_string())?
            .ok_or_else(|| "could not enter the namespace".to_string())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Killing what still runs inside lets the namespace go at once.
        if let Ok(pids) = ip(&["netns", "pids", &self.name]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: plain kill(2) of a process inside our own namespace.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Removes namespaces of earlier runs whose process no longer exists.
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            drop(Namespace {
                name: name.to_string(),
            });
        }
    }
}

/// Client, censor and internet namespaces joined through the censor, and
/// the callee behind the internet namespace.
///
/// Fields drop in order: the namespaces (and everything running in them)
/// go when the topology goes.
#[derive(Debug)]
pub struct Topology {
    pub client: Namespace,
    pub censor: Namespace,
    pub internet: Namespace,
    /// A host of its own on the internet side (see [`CALLEE`]).
    pub callee: Namespace,
    /// The censor's interface towards the internet (for traffic shaping).
    pub censor_uplink: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// Builds the namespaces with `hosts` (at least 1) addresses in the
    /// internet namespace ([`internet_host`]`(0..hosts)`), routing through
    /// the censor, which has no rules yet.
    pub fn new(hosts: u8) -> Result<Self, String> {
        if hosts == 0 {
            return Err("the internet namespace needs at least one address".into());
        }
        remove_stale();
        let tag = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let client = Namespace::create(&format!("{tag}c"))?;
        let censor = Namespace::create(&format!("{tag}r"))?;
        let internet = Namespace::create(&format!("{tag}i"))?;
        let callee = Namespace::create(&format!("{tag}k"))?;
        // Interface names are at most 15 bytes; they live inside the
        // namespaces, so the same short names serve every topology.
        let links = [
            (
                &client,
                "c0",
                &censor,
                "r0",
                format!("{tag}a"),
                format!("{tag}b"),
            ),
            (
                &censor,
                "r1",
                &internet,
                "i0",
                format!("{tag}d"),
                format!("{tag}e"),
            ),
            (
                &internet,
                "i1",
                &callee,
                "k0",
                format!("{tag}f"),
                format!("{tag}g"),
            ),
        ];
        for (left, left_name, right, right_name, temp_left, temp_right) in &links {
            ip(&[
                "link", "add", temp_left, "type", "veth", "peer", "name", temp_right,
            ])?;
            ip(&["link", "set", temp_left, "netns", left.name()])?;
            ip(&["link", "set", temp_right, "netns", right.name()])?;
            left.ip(&["link", "set", temp_left, "name", left_name])?;
            right.ip(&["link", "set", temp_right, "name", right_name])?;
            left.ip(&["link", "set", left_name, "up"])?;
            right.ip(&["link", "set", right_name, "up"])?;
        }
        client.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "c0"])?;
        censor.ip(&[
            "addr",
            "add",
            &format!("{CENSOR_CLIENT_SIDE}/24"),
            "dev",
            "r0",
        ])?;
        censor.ip(&[
            "addr",
            "add",
            &format!("{CENSOR_INTERNET_SIDE}/24"),
            "dev",
            "r1",
        ])?;
        for n in 0..hosts {
            internet.ip(&[
                "addr",
                "add",
                &format!("{}/24", internet_host(n)),
                "dev",
                "i0",
            ])?;
        }
        client.ip(&[
            "route",
            "add",
            "default",
            "via",
            &CENSOR_CLIENT_SIDE.to_string(),
        ])?;
        internet.ip(&[
            "route",
            "add",
            "default",
            "via",
            &CENSOR_INTERNET_SIDE.to_string(),
        ])?;
        censor.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        internet.ip(&[
            "addr",
            "add",
            &format!("{INTERNET_CALLEE_SIDE}/24"),
            "dev",
            "i1",
        ])?;
        callee.ip(&["addr", "add", &format!("{CALLEE}/24"), "dev", "k0"])?;
        callee.ip(&[
            "route",
            "add",
            "default",
            "via",
            &INTERNET_CALLEE_SIDE.to_string(),
        ])?;
        internet.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        censor.ip(&[
            "route",
            "add",
            "10.77.3.0/24",
            "via",
            &internet_host(0).to_string(),
        ])?;
        Ok(Self {
            client,
            censor,
            internet,
            callee,
            censor_uplink: "r1".into(),
        })
    }

    /// Replaces the censor's rules with `rules`: nftables statements for a
    /// forward-hook chain (for example `ip daddr 10.77.2.10 drop`). An empty
    /// string lets everything through.
    pub fn censor(&self, rules: &str) -> Result<(), String> {
        self.censor_and_redirect(rules, &[])
    }

    /// Like [`Topology::censor`], and also rewrites the destination of TCP
    /// connections (DNAT in the censor), as a censor that answers in a
    /// server's name does: each `(from, to)` sends what the client
    /// addresses to `from` to `to` instead.
    pub fn censor_and_redirect(
        &self,
        rules: &str,
        redirects: &[(SocketAddrV4, SocketAddrV4)],
    ) -> Result<(), String> {
        let mut nat = String::new();
        if !redirects.is_empty() {
            nat.push_str(
                "table ip censor_nat {\n\
                   chain prerouting {\n\
                     type nat hook prerouting priority -100; policy accept;\n",
            );
            for (from, to) in redirects {
                nat.push_str(&format!(
                    "ip daddr {} tcp dport {} dnat to {to}\n",
                    from.ip(),
                    from.port()
                ));
            }
            nat.push_str("}\n}\n");
        }
        self.censor.nft(&format!(
            "flush ruleset\n\
             table inet censor {{\n\
               chain forward {{\n\
                 type filter hook forward priority 0; policy accept;\n\
                 {rules}\n\
               }}\n\
             }}\n\
             {nat}"
        ))
    }
}

/// Ready-made censor rules for the scenarios.
pub mod rules {
    use std::net::Ipv4Addr;

    /// Packets to `address` vanish (connections hang until they time out).
    pub fn blackhole(address: Ipv4Addr) -> String {
        format!("ip daddr {address} drop")
    }

    /// TCP to `address` is answered with a reset, anything else refused.
    pub fn reset(address: Ipv4Addr) -> String {
        format!(
            "ip daddr {address} meta l4proto tcp reject with tcp reset\n\
             ip daddr {address} reject"
        )
    }

    /// Every UDP packet dropped, both ways.
    pub const NO_UDP: &str = "meta l4proto udp drop";

    /// Only TCP to port 443 (and its replies) passes.
    pub const ONLY_TCP_443: &str = "ct state established,related accept\n\
        tcp dport 443 accept\n\
        drop";

    /// Drops `percent`% of forwarded packets at random.
    pub fn loss(percent: u8) -> String {
        format!("numgen random mod 100 < {percent} drop")
    }
}
