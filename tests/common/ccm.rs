//! CCM's client side for the integration tests, built by hand from the contract: an
//! identification, an addressed `Text`, and a `Text` as the server delivers it.

use std::net::SocketAddr;

use super::Client;

/// Connects to the CCM port at `addr` and identifies as `name`: the client and its token.
pub fn identify(addr: SocketAddr, name: &str) -> (Client, String) {
    let mut client = Client::connect(addr, name);
    client.send(&identify_message(name));
    let token = expect_identity(&mut client);
    (client, token)
}

/// The identification a client sends first: a `NotDefined` whose body is the name it wants.
pub fn identify_message(name: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 NotDefined\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{name}",
        name.len()
    )
    .into_bytes()
}

/// Waits for the server's `Identity` answer to an identification; returns its token.
pub fn expect_identity(client: &mut Client) -> String {
    client.expect(b"CCM\\1.0 Identity\nUser: ");
    let token = client.read_through(b"\n");
    client.expect(b"Content-Length: 0\n\n");
    String::from_utf8(token[..token.len() - 1].to_vec()).expect("hex token")
}

/// A `Text` from the user of `token` to `to` (`*` for the lobby).
pub fn text(token: &str, to: &str, body: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 Text\nUser: {token}\nAddressee: {to}\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends each of `bodies` to the lobby as the user of `token` on `client`, and returns once
/// the server has handled them all.
pub fn flood_lobby<'a>(
    client: &mut Client,
    token: &str,
    bodies: impl IntoIterator<Item = &'a str>,
) {
    for body in bodies {
        client.send(&text(token, "*", body));
    }
    // Texts are handled in order: once the next one is refused, the flood has been handled.
    client.send(&text(token, "nobody", "x"));
    client.read_through(b"unknown-addressee");
}

/// The exact bytes of a `Text` from `from` to `to` (`*`: the lobby) as a CCM user receives it.
pub fn delivered(from: &str, to: &str, body: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 Text\nSender: {from}\nAddressee: {to}\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{body}",
        body.len()
    )
    .into_bytes()
}
