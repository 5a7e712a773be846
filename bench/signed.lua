-- wrk script of the phlo-relay benchmarks: signed webhooks, each sent once, every answer counted.
--
--   wrk -t2 -c32 -d10s -s bench/signed.lua URL -- DATA_FILE THREADS MODE
--
-- DATA_FILE has one request per line, "signature<TAB>body", signed beforehand in Python (LuaJIT has no
-- HMAC). Thread i of THREADS sends lines i, i+THREADS, i+2*THREADS, ... once each, so no two requests
-- carry the same event id. When a thread has sent its whole slice it sends GET /bench-exhausted instead,
-- every 100 ms per connection, which every server answers 404: in MODE "duration" that means the data ran
-- out and the run is void; in MODE "count" (send each line once, then stop) the thread stops once all its
-- webhooks are answered, or once none has been answered for STALL_S (an answer lost with its connection),
-- and prints BENCH-THREAD-DONE, so that the caller can end wrk. done() prints one BENCH-RESULT JSON line.

local STALL_S = 15 -- more than wrk's --timeout: by then a webhook without an answer never gets one
local FILLER_DELAY_MS = 100

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  count_mode = args[3] == "count"
  pending = {}
  local line_number = 0
  for line in io.lines(path) do
    if line_number % nthreads == id then
      local tab = line:find("\t", 1, true)
      local headers = { ["Content-Type"] = "application/json", ["X-Signature"] = line:sub(1, tab - 1) }
      pending[#pending + 1] = wrk.format("POST", nil, headers, line:sub(tab + 1))
    end
    line_number = line_number + 1
  end
  filler = wrk.format("GET", "/bench-exhausted")
  loaded, next_index, fillers_sent = #pending, 1, 0
  answered, duplicates, statuses = 0, 0, {}
  last_answer_s, stopped = os.time(), false
  -- wrk calls request() once on thread 0 right after init() to check what it returns, and never sends
  -- that request: give it the filler, or that thread's first webhook would be consumed unsent.
  primed = id ~= 0
  if count_mode then
    delay = filler_delay -- wrk checks for delay() after init(): a throughput run pays no call for it
  end
end

local function filler_delay()
  return next_index > loaded and FILLER_DELAY_MS or 0
end

local function stop()
  if not stopped then
    stopped = true
    io.write("BENCH-THREAD-DONE\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
end

function request()
  if not primed then
    primed = true
    return filler
  end
  if next_index > loaded then
    fillers_sent = fillers_sent + 1
    if count_mode and os.time() - last_answer_s > STALL_S then
      stop()
    end
    return filler
  end
  local next_request = pending[next_index]
  pending[next_index] = nil -- each request once: drop it so memory does not hold every sent body
  next_index = next_index + 1
  return next_request
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status == 404 then
    return -- the filler's answer, not a webhook's
  end
  answered, last_answer_s = answered + 1, os.time()
  if body:find('"duplicate"', 1, true) then
    duplicates = duplicates + 1
  end
  if count_mode and answered == loaded then
    stop()
  end
end

function done(summary, latency, requests)
  local totals, loaded_all, answered_all, duplicates_all, fillers_all = {}, 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    loaded_all = loaded_all + thread:get("loaded")
    answered_all = answered_all + thread:get("answered")
    duplicates_all = duplicates_all + thread:get("duplicates")
    fillers_all = fillers_all + thread:get("fillers_sent")
    for status, count in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(totals) do
    parts[#parts + 1] = string.format('"%s": %d', status, count)
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH-RESULT {"duration_us": %d, "requests": %d, "loaded": %d, "answered": %d, "duplicates": %d, ' ..
    '"fillers_sent": %d, "statuses": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d, "mean": %f}}\n',
    summary.duration, summary.requests, loaded_all, answered_all, duplicates_all, fillers_all,
    table.concat(parts, ", "), errors.connect, errors.read, errors.write, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
