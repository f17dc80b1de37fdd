-- core.meter_usage_summaries: the platform's own per customer x meter x day totals.
SELECT
    'stripe'                                                     AS platform,
    s.payload->>'meter'                                          AS meter_id,
    m.payload->>'event_name'                                     AS meter_name,
    s.payload->>'customer'                                       AS customer_id,
    CAST(to_timestamp(CAST(s.payload->>'start_time' AS BIGINT)) AT TIME ZONE 'UTC' AS DATE) AS usage_date,
    CAST(s.payload->>'aggregated_value' AS DECIMAL(38, 9))       AS quantity
FROM raw.stripe_meter_event_summaries s
LEFT JOIN raw.stripe_meters m ON m.payload->>'id' = s.payload->>'meter'
