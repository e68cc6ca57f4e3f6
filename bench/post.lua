-- wrk script for the POST case: every request stores a new image with a title
-- of its own ("bench RUN THREAD-N"), and the titles of the acknowledged (2xx)
-- answers are written, one a line, to the file $BENCH_ACKED when wrk ends.
-- bench.py compares them with the rows in the database: no acknowledged row
-- may be missing, none may be stored twice.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local run = os.getenv("BENCH_RUN") or "run"
local threads = {}
local counter = 0
-- Globals, so that setup() and done() can reach them through thread:set/get.
tid = 0
acked = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"title":"bench %s %d-%d","alt_text":"","url":"/images/cat.svg"}', run, tid, counter)
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    acked[#acked + 1] = string.match(body, '"title":"(bench [^"]*)"') or "?"
  end
end

function done(summary, latency, requests)
  local path = os.getenv("BENCH_ACKED")
  if not path then return end
  local file = assert(io.open(path, "w"))
  for _, thread in ipairs(threads) do
    for _, title in ipairs(thread:get("acked")) do
      file:write(title, "\n")
    end
  end
  file:close()
end
