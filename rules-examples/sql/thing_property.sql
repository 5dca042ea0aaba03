-- Thing-model property post: the rule sees the platform view ({"items":{...}}), not the raw
-- {"params":{...}} the device sent.
SELECT deviceName() AS deviceName,
       items.Temperature.value AS Temperature,
       items.Temperature.time AS time
FROM "/sys/a1HHrkm/+/thing/event/property/post"
WHERE items.Temperature.value > 38 AND deviceName() IN ('TestDevice1', 'TestDevice2')
