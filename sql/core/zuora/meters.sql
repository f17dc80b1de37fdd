-- core.meters: Zuora units of measure. Zuora has no place for a meter id on a UOM: the canonical id is the
-- meter_id__c its usage charges carry (the UOM's own id when none does).
SELECT
    coalesce((SELECT any_value(c.payload->>'meter_id__c') FROM raw.zuora_product_rate_plan_charges c
               WHERE c.payload->>'uom' = u.payload->>'uomName'), u.payload->>'id') AS meter_id,
    'zuora'                                            AS platform,
    u.payload->>'id'                                   AS platform_meter_id,
    u.payload->>'uomName'                              AS meter_name,
    u.payload->>'displayedAs'                          AS display_name,
    'sum'                                              AS aggregation,  -- Zuora rates the sum of usage records
    CASE WHEN CAST(u.payload->>'active' AS BOOLEAN) THEN 'active' ELSE 'inactive' END AS status
FROM raw.zuora_units_of_measure u
