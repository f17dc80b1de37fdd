SELECT
    payload->>'id'                                   AS meter_id,
    'stripe'                                         AS platform,
    payload->>'id' AS platform_meter_id,
    payload->>'event_name'                           AS meter_name,
    payload->>'display_name'                         AS display_name,
    payload->>'$.default_aggregation.formula'        AS aggregation,
    payload->>'status'                               AS status
FROM raw.stripe_meters
