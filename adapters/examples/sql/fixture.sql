CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    city TEXT NOT NULL,
    joined_year INTEGER NOT NULL
);
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    price REAL NOT NULL
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL,
    ordered_on TEXT NOT NULL
);

INSERT INTO customers VALUES (1, 'Alice Martin', 'Lyon', 2022);
INSERT INTO customers VALUES (2, 'Bruno Costa', 'Porto', 2019);
INSERT INTO customers VALUES (3, 'Chloe Dubois', 'Leeds', 2023);
INSERT INTO customers VALUES (4, 'Daniel Weber', 'Graz', 2017);
INSERT INTO customers VALUES (5, 'Emma Rossi', 'Turin', 2018);
INSERT INTO customers VALUES (6, 'Felix Braun', 'Ghent', 2018);
INSERT INTO customers VALUES (7, 'Hannah Clarke', 'Bergen', 2022);
INSERT INTO customers VALUES (8, 'Isaac Moreno', 'Cork', 2017);
INSERT INTO customers VALUES (9, 'Julia Novak', 'Malaga', 2020);
INSERT INTO customers VALUES (10, 'Karl Jensen', 'Utrecht', 2017);
INSERT INTO customers VALUES (11, 'Laura Bianchi', 'Lyon', 2018);
INSERT INTO customers VALUES (12, 'Marta Silva', 'Porto', 2023);
INSERT INTO customers VALUES (13, 'Noah Fischer', 'Leeds', 2023);
INSERT INTO customers VALUES (14, 'Olivia Grant', 'Graz', 2018);
INSERT INTO customers VALUES (15, 'Pedro Alves', 'Turin', 2020);
INSERT INTO customers VALUES (16, 'Rita Keller', 'Ghent', 2018);
INSERT INTO customers VALUES (17, 'Simon Laurent', 'Bergen', 2023);
INSERT INTO customers VALUES (18, 'Tessa Hughes', 'Cork', 2017);
INSERT INTO customers VALUES (19, 'Victor Lang', 'Malaga', 2018);
INSERT INTO customers VALUES (20, 'Wendy Park', 'Utrecht', 2020);
INSERT INTO customers VALUES (21, 'Amara Obi', 'Utrecht', 2017);
INSERT INTO customers VALUES (22, 'Cyril Vidal', 'Utrecht', 2023);
INSERT INTO customers VALUES (23, 'Elif Demir', 'Lyon', 2020);
INSERT INTO customers VALUES (24, 'Goran Horvat', 'Lyon', 2019);
INSERT INTO customers VALUES (25, 'Ines Duarte', 'Turin', 2023);
INSERT INTO customers VALUES (26, 'Lukas Wagner', 'Leeds', 2018);
INSERT INTO customers VALUES (27, 'Mei Chen', 'Utrecht', 2021);
INSERT INTO customers VALUES (28, 'Nikolai Orlov', 'Malaga', 2019);
INSERT INTO customers VALUES (29, 'Sanne de Vries', 'Porto', 2020);
INSERT INTO customers VALUES (30, 'Yusuf Kaya', 'Ghent', 2018);
INSERT INTO products VALUES (1, 'Chef Knife', 'kitchen', 34.0);
INSERT INTO products VALUES (2, 'Salad Bowl', 'kitchen', 18.5);
INSERT INTO products VALUES (3, 'Pepper Mill', 'kitchen', 12.0);
INSERT INTO products VALUES (4, 'Garden Hose', 'garden', 27.0);
INSERT INTO products VALUES (5, 'Pruning Shears', 'garden', 21.5);
INSERT INTO products VALUES (6, 'Seed Tray', 'garden', 6.0);
INSERT INTO products VALUES (7, 'Desk Lamp', 'office', 39.0);
INSERT INTO products VALUES (8, 'Stapler', 'office', 9.5);
INSERT INTO products VALUES (9, 'Letter Tray', 'office', 14.0);
INSERT INTO products VALUES (10, 'Wooden Train', 'toys', 25.0);
INSERT INTO products VALUES (11, 'Kite', 'toys', 16.0);
INSERT INTO products VALUES (12, 'Jigsaw Puzzle', 'toys', 11.0);
INSERT INTO products VALUES (13, 'Yoga Mat', 'sports', 29.0);
INSERT INTO products VALUES (14, 'Tennis Balls', 'sports', 8.0);
INSERT INTO products VALUES (15, 'Jump Rope', 'sports', 7.5);
INSERT INTO products VALUES (16, 'Cookbook', 'books', 22.0);
INSERT INTO products VALUES (17, 'Atlas', 'books', 45.0);
INSERT INTO products VALUES (18, 'Field Guide', 'books', 19.0);
INSERT INTO products VALUES (19, 'Water Bottle', 'sports', 13.0);
INSERT INTO products VALUES (20, 'Bird Feeder', 'garden', 31.0);
INSERT INTO orders VALUES (1, 1, 18, 1, '2024-10-21');
INSERT INTO orders VALUES (2, 2, 3, 5, '2024-08-28');
INSERT INTO orders VALUES (3, 3, 19, 4, '2024-07-13');
INSERT INTO orders VALUES (4, 4, 2, 4, '2024-07-04');
INSERT INTO orders VALUES (5, 5, 20, 1, '2024-11-13');
INSERT INTO orders VALUES (6, 6, 7, 2, '2024-04-03');
INSERT INTO orders VALUES (7, 7, 16, 1, '2024-08-06');
INSERT INTO orders VALUES (8, 8, 18, 1, '2024-06-20');
INSERT INTO orders VALUES (9, 9, 14, 5, '2024-02-01');
INSERT INTO orders VALUES (10, 10, 11, 1, '2024-03-18');
INSERT INTO orders VALUES (11, 11, 15, 1, '2024-06-20');
INSERT INTO orders VALUES (12, 12, 19, 2, '2024-02-28');
INSERT INTO orders VALUES (13, 13, 15, 2, '2024-10-13');
INSERT INTO orders VALUES (14, 14, 12, 3, '2024-11-09');
INSERT INTO orders VALUES (15, 15, 10, 4, '2024-10-12');
INSERT INTO orders VALUES (16, 16, 8, 4, '2024-02-04');
INSERT INTO orders VALUES (17, 17, 6, 4, '2024-08-16');
INSERT INTO orders VALUES (18, 18, 8, 2, '2024-05-03');
INSERT INTO orders VALUES (19, 19, 3, 3, '2024-02-24');
INSERT INTO orders VALUES (20, 20, 19, 4, '2024-12-09');
INSERT INTO orders VALUES (21, 21, 10, 5, '2024-12-06');
INSERT INTO orders VALUES (22, 22, 17, 5, '2024-01-07');
INSERT INTO orders VALUES (23, 23, 16, 5, '2024-06-05');
INSERT INTO orders VALUES (24, 24, 11, 5, '2024-01-25');
INSERT INTO orders VALUES (25, 25, 15, 1, '2024-05-21');
INSERT INTO orders VALUES (26, 26, 10, 3, '2024-12-28');
INSERT INTO orders VALUES (27, 27, 20, 2, '2024-09-12');
INSERT INTO orders VALUES (28, 28, 3, 2, '2024-06-25');
INSERT INTO orders VALUES (29, 29, 4, 5, '2024-09-18');
INSERT INTO orders VALUES (30, 30, 17, 2, '2024-06-21');
INSERT INTO orders VALUES (31, 14, 1, 2, '2024-10-26');
INSERT INTO orders VALUES (32, 6, 2, 4, '2024-04-27');
INSERT INTO orders VALUES (33, 25, 3, 2, '2024-12-26');
INSERT INTO orders VALUES (34, 11, 4, 4, '2024-04-17');
INSERT INTO orders VALUES (35, 5, 5, 1, '2024-06-24');
INSERT INTO orders VALUES (36, 30, 6, 3, '2024-01-26');
INSERT INTO orders VALUES (37, 16, 7, 2, '2024-08-09');
INSERT INTO orders VALUES (38, 14, 8, 3, '2024-12-20');
INSERT INTO orders VALUES (39, 2, 9, 3, '2024-08-26');
INSERT INTO orders VALUES (40, 22, 10, 2, '2024-06-03');
INSERT INTO orders VALUES (41, 3, 11, 4, '2024-02-08');
INSERT INTO orders VALUES (42, 25, 12, 2, '2024-04-11');
INSERT INTO orders VALUES (43, 18, 13, 5, '2024-08-20');
INSERT INTO orders VALUES (44, 19, 14, 3, '2024-01-16');
INSERT INTO orders VALUES (45, 26, 15, 1, '2024-11-03');
INSERT INTO orders VALUES (46, 29, 16, 2, '2024-07-26');
INSERT INTO orders VALUES (47, 27, 17, 4, '2024-08-06');
INSERT INTO orders VALUES (48, 11, 18, 1, '2024-11-11');
INSERT INTO orders VALUES (49, 11, 19, 4, '2024-12-13');
INSERT INTO orders VALUES (50, 23, 20, 1, '2024-07-24');
INSERT INTO orders VALUES (51, 12, 20, 2, '2024-12-06');
INSERT INTO orders VALUES (52, 16, 19, 2, '2024-03-01');
INSERT INTO orders VALUES (53, 26, 15, 2, '2024-10-15');
INSERT INTO orders VALUES (54, 3, 3, 5, '2024-10-27');
INSERT INTO orders VALUES (55, 9, 16, 3, '2024-08-22');
INSERT INTO orders VALUES (56, 23, 3, 5, '2024-03-18');
INSERT INTO orders VALUES (57, 2, 10, 1, '2024-03-01');
INSERT INTO orders VALUES (58, 21, 19, 1, '2024-12-21');
INSERT INTO orders VALUES (59, 22, 15, 2, '2024-09-24');
INSERT INTO orders VALUES (60, 10, 13, 2, '2024-07-28');
INSERT INTO orders VALUES (61, 29, 12, 3, '2024-04-01');
INSERT INTO orders VALUES (62, 1, 15, 5, '2024-04-10');
INSERT INTO orders VALUES (63, 12, 6, 5, '2024-04-25');
INSERT INTO orders VALUES (64, 20, 4, 5, '2024-06-09');
INSERT INTO orders VALUES (65, 16, 2, 2, '2024-07-27');
INSERT INTO orders VALUES (66, 7, 10, 3, '2024-01-24');
INSERT INTO orders VALUES (67, 5, 8, 5, '2024-08-22');
INSERT INTO orders VALUES (68, 13, 13, 5, '2024-09-14');
INSERT INTO orders VALUES (69, 30, 16, 2, '2024-03-18');
INSERT INTO orders VALUES (70, 3, 6, 1, '2024-09-17');
INSERT INTO orders VALUES (71, 15, 13, 2, '2024-08-25');
INSERT INTO orders VALUES (72, 18, 9, 2, '2024-10-01');
INSERT INTO orders VALUES (73, 29, 5, 4, '2024-03-05');
INSERT INTO orders VALUES (74, 27, 14, 1, '2024-10-24');
INSERT INTO orders VALUES (75, 28, 18, 3, '2024-09-02');
INSERT INTO orders VALUES (76, 9, 14, 5, '2024-11-17');
INSERT INTO orders VALUES (77, 12, 13, 1, '2024-09-16');
INSERT INTO orders VALUES (78, 8, 5, 2, '2024-09-02');
INSERT INTO orders VALUES (79, 3, 6, 1, '2024-04-09');
INSERT INTO orders VALUES (80, 5, 8, 4, '2024-02-17');
INSERT INTO orders VALUES (81, 22, 8, 1, '2024-09-01');
INSERT INTO orders VALUES (82, 1, 16, 5, '2024-08-11');
INSERT INTO orders VALUES (83, 27, 19, 5, '2024-09-20');
INSERT INTO orders VALUES (84, 6, 9, 3, '2024-04-23');
INSERT INTO orders VALUES (85, 10, 1, 5, '2024-08-17');
INSERT INTO orders VALUES (86, 5, 14, 2, '2024-08-17');
INSERT INTO orders VALUES (87, 18, 12, 3, '2024-12-17');
INSERT INTO orders VALUES (88, 20, 19, 4, '2024-09-07');
INSERT INTO orders VALUES (89, 11, 5, 1, '2024-03-14');
INSERT INTO orders VALUES (90, 23, 17, 3, '2024-07-15');
