//! BIN24's offline store in Redis, for a node in a cluster (docs/CLUSTER.md, "BIN24's offline
//! store in Redis"): a user finds his stored frames on whatever node he logs in to next.
//!
//! The same [`OfflineStore`] front as the redb store (the BIN24 service does not know which it
//! has): requests on a channel, one event each, the reactor woken. Only the storage thread
//! differs: it runs each batch of requests as one Lua script on its own Redis connection
//! (`EVALSHA`, with the cluster's command deadline), so a batch is atomic in Redis and each
//! user's limits are checked and appended in one step.
//!
//! In Redis: a stream per recipient, `switchboard:bin24:<name>`, each entry one stored frame
//! (field `f`, already type 2) with the id `0-<seq>`, `seq` from the counter
//! `switchboard:bin24-seq` (so an id is never handed out twice, whichever node stores); the
//! stream of a user with nothing stored is deleted (the counter, not the stream, numbers the
//! entries, so a stream made again never reuses an id); the
//! hash `switchboard:bin24-usage` holds each user's stored bytes (field: the name; a user with
//! none has no field), and `switchboard:bin24-total` the frames and bytes of all users. A
//! user's frame count is his stream's length.
//!
//! Redis unreachable (or slow past the deadline): the batch is held and tried again, the
//! same batch, until Redis answers; nothing is answered meanwhile, so no "300" before Redis
//! has the frame, and the requests behind it wait in the channel (the BIN24 service stops
//! reading input once `--store-requests-max` wait: the store's backpressure). A batch whose
//! answer was lost may have been applied: each batch carries a number, increasing per
//! storage thread, and the script records the last one applied with its appends' sequence
//! numbers (`switchboard:bin24-batch:<this thread's random id>`), so a batch run again returns
//! what it did the first time instead of storing its frames twice, and one older than the
//! last applied (a stale copy on a dropped connection that Redis reads late) does nothing.

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, error, info, warn};

use super::ClusterConfig;
use crate::store::{check_user_key, OfflineStore, Shared, StoreConfig, StoreError};
use crate::store::{StoreEvent, StoreRequest};

/// Prefix of the per-recipient streams.
pub const STREAM_KEY_PREFIX: &str = "switchboard:bin24:";
const SEQ_KEY: &str = "switchboard:bin24-seq";
const USAGE_KEY: &str = "switchboard:bin24-usage";
const TOTAL_KEY: &str = "switchboard:bin24-total";
const BATCH_KEY_PREFIX: &str = "switchboard:bin24-batch:";
/// How long a storage thread's record of its last batch outlives its last write: far longer
/// than any retry (a node's thread retries for as long as it lives; a day covers a Redis
/// outage that long and costs one small key per node that ever ran).
const BATCH_KEY_EXPIRY_MS: u64 = 24 * 3600 * 1000;
/// After the front starts closing, how long a batch waiting for Redis is still tried.
const CLOSING_RETRY: Duration = Duration::from_secs(5);
/// How long a batch Redis keeps refusing (an error reply: a script error, `OOM` under
/// `maxmemory`, `WRONGTYPE` on a key something else wrote) is tried again before its requests
/// are answered as failed ("507" for an append: not stored, never "300"). Redis answered, so
/// the link is fine and waiting longer would only stall every BIN24 sender of the node
/// behind the store's queue bound; a second covers a transient refusal (memory freed by
/// deliveries). A lost link or a Redis loading its AOF (`LOADING`) is not a refusal: held
/// and retried for as long as it lasts, as before.
const REFUSED_RETRY: Duration = Duration::from_secs(1);
const RETRY_DELAY_MIN: Duration = Duration::from_millis(20);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(1);

/// One batch, in order. `KEYS[1]` this thread's batch record, `KEYS[2]` the sequence counter,
/// `KEYS[3]` the per-user usage hash, `KEYS[4]` the totals, `KEYS[4 + i]` the stream of
/// request i. `ARGV[1]` the batch number,
/// `ARGV[2..5]` the limits (frames and bytes per user, frames and bytes in all), `ARGV[6]` the
/// record's expiry, then per request: `A name frame`, `L after_id bytes_max` (after_id is
/// `0-<seq>`), or `R name n seq...`.
///
/// Returns one element per request (an append: its seq, -1 the user's store full, -2 the
/// whole store full; a load: `{more, id, frame, id, frame...}`; a remove: 0), then the totals
/// `{frames, bytes, users}`. `{-9}` alone: a batch older than the last applied, ignored.
const BATCH_SCRIPT: &str = r#"
local batch = tonumber(ARGV[1])
local prior = nil
local record = redis.call('GET', KEYS[1])
if record then
  local id, rest = string.match(record, '^(%d+):(.*)$')
  id = tonumber(id)
  if id and id > batch then return {-9} end
  if id == batch then
    prior = {}
    for s in string.gmatch(rest, '[-%d]+') do prior[#prior + 1] = tonumber(s) end
  end
end
local function int(n) return string.format('%d', n) end
local fpu, bpu, fmax, bmax = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local usage, total = KEYS[3], KEYS[4]
local tf = tonumber(redis.call('HGET', total, 'frames') or '0')
local tb = tonumber(redis.call('HGET', total, 'bytes') or '0')
local seq0 = tonumber(redis.call('GET', KEYS[2]) or '0')
local seq = seq0
-- Each user's frames and bytes, read once per batch, written back once at its end.
local frames, bytes, keys = {}, {}, {}
local function user(name, key)
  if frames[name] == nil then
    frames[name] = redis.call('XLEN', key)
    bytes[name] = tonumber(redis.call('HGET', usage, name) or '0')
    keys[name] = key
  end
end
local out = {}
local appended = {}
local a = 7
for i = 5, #KEYS do
  local key = KEYS[i]
  local kind = ARGV[a]
  if kind == 'A' then
    local name, frame = ARGV[a + 1], ARGV[a + 2]
    a = a + 3
    local r
    if prior then
      r = prior[#appended + 1] or -3
    else
      local len = #frame
      user(name, key)
      if frames[name] >= fpu or bytes[name] + len > bpu then r = -1
      elseif tf >= fmax or tb + len > bmax then r = -2
      else
        seq = seq + 1
        r = seq
        redis.call('XADD', key, '0-' .. int(seq), 'f', frame)
        frames[name] = frames[name] + 1
        bytes[name] = bytes[name] + len
        tf = tf + 1
        tb = tb + len
      end
    end
    appended[#appended + 1] = int(r)
    out[#out + 1] = r
  elseif kind == 'L' then
    local start, limit = ARGV[a + 1], tonumber(ARGV[a + 2])
    a = a + 3
    local page = {0}
    local loaded = 0
    local full = false
    while not full do
      local entries = redis.call('XRANGE', key, start, '+', 'COUNT', 64)
      for _, e in ipairs(entries) do
        local frame = e[2][2]
        if #page > 1 and loaded + #frame > limit then page[1] = 1 full = true break end
        loaded = loaded + #frame
        page[#page + 1] = e[1]
        page[#page + 1] = frame
      end
      if #entries < 64 then break end
      start = '(' .. entries[#entries][1]
    end
    out[#out + 1] = page
  elseif kind == 'R' then
    local name, n = ARGV[a + 1], tonumber(ARGV[a + 2])
    user(name, key)
    for j = 1, n do
      local id = '0-' .. ARGV[a + 2 + j]
      local e = redis.call('XRANGE', key, id, id)
      if #e > 0 then
        local len = #e[1][2][2]
        redis.call('XDEL', key, id)
        frames[name] = frames[name] - 1
        bytes[name] = bytes[name] - len
        tf = tf - 1
        tb = tb - len
      end
    end
    a = a + 3 + n
    out[#out + 1] = 0
  end
end
for name, key in pairs(keys) do
  if frames[name] <= 0 then
    redis.call('HDEL', usage, name)
    redis.call('DEL', key)
  else
    redis.call('HSET', usage, name, int(bytes[name]))
  end
end
if seq > seq0 then redis.call('SET', KEYS[2], int(seq)) end
redis.call('HSET', total, 'frames', int(tf), 'bytes', int(tb))
if not prior then
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. table.concat(appended, ','), 'PX', ARGV[6])
end
out[#out + 1] = {tf, tb, redis.call('HLEN', usage)}
return out
"#;

/// What the script answered for one append.
const APPEND_USER_FULL: i64 = -1;
const APPEND_STORE_FULL: i64 = -2;
/// The whole batch was older than the last one applied.
const STALE_BATCH: i64 = -9;

pub fn stream_key(user: &[u8]) -> Vec<u8> {
    let mut key = STREAM_KEY_PREFIX.as_bytes().to_vec();
    key.extend_from_slice(user);
    key
}

/// The stream id of the frame numbered `seq`.
fn entry_id(seq: u64) -> String {
    format!("0-{seq}")
}

/// The seq of a stream id this store wrote (`0-<seq>`).
fn parse_entry_id(id: &[u8]) -> Option<u64> {
    std::str::from_utf8(id.strip_prefix(b"0-")?)
        .ok()?
        .parse()
        .ok()
}

/// Open the store in Redis at `cluster.url`: the URL is checked here, the connection is made
/// by the storage thread (the cluster checks at start that Redis answers).
pub fn open(
    config: StoreConfig,
    cluster: &ClusterConfig,
    wake: Box<dyn Fn() + Send>,
) -> Result<OfflineStore, StoreError> {
    let client = redis::Client::open(cluster.url.as_str()).map_err(|e| StoreError::Redis {
        url: cluster.url.clone(),
        detail: e.to_string(),
    })?;
    let shared = Arc::new(Shared::new(wake));
    let worker = RedisWorker {
        client,
        url: cluster.url.clone(),
        conn: None,
        command_timeout: cluster.command_timeout(),
        limits: [
            config.frames_per_user_max,
            config.bytes_per_user_max,
            config.frames_max,
            config.bytes_max,
        ],
        batch_key: format!("{BATCH_KEY_PREFIX}{:016x}", super::random_u64()),
        batch: 0,
        shared: Arc::clone(&shared),
        down_since: None,
        group_commit_max: config.group_commit_max.max(1),
    };
    info!(
        "offline store: BIN24 frames for offline users are kept in Redis {} (streams {}<name>)",
        cluster.url, STREAM_KEY_PREFIX
    );
    OfflineStore::start(
        PathBuf::from(&cluster.url),
        shared,
        move |requests, events| {
            worker.run(requests, events);
            Ok(())
        },
    )
}

struct RedisWorker {
    client: redis::Client,
    url: String,
    /// The connection and the script's SHA1 as loaded on it.
    conn: Option<(redis::Connection, String)>,
    command_timeout: Duration,
    /// Frames and bytes per user, frames and bytes in all.
    limits: [u64; 4],
    batch_key: String,
    /// The number of the batch being run (the last one applied, between batches).
    batch: u64,
    shared: Arc<Shared>,
    down_since: Option<Instant>,
    group_commit_max: usize,
}

/// One request as the script sees it, or answered before it (a user key that is not a name).
enum Planned {
    Run(StoreRequest),
    Refused(StoreEvent),
}

impl RedisWorker {
    fn run(mut self, requests: Receiver<StoreRequest>, events: Sender<StoreEvent>) {
        while let Ok(first) = requests.recv() {
            let mut batch = vec![first];
            while batch.len() < self.group_commit_max {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let count = batch.len();
            // A panic in one batch (a bug) fails that batch's requests, as in the redb store,
            // and the thread goes on with a fresh connection: no request waits for ever.
            let failed: Vec<StoreEvent> = batch
                .iter()
                .filter(|request| !matches!(request, StoreRequest::Remove { .. }))
                .filter_map(|request| failed_event(request, "the storage thread panicked"))
                .collect();
            let done = panic::catch_unwind(AssertUnwindSafe(|| self.execute(batch)))
                .unwrap_or_else(|_| {
                    error!(
                        "offline store in Redis {}: the storage thread panicked in a batch of \
                         {count} request(s); none of it answered \"300\"",
                        self.url
                    );
                    self.conn = None;
                    failed
                });
            for event in done {
                let _ = events.send(event);
            }
            self.shared.finished(count);
            self.shared.wake();
        }
        debug!("offline store in Redis: the front closed, the storage thread stops");
    }

    /// Run one batch until Redis has it; its events in request order (a remove has none).
    fn execute(&mut self, batch: Vec<StoreRequest>) -> Vec<StoreEvent> {
        let planned: Vec<Planned> = batch
            .into_iter()
            .map(|request| {
                let (user, ticket) = match &request {
                    StoreRequest::Append { user, ticket, .. }
                    | StoreRequest::Load { user, ticket, .. } => (user, Some(*ticket)),
                    StoreRequest::Remove { user, .. } => (user, None),
                };
                match check_user_key(user) {
                    Ok(()) => Planned::Run(request),
                    Err(error) => Planned::Refused(StoreEvent::Failed { ticket, error }),
                }
            })
            .collect();
        let runs: Vec<&StoreRequest> = planned
            .iter()
            .filter_map(|p| match p {
                Planned::Run(request) => Some(request),
                Planned::Refused(_) => None,
            })
            .collect();
        if runs.is_empty() {
            return planned
                .into_iter()
                .filter_map(|p| match p {
                    Planned::Refused(event) => Some(event),
                    Planned::Run(_) => None,
                })
                .collect();
        }
        self.batch += 1;
        let invocation = batch_invocation(&self.batch_key, self.batch, self.limits, &runs);
        let answers = match self.run_until_answered(&invocation, runs.len()) {
            Ok(answers) => answers,
            Err(why) => {
                // Closing with Redis still unreachable, or Redis kept refusing the batch:
                // nobody was told "300".
                error!(
                    "offline store in Redis {}: {} request(s) not done: {why}; their senders \
                     were not answered \"300\"",
                    self.url,
                    runs.len()
                );
                return planned
                    .into_iter()
                    .filter_map(|p| match p {
                        Planned::Refused(event) => Some(event),
                        Planned::Run(request) => failed_event(&request, &why),
                    })
                    .collect();
            }
        };
        let mut answers = answers.into_iter();
        let mut events = Vec::with_capacity(planned.len());
        for p in planned {
            match p {
                Planned::Refused(event) => events.push(event),
                Planned::Run(request) => {
                    let answer = answers.next().unwrap_or(Answer::Removed);
                    if let Some(event) = self.event_of(request, answer) {
                        events.push(event);
                    }
                }
            }
        }
        events
    }

    fn event_of(&self, request: StoreRequest, answer: Answer) -> Option<StoreEvent> {
        if matches!(answer, Answer::Full { whole_store: true }) {
            self.shared.count_store_full();
        }
        event_for(request, answer)
    }
}

/// The event answering `request`, given what the script did for it (a remove has none).
fn event_for(request: StoreRequest, answer: Answer) -> Option<StoreEvent> {
    match (request, answer) {
        (StoreRequest::Append { ticket, .. }, Answer::Appended(seq)) => {
            Some(StoreEvent::Appended { ticket, seq })
        }
        (StoreRequest::Append { ticket, .. }, Answer::Full { .. }) => {
            Some(StoreEvent::Full { ticket })
        }
        (StoreRequest::Load { ticket, user, .. }, Answer::Loaded { frames, more }) => {
            Some(StoreEvent::Loaded {
                ticket,
                user,
                frames,
                more,
            })
        }
        (StoreRequest::Remove { .. }, Answer::Removed) => None,
        (request, answer) => failed_event(
            &request,
            &format!("Redis answered {answer:?} to {request:?}"),
        ),
    }
}

impl RedisWorker {
    /// The script's answers to `invocation`, tried again (the same batch) until Redis gives
    /// them: `Err` once the front is closing and Redis stayed unreachable for
    /// [`CLOSING_RETRY`], or Redis kept refusing the batch for [`REFUSED_RETRY`].
    fn run_until_answered(
        &mut self,
        invocation: &redis::Cmd,
        requests: usize,
    ) -> Result<Vec<Answer>, String> {
        let mut delay = RETRY_DELAY_MIN;
        let mut closing_since: Option<Instant> = None;
        let mut refused_since: Option<Instant> = None;
        loop {
            let started = Instant::now();
            match self.try_once(invocation, requests) {
                Ok((answers, totals)) => {
                    if let Some(since) = self.down_since.take() {
                        info!(
                            "offline store: Redis {} answers again after {} ms; the held \
                             requests are done",
                            self.url,
                            since.elapsed().as_millis()
                        );
                    }
                    if answers.iter().any(|a| !matches!(a, Answer::Loaded { .. })) {
                        self.shared.record_commit(started.elapsed());
                    }
                    self.shared.set_usage(totals[0], totals[1], totals[2]);
                    return Ok(answers);
                }
                Err(Failure { why, refused }) => {
                    if refused {
                        let since = *refused_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= REFUSED_RETRY {
                            return Err(format!(
                                "Redis refused it for {} ms: {why}",
                                since.elapsed().as_millis()
                            ));
                        }
                    }
                    if self.down_since.is_none() {
                        self.down_since = Some(Instant::now());
                        warn!(
                            "offline store: Redis {} did not take a batch of {requests} \
                             request(s) ({why}); holding them (no \"300\" meanwhile) and \
                             trying again",
                            self.url
                        );
                    } else {
                        debug!(
                            "offline store: Redis {} still not answering: {why}",
                            self.url
                        );
                    }
                    if self.shared.closing() {
                        let since = *closing_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= CLOSING_RETRY {
                            return Err(why);
                        }
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(RETRY_DELAY_MAX);
                }
            }
        }
    }

    /// One try: connect if needed (loading the script), run the batch. Any failure drops the
    /// connection: its state after a deadline is unknown (the answer may still come).
    fn try_once(
        &mut self,
        invocation: &redis::Cmd,
        requests: usize,
    ) -> Result<(Vec<Answer>, [u64; 3]), Failure> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().map_err(|err| Failure::of(&err))?);
        }
        let Some((conn, sha)) = self.conn.as_mut() else {
            return Err(Failure {
                why: "no connection".to_string(),
                refused: false,
            });
        };
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha.as_str());
        let reply = invocation_with(&mut cmd, invocation).query::<redis::Value>(conn);
        match reply {
            Ok(value) => match decode_answers(value, requests) {
                Ok(decoded) => Ok(decoded),
                // Redis answered, in a shape the script never gives: refused (a bug, or a
                // later batch of this thread recorded), not a link to wait for.
                Err(why) => {
                    self.conn = None;
                    Err(Failure { why, refused: true })
                }
            },
            Err(err) => {
                self.conn = None;
                Err(Failure::of(&err))
            }
        }
    }

    fn connect(&self) -> redis::RedisResult<(redis::Connection, String)> {
        let mut conn = self
            .client
            .get_connection_with_timeout(self.command_timeout)?;
        conn.set_read_timeout(Some(self.command_timeout))?;
        conn.set_write_timeout(Some(self.command_timeout))?;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(BATCH_SCRIPT)
            .query(&mut conn)?;
        Ok((conn, sha))
    }
}

/// Runs `requests` as one batch numbered `batch` on `conn`, as the storage thread does
/// (`EVAL` instead of `EVALSHA`, once, no retry), and returns each request's event (`None`
/// for a remove) and the totals (frames, bytes, users). For tests of the script against a
/// real Redis (tests/cluster_store.rs): a batch run twice, a stale one, pages, limits.
#[doc(hidden)]
pub fn eval_batch(
    conn: &mut redis::Connection,
    batch_key: &str,
    batch: u64,
    limits: [u64; 4],
    requests: &[StoreRequest],
) -> Result<(Vec<Option<StoreEvent>>, [u64; 3]), String> {
    let runs: Vec<&StoreRequest> = requests.iter().collect();
    let invocation = batch_invocation(batch_key, batch, limits, &runs);
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(BATCH_SCRIPT);
    let value = invocation_with(&mut cmd, &invocation)
        .query::<redis::Value>(conn)
        .map_err(|e| e.to_string())?;
    let (answers, totals) = decode_answers(value, requests.len())?;
    let events = requests
        .iter()
        .cloned()
        .zip(answers)
        .map(|(request, answer)| event_for(request, answer))
        .collect();
    Ok((events, totals))
}

/// `Failed` for a request that has a ticket, or for a remove (its frames stay stored: they
/// will be delivered again).
fn failed_event(request: &StoreRequest, why: &str) -> Option<StoreEvent> {
    let ticket = match request {
        StoreRequest::Append { ticket, .. } | StoreRequest::Load { ticket, .. } => Some(*ticket),
        StoreRequest::Remove { .. } => None,
    };
    Some(StoreEvent::Failed {
        ticket,
        error: why.to_string(),
    })
}

/// The script's keys and arguments after its name (`EVALSHA <sha>` is put in front).
fn batch_invocation(
    batch_key: &str,
    batch: u64,
    limits: [u64; 4],
    requests: &[&StoreRequest],
) -> redis::Cmd {
    let mut args = redis::Cmd::new();
    args.arg(4 + requests.len())
        .arg(batch_key)
        .arg(SEQ_KEY)
        .arg(USAGE_KEY)
        .arg(TOTAL_KEY);
    for request in requests {
        let user = match request {
            StoreRequest::Append { user, .. }
            | StoreRequest::Load { user, .. }
            | StoreRequest::Remove { user, .. } => user,
        };
        args.arg(stream_key(user));
    }
    args.arg(batch)
        .arg(limits[0])
        .arg(limits[1])
        .arg(limits[2])
        .arg(limits[3])
        .arg(BATCH_KEY_EXPIRY_MS);
    for request in requests {
        match request {
            StoreRequest::Append { user, frame, .. } => {
                args.arg("A").arg(user.as_slice()).arg(frame.as_ref());
            }
            StoreRequest::Load {
                after_seq,
                bytes_max,
                ..
            } => {
                // A page past the last id; a bound beyond Lua's exact integers is no bound.
                let bytes_max = (*bytes_max as u64).min(1 << 52);
                args.arg("L")
                    .arg(entry_id(after_seq.saturating_add(1)))
                    .arg(bytes_max);
            }
            StoreRequest::Remove { user, seqs, .. } => {
                args.arg("R").arg(user.as_slice()).arg(seqs.len());
                for seq in seqs {
                    args.arg(*seq);
                }
            }
        }
    }
    args
}

/// `cmd` followed by `invocation`'s arguments.
fn invocation_with<'a>(cmd: &'a mut redis::Cmd, invocation: &redis::Cmd) -> &'a mut redis::Cmd {
    for arg in invocation.args_iter() {
        if let redis::Arg::Simple(bytes) = arg {
            cmd.arg(bytes);
        }
    }
    cmd
}

/// Why a try of a batch did not give its answers.
#[derive(Debug)]
struct Failure {
    why: String,
    /// Redis answered with an error (the batch was refused, not lost on the way): tried
    /// again for [`REFUSED_RETRY`] only.
    refused: bool,
}

impl Failure {
    fn of(err: &redis::RedisError) -> Failure {
        Failure {
            why: err.to_string(),
            refused: is_refusal(err),
        }
    }
}

/// Whether Redis itself answered `err` to the script (an error reply: a runtime error in the
/// script, `OOM`, `WRONGTYPE`...), as opposed to a link that failed or timed out, a script not
/// loaded on a restarted Redis (`NOSCRIPT`: reloaded on the next connection), a Redis still
/// loading its AOF (`LOADING`) or busy with a long script (`BUSY`), which last as long as they
/// last and are waited out.
fn is_refusal(err: &redis::RedisError) -> bool {
    if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() {
        return false;
    }
    // Another script running past Redis's busy threshold: it ends, and this one runs then.
    if err.code() == Some("BUSY") {
        return false;
    }
    matches!(
        err.kind(),
        redis::ErrorKind::ResponseError
            | redis::ErrorKind::ExtensionError
            | redis::ErrorKind::ExecAbortError
    )
}

/// What the script did for one request.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Appended(u64),
    Full {
        whole_store: bool,
    },
    Loaded {
        frames: Vec<(u64, Bytes)>,
        more: bool,
    },
    Removed,
}

/// The script's reply: one answer per request, then the totals. A reply of another shape is an
/// error (the batch is tried again on a new connection; a script that answers so is a bug).
fn decode_answers(value: redis::Value, requests: usize) -> Result<(Vec<Answer>, [u64; 3]), String> {
    use redis::Value;
    let Value::Array(mut items) = value else {
        return Err(format!("the store script answered {value:?}"));
    };
    if let [Value::Int(STALE_BATCH)] = items.as_slice() {
        return Err("Redis holds a later batch of this thread than the one sent".to_string());
    }
    if items.len() != requests + 1 {
        return Err(format!(
            "the store script answered {} items for {requests} request(s)",
            items.len()
        ));
    }
    let totals = match items.pop() {
        Some(Value::Array(totals)) => match totals.as_slice() {
            [Value::Int(frames), Value::Int(bytes), Value::Int(users)] => [
                u64::try_from(*frames).unwrap_or(0),
                u64::try_from(*bytes).unwrap_or(0),
                u64::try_from(*users).unwrap_or(0),
            ],
            other => return Err(format!("the store script's totals are {other:?}")),
        },
        other => return Err(format!("the store script's totals are {other:?}")),
    };
    let mut answers = Vec::with_capacity(requests);
    for item in items {
        answers.push(match item {
            Value::Int(0) => Answer::Removed,
            Value::Int(APPEND_USER_FULL) => Answer::Full { whole_store: false },
            Value::Int(APPEND_STORE_FULL) => Answer::Full { whole_store: true },
            Value::Int(seq) if seq > 0 => Answer::Appended(seq as u64),
            Value::Array(page) => decode_page(page)?,
            other => return Err(format!("the store script answered {other:?} to a request")),
        });
    }
    Ok((answers, totals))
}

fn decode_page(page: Vec<redis::Value>) -> Result<Answer, String> {
    use redis::Value;
    let mut items = page.into_iter();
    let more = match items.next() {
        Some(Value::Int(more)) => more != 0,
        other => return Err(format!("a loaded page starts with {other:?}")),
    };
    let mut frames = Vec::new();
    while let Some(id) = items.next() {
        let (Value::BulkString(id), Some(Value::BulkString(frame))) = (id, items.next()) else {
            return Err("a loaded page's entry is not an id and a frame".to_string());
        };
        let seq = parse_entry_id(&id)
            .ok_or_else(|| format!("a stream entry id {:?} not written by this store", id))?;
        frames.push((seq, Bytes::from(frame)));
    }
    Ok(Answer::Loaded { frames, more })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_batch_names_each_requests_stream_and_carries_its_arguments_in_order() {
        let append = StoreRequest::Append {
            ticket: 1,
            user: b"bob".to_vec(),
            frame: Bytes::from_static(b"frame"),
        };
        let load = StoreRequest::Load {
            ticket: 2,
            user: b"ann".to_vec(),
            after_seq: 41,
            bytes_max: usize::MAX,
        };
        let remove = StoreRequest::Remove {
            user: b"bob".to_vec(),
            seqs: vec![7, 9],
        };
        let cmd = batch_invocation("k", 5, [10, 20, 30, 40], &[&append, &load, &remove]);
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                redis::Arg::Cursor => panic!("no cursor"),
            })
            .collect();
        let want: Vec<&[u8]> = vec![
            b"7",
            b"k",
            SEQ_KEY.as_bytes(),
            USAGE_KEY.as_bytes(),
            TOTAL_KEY.as_bytes(),
            b"switchboard:bin24:bob",
            b"switchboard:bin24:ann",
            b"switchboard:bin24:bob",
            b"5",
            b"10",
            b"20",
            b"30",
            b"40",
            b"86400000",
            b"A",
            b"bob",
            b"frame",
            b"L",
            b"0-42",
            b"4503599627370496",
            b"R",
            b"bob",
            b"2",
            b"7",
            b"9",
        ];
        assert_eq!(args, want.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
    }

    #[test]
    fn the_scripts_answers_decode_to_one_answer_per_request_and_the_totals() {
        let reply = Value::Array(vec![
            Value::Int(12),
            Value::Int(-1),
            Value::Int(-2),
            Value::Array(vec![
                Value::Int(1),
                bulk("0-3"),
                bulk("aaa"),
                bulk("0-12"),
                bulk("b"),
            ]),
            Value::Int(0),
            Value::Array(vec![Value::Int(4), Value::Int(40), Value::Int(2)]),
        ]);
        let (answers, totals) = decode_answers(reply, 5).unwrap();
        assert_eq!(
            answers,
            vec![
                Answer::Appended(12),
                Answer::Full { whole_store: false },
                Answer::Full { whole_store: true },
                Answer::Loaded {
                    frames: vec![
                        (3, Bytes::from_static(b"aaa")),
                        (12, Bytes::from_static(b"b"))
                    ],
                    more: true
                },
                Answer::Removed,
            ]
        );
        assert_eq!(totals, [4, 40, 2]);
    }

    #[test]
    fn a_reply_of_another_shape_is_an_error_not_a_guess() {
        let totals = Value::Array(vec![Value::Int(0), Value::Int(0), Value::Int(0)]);
        for (reply, requests) in [
            (Value::Array(vec![Value::Int(STALE_BATCH)]), 0),
            (Value::Array(vec![totals.clone()]), 1),
            (Value::Array(vec![Value::Int(-5), totals.clone()]), 1),
            (
                Value::Array(vec![
                    Value::Array(vec![Value::Int(0), bulk("1-3"), bulk("x")]),
                    totals.clone(),
                ]),
                1,
            ),
            (
                Value::Array(vec![
                    Value::Array(vec![Value::Int(0), bulk("0-3")]),
                    totals.clone(),
                ]),
                1,
            ),
            (Value::Okay, 0),
        ] {
            assert!(
                decode_answers(reply.clone(), requests).is_err(),
                "{reply:?}"
            );
        }
    }

    #[test]
    fn entry_ids_are_the_seq_after_a_zero() {
        assert_eq!(entry_id(17), "0-17");
        assert_eq!(parse_entry_id(b"0-17"), Some(17));
        assert_eq!(parse_entry_id(b"1-17"), None);
        assert_eq!(parse_entry_id(b"0-x"), None);
    }
}
