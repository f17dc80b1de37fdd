-- core.meter_usage_summaries: Zuora usage records summed per account x unit of measure x UTC day.
WITH m AS (
    SELECT payload->>'uom' AS uom, any_value(payload->>'meter_id__c') AS meter_id
    FROM raw.zuora_product_rate_plan_charges WHERE payload->>'type' = 'Usage' GROUP BY 1
)
SELECT
    'zuora'                                                      AS platform,
    coalesce(m.meter_id, uo.payload->>'id')                      AS meter_id,
    u.payload->>'unitOfMeasure'                                  AS meter_name,
    u.payload->>'accountNumber'                                  AS customer_id,
    CAST(CAST(u.payload->>'startDateTime' AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS DATE) AS usage_date,
    CAST(sum(CAST(u.payload->>'quantity' AS DECIMAL(38, 9))) AS DECIMAL(38, 9)) AS quantity
FROM raw.zuora_usage u
LEFT JOIN m ON m.uom = u.payload->>'unitOfMeasure'
LEFT JOIN raw.zuora_units_of_measure uo ON uo.payload->>'uomName' = u.payload->>'unitOfMeasure'
GROUP BY ALL
