-- core.price_tiers from Chargebee item price tiers (tier_index from 0; ending_unit absent = infinity). A
-- 'flat_fee' tier is a flat amount; a 'per_unit' tier's flat part, where the merchant priced one (Chargebee
-- tiers hold one price), is in the item price's metadata.tier_flat_amounts. Package prices are not tiered.
WITH t AS (
    SELECT p.payload->>'id' AS price_id, p.payload AS payload, u.tier, u.i,
           CASE WHEN lower(p.payload->>'currency_code') IN ('jpy', 'krw', 'clp', 'vnd', 'isk') THEN 1
                WHEN lower(p.payload->>'currency_code') IN ('kwd', 'bhd', 'jod', 'omr', 'tnd') THEN 1000
                ELSE 100 END AS scale
    FROM raw.chargebee_item_prices p,
         LATERAL (SELECT unnest(CAST(p.payload->'tiers' AS JSON[])) AS tier,
                         generate_subscripts(CAST(p.payload->'tiers' AS JSON[]), 1) AS i) u
    WHERE json_type(p.payload->'tiers') = 'ARRAY' AND p.payload->>'pricing_model' IN ('tiered', 'volume', 'stairstep')
      AND NOT (json_array_length(p.payload->'tiers') = 1 AND (p.payload->>'$.tiers[0].pricing_type') = 'package')
), v AS (
    SELECT *,
           CASE WHEN tier->>'pricing_type' = 'flat_fee' THEN CAST(0 AS DECIMAL(38, 20))
                ELSE coalesce(CAST(tier->>'price_in_decimal' AS DECIMAL(38, 20)) * scale,
                              CAST(tier->>'price' AS DECIMAL(38, 20))) END AS unit_minor
    FROM t
)
SELECT
    price_id,
    'chargebee'                                                AS platform,
    CAST(i - 1 AS INTEGER)                                     AS tier_index,
    CAST(coalesce(tier->>'ending_unit_in_decimal', tier->>'ending_unit') AS DECIMAL(38, 9)) AS up_to,
    CASE WHEN CAST(unit_minor AS DECIMAL(38, 12)) IS DISTINCT FROM unit_minor
         THEN error('unit price with more than 12 decimal places: ' || CAST(unit_minor AS VARCHAR))
         ELSE CAST(unit_minor AS DECIMAL(38, 12)) END          AS unit_amount_decimal,
    CAST(CASE WHEN tier->>'pricing_type' = 'flat_fee' THEN tier->>'price'
              ELSE coalesce(payload->'$.metadata.tier_flat_amounts'->>(CAST(i - 1 AS INTEGER)), '0') END AS BIGINT) AS flat_amount
FROM v
