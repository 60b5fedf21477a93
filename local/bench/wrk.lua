-- Replays prepared request bodies round-robin and prints wrk's figures as one JSON line.
-- Usage: wrk ... -s local/bench/wrk.lua URL -- SPEC
-- SPEC: the request path on the first line, then "Name: value" header lines, a blank line,
-- then one body file path per line.
local requests = {}
local count = 0
local index = 0

function init(args)
   local spec = assert(io.open(args[1], "rb"))
   local path = spec:read("*l")
   local headers = {}
   local line = spec:read("*l")
   while line and line ~= "" do
      local name, value = line:match("^([^:]+):%s*(.*)$")
      headers[name] = value
      line = spec:read("*l")
   end
   for file in spec:lines() do
      local f = assert(io.open(file, "rb"))
      local body = f:read("*a")
      f:close()
      count = count + 1
      requests[count] = wrk.format("POST", path, headers, body)
   end
   spec:close()
end

function request()
   index = index % count + 1
   return requests[index]
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99), latency.max, latency.mean))
end
