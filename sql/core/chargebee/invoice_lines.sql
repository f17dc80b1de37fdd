-- core.invoice_lines from the line items Chargebee embeds in invoices (landed one row per line, with its
-- invoice_id). Line ids are Chargebee's own (li_...): the merchant cannot set them. Chargebee has no
-- proration flag: a licensed (not metered) line whose service period does not start on the invoice's date
-- is a mid-term, prorated charge. Lines carry no currency: it is their invoice's.
SELECT
    l.payload->>'id'                                                     AS line_id,
    'chargebee'                                                          AS platform,
    l.payload->>'id'                                                     AS platform_line_id,
    l.payload->>'invoice_id'                                             AS invoice_id,
    l.payload->>'subscription_id'                                        AS subscription_id,
    CASE WHEN l.payload->>'entity_type' IN ('plan_item_price', 'addon_item_price')
         THEN coalesce(json_extract_string(s.payload, '$.meta_data.billing_ai_items."' || (l.payload->>'entity_id') || '".id'),
                       (l.payload->>'subscription_id') || ':' || (l.payload->>'entity_id')) END AS subscription_item_id,
    CASE WHEN l.payload->>'entity_type' IN ('plan_item_price', 'addon_item_price', 'charge_item_price')
         THEN l.payload->>'entity_id' END                                AS price_id,
    CASE WHEN l.payload->>'entity_type' IN ('plan_item_price', 'addon_item_price') THEN 'subscription'
         ELSE 'invoice_item' END                                         AS line_type,
    l.payload->>'description'                                            AS description,
    CAST(coalesce(l.payload->>'quantity_in_decimal', l.payload->>'quantity') AS DECIMAL(38, 9)) AS quantity,
    CAST(l.payload->>'amount' AS BIGINT)                                 AS amount,
    CAST(coalesce(l.payload->>'discount_amount', '0') AS BIGINT)         AS discount_amount,
    lower(i.payload->>'currency_code')                                   AS currency,
    to_timestamp(CAST(l.payload->>'date_from' AS BIGINT))                AS period_start,
    to_timestamp(CAST(l.payload->>'date_to' AS BIGINT))                  AS period_end,
    coalesce(l.payload->>'entity_type' IN ('plan_item_price', 'addon_item_price')
             AND NOT coalesce(CAST(l.payload->>'metered' AS BOOLEAN), false)
             AND l.payload->>'date_from' IS DISTINCT FROM i.payload->>'date', false) AS is_proration
FROM raw.chargebee_invoice_line_items l
LEFT JOIN raw.chargebee_invoices i ON i.payload->>'id' = l.payload->>'invoice_id'
LEFT JOIN raw.chargebee_subscriptions s ON s.payload->>'id' = l.payload->>'subscription_id'
