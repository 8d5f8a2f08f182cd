-- description: The whole inventory in one row: item lines, units in stock, average unit price of the stocked products, oldest and latest update
-- materialized: view
SELECT
    count(*) AS total_items,
    coalesce(sum(i.quantity), 0) AS total_quantity,
    avg(p.unit_price) AS average_price,
    min(i.updated_at) AS oldest_update,
    max(i.updated_at) AS latest_update
FROM inventory AS i
LEFT JOIN products AS p ON p.id = i.product_id
