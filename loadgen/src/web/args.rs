//! `loadgen web`: its flags (the fan-out's, as ROOM's) and its share of the mix.

use clap::Args;

use crate::mix::{MixShare, Setup};
use crate::registry::{ScenarioArgs, Single};
use crate::room::args::{fanout_config, fanout_in_mix, FanoutArgs};
use crate::room::Wire;
use crate::web::Web;

/// The largest --payload-bytes: the text (the message without its newline) within chatd's
/// default --web-text-bytes-max, 1000.
pub(crate) const MESSAGE_BYTES_MAX: usize = 1_001;

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
    fanout_in_mix::<Web>(m, Wire::Web, m.args.web_port, MESSAGE_BYTES_MAX)
}
