-- wrk script for the post1m scenario of bench/run.sh: every request is a POST with a
-- 1 MiB body (Content-Length, not chunked). wrk formats the request once and resends it.
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
