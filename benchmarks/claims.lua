-- wrk script: every request opens a session for a new user and thread.
-- args: <run tag> [requests per thread] [templates, comma-separated]. Each wrk thread
-- gets its own prefix so ids never collide; with a request count, a thread stops after
-- that many responses; with templates, requests name them in turn.
local threads = {}
local counter = 0
local answered = 0
local prefix = ""
local templates = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  prefix = (args[1] or "run") .. "-" .. tostring(tid) .. "-"
  wrk.headers["Content-Type"] = "application/json"
  for name in string.gmatch(args[3] or "", "[^,]+") do
    table.insert(templates, name)
  end
  local limit = tonumber(args[2] or "0")
  if limit > 0 then
    -- Defined only when needed: a response() callback costs wrk a parse per response.
    response = function(status, headers, body)
      answered = answered + 1
      if answered == limit then
        wrk.thread:stop()
        io.write("STOPPED\n")  -- run_wrk (common.py) then ends wrk with SIGINT
        io.flush()
      end
    end
  end
end

function request()
  counter = counter + 1
  local id = prefix .. counter
  local template = ""
  if #templates > 0 then
    template = ',"template":"' .. templates[counter % #templates + 1] .. '"'
  end
  local body = '{"user_id":"u' .. id .. '","thread_id":"t' .. id .. '","wait_seconds":0'
    .. template .. '}'
  return wrk.format("POST", wrk.path, wrk.headers, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
