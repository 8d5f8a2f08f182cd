-- description: Units in stock per warehouse and product, with the product's SKU and name and whether the stock is at or below its reorder level
-- materialized: table
SELECT
    i.warehouse,
    i.product_id,
    p.sku,
    p.name AS product_name,
    sum(i.quantity) AS quantity,
    sum(i.reorder_level) AS reorder_level,
    sum(i.quantity) <= sum(i.reorder_level) AS needs_reorder,
    max(i.updated_at) AS last_updated
FROM inventory AS i
LEFT JOIN products AS p ON p.id = i.product_id
GROUP BY i.warehouse, i.product_id, p.sku, p.name
