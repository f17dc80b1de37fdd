-- core.prices: one row per product rate plan charge (one currency per rate plan). price_id = price_id__c.
-- Prices arrive in major units; the connector added exact minor-unit decimals (price_minor).
SELECT
    coalesce(c.payload->>'price_id__c', c.payload->>'id')   AS price_id,
    'zuora'                                                 AS platform,
    c.payload->>'id'                                        AS platform_price_id,
    p.payload->>'sku'                                       AS product_id,
    c.payload->>'plan__c'                                   AS plan,
    coalesce(c.payload->>'component__c', p.payload->>'component__c') AS component,
    lower(c.payload->'pricing'->0->>'currency')             AS currency,
    CASE c.payload->>'type' WHEN 'Usage' THEN 'metered' ELSE 'licensed' END AS usage_type,
    CASE WHEN c.payload->>'model' IN ('Tiered', 'Volume') THEN 'tiered' ELSE 'per_unit' END AS billing_scheme,
    CASE c.payload->>'model' WHEN 'Tiered' THEN 'graduated' WHEN 'Volume' THEN 'volume' END AS tiers_mode,
    CASE WHEN CAST(CAST(c.payload->'pricing'->0->>'price_minor' AS DECIMAL(38, 12)) AS DECIMAL(38, 20)) IS DISTINCT FROM CAST(c.payload->'pricing'->0->>'price_minor' AS DECIMAL(38, 20))
         THEN error('unit price with more than 12 decimal places: ' || (c.payload->'pricing'->0->>'price_minor'))
         ELSE CAST(c.payload->'pricing'->0->>'price_minor' AS DECIMAL(38, 12)) END AS unit_amount_decimal,
    CAST(c.payload->>'package_size__c' AS BIGINT)           AS package_size,
    c.payload->>'package_rounding__c'                       AS package_rounding,
    CASE WHEN c.payload->>'type' = 'Usage' THEN coalesce(c.payload->>'meter_id__c', u.payload->>'id') END AS meter_id,
    CASE WHEN c.payload->>'type' = 'Usage' THEN c.payload->>'uom' END AS meter_name,
    CASE c.payload->>'billingPeriod' WHEN 'Month' THEN 'month' WHEN 'Quarter' THEN 'month'
         WHEN 'Semi-Annual' THEN 'month' WHEN 'Annual' THEN 'year' WHEN 'Week' THEN 'week' END AS billing_interval,
    CAST(CASE c.payload->>'billingPeriod' WHEN 'Quarter' THEN 3 WHEN 'Semi-Annual' THEN 6 ELSE 1 END AS INTEGER)
                                                            AS billing_interval_count,
    c.payload->>'lookup_key__c'                             AS lookup_key,
    coalesce(c.payload->>'productRatePlanStatus', 'Active') = 'Active' AS active,
    CAST(c.payload->>'createdDate' AS TIMESTAMPTZ)          AS created_at
FROM raw.zuora_product_rate_plan_charges c
LEFT JOIN raw.zuora_products p ON p.payload->>'id' = c.payload->>'productId'
LEFT JOIN raw.zuora_units_of_measure u ON u.payload->>'uomName' = c.payload->>'uom'
