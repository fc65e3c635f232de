-- wrk script for `make bench`: POST JSON and print the result as one machine-readable line.
--   BENCH_BODY        the request body (one body for every request: wrk's fast static path), or
--   BENCH_BODY_1..9   several bodies, sent in turn (a request() function: a little slower, mixed load);
--                     BENCH_PATH_i, if set, is the path for body i (default: the URL's path)
--   BENCH_AUTH        optional gateway key, sent as "Authorization: Bearer <key>"
--   BENCH_HEADERS     optional more headers, "Name: value" lines (a peer that routes by header)
--   BENCH_UNIQUE      a body with "{n}" in it: every request gets its own number there (distinct requests)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end
local extra = os.getenv("BENCH_HEADERS")
if extra ~= nil then
  for name, value in extra:gmatch("([^:\n]+):%s*([^\n]*)") do
    wrk.headers[name] = value
  end
end
wrk.body = os.getenv("BENCH_BODY")

local bodies = {}
for i = 1, 9 do
  local b = os.getenv("BENCH_BODY_" .. i)
  if b ~= nil and b ~= "" then
    bodies[#bodies + 1] = {b, os.getenv("BENCH_PATH_" .. i)}
  end
end

if #bodies > 0 then
  local prepared = {}
  local n = 0
  function init(args)
    for i, b in ipairs(bodies) do
      prepared[i] = wrk.format("POST", b[2], nil, b[1])
    end
  end
  function request()
    n = n + 1
    return prepared[(n % #prepared) + 1]
  end
end

local unique = os.getenv("BENCH_UNIQUE")
if unique ~= nil and unique ~= "" then
  local n = 0
  function request()
    n = n + 1
    return wrk.format("POST", nil, nil, (unique:gsub("{n}", tostring(n))))
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, latency.mean))
end
