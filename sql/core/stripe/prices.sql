-- core.prices: one row per price. Unit prices stay exact decimals (up to 12 places).
SELECT
    p.payload->>'id'                                        AS price_id,
    'stripe'                                                AS platform,
    p.payload->>'id' AS platform_price_id,
    p.payload->>'product'                                   AS product_id,
    p.payload->>'$.metadata.plan'                           AS plan,
    coalesce(p.payload->>'$.metadata.component', pr.payload->>'$.metadata.component') AS component,
    lower(p.payload->>'currency')                           AS currency,
    p.payload->>'$.recurring.usage_type'                    AS usage_type,
    p.payload->>'billing_scheme'                            AS billing_scheme,
    p.payload->>'tiers_mode'                                AS tiers_mode,
    CASE WHEN CAST(CAST(p.payload->>'unit_amount_decimal' AS DECIMAL(38, 12)) AS DECIMAL(38, 20)) IS DISTINCT FROM CAST(p.payload->>'unit_amount_decimal' AS DECIMAL(38, 20))
         THEN error('unit price with more than 12 decimal places: ' || (p.payload->>'unit_amount_decimal'))
         ELSE CAST(p.payload->>'unit_amount_decimal' AS DECIMAL(38, 12)) END AS unit_amount_decimal,
    CAST(p.payload->>'$.transform_quantity.divide_by' AS BIGINT) AS package_size,
    p.payload->>'$.transform_quantity.round'                AS package_rounding,
    p.payload->>'$.recurring.meter'                         AS meter_id,
    m.payload->>'event_name'                                AS meter_name,
    p.payload->>'$.recurring.interval'                      AS billing_interval,
    CAST(p.payload->>'$.recurring.interval_count' AS INTEGER) AS billing_interval_count,
    p.payload->>'lookup_key'                                AS lookup_key,
    CAST(p.payload->>'active' AS BOOLEAN)                   AS active,
    to_timestamp(CAST(p.payload->>'created' AS BIGINT))     AS created_at
FROM raw.stripe_prices p
LEFT JOIN raw.stripe_products pr ON pr.payload->>'id' = p.payload->>'product'
LEFT JOIN raw.stripe_meters m ON m.payload->>'id' = p.payload->>'$.recurring.meter'
