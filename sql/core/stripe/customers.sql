-- core.customers from Stripe customers (names and e-mails arrive tokenized).
SELECT
    payload->>'id'                                   AS customer_id,
    'stripe'                                         AS platform,
    payload->>'id'                                   AS platform_customer_id,
    payload->>'name'                                 AS name_token,
    payload->>'email'                                AS email_token,
    payload->>'$.metadata.segment'                   AS segment,
    payload->>'$.metadata.region'                    AS region,
    lower(payload->>'currency')                      AS currency,
    payload->>'$.metadata.success_manager'           AS success_manager,
    coalesce(payload->>'$.metadata.email_opt_out' = 'true', false) AS email_opt_out,
    CAST(payload->>'balance' AS BIGINT)              AS balance,
    CAST(payload->>'delinquent' AS BOOLEAN)          AS delinquent,
    to_timestamp(CAST(payload->>'created' AS BIGINT)) AS created_at,
    payload->'metadata'                              AS metadata,
    landed_at
FROM raw.stripe_customers
