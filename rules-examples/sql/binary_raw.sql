-- data-type: binary
-- Raw frames from devices that do not speak JSON: wrap the bytes in base64 with some context.
SELECT to_base64(*) AS data, deviceName() AS dn, length(payload()) AS size, timestamp() AS ts
FROM "/+/+/user/raw"
