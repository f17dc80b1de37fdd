-- core.products from Recurly catalog items (item code = the merchant's product id).
SELECT
    payload->>'code'                                   AS product_id,
    'recurly'                                          AS platform,
    payload->>'id'                                     AS platform_product_id,
    payload->>'name'                                   AS name,
    list_filter(CAST(payload->'custom_fields' AS JSON[]), lambda f: f->>'name' = 'component')[1]->>'value' AS component,
    payload->>'state' = 'active'                       AS active,
    CAST(payload->>'created_at' AS TIMESTAMPTZ)        AS created_at
FROM raw.recurly_items
