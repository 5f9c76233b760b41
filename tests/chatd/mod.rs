//! Starting the real `chatd` binary in integration tests: every protocol's port flag is given,
//! `0` (disabled) unless the test names it, so a test never binds a default port that another
//! test or program may hold.

#![allow(dead_code)] // each test file uses a different subset

use std::process::Command;

/// Every protocol's port flag.
const PORT_FLAGS: [&str; 7] = [
    "--room-port",
    "--bin24-port",
    "--ccm-port",
    "--matou-port",
    "--ocm-tcp-port",
    "--ocm-udp-port",
    "--ocm-relay-port",
];

/// The port flags: `ports`' values for the flags it names, `0` for every other one.
pub fn port_args(ports: &[(&str, u16)]) -> Vec<String> {
    for (flag, _) in ports {
        assert!(PORT_FLAGS.contains(flag), "unknown port flag {flag}");
    }
    PORT_FLAGS
        .iter()
        .flat_map(|flag| {
            let port = ports
                .iter()
                .find(|(named, _)| named == flag)
                .map_or(0, |&(_, port)| port);
            [flag.to_string(), port.to_string()]
        })
        .collect()
}

/// A `chatd` command serving only the protocols `ports` names, on those ports.
pub fn command(ports: &[(&str, u16)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatd"));
    command.args(port_args(ports));
    command
}
