SELECT
    payload->>'id'                                               AS payment_id,
    'stripe'                                                     AS platform,
    payload->>'id' AS platform_payment_id,
    payload->>'$.metadata.invoice'                               AS invoice_id,
    payload->>'customer'                                         AS customer_id,
    CAST(payload->>'amount' AS BIGINT)                           AS amount,
    CAST(payload->>'amount_received' AS BIGINT)                  AS amount_received,
    lower(payload->>'currency')                                  AS currency,
    payload->>'status'                                           AS status,
    payload->>'$.last_payment_error.code'                        AS failure_code,
    payload->>'$.last_payment_error.decline_code'                AS decline_code,
    CAST(payload->>'$.metadata.attempt_count' AS INTEGER)        AS attempt_count,
    to_timestamp(CAST(payload->>'created' AS BIGINT))            AS created_at
FROM raw.stripe_payment_intents
