-- core.credit_notes from Chargebee credit notes (imported ones keep the merchant's id). Chargebee's statuses
-- (adjusted, refunded, refund_due) all mean the credit was issued.
SELECT
    payload->>'id'                                     AS credit_note_id,
    'chargebee'                                        AS platform,
    payload->>'id'                                     AS platform_credit_note_id,
    payload->>'reference_invoice_id'                   AS invoice_id,
    payload->>'customer_id'                            AS customer_id,
    CAST(payload->>'total' AS BIGINT)                  AS amount,
    lower(payload->>'currency_code')                   AS currency,
    coalesce(payload->>'create_reason_code', payload->>'reason_code') AS reason,
    CASE payload->>'status' WHEN 'voided' THEN 'void' ELSE 'issued' END AS status,
    to_timestamp(CAST(payload->>'date' AS BIGINT))     AS created_at
FROM raw.chargebee_credit_notes
