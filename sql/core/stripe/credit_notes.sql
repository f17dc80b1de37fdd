SELECT
    payload->>'id'                                     AS credit_note_id,
    'stripe'                                           AS platform,
    payload->>'id' AS platform_credit_note_id,
    payload->>'invoice'                                AS invoice_id,
    payload->>'customer'                               AS customer_id,
    CAST(payload->>'amount' AS BIGINT)                 AS amount,
    lower(payload->>'currency')                        AS currency,
    payload->>'reason'                                 AS reason,
    payload->>'status'                                 AS status,
    to_timestamp(CAST(payload->>'created' AS BIGINT))  AS created_at
FROM raw.stripe_credit_notes
