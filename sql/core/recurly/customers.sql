-- core.customers from Recurly accounts: the merchant's account code is the customer id; the currency and the
-- customer credit come from the account balance (available credit is a negative balance, minor units).
SELECT
    a.payload->>'code'                                                   AS customer_id,
    'recurly'                                                            AS platform,
    a.payload->>'id'                                                     AS platform_customer_id,
    a.payload->>'company'                                                AS name_token,
    a.payload->>'email'                                                  AS email_token,
    list_filter(CAST(a.payload->'custom_fields' AS JSON[]), lambda f: f->>'name' = 'segment')[1]->>'value' AS segment,
    list_filter(CAST(a.payload->'custom_fields' AS JSON[]), lambda f: f->>'name' = 'region')[1]->>'value' AS region,
    lower(b.payload->>'$.balances[0].currency')                         AS currency,
    list_filter(CAST(a.payload->'custom_fields' AS JSON[]), lambda f: f->>'name' = 'success_manager')[1]->>'value'
                                                                         AS success_manager,
    coalesce(list_filter(CAST(a.payload->'custom_fields' AS JSON[]),
                         lambda f: f->>'name' = 'email_opt_out')[1]->>'value' = 'true', false) AS email_opt_out,
    CAST(-CAST(coalesce(b.payload->>'$.balances[0].available_credit_amount_minor', '0') AS BIGINT)
         + CAST(coalesce(b.payload->>'$.balances[0].amount_minor', '0') AS BIGINT) AS BIGINT) AS balance,
    CAST(a.payload->>'has_past_due_invoice' AS BOOLEAN)                  AS delinquent,
    CAST(a.payload->>'created_at' AS TIMESTAMPTZ)                        AS created_at,
    (SELECT json_group_object(f->>'name', f->>'value')
       FROM (SELECT unnest(CAST(a.payload->'custom_fields' AS JSON[])) AS f)) AS metadata,
    a.landed_at
FROM raw.recurly_accounts a
LEFT JOIN raw.recurly_account_balances b ON b.id = a.id
