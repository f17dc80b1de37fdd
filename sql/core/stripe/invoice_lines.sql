SELECT
    payload->>'id'                                                       AS line_id,
    'stripe'                                                             AS platform,
    payload->>'id' AS platform_line_id,
    payload->>'invoice'                                                  AS invoice_id,
    coalesce(payload->>'$.parent.subscription_item_details.subscription',
             payload->>'$.parent.invoice_item_details.subscription')     AS subscription_id,
    payload->>'$.parent.subscription_item_details.subscription_item'     AS subscription_item_id,
    payload->>'$.pricing.price_details.price'                            AS price_id,
    CASE payload->>'$.parent.type' WHEN 'subscription_item_details' THEN 'subscription'
                                   ELSE 'invoice_item' END               AS line_type,
    payload->>'description'                                              AS description,
    CAST(coalesce(payload->>'quantity_decimal', payload->>'quantity') AS DECIMAL(38, 9)) AS quantity,
    CAST(payload->>'amount' AS BIGINT)                                   AS amount,
    CAST(coalesce((SELECT sum(CAST(d->>'amount' AS BIGINT))
              FROM (SELECT unnest(CAST(payload->'discount_amounts' AS JSON[])) AS d)), 0) AS BIGINT) AS discount_amount,
    lower(payload->>'currency')                                          AS currency,
    to_timestamp(CAST(payload->>'$.period.start' AS BIGINT))             AS period_start,
    to_timestamp(CAST(payload->>'$.period.end' AS BIGINT))               AS period_end,
    coalesce(CAST(payload->>'$.parent.subscription_item_details.proration' AS BOOLEAN),
             CAST(payload->>'$.parent.invoice_item_details.proration' AS BOOLEAN), false) AS is_proration
FROM raw.stripe_invoice_lines
