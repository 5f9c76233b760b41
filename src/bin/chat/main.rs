//! `chat`: the terminal client of Switchboard.
//!
//! One binary, one subcommand per wire protocol, so a user learns a single tool and the
//! protocols share the argument conventions (`--host`, `--port`, `--nick`). Each protocol's
//! client lives in its own module; this file only parses arguments and dispatches.

mod bin24;
mod ccm;
mod conn;
mod hints;
mod input;
mod matou;
mod ocm;
mod room;
mod shell;
mod text;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Terminal client for the Switchboard chat server.
#[derive(Parser, Debug)]
#[command(
    name = "chat",
    version,
    about = "Terminal client for the Switchboard chat server",
    long_about = "Terminal client for the Switchboard chat server.\n\n\
        Each subcommand speaks one of the server's wire protocols exactly as that protocol's \
        original client does, so it works against Switchboard and against the original servers.\n\n\
        Every subcommand takes --tls to reach chatd's TLS port of its protocol instead \
        (--room-tls-port and the others), with --ca FILE to trust a CA of your own (PEM) instead \
        of the system's; the certificate must name --host. A failed TLS handshake (unknown \
        issuer, expired, wrong name, a plaintext port, a cut or silent handshake) ends the \
        client with one line saying why.\n\n\
        Exit status: 0 when the session ends normally (end of input, Ctrl-C, SIGTERM, or the \
        server closing the connection); 1 on a connection, TLS or I/O error; 2 on a usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Join the ROOM nickname chat room (default port 55555)
    #[command(long_about = room::LONG_ABOUT)]
    Room(room::RoomArgs),
    /// Send and receive BIN24 direct messages, with delivery answers and offline storage
    /// (default port 7000)
    #[command(long_about = bin24::LONG_ABOUT)]
    Bin24(bin24::Bin24Args),
    /// Send and receive CCM messages, identified by name (default port 5454)
    #[command(long_about = ccm::LONG_ABOUT)]
    Ccm(ccm::CcmArgs),
    /// Join the MATOU public room, with private messages and file transfers directly between
    /// clients (default port 7777)
    #[command(long_about = matou::LONG_ABOUT)]
    Matou(matou::MatouArgs),
    /// Create or join an OCM room over TCP, then chat in it over UDP (default ports 9002 and
    /// 9003)
    #[command(long_about = ocm::LONG_ABOUT)]
    Ocm(ocm::OcmArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Room(args) => room::run(args),
        Command::Bin24(args) => bin24::run(args),
        Command::Ccm(args) => ccm::run(args),
        Command::Matou(args) => matou::run(args),
        Command::Ocm(args) => ocm::run(args),
    }
}
