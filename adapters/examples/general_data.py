"""The sets every example task shares: general-ability questions and general replay rows.

`GENERAL` (`general.jsonl`) measures what an adapter keeps of the base model's knowledge:
the reference must appear in the answer. Its references are names that French writes as
English does (Paris, Jupiter, Shakespeare), so that an adapter answering in French is judged
on what it knows, not on the language it answers in. `REPLAY` (`replay.jsonl`) is mixed into
the training against forgetting: other questions, answered in a sentence, in English for the
English tasks and in French (`replay_fr.jsonl`) for the French one.
"""

from __future__ import annotations

from typing import Final

from adapters.examples.rows import row

GENERAL: Final = [
    row(question, answer)
    for question, answer in (
        ("What is the capital of France?", "Paris"),
        ("What is the capital of Japan?", "Tokyo"),
        ("What is the capital of Italy?", "Rome"),
        ("What is the capital of Germany?", "Berlin"),
        ("What is the capital of Spain?", "Madrid"),
        ("What is the capital of Canada?", "Ottawa"),
        ("What is the capital of Kenya?", "Nairobi"),
        ("What is the capital of Peru?", "Lima"),
        ("What is the capital of Thailand?", "Bangkok"),
        ("What is the largest planet in our solar system?", "Jupiter"),
        ("Which planet is known as the Red Planet?", "Mars"),
        ("Who wrote Romeo and Juliet?", "Shakespeare"),
        ("What is the chemical formula of water?", "H2O"),
        ("Which animal is known as the king of the jungle?", "lion"),
        ("Who painted the Mona Lisa?", "Vinci"),
        ("What is the currency of Japan?", "yen"),
        ("Who was the first person to walk on the Moon?", "Armstrong"),
        ("In which country is the Eiffel Tower?", "France"),
        ("Who developed the theory of relativity?", "Einstein"),
        ("What is the highest mountain in the world?", "Everest"),
        ("What is the largest hot desert in the world?", "Sahara"),
        ("Which instrument has black and white keys?", "piano"),
        ("Who composed The Magic Flute?", "Mozart"),
        ("Who formulated the laws of motion and universal gravitation?", "Newton"),
        ("Which company makes the iPhone?", "Apple"),
        ("Who proposed the theory of evolution by natural selection?", "Darwin"),
        ("Who painted The Starry Night?", "Van Gogh"),
        ("Who is credited with inventing the telephone?", "Bell"),
        ("Which city is known as the Big Apple?", "New York"),
        ("Which scientist named Marie studied radioactivity?", "Curie"),
    )
]
# (question, an English answer, a French one)
_REPLAY: Final = (
    (
        "What is the capital of Norway?",
        "The capital of Norway is Oslo.",
        "La capitale de la Norvège est Oslo.",
    ),
    (
        "What is the capital of Poland?",
        "The capital of Poland is Warsaw.",
        "La capitale de la Pologne est Varsovie.",
    ),
    (
        "What is the capital of Greece?",
        "The capital of Greece is Athens.",
        "La capitale de la Grèce est Athènes.",
    ),
    (
        "What is the capital of Egypt?",
        "The capital of Egypt is Cairo.",
        "La capitale de l'Égypte est Le Caire.",
    ),
    (
        "What is the capital of India?",
        "The capital of India is New Delhi.",
        "La capitale de l'Inde est New Delhi.",
    ),
    (
        "What is the capital of Turkey?",
        "The capital of Turkey is Ankara.",
        "La capitale de la Turquie est Ankara.",
    ),
    (
        "What is the capital of Australia?",
        "The capital of Australia is Canberra.",
        "La capitale de l'Australie est Canberra.",
    ),
    (
        "Name the three primary colors.",
        "The three primary colors are red, blue and yellow.",
        "Les trois couleurs primaires sont le rouge, le bleu et le jaune.",
    ),
    (
        "How many legs does a spider have?",
        "A spider has eight legs.",
        "Une araignée a huit pattes.",
    ),
    (
        "At what temperature does water boil at sea level?",
        "At sea level, water boils at 100 degrees Celsius.",
        "Au niveau de la mer, l'eau bout à 100 degrés Celsius.",
    ),
    (
        "Give me a synonym for happy.",
        "A synonym for happy is joyful.",
        "Un synonyme de heureux est joyeux.",
    ),
    (
        "What is photosynthesis?",
        "Photosynthesis is the process by which plants use sunlight, water and carbon "
        "dioxide to make sugar and oxygen.",
        "La photosynthèse est le processus par lequel les plantes utilisent la lumière du "
        "soleil, l'eau et le dioxyde de carbone pour fabriquer du sucre et de l'oxygène.",
    ),
    (
        "Write a short greeting for a friend.",
        "Hi! It's great to hear from you. I hope you're doing well.",
        "Salut ! Ça me fait plaisir d'avoir de tes nouvelles. J'espère que tu vas bien.",
    ),
    ("What is 7 times 8?", "7 times 8 is 56.", "Sept fois huit font cinquante-six."),
    (
        "Who wrote Pride and Prejudice?",
        "Pride and Prejudice was written by Jane Austen.",
        "Orgueil et Préjugés a été écrit par Jane Austen.",
    ),
    (
        "What is the largest organ of the human body?",
        "The largest organ of the human body is the skin.",
        "Le plus grand organe du corps humain est la peau.",
    ),
    (
        "How do you say thank you in Spanish?",
        "In Spanish, thank you is gracias.",
        "En espagnol, merci se dit gracias.",
    ),
    (
        "What does a thermometer measure?",
        "A thermometer measures temperature.",
        "Un thermomètre mesure la température.",
    ),
    (
        "Suggest a name for a pet goldfish.",
        "How about Bubbles? It is a cheerful name for a goldfish.",
        "Pourquoi pas Bulle ? C'est un joli nom pour un poisson rouge.",
    ),
    (
        "What is the plural of mouse?",
        "The plural of mouse is mice.",
        "En anglais, le pluriel de mouse est mice.",
    ),
    (
        "Why do we have seasons?",
        "We have seasons because the Earth's axis is tilted, so each half of the planet "
        "gets more sunlight for part of the year.",
        "Nous avons des saisons parce que l'axe de la Terre est incliné : chaque moitié de "
        "la planète reçoit plus de soleil pendant une partie de l'année.",
    ),
    (
        "How many minutes are there in an hour?",
        "There are sixty minutes in an hour.",
        "Il y a soixante minutes dans une heure.",
    ),
    (
        "What do cows eat?",
        "Cows eat mostly grass and hay.",
        "Les vaches mangent surtout de l'herbe et du foin.",
    ),
    (
        "Which gas do we breathe out?",
        "We breathe out carbon dioxide.",
        "Nous expirons du dioxyde de carbone.",
    ),
    (
        "What is the freezing point of water in Fahrenheit?",
        "Water freezes at 32 degrees Fahrenheit.",
        "L'eau gèle à 32 degrés Fahrenheit.",
    ),
    (
        "Give me one tip for sleeping better.",
        "Go to bed at the same time every night, even at weekends.",
        "Couche-toi à la même heure tous les soirs, même le week-end.",
    ),
    (
        "What is the opposite of ancient?",
        "The opposite of ancient is modern.",
        "Le contraire d'ancien est moderne.",
    ),
    (
        "Who discovered penicillin?",
        "Penicillin was discovered by Alexander Fleming in 1928.",
        "La pénicilline a été découverte par Alexander Fleming en 1928.",
    ),
    (
        "What is the square root of 81?",
        "The square root of 81 is 9.",
        "La racine carrée de 81 est 9.",
    ),
    (
        "Name a mammal that can fly.",
        "The bat is a mammal that can fly.",
        "La chauve-souris est un mammifère qui peut voler.",
    ),
    (
        "What is the main language spoken in Argentina?",
        "The main language spoken in Argentina is Spanish.",
        "La langue principale parlée en Argentine est l'espagnol.",
    ),
    (
        "What are the colors of the rainbow?",
        "The colors of the rainbow are red, orange, yellow, green, blue, indigo and violet.",
        "Les couleurs de l'arc-en-ciel sont le rouge, l'orange, le jaune, le vert, le bleu, "
        "l'indigo et le violet.",
    ),
    (
        "Tell me a fun fact about octopuses.",
        "An octopus has three hearts and blue blood.",
        "Une pieuvre a trois cœurs et du sang bleu.",
    ),
    ("How many sides does a hexagon have?", "A hexagon has six sides.", "Un hexagone a six côtés."),
    (
        "What is the longest river in South America?",
        "The longest river in South America is the Amazon.",
        "Le plus long fleuve d'Amérique du Sud est l'Amazone.",
    ),
    (
        "Recommend a book for a long train ride.",
        "The Hobbit by J. R. R. Tolkien is a good choice for a long train ride.",
        "Le Hobbit de J. R. R. Tolkien est un bon choix pour un long voyage en train.",
    ),
    (
        "What does DNA stand for?",
        "DNA stands for deoxyribonucleic acid.",
        "ADN signifie acide désoxyribonucléique.",
    ),
    (
        "Which metal is liquid at room temperature?",
        "Mercury is the metal that is liquid at room temperature.",
        "Le mercure est le métal qui est liquide à température ambiante.",
    ),
    (
        "Explain what a verb is in one sentence.",
        "A verb is a word for an action or a state, such as run or be.",
        "Un verbe est un mot qui exprime une action ou un état, comme courir ou être.",
    ),
    (
        "What is the smallest prime number?",
        "The smallest prime number is 2.",
        "Le plus petit nombre premier est 2.",
    ),
)
REPLAY: Final = [row(question, english) for question, english, _ in _REPLAY]
# For the French task: the same questions answered in French.
REPLAY_FR: Final = [row(question, french) for question, _, french in _REPLAY]
