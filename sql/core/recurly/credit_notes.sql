-- core.credit_notes from Recurly credit invoices (merchant id in the custom field merchant_ref, else Recurly's);
-- the credited invoice is previous_invoice_id, the reason the credit line's credit_reason_code (the site's
-- reason codes are the merchant's: duplicate, order_change, product_unsatisfactory...).
SELECT
    coalesce(list_filter(CAST(c.payload->'custom_fields' AS JSON[]), lambda f: f->>'name' = 'merchant_ref')[1]->>'value',
             c.payload->>'id')                                           AS credit_note_id,
    'recurly'                                                            AS platform,
    c.payload->>'id'                                                     AS platform_credit_note_id,
    coalesce(list_filter(CAST(o.payload->'custom_fields' AS JSON[]), lambda f: f->>'name' = 'merchant_ref')[1]->>'value',
             c.payload->>'previous_invoice_id')                          AS invoice_id,
    c.payload->>'$.account.code'                                        AS customer_id,
    CAST(-CAST(c.payload->>'total_minor' AS BIGINT) AS BIGINT)           AS amount,
    lower(c.payload->>'currency')                                        AS currency,
    (SELECT any_value(l.payload->>'credit_reason_code') FROM raw.recurly_line_items l
      WHERE l.payload->>'invoice_id' = c.payload->>'id')                 AS reason,
    CASE c.payload->>'state' WHEN 'voided' THEN 'void' ELSE 'issued' END AS status,
    CAST(c.payload->>'created_at' AS TIMESTAMPTZ)                        AS created_at
FROM raw.recurly_invoices c
LEFT JOIN raw.recurly_invoices o ON o.payload->>'id' = c.payload->>'previous_invoice_id'
WHERE c.payload->>'type' = 'credit'
