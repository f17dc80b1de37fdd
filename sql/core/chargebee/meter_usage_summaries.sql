-- core.meter_usage_summaries: Chargebee's usage records summed per meter (the metered item's meter) x
-- customer (the subscription's) x UTC day.
SELECT
    'chargebee'                                                  AS platform,
    it.payload->>'$.metadata.meter_id'                           AS meter_id,
    it.payload->>'$.metadata.meter_event_name'                   AS meter_name,
    s.payload->>'customer_id'                                    AS customer_id,
    CAST(to_timestamp(CAST(u.payload->>'usage_date' AS BIGINT)) AT TIME ZONE 'UTC' AS DATE) AS usage_date,
    CAST(sum(CAST(u.payload->>'quantity' AS DECIMAL(38, 9))) AS DECIMAL(38, 9)) AS quantity
FROM raw.chargebee_usages u
JOIN raw.chargebee_item_prices ip ON ip.payload->>'id' = u.payload->>'item_price_id'
JOIN raw.chargebee_items it ON it.payload->>'id' = ip.payload->>'item_id'
LEFT JOIN raw.chargebee_subscriptions s ON s.payload->>'id' = u.payload->>'subscription_id'
GROUP BY ALL
