-- core.invoice_lines: Zuora invoice items except discount items, which become the discount_amount of the
-- item they apply to. line_id = line_id__c (Zuora's item id when absent); subscription_item_id = chargeNumber.
WITH disc AS (
    SELECT payload->>'appliedToItemId' AS item, sum(CAST(payload->>'chargeAmount_minor' AS BIGINT)) AS amount
    FROM raw.zuora_invoice_items WHERE payload->>'processingType' = 'Discount' GROUP BY 1
)
SELECT
    coalesce(li.payload->>'line_id__c', li.payload->>'id')     AS line_id,
    'zuora'                                                    AS platform,
    li.payload->>'id'                                          AS platform_line_id,
    coalesce(i.payload->>'invoice_id__c', i.payload->>'id')    AS invoice_id,
    li.payload->>'subscriptionName'                            AS subscription_id,
    li.payload->>'chargeNumber'                                AS subscription_item_id,
    coalesce(p.payload->>'price_id__c', li.payload->>'productRatePlanChargeId') AS price_id,
    CASE WHEN li.payload->>'chargeNumber' IS NOT NULL THEN 'subscription' ELSE 'invoice_item' END AS line_type,
    li.payload->>'chargeDescription'                           AS description,
    CAST(li.payload->>'quantity' AS DECIMAL(38, 9))            AS quantity,
    CAST(li.payload->>'chargeAmount_minor' AS BIGINT)          AS amount,
    CAST(-coalesce(disc.amount, 0) AS BIGINT)                  AS discount_amount,
    lower(i.payload->>'currency')                              AS currency,
    coalesce(CAST(li.payload->>'period_start__c' AS TIMESTAMPTZ),
             CAST(CAST(li.payload->>'serviceStartDate' AS DATE) AS TIMESTAMP) AT TIME ZONE 'UTC') AS period_start,
    coalesce(CAST(li.payload->>'period_end__c' AS TIMESTAMPTZ),   -- serviceEndDate is the last day served
             CAST(CAST(li.payload->>'serviceEndDate' AS DATE) + 1 AS TIMESTAMP) AT TIME ZONE 'UTC') AS period_end,
    coalesce(CAST(li.payload->>'proration__c' AS BOOLEAN), false) AS is_proration
FROM raw.zuora_invoice_items li
LEFT JOIN raw.zuora_invoices i ON i.payload->>'id' = li.payload->>'invoiceId'
LEFT JOIN disc ON disc.item = li.payload->>'id'
LEFT JOIN raw.zuora_product_rate_plan_charges p ON p.payload->>'id' = li.payload->>'productRatePlanChargeId'
WHERE coalesce(li.payload->>'processingType', 'Charge') <> 'Discount'
