-- core.invoices: invoice_id = invoice_id__c (the merchant's reference; Zuora's id when absent).
-- Discounts are Zuora's discount invoice items (negative); paid_at from the payment applied to it.
WITH disc AS (
    SELECT payload->>'invoiceId' AS inv, sum(CAST(payload->>'chargeAmount_minor' AS BIGINT)) AS amount
    FROM raw.zuora_invoice_items WHERE payload->>'processingType' = 'Discount' GROUP BY 1
), sub AS (
    SELECT payload->>'invoiceId' AS inv, min(payload->>'subscriptionName') AS subscription_number
    FROM raw.zuora_invoice_items GROUP BY 1
), pay AS (
    SELECT pi->>'invoiceId' AS inv, max(p.payload->>'settledOn') AS settled_on
    FROM raw.zuora_payments p, LATERAL (SELECT unnest(CAST(p.payload->'paidInvoices' AS JSON[])) AS pi)
    GROUP BY 1
)
SELECT
    coalesce(i.payload->>'invoice_id__c', i.payload->>'id')    AS invoice_id,
    'zuora'                                                     AS platform,
    i.payload->>'id'                                            AS platform_invoice_id,
    i.payload->>'accountNumber'                                 AS customer_id,
    coalesce(i.payload->>'subscription_number__c', sub.subscription_number) AS subscription_id,
    i.payload->>'invoiceNumber'                                 AS number,
    CASE i.payload->>'status' WHEN 'Draft' THEN 'draft' WHEN 'Canceled' THEN 'void'
         WHEN 'Posted' THEN CASE WHEN CAST(i.payload->>'balance_minor' AS BIGINT) = 0 THEN 'paid' ELSE 'open' END
         ELSE lower(i.payload->>'status') END                  AS status,
    i.payload->>'billing_reason__c'                             AS billing_reason,
    lower(i.payload->>'currency')                               AS currency,
    coalesce(CAST(i.payload->>'period_start__c' AS TIMESTAMPTZ),
             CAST(CAST(i.payload->>'invoiceDate' AS DATE) AS TIMESTAMP) AT TIME ZONE 'UTC') AS period_start,
    coalesce(CAST(i.payload->>'period_end__c' AS TIMESTAMPTZ),
             CAST(CAST(i.payload->>'invoiceDate' AS DATE) AS TIMESTAMP) AT TIME ZONE 'UTC') AS period_end,
    CAST(i.payload->>'createdDate' AS TIMESTAMPTZ)              AS created_at,
    CAST(i.payload->>'postedDate' AS TIMESTAMPTZ)               AS finalized_at,
    CASE WHEN pay.inv IS NOT NULL THEN CAST(pay.settled_on AS TIMESTAMPTZ)
         WHEN i.payload->>'status' = 'Posted' AND CAST(i.payload->>'balance_minor' AS BIGINT) = 0
         THEN CAST(i.payload->>'postedDate' AS TIMESTAMPTZ) END AS paid_at,
    CAST(CAST(i.payload->>'amount_minor' AS BIGINT) - coalesce(disc.amount, 0) AS BIGINT) AS subtotal,
    CAST(-coalesce(disc.amount, 0) AS BIGINT)                   AS total_discount,
    CAST(i.payload->>'amount_minor' AS BIGINT)                  AS total,
    coalesce(CAST(i.payload->>'starting_balance__c_minor' AS BIGINT),
             -CAST(i.payload->>'creditBalanceAdjustmentAmount_minor' AS BIGINT)) AS starting_balance,
    CAST(CAST(i.payload->>'paymentAmount_minor' AS BIGINT) + CAST(i.payload->>'balance_minor' AS BIGINT) AS BIGINT)
                                                                AS amount_due,
    CAST(i.payload->>'paymentAmount_minor' AS BIGINT)           AS amount_paid,
    CAST(i.payload->>'balance_minor' AS BIGINT)                 AS amount_remaining,
    CAST(i.payload->>'attempt_count__c' AS INTEGER)             AS attempt_count
FROM raw.zuora_invoices i
LEFT JOIN disc ON disc.inv = i.payload->>'id'
LEFT JOIN sub ON sub.inv = i.payload->>'id'
LEFT JOIN pay ON pay.inv = i.payload->>'id'
