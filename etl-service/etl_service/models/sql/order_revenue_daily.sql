-- description: Orders and revenue per day (of order creation), status and currency
-- materialized: table
SELECT
    CAST(created_at AS DATE) AS order_date,
    status,
    currency,
    count(*) AS orders,
    sum(total_amount) AS revenue
FROM orders
GROUP BY CAST(created_at AS DATE), status, currency
