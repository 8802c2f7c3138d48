//! The Redis backend of [`StateStore`]: several service replicas share entity state.
//!
//! Each entity is four Redis keys holding the same state as the memory backend, in the byte
//! layout of `state::layout`:
//! - the hash `<prefix>:<kind>:<key>`: `l` located transactions, `f` fraud labels (and `f0`
//!   the oldest one's time), `t` newest time, `b` the time buckets of a hot entity's folded
//!   events, and the bookkeeping of copies (below);
//! - the sorted set `<prefix>:<kind>.e:<key>` of its events (scored by time; each member a
//!   sequence number, so ties stay in arrival order, then the event);
//! - the sorted set `<prefix>:<kind>.s:<key>` of its seen values (scored by their last
//!   time) and the hash `<prefix>:<kind>.p:<key>` of their last and previous times.
//!
//! So that recording a transaction costs the server O(1) whatever the entity's rate: an
//! event is one `ZADD`, the events that left the horizon one `ZREMRANGEBYRANK`, a seen value
//! one `HGET` and `HSET`. The state is bounded as in memory (README, "hot entities"): the
//! script caps seen values and fraud labels itself; past twice `RAW_CAP` raw events this code
//! folds the oldest into buckets and a second script swaps them in, unless another replica
//! did first.
//!
//! A transaction costs one round trip (and a hot entity one more, once every `RAW_CAP` of its
//! transactions): one Lua script (run by its SHA-1, atomic on the server) records the
//! transaction in each of its entities with the same rules as `EntityState::record`, and
//! returns what this replica lacks of each entity's state as it was. Each entity has a
//! generation, a version and a log of its newest changes; a replica keeps copies of the
//! larger states (a bounded map, least recently used out first), and for those it reads only
//! the changes since its copy (a few dozen bytes each), which it applies to the state it
//! keeps, by the state's own rules (`ops`). Other states are read whole. The features are
//! then computed here, by the same code as for the memory backend: with a copy, by its
//! running window aggregates, so a hot entity's transaction costs O(1) amortized here as in
//! Redis. Idle entities expire by themselves (a TTL of the retention
//! on each key, in wall-clock time). Every call is bounded by the configured timeout: a slow
//! or absent server gives [`StoreError::Redis`], never a hang.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::state::layout;
use super::store::{StateStore, StoreError};
use super::{Entity, EntityState, Extractor, LabelEvent, Observation};

/// Lua shared by the scripts:
/// - `oplen(o, p)`: the length of the operation starting at `p` in an entity's operation log
///   (`S` a recorded transaction, `L` a label; see [`ops`]); `append(o, ob, v, op)` appends
///   one, keeping the newest `OPLOG_CAP`;
/// - `num(b)`: an 8-byte big-endian time as a number (exact: times are below 2^53);
/// - `whole(K, E)`: an entity's state as the layout stores it (`e`, `l`, `s`, `f`, `t`, `b`),
///   wherever its events and seen values are kept (inline in its hash while few, in its
///   sorted sets once many; see the module comment);
/// - `expiry(x, life)`: when an entity's keys should go (`nil`: they live `life` ms more
///   already, `x` being when they go now; otherwise `life` and half as much again from now),
///   and `ttl(i, at, e, s)` makes it so for entity `i`'s hash and, when they exist, its
///   events and seen values (the three keys from `KEYS[3i-2]`);
/// - `insert_mark(f, mark)`: adds a fraud mark (or moves its known time earlier).
const PRELUDE: &str = r#"
local function oplen(o, p)
  if string.sub(o, p, p) == 'L' then return 26 end
  return 29 + EVENT_LEN + 24 * string.byte(o, p + 1) + 9 * string.byte(o, p + 2) + 24 * string.byte(o, p + 3)
end
local function append(o, ob, v, op)
  o = o .. op
  while v - ob > OPLOG_CAP do
    o = string.sub(o, oplen(o, 1) + 1)
    ob = ob + 1
  end
  return o, ob
end
local function num(b)
  local n = 0
  for k = 1, 8 do n = n * 256 + string.byte(b, k) end
  return string.format('%.0f', n)
end
local function whole(K, E)
  local h = redis.call('HGETALL', K)
  local m, s = {}, {}
  for j = 1, #h, 2 do
    local name = h[j]
    if #name == 10 and string.sub(name, 1, 1) == 'p' then
      s[#s + 1] = string.sub(name, 2) .. h[j + 1]
    else
      m[name] = h[j + 1]
    end
  end
  local e = m['e'] or ''
  if m['n'] then
    local ev = redis.call('ZRANGE', E, 0, -1)
    for j, x in ipairs(ev) do ev[j] = string.sub(x, 17) end
    e = table.concat(ev)
  end
  return {e, m['l'] or '', (m['s'] or '') .. table.concat(s), m['f'] or '', m['t'] or '', m['b'] or ''}
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function expiry(x, life)
  if x and tonumber(x) >= now + life then return nil end
  return string.format('%.0f', now + math.floor(life * 3 / 2))
end
local function ttl(i, at, e, s)
  if not at then return end
  redis.call('PEXPIREAT', KEYS[3*i-2], at)
  if e then redis.call('PEXPIREAT', KEYS[3*i-1], at) end
  if s then redis.call('PEXPIREAT', KEYS[3*i], at) end
end
local function insert_mark(f, mark)
  local id, mts, mknown = string.sub(mark, 9, 16), string.sub(mark, 1, 8), string.sub(mark, 17, 24)
  for r = 1, #f, 24 do
    if string.sub(f, r+8, r+15) == id then
      if mknown < string.sub(f, r+16, r+23) then
        f = string.sub(f, 1, r+15) .. mknown .. string.sub(f, r+24)
      end
      return f
    end
  end
  local p = #f / 24
  while p > 0 and string.sub(f, (p-1)*24+1, (p-1)*24+8) > mts do p = p - 1 end
  return string.sub(f, 1, p*24) .. mark .. string.sub(f, p*24+1)
end
"#;

/// Records a transaction in its entities (or only reads them, `ARGV[1] == '0'`), returning
/// what the caller lacks of each entity's state from before. Times are 8-byte big-endian
/// strings in the layout (so string order is time order); the sorted sets' scores are the
/// same times in decimal (`ARGV[4]` the transaction's, `ARGV[5]` the seen values' cutoff).
///
/// KEYS are three per entity (its hash, events and seen values), then the transaction's
/// marker. The hash holds a generation `g` (set by the call that creates it, from
/// `ARGV[3]`), a version `v` (one more at every change), a log `o` of its newest changes
/// (versions `ob`+1 to `v`) and when its keys expire `x`; its events inline (`e`) or, past
/// `INLINE` of them, the sorted set's sequence `n`; its seen values inline (`s`) or, past
/// `INLINE`, their count `sn` (with each one's times in a field `p` and the value). Per
/// entity, ARGV holds the operation (`S`, see [`ops`]), the version the caller knows (`g`
/// then `v` in decimal, or empty) and the events' cutoff in decimal. The answer per entity is
/// `{kind, g, v after, ...}`: `=` (the caller's version is current), `+` then the operations
/// since the caller's version, or `*` then the whole state. The last ARGV is the marker's
/// life: a transaction marked already is not recorded again (the call only reads), and the
/// answer ends with `{'1'}` then (`{'0'}` otherwise).
const STEP: &str = r#"
local write, life, nonce, tn, scn = ARGV[1] == '1', tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local EV = EVENT_LEN
local out = {}
local n_ent = (#KEYS - 1) / 3
local dup = '0'
if write then
  if redis.call('SET', KEYS[#KEYS], '1', 'NX', 'PX', tonumber(ARGV[#ARGV])) then
  else
    dup = '1'
    write = false
  end
end
for i = 1, n_ent do
  local K, E, S = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  local op, known, cutn = ARGV[3 + 3*i], ARGV[4 + 3*i], ARGV[5 + 3*i]
  local nb = string.byte(op, 3)
  local q = 30 + EV + 24 * string.byte(op, 2)
  local seen = string.sub(op, q, q + 9 * nb - 1)
  local want = {'l', 't', 'g', 'v', 'o', 'ob', 'n', 'f0', 'x', 'sn', 'e', 's'}
  for k = 1, #seen, 9 do want[#want + 1] = 'p' .. string.sub(seen, k, k + 8) end
  local cur = redis.call('HMGET', K, unpack(want))
  local l, tt = cur[1] or '', cur[2] or ''
  local g, v, o, ob = cur[3], tonumber(cur[4] or '0'), cur[5] or '', tonumber(cur[6] or '0')
  local seq, f0, x, sn = tonumber(cur[7]), cur[8] or '', cur[9], tonumber(cur[10])
  local e, s = cur[11] or '', cur[12] or ''
  local kv = -1
  if g and #known > 8 and string.sub(known, 1, 8) == g then kv = tonumber(string.sub(known, 9)) or -1 end
  local lacks
  if kv == v then
    lacks = {'='}
  elseif kv >= ob and kv < v then
    local p = 1
    for j = 1, kv - ob do p = p + oplen(o, p) end
    lacks = {'+', string.sub(o, p)}
  elseif not cur[4] then
    -- No state at all (an entity's keys live and go together).
    lacks = {'*', '', '', '', '', '', ''}
  elseif not seq and not sn then
    -- All inline: two more fields make the whole state.
    local fb = redis.call('HMGET', K, 'f', 'b')
    lacks = {'*', e, l, s, fb[1] or '', tt, fb[2] or ''}
  else
    lacks = whole(K, E)
    table.insert(lacks, 1, '*')
  end
  if write then
    local na, nc = string.byte(op, 2), string.byte(op, 4)
    local labels = string.sub(op, 5, 5)
    local t, cut = string.sub(op, 6, 13), string.sub(op, 22, 29)
    local ev = string.sub(op, 30, 29 + EV)
    local loc = string.sub(op, 30 + EV, 29 + EV + 24 * na)
    local mark = string.sub(op, q + 9 * nb, q + 9 * nb + 24 * nc - 1)
    local set, del = {}, {}
    -- The event, after those of its time; then the events before the cutoff go, but the
    -- last of them. (The cutoff is before the transaction, so never after the newest event.)
    if seq then
      -- In the sorted set: the sequence keeps arrival order among equal times.
      seq = seq + 1
      redis.call('ZADD', E, tn, string.format('%016.0f', seq) .. ev)
      local old = redis.call('ZCOUNT', E, '-inf', '(' .. cutn)
      if old >= 2 then redis.call('ZREMRANGEBYRANK', E, 0, old - 2) end
      set[#set + 1] = 'n'
      set[#set + 1] = seq
    else
      local n = #e / EV
      local pos = n
      while pos > 0 and string.sub(e, (pos-1)*EV+1, (pos-1)*EV+8) > t do pos = pos - 1 end
      e = string.sub(e, 1, pos*EV) .. ev .. string.sub(e, pos*EV+1)
      n = n + 1
      local old = 0
      while old < n and string.sub(e, old*EV+1, old*EV+8) < cut do old = old + 1 end
      if old >= 2 then
        e = string.sub(e, (old-1)*EV+1)
        n = n - old + 1
      end
      if n > INLINE then
        -- Many: into the sorted set, for good.
        local args = {}
        for j = 1, n do
          local one = string.sub(e, (j-1)*EV+1, j*EV)
          args[#args + 1] = num(one)
          args[#args + 1] = string.format('%016.0f', j) .. one
        end
        redis.call('ZADD', E, unpack(args))
        if x then redis.call('PEXPIREAT', E, x) end
        seq = n
        set[#set + 1] = 'n'
        set[#set + 1] = seq
        del[#del + 1] = 'e'
      else
        set[#set + 1] = 'e'
        set[#set + 1] = e
      end
    end
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
    if sn then
      -- Seen values in the sorted set (scored by their last time) and the hash's `p` fields
      -- (last and previous times).
      local had = sn
      local scores = {}
      for k = 1, #seen, 9 do
        local id = string.sub(seen, k, k + 8)
        local rec = cur[12 + (k + 8) / 9]
        if rec then
          local last, prev = string.sub(rec, 1, 8), string.sub(rec, 9, 16)
          if t > last then
            set[#set + 1] = 'p' .. id
            set[#set + 1] = t .. last
            scores[#scores + 1] = tn
            scores[#scores + 1] = id
          elseif t < last and t > prev then
            set[#set + 1] = 'p' .. id
            set[#set + 1] = last .. t
          end
        else
          set[#set + 1] = 'p' .. id
          set[#set + 1] = t .. string.rep('\0', 8)
          scores[#scores + 1] = tn
          scores[#scores + 1] = id
          sn = sn + 1
        end
      end
      if #scores > 0 then
        redis.call('ZADD', S, unpack(scores))
        if had == 0 and x then redis.call('PEXPIREAT', S, x) end
      end
      local gone = {}
      if had > 0 then gone = redis.call('ZRANGEBYSCORE', S, '-inf', '(' .. scn) end
      if sn - #gone > MAX_SEEN then
        -- The oldest (by last time, then value) go, down to SEEN_KEPT.
        gone = redis.call('ZRANGE', S, 0, sn - SEEN_KEPT - 1)
      end
      for j = 1, #gone, 500 do
        redis.call('ZREM', S, unpack(gone, j, math.min(j + 499, #gone)))
      end
      for _, id in ipairs(gone) do del[#del + 1] = 'p' .. id end
      sn = sn - #gone
      set[#set + 1] = 'sn'
      set[#set + 1] = sn
    else
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
        if string.sub(s, r+9, r+16) >= string.sub(op, 14, 21) then kept[#kept+1] = string.sub(s, r, r+24) end
      end
      if #kept > INLINE then
        -- Many: into the sorted set, for good (INLINE is below MAX_SEEN: no cap yet).
        local scores = {}
        for _, rec in ipairs(kept) do
          local id = string.sub(rec, 1, 9)
          set[#set + 1] = 'p' .. id
          set[#set + 1] = string.sub(rec, 10, 25)
          scores[#scores + 1] = num(string.sub(rec, 10, 17))
          scores[#scores + 1] = id
        end
        redis.call('ZADD', S, unpack(scores))
        if x then redis.call('PEXPIREAT', S, x) end
        sn = #kept
        set[#set + 1] = 'sn'
        set[#set + 1] = sn
        del[#del + 1] = 's'
      else
        set[#set + 1] = 's'
        set[#set + 1] = table.concat(kept)
      end
    end
    if labels == '1' and (#mark > 0 or (f0 ~= '' and f0 < cut)) then
      local f = redis.call('HGET', K, 'f') or ''
      if #mark > 0 then f = insert_mark(f, mark) end
      local drop = 0
      while drop * 24 < #f and string.sub(f, drop*24+1, drop*24+8) < cut do drop = drop + 1 end
      if #f / 24 - drop > MAX_FRAUDS then drop = #f / 24 - MAX_FRAUDS end
      f = string.sub(f, drop*24+1)
      set[#set + 1] = 'f'
      set[#set + 1] = f
      set[#set + 1] = 'f0'
      set[#set + 1] = string.sub(f, 1, 8)
    end
    if tt == '' or t > tt then tt = t end
    if not g then g = nonce end
    v = v + 1
    if seq or sn or #e + #s >= LOG_FROM then
      o, ob = append(o, ob, v, op)
    else
      -- A small state: no replica keeps a copy of it (see `KEEP_FROM`), so no log.
      o, ob = '', v
    end
    local at = expiry(x, life)
    if at then
      set[#set + 1] = 'x'
      set[#set + 1] = at
    end
    redis.call('HSET', K, 'l', l, 't', tt, 'g', g, 'v', v, 'o', o, 'ob', ob, unpack(set))
    -- After the HSET: a value of this transaction may be among those that go.
    for j = 1, #del, 500 do
      redis.call('HDEL', K, unpack(del, j, math.min(j + 499, #del)))
    end
    ttl(i, at, seq, sn and sn > 0)
  end
  table.insert(lacks, 2, g or '')
  table.insert(lacks, 3, tostring(v))
  out[i] = lacks
end
out[n_ent + 1] = {dup}
return out
"#;

/// Applies a label (ARGV: id, transaction time, '1' fraud / '0' not, known time, ttl) to
/// each entity's fraud labels (KEYS: three per entity, as for [`STEP`]), and logs it (an `L`
/// operation) in each entity's operation log.
const LABEL: &str = r#"
local id, mts, fraud, known, life = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4], tonumber(ARGV[5])
local op = 'L' .. id .. mts .. ARGV[3] .. known
for i = 1, #KEYS / 3 do
  local K = KEYS[3*i-2]
  local cur = redis.call('HMGET', K, 'f', 't', 'v', 'o', 'ob', 'x', 'n', 'sn')
  local f, tt = cur[1] or '', cur[2] or ''
  local v, o, ob = tonumber(cur[3] or '0'), cur[4] or '', tonumber(cur[5] or '0')
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
    f = insert_mark(f, mts .. id .. known)
    if #f / 24 > MAX_FRAUDS then f = string.sub(f, 25) end
  end
  if tt == '' or mts > tt then tt = mts end
  v = v + 1
  o, ob = append(o, ob, v, op)
  local at = expiry(cur[6], life)
  redis.call('HSET', K, 'f', f, 'f0', string.sub(f, 1, 8), 't', tt, 'v', v, 'o', o, 'ob', ob, 'x', at or cur[6])
  ttl(i, at, cur[7], tonumber(cur[8] or '0') > 0)
end
return 1
"#;

/// Folds a hot entity's oldest raw events (ARGV[1], as stored) into its time buckets
/// (ARGV[3] replaces ARGV[2]), when no other replica did meanwhile: the state must still start
/// with those events and hold those buckets. KEYS: the entity's hash and events. Returns the
/// entity's new version when done (its operation log starts again: the other replicas read
/// the whole state once), 0 otherwise.
const COMPACT: &str = r#"
local K, E = KEYS[1], KEYS[2]
local cur = redis.call('HMGET', K, 'b', 'v', 'n', 'e')
local b, v = cur[1] or '', tonumber(cur[2] or '0')
local prefix, old, new = ARGV[1], ARGV[2], ARGV[3]
local k = #prefix / EVENT_LEN
if b ~= old or k == 0 then return 0 end
if cur[3] then
  local first = redis.call('ZRANGE', E, 0, k - 1)
  if #first < k then return 0 end
  for j, m in ipairs(first) do first[j] = string.sub(m, 17) end
  if table.concat(first) ~= prefix then return 0 end
  redis.call('ZREMRANGEBYRANK', E, 0, k - 1)
else
  local e = cur[4] or ''
  if string.sub(e, 1, #prefix) ~= prefix then return 0 end
  redis.call('HSET', K, 'e', string.sub(e, #prefix + 1))
end
v = v + 1
redis.call('HSET', K, 'b', new, 'v', v, 'o', '', 'ob', v)
return v
"#;

/// An entity's whole state (KEYS: its three keys), empty fields if it has none.
const READ: &str = r#"
return whole(KEYS[1], KEYS[2])
"#;

/// Moves an entity's three keys (KEYS 1-3) to another's (KEYS 4-6) when the other has no
/// state and this one has: 1 when moved, 0 otherwise.
const MOVE: &str = r#"
if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for j = 1, 3 do
  if redis.call('EXISTS', KEYS[j]) == 1 then redis.call('RENAME', KEYS[j], KEYS[j + 3]) end
end
return 1
"#;

/// Events, and seen values, an entity keeps inline in its hash: past this many, they move to
/// its sorted sets (where recording one is O(log n) on the server, not a copy of them all).
const INLINE: usize = 32;
const _: () = assert!(INLINE < super::MAX_SEEN && INLINE < super::RAW_CAP);

/// A script with the state's caps written in.
fn script(text: &str) -> redis::Script {
    redis::Script::new(
        &format!("{PRELUDE}{text}")
            .replace("EVENT_LEN", &layout::EVENT.to_string())
            .replace("OPLOG_CAP", &ops::LOG_CAP.to_string())
            .replace("INLINE", &INLINE.to_string())
            .replace("LOG_FROM", &(KEEP_FROM / 2).to_string())
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

/// Where the state lives: one Redis server, the primary that Redis Sentinel names, or a
/// Redis Cluster (entities spread over its slots).
enum Backend {
    Single(redis::Client),
    /// A primary that Redis Sentinel names (and names again after a failover).
    Sentinel {
        sentinels: Vec<redis::Client>,
        /// The name the sentinels monitor the primary by.
        master: String,
        /// Database, user and password of the primary (from a template URL).
        redis: redis::RedisConnectionInfo,
        /// The primary, as the sentinels last named it.
        primary: Mutex<Option<redis::Client>>,
    },
    Cluster {
        client: redis::cluster::ClusterClient,
        /// The nodes given, for commands that go to every primary (`clear`).
        nodes: Vec<String>,
    },
}

/// A connection of either kind.
enum Conn {
    /// One server, its replies read by [`super::resp`]'s reader.
    Plain(super::resp::Plain),
    /// One server over an address that reader does not serve (TLS, RESP3).
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Conn {
    fn like(&mut self) -> &mut dyn redis::ConnectionLike {
        match self {
            Conn::Plain(c) => c,
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
    read_all: redis::Script,
    move_all: redis::Script,
    marker_ttl_ms: u64,
    /// This replica's copies of the larger entity states, by key.
    known: Mutex<Known>,
    /// Bytes of entity state and operations read from Redis (see [`RedisStore::bytes_read`]).
    read: AtomicU64,
    /// Makes each new entity's generation (see [`STEP`]) unique.
    nonce: AtomicU64,
}

/// A state smaller than this is read whole at every transaction rather than kept here.
const KEEP_FROM: usize = 1024;
/// The most bytes of memory the copies of entity states of one store take (the least
/// recently used go first).
const KEEP_BUDGET: usize = 64 << 20;

/// An entity's state as this replica last saw it.
struct Copy {
    /// The entity's generation and version in Redis.
    g: Vec<u8>,
    v: u64,
    /// The state itself, read once and kept up to date by the operations since (its running
    /// window aggregates with it: a hot entity's transaction costs O(1) here too).
    state: EntityState,
    /// Its time buckets as stored (`b`: what a fold replaces, see [`COMPACT`]).
    b: Vec<u8>,
    used: u64,
    /// Its memory here when it was put in the map (what counts against the budget).
    held: usize,
}

impl Copy {
    /// Its size as stored (what decides whether it is kept).
    fn stored(&self) -> usize {
        layout::stored_len(&self.state) + self.b.len()
    }
}

/// The copies of hot entities' states a replica keeps, so that a round trip moves what it
/// lacks of them (the operations since), not the whole of them.
#[derive(Default)]
struct Known {
    copies: HashMap<Vec<u8>, Copy>,
    bytes: usize,
    tick: u64,
    /// One more at every `clear`: copies taken out before are not put back.
    epoch: u64,
}

impl Known {
    fn take(&mut self, key: &[u8]) -> Option<Copy> {
        let c = self.copies.remove(key)?;
        self.bytes -= c.held;
        Some(c)
    }

    fn put(&mut self, key: Vec<u8>, mut c: Copy) {
        c.held = c.state.heap_bytes() + c.b.capacity() + key.len();
        if c.stored() < KEEP_FROM || c.held > KEEP_BUDGET / 4 {
            return;
        }
        self.tick += 1;
        c.used = self.tick;
        self.bytes += c.held;
        self.copies.insert(key, c);
        if self.bytes > KEEP_BUDGET {
            // The least recently used half goes.
            let mut ticks: Vec<u64> = self.copies.values().map(|c| c.used).collect();
            ticks.sort_unstable();
            let median = ticks[ticks.len() / 2];
            self.copies.retain(|_, c| c.used >= median);
            self.bytes = self.copies.values().map(|c| c.held).sum();
        }
    }

    fn clear(&mut self) {
        self.copies.clear();
        self.bytes = 0;
        self.epoch += 1;
    }
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

    /// Connects to the primary that the Redis Sentinels `sentinels` (`redis://host:port`
    /// each) monitor as `master`, and to the new one after a failover: a call that finds
    /// its primary gone, or demoted to a replica, asks the sentinels again. The primary's
    /// database, user and password come from `template` (a `redis://` URL whose address is
    /// not used) when given. Every call, the sentinels' included, gives up after `timeout`.
    pub fn open_sentinel(
        sentinels: &[String],
        master: &str,
        template: Option<&str>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        if sentinels.is_empty() {
            return Err(StoreError::Redis("no Redis Sentinel given".into()));
        }
        let sentinels = sentinels
            .iter()
            .map(|u| redis::Client::open(u.as_str()).map_err(err))
            .collect::<Result<Vec<_>, _>>()?;
        let redis = match template {
            Some(t) => {
                redis::IntoConnectionInfo::into_connection_info(t)
                    .map_err(err)?
                    .redis
            }
            None => redis::RedisConnectionInfo::default(),
        };
        Self::with_backend(
            Backend::Sentinel {
                sentinels,
                master: master.to_string(),
                redis,
                primary: Mutex::new(None),
            },
            prefix,
            timeout,
        )
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
            read_all: script(READ),
            move_all: script(MOVE),
            marker_ttl_ms: MARKER_TTL_MS,
            known: Mutex::new(Known::default()),
            read: AtomicU64::new(0),
            nonce: AtomicU64::new(process_nonce()),
        };
        // Check the server answers now rather than at the first transaction.
        store.with(|c| redis::cmd("PING").query::<String>(c))?;
        Ok(store)
    }

    /// The keys of an entity: its hash, events and seen values (see the module comment).
    fn keys(&self, e: Entity, k: &str) -> [Vec<u8>; 3] {
        [
            self.part_key(e, k, ""),
            self.part_key(e, k, ".e"),
            self.part_key(e, k, ".s"),
        ]
    }

    /// `<prefix>:<kind><part>:<key>`: the part follows the kind, which no key can change
    /// (`card.e:x` is never a card's hash, whatever its token).
    fn part_key(&self, e: Entity, k: &str, part: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + k.len() + 16);
        key.extend_from_slice(self.prefix.as_bytes());
        key.push(b':');
        key.extend_from_slice(e.name().as_bytes());
        key.extend_from_slice(part.as_bytes());
        key.push(b':');
        if self.cluster() {
            // The entity is the hash tag: its keys and its markers share a slot. (An empty
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
                Backend::Single(client) => self.single(client),
                Backend::Sentinel { .. } => self.single(&self.primary()?),
                Backend::Cluster { client, .. } => Ok(Conn::Cluster(Box::new(
                    client.get_connection().map_err(err)?,
                ))),
            }
        };
        // The server went away, or is no longer the primary: the copies of entity states
        // may be ahead of what the server now holds (writes lost in a crash or a failover),
        // and the primary is asked for again.
        let lost = |e: &redis::RedisError| {
            let gone = e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_io_error()
                || e.code() == Some("READONLY")
                || e.to_string().contains("READONLY");
            if gone {
                self.known().clear();
                if let Backend::Sentinel { primary, .. } = &self.backend {
                    *primary
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                }
            }
            gone
        };
        let run = |c: &mut Conn| f(c.like()).map_err(|e| (lost(&e), e));
        let (conn, out) = match pooled {
            Some(mut c) => match run(&mut c) {
                // A pooled connection that Redis closed (a restart), or a primary demoted
                // (a failover): the command never ran (the scripts fail at their first
                // write), so it is sent once more on a new connection. (Not after a
                // timeout: it may have run.)
                Err((true, e)) if !e.is_timeout() => {
                    drop(c);
                    let mut c = fresh()?;
                    let out = run(&mut c).map_err(|(_, e)| err(e))?;
                    (c, out)
                }
                Err((_, e)) => return Err(err(e)),
                Ok(out) => (c, out),
            },
            None => {
                let mut c = fresh()?;
                let out = run(&mut c).map_err(|(_, e)| err(e))?;
                (c, out)
            }
        };
        self.pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(conn);
        Ok(out)
    }

    /// A pooled connection to `client`'s server, every call on it bounded by the timeout.
    fn single(&self, client: &redis::Client) -> Result<Conn, StoreError> {
        match super::resp::Plain::connect(client.get_connection_info(), self.timeout)
            .map_err(err)?
        {
            Some(c) => Ok(Conn::Plain(c)),
            None => Ok(Conn::Single(self.connect(client)?)),
        }
    }

    /// A connection to `client`, every call on it bounded by the timeout.
    fn connect(&self, client: &redis::Client) -> Result<redis::Connection, StoreError> {
        let c = client
            .get_connection_with_timeout(self.timeout)
            .map_err(err)?;
        c.set_read_timeout(Some(self.timeout)).map_err(err)?;
        c.set_write_timeout(Some(self.timeout)).map_err(err)?;
        Ok(c)
    }

    /// With Sentinel: the primary, as the sentinels last named it, or as the first of them
    /// that answers names it now (checked to say it is the primary: a sentinel may lag
    /// behind a failover).
    fn primary(&self) -> Result<redis::Client, StoreError> {
        let Backend::Sentinel {
            sentinels,
            master,
            redis: info,
            primary,
        } = &self.backend
        else {
            return Err(StoreError::Redis("not a Sentinel deployment".into()));
        };
        let mut known = primary
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = known.as_ref() {
            return Ok(c.clone());
        }
        let mut last = format!("no sentinel named the primary `{master}`");
        for s in sentinels {
            let named = self.connect(s).and_then(|mut c| {
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master)
                    .query::<Option<(String, u16)>>(&mut c)
                    .map_err(err)
            });
            let (host, port) = match named {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    last = format!("a sentinel does not know the primary `{master}`");
                    continue;
                }
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let client = redis::Client::open(redis::ConnectionInfo {
                addr: redis::ConnectionAddr::Tcp(host.clone(), port),
                redis: info.clone(),
            })
            .map_err(err)?;
            let role = self.connect(&client).and_then(|mut c| {
                redis::cmd("ROLE")
                    .query::<Vec<redis::Value>>(&mut c)
                    .map_err(err)
            });
            match role.as_deref() {
                Ok([redis::Value::BulkString(r), ..]) if r == b"master" => {
                    *known = Some(client.clone());
                    return Ok(client);
                }
                Ok(_) => last = format!("{host}:{port}, named primary, is not one (yet)"),
                Err(e) => last = format!("{host}:{port}, named primary: {e}"),
            }
        }
        Err(StoreError::Redis(last))
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes of entity state (and logged operations) this store has read from Redis since
    /// it was opened: with a hot entity, a few dozen a transaction, not its whole state.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    fn run_step(
        &self,
        ex: &Extractor,
        obs: &Observation<'_>,
        row: &mut [f64],
        write: bool,
    ) -> Result<(), StoreError> {
        let p = &obs.point;
        let entities: Vec<(Entity, &super::Keeping)> = ex
            .entities()
            .filter_map(|e| Some((e, ex.keeping(e).filter(|_| obs.key(e).is_some())?)))
            .collect();
        for e in ex.entities() {
            if !entities.iter().any(|(x, _)| *x == e) {
                ex.entity_into(e, p, None, row);
            }
        }
        if entities.is_empty() {
            return Ok(());
        }
        let keys: Vec<[Vec<u8>; 3]> = entities
            .iter()
            .map(|(e, _)| self.keys(*e, obs.key(*e).unwrap_or_default()))
            .collect();
        let ops: Vec<Vec<u8>> = entities
            .iter()
            .map(|(_, keep)| {
                let mark = match (keep.labels, p.fraud_known_at) {
                    (true, Some(known)) => [be(p.ts), p.id.to_be_bytes(), be(known)].concat(),
                    _ => Vec::new(),
                };
                ops::step(
                    p.ts,
                    p.ts - ex.retention_us(),
                    p.ts - keep.horizon_us.max(1),
                    &layout::event(p, keep),
                    &layout::located(p),
                    &layout::seen_keys(p, keep),
                    keep.labels,
                    &mark,
                )
            })
            .collect();
        // This replica's copies of the entities, out of the shared map while the call runs
        // (a concurrent transaction of the same entity reads its whole state instead).
        let (mut copies, epoch): (Vec<Option<Copy>>, u64) = {
            let mut known = self.known();
            let copies = keys.iter().map(|k| known.take(&k[0])).collect();
            (copies, known.epoch)
        };
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        // One call for all the entities; with a cluster, one per entity (its own slot).
        let groups: Vec<Vec<usize>> = if self.cluster() {
            (0..entities.len()).map(|i| vec![i]).collect()
        } else {
            vec![(0..entities.len()).collect()]
        };
        let mut replies: Vec<Vec<Vec<u8>>> = Vec::with_capacity(entities.len());
        let mut dups: Vec<bool> = Vec::with_capacity(entities.len());
        for group in groups {
            let mut inv = self.step.prepare_invoke();
            inv.arg(if write { "1" } else { "0" })
                .arg(ex.retention_us() / 1000)
                .arg(&nonce[..])
                .arg(p.ts)
                .arg(p.ts - ex.retention_us());
            let mut marker = None;
            for &i in &group {
                if self.cluster() {
                    marker = Some(self.entity_marker(&keys[i][0], p.id, p.ts));
                }
                for k in &keys[i] {
                    inv.key(k);
                }
                let known = copies[i]
                    .as_ref()
                    .map(|c| [&c.g[..], c.v.to_string().as_bytes()].concat())
                    .unwrap_or_default();
                inv.arg(&ops[i])
                    .arg(known)
                    .arg(p.ts - entities[i].1.horizon_us.max(1));
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
            let bytes: usize = got.iter().flatten().map(Vec::len).sum();
            self.read.fetch_add(bytes as u64, Ordering::Relaxed);
            dups.extend(std::iter::repeat_n(dup, got.len()));
            replies.extend(got);
        }
        let mut keep = Vec::with_capacity(entities.len());
        for (i, ((&(e, k), reply), &dup)) in entities.iter().zip(replies).zip(&dups).enumerate() {
            let wrote = write && !dup;
            let Copy {
                g,
                mut v,
                mut state,
                mut b,
                ..
            } = resolve(reply, copies[i].take(), wrote, k)?;
            if dup {
                // Recorded already (a retry, or the same transaction on another replica): its
                // features are those of the state without it, and nothing is recorded again.
                let mut w = state.clone();
                let seen: Vec<(u8, u64)> = k.seen_of(p).collect();
                w.without(&super::state::Event::of(p, k), &seen);
                ex.entity_into(e, p, Some(&w), row);
            } else if !wrote {
                ex.entity_peek(e, p, &mut state, row);
            } else {
                // The script recorded the transaction; the copy follows by the same rules,
                // as the memory backend does (features by the running aggregates). But for
                // folding: a hot entity's oldest raw events are folded here, where the
                // buckets' exact integer sums are made, and the state in Redis follows by
                // one more call (once every `RAW_CAP` transactions of the entity).
                let mut folded = Vec::new();
                if ex.entity_step_folding(e, p, &mut state, row, &mut folded) > 0 {
                    let prefix = layout::events(folded.iter());
                    let new = layout::buckets(&state);
                    let done: u64 = self.with(|c| {
                        self.compact
                            .key(&keys[i][0])
                            .key(&keys[i][1])
                            .arg(&prefix)
                            .arg(&b)
                            .arg(&new)
                            .invoke::<u64>(c)
                    })?;
                    if done != v + 1 {
                        // Another replica changed it meanwhile: read whole next time.
                        continue;
                    }
                    b = new;
                    v = done;
                }
            }
            if !g.is_empty() {
                keep.push((
                    i,
                    Copy {
                        g,
                        v,
                        state,
                        b,
                        used: 0,
                        held: 0,
                    },
                ));
            }
        }
        let mut known = self.known();
        if known.epoch == epoch {
            for (i, c) in keep {
                known.put(keys[i][0].clone(), c);
            }
        }
        Ok(())
    }

    /// Deletes every key under the prefix (entities and transaction markers), a batch at a
    /// time (`SCAN`, never a blocking `KEYS`). Returns how many were deleted.
    pub fn clear(&self) -> Result<usize, StoreError> {
        self.known().clear();
        let pattern = format!("{}:*", self.prefix);
        match &self.backend {
            Backend::Single(client) => clear_node(&mut self.connect(client)?, &pattern, false),
            Backend::Sentinel { .. } => {
                clear_node(&mut self.connect(&self.primary()?)?, &pattern, false)
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

/// An entity's state before the call from the script's answer (`{kind, g, v, ...}`, see
/// [`STEP`]) and this replica's copy; with its generation and its version after the call
/// (one more than before when the call `wrote`).
fn resolve(
    reply: Vec<Vec<u8>>,
    copy: Option<Copy>,
    wrote: bool,
    keeping: &super::Keeping,
) -> Result<Copy, StoreError> {
    let bad = |what: &str| StoreError::Redis(format!("the state script's answer {what}"));
    let mut it = reply.into_iter();
    let (Some(kind), Some(g), Some(v)) = (it.next(), it.next(), it.next()) else {
        return Err(bad("is too short"));
    };
    let v: u64 = std::str::from_utf8(&v)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("has no version"))?;
    let before = v.saturating_sub(u64::from(wrote));
    let (state, b) = match (kind.as_slice(), copy) {
        (b"=", Some(c)) if c.v == before => (c.state, c.b),
        (b"+", Some(mut c)) => {
            let ops = it.next().unwrap_or_default();
            let n = ops::replay_state(&mut c.state, keeping, &ops).map_err(StoreError::Redis)?;
            if c.v + n as u64 != before {
                return Err(bad("skips operations"));
            }
            (c.state, c.b)
        }
        (b"*", _) => {
            let fields: Vec<Vec<u8>> = it.collect();
            if fields.len() != 6 {
                return Err(bad("has a state of the wrong shape"));
            }
            let state = decode(&fields)?;
            let b = fields.into_iter().nth(5).unwrap_or_default();
            (state, b)
        }
        _ => return Err(bad("refers to a version this replica does not hold")),
    };
    Ok(Copy {
        g,
        v,
        state,
        b,
        used: 0,
        held: 0,
    })
}

/// Where this process's entity generations start: distinct between processes (a hash of
/// the time and process id with the standard library's random keys), so that an entity
/// deleted and made again never has the generation of a copy a replica still holds. Only
/// the reading of copies depends on it, never a feature.
fn process_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish()
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
        let keys: Vec<[Vec<u8>; 3]> = ex
            .entities()
            .filter(|e| ex.keeps_labels(*e))
            .filter_map(|e| obs.key(e).map(|k| self.keys(e, k)))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        // One call for all the entities; with a cluster, one per entity (its own slot).
        let groups: Vec<Vec<[Vec<u8>; 3]>> = if self.cluster() {
            keys.into_iter().map(|k| vec![k]).collect()
        } else {
            vec![keys]
        };
        for group in groups {
            let mut inv = self.label.prepare_invoke();
            for k in group.iter().flatten() {
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
        let keys = self.keys(entity, key);
        // This replica's copy goes too (the others' can no longer be read: their
        // generation is gone with the hash).
        self.known().take(&keys[0]);
        // One DEL for the four keys (one slot: the entity is their hash tag).
        let n: i64 = self.with(|c| redis::cmd("DEL").arg(&keys[..]).query(c))?;
        Ok(n > 0)
    }

    fn rename(&self, entity: Entity, from: &str, to: &str) -> Result<bool, StoreError> {
        let (a, b) = (self.keys(entity, from), self.keys(entity, to));
        {
            let mut known = self.known();
            known.take(&a[0]);
            known.take(&b[0]);
        }
        if !self.cluster() {
            // One script: the four keys move together, only when the new token has no state.
            let moved: i64 = self.with(|c| {
                let mut inv = self.move_all.prepare_invoke();
                for k in a.iter().chain(&b) {
                    inv.key(k);
                }
                inv.invoke(c)
            })?;
            return Ok(moved == 1);
        }
        // Two slots: each key copied (with its life) where nothing is yet, then removed; the
        // hash last, so that a move cut short leaves the entity where it was.
        let target: i64 = self.with(|c| redis::cmd("EXISTS").arg(&b[0]).query(c))?;
        let source: i64 = self.with(|c| redis::cmd("EXISTS").arg(&a[0]).query(c))?;
        if target == 1 || source == 0 {
            return Ok(false);
        }
        for (from, to) in a.iter().zip(&b).rev() {
            let dumped: Option<Vec<u8>> = self.with(|c| redis::cmd("DUMP").arg(from).query(c))?;
            let Some(dump) = dumped else { continue };
            let ttl: i64 = self.with(|c| redis::cmd("PTTL").arg(from).query(c))?;
            self.with(|c| {
                redis::cmd("RESTORE")
                    .arg(to)
                    .arg(ttl.max(0))
                    .arg(&dump)
                    .arg("REPLACE")
                    .query::<String>(c)
            })?;
            self.with(|c| redis::cmd("DEL").arg(from).query::<i64>(c))?;
        }
        Ok(true)
    }

    fn get(&self, entity: Entity, key: &str) -> Result<Option<EntityState>, StoreError> {
        let keys = self.keys(entity, key);
        let fields: Vec<Vec<u8>> = self.with(|c| {
            let mut inv = self.read_all.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            inv.invoke(c)
        })?;
        if fields.iter().all(Vec::is_empty) {
            return Ok(None);
        }
        decode(&fields).map(Some)
    }
}

/// The operations of an entity's log in Redis, and their replay on a copy of its state: the
/// scripts' rules on the stored bytes are the state's own, so that a replica holding a hot
/// entity's state reads only the operations it has not seen (a few dozen bytes) instead of
/// the whole state, and applies them to the state it keeps at O(1) each.
///
/// An `S` operation (a recorded transaction) is `S`, the count of located transactions (0 or
/// 1), of seen keys and of fraud marks (0 or 1), the labels flag (`1`/`0`), the time, the
/// cutoff of seen values, the cutoff of events, then the event, the location, the seen keys
/// and the mark. An `L` operation (a label) is `L`, the transaction id, its time, `1`/`0`
/// (fraud or not) and the time it was known.
mod ops {
    use super::layout;
    use crate::features::state::Recorded;
    use crate::features::{EntityState, Keeping, LabelEvent};

    /// Operations kept in an entity's log: a replica further behind reads the whole state.
    pub const LOG_CAP: usize = 16;

    /// Bytes of the fixed head of an `S` operation.
    const HEAD: usize = 29;

    /// An `S` operation.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        t: i64,
        seen_cut: i64,
        cut: i64,
        event: &[u8],
        located: &[u8],
        seen: &[u8],
        labels: bool,
        mark: &[u8],
    ) -> Vec<u8> {
        let mut op = Vec::with_capacity(HEAD + event.len() + located.len() + seen.len() + 24);
        op.push(b'S');
        op.push((located.len() / layout::LOCATED) as u8);
        op.push((seen.len() / 9) as u8);
        op.push((mark.len() / layout::FRAUD) as u8);
        op.push(if labels { b'1' } else { b'0' });
        op.extend_from_slice(&t.to_be_bytes());
        op.extend_from_slice(&seen_cut.to_be_bytes());
        op.extend_from_slice(&cut.to_be_bytes());
        op.extend_from_slice(event);
        op.extend_from_slice(located);
        op.extend_from_slice(seen);
        op.extend_from_slice(mark);
        op
    }

    /// Why a log could not be replayed.
    fn bad() -> String {
        "an entity's operation log in Redis is corrupt".to_string()
    }

    /// The length of the operation at the start of `o`.
    fn len(o: &[u8]) -> Result<usize, String> {
        let n = match o.first() {
            Some(b'L') => 26,
            Some(b'S') if o.len() >= HEAD => {
                HEAD + layout::EVENT
                    + layout::LOCATED * usize::from(o[1])
                    + 9 * usize::from(o[2])
                    + layout::FRAUD * usize::from(o[3])
            }
            _ => return Err(bad()),
        };
        if n > o.len() {
            return Err(bad());
        }
        Ok(n)
    }

    /// Replays the operations `o` on a copy of an entity's state itself, by the state's own
    /// rules ([`EntityState::record_parts`] without folding, [`EntityState::label`]): the
    /// same state as the stored fields replayed then read, its running window aggregates
    /// kept (so a hot entity costs the same whatever its rate). Returns how many.
    pub fn replay_state(
        state: &mut EntityState,
        keeping: &Keeping,
        mut o: &[u8],
    ) -> Result<usize, String> {
        let mut n = 0;
        while !o.is_empty() {
            let k = len(o)?;
            apply_state(state, keeping, &o[..k]);
            o = &o[k..];
            n += 1;
        }
        Ok(n)
    }

    /// Applies one operation (of a length checked by [`len`]) to a state.
    fn apply_state(state: &mut EntityState, keeping: &Keeping, op: &[u8]) {
        if op[0] == b'L' {
            state.label(&LabelEvent {
                id: layout::fingerprint(&op[1..9]),
                ts: layout::time(&op[9..17]),
                is_fraud: op[17] == b'1',
                known_at: layout::time(&op[18..26]),
            });
            return;
        }
        let (na, nb, nc) = (usize::from(op[1]), usize::from(op[2]), usize::from(op[3]));
        let mut q = HEAD;
        let mut take = |n: usize| {
            let part = &op[q..q + n];
            q += n;
            part
        };
        let ev = take(layout::EVENT);
        let loc = take(layout::LOCATED * na);
        let seen = take(9 * nb);
        let mark = take(layout::FRAUD * nc);
        let event = layout::event_of(ev);
        let recorded = Recorded {
            event,
            id: if mark.is_empty() {
                0
            } else {
                layout::fingerprint(&mark[8..16])
            },
            location: (!loc.is_empty())
                .then(|| (layout::float(&loc[8..16]), layout::float(&loc[16..24]))),
            fraud_known_at: (op[4] == b'1' && !mark.is_empty())
                .then(|| layout::time(&mark[16..24])),
            cut: layout::time(&op[21..29]),
            seen_cut: layout::time(&op[13..21]),
        };
        let seen = seen
            .chunks_exact(9)
            .map(|k| (k[0], layout::fingerprint(&k[1..9])));
        state.record_parts(keeping, &recorded, seen, None);
    }
}
