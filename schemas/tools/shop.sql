-- A small shop: the database the sql_query tool of tool_use_shop.yaml answers from.
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, country TEXT NOT NULL, joined DATE NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, price REAL NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                     product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL, ordered DATE NOT NULL);
INSERT INTO customers VALUES
  (1, 'Ada Byrne', 'IE', '2025-01-14'), (2, 'Bruno Costa', 'PT', '2025-02-03'),
  (3, 'Chen Wei', 'SG', '2025-03-22'), (4, 'Dana Kowalski', 'PL', '2025-05-09'),
  (5, 'Emeka Obi', 'NG', '2025-06-30'), (6, 'Freya Lund', 'DK', '2025-08-17');
INSERT INTO products VALUES
  (1, 'Trail Runner Shoes', 'footwear', 89.90), (2, 'Rain Shell Jacket', 'outerwear', 129.00),
  (3, 'Merino Base Layer', 'apparel', 54.50), (4, 'Headlamp 400', 'gear', 32.00),
  (5, 'Water Filter Bottle', 'gear', 27.75), (6, 'Down Sleeping Bag', 'gear', 249.00);
INSERT INTO orders VALUES
  (1, 1, 1, 1, '2025-09-01'), (2, 1, 4, 2, '2025-09-01'), (3, 2, 2, 1, '2025-09-12'),
  (4, 3, 6, 1, '2025-10-02'), (5, 3, 5, 3, '2025-10-02'), (6, 4, 3, 2, '2025-10-19'),
  (7, 5, 1, 1, '2025-11-05'), (8, 5, 2, 1, '2025-11-05'), (9, 6, 4, 1, '2025-11-21'),
  (10, 6, 5, 2, '2025-12-01'), (11, 2, 3, 1, '2025-12-08'), (12, 4, 6, 1, '2025-12-15');
