-- wrk script for the browse scenario of bench/run.sh: the requests a browser sends while it
-- loads a page, on keep-alive connections. Each request has a desktop Chrome's head (14-16
-- headers, 720-910 bytes, mean about 780, in Chrome's order: client hints, User-Agent,
-- Accept for the kind of resource, Sec-Fetch-*, Referer, Accept-Encoding, Accept-Language
-- and a cookie of about 190 bytes). The path cycles over the site's resources (BENCH_BROWSE_LIST: a file of
-- "PATH KIND" lines written by run.sh, served by the upstream nginx under /b/), so every
-- connection asks for a different one each time. The heads are built once per thread in
-- init(); request() only hands out the next one.
local list = os.getenv("BENCH_BROWSE_LIST") or error("BENCH_BROWSE_LIST is not set")

local ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
local hints = {
   'sec-ch-ua: "Google Chrome";v="131", "Chromium";v="131", "Not_A Brand";v="24"',
   "sec-ch-ua-mobile: ?0",
}
local cookie = "Cookie: sid=qK7vR2xN9bLm4TzW8pYc1HdF6sJ0aEgU; _ga=GA1.1.1843920571.1732612047; "
   .. "_ga_7XK2M9QPLR=GS1.1.1732612047.4.1.1732613310.0.0.0; consent=necessary%2Cstatistics; "
   .. "cart=7f3c2a9e-1b4d-4e8f"
local referer = "Referer: https://shop.example.com/"
local tail = {
   "Accept-Encoding: gzip, deflate, br, zstd",
   "Accept-Language: en-US,en;q=0.9",
   cookie,
}

-- Accept and Sec-Fetch-* by kind of resource, as Chrome sends them.
local kinds = {
   document = { accept = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
                mode = "navigate", site = "same-origin", extra = { "Sec-Fetch-User: ?1" }, upgrade = true },
   style = { accept = "text/css,*/*;q=0.1", mode = "no-cors" },
   script = { accept = "*/*", mode = "no-cors" },
   image = { accept = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", mode = "no-cors" },
   font = { accept = "*/*", mode = "cors", origin = true },
   empty = { accept = "application/json, text/plain, */*", mode = "cors", origin = true },
}

local requests = {}
local n = 0

local function head(path, kind, host)
   local k = kinds[kind] or error("unknown resource kind " .. kind)
   local h = { "GET " .. path .. " HTTP/1.1", "Host: " .. host, "Connection: keep-alive" }
   for _, l in ipairs(hints) do h[#h + 1] = l end
   if k.upgrade then h[#h + 1] = "Upgrade-Insecure-Requests: 1" end
   h[#h + 1] = "User-Agent: " .. ua
   h[#h + 1] = 'sec-ch-ua-platform: "Windows"'
   h[#h + 1] = "Accept: " .. k.accept
   if k.origin then h[#h + 1] = "Origin: https://shop.example.com" end
   h[#h + 1] = "Sec-Fetch-Site: " .. (k.site or "same-origin")
   h[#h + 1] = "Sec-Fetch-Mode: " .. k.mode
   for _, l in ipairs(k.extra or {}) do h[#h + 1] = l end
   h[#h + 1] = "Sec-Fetch-Dest: " .. kind
   h[#h + 1] = referer
   for _, l in ipairs(tail) do h[#h + 1] = l end
   return table.concat(h, "\r\n") .. "\r\n\r\n"
end

function init(args)
   local host = wrk.headers["Host"] or (wrk.host .. ":" .. wrk.port)
   for line in io.lines(list) do
      local path, kind = line:match("^(%S+)%s+(%S+)")
      if path then requests[#requests + 1] = head(path, kind, host) end
   end
   if #requests == 0 then error("no resources in " .. list) end
   if args[1] == "print" then -- wrk ... -- print: show the heads once (for checking)
      for _, r in ipairs(requests) do io.write(r) end
   end
end

function request()
   n = n % #requests + 1
   return requests[n]
end
