-- core.price_tiers: tiers of tiered prices in order (tier_index from 0); up_to NULL means infinity.
SELECT
    p.payload->>'id'                                           AS price_id,
    'stripe'                                                   AS platform,
    CAST(t.i - 1 AS INTEGER)                                   AS tier_index,
    CAST(t.tier->>'up_to' AS DECIMAL(38, 9))                   AS up_to,
    CASE WHEN CAST(CAST(coalesce(t.tier->>'unit_amount_decimal', t.tier->>'unit_amount', '0') AS DECIMAL(38, 12)) AS DECIMAL(38, 20)) IS DISTINCT FROM CAST(coalesce(t.tier->>'unit_amount_decimal', t.tier->>'unit_amount', '0') AS DECIMAL(38, 20))
         THEN error('unit price with more than 12 decimal places: ' || (coalesce(t.tier->>'unit_amount_decimal', t.tier->>'unit_amount', '0')))
         ELSE CAST(coalesce(t.tier->>'unit_amount_decimal', t.tier->>'unit_amount', '0') AS DECIMAL(38, 12)) END AS unit_amount_decimal,
    CAST(coalesce(t.tier->>'flat_amount', '0') AS BIGINT)      AS flat_amount
FROM raw.stripe_prices p,
     LATERAL (SELECT unnest(CAST(p.payload->'tiers' AS JSON[])) AS tier,
                     generate_subscripts(CAST(p.payload->'tiers' AS JSON[]), 1) AS i) t
WHERE json_type(p.payload->'tiers') = 'ARRAY'
