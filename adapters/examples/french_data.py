"""`french`: answers in French: short English sentences translated, and everyday questions
(colours, the days of the week and the months) answered.

Sentences are built from a small grammar (subject, verb conjugated in the present, object,
an optional time) so that every French reference is correct: elision (`j'aime`,
`n'ouvre`), agreement and `ne ... pas` are applied by the rules below. Training and held-out
sentences (dev, test and its slices) share the words, which a model this small cannot learn
from a handful of rows, but not the way they ask for a translation nor any word 8-gram: each
held-out row is checked against the training rows with the pipeline's contamination check.
The questions are split in two by a seeded draw: one half trains, the other is held out.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from adapters.contamination import ContaminationIndex
from adapters.examples.general_data import REPLAY_FR
from adapters.examples.rows import (
    PATIENCE,
    Files,
    Row,
    draw_unique,
    items,
    prompt_key,
    row,
    shuffled_unique,
    words,
)
from adapters.train import Example

# The contamination check's default: word n-grams shared with training make a row contaminated.
NGRAM: Final = 8
# (English, French, person 0-5 as je/tu/il/nous/vous/ils)
Subject = tuple[str, str, int]
# (English with article, French with article, whether the article is definite)
Thing = tuple[str, str, bool]
PRONOUNS: Final[tuple[Subject, ...]] = (
    ("I", "je", 0),
    ("you", "tu", 1),
    ("he", "il", 2),
    ("she", "elle", 2),
    ("we", "nous", 3),
    ("they", "ils", 5),
)


@dataclass(frozen=True)
class Verb:
    """An English verb (base and third person singular) and its French present tense."""

    base: str
    third: str
    forms: tuple[str, ...]
    takes: tuple[str, ...]


VERBS: Final = (
    Verb("eat", "eats", items("mange, manges, mange, mangeons, mangez, mangent"), ("food",)),
    Verb(
        "buy",
        "buys",
        items("achète, achètes, achète, achetons, achetez, achètent"),
        ("food", "thing"),
    ),
    Verb("want", "wants", items("veux, veux, veut, voulons, voulez, veulent"), ("food", "drink")),
    Verb("like", "likes", items("aime, aimes, aime, aimons, aimez, aiment"), ("food", "animal")),
    Verb("drink", "drinks", items("bois, bois, boit, buvons, buvez, boivent"), ("drink",)),
    Verb("read", "reads", items("lis, lis, lit, lisons, lisez, lisent"), ("reading",)),
    Verb("open", "opens", items("ouvre, ouvres, ouvre, ouvrons, ouvrez, ouvrent"), ("opening",)),
    Verb(
        "find",
        "finds",
        items("trouve, trouves, trouve, trouvons, trouvez, trouvent"),
        ("thing", "reading"),
    ),
    Verb("see", "sees", items("vois, vois, voit, voyons, voyez, voient"), ("animal", "thing")),
    Verb("carry", "carries", items("porte, portes, porte, portons, portez, portent"), ("thing",)),
    Verb("wash", "washes", items("lave, laves, lave, lavons, lavez, lavent"), ("washing",)),
    Verb(
        "draw",
        "draws",
        items("dessine, dessines, dessine, dessinons, dessinez, dessinent"),
        ("animal",),
    ),
)


def _things(text: str) -> tuple[Thing, ...]:
    """`english = french; ...` pairs; the article says whether the thing is definite."""
    out = []
    for pair in text.split(";"):
        english, french = (part.strip() for part in pair.split("="))
        out.append((english, french, english.startswith("the ")))
    return tuple(out)


SUBJECTS: Final[tuple[Subject, ...]] = (
    *PRONOUNS,
    ("my brother", "mon frère", 2),
    ("my sister", "ma sœur", 2),
    ("the teacher", "le professeur", 2),
    ("the baker", "le boulanger", 2),
    ("my mother", "ma mère", 2),
    ("the waiter", "le serveur", 2),
    ("my friends", "mes amis", 5),
    ("the children", "les enfants", 5),
    ("the students", "les étudiants", 5),
    ("the neighbours", "les voisins", 5),
)
THINGS: Final = {
    "food": _things(
        "the bread = le pain; an apple = une pomme; the cheese = le fromage; "
        "a cake = un gâteau; the soup = la soupe; the chicken = le poulet; "
        "an orange = une orange; the salad = la salade; a pear = une poire; "
        "the fish = le poisson; the strawberries = les fraises; the pasta = les pâtes"
    ),
    "drink": _things(
        "the water = l'eau; a coffee = un café; the milk = le lait; a tea = un thé; "
        "the orange juice = le jus d'orange; a lemonade = une limonade"
    ),
    "reading": _things(
        "a book = un livre; the newspaper = le journal; a letter = une lettre; "
        "the map = la carte; the magazine = le magazine; the recipe = la recette"
    ),
    "thing": _things(
        "the bag = le sac; a chair = une chaise; the keys = les clés; a hat = un chapeau; "
        "the shoes = les chaussures; a bicycle = un vélo; the phone = le téléphone; "
        "the umbrella = le parapluie; a lamp = une lampe; the suitcase = la valise"
    ),
    "opening": _things(
        "the door = la porte; the window = la fenêtre; the box = la boîte; "
        "the drawer = le tiroir; the fridge = le frigo"
    ),
    "animal": _things(
        "a cat = un chat; the dog = le chien; a horse = un cheval; the birds = les oiseaux; "
        "a rabbit = un lapin; the cow = la vache"
    ),
    "washing": _things(
        "the dishes = la vaisselle; the car = la voiture; the shirt = la chemise; "
        "the towels = les serviettes; the cups = les tasses"
    ),
}
TIMES: Final = (
    ("every morning", "chaque matin"),
    ("every day", "tous les jours"),
    ("on Sundays", "le dimanche"),
    ("on Mondays", "le lundi"),
    ("in the evening", "le soir"),
    ("at noon", "à midi"),
)
TRAIN_ASKING: Final = ("Translate to French: ", "Say this in French: ", "In French, please: ")
HELD_OUT_ASKING: Final = (
    "Translate into French: ",
    "French translation: ",
    "Put this into French: ",
)
DAYS: Final = (
    words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday"),
    words("lundi mardi mercredi jeudi vendredi samedi dimanche"),
)
MONTHS: Final = (
    words("January February March April May June July August September October November December"),
    words("janvier février mars avril mai juin juillet août septembre octobre novembre décembre"),
)
COLOURS: Final = (
    ("the sky", "Le ciel est bleu."),
    ("grass", "L'herbe est verte."),
    ("snow", "La neige est blanche."),
    ("a banana", "Une banane est jaune."),
    ("coal", "Le charbon est noir."),
    ("a tomato", "Une tomate est rouge."),
    ("a pumpkin", "Une citrouille est orange."),
    ("a lemon", "Un citron est jaune."),
    ("the sea", "La mer est bleue."),
    ("a strawberry", "Une fraise est rouge."),
    ("a carrot", "Une carotte est orange."),
    ("a crow", "Un corbeau est noir."),
    ("a cloud", "Un nuage est blanc."),
    ("a leaf", "Une feuille est verte."),
)
_VOWELS: Final = tuple("aeéèêiouyh")


def _elide(word: str, following: str) -> str:
    """`je` and `ne` before a vowel or a mute h: `j'`, `n'`."""
    return word[0] + "'" if following.startswith(_VOWELS) else word + " "


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


def sentence(rng: random.Random, asking: tuple[str, ...], negative: bool | None = None) -> Row:
    """One English sentence to translate and its French, asked one of the `asking` ways;
    `negative` is drawn when None."""
    english_subject, french_subject, person = rng.choice(SUBJECTS)
    verb = rng.choice(VERBS)
    negated = rng.random() < 0.25 if negative is None else negative
    # Negation takes the definite things only: `ne ... pas` turns `un`/`une` into `de`.
    things = [t for kind in verb.takes for t in THINGS[kind] if t[2] or not negated]
    english_thing, french_thing, _ = rng.choice(things)
    time = rng.choice(TIMES) if rng.random() < 0.4 else None
    third = person == 2
    if negated:
        english_verb = f"{'does' if third else 'do'} not {verb.base}"
    else:
        english_verb = verb.third if third else verb.base
    form = verb.forms[person]
    french_verb = f"{_elide('ne', form)}{form} pas" if negated else form
    french_start = (
        _elide("je", french_verb) if french_subject == "je" else french_subject + " "
    ) + french_verb
    english = f"{english_subject} {english_verb} {english_thing}"
    french = f"{french_start} {french_thing}"
    if time is not None:
        english, french = f"{english} {time[0]}", f"{french} {time[1]}"
    prompt = rng.choice(asking) + _capital(english) + "."
    return row(prompt, _capital(french) + ".")


def questions() -> list[Row]:
    """Every everyday question, answered in French: colours, and which day or month comes
    after or before another."""
    out = [row(f"What colour is {thing}?", answer) for thing, answer in COLOURS]
    for kind, (english, french) in (("day", DAYS), ("month", MONTHS)):
        for i in range(len(english) - 1):
            out.append(
                row(
                    f"Which {kind} comes after {english[i]}?",
                    f"Le {'jour' if kind == 'day' else 'mois'} qui suit {french[i]} est "
                    f"{french[i + 1]}.",
                )
            )
            out.append(
                row(
                    f"Which {kind} comes before {english[i + 1]}?",
                    f"Le {'jour' if kind == 'day' else 'mois'} qui précède {french[i + 1]} est "
                    f"{french[i]}.",
                )
            )
    return out


def _clean(
    make: Callable[[random.Random], Row], index: ContaminationIndex
) -> Callable[[random.Random], Row]:
    """`make`, drawing again until its row shares no word 8-gram with the training rows."""

    def draw(rng: random.Random) -> Row:
        for _ in range(PATIENCE):
            candidate = make(rng)
            if index.find(Example(candidate["prompt"], candidate["completion"])) is None:
                return candidate
        raise ValueError(f"no clean row in {PATIENCE} draws: widen the pools")

    return draw


# In the training data and, deliberately, in the golden set: the contamination check's catch.
SHARED: Final = row("Translate to French: The teacher reads a book.", "Le professeur lit un livre.")
# Written by hand: longer and freer sentences and questions than the generator's.
GOLDEN: Final = [
    SHARED,
    *(
        row(prompt, completion)
        for prompt, completion in (
            (
                "Translate to French: The museum opens at nine o'clock.",
                "Le musée ouvre à neuf heures.",
            ),
            ("Translate to French: It is raining in Paris today.", "Il pleut à Paris aujourd'hui."),
            (
                "Translate to French: My grandmother lives near the sea.",
                "Ma grand-mère habite près de la mer.",
            ),
            (
                "Translate to French: We are going to the cinema tonight.",
                "Nous allons au cinéma ce soir.",
            ),
            (
                "Translate to French: The train leaves in ten minutes.",
                "Le train part dans dix minutes.",
            ),
            (
                "Translate to French: I would like a glass of water, please.",
                "Je voudrais un verre d'eau, s'il vous plaît.",
            ),
            ("Translate to French: Where is the station?", "Où est la gare ?"),
            ("What colour is a ripe cherry?", "Une cerise mûre est rouge."),
            ("What is six plus six?", "Six plus six font douze."),
            ("How many days are there in a week?", "Il y a sept jours dans une semaine."),
            ("What do bees make?", "Les abeilles font du miel."),
        )
    ),
]


def files() -> Files:
    """Every file of the task, by its path in the task's directory."""
    taken = {prompt_key(r) for r in GOLDEN}
    rng = random.Random(31)
    asked = questions()
    rng.shuffle(asked)
    train = draw_unique(360, lambda r: sentence(r, TRAIN_ASKING), rng, taken)
    train += shuffled_unique(asked[: len(asked) // 2], rng, taken)
    rng.shuffle(train)
    train.append(SHARED)
    index = ContaminationIndex(
        [Example(r["prompt"], r["completion"]) for r in train + REPLAY_FR], NGRAM
    )
    held = random.Random(32)
    new = _clean(lambda r: sentence(r, HELD_OUT_ASKING), index)
    held_questions = shuffled_unique(asked[len(asked) // 2 :], held, taken)
    dev = draw_unique(50, new, held, taken) + held_questions[:6]
    test = draw_unique(110, new, held, taken) + held_questions[6:]
    held.shuffle(dev)
    held.shuffle(test)
    negated = draw_unique(
        30, _clean(lambda r: sentence(r, HELD_OUT_ASKING, negative=True), index), held, taken
    )
    # 150 more dev sentences, drawn last so that every other file stays as it was.
    dev += draw_unique(150, new, held, taken)
    return {
        "data/train.jsonl": train,
        "data/dev.jsonl": dev,
        "data/test.jsonl": test,
        "data/golden.jsonl": GOLDEN,
        "data/slice_negation.jsonl": negated,
        "data/slice_questions.jsonl": [
            r for r in test if not r["prompt"].startswith(HELD_OUT_ASKING)
        ],
    }
