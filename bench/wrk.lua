-- wrk script of bench/run: print one machine-readable line after wrk's own --latency report.
-- With WRK_DELAY_MS set, each connection pauses that long between requests (the /-/healthy
-- sampler must not load the exporter it measures).
local pause = tonumber(os.getenv("WRK_DELAY_MS") or "0")

if pause > 0 then
  delay = function() return pause end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, "errors": %d, "non_2xx": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout, e.status))
end
