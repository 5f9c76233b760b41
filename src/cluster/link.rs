//! The Redis connection kept by the names and OCM rooms threads: made again after a delay
//! doubling up to `RECONNECT_DELAY_MAX`, its losses and returns logged and counted once each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;

use super::{link_down, link_up, ClusterStats, RECONNECT_DELAY_MAX};

const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(50);

/// What `RedisLink::open` found.
pub(super) enum Opened {
    /// The connection there was.
    Kept,
    /// A new connection, made just now: its owner sets its records again before using it.
    Fresh,
    /// No connection: the reconnect delay has not passed, or the reconnect failed.
    Down,
}

pub(super) struct RedisLink {
    client: redis::Client,
    pub(super) conn: Option<redis::Connection>,
    command_timeout: Duration,
    stats: Arc<ClusterStats>,
    /// The owner as the logs name it ("names" for "the names thread").
    which: &'static str,
    /// Told `true` when the link goes down, `false` when it is back (before the log line).
    on_change: Option<Box<dyn Fn(bool) + Send>>,
    down_since: Option<Instant>,
    /// No reconnect before this (a delay doubling up to 2 s after each failure).
    next_connect: Instant,
    delay: Duration,
}

impl RedisLink {
    pub(super) fn new(
        client: redis::Client,
        command_timeout: Duration,
        stats: Arc<ClusterStats>,
        which: &'static str,
        on_change: Option<Box<dyn Fn(bool) + Send>>,
    ) -> RedisLink {
        RedisLink {
            client,
            conn: None,
            command_timeout,
            stats,
            which,
            on_change,
            down_since: None,
            next_connect: Instant::now(),
            delay: RECONNECT_DELAY_MIN,
        }
    }

    /// The connection there is, or a new one if the reconnect delay has passed.
    pub(super) fn open(&mut self) -> Opened {
        if self.conn.is_some() {
            return Opened::Kept;
        }
        if Instant::now() < self.next_connect {
            return Opened::Down;
        }
        let opened = self
            .client
            .get_connection_with_timeout(self.command_timeout)
            .and_then(|conn| {
                conn.set_read_timeout(Some(self.command_timeout))?;
                conn.set_write_timeout(Some(self.command_timeout))?;
                Ok(conn)
            });
        match opened {
            Ok(conn) => {
                self.conn = Some(conn);
                Opened::Fresh
            }
            Err(err) => {
                debug!("cluster: {} reconnect failed: {err}", self.which);
                self.lost(&err);
                Opened::Down
            }
        }
    }

    /// The link is lost (or could not be made): no reconnect before the delay.
    pub(super) fn lost(&mut self, err: &dyn std::fmt::Display) {
        self.conn = None;
        self.next_connect = Instant::now() + self.delay;
        self.delay = (self.delay * 2).min(RECONNECT_DELAY_MAX);
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            if let Some(on_change) = &self.on_change {
                on_change(true);
            }
            link_down(&self.stats, &format!("{} thread", self.which), err);
        }
    }

    pub(super) fn up(&mut self) {
        self.delay = RECONNECT_DELAY_MIN;
        if let Some(since) = self.down_since.take() {
            if let Some(on_change) = &self.on_change {
                on_change(false);
            }
            link_up(&self.stats, &format!("{} thread", self.which), since);
        }
    }

    /// The next `open` reconnects at once, whatever the delay.
    pub(super) fn reconnect_now(&mut self) {
        self.next_connect = Instant::now();
    }
}

/// A thread keeping a `RedisLink`, with its own step on a fresh connection.
pub(super) trait LinkOwner {
    fn link(&mut self) -> &mut RedisLink;

    /// This thread's records set again on a fresh connection (Redis may have restarted
    /// empty), before anything else is sent on it. False when the link failed.
    fn connected(&mut self) -> bool;

    /// Whether there is a connection: the one there is, or a new one if the reconnect delay
    /// has passed, set up by `connected`.
    fn ensure(&mut self) -> bool {
        match self.link().open() {
            Opened::Kept => true,
            Opened::Fresh => self.connected(),
            Opened::Down => false,
        }
    }

    /// `pipe`'s answers. A connection found broken (Redis restarted since the last command)
    /// is replaced and the pipeline sent again at once, once: every script sent this way may
    /// run twice. Names: a claim already this node's is granted again; a release of a name
    /// not this node's does nothing. OCM rooms: create and join may run twice (a create found
    /// existing is its own room, which the second run reports as taken; see docs/CLUSTER.md).
    fn query<T: redis::FromRedisValue>(&mut self, pipe: &redis::Pipeline) -> Option<T> {
        for attempt in 0..2 {
            if !self.ensure() {
                return None;
            }
            let link = self.link();
            let conn = link.conn.as_mut()?;
            match pipe.query::<T>(conn) {
                Ok(answers) => {
                    link.up();
                    return Some(answers);
                }
                Err(err) => {
                    link.lost(&err);
                    // A broken connection fails at once: a fresh one may work. A stalled
                    // Redis (a timeout) would only stall again.
                    if attempt == 0 && !err.is_timeout() {
                        link.reconnect_now();
                    } else {
                        return None;
                    }
                }
            }
        }
        None
    }
}
