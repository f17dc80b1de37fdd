-- core.customers from Chargebee customers (names and e-mails arrive tokenized). Chargebee keeps a credit
-- balance as promotional_credits (>= 0); core.balance follows Stripe's sign (negative = credit owed to the
-- customer). Chargebee has no delinquency flag on the customer (dunning lives on invoices): false.
SELECT
    payload->>'id'                                   AS customer_id,
    'chargebee'                                      AS platform,
    payload->>'id'                                   AS platform_customer_id,
    coalesce(payload->>'company', payload->>'first_name') AS name_token,
    payload->>'email'                                AS email_token,
    payload->>'$.meta_data.segment'                  AS segment,
    payload->>'$.meta_data.region'                   AS region,
    lower(payload->>'preferred_currency_code')       AS currency,
    payload->>'$.meta_data.success_manager'          AS success_manager,
    coalesce(payload->>'$.meta_data.email_opt_out' = 'true', false) AS email_opt_out,
    -CAST(coalesce(payload->>'promotional_credits', '0') AS BIGINT) AS balance,
    false                                            AS delinquent,
    to_timestamp(CAST(payload->>'created_at' AS BIGINT)) AS created_at,
    payload->'meta_data'                             AS metadata,
    landed_at
FROM raw.chargebee_customers
