-- core.price_tiers: Zuora tiers (tier from 1; endingUnit NULL = infinity). A tier drawn as a PerUnit and a
-- FlatFee entry with the same number (one Zuora tier holds one price) is one core tier.
WITH t AS (
    SELECT coalesce(c.payload->>'price_id__c', c.payload->>'id') AS price_id,
           unnest(CAST(c.payload->'pricing'->0->'tiers' AS JSON[])) AS tier
    FROM raw.zuora_product_rate_plan_charges c
    WHERE json_type(c.payload->'pricing'->0->'tiers') = 'ARRAY'
)
SELECT
    price_id,
    'zuora'                                                     AS platform,
    CAST(CAST(tier->>'tier' AS INTEGER) - 1 AS INTEGER)         AS tier_index,
    CAST(any_value(tier->>'endingUnit') AS DECIMAL(38, 9))      AS up_to,
    CAST(sum(CASE WHEN tier->>'priceFormat' = 'FlatFee' THEN 0
                  ELSE CAST(tier->>'price_minor' AS DECIMAL(38, 12)) END) AS DECIMAL(38, 12)) AS unit_amount_decimal,
    CAST(sum(CASE WHEN tier->>'priceFormat' = 'FlatFee' THEN CAST(tier->>'price_minor' AS BIGINT) ELSE 0 END)
         AS BIGINT)                                             AS flat_amount
FROM t
GROUP BY price_id, tier->>'tier'
