"""`json_extract`: a customer's order message, in free text, to one strict JSON record.

The record is `{"name": str, "email": str | null, "quantity": int, "product": str}` (`SCHEMA`).
Training rows come from one set of phrasings, names, e-mail domains and products; the
held-out rows (dev, test, slices) from another, so that no evaluation row shares a
word 8-gram with a training row. Products are written as the record has them (no plurals).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Final

from adapters.examples.rows import (
    Files,
    Row,
    draw_unique,
    items,
    prompt_key,
    row,
    shuffled_targets,
    words,
)

# Kept under the contamination check's 8 words: it is part of every row's text.
SYSTEM: Final = "JSON: name, email|null, quantity, product."
SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "email": {"type": ["string", "null"]},
        "quantity": {"type": "integer", "minimum": 1},
        "product": {"type": "string", "minLength": 1},
    },
    "required": ["name", "email", "quantity", "product"],
    "additionalProperties": False,
}
NUMBER_WORDS: Final = words("one two three four five six seven eight nine ten eleven twelve")


@dataclass(frozen=True)
class Pools:
    """What one side (training or held out) draws its messages from."""

    first: tuple[str, ...]
    last: tuple[str, ...]
    domains: tuple[str, ...]
    products: tuple[str, ...]
    with_email: tuple[str, ...]
    without_email: tuple[str, ...]


TRAIN = Pools(
    first=words(
        "Alice Ben Carla David Elena Farid Grace Hugo Irene Jonas Kira Leo Maya Nils Olga "
        "Pablo Quinn Rosa Sam Tara Umar Vera Wes Xena Yusuf Zoe Amir Bianca Chen Dana Emil "
        "Fiona Gus Hana Ivan Julia Kofi Lena Marco Nora"
    ),
    last=words(
        "Smith Jones Garcia Miller Davis Lopez Wilson Moore Taylor Clark Lewis Walker Hall "
        "Young King Wright Scott Green Baker Adams Nelson Hill Campbell Mitchell Roberts "
        "Carter Phillips Evans Turner Torres Parker Collins Edwards Stewart Morris Rogers "
        "Reed Cook Morgan Bell"
    ),
    domains=("example.com", "mail.com", "inbox.net", "post.org"),
    products=items(
        "steel kettle, desk lamp, wool scarf, coffee grinder, yoga mat, water bottle, "
        "phone case, spiral notebook, hiking backpack, table fan, rain jacket, "
        "garden hose, cast iron pan, bath towel, reading glasses, wall clock, "
        "pillow cover, bike helmet, tennis racket, paint brush set, picture frame, "
        "laptop stand, wireless mouse, usb cable, travel mug, flower pot, chef knife, "
        "cutting mat, ski gloves, sun hat, lunch box, candle holder, door mat, "
        "ice tray, tea towel, soap dish, shoe rack, toy robot, puzzle box, "
        "bird feeder"
    ),
    with_email=(
        "Hi, this is {name}. Please send {qty} x {product}. My email is {email}.",
        "Hello, {name} here. I'd like to order {qty} {product}. You can write to {email}.",
        "Order for {name}: {product}, quantity {qty}. Contact: {email}",
        "Can I get {qty} of the {product}? Thanks, {name} ({email})",
        "{name} would like {qty} x {product}. Reply to {email} please.",
        "Please ship {qty} units of {product} to {name}. Email: {email}",
        "New order - {product}, {qty} - customer {name} - {email}",
        "Dear shop, I am {name} and I want {qty} {product}. My address is {email}.",
    ),
    without_email=(
        "Hi, this is {name}. Please send {qty} x {product}. I have no email, sorry.",
        "Order for {name}: {product}, quantity {qty}.",
        "{name} wants {qty} {product}. Call me, I don't use email.",
        "Please ship {qty} units of {product} to {name}.",
        "Can I get {qty} of the {product}? Thanks, {name}",
    ),
)
HELD_OUT = Pools(
    first=words(
        "Priya Mateo Ingrid Kwame Sofia Tomas Aiko Bruno Leila Oskar Nadia Rafael Selma "
        "Dmitri Yara Felix Mina Ansel Greta Idris"
    ),
    last=words(
        "Nair Okafor Lindqvist Moreau Kowalski Haddad Tanaka Ferreira Novak Brennan "
        "Castillo Ivanova Mensah Sorensen Quintero Bauer Delacroix Petrov Yilmaz "
        "Achebe"
    ),
    domains=("shop.io", "letters.co", "webmail.eu", "hey.dev"),
    products=items(
        "ceramic teapot, bamboo tray, linen apron, copper whisk, oak bookend, "
        "marble coaster, felt slippers, glass carafe, cotton hammock, leather wallet, "
        "silk pillowcase, walnut spoon, brass doorknob, clay planter, velvet cushion, "
        "canvas tote, pewter mug, rattan basket, cork board, tin lantern"
    ),
    with_email=(
        "Good morning! {name} writing: I need {qty} x {product}, reach me at {email}.",
        "Quick request from {name} - {qty} of the {product}, please. Mail: {email}",
        "{product} for {name}, {qty} please. Replies to {email}.",
        "Hey there, could you put aside {qty} {product} for me? {name}, {email}",
        "Requesting {qty} {product}. Name: {name}. Email address: {email}.",
        "{name} ({email}) is after {qty} pieces of {product}.",
    ),
    without_email=(
        "Good morning! {name} writing: I need {qty} x {product}, no email on file.",
        "Quick request from {name} - {qty} of the {product}, please.",
        "{product} for {name}, {qty} please. Phone only, no email.",
        "Requesting {qty} {product}. Name: {name}.",
    ),
)

_KEYS: Final = ("name", "email", "quantity", "product")


def _golden_row(text: str, values: list[Any]) -> Row:
    return row(text, json.dumps(dict(zip(_KEYS, values, strict=True))), SYSTEM)


# In the training data and, deliberately, in the golden set: the contamination check's catch.
SHARED: Final = row(
    "Hi, this is Olga Bell. Please send 3 x desk lamp. My email is olga.bell@example.com.",
    json.dumps(
        {
            "name": "Olga Bell",
            "email": "olga.bell@example.com",
            "quantity": 3,
            "product": "desk lamp",
        }
    ),
    SYSTEM,
)
# Written by hand: other names, wordings and products than either generator's.
GOLDEN: Final = [
    SHARED,
    *(
        _golden_row(text, values)
        for text, values in (
            (
                "Hiya! It's Wen Zhao again - could I order 4 x enamel colander? Best to "
                "email wen.zhao@ricebowl.net",
                ["Wen Zhao", "wen.zhao@ricebowl.net", 4, "enamel colander"],
            ),
            (
                "Please reserve 2 of the pine stool for Margot Lefebvre; she has no email.",
                ["Margot Lefebvre", None, 2, "pine stool"],
            ),
            (
                "To whom it may concern: Ruairi Byrne (r.byrne@harbourmail.ie) requires 10 "
                "galvanised bucket.",
                ["Ruairi Byrne", "r.byrne@harbourmail.ie", 10, "galvanised bucket"],
            ),
            (
                "yo its Kemal Arslan, 1 x vinyl record player pls, kemal99@northpost.tr",
                ["Kemal Arslan", "kemal99@northpost.tr", 1, "vinyl record player"],
            ),
            (
                "Could Lucia Romano get seven hand-painted bowl? Contact her on "
                "lucia.romano@ceramica.it.",
                ["Lucia Romano", "lucia.romano@ceramica.it", 7, "hand-painted bowl"],
            ),
            (
                "Thabo Nkosi: 6 x solar garden light. I only answer the phone.",
                ["Thabo Nkosi", None, 6, "solar garden light"],
            ),
            (
                "Booking five folding chair for the hall. Organiser: Astrid Holm, "
                "astrid.holm@fjordmail.no",
                ["Astrid Holm", "astrid.holm@fjordmail.no", 5, "folding chair"],
            ),
            (
                "From Diego Alvarez - twelve beeswax wrap, no email address, thanks!",
                ["Diego Alvarez", None, 12, "beeswax wrap"],
            ),
            (
                "Siobhan Walsh wants 8 of the stoneware jug; send the invoice to "
                "siobhan@greenisle.ie",
                ["Siobhan Walsh", "siobhan@greenisle.ie", 8, "stoneware jug"],
            ),
            (
                "Hello team, 3 x mohair blanket for Hiroshi Sato please "
                "(hiroshi.sato@sakuramail.jp).",
                ["Hiroshi Sato", "hiroshi.sato@sakuramail.jp", 3, "mohair blanket"],
            ),
            (
                "Nine pieces of sandalwood comb, for Arjun Mehta. He has no email.",
                ["Arjun Mehta", None, 9, "sandalwood comb"],
            ),
        )
    ),
]


def _email(rng: random.Random, pools: Pools, first: str, last: str) -> str:
    user = rng.choice(
        (f"{first}.{last}", f"{first}{rng.randint(1, 99)}", f"{first[0]}{last}", f"{first}_{last}")
    )
    return f"{user.lower()}@{rng.choice(pools.domains)}"


def message(
    rng: random.Random, pools: Pools, email: bool | None = None, words: bool | None = None
) -> Row:
    """One order message and its record; `email` and `words` (the quantity spelled out)
    are drawn when None."""
    first, last = rng.choice(pools.first), rng.choice(pools.last)
    has_email = rng.random() < 0.7 if email is None else email
    in_words = rng.random() < 0.3 if words is None else words
    quantity = rng.randint(1, 12)
    record: dict[str, Any] = {
        "name": f"{first} {last}",
        "email": _email(rng, pools, first, last) if has_email else None,
        "quantity": quantity,
        "product": rng.choice(pools.products),
    }
    template = rng.choice(pools.with_email if has_email else pools.without_email)
    text = template.format(
        name=record["name"],
        email=record["email"],
        qty=NUMBER_WORDS[quantity - 1] if in_words else str(quantity),
        product=record["product"],
    )
    return row(text, json.dumps(record), SYSTEM)


def files() -> Files:
    """Every file of the task, by its path in the task's directory."""
    taken = {prompt_key(r) for r in GOLDEN}
    train = draw_unique(399, lambda rng: message(rng, TRAIN), random.Random(101), taken)
    train.append(SHARED)
    held = random.Random(202)
    test = draw_unique(120, lambda rng: message(rng, HELD_OUT), held, taken)
    dev = draw_unique(60, lambda rng: message(rng, HELD_OUT), held, taken)
    missing = draw_unique(30, lambda rng: message(rng, HELD_OUT, email=False), held, taken)
    spelled = draw_unique(30, lambda rng: message(rng, HELD_OUT, words=True), held, taken)
    # 180 more dev rows, drawn last so that every other file stays as it was: with 60, one
    # row is 0.017 of exact match and step counts 0.1 apart could not be told apart.
    dev += draw_unique(180, lambda rng: message(rng, HELD_OUT), held, taken)
    return {
        "data/train.jsonl": train,
        "data/train_shuffled.jsonl": shuffled_targets(train, 303),
        "data/dev.jsonl": dev,
        "data/test.jsonl": test,
        "data/golden.jsonl": GOLDEN,
        "data/slice_missing_email.jsonl": missing,
        "data/slice_number_words.jsonl": spelled,
    }
