-- core.products from Chargebee items (Product Catalog 2.0). Items carry no creation time: created_at is the
-- item's updated_at (its last change).
SELECT
    payload->>'id'                                    AS product_id,
    'chargebee'                                       AS platform,
    payload->>'id'                                    AS platform_product_id,
    payload->>'external_name'                         AS name,
    payload->>'$.metadata.component'                  AS component,
    payload->>'status' = 'active'                     AS active,
    to_timestamp(CAST(payload->>'updated_at' AS BIGINT)) AS created_at
FROM raw.chargebee_items
