-- core.price_tiers from add-on tiers in order; the last tier has no ending_quantity (Recurly may send
-- 999999999 for it). A tier's flat fee, which Recurly tiers lack, comes from the plan custom field
-- <component>_tier_flat_amounts (minor units, one per tier).
WITH t AS (
    SELECT
        a.payload                                                           AS ao,
        list_filter(CAST(p.payload->'custom_fields' AS JSON[]),
                    lambda f: f->>'name' = (list_filter(CAST(i.payload->'custom_fields' AS JSON[]),
                                                        lambda g: g->>'name' = 'component')[1]->>'value')
                                           || '_tier_flat_amounts')[1]->>'value' AS flats,
        x.tier, x.i
    FROM raw.recurly_add_ons a
    JOIN raw.recurly_plans p ON p.payload->>'id' = a.payload->>'plan_id'
    LEFT JOIN raw.recurly_items i ON i.payload->>'code' = a.payload->>'$.item.code',
    LATERAL (SELECT unnest(CAST(a.payload->'tiers' AS JSON[])) AS tier,
                    generate_subscripts(CAST(a.payload->'tiers' AS JSON[]), 1) AS i) x
    WHERE json_type(a.payload->'tiers') = 'ARRAY'
)
SELECT
    ao->>'code'                                                             AS price_id,
    'recurly'                                                               AS platform,
    CAST(i - 1 AS INTEGER)                                                  AS tier_index,
    CASE WHEN CAST(tier->>'ending_quantity' AS DECIMAL(38, 9)) >= 999999999 THEN NULL
         ELSE CAST(tier->>'ending_quantity' AS DECIMAL(38, 9)) END          AS up_to,
    CAST(coalesce(tier->>'$.currencies[0].unit_amount_decimal_minor', tier->>'$.currencies[0].unit_amount_minor', '0')
         AS DECIMAL(38, 12))                                                AS unit_amount_decimal,
    CAST(coalesce(nullif(string_split(flats, ',')[i], ''), '0') AS BIGINT)  AS flat_amount
FROM t
