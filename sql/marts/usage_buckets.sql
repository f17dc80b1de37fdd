-- Usage per customer x subscription item x meter x time bucket, for the event days $start..$end.
-- $bucket is 'day' or 'hour'. Events are mapped to the subscription item of their meter that was
-- valid at the event's time; events with no such item (usage after a cancellation, say) keep a
-- NULL item so they stay visible instead of vanishing.
SELECT
    u.customer_id,
    u.subscription_id,
    i.subscription_item_id,
    u.meter_name,
    date_trunc($bucket, u.event_ts)                         AS bucket_start,
    CAST(sum(u.quantity) AS DECIMAL(38, 9))                 AS quantity,
    count(*)                                                AS event_count,
    CAST(coalesce(sum(u.quantity) FILTER (WHERE u.is_late), 0) AS DECIMAL(38, 9)) AS late_quantity
FROM core.usage_events u
LEFT JOIN core.subscription_items i
       ON i.subscription_id = u.subscription_id
      AND i.meter_name = u.meter_name
      AND u.event_ts >= i.valid_from
      AND (i.valid_to IS NULL OR u.event_ts < i.valid_to)
WHERE u.event_date BETWEEN $start AND $end
GROUP BY ALL
