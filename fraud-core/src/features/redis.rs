//! The Redis backend of [`StateStore`]: several service replicas share entity state.
//!
//! Each entity is one Redis hash, `<prefix>:<kind>:<key>`, holding the same state as the
//! memory backend in the byte layout of `state::layout`: `e` events, `l` located
//! transactions, `s` seen values, `f` fraud labels, `t` newest time, `b` the time buckets of
//! a hot entity's folded events. The state is bounded as in memory (README, "hot entities"):
//! the script caps seen values and fraud labels itself; past twice `RAW_CAP` raw events this
//! code folds the oldest into buckets and a second script swaps them in, unless another
//! replica did first.
//!
//! A transaction costs one round trip (and a hot entity one more, once every `RAW_CAP` of its
//! transactions): one Lua script (run by its SHA-1, atomic on the server) returns the state
//! of each of the transaction's entities as it was, and records the transaction in it with
//! the same rules as `EntityState::record`; the features are then computed here, by the same
//! code as for the memory backend. What a round trip moves is bounded by the caps (some
//! 40 KiB for the hottest entity), not by the entity's rate. Idle entities expire by themselves (a TTL of the retention on
//! each hash, in wall-clock time). Every call is bounded by the configured timeout: a slow or
//! absent server gives [`StoreError::Redis`], never a hang.

use std::sync::Mutex;
use std::time::Duration;

use super::state::layout;
use super::store::{StateStore, StoreError};
use super::{Entity, EntityState, Extractor, LabelEvent, Observation};

/// Records a transaction in its entities (or only reads them, `ARGV[4] == '0'`), returning
/// each entity's state from before. Times are 8-byte big-endian strings, so string order is
/// time order. Per entity, ARGV holds: event, located (or empty), seen keys (9 bytes each),
/// prune cutoff, labels kept ('1'/'0'), fraud mark (or empty). The last key is the
/// transaction's marker and the last ARGV its life: a transaction marked already is not
/// recorded again (the call only reads), and the answer ends with `{'1'}` then (`{'0'}`
/// otherwise).
const STEP: &str = r#"
local EV = tonumber(ARGV[5])
local t, seen_cut, ttl, write = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local out = {}
local n_ent = #KEYS - 1
local dup = '0'
if write then
  if redis.call('SET', KEYS[#KEYS], '1', 'NX', 'PX', tonumber(ARGV[#ARGV])) then
  else
    dup = '1'
    write = false
  end
end
for i = 1, n_ent do
  local key = KEYS[i]
  local a = 5 + (i - 1) * 6
  local ev, loc, seen, cut, labels, mark = ARGV[a+1], ARGV[a+2], ARGV[a+3], ARGV[a+4], ARGV[a+5], ARGV[a+6]
  local cur = redis.call('HMGET', key, 'e', 'l', 's', 'f', 't', 'b')
  local e, l, s, f, tt = cur[1] or '', cur[2] or '', cur[3] or '', cur[4] or '', cur[5] or ''
  out[i] = {e, l, s, f, tt, cur[6] or ''}
  if write then
    local n = #e / EV
    local pos = n
    while pos > 0 and string.sub(e, (pos-1)*EV+1, (pos-1)*EV+8) > t do pos = pos - 1 end
    e = string.sub(e, 1, pos*EV) .. ev .. string.sub(e, pos*EV+1)
    n = n + 1
    local limit = cut
    local newest = string.sub(e, (n-1)*EV+1, (n-1)*EV+8)
    if newest < limit then limit = newest end
    local old = 0
    while old < n and string.sub(e, old*EV+1, old*EV+8) < limit do old = old + 1 end
    if old >= 2 then e = string.sub(e, (old-1)*EV+1) end
    if #loc > 0 then
      local ts = string.sub(loc, 1, 8)
      local l0, l1 = nil, nil
      if #l >= 24 then l0 = string.sub(l, 1, 24) end
      if #l >= 48 then l1 = string.sub(l, 25, 48) end
      if l0 and ts < string.sub(l0, 1, 8) then
        if (not l1) or ts >= string.sub(l1, 1, 8) then l1 = loc end
      elseif l0 and ts == string.sub(l0, 1, 8) then
        l0 = loc
      else
        l1 = l0
        l0 = loc
      end
      l = (l0 or '') .. (l1 or '')
    end
    for k = 1, #seen, 9 do
      local id = string.sub(seen, k, k+8)
      local found = false
      for r = 1, #s, 25 do
        if string.sub(s, r, r+8) == id then
          found = true
          local last, prev = string.sub(s, r+9, r+16), string.sub(s, r+17, r+24)
          if t > last then
            s = string.sub(s, 1, r+8) .. t .. last .. string.sub(s, r+25)
          elseif t < last and t > prev then
            s = string.sub(s, 1, r+16) .. t .. string.sub(s, r+25)
          end
          break
        end
      end
      if not found then s = s .. id .. t .. string.rep('\0', 8) end
    end
    local kept = {}
    for r = 1, #s, 25 do
      if string.sub(s, r+9, r+16) >= seen_cut then kept[#kept+1] = string.sub(s, r, r+24) end
    end
    if #kept > MAX_SEEN then
      local order = {}
      for j, rec in ipairs(kept) do order[j] = string.sub(rec, 10, 17) .. string.sub(rec, 1, 9) end
      table.sort(order)
      local nth = order[#kept - SEEN_KEPT + 1]
      local recent = {}
      for _, rec in ipairs(kept) do
        if string.sub(rec, 10, 17) .. string.sub(rec, 1, 9) >= nth then recent[#recent+1] = rec end
      end
      kept = recent
    end
    s = table.concat(kept)
    if labels == '1' then
      if #mark > 0 then
        local id, mts, known = string.sub(mark, 9, 16), string.sub(mark, 1, 8), string.sub(mark, 17, 24)
        local found = false
        for r = 1, #f, 24 do
          if string.sub(f, r+8, r+15) == id then
            found = true
            if known < string.sub(f, r+16, r+23) then
              f = string.sub(f, 1, r+15) .. known .. string.sub(f, r+24)
            end
            break
          end
        end
        if not found then
          local m = #f / 24
          local p = m
          while p > 0 and string.sub(f, (p-1)*24+1, (p-1)*24+8) > mts do p = p - 1 end
          f = string.sub(f, 1, p*24) .. mark .. string.sub(f, p*24+1)
        end
      end
      local drop = 0
      while drop * 24 < #f and string.sub(f, drop*24+1, drop*24+8) < cut do drop = drop + 1 end
      if #f / 24 - drop > MAX_FRAUDS then drop = #f / 24 - MAX_FRAUDS end
      f = string.sub(f, drop*24+1)
    end
    if tt == '' or t > tt then tt = t end
    redis.call('HSET', key, 'e', e, 'l', l, 's', s, 'f', f, 't', tt)
    redis.call('PEXPIRE', key, ttl)
  end
end
out[n_ent + 1] = {dup}
return out
"#;

/// Applies a label (ARGV: id, transaction time, '1' fraud / '0' not, known time, ttl) to
/// each key's fraud labels.
const LABEL: &str = r#"
local id, mts, fraud, known, ttl = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4], tonumber(ARGV[5])
for _, key in ipairs(KEYS) do
  local cur = redis.call('HMGET', key, 'f', 't')
  local f, tt = cur[1] or '', cur[2] or ''
  local found = false
  local kept = {}
  for r = 1, #f, 24 do
    local rec = string.sub(f, r, r+23)
    if string.sub(rec, 9, 16) == id then
      found = true
      if fraud then
        if known < string.sub(rec, 17, 24) then rec = string.sub(rec, 1, 16) .. known end
        kept[#kept+1] = rec
      end
    else
      kept[#kept+1] = rec
    end
  end
  f = table.concat(kept)
  if fraud and not found then
    local m = #f / 24
    local p = m
    while p > 0 and string.sub(f, (p-1)*24+1, (p-1)*24+8) > mts do p = p - 1 end
    f = string.sub(f, 1, p*24) .. mts .. id .. known .. string.sub(f, p*24+1)
    if #f / 24 > MAX_FRAUDS then f = string.sub(f, 25) end
  end
  if tt == '' or mts > tt then tt = mts end
  redis.call('HSET', key, 'f', f, 't', tt)
  redis.call('PEXPIRE', key, ttl)
end
return 1
"#;

/// Folds a hot entity's oldest raw events (ARGV[1], as stored) into its time buckets
/// (ARGV[3] replaces ARGV[2]), when no other replica did meanwhile: the state must still start
/// with those events and hold those buckets. Returns 1 when done.
const COMPACT: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'e', 'b')
local e, b = cur[1] or '', cur[2] or ''
local prefix, old, new = ARGV[1], ARGV[2], ARGV[3]
if b == old and #prefix <= #e and string.sub(e, 1, #prefix) == prefix then
  redis.call('HSET', KEYS[1], 'e', string.sub(e, #prefix + 1), 'b', new)
  return 1
end
return 0
"#;

/// A script with the state's caps written in.
fn script(text: &str) -> redis::Script {
    redis::Script::new(
        &text
            .replace("MAX_SEEN", &super::MAX_SEEN.to_string())
            .replace("SEEN_KEPT", &super::state::SEEN_KEPT.to_string())
            .replace("MAX_FRAUDS", &super::MAX_FRAUDS.to_string()),
    )
}

/// How long a transaction's marker lives by default (milliseconds): the same transaction
/// sent again within it, to any replica, is not counted twice. Ten minutes covers client
/// retries and a replica's crash; markers cost memory for every transaction of that window
/// (some 80 bytes each: 150 MB at 3,000 transactions a second).
pub const MARKER_TTL_MS: u64 = 600_000;

/// Where the state lives: one Redis server (a primary, with Sentinel for failover), or a
/// Redis Cluster (entities spread over its slots).
enum Backend {
    Single(redis::Client),
    Cluster {
        client: redis::cluster::ClusterClient,
        /// The nodes given, for commands that go to every primary (`clear`).
        nodes: Vec<String>,
    },
}

/// A connection of either kind.
enum Conn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Conn {
    fn like(&mut self) -> &mut dyn redis::ConnectionLike {
        match self {
            Conn::Single(c) => c,
            Conn::Cluster(c) => c.as_mut(),
        }
    }
}

/// Entity state in Redis.
///
/// With a Redis Cluster, every key of one entity carries the entity in a hash tag
/// (`<prefix>:card:{<token>}`) and no script touches two entities: a transaction is one
/// script call per entity, each with its own marker (`<prefix>:card:{<token>}:tx:...`), so a
/// retry records it in the entities that missed it and in no other.
pub struct RedisStore {
    backend: Backend,
    pool: Mutex<Vec<Conn>>,
    prefix: String,
    timeout: Duration,
    step: redis::Script,
    label: redis::Script,
    compact: redis::Script,
    marker_ttl_ms: u64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError::Redis(e.to_string())
}

fn be(t: i64) -> [u8; 8] {
    t.to_be_bytes()
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`); keys start with `prefix`. Every call,
    /// connecting included, gives up after `timeout`.
    pub fn open(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(err)?;
        Self::with_backend(Backend::Single(client), prefix, timeout)
    }

    /// Connects to the Redis Cluster that `nodes` (`redis://host:port` each, some or all of
    /// its nodes) belong to; keys start with `prefix` (which may not hold `{` or `}`: the
    /// hash tags are the entities').
    pub fn open_cluster(
        nodes: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        if prefix.contains(['{', '}']) {
            return Err(StoreError::Redis(format!(
                "the key prefix `{prefix}` holds a brace: with a Redis Cluster the hash tags are the entities'"
            )));
        }
        if nodes.is_empty() {
            return Err(StoreError::Redis("no Redis Cluster node given".into()));
        }
        let client = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .build()
            .map_err(err)?;
        Self::with_backend(
            Backend::Cluster {
                client,
                nodes: nodes.to_vec(),
            },
            prefix,
            timeout,
        )
    }

    fn with_backend(backend: Backend, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let store = RedisStore {
            backend,
            pool: Mutex::new(Vec::new()),
            prefix: prefix.to_string(),
            timeout,
            step: script(STEP),
            label: script(LABEL),
            compact: script(COMPACT),
            marker_ttl_ms: MARKER_TTL_MS,
        };
        // Check the server answers now rather than at the first transaction.
        store.with(|c| redis::cmd("PING").query::<String>(c))?;
        Ok(store)
    }

    fn key(&self, e: Entity, k: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + k.len() + 14);
        key.extend_from_slice(self.prefix.as_bytes());
        key.push(b':');
        key.extend_from_slice(e.name().as_bytes());
        key.push(b':');
        if self.cluster() {
            // The entity is the hash tag: its key and its markers share a slot. (An empty
            // id would make an empty tag, which Redis ignores: `_` stands for it.)
            key.push(b'{');
            key.extend_from_slice(if k.is_empty() { b"_" } else { k.as_bytes() });
            key.push(b'}');
        } else {
            key.extend_from_slice(k.as_bytes());
        }
        key
    }

    fn cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    /// With a cluster: the marker of a transaction in one entity (the entity's hash tag).
    fn entity_marker(&self, entity_key: &[u8], id: u64, ts: i64) -> Vec<u8> {
        let mut k = entity_key.to_vec();
        k.extend_from_slice(format!(":tx:{id:016x}:{ts}").as_bytes());
        k
    }

    /// The same store, with transaction markers living `ms` milliseconds (a rebuild that
    /// replays several logs keeps them for its whole length).
    pub fn with_marker_ttl(mut self, ms: u64) -> Self {
        self.marker_ttl_ms = ms.max(1);
        self
    }

    /// The key marking a transaction recorded: its id's hash and its time (two transactions
    /// would need the same 64-bit id hash in the same microsecond to be taken for one).
    fn tx_key(&self, id: u64, ts: i64) -> Vec<u8> {
        format!("{}:tx:{id:016x}:{ts}", self.prefix).into_bytes()
    }

    /// Runs `f` on a pooled connection (a new one if none is free); a connection that failed
    /// is dropped rather than returned.
    fn with<T>(
        &self,
        f: impl Fn(&mut dyn redis::ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let fresh = || -> Result<Conn, StoreError> {
            match &self.backend {
                Backend::Single(client) => {
                    let c = client
                        .get_connection_with_timeout(self.timeout)
                        .map_err(err)?;
                    c.set_read_timeout(Some(self.timeout)).map_err(err)?;
                    c.set_write_timeout(Some(self.timeout)).map_err(err)?;
                    Ok(Conn::Single(c))
                }
                Backend::Cluster { client, .. } => Ok(Conn::Cluster(Box::new(
                    client.get_connection().map_err(err)?,
                ))),
            }
        };
        let (conn, out) = match pooled {
            Some(mut c) => match f(c.like()) {
                // A pooled connection that Redis closed (a restart): the command never ran,
                // so it is sent once more on a new connection.
                Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => {
                    drop(c);
                    let mut c = fresh()?;
                    let out = f(c.like()).map_err(err)?;
                    (c, out)
                }
                r => (c, r.map_err(err)?),
            },
            None => {
                let mut c = fresh()?;
                let out = f(c.like()).map_err(err)?;
                (c, out)
            }
        };
        self.pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(conn);
        Ok(out)
    }

    fn run_step(
        &self,
        ex: &Extractor,
        obs: &Observation<'_>,
        row: &mut [f64],
        write: bool,
    ) -> Result<(), StoreError> {
        let p = &obs.point;
        let entities: Vec<(Entity, &str)> = ex
            .entities()
            .filter_map(|e| obs.key(e).map(|k| (e, k)))
            .collect();
        for e in ex.entities().filter(|e| obs.key(*e).is_none()) {
            ex.entity_into(e, p, None, row);
        }
        if entities.is_empty() {
            return Ok(());
        }
        // One call for all the entities; with a cluster, one per entity (its own slot).
        let groups: Vec<Vec<usize>> = if self.cluster() {
            (0..entities.len()).map(|i| vec![i]).collect()
        } else {
            vec![(0..entities.len()).collect()]
        };
        let mut states: Vec<Vec<Vec<u8>>> = Vec::with_capacity(entities.len());
        let mut dups: Vec<bool> = Vec::with_capacity(entities.len());
        for group in groups {
            let mut inv = self.step.prepare_invoke();
            inv.arg(&be(p.ts)[..])
                .arg(&be(p.ts - ex.retention_us())[..])
                .arg(ex.retention_us() / 1000)
                .arg(if write { "1" } else { "0" })
                .arg(layout::EVENT);
            let mut marker = None;
            for &i in &group {
                let (e, k) = entities[i];
                let Some(keep) = ex.keeping(e) else { continue };
                let key = self.key(e, k);
                if self.cluster() {
                    marker = Some(self.entity_marker(&key, p.id, p.ts));
                }
                inv.key(key);
                let mark = match (keep.labels, p.fraud_known_at) {
                    (true, Some(known)) => [be(p.ts), p.id.to_be_bytes(), be(known)].concat(),
                    _ => Vec::new(),
                };
                inv.arg(layout::event(p, keep))
                    .arg(layout::located(p))
                    .arg(layout::seen_keys(p, keep))
                    .arg(&be(p.ts - keep.horizon_us.max(1))[..])
                    .arg(if keep.labels { "1" } else { "0" })
                    .arg(mark);
            }
            // The transaction's marker, last: the script records a transaction once,
            // whichever replica sends it and however often.
            inv.key(marker.unwrap_or_else(|| self.tx_key(p.id, p.ts)));
            inv.arg(self.marker_ttl_ms);
            let mut got: Vec<Vec<Vec<u8>>> = self.with(|c| inv.invoke(c))?;
            let dup = match got.pop() {
                Some(flag) if got.len() == group.len() => flag.first().is_some_and(|f| f == b"1"),
                _ => {
                    return Err(StoreError::Redis(format!(
                        "the state script returned {} entities for {}",
                        got.len().saturating_sub(1),
                        group.len()
                    )))
                }
            };
            dups.extend(std::iter::repeat_n(dup, got.len()));
            states.extend(got);
        }
        for ((&(e, k), s), &dup) in entities.iter().zip(&mut states).zip(&dups) {
            if dup {
                // Recorded already (a retry, or the same transaction on another replica): its
                // features are those of the state without it, and nothing is recorded again.
                if let Some(keep) = ex.keeping(e) {
                    without(
                        s,
                        &layout::event(p, keep),
                        &layout::seen_keys(p, keep),
                        p.ts,
                    );
                }
            }
            let mut state = decode(s)?;
            ex.entity_into(e, p, Some(&state), row);
            if !write || dup {
                continue;
            }
            // The script recorded the transaction as `record` does, but for folding: a hot
            // entity's oldest raw events are folded here, where the buckets' exact integer
            // sums are made, and the state in Redis follows by one more call (once every
            // `RAW_CAP` transactions of the entity).
            let mut folded = Vec::new();
            if ex.record_folding(e, &mut state, p, &mut folded) > 0 {
                let key = self.key(e, k);
                let prefix = layout::events(folded.iter());
                let old = s.get(5).map_or(&[][..], Vec::as_slice);
                let new = layout::buckets(&state);
                self.with(|c| {
                    self.compact
                        .key(&key)
                        .arg(&prefix)
                        .arg(old)
                        .arg(&new)
                        .invoke::<i64>(c)
                })?;
            }
        }
        Ok(())
    }

    /// Deletes every key under the prefix (entities and transaction markers), a batch at a
    /// time (`SCAN`, never a blocking `KEYS`). Returns how many were deleted.
    pub fn clear(&self) -> Result<usize, StoreError> {
        let pattern = format!("{}:*", self.prefix);
        match &self.backend {
            Backend::Single(client) => {
                let mut conn = client
                    .get_connection_with_timeout(self.timeout)
                    .map_err(err)?;
                clear_node(&mut conn, &pattern, false)
            }
            Backend::Cluster { nodes, .. } => {
                // Every primary, each scanned on its own (a key is deleted by itself: a
                // command may not span slots).
                let mut deleted = 0;
                for node in self.primaries(nodes)? {
                    let client = redis::Client::open(node.as_str()).map_err(err)?;
                    let mut conn = client
                        .get_connection_with_timeout(self.timeout)
                        .map_err(err)?;
                    deleted += clear_node(&mut conn, &pattern, true)?;
                }
                Ok(deleted)
            }
        }
    }

    /// The cluster's primaries (`redis://host:port/`), as the first node that answers says.
    fn primaries(&self, nodes: &[String]) -> Result<Vec<String>, StoreError> {
        let mut last = None;
        for node in nodes {
            let listed = redis::Client::open(node.as_str())
                .and_then(|c| c.get_connection_with_timeout(self.timeout))
                .and_then(|mut c| redis::cmd("CLUSTER").arg("NODES").query::<String>(&mut c));
            match listed {
                Ok(text) => {
                    return Ok(text
                        .lines()
                        .filter_map(|l| {
                            let mut f = l.split_whitespace();
                            let (_, addr, flags) = (f.next()?, f.next()?, f.next()?);
                            let addr = addr.split('@').next()?;
                            (flags.contains("master") && !flags.contains("fail"))
                                .then(|| format!("redis://{addr}/"))
                        })
                        .collect())
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(|| StoreError::Redis("no Redis Cluster node".into()), err))
    }
}

/// Deletes the keys matching `pattern` on one server, a batch at a time (`SCAN`, never a
/// blocking `KEYS`); one key per command on a cluster node.
fn clear_node(
    conn: &mut redis::Connection,
    pattern: &str,
    one_by_one: bool,
) -> Result<usize, StoreError> {
    let (mut cursor, mut deleted) = (0u64, 0usize);
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .map_err(err)?;
        if !keys.is_empty() {
            if one_by_one {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("DEL").arg(k);
                }
                let counts: Vec<usize> = pipe.query(conn).map_err(err)?;
                deleted += counts.iter().sum::<usize>();
            } else {
                deleted += redis::cmd("DEL")
                    .arg(&keys)
                    .query::<usize>(conn)
                    .map_err(err)?;
            }
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// Takes a transaction already recorded back out of an entity's state as the script returned
/// it (fields `e`, `l`, `s`, ...): its event, its location if it is the newest, and its
/// seen values where it made them newest (a value it saw first is dropped; one seen before
/// goes back to its earlier time, the one before that being unknown).
fn without(fields: &mut [Vec<u8>], event: &[u8], seen_keys: &[u8], ts: i64) {
    let t = be(ts);
    if let Some(e) = fields.first_mut() {
        let n = e.len() / layout::EVENT;
        if let Some(i) = (0..n)
            .rev()
            .find(|&i| &e[i * layout::EVENT..(i + 1) * layout::EVENT] == event)
        {
            e.drain(i * layout::EVENT..(i + 1) * layout::EVENT);
        }
    }
    if let Some(l) = fields.get_mut(1) {
        if l.len() >= layout::LOCATED && l[..8] == t {
            l.drain(..layout::LOCATED);
        }
    }
    if let Some(s) = fields.get_mut(2) {
        let mut kept = Vec::with_capacity(s.len());
        for rec in s.chunks_exact(layout::SEEN) {
            let mine = seen_keys.chunks_exact(9).any(|k| k == &rec[..9]);
            if !mine || rec[9..17] != t {
                kept.extend_from_slice(rec);
            } else if rec[17..25] != [0u8; 8] {
                kept.extend_from_slice(&rec[..9]);
                kept.extend_from_slice(&rec[17..25]);
                kept.extend_from_slice(&[0u8; 8]);
            }
        }
        *s = kept;
    }
}

fn decode(fields: &[Vec<u8>]) -> Result<EntityState, StoreError> {
    match fields {
        [e, l, s, f, t, b] => layout::decode(e, l, s, f, t, b).map_err(StoreError::Redis),
        _ => Err(StoreError::Redis(
            "entity state in Redis has an unexpected shape".into(),
        )),
    }
}

impl StateStore for RedisStore {
    fn apply(
        &self,
        ex: &Extractor,
        obs: &Observation<'_>,
        row: &mut [f64],
    ) -> Result<(), StoreError> {
        self.run_step(ex, obs, row, true)
    }

    fn peek(
        &self,
        ex: &Extractor,
        obs: &Observation<'_>,
        row: &mut [f64],
    ) -> Result<(), StoreError> {
        self.run_step(ex, obs, row, false)
    }

    fn label(
        &self,
        ex: &Extractor,
        obs: &Observation<'_>,
        label: &LabelEvent,
    ) -> Result<(), StoreError> {
        let keys: Vec<Vec<u8>> = ex
            .entities()
            .filter(|e| ex.keeps_labels(*e))
            .filter_map(|e| obs.key(e).map(|k| self.key(e, k)))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        // One call for all the keys; with a cluster, one per key (its own slot).
        let groups: Vec<Vec<Vec<u8>>> = if self.cluster() {
            keys.into_iter().map(|k| vec![k]).collect()
        } else {
            vec![keys]
        };
        for group in groups {
            let mut inv = self.label.prepare_invoke();
            for k in group {
                inv.key(k);
            }
            inv.arg(&label.id.to_be_bytes()[..])
                .arg(&be(label.ts)[..])
                .arg(if label.is_fraud { "1" } else { "0" })
                .arg(&be(label.known_at)[..])
                .arg(ex.retention_us() / 1000);
            self.with(|c| inv.invoke::<i64>(c))?;
        }
        Ok(())
    }

    fn erase(&self, entity: Entity, key: &str) -> Result<bool, StoreError> {
        let k = self.key(entity, key);
        let n: i64 = self.with(|c| redis::cmd("DEL").arg(&k).query(c))?;
        Ok(n > 0)
    }

    fn rename(&self, entity: Entity, from: &str, to: &str) -> Result<bool, StoreError> {
        let (a, b) = (self.key(entity, from), self.key(entity, to));
        if self.cluster() {
            // Two slots: copied (with its life) where nothing is yet, then removed.
            let dumped: Option<Vec<u8>> = self.with(|c| redis::cmd("DUMP").arg(&a).query(c))?;
            let Some(dump) = dumped else {
                return Ok(false);
            };
            let ttl: i64 = self.with(|c| redis::cmd("PTTL").arg(&a).query(c))?;
            let restored = self.with(|c| {
                match redis::cmd("RESTORE")
                    .arg(&b)
                    .arg(ttl.max(0))
                    .arg(&dump)
                    .query::<String>(c)
                {
                    // The new token has state already: nothing moves, as with RENAMENX.
                    Err(e) if e.code() == Some("BUSYKEY") => Ok(false),
                    r => r.map(|_| true),
                }
            })?;
            if restored {
                self.with(|c| redis::cmd("DEL").arg(&a).query::<i64>(c))?;
            }
            return Ok(restored);
        }
        // RENAMENX keeps the TTL; a missing source is "nothing to move", not a failure.
        let moved: i64 =
            self.with(
                |c| match redis::cmd("RENAMENX").arg(&a).arg(&b).query::<i64>(c) {
                    Err(e) if e.code() == Some("ERR") => Ok(0),
                    r => r,
                },
            )?;
        Ok(moved == 1)
    }

    fn get(&self, entity: Entity, key: &str) -> Result<Option<EntityState>, StoreError> {
        let k = self.key(entity, key);
        let fields: Vec<Option<Vec<u8>>> = self.with(|c| {
            redis::cmd("HMGET")
                .arg(&k)
                .arg(&["e", "l", "s", "f", "t", "b"])
                .query(c)
        })?;
        if fields.iter().all(Option::is_none) {
            return Ok(None);
        }
        let fields: Vec<Vec<u8>> = fields.into_iter().map(Option::unwrap_or_default).collect();
        decode(&fields).map(Some)
    }
}
