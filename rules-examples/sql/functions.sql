-- Function-heavy telemetry normalisation: CASE, arithmetic, string functions, a digest.
SELECT upper(deviceName()) AS device,
       round(power.watts / 10) / 100 AS kw,            -- W -> kW, two decimals
       CASE power.state WHEN 1 THEN 'on' WHEN 0 THEN 'off' ELSE 'unknown' END AS state,
       replace(lower(serial), '-', '_') AS serial,
       crypto(serial, 'MD5') AS digest,
       concat(topic(2), '@', topic(4)) AS note
FROM "/+/+/user/telemetry"
WHERE power.watts BETWEEN 0 AND 100000 AND serial IS NOT NULL
