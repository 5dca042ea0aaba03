-- Alert routing: real alerts (not tests) of the serious levels, tagged with where they go.
SELECT *, CASE WHEN zone IN (1, 2, 3) THEN 'oncall' ELSE 'ticket' END AS route
FROM "/+/+/user/alerts"
WHERE level IN ('critical', 'major') AND code LIKE 'E-%' AND code NOT LIKE '%-TEST%'
