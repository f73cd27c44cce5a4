//! Hosting through a NAT, against a real router: a home network behind a router running
//! Debian's miniupnpd (a UPnP Internet Gateway Device, nftables backend) and a friend on the
//! router's internet side, each in a network namespace this test creates. The router's
//! "internet" address (11.77.0.1) exists only inside these namespaces, which are connected to
//! nothing else: no packet leaves the machine. (miniupnpd refuses to map ports when its external
//! address is a private or documentation one, as a real router behind another NAT would, so the
//! test cannot use those.) Needs root, like `ip netns`; `scripts/setup.sh test` installs
//! miniupnpd-nftables and nftables.

use natter_e2e::{Reaped, TempDir, command, natter_bin};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const LAN_HOST: &str = "10.77.1.2";
const LAN_ROUTER: &str = "10.77.1.1";
const WAN_ROUTER: &str = "11.77.0.1";
const WAN_FRIEND: &str = "11.77.0.2";

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Three namespaces (home host, router, friend on the internet side) and, when asked, the
/// router's UPnP daemon; all removed on drop.
struct Network {
    prefix: String,
    dir: TempDir,
    upnp: Option<Reaped>,
}

impl Network {
    fn new(tag: &str) -> Self {
        let prefix = format!("nt{}{tag}", std::process::id() % 100_000);
        let net = Self {
            prefix,
            dir: TempDir::new("nat"),
            upnp: None,
        };
        let (h, r, w) = (net.ns("h"), net.ns("r"), net.ns("w"));
        for ns in [&h, &r, &w] {
            run("ip", &["netns", "add", ns]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        let link = |a: &str, a_ns: &str, b: &str, b_ns: &str| {
            run("ip", &["link", "add", a, "type", "veth", "peer", "name", b]);
            run("ip", &["link", "set", a, "netns", a_ns]);
            run("ip", &["link", "set", b, "netns", b_ns]);
            run("ip", &["-n", a_ns, "link", "set", a, "up"]);
            run("ip", &["-n", b_ns, "link", "set", b, "up"]);
        };
        link(&net.dev("hr"), &h, &net.dev("rh"), &r);
        link(&net.dev("wr"), &w, &net.dev("rw"), &r);
        let addr = |ns: &str, ip: &str, dev: &str| {
            run("ip", &["-n", ns, "addr", "add", ip, "dev", dev]);
        };
        addr(&h, &format!("{LAN_HOST}/24"), &net.dev("hr"));
        addr(&r, &format!("{LAN_ROUTER}/24"), &net.dev("rh"));
        addr(&r, &format!("{WAN_ROUTER}/24"), &net.dev("rw"));
        addr(&w, &format!("{WAN_FRIEND}/24"), &net.dev("wr"));
        // The home host routes everything through the router; the friend knows only the
        // router's public address, as on the internet.
        run(
            "ip",
            &["-n", &h, "route", "add", "default", "via", LAN_ROUTER],
        );
        run(
            "ip",
            &[
                "netns",
                "exec",
                &r,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        // A home router's firewall: forward only what the LAN started or what UPnP opened,
        // masquerade the LAN, and the empty chains miniupnpd fills.
        let rules = format!(
            "table inet filter {{
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname \"{lan}\" accept
        jump miniupnpd
    }}
    chain miniupnpd {{
    }}
    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        oifname \"{wan}\" masquerade
        jump postrouting_miniupnpd
    }}
    chain prerouting_miniupnpd {{
    }}
    chain postrouting_miniupnpd {{
    }}
}}
",
            lan = net.dev("rh"),
            wan = net.dev("rw"),
        );
        let rules_file = net.dir.join("router.nft");
        std::fs::write(&rules_file, rules).unwrap();
        run(
            "ip",
            &[
                "netns",
                "exec",
                &r,
                "nft",
                "-f",
                rules_file.to_str().unwrap(),
            ],
        );
        net
    }

    fn ns(&self, which: &str) -> String {
        format!("{}{which}", self.prefix)
    }

    /// Interface names (at most 15 bytes).
    fn dev(&self, which: &str) -> String {
        format!("{}{which}", self.prefix)
    }

    /// Starts miniupnpd on the router: UPnP-IGD and NAT-PMP/PCP for the LAN, secure mode (a
    /// client may map ports only to itself).
    fn start_upnp(&mut self) {
        let conf = self.dir.join("miniupnpd.conf");
        std::fs::write(
            &conf,
            format!(
                "ext_ifname={wan}\nlistening_ip={lan}\nhttp_port=0\nenable_upnp=yes\n\
                 enable_natpmp=yes\nsecure_mode=yes\nsystem_uptime=no\n\
                 uuid=3a6e7b0e-0000-4000-8000-00000000beef\n\
                 lease_file={lease}\n\
                 allow 1024-65535 10.77.1.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
                wan = self.dev("rw"),
                lan = self.dev("rh"),
                lease = self.dir.join("leases").display(),
            ),
        )
        .unwrap();
        let pid = self.dir.join("miniupnpd.pid");
        let child = command(Path::new("ip"))
            .args([
                "netns",
                "exec",
                &self.ns("r"),
                "/usr/sbin/miniupnpd",
                "-d",
                "-f",
            ])
            .arg(&conf)
            .arg("-P")
            .arg(&pid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("miniupnpd (Debian: miniupnpd-nftables)");
        self.upnp = Some(Reaped(child));
        // Ready when its SSDP socket is bound; the host's search retries for 3 s anyway.
        std::thread::sleep(Duration::from_millis(500));
    }

    /// What miniupnpd put into the router's NAT table.
    fn forwarded(&self) -> String {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns("r"),
                "nft",
                "list",
                "chain",
                "inet",
                "filter",
                "prerouting_miniupnpd",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        drop(self.upnp.take());
        for which in ["h", "r", "w"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(which)])
                .status();
        }
    }
}

/// `natter host` in the home namespace; returns it, its invite and what it told the host
/// about who can join (the first line on stderr; stdout and stderr arrive in either order).
fn host(net: &Network, data: &Path) -> (Reaped, String, String) {
    let mut child = command(Path::new("ip"))
        .args(["netns", "exec", &net.ns("h")])
        .arg(natter_bin())
        .args(["host", "--room", "nat", "--port", "4433", "--data-dir"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("natter host");
    let (lines_tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let tx = lines_tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send((false, line));
        }
    });
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send((true, line));
        }
    });
    let child = Reaped(child);
    let (mut invite, mut notice) = (None, None);
    let mut seen = Vec::new();
    while invite.is_none() || notice.is_none() {
        let (from_stdout, line) =
            lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| {
                    panic!("natter host printed no invite and notice in 20 s: {seen:?}")
                });
        match line.strip_prefix("invite: ") {
            Some(link) if from_stdout => invite = Some(link.to_owned()),
            _ if !from_stdout && notice.is_none() => notice = Some(line.clone()),
            _ => {}
        }
        seen.push(line);
    }
    (child, invite.unwrap(), notice.unwrap())
}

fn stop(mut host: Reaped) {
    let pid = host.0.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child (`ip netns exec` execs natter in place).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = host.0.wait().expect("natter host exits");
    assert!(status.success(), "natter host exited with {status}");
}

#[test]
fn a_call_hosted_behind_a_router_is_reached_from_outside_through_upnp() {
    let mut net = Network::new("a");
    net.start_upnp();
    let data = TempDir::new("nat-host");
    let (host_process, invite, said) = host(&net, data.path());
    assert!(
        said.contains("people anywhere can join"),
        "the host is told: {said}"
    );
    assert!(
        invite.starts_with(&format!("natter://{WAN_ROUTER}:4433/nat?fp=")),
        "the invite carries the router's public address: {invite}"
    );
    assert!(
        net.forwarded()
            .contains(&format!("dport 4433 dnat ip to {LAN_HOST}:4433")),
        "router rules: {}",
        net.forwarded()
    );

    // A friend on the internet side joins through the router (echo mode: their chirps travel
    // to the hosted relay and back) and hears them.
    let files = TempDir::new("nat-friend");
    let chirps = files.join("chirps.wav");
    let heard = files.join("heard.wav");
    let ok = |out: Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(
        Command::new(natter_bin())
            .args(["signal", "chirps"])
            .arg(&chirps)
            .args(["--seconds", "3"])
            .output()
            .unwrap(),
        "natter signal",
    );
    ok(
        command(Path::new("ip"))
            .args(["netns", "exec", &net.ns("w")])
            .arg(natter_bin())
            .args([
                "call",
                &invite,
                "--name",
                "friend",
                "--echo",
                "--duration",
                "4",
            ])
            .arg("--input")
            .arg(&chirps)
            .arg("--output")
            .arg(&heard)
            .output()
            .unwrap(),
        "the friend's call through the router",
    );
    ok(
        Command::new(natter_bin())
            .arg("latency")
            .arg(&heard)
            .args(["--seconds", "3"])
            .output()
            .unwrap(),
        "the friend's chirps came back through the router",
    );

    // Quitting closes the port on the router.
    stop(host_process);
    assert!(
        !net.forwarded().contains("dport 4433"),
        "the mapping outlived the host: {}",
        net.forwarded()
    );
}

#[test]
fn without_upnp_the_host_is_told_what_to_do_and_still_hosts_for_the_lan() {
    let net = Network::new("b");
    let data = TempDir::new("nat-host");
    let (host_process, invite, said) = host(&net, data.path());
    assert!(
        said.contains("No router answered")
            && said.contains(&format!(
                "forward UDP port 4433 to this computer ({LAN_HOST})"
            )),
        "the host is told: {said}"
    );
    assert!(
        invite.starts_with(&format!("natter://{LAN_HOST}:4433/nat?fp=")),
        "the invite falls back to the LAN address: {invite}"
    );
    stop(host_process);
}
