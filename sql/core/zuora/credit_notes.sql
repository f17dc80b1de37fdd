-- core.credit_notes: Zuora credit memos created from an invoice (referredInvoiceId).
SELECT
    coalesce(cm.payload->>'credit_note_id__c', cm.payload->>'number', cm.payload->>'id') AS credit_note_id,
    'zuora'                                            AS platform,
    cm.payload->>'id'                                  AS platform_credit_note_id,
    coalesce(i.payload->>'invoice_id__c', cm.payload->>'referredInvoiceId') AS invoice_id,
    cm.payload->>'accountNumber'                       AS customer_id,
    CAST(cm.payload->>'amount_minor' AS BIGINT)        AS amount,
    lower(cm.payload->>'currency')                     AS currency,
    cm.payload->>'reasonCode'                          AS reason,
    CASE cm.payload->>'status' WHEN 'Posted' THEN 'issued' WHEN 'Canceled' THEN 'void' WHEN 'Draft' THEN 'draft'
         ELSE lower(cm.payload->>'status') END         AS status,
    CAST(cm.payload->>'createdDate' AS TIMESTAMPTZ)    AS created_at
FROM raw.zuora_credit_memos cm
LEFT JOIN raw.zuora_invoices i ON i.payload->>'id' = cm.payload->>'referredInvoiceId'
