-- core.prices from Chargebee item prices. Chargebee states decimal prices (price_in_decimal) in major units:
-- they are scaled to minor units here, kept exact (up to 12 places). A price per package of N units is a
-- single tier with pricing_type 'package' (Chargebee rounds packages up).
WITH p AS (
    SELECT ip.payload AS payload, it.payload AS item,
           CASE WHEN lower(ip.payload->>'currency_code') IN ('jpy', 'krw', 'clp', 'vnd', 'isk') THEN 1
                WHEN lower(ip.payload->>'currency_code') IN ('kwd', 'bhd', 'jod', 'omr', 'tnd') THEN 1000
                ELSE 100 END AS scale,
           CASE WHEN json_array_length(ip.payload->'tiers') = 1
                 AND (ip.payload->>'$.tiers[0].pricing_type') = 'package' THEN ip.payload->'$.tiers[0]' END AS pkg
    FROM raw.chargebee_item_prices ip
    LEFT JOIN raw.chargebee_items it ON it.payload->>'id' = ip.payload->>'item_id'
), u AS (
    SELECT *,
           CASE WHEN pkg IS NOT NULL THEN coalesce(CAST(pkg->>'price_in_decimal' AS DECIMAL(38, 20)) * scale,
                                                   CAST(pkg->>'price' AS DECIMAL(38, 20)))
                WHEN payload->>'pricing_model' IN ('per_unit', 'flat_fee')
                THEN coalesce(CAST(payload->>'price_in_decimal' AS DECIMAL(38, 20)) * scale,
                              CAST(payload->>'price' AS DECIMAL(38, 20))) END AS unit_minor
    FROM p
)
SELECT
    payload->>'id'                                          AS price_id,
    'chargebee'                                             AS platform,
    payload->>'id'                                          AS platform_price_id,
    payload->>'item_id'                                     AS product_id,
    payload->>'$.metadata.plan'                             AS plan,
    coalesce(payload->>'$.metadata.component', item->>'$.metadata.component') AS component,
    lower(payload->>'currency_code')                        AS currency,
    CASE WHEN CAST(item->>'metered' AS BOOLEAN) THEN 'metered' ELSE 'licensed' END AS usage_type,
    CASE WHEN pkg IS NOT NULL OR payload->>'pricing_model' IN ('per_unit', 'flat_fee') THEN 'per_unit'
         ELSE 'tiered' END                                  AS billing_scheme,
    CASE WHEN pkg IS NOT NULL THEN NULL
         WHEN payload->>'pricing_model' = 'tiered' THEN 'graduated'
         WHEN payload->>'pricing_model' = 'volume' THEN 'volume'
         WHEN payload->>'pricing_model' = 'stairstep' THEN 'stairstep' END AS tiers_mode,
    CASE WHEN CAST(unit_minor AS DECIMAL(38, 12)) IS DISTINCT FROM unit_minor
         THEN error('unit price with more than 12 decimal places: ' || CAST(unit_minor AS VARCHAR))
         ELSE CAST(unit_minor AS DECIMAL(38, 12)) END       AS unit_amount_decimal,
    CAST(pkg->>'package_size' AS BIGINT)                    AS package_size,
    CASE WHEN pkg IS NOT NULL THEN coalesce(payload->>'$.metadata.package_rounding', 'up') END AS package_rounding,
    item->>'$.metadata.meter_id'                            AS meter_id,
    item->>'$.metadata.meter_event_name'                    AS meter_name,
    payload->>'period_unit'                                 AS billing_interval,
    CAST(payload->>'period' AS INTEGER)                     AS billing_interval_count,
    payload->>'name'                                        AS lookup_key,
    payload->>'status' = 'active'                           AS active,
    to_timestamp(CAST(payload->>'created_at' AS BIGINT))    AS created_at
FROM u
