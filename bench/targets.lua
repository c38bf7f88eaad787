-- wrk script of bench/run's many-targets row: each request probes the next of WRK_TARGETS origins
-- (ports WRK_TARGET_PORT, +1, ... of one nginx, each serving the same answer), in turn.
dofile(os.getenv("WRK_SCRIPT_DIR") .. "/wrk.lua")
local first = tonumber(os.getenv("WRK_TARGET_PORT"))
local count = tonumber(os.getenv("WRK_TARGETS"))
local prefix, suffix = os.getenv("WRK_PROBE_PREFIX"), os.getenv("WRK_PROBE_SUFFIX")
local n = 0

request = function()
  local port = first + n % count
  n = n + 1
  return wrk.format("GET", prefix .. port .. suffix)
end
