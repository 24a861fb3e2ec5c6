-- wrk script: optional request body and Connection: close from the
-- environment, and the figures as one JSON line (with p99.9, which wrk's
-- own --latency table lacks).
local body = os.getenv("WRK_BODY_BYTES")
if body then
  wrk.method = "POST"
  wrk.body = string.rep("x", tonumber(body))
  wrk.headers["Content-Type"] = "application/octet-stream"
end
if os.getenv("WRK_CLOSE") then
  wrk.headers["Connection"] = "close"
end

done = function(summary, latency, requests)
  io.write(string.format(
    "JSON {\"requests\":%d,\"duration_us\":%d,\"p50\":%d,\"p99\":%d,\"p999\":%d," ..
    "\"connect\":%d,\"read\":%d,\"write\":%d,\"timeout\":%d,\"status\":%d}\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status))
end
