-- wrk script of benches/load.sh.
--
-- Always: at the end, one line for the script to read,
--   LOADRESULT requests=R seconds=S rps=X p50_ms=A p90_ms=B p99_ms=C max_ms=D
--              errors_connect=.. errors_read=.. errors_write=.. errors_status=.. errors_timeout=..
-- (errors_status counts answers with a status of 400 or more).
--
-- With LOAD_PREFIXES set to a file of commit prefixes (one a line): every
-- request is GET LOAD_PATH_PREFIX .. prefix, the next prefix of the file each
-- time; each thread starts at a different place in the file, so no two
-- requests in a row (of a thread, or of two threads) ask for the same run.

local prefixes_file = os.getenv("LOAD_PREFIXES")

if prefixes_file ~= nil and prefixes_file ~= "" then
   local threads = 0

   -- Runs in the main Lua state, once per thread, before they start.
   function setup(thread)
      thread:set("thread_index", threads)
      threads = threads + 1
   end

   local list = {}
   local position = 1
   local path_prefix = os.getenv("LOAD_PATH_PREFIX") or "/run/"

   function init(args)
      local file = io.open(prefixes_file, "r")
      if file == nil then
         error("cannot open " .. prefixes_file)
      end
      for line in file:lines() do
         if line ~= "" then
            list[#list + 1] = line
         end
      end
      file:close()
      if #list == 0 then
         error(prefixes_file .. " has no prefixes")
      end
      -- thread_index is set by setup() in this thread's state.
      local index = thread_index or 0
      position = 1 + (index * 50021) % #list
   end

   function request()
      local prefix = list[position]
      position = position + 1
      if position > #list then
         position = 1
      end
      return wrk.format("GET", path_prefix .. prefix)
   end
end

function done(summary, latency, requests)
   local seconds = summary.duration / 1e6
   local e = summary.errors
   io.write(string.format(
      "LOADRESULT requests=%d seconds=%.3f rps=%.0f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f "
         .. "errors_connect=%d errors_read=%d errors_write=%d errors_status=%d errors_timeout=%d\n",
      summary.requests, seconds, summary.requests / seconds,
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000,
      e.connect, e.read, e.write, e.status, e.timeout))
end
