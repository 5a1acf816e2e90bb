//! The command line as an administrator uses it: check, explain, run with a bad config, --help.

mod common;

use std::process::Command;

use common::pinhole::{Setup, TEST_ZONES, binary, cli as pinhole, config_text};

fn repo_file(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_passes_on_the_bundled_config() {
    let (ok, stdout, stderr) = pinhole(&["check", "--config", &repo_file("config.toml")]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(": ok ("), "{stdout}");
}

#[test]
fn check_reports_every_error_with_file_line_column_and_fix() {
    let cfg = config_text("listn = 3", "");
    let setup = Setup::new(&cfg, &["127.0.0.1:53".parse().expect("addr")], TEST_ZONES);
    let path = setup.config_path();
    let (ok, _, stderr) = pinhole(&["check", "--config", path.to_str().expect("utf8")]);
    assert!(!ok);
    let expect = format!("{}:4:1: error: unknown field `listn`", path.display());
    assert!(stderr.contains(&expect), "{stderr}");
    assert!(stderr.contains("fix: "), "{stderr}");

    // Zone file errors: every one reported, each located.
    let zones = "[[zone]]\nname = \"z\"\nhosts = [\"ok.test\", \"bad name.test\"]\nports = [\"tcp/99999\"]\n";
    let setup = Setup::new(
        &config_text("", ""),
        &["127.0.0.1:53".parse().expect("addr")],
        zones,
    );
    let path = setup.config_path();
    let (ok, _, stderr) = pinhole(&["check", "--config", path.to_str().expect("utf8")]);
    assert!(!ok);
    let zone_file = setup.dir.path().join("zones/test.toml");
    assert!(
        stderr.contains(&format!(
            "{}:3:21: error: host pattern",
            zone_file.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:4:10: error: port", zone_file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("fix: write \"tcp/443\""), "{stderr}");

    // A zone named in enable that does not exist points at the config line.
    let cfg = config_text("", "[policy]\nenable = [\"test\", \"nosuch\"]\n");
    let setup = Setup::new(&cfg, &["127.0.0.1:53".parse().expect("addr")], TEST_ZONES);
    let path = setup.config_path();
    let (ok, _, stderr) = pinhole(&["check", "--config", path.to_str().expect("utf8")]);
    assert!(!ok);
    assert!(
        stderr.contains(":10:19: error: [policy] enable names zone \"nosuch\""),
        "{stderr}"
    );
    assert!(stderr.contains("use one of: test, blocked-nx"), "{stderr}");
}

#[test]
fn run_with_a_bad_config_never_starts() {
    let setup = Setup::new(&config_text("", ""), &[], TEST_ZONES);
    let path = setup.config_path();
    let out = Command::new(binary())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[upstream] servers is empty"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn explain_names_zone_rule_ports_and_answer() {
    let setup = Setup::new(
        &config_text("", ""),
        &["127.0.0.1:53".parse().expect("addr")],
        TEST_ZONES,
    );
    let path = setup.config_path();
    let p = path.to_str().expect("utf8");
    let (ok, out, err) = pinhole(&["explain", "WWW.Example.Test.", "AAAA", "--config", p]);
    assert!(ok, "{err}");
    assert!(out.contains("zone:     test ("), "{out}");
    assert!(
        out.contains("rule:     *.example.test (wildcard), action allow"),
        "{out}"
    );
    assert!(out.contains("ports:    tcp/443"), "{out}");
    assert!(out.contains("answer:   the upstream's answer"), "{out}");
    let (_, out, _) = pinhole(&["explain", "x.sink.blocked.test", "HTTPS", "--config", p]);
    assert!(out.contains("answer:   NODATA"), "{out}");
    let (_, out, _) = pinhole(&["explain", "www.example.org", "--config", p]);
    assert!(out.contains("default_action = \"refuse\""), "{out}");
    assert!(out.contains("REFUSED"), "{out}");
    let (_, out, _) = pinhole(&["explain", "mask.icloud.com", "--config", p]);
    assert!(out.contains("Private Relay"), "{out}");
    assert!(out.contains("NXDOMAIN"), "{out}");
}

#[test]
fn help_everywhere() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check", "--help"],
        &["explain", "--help"],
    ] {
        let (ok, out, _) = pinhole(args);
        assert!(ok);
        assert!(out.contains("Usage: pinhole"), "{out}");
    }
}
