//! CCM's client side for the integration tests, built by hand from the contract: an
//! identification and an addressed `Text`.

use std::net::SocketAddr;

use super::Client;

/// Connects to the CCM port at `addr` and identifies as `name`: the client and its token.
pub fn identify(addr: SocketAddr, name: &str) -> (Client, String) {
    let mut client = Client::connect(addr, name);
    client.send(
        format!(
            "CCM\\1.0 NotDefined\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{name}",
            name.len()
        )
        .as_bytes(),
    );
    client.expect(b"CCM\\1.0 Identity\nUser: ");
    let token = client.read_through(b"\n");
    client.expect(b"Content-Length: 0\n\n");
    let token = String::from_utf8(token[..token.len() - 1].to_vec()).expect("hex token");
    (client, token)
}

/// A `Text` from the user of `token` to `to` (`*` for the lobby).
pub fn text(token: &str, to: &str, body: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 Text\nUser: {token}\nAddressee: {to}\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{body}",
        body.len()
    )
    .into_bytes()
}
