-- core.prices from plan add-ons (add-on code = the merchant's price id; one plan per plan name and currency).
-- Unit prices arrive as exact minor-unit decimals (*_minor, made by the connector from Recurly's major units).
-- Package pricing, which Recurly does not have, is kept by the merchant in plan custom fields per component.
WITH a AS (
    SELECT
        a.payload                                                                    AS ao,
        p.payload                                                                    AS pl,
        list_filter(CAST(i.payload->'custom_fields' AS JSON[]), lambda f: f->>'name' = 'component')[1]->>'value'
                                                                                     AS component,
        m.payload->>'name'                                                           AS meter_name
    FROM raw.recurly_add_ons a
    JOIN raw.recurly_plans p ON p.payload->>'id' = a.payload->>'plan_id'
    LEFT JOIN raw.recurly_items i ON i.payload->>'code' = a.payload->>'$.item.code'
    LEFT JOIN raw.recurly_measured_units m ON m.payload->>'id' = a.payload->>'measured_unit_id'
)
SELECT
    ao->>'code'                                                        AS price_id,
    'recurly'                                                          AS platform,
    ao->>'id'                                                          AS platform_price_id,
    ao->>'$.item.code'                                                AS product_id,
    list_filter(CAST(pl->'custom_fields' AS JSON[]), lambda f: f->>'name' = 'plan')[1]->>'value' AS plan,
    component,
    lower(coalesce(ao->>'$.currencies[0].currency', ao->>'$.tiers[0].currencies[0].currency',
                   pl->>'$.currencies[0].currency'))                  AS currency,
    CASE ao->>'add_on_type' WHEN 'usage' THEN 'metered' ELSE 'licensed' END AS usage_type,
    CASE coalesce(ao->>'tier_type', 'flat') WHEN 'flat' THEN 'per_unit' ELSE 'tiered' END AS billing_scheme,
    CASE ao->>'tier_type' WHEN 'tiered' THEN 'graduated' WHEN 'volume' THEN 'volume'
                          WHEN 'stairstep' THEN 'stairstep' END        AS tiers_mode,
    CAST(coalesce(ao->>'$.currencies[0].unit_amount_decimal_minor', ao->>'$.currencies[0].unit_amount_minor')
         AS DECIMAL(38, 12))                                           AS unit_amount_decimal,
    CAST(list_filter(CAST(pl->'custom_fields' AS JSON[]),
                     lambda f: f->>'name' = component || '_package_size')[1]->>'value' AS BIGINT) AS package_size,
    list_filter(CAST(pl->'custom_fields' AS JSON[]),
                lambda f: f->>'name' = component || '_package_rounding')[1]->>'value' AS package_rounding,
    ao->>'measured_unit_id'                                            AS meter_id,
    meter_name,
    CASE pl->>'interval_unit' WHEN 'months' THEN 'month' WHEN 'days' THEN 'day' END AS billing_interval,
    CAST(pl->>'interval_length' AS INTEGER)                            AS billing_interval_count,
    ao->>'external_sku'                                                AS lookup_key,
    ao->>'state' = 'active'                                            AS active,
    CAST(ao->>'created_at' AS TIMESTAMPTZ)                             AS created_at
FROM a
