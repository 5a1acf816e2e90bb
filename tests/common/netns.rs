//! A network namespace per test, deleted on drop (also when the test fails), and a way to run
//! code inside it. Tests never touch the host's own ruleset.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// `ip netns add pinhole-test-<random>`.
    pub fn new() -> NetNs {
        let name = format!("pinhole-test-{:08x}", rand::random::<u32>());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add (apt-get install iproute2)");
        assert!(
            st.success(),
            "ip netns add {name} failed (tests must run as root)"
        );
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec NAME ip ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let st = Command::new("ip")
            .args(["netns", "exec", &self.name, "ip"])
            .args(args)
            .status()
            .expect("ip");
        assert!(st.success(), "ip {args:?} in {} failed", self.name);
    }

    /// `ip netns exec NAME CMD ARGS`, returning stdout, asserting success.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .output()
            .expect("exec");
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets made there (netlink
    /// included) stay in the namespace wherever they are used later; threads spawned there
    /// start in it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&self.name);
                f()
            })
            .join()
            .expect("netns thread")
        })
    }
}

/// Moves the calling thread into namespace `name`; threads it spawns start there too.
pub fn enter(name: &str) {
    let file = File::open(format!("/var/run/netns/{name}")).expect("open netns");
    // SAFETY: setns on this thread only, with a valid namespace fd.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

impl NetNs {
    /// `ip -n NAME ARGS` without asserting (for commands that may fail by design).
    pub fn ip_ok(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A namespace owned elsewhere (not deleted on drop), for code that only needs to enter it.
pub struct Borrowed(pub String);

/// Something that names a namespace.
pub trait Named {
    fn ns_name(&self) -> &str;
}

impl Named for NetNs {
    fn ns_name(&self) -> &str {
        &self.name
    }
}

impl Named for Borrowed {
    fn ns_name(&self) -> &str {
        &self.0
    }
}

/// Runs `f` on a thread inside the named namespace.
pub fn run_in<T: Send>(ns: &impl Named, f: impl FnOnce() -> T + Send) -> T {
    let name = ns.ns_name();
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(name);
            f()
        })
        .join()
        .expect("netns thread")
    })
}
