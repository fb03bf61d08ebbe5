-- wrk script for the paced1k scenario of bench/run.sh: a fixed offered load rather than as
-- fast as possible. Each connection waits BENCH_DELAY_MS milliseconds between a response
-- and its next request, so 64 connections offer about 64000 / (BENCH_DELAY_MS + latency)
-- requests per second whatever the proxy, and the latencies compare at the same load.
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "4")

function delay()
   return pause
end
