-- core.meter_usage_summaries: the usage records Recurly holds, summed per account x measured unit x UTC day
-- of usage_timestamp (the connector fetches whole days before the clock's day).
SELECT
    'recurly'                                                              AS platform,
    u.payload->>'measured_unit_id'                                         AS meter_id,
    any_value(m.payload->>'name')                                          AS meter_name,
    s.payload->>'$.account.code'                                          AS customer_id,
    CAST(CAST(u.payload->>'usage_timestamp' AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS DATE) AS usage_date,
    CAST(sum(CAST(u.payload->>'amount' AS DECIMAL(38, 9))) AS DECIMAL(38, 9)) AS quantity
FROM raw.recurly_usage u
JOIN raw.recurly_subscriptions s ON s.payload->>'id' = u.payload->>'subscription_id'
LEFT JOIN raw.recurly_measured_units m ON m.payload->>'id' = u.payload->>'measured_unit_id'
GROUP BY 2, 4, 5
