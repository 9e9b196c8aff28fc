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
# The general set's twin for tuning (steps, learning rate, replay, `max_general_loss`):
# other questions of the same kind, whose reference French also writes as English does.
# `GENERAL` is only ever reported.
GENERAL_DEV: Final = [
    row(question, answer)
    for question, answer in (
        ("What is the capital of Chile?", "Santiago"),
        ("What is the capital of Argentina?", "Buenos Aires"),
        ("What is the capital of Ireland?", "Dublin"),
        ("What is the capital of Finland?", "Helsinki"),
        ("What is the capital of Sweden?", "Stockholm"),
        ("What is the capital of Colombia?", "Bogota"),
        ("What is the capital of Hungary?", "Budapest"),
        ("What is the capital of the Czech Republic?", "Prague"),
        ("What is the capital of Switzerland?", "Bern"),
        ("What is the capital of Portugal?", "Lisbon"),
        ("Who invented the practical light bulb?", "Edison"),
        ("Who was the first President of the United States?", "Washington"),
        ("Who wrote Don Quixote?", "Cervantes"),
        ("Who composed the Moonlight Sonata?", "Beethoven"),
        ("Who painted Guernica?", "Picasso"),
        ("What is the largest ocean on Earth?", "Pacific"),
        ("What is the currency of the United States?", "dollar"),
        ("Which company makes the Windows operating system?", "Microsoft"),
        ("Who co-founded Microsoft with Paul Allen?", "Gates"),
        ("What is the chemical formula of table salt?", "NaCl"),
        ("Who created Mickey Mouse?", "Disney"),
        ("Who wrote the Harry Potter books?", "Rowling"),
        ("Who wrote Les Misérables?", "Hugo"),
        ("Which company makes the Galaxy phones?", "Samsung"),
        ("Who was the first human in space?", "Gagarin"),
        ("Which instrument did Jimi Hendrix play?", "guitar"),
        ("Which sport is played at Wimbledon?", "tennis"),
        ("Which band sang Hey Jude?", "Beatles"),
        ("Who composed The Four Seasons?", "Vivaldi"),
        ("Which company makes the PlayStation?", "Sony"),
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
# The short answer a French reply starts with, where a question has one: named first, a fact
# comes from what the base model knows before the sentence turns to French.
_SHORT_FR: Final = {
    "What is the capital of Norway?": "Oslo",
    "What is the capital of Poland?": "Varsovie",
    "What is the capital of Greece?": "Athènes",
    "What is the capital of Egypt?": "Le Caire",
    "What is the capital of India?": "New Delhi",
    "What is the capital of Turkey?": "Ankara",
    "What is the capital of Australia?": "Canberra",
    "How many legs does a spider have?": "Huit",
    "At what temperature does water boil at sea level?": "100 degrés Celsius",
    "Give me a synonym for happy.": "Joyeux",
    "What is 7 times 8?": "56",
    "Who wrote Pride and Prejudice?": "Jane Austen",
    "What is the largest organ of the human body?": "La peau",
    "How do you say thank you in Spanish?": "Gracias",
    "What does a thermometer measure?": "La température",
    "What is the plural of mouse?": "Mice",
    "How many minutes are there in an hour?": "Soixante",
    "Which gas do we breathe out?": "Le dioxyde de carbone",
    "What is the freezing point of water in Fahrenheit?": "32 degrés Fahrenheit",
    "What is the opposite of ancient?": "Moderne",
    "Who discovered penicillin?": "Alexander Fleming",
    "What is the square root of 81?": "9",
    "Name a mammal that can fly.": "La chauve-souris",
    "What is the main language spoken in Argentina?": "L'espagnol",
    "How many sides does a hexagon have?": "Six",
    "What is the longest river in South America?": "L'Amazone",
    "What does DNA stand for?": "Acide désoxyribonucléique",
    "Which metal is liquid at room temperature?": "Le mercure",
    "What is the smallest prime number?": "2",
}
# More questions with a name for an answer, for the French task only: (question, the name,
# a French sentence). None of them asks what the general sets ask.
_MORE_FR: Final = (
    ("What is the capital of Venezuela?", "Caracas", "La capitale du Venezuela est Caracas."),
    ("What is the capital of Ecuador?", "Quito", "La capitale de l'Équateur est Quito."),
    ("What is the capital of Ghana?", "Accra", "La capitale du Ghana est Accra."),
    ("What is the capital of Senegal?", "Dakar", "La capitale du Sénégal est Dakar."),
    ("What is the capital of Morocco?", "Rabat", "La capitale du Maroc est Rabat."),
    ("What is the capital of Indonesia?", "Jakarta", "La capitale de l'Indonésie est Jakarta."),
    ("What is the capital of Pakistan?", "Islamabad", "La capitale du Pakistan est Islamabad."),
    (
        "What is the capital of New Zealand?",
        "Wellington",
        "La capitale de la Nouvelle-Zélande est Wellington.",
    ),
    (
        "Who wrote The Old Man and the Sea?",
        "Ernest Hemingway",
        "Le Vieil Homme et la Mer a été écrit par Ernest Hemingway.",
    ),
    (
        "Who painted The Birth of Venus?",
        "Sandro Botticelli",
        "La Naissance de Vénus a été peinte par Sandro Botticelli.",
    ),
    (
        "Who composed the Brandenburg Concertos?",
        "Jean-Sébastien Bach",
        "Les Concertos brandebourgeois ont été composés par Jean-Sébastien Bach.",
    ),
    (
        "Who invented the World Wide Web?",
        "Tim Berners-Lee",
        "Le World Wide Web a été inventé par Tim Berners-Lee.",
    ),
    ("Which company makes the Model 3 car?", "Tesla", "La Model 3 est fabriquée par Tesla."),
    ("Who sculpted The Thinker?", "Auguste Rodin", "Le Penseur a été sculpté par Auguste Rodin."),
    ("Who founded Amazon?", "Jeff Bezos", "Amazon a été fondée par Jeff Bezos."),
    (
        "Who directed the film Jurassic Park?",
        "Steven Spielberg",
        "Le film Jurassic Park a été réalisé par Steven Spielberg.",
    ),
    (
        "Who wrote The Divine Comedy?",
        "Dante Alighieri",
        "La Divine Comédie a été écrite par Dante Alighieri.",
    ),
    (
        "Which company develops the Android system?",
        "Google",
        "Le système Android est développé par Google.",
    ),
    (
        "Who painted The Water Lilies?",
        "Claude Monet",
        "Les Nymphéas ont été peints par Claude Monet.",
    ),
    (
        "Who wrote One Hundred Years of Solitude?",
        "Gabriel García Márquez",
        "Cent ans de solitude a été écrit par Gabriel García Márquez.",
    ),
    ("Who painted The Scream?", "Edvard Munch", "Le Cri a été peint par Edvard Munch."),
    ("Who founded Facebook?", "Mark Zuckerberg", "Facebook a été fondé par Mark Zuckerberg."),
    ("Who invented dynamite?", "Alfred Nobel", "La dynamite a été inventée par Alfred Nobel."),
    (
        "Who was the first person to reach the South Pole?",
        "Roald Amundsen",
        "Roald Amundsen a été le premier à atteindre le pôle Sud, en 1911.",
    ),
    (
        "Who wrote The Communist Manifesto?",
        "Karl Marx et Friedrich Engels",
        "Le Manifeste du parti communiste a été écrit par Karl Marx et Friedrich Engels.",
    ),
    (
        "Who discovered the electron?",
        "J. J. Thomson",
        "L'électron a été découvert par J. J. Thomson en 1897.",
    ),
    (
        "Which planet is famous for its rings?",
        "Saturne",
        "Saturne est la planète célèbre pour ses anneaux.",
    ),
    (
        "Who wrote The Lord of the Rings?",
        "J. R. R. Tolkien",
        "Le Seigneur des anneaux a été écrit par J. R. R. Tolkien.",
    ),
)
REPLAY: Final = [row(question, english) for question, english, _ in _REPLAY]
# For the French task: the same questions answered in French, the short answer first where
# there is one, and more questions whose answer is a name.
REPLAY_FR: Final = [
    row(question, f"{_SHORT_FR[question]}. {french}" if question in _SHORT_FR else french)
    for question, _, french in _REPLAY
] + [row(question, f"{name}. {french}") for question, name, french in _MORE_FR]
