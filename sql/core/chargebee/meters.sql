-- core.meters: Chargebee meters usage on the metered item itself; the merchant's meter id, event name and
-- display name are in the item's metadata, the item is the platform's meter.
SELECT
    payload->>'$.metadata.meter_id'                   AS meter_id,
    'chargebee'                                       AS platform,
    payload->>'id'                                    AS platform_meter_id,
    payload->>'$.metadata.meter_event_name'           AS meter_name,
    payload->>'$.metadata.meter_display_name'         AS display_name,
    CASE payload->>'usage_calculation' WHEN 'sum_of_usages' THEN 'sum' WHEN 'max_usage' THEN 'max'
                                       WHEN 'last_usage' THEN 'last' END AS aggregation,
    CASE payload->>'status' WHEN 'active' THEN 'active' ELSE 'inactive' END AS status
FROM raw.chargebee_items
WHERE CAST(payload->>'metered' AS BOOLEAN)
