-- core.invoice_lines from the line items of charge invoices. Recurly mints line item ids and has no merchant
-- field for them on subscription charges: the line id is Recurly's. A subscription line is one for a plan or an
-- add-on (its add_on_id is the subscription item); a prorated line has a proration_rate.
SELECT
    l.payload->>'id'                                                      AS line_id,
    'recurly'                                                             AS platform,
    l.payload->>'id'                                                      AS platform_line_id,
    coalesce(list_filter(CAST(i.payload->'custom_fields' AS JSON[]), lambda f: f->>'name' = 'merchant_ref')[1]->>'value',
             i.payload->>'id')                                            AS invoice_id,
    coalesce(list_filter(CAST(s.payload->'custom_fields' AS JSON[]), lambda f: f->>'name' = 'merchant_ref')[1]->>'value',
             l.payload->>'subscription_id')                               AS subscription_id,
    CASE WHEN l.payload->>'origin' IN ('plan', 'add_on') THEN l.payload->>'add_on_id' END AS subscription_item_id,
    l.payload->>'add_on_code'                                             AS price_id,
    CASE WHEN l.payload->>'origin' IN ('plan', 'add_on') THEN 'subscription' ELSE 'invoice_item' END AS line_type,
    l.payload->>'description'                                             AS description,
    CAST(coalesce(l.payload->>'quantity_decimal', l.payload->>'quantity') AS DECIMAL(38, 9)) AS quantity,
    CAST(l.payload->>'amount_minor' AS BIGINT)                            AS amount,
    CAST(coalesce(l.payload->>'discount_minor', '0') AS BIGINT)           AS discount_amount,
    lower(l.payload->>'currency')                                         AS currency,
    CAST(l.payload->>'start_date' AS TIMESTAMPTZ)                         AS period_start,
    CAST(l.payload->>'end_date' AS TIMESTAMPTZ)                           AS period_end,
    l.payload->>'proration_rate' IS NOT NULL                              AS is_proration
FROM raw.recurly_line_items l
JOIN raw.recurly_invoices i ON i.payload->>'id' = l.payload->>'invoice_id' AND i.payload->>'type' = 'charge'
LEFT JOIN raw.recurly_subscriptions s ON s.payload->>'id' = l.payload->>'subscription_id'
