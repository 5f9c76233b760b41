//! Argument helpers shared by every scenario: the duration parser, the loopback-only target,
//! and the pace every scenario's config takes alike from its flags or its share of the mix.

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::CommonArgs;

/// What every scenario's config takes alike from its subcommand's flags or from its share of
/// `loadgen mix`: its rate, its phases' lengths, its ramp-up's pace, its seed, and whether it
/// draws a progress line.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub rate_per_s: u64,
    pub duration_us: u64,
    pub warmup_us: u64,
    pub drain_us: u64,
    pub connect_rate_per_s: u64,
    pub seed: u64,
    pub progress: bool,
}

impl Pace {
    /// `rate_per_s` over --duration, --warmup and --drain (else `drain_default`), ramping up
    /// at `connect_rate_per_s`.
    pub fn of(
        common: &CommonArgs,
        rate_per_s: u64,
        drain_default: Duration,
        connect_rate_per_s: u64,
        progress: bool,
    ) -> Pace {
        Pace {
            rate_per_s,
            duration_us: common.duration.as_micros() as u64,
            warmup_us: common.warmup.as_micros() as u64,
            drain_us: common.drain.unwrap_or(drain_default).as_micros() as u64,
            connect_rate_per_s,
            seed: common.seed,
            progress,
        }
    }

    /// A subcommand's: at --connect-rate, with a progress line when stderr is a terminal.
    pub fn single(common: &CommonArgs, rate_per_s: u64, drain_default: Duration) -> Pace {
        let progress = std::io::stderr().is_terminal();
        Pace::of(
            common,
            rate_per_s,
            drain_default,
            common.connect_rate,
            progress,
        )
    }
}

/// Parses `10s`, `500ms`, `2m`, `1.5s`, `250us`, `1h`: a decimal number followed by a unit.
/// A bare number is refused: `--duration 10` is ambiguous, and a wrong guess makes a run 1000
/// times longer or shorter than meant.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split_at = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` has no unit: write e.g. 10s, 500ms, 2m"))?;
    let (number, unit) = text.split_at(split_at);
    let unit_ns: u128 = match unit {
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use us, ms, s, m or h)"
            ))
        }
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    // Exact decimal arithmetic (no floats): "0.1s" is exactly 100 ms.
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty()
        || !digits_ok(whole)
        || !digits_ok(fraction)
        || whole.len() > 12
        || fraction.len() > 9
    {
        return Err(format!(
            "`{text}` is not a duration: write e.g. 10s, 500ms, 2m"
        ));
    }
    let whole_value: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| format!("`{text}`: bad number"))?
    };
    let mut fraction_ns: u128 = 0;
    let mut scale = unit_ns;
    for digit in fraction.bytes() {
        scale /= 10;
        fraction_ns += u128::from(digit - b'0') * scale;
    }
    let total_ns = whole_value * unit_ns + fraction_ns;
    let total_ns = u64::try_from(total_ns).map_err(|_| format!("`{text}` is too long"))?;
    Ok(Duration::from_nanos(total_ns))
}

/// Resolves `--host` (one loopback host, or a comma-separated list of them: the clients are
/// spread over several servers, client i on host i mod n) at `port`, and insists that every
/// address it names is on this machine. Returns the first host's address: the scenarios keep
/// one target, and [`crate::connect`] turns it into client i's host (the list is recorded there
/// once, here, the one place every scenario's `--host` passes through).
pub fn resolve_loopback(hosts: &str, port: u16) -> Result<SocketAddr, String> {
    let targets = resolve_hosts(hosts, port)?;
    crate::connect::spread_over(&targets)?;
    Ok(targets[0])
}

/// As [`resolve_loopback`], for what cannot be spread over several servers (OCM's rooms live
/// on one node): a list of hosts is refused, saying `why`.
pub fn resolve_one_host(hosts: &str, port: u16, why: &str) -> Result<SocketAddr, String> {
    let targets = resolve_hosts(hosts, port)?;
    if targets.len() > 1 {
        return Err(format!("--host {hosts}: one host only, {why}"));
    }
    Ok(targets[0])
}

/// Every host of the comma-separated list `hosts` at `port`, in order, each resolved with
/// [`resolve_one`]; an empty item or a host named twice is refused.
pub fn resolve_hosts(hosts: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let mut targets: Vec<SocketAddr> = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        if host.is_empty() {
            return Err(format!("--host `{hosts}`: an empty host in the list"));
        }
        let target = resolve_one(host, port)?;
        if targets.contains(&target) {
            return Err(format!("--host `{hosts}` names {target} twice"));
        }
        targets.push(target);
    }
    Ok(targets)
}

/// Resolves one `host:port` and insists that every address it names is on this machine.
///
/// This workplace forbids load against any other host, so a name that resolves to anything
/// outside 127.0.0.0/8 or ::1 is refused outright rather than filtered: a typo must not send
/// traffic elsewhere.
fn resolve_one(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| format!("`{host}` resolves to no address"))?;
    if let Some(bad) = addrs.iter().find(|a| !is_loopback(a.ip())) {
        return Err(format!(
            "refusing target {bad}: the loadgen only targets this machine \
             (127.0.0.0/8 or ::1), and `{host}` names another address"
        ));
    }
    Ok(first)
}

/// Loopback, including an IPv4-mapped IPv6 loopback (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 3s "), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn durations_with_fractions_are_exact() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration(".25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2.5ms"), Ok(Duration::from_micros(2500)));
        assert_eq!(
            parse_duration("1.000000001s"),
            Ok(Duration::from_nanos(1_000_000_001))
        );
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in [
            "",
            "10",
            "s",
            "ms",
            "-1s",
            "1.2.3s",
            "1 s",
            "10sec",
            "1x",
            ".s",
            "1e3s",
            "1.0000000001s",
            "9999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn only_loopback_targets() {
        assert!(resolve_loopback("127.0.0.1", 1).is_ok());
        assert!(resolve_loopback("127.1.2.3", 1).is_ok());
        assert!(resolve_loopback("::1", 1).is_ok());
        assert!(resolve_loopback("::ffff:127.0.0.1", 1).is_ok());
        for bad in [
            "10.0.0.1",
            "192.168.1.1",
            "8.8.8.8",
            "0.0.0.0",
            "::",
            "172.16.0.1",
        ] {
            let err = resolve_loopback(bad, 1).unwrap_err();
            assert!(err.contains("refusing"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_list_of_hosts_is_every_host_in_order_each_loopback() {
        let targets = resolve_hosts("127.0.0.1, 127.0.0.2,::1", 7).unwrap();
        let expected: Vec<SocketAddr> = ["127.0.0.1:7", "127.0.0.2:7", "[::1]:7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(targets, expected);
        assert_eq!(resolve_hosts("127.0.0.3", 7).unwrap().len(), 1);
        // One bad host refuses the whole list: no load goes anywhere.
        let err = resolve_hosts("127.0.0.1,10.0.0.1", 7).unwrap_err();
        assert!(err.contains("refusing target 10.0.0.1:7"), "{err}");
        for bad in ["127.0.0.1,", ",127.0.0.1", "127.0.0.1,,127.0.0.2"] {
            let err = resolve_hosts(bad, 7).unwrap_err();
            assert!(err.contains("empty host"), "{bad}: {err}");
        }
        let err = resolve_hosts("127.0.0.2,127.0.0.2", 7).unwrap_err();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn what_lives_on_one_node_takes_one_host_only() {
        assert_eq!(
            resolve_one_host("127.0.0.2", 9, "OCM").unwrap(),
            "127.0.0.2:9".parse().unwrap()
        );
        let err =
            resolve_one_host("127.0.0.1,127.0.0.2", 9, "OCM's rooms are per node").unwrap_err();
        assert!(
            err.contains("one host only, OCM's rooms are per node"),
            "{err}"
        );
    }
}
