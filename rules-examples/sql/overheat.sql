-- Overheat alert (the default rule, in SQL): forward hot readings with the device's name.
-- {"temperature":39.5,"location":"x"} on /a1hRrzD/dev1/user/update
--   -> {"t":39.5,"device":"dev1","location":"x"}
SELECT temperature AS t, deviceName() AS device, location
FROM "/+/+/user/update"
WHERE temperature > 38
