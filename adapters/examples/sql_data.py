"""`sql`: questions about a small shop database to one SQLite SELECT.

`fixture.sql` is `SCHEMA` and a few dozen seeded rows; every reference query is run on it
here, and a question is kept only when its answer is not empty (or a zero count), so that
`sql_execution` cannot pass a wrong query by luck. Training questions name one set of
cities, categories, products, customers, years and prices; held-out questions (dev, test
and its slices) the rest.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass
from typing import Final

from adapters.examples.rows import Files, Row, items, prompt_key, row, shuffled_unique

SCHEMA: Final = """\
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
"""
# Short: the adapter learns the schema; a long prompt would be shared by every row.
SYSTEM: Final = "Answer with one SQLite SELECT."
# Joins as the references write them.
_BY_CUSTOMER: Final = "orders JOIN customers ON customers.id = orders.customer_id"
_BY_PRODUCT: Final = "orders JOIN products ON products.id = orders.product_id"
_BOTH: Final = (
    "customers JOIN orders ON orders.customer_id = customers.id "
    "JOIN products ON products.id = orders.product_id"
)


@dataclass(frozen=True)
class Side:
    """The values one side's questions may name."""

    cities: tuple[str, ...]
    categories: tuple[str, ...]
    products: tuple[str, ...]
    customers: tuple[str, ...]
    years: tuple[int, ...]
    prices: tuple[int, ...]


CITIES: Final = (
    *items("Lyon, Porto, Leeds, Graz, Turin, Ghent"),
    *items("Bergen, Cork, Malaga, Utrecht"),
)
CATEGORIES: Final = (*items("kitchen, garden, office, toys"), *items("sports, books"))
PRODUCTS: Final = (
    # (name, category, price)
    ("Chef Knife", "kitchen", 34.0),
    ("Salad Bowl", "kitchen", 18.5),
    ("Pepper Mill", "kitchen", 12.0),
    ("Garden Hose", "garden", 27.0),
    ("Pruning Shears", "garden", 21.5),
    ("Seed Tray", "garden", 6.0),
    ("Desk Lamp", "office", 39.0),
    ("Stapler", "office", 9.5),
    ("Letter Tray", "office", 14.0),
    ("Wooden Train", "toys", 25.0),
    ("Kite", "toys", 16.0),
    ("Jigsaw Puzzle", "toys", 11.0),
    ("Yoga Mat", "sports", 29.0),
    ("Tennis Balls", "sports", 8.0),
    ("Jump Rope", "sports", 7.5),
    ("Cookbook", "books", 22.0),
    ("Atlas", "books", 45.0),
    ("Field Guide", "books", 19.0),
    ("Water Bottle", "sports", 13.0),
    ("Bird Feeder", "garden", 31.0),
)
CUSTOMERS: Final = (
    *items(
        "Alice Martin, Bruno Costa, Chloe Dubois, Daniel Weber, Emma Rossi, Felix Braun, "
        "Hannah Clarke, Isaac Moreno, Julia Novak, Karl Jensen, Laura Bianchi, Marta Silva, "
        "Noah Fischer, Olivia Grant, Pedro Alves, Rita Keller, Simon Laurent, Tessa Hughes, "
        "Victor Lang, Wendy Park"
    ),
    *items(
        "Amara Obi, Cyril Vidal, Elif Demir, Goran Horvat, Ines Duarte, Lukas Wagner, "
        "Mei Chen, Nikolai Orlov, Sanne de Vries, Yusuf Kaya"
    ),
)
TRAIN = Side(
    cities=CITIES[:6],
    categories=CATEGORIES[:4],
    products=(*(p[0] for p in PRODUCTS[:12]), "Cookbook", "Atlas"),
    customers=CUSTOMERS[:20],
    years=(2017, 2019, 2021, 2023),
    prices=(10, 20, 30, 40),
)
HELD_OUT = Side(
    cities=CITIES[6:],
    categories=CATEGORIES[4:],
    products=items("Yoga Mat, Tennis Balls, Jump Rope, Field Guide, Water Bottle, Bird Feeder"),
    customers=CUSTOMERS[20:],
    years=(2018, 2020, 2022, 2024),
    prices=(15, 25, 35),
)


def fixture() -> str:
    """The schema and its seeded rows, as SQL (what `fixture.sql` holds)."""
    rng = random.Random(7)
    lines = [SCHEMA]
    for number, name in enumerate(CUSTOMERS, start=1):
        city = CITIES[(number - 1) % len(CITIES)] if number <= len(CITIES) * 2 else None
        city = city or rng.choice(CITIES)
        year = rng.randint(2017, 2024)
        lines.append(
            f"INSERT INTO customers VALUES ({number}, {_quote(name)}, {_quote(city)}, {year});"
        )
    for number, (name, category, price) in enumerate(PRODUCTS, start=1):
        lines.append(
            f"INSERT INTO products VALUES ({number}, {_quote(name)}, {_quote(category)}, {price});"
        )
    # Every customer and every product has an order; the rest are drawn.
    pairs = [(c, rng.randint(1, len(PRODUCTS))) for c in range(1, len(CUSTOMERS) + 1)]
    pairs += [(rng.randint(1, len(CUSTOMERS)), p) for p in range(1, len(PRODUCTS) + 1)]
    pairs += [(rng.randint(1, len(CUSTOMERS)), rng.randint(1, len(PRODUCTS))) for _ in range(40)]
    for number, (customer, product) in enumerate(pairs, start=1):
        day = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        lines.append(
            f"INSERT INTO orders VALUES ({number}, {customer}, {product}, "
            f"{rng.randint(1, 5)}, '{day}');"
        )
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# (phrasings, the reference's template, which value it names); "{v}" is the value.
Question = tuple[tuple[str, ...], str, str]
QUESTIONS: Final[tuple[Question, ...]] = (
    (
        ("Which customers live in {v}?", "List the customers from {v}.", "Who lives in {v}?"),
        "SELECT name FROM customers WHERE city = {q}",
        "city",
    ),
    (
        ("How many customers live in {v}?", "Count the customers in {v}."),
        "SELECT COUNT(*) FROM customers WHERE city = {q}",
        "city",
    ),
    (
        ("How many orders came from {v}?", "Count the orders placed by customers in {v}."),
        f"SELECT COUNT(*) FROM {_BY_CUSTOMER} WHERE customers.city = {{q}}",
        "city",
    ),
    (
        ("Which products are in the {v} category?", "List all {v} products."),
        "SELECT name FROM products WHERE category = {q}",
        "category",
    ),
    (
        ("What is the average price of {v} products?",),
        "SELECT AVG(price) FROM products WHERE category = {q}",
        "category",
    ),
    (
        ("What is the most expensive {v} product?",),
        "SELECT name FROM products WHERE category = {q} ORDER BY price DESC LIMIT 1",
        "category",
    ),
    (
        ("What does the {v} cost?", "What is the price of the {v}?"),
        "SELECT price FROM products WHERE name = {q}",
        "product",
    ),
    (
        ("Who ordered the {v}?", "Which customers bought the {v}?"),
        f"SELECT DISTINCT customers.name FROM {_BOTH} WHERE products.name = {{q}}",
        "product",
    ),
    (
        ("How many units of the {v} were ordered?", "Total quantity ordered of the {v}?"),
        f"SELECT SUM(orders.quantity) FROM {_BY_PRODUCT} WHERE products.name = {{q}}",
        "product",
    ),
    (
        ("How many orders has {v} placed?", "Count the orders of {v}."),
        f"SELECT COUNT(*) FROM {_BY_CUSTOMER} WHERE customers.name = {{q}}",
        "customer",
    ),
    (
        ("Which products were ordered by {v}?", "List the products bought by {v}."),
        f"SELECT DISTINCT products.name FROM {_BOTH} WHERE customers.name = {{q}}",
        "customer",
    ),
    (
        ("Which city does {v} live in?",),
        "SELECT city FROM customers WHERE name = {q}",
        "customer",
    ),
    (
        ("Which customers joined in {v}?", "Who became a customer in {v}?"),
        "SELECT name FROM customers WHERE joined_year = {v}",
        "year",
    ),
    (
        ("Which products cost less than {v} dollars?", "List the products under {v} dollars."),
        "SELECT name FROM products WHERE price < {v}",
        "price",
    ),
    (
        ("Which products cost more than {v} dollars?", "List the products over {v} dollars."),
        "SELECT name FROM products WHERE price > {v}",
        "price",
    ),
)


def _values(side: Side, kind: str) -> tuple[str | int, ...]:
    pools: dict[str, tuple[str, ...] | tuple[int, ...]] = {
        "city": side.cities,
        "category": side.categories,
        "product": side.products,
        "customer": side.customers,
        "year": side.years,
        "price": side.prices,
    }
    return pools[kind]


def _answers(db: sqlite3.Connection, query: str) -> bool:
    found = db.execute(query).fetchall()
    return bool(found) and found != [(0,)] and found != [(None,)]


def questions(side: Side, db: sqlite3.Connection) -> list[Row]:
    """Every question of `side` whose reference answers something, in a fixed order."""
    out: list[Row] = []
    for phrasings, template, kind in QUESTIONS:
        for value in _values(side, kind):
            query = template.format(v=value, q=_quote(str(value)))
            if not _answers(db, query):
                continue
            out.extend(row(p.format(v=value), query, SYSTEM) for p in phrasings)
    return out


# In the training data and, deliberately, in the golden set: the contamination check's catch.
SHARED: Final = row(
    "Which customers live in Lyon?", "SELECT name FROM customers WHERE city = 'Lyon'", SYSTEM
)
# Written by hand: questions the generator does not ask, about held-out values.
GOLDEN: Final = [
    SHARED,
    *(
        row(question, query, SYSTEM)
        for question, query in (
            (
                "Give me the names of everyone in Bergen.",
                "SELECT name FROM customers WHERE city = 'Bergen'",
            ),
            ("How many products do we sell?", "SELECT COUNT(*) FROM products"),
            ("What is the cheapest product?", "SELECT name FROM products ORDER BY price LIMIT 1"),
            (
                "How many customers joined after 2021?",
                "SELECT COUNT(*) FROM customers WHERE joined_year > 2021",
            ),
            (
                "List every sports product with its price.",
                "SELECT name, price FROM products WHERE category = 'sports'",
            ),
            (
                "What is the total price of all books?",
                "SELECT SUM(price) FROM products WHERE category = 'books'",
            ),
            (
                "Who bought the Yoga Mat?",
                f"SELECT DISTINCT customers.name FROM {_BOTH} WHERE products.name = 'Yoga Mat'",
            ),
            (
                "How many orders did Mei Chen make?",
                f"SELECT COUNT(*) FROM {_BY_CUSTOMER} WHERE customers.name = 'Mei Chen'",
            ),
            ("Which cities do our customers live in?", "SELECT DISTINCT city FROM customers"),
            (
                "What did Elif Demir buy?",
                f"SELECT DISTINCT products.name FROM {_BOTH} WHERE customers.name = 'Elif Demir'",
            ),
            (
                "How many units of the Atlas have been sold?",
                f"SELECT SUM(orders.quantity) FROM {_BY_PRODUCT} WHERE products.name = 'Atlas'",
            ),
        )
    ),
]


def files() -> Files:
    """Every file of the task, by its path in the task's directory."""
    db = sqlite3.connect(":memory:")
    db.executescript(fixture())
    taken = {prompt_key(r) for r in GOLDEN}
    train = shuffled_unique(questions(TRAIN, db), random.Random(11), taken)
    train.append(SHARED)
    held = shuffled_unique(questions(HELD_OUT, db), random.Random(12), taken)
    dev, test = held[:40], held[40:]
    joins = [r for r in test if " JOIN " in r["completion"]]
    totals = [r for r in test if any(f in r["completion"] for f in ("COUNT(", "SUM(", "AVG("))]
    return {
        "fixture.sql": fixture(),
        "data/train.jsonl": train,
        "data/dev.jsonl": dev,
        "data/test.jsonl": test,
        "data/golden.jsonl": GOLDEN,
        "data/slice_joins.jsonl": joins,
        "data/slice_aggregates.jsonl": totals,
    }
