//! The shipped server configs parse with the real nats-server (`nats-server -t`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use aegis_nats::conf::{PASSWORD_ENV_VARS, conf_dir};
use aegis_tests::nats_server::checked_binary;

fn check(relative: &str, with_passwords: bool) -> (bool, String) {
    let (binary, _) = checked_binary().expect("nats-server (run ./scripts/setup.sh)");
    let mut command = Command::new(binary);
    command.arg("-t").arg("-c").arg(conf_dir().join(relative));
    for (user, var) in PASSWORD_ENV_VARS {
        if with_passwords {
            command.env(var, format!("pw-{user}"));
        } else {
            command.env_remove(var);
        }
    }
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn shipped_configs_are_valid() {
    for conf in [
        "single.conf",
        "cluster/n1.conf",
        "cluster/n2.conf",
        "cluster/n3.conf",
    ] {
        let (ok, text) = check(conf, true);
        assert!(ok, "{conf}: {text}");
    }
}

#[test]
fn a_missing_password_variable_stops_the_server() {
    let (ok, text) = check("cluster/n1.conf", false);
    assert!(!ok, "started without passwords: {text}");
    assert!(text.contains("AEGIS_NATS_"), "{text}");
}

#[test]
fn single_and_cluster_configs_fsync_every_write() {
    for conf in [
        "single.conf",
        "cluster/n1.conf",
        "cluster/n2.conf",
        "cluster/n3.conf",
    ] {
        let text = std::fs::read_to_string(conf_dir().join(conf)).unwrap();
        assert!(text.contains("sync_interval: always"), "{conf}");
        assert!(text.contains("max_payload: 8MB"), "{conf}");
    }
}
