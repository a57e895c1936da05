-- `http-request lua.delay <ms>`: the request takes <ms> before haproxy answers it.
core.register_action("delay", { "http-req" }, function(txn, ms)
    core.msleep(tonumber(ms))
end, 1)
