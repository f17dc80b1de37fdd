-- core.payments: payment_id = payment_id__c (else Zuora's payment number); the invoice it was for is the
-- first of paidInvoices. Zuora's status: Processed = succeeded, Error = requires_payment_method.
SELECT
    coalesce(p.payload->>'payment_id__c', p.payload->>'number', p.payload->>'id') AS payment_id,
    'zuora'                                                      AS platform,
    p.payload->>'id'                                             AS platform_payment_id,
    coalesce(i.payload->>'invoice_id__c', (p.payload->'paidInvoices'->0)->>'invoiceId') AS invoice_id,
    p.payload->>'accountNumber'                                  AS customer_id,
    CAST(p.payload->>'amount_minor' AS BIGINT)                   AS amount,
    CAST(p.payload->>'appliedAmount_minor' AS BIGINT)            AS amount_received,
    lower(p.payload->>'currency')                                AS currency,
    CASE p.payload->>'status' WHEN 'Processed' THEN 'succeeded' WHEN 'Error' THEN 'requires_payment_method'
         WHEN 'Processing' THEN 'processing' WHEN 'Canceled' THEN 'canceled' WHEN 'Voided' THEN 'canceled'
         ELSE lower(p.payload->>'status') END                    AS status,
    p.payload->>'gatewayResponseCode'                            AS failure_code,
    p.payload->>'decline_code__c'                                AS decline_code,
    CAST(p.payload->>'attempt_count__c' AS INTEGER)              AS attempt_count,
    CAST(p.payload->>'createdDate' AS TIMESTAMPTZ)               AS created_at
FROM raw.zuora_payments p
LEFT JOIN raw.zuora_invoices i ON i.payload->>'id' = ((p.payload->'paidInvoices'->0)->>'invoiceId')
