//! The whole promise, end to end with the real kernel: a client namespace, a gateway namespace
//! running pinhole (with its upstream) and the ruleset `pinhole ruleset` prints, and a server
//! namespace with TCP listeners. Addresses are documentation and benchmark ranges that exist
//! only inside these namespaces.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::netns::{NetNs, enter};
use common::pinhole::{self, Setup};
use common::upstream::Upstream;

const ZONES: &str = r#"
[[zone]]
name = "many"
action = "allow"
ports = ["tcp/443"]
hosts = ["*.many.example.test"]
"#;

const GW_CLIENT_SIDE: &str = "198.51.100.1";
const CLIENT: &str = "198.51.100.2";
const GW_SERVER_SIDE: &str = "198.18.0.1";
/// n5.many.example.test resolves to this (see tests/common/upstream.rs `many_addr`).
const SERVER: &str = "198.18.0.5";
/// A second address on the server that pinhole never hands out.
const SERVER_OTHER: &str = "198.18.0.6";

fn connect(ns: &NetNs, addr: &str, port: u16) -> bool {
    let target: SocketAddr = format!("{addr}:{port}").parse().expect("addr");
    ns.run(|| TcpStream::connect_timeout(&target, Duration::from_millis(700)).is_ok())
}

fn kdig(ns: &NetNs, args: &[&str]) -> String {
    let mut all = vec!["kdig", "@198.51.100.1", "+timeout=2", "+retry=0"];
    all.extend_from_slice(args);
    ns.exec(all[0], &all[1..])
}

#[test]
fn first_connect_to_an_answered_address_succeeds_and_nothing_else_gets_through() {
    let (cl, gw, sv) = (NetNs::new(), NetNs::new(), NetNs::new());
    gw.ip(&[
        "link", "add", "gc", "type", "veth", "peer", "name", "cg", "netns", &cl.name,
    ]);
    gw.ip(&[
        "link", "add", "gs", "type", "veth", "peer", "name", "sg", "netns", &sv.name,
    ]);
    gw.ip(&["addr", "add", &format!("{GW_CLIENT_SIDE}/24"), "dev", "gc"]);
    gw.ip(&["addr", "add", &format!("{GW_SERVER_SIDE}/24"), "dev", "gs"]);
    gw.ip(&["link", "set", "gc", "up"]);
    gw.ip(&["link", "set", "gs", "up"]);
    cl.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "cg"]);
    cl.ip(&["link", "set", "cg", "up"]);
    cl.ip(&["route", "add", "default", "via", GW_CLIENT_SIDE]);
    sv.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "sg"]);
    sv.ip(&["addr", "add", &format!("{SERVER_OTHER}/24"), "dev", "sg"]);
    sv.ip(&["link", "set", "sg", "up"]);
    sv.ip(&["route", "add", "default", "via", GW_SERVER_SIDE]);
    gw.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);

    // The server host listens on an allowed and a disallowed port, on both addresses.
    let listeners: Vec<TcpListener> = sv.run(|| {
        [(SERVER, 443), (SERVER, 8080), (SERVER_OTHER, 443)]
            .iter()
            .map(|(a, p)| TcpListener::bind(format!("{a}:{p}")).expect("listen"))
            .collect()
    });
    for l in listeners {
        std::thread::spawn(move || {
            for c in l.incoming() {
                drop(c)
            }
        });
    }

    // pinhole and its upstream in the gateway: a runtime whose threads live in that namespace.
    let state = tempfile::tempdir().expect("tmp");
    let config = format!(
        "[server]\nlisten = [\"{GW_CLIENT_SIDE}:53\"]\nallow_clients = [\"198.51.100.0/24\"]\n\
         [upstream]\nservers = [{{upstreams}}]\n\
         [firewall]\nmode = \"managed\"\nstate_dir = \"{}\"\n",
        state.path().display()
    );
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gw_name = gw.name.clone();
    let gateway = std::thread::spawn(move || {
        enter(&gw_name);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let up = Upstream::start().await;
            let setup = Setup::new(&config, &[up.addr], ZONES);
            let path = setup.config_path();
            let ns = common::netns::Borrowed(gw_name.clone());
            let (p, _fw) = pinhole::start_with_firewall_in(setup, &ns).await;
            ready_tx.send(path).expect("ready");
            let _ = stop_rx.await;
            drop(p);
        });
    });
    let config_path = ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("gateway ready");

    // The administrator loads the ruleset pinhole prints.
    let ruleset = Command::new(pinhole::binary())
        .args(["ruleset", "--config"])
        .arg(&config_path)
        .output()
        .expect("ruleset");
    assert!(
        ruleset.status.success(),
        "{}",
        String::from_utf8_lossy(&ruleset.stderr)
    );
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &gw.name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    nft.stdin
        .take()
        .expect("stdin")
        .write_all(&ruleset.stdout)
        .expect("write ruleset");
    assert!(
        nft.wait().expect("nft").success(),
        "nft -f rejected the ruleset"
    );

    // Before any answer: default drop.
    assert!(
        !connect(&cl, SERVER, 443),
        "nothing is open before pinhole answers"
    );
    // The client resolves an approved name through pinhole...
    let answer = kdig(&cl, &["+short", "n5.many.example.test", "A"]);
    assert_eq!(answer.trim(), SERVER);
    // ...and its first connection to the answered address succeeds on the zone's port.
    assert!(
        connect(&cl, SERVER, 443),
        "first connect to {SERVER}:443 after the answer"
    );
    // Other ports of that address stay closed; so does an address pinhole never handed out.
    assert!(!connect(&cl, SERVER, 8080), "port 8080 is not in the zone");
    assert!(
        !connect(&cl, SERVER_OTHER, 443),
        "{SERVER_OTHER} was never handed out"
    );
    // An unlisted name is refused.
    let refused = kdig(&cl, &["www.example.org", "A"]);
    assert!(refused.contains("status: REFUSED"), "{refused}");
    // DNS to anyone but pinhole is dropped (the server host stands in for a public resolver).
    let bypass = Command::new("ip")
        .args([
            "netns",
            "exec",
            &cl.name,
            "kdig",
            "@198.18.0.5",
            "+timeout=1",
            "+retry=0",
            "a.example.test",
        ])
        .output()
        .expect("kdig");
    assert!(
        !String::from_utf8_lossy(&bypass.stdout).contains("status:"),
        "DNS bypass must not get an answer"
    );

    let _ = stop_tx.send(());
    gateway.join().expect("gateway thread");
}
