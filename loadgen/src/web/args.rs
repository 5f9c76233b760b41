//! `loadgen web`: its flags (the fan-out's, as ROOM's) and its share of the mix.

use clap::Args;

use crate::mix::{senders_for, MixShare, Setup};
use crate::registry::{ScenarioArgs, Single};
use crate::room::args::{fanout_config, fanout_in_mix, FanoutArgs};
use crate::room::Wire;
use crate::web::Web;

/// The largest --payload-bytes: the text (the message without its newline) within chatd's
/// default --web-text-bytes-max, 1000.
pub(crate) const MESSAGE_BYTES_MAX: usize = 1_001;

/// Default `--rate`: 10 messages/s for each of the 10 default senders, half chatd's default
/// `--web-messages-per-s-max` (20), so a default run measures the path, not chatd's limiter.
pub(crate) const RATE_DEFAULT: u64 = 100;

/// What to say before a run whose web users each plan `per_user_per_s` messages a second, if
/// that is over what chatd allows a web user by default (`asked` says where the rate comes
/// from); None within it. Over it, chatd answers `error rate-limited` and drops the message,
/// which the run counts as errors and losses: it would measure the limiter, not the path.
pub(crate) fn over_chatd_limit(per_user_per_s: f64, asked: &str) -> Option<String> {
    let max = switchboard::config::Config::default().web_messages_per_s_max;
    if max == 0 || per_user_per_s <= max as f64 {
        return None;
    }
    let needed = per_user_per_s.ceil() as u64;
    Some(format!(
        "{asked} is {per_user_per_s:.1} messages/s per web user, over chatd's default \
         --web-messages-per-s-max {max}: start chatd with --web-messages-per-s-max {needed} \
         or more (0: no limit), else its `error rate-limited` answers count as errors and \
         those messages as lost"
    ))
}

/// [`over_chatd_limit`] for the mix's WEB share of `clients` at `rate_per_s` in all: a tenth of
/// them send (as ROOM's share), so each sends about 10 x --rate-per-client.
pub(crate) fn mix_share_over_chatd_limit(clients: usize, rate_per_s: u64) -> Option<String> {
    let senders = senders_for(clients);
    let asked = format!(
        "the mix's WEB share, {rate_per_s} messages/s over {senders} senders (a tenth of its \
         {clients} clients)"
    );
    over_chatd_limit(rate_per_s as f64 / senders as f64, &asked)
}

#[derive(Args, Debug)]
pub(crate) struct WebArgs {
    /// Server port of chatd's web listener (`--web-port`); the WebSocket is at `/ws`.
    #[arg(long, default_value_t = 8_080)]
    port: u16,

    #[command(flatten)]
    fanout: FanoutArgs,
}

impl ScenarioArgs for WebArgs {
    type Kind = Web;

    fn common(&self) -> &crate::CommonArgs {
        &self.fanout.common
    }

    fn config(&self) -> Result<Single<Web>, String> {
        fanout_config(Wire::Web, self.port, &self.fanout)
    }
}

/// WEB's share of `loadgen mix`, on `--web-port`.
pub(crate) fn in_mix(m: &MixShare<'_>) -> Result<(Setup, u64), String> {
    if let Some(note) = mix_share_over_chatd_limit(m.clients, m.rate) {
        eprintln!("loadgen: {note}");
    }
    fanout_in_mix::<Web>(m, Wire::Web, m.args.web_port, MESSAGE_BYTES_MAX)
}
