-- wrk2 script: POST /v1/score with unique transactions and realistic keys, for an
-- independent open-loop measurement beside loadgen (benches/durability.sh runs it).
--   many cards: uniform over CARDS (50,000) card tokens;
--   hot merchants: a heavy-tailed (log-uniform, Zipf-like) mix over MERCHANTS (10,000): the
--   busiest merchant takes about 11% of the traffic, the ten busiest about a quarter;
--   each merchant with a few terminals; amounts log-normal-ish.
-- The API key comes from the environment (FRAUD_API_KEY); every thread seeds its own
-- generator from its number, so a run is reproducible.

local cards = tonumber(os.getenv("CARDS") or "50000")
local merchants = tonumber(os.getenv("MERCHANTS") or "10000")
local key = os.getenv("FRAUD_API_KEY") or ""
local run = os.getenv("RUN") or tostring(os.time())

local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("id", counter)
   table.insert(threads, thread)
end

function init(args)
   math.randomseed(id * 7919)
   seq = 0
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Authorization"] = "Bearer " .. key
end

function request()
   seq = seq + 1
   local card = math.random(0, cards - 1)
   local merchant = math.floor(math.exp(math.random() * math.log(merchants)))
   local terminal = merchant * 4 + math.random(0, 3)
   local cents = math.floor(math.exp(3.5 + 1.0 * (math.random() + math.random() + math.random() - 1.5)) * 100)
   local secs = 1714557600 + math.floor(seq / 50)
   local body = string.format(
      '{"transaction_id":"w%s-%d-%d","timestamp":"%s","amount":"%d.%02d","currency":"EUR",' ..
      '"card_token":"tok_%032x","customer_id":"C%d","merchant_id":"M%d","mcc":"5411",' ..
      '"terminal_id":"T%d","channel":"card_present","card_country":"BE","merchant_country":"BE"}',
      run, id, seq, os.date("!%Y-%m-%dT%H:%M:%SZ", secs), math.floor(cents / 100), cents % 100,
      card, card, merchant, terminal)
   return wrk.format(nil, "/v1/score", nil, body)
end

function done(summary, latency, requests)
   local non2xx = summary.errors.status
   io.write(string.format("errors: connect %d, read %d, write %d, status %d, timeout %d\n",
      summary.errors.connect, summary.errors.read, summary.errors.write, non2xx,
      summary.errors.timeout))
end
